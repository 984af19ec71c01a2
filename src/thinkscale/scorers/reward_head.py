"""What the reward-model scorers and their training share: the head, its label tokens, its metadata file.

A tiny-family reward model is a plain checkpoint plus `reward_model.json`
(REWARD_META) saying its kind (prm, orm), task and head. The "verdict" head
reads P(+) against P(-) over the two label tokens after a step; the
"likelihood" head keeps the language-model head (see scorers/prm.py).
Training (training/reward.py) writes what scoring (scorers/prm.py) reads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

GOOD, BAD = "+", "-"  # the label tokens of the verdict head
REWARD_META = "reward_model.json"
HEADS = ("likelihood", "verdict")


def step_probabilities(model: torch.nn.Module, ids: torch.Tensor, good: int, bad: int) -> torch.Tensor:
    """log P(+) and log P(-) at every position, over the two label tokens: (B, T, 2)."""
    return verdict_logprobs(model(ids), good, bad)


def verdict_logprobs(logits: torch.Tensor, good: int, bad: int) -> torch.Tensor:
    """log P(+) and log P(-) from logits (..., vocab), over the two label tokens: (..., 2)."""
    return F.log_softmax(logits[..., [good, bad]].float(), dim=-1)
