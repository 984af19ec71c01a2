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

from thinkscale.budget import forward_flops_per_token
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

    def flops_per_token(self) -> float | None:
        """FLOPs to read one token, where the model is known (a FLOPs budget needs it)."""
        return None

    def count_tokens(self, text: str) -> int:
        """Tokens the scorer reads for `text` (a bound where it cannot count exactly)."""
        return len(text.encode()) + 16


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
    pieces = [p + delimiter for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])
    steps: list[str] = []
    for piece in pieces:
        if steps and not piece.strip():
            steps[-1] += piece  # blank text stays with the step before: the text is the policy's own
        else:
            steps.append(piece)
    if steps and not steps[0].strip():  # leading blank text joins the first real step
        if len(steps) == 1:
            return []
        blank = steps.pop(0)
        steps[0] = blank + steps[0]
    return steps


def token_logprobs(model, batch):
    """log P(token t | tokens before it) for t >= 1, as (B, T-1): entry t - 1 is token t's."""
    import torch.nn.functional as F

    logprobs = F.log_softmax(model(batch).float(), dim=-1)  # (B, T, vocab)
    return logprobs[:, :-1].gather(-1, batch[:, 1:, None])[..., 0]


class TinyFamilyScorer(Scorer):
    """A scorer that reads solutions with a tiny-core checkpoint, on the torch thread.

    Subclasses implement `_step_scores(batch, spans)`: the solutions of one
    problem come as one right-padded batch (so a score depends only on its
    problem's samples) with each step's [start, end) token span.
    """

    def __init__(self, checkpoint_name: str) -> None:
        from thinkscale import torch_thread
        from thinkscale.tiny import checkpoint

        self.checkpoint = torch_thread.call(checkpoint.load, checkpoint_name)
        self.tokenizer = self.checkpoint.tokenizer
        config = self.checkpoint.model.config
        self._flops_per_token = forward_flops_per_token(config.num_parameters(), config.vocab_size * config.hidden_size)

    def flops_per_token(self) -> float:
        return self._flops_per_token

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text))

    async def score(self, prompt: str, solutions: list[str], step_delimiter: str) -> Scores:
        from thinkscale import torch_thread

        return await torch_thread.run(self._score, prompt, solutions, step_delimiter)

    def _score(self, prompt: str, solutions: list[str], step_delimiter: str) -> Scores:
        import torch

        if not solutions:
            return Scores([], 0)
        encoded = [self.tokenizer.encode_steps(prompt, self.steps_of(s, step_delimiter)) for s in solutions]
        rows = [ids for ids, _ in encoded]
        with torch.inference_mode():
            per_step = self._step_scores(self.tokenizer.pad(rows), [spans for _, spans in encoded])
        scored = sum(map(len, rows))
        return Scores(per_step, scored, self._flops_per_token * scored)

    def steps_of(self, solution: str, delimiter: str) -> list[str]:
        """The pieces that get one score each: the steps (an outcome model reads the whole as one)."""
        return split_steps(solution, delimiter)

    @abstractmethod
    def _step_scores(self, batch, spans: list[list[tuple[int, int]]]) -> list[list[float]]:
        """Per-step scores from the padded batch (B, T) and each solution's step spans."""
