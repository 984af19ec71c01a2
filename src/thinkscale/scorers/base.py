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
from thinkscale.tiny import DtypeName


@dataclass(frozen=True)
class Scores:
    per_step: list[list[float]]  # per_step[i][s]: step s of solution i
    scored_tokens: int  # tokens the scorer read, for the Usage
    flops: float = 0.0


class Scorer(ABC):
    name: str = "scorer"

    @abstractmethod
    async def score(self, prompt: str, solutions: list[str], step_delimiter: str, scope: object = None,
                    max_tokens: int | None = None) -> Scores:
        """Score each solution of `prompt`, one value per step (steps end at `step_delimiter`).

        `scope`: a scorer that caches what it read shares it within one scope
        (a search). `max_tokens`: read at most this many tokens, scoring only
        the leading solutions that fit (Scores.per_step is then shorter).
        """

    def check_task(self, task_name: str) -> None:
        """Refuse a task this scorer was not made for (a reward model trained on another format)."""

    def flops_per_token(self) -> float | None:
        """FLOPs to read one token, where the model is known (a FLOPs budget needs it)."""
        return None

    def count_tokens(self, text: str) -> int:
        """Tokens the scorer reads for `text` (a bound where it cannot count exactly)."""
        return len(text.encode()) + 16

    def prompt_reads(self, n: int) -> int:
        """How many times one call scoring `n` solutions of a prompt reads the prompt, at most."""
        return n

    def release(self, scope: object) -> None:
        """The search of `scope` has ended: a scorer may forget what it cached for it (as Policy.release:
        from a finalizer, on any thread, taking no lock)."""


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


def token_logprobs(logits, ids):
    """log P(token t | tokens before it) for t >= 1, from one sequence's logits (T, vocab): entry t - 1 is token t's."""
    import torch
    import torch.nn.functional as F

    logprobs = F.log_softmax(logits.float(), dim=-1)  # (T, vocab)
    return logprobs[:-1].gather(-1, torch.as_tensor(ids[1:], device=logits.device)[:, None])[:, 0]


class TinyFamilyScorer(Scorer):
    """A scorer that reads solutions with a tiny-core checkpoint, on the torch thread.

    Reading goes through the tiny engine (tiny/engine.py) with a prefix cache:
    a path whose parent was scored a moment ago (a step search's next step)
    reads only its new tokens, and the samples of one problem read their
    shared prompt once. The engine computes every position as a row, so a
    score is the same, to the bit, whatever was cached or shared the call;
    `Scores.scored_tokens` counts the tokens actually computed. Subclasses
    implement `_step_scores(rows, logits, spans)`: each solution's token ids,
    the logits at each of its positions, and each step's [start, end) span.
    """

    def __init__(self, checkpoint_name: str, prefix_cache_mb: float = 512, dtype: DtypeName = "float32",
                 cpu_kernel: bool | None = None) -> None:
        """`dtype`: "float32", or "bfloat16" (faster where the CPU has bfloat16 units; scores then move a
        little from float32's: tiny/engine.py). `cpu_kernel`: attention in the engine's C kernel on a CPU
        (tiny/cpu_kernel.py; faster, rounded otherwise; default: on where it builds, unless
        $THINKSCALE_CPU_KERNEL is 0; False: the torch path)."""
        from thinkscale import torch_thread
        from thinkscale.tiny import checkpoint
        from thinkscale.tiny.engine import Engine, dtype_named

        if prefix_cache_mb < 0:
            raise ValueError(f"prefix_cache_mb must be >= 0, got {prefix_cache_mb}")
        torch_dtype = dtype_named(dtype)

        def load() -> tuple:
            ck = checkpoint.load(checkpoint_name)
            return ck, Engine(ck.model, max_rows=1, prefix_cache_bytes=int(prefix_cache_mb * 2**20), dtype=torch_dtype,
                              cpu_kernel=cpu_kernel)

        self.checkpoint, self.engine = torch_thread.call(load)
        self.tokenizer = self.checkpoint.tokenizer
        config = self.checkpoint.model.config
        self._flops_per_token = forward_flops_per_token(config.num_parameters(), config.vocab_size * config.hidden_size)

    def flops_per_token(self) -> float:
        return self._flops_per_token

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text))

    def prompt_reads(self, n: int) -> int:
        return min(n, 1) if self.engine.prefix_cache is not None else n

    def release(self, scope: object) -> None:
        if self.engine.prefix_cache is not None:
            self.engine.prefix_cache.release(scope)

    async def score(self, prompt: str, solutions: list[str], step_delimiter: str, scope: object = None,
                    max_tokens: int | None = None) -> Scores:
        from thinkscale import torch_thread

        return await torch_thread.run(self._score, prompt, solutions, step_delimiter, scope, max_tokens)

    def _score(self, prompt: str, solutions: list[str], step_delimiter: str, scope: object,
               max_tokens: int | None) -> Scores:
        import torch

        if not solutions:
            return Scores([], 0)
        encoded = [self.tokenizer.encode_steps(prompt, self.steps_of(s, step_delimiter)) for s in solutions]
        rows = [ids for ids, _ in encoded]
        limit = self.checkpoint.model.config.max_position_embeddings
        if max(map(len, rows)) > limit:
            raise ValueError(f"a solution of {max(map(len, rows))} tokens with its prompt does not fit the "
                             f"{self.name} model's {limit} positions")
        logits, computed = self.engine.read([tuple(ids) for ids in rows], len(self.tokenizer.encode(prompt)), scope,
                                            max_tokens)
        with torch.inference_mode():
            per_step = self._step_scores(rows[:len(logits)], logits, [spans for _, spans in encoded[:len(logits)]])
        return Scores(per_step, computed, self._flops_per_token * computed)

    def steps_of(self, solution: str, delimiter: str) -> list[str]:
        """The pieces that get one score each: the steps (an outcome model reads the whole as one)."""
        return split_steps(solution, delimiter)

    @abstractmethod
    def _step_scores(self, rows: list[list[int]], logits: list, spans: list[list[tuple[int, int]]]) -> list[list[float]]:
        """Per-step scores from each solution's ids, its logits (T, vocab) and its step spans."""
