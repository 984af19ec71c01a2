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
import torch.nn.functional as F

from thinkscale.scorers.base import TinyFamilyScorer


class ConfidenceScorer(TinyFamilyScorer):
    name = "confidence"

    def __init__(self, checkpoint_name: str = "arithmetic") -> None:
        super().__init__(checkpoint_name)

    def _step_scores(self, batch: torch.Tensor, spans: list[list[tuple[int, int]]]) -> list[list[float]]:
        logprobs = F.log_softmax(self.checkpoint.model(batch).float(), dim=-1)  # (B, T, vocab)
        # token t is predicted at position t - 1
        token_lp = logprobs[:, :-1].gather(-1, batch[:, 1:, None])[..., 0]  # (B, T-1)
        return [[math.exp(float(token_lp[i, a - 1:b - 1].mean())) for a, b in bounds]
                for i, bounds in enumerate(spans)]
