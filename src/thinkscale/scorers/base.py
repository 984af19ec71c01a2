"""The Scorer contract: reward for partial or whole solutions of one problem.

A scorer scores a batch of solutions of one problem at once and returns a
score per step (a whole-solution scorer returns one step). Strategies turn
step scores into one number with an aggregation (`last`, `min`, `prod`,
`mean`) chosen in their settings, so every strategy honours the same choice.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

from thinkscale.registry import unknown_name_error


@dataclass(frozen=True)
class Scores:
    per_step: list[list[float]]  # per_step[i][s]: step s of solution i
    scored_tokens: int  # tokens the scorer read, for the Usage
    flops: float = 0.0


class Scorer(ABC):
    name: str = "scorer"

    @abstractmethod
    async def score(self, prompt: str, solutions: list[str], step_delimiter: str) -> Scores:
        """Score each solution of `prompt`, one value per step (steps end at `step_delimiter`)."""

    def check_task(self, task_name: str) -> None:
        """Refuse a task this scorer was not made for (a reward model trained on another format)."""


def _prod(xs: list[float]) -> float:
    return math.prod(xs)


AGGREGATIONS = {
    "last": lambda xs: xs[-1],
    "min": min,
    "prod": _prod,
    "mean": lambda xs: sum(xs) / len(xs),
}


def aggregate(step_scores: list[float], how: str) -> float:
    """One score for a solution from its step scores; an empty solution scores -inf."""
    if how not in AGGREGATIONS:
        raise unknown_name_error("aggregation", how, AGGREGATIONS)
    return AGGREGATIONS[how](step_scores) if step_scores else float("-inf")


def split_steps(solution: str, delimiter: str) -> list[str]:
    """Steps of a solution, each keeping its delimiter (the text a scorer reads)."""
    parts = solution.split(delimiter)
    steps = [p + delimiter for p in parts[:-1]]
    if parts[-1]:
        steps.append(parts[-1])
    return [s for s in steps if s.strip()]
