"""Best-of-N: sample N whole solutions, score them, answer with the best one.

Only finished solutions are scored and can be chosen; a truncated one never
is. The score of a solution is its step scores aggregated as the settings say
(`last`, `min`, `prod` or `mean`). Ties go to the earliest sample.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from thinkscale.budget import Budget
from thinkscale.policies.base import Policy
from thinkscale.scorers.base import AGGREGATIONS, Scorer, aggregate
from thinkscale.strategies.base import SamplingSettings, account_scorer, choose_best, sample_whole
from thinkscale.tasks.base import Problem, Task
from thinkscale.trace import Trace


@dataclass(frozen=True)
class BestOfNSettings(SamplingSettings):
    aggregation: str = "min"

    def __post_init__(self) -> None:
        super().__post_init__()
        aggregate([1.0], self.aggregation)  # an unknown name fails here, naming the valid ones


class BestOfN:
    name = "best_of_n"
    Settings = BestOfNSettings

    def __init__(self, settings: BestOfNSettings | None = None) -> None:
        self.settings = settings or BestOfNSettings()

    async def solve(self, problem: Problem, task: Task, policy: Policy, scorer: Scorer | None,
                    budget: Budget, seed: int) -> Trace:
        if scorer is None:
            raise ValueError(f"{self.name} needs a scorer (one of the reward models); none was given")
        scorer.check_task(task.name)
        trace = Trace(problem_id=problem.id, strategy=self.name, settings=asdict(self.settings), seed=seed,
                      difficulty=problem.difficulty)
        await sample_whole(problem, task, policy, self.settings, budget, seed, trace)
        candidates = [n for n in trace.terminals() if n.finished and n.answer is not None]
        if candidates:
            started = time.perf_counter()
            scores = await scorer.score(problem.prompt, [n.text for n in candidates], task.step_delimiter)
            account_scorer(trace.usage, scores, started)
            for node, steps in zip(candidates, scores.per_step):
                node.scores[scorer.name] = aggregate(steps, self.settings.aggregation)
            best = self.choose(candidates, scorer.name)
            trace.chosen_answer, trace.chosen_node = best.answer, best.id
        return trace

    choose = staticmethod(choose_best)


__all__ = ["AGGREGATIONS", "BestOfN", "BestOfNSettings"]
