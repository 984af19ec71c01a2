"""The confidence scorer: the policy's own probability of each step. No training.

A step's score is the geometric mean of the probabilities the model gives its
tokens (exp of their mean log-probability), read by teacher forcing the
prompt and the solution through a tiny-core checkpoint. A score depends only
on its own solution, never on what else was read at the time (scorers/base.py).
"""

from __future__ import annotations

import math

import torch

from thinkscale.scorers.base import TinyFamilyScorer, token_logprobs
from thinkscale.tiny import DtypeName


class ConfidenceScorer(TinyFamilyScorer):
    name = "confidence"

    def __init__(self, checkpoint_name: str = "arithmetic", prefix_cache_mb: float = 512,
                 dtype: DtypeName = "float32", cpu_kernel: bool | None = None) -> None:
        super().__init__(checkpoint_name, prefix_cache_mb, dtype, cpu_kernel)

    def _step_scores(self, rows: list[list[int]], logits: list[torch.Tensor],
                     spans: list[list[tuple[int, int]]]) -> list[list[float]]:
        scores = []
        for ids, row_logits, bounds in zip(rows, logits, spans):
            token_lp = token_logprobs(row_logits, ids)  # token t is predicted at position t - 1
            scores.append([math.exp(float(token_lp[a - 1:b - 1].mean())) for a, b in bounds])
        return scores
