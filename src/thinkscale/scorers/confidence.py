"""The confidence scorer: the policy's own probability of each step. No training.

A step's score is the geometric mean of the probabilities the model gives its
tokens (exp of their mean log-probability), read by teacher forcing the
prompt and the solution through a tiny-core checkpoint. The solutions of one
problem are scored together in one batch, so a solution's score depends only
on its problem's samples, never on what else ran at the time.
"""

from __future__ import annotations

import math

import torch

from thinkscale.scorers.base import TinyFamilyScorer, token_logprobs


class ConfidenceScorer(TinyFamilyScorer):
    name = "confidence"

    def __init__(self, checkpoint_name: str = "arithmetic") -> None:
        super().__init__(checkpoint_name)

    def _step_scores(self, batch: torch.Tensor, spans: list[list[tuple[int, int]]]) -> list[list[float]]:
        token_lp = token_logprobs(self.checkpoint.model, batch)  # token t is predicted at position t - 1
        return [[math.exp(float(token_lp[i, a - 1:b - 1].mean())) for a, b in bounds]
                for i, bounds in enumerate(spans)]
