"""The process reward model scorer: one score per step, from a tiny-family PRM.

A verdict-head PRM gives P(+) after each step; a likelihood-head PRM gives
the lowest probability it assigns any token of the step (training/reward.py).
Trained by `thinkscale train prm` (see training/reward.py). A PRM knows one
task's format; asked to score another task it refuses by name. A path
reads only the tokens its cached parent did not (scorers/base.py).
"""

from __future__ import annotations

import json
import math

import torch

from thinkscale.scorers.base import TinyFamilyScorer, token_logprobs
from thinkscale.scorers.reward_head import REWARD_META, verdict_logprobs
from thinkscale.tiny import DtypeName


class PRMScorer(TinyFamilyScorer):
    name = "prm"

    def __init__(self, checkpoint_name: str = "arithmetic-prm", prefix_cache_mb: float = 512,
                 dtype: DtypeName = "float32", cpu_kernel: bool | None = None) -> None:
        super().__init__(checkpoint_name, prefix_cache_mb, dtype, cpu_kernel)
        meta_path = self.checkpoint.path / REWARD_META
        if not meta_path.exists():
            raise ValueError(f"{self.checkpoint.path} is not a reward model checkpoint: it has no {REWARD_META} "
                             f"(train one with `thinkscale train {self.name}`)")
        meta = json.loads(meta_path.read_text())
        if meta.get("kind") != self.name:
            raise ValueError(f"{self.checkpoint.path} is an {meta.get('kind')!r} checkpoint, not a {self.name!r} one")
        self.task = meta["task"]
        self.good, self.bad = (self.tokenizer.ids[t] for t in meta["label_tokens"])
        self.head = meta.get("head", "verdict")

    def check_task(self, task_name: str) -> None:
        if task_name != self.task:
            raise ValueError(f"the {self.name.upper()} {self.checkpoint.path.name!r} was trained on {self.task!r} and "
                             f"cannot score {task_name!r}: its format is another task's")

    def _step_scores(self, rows: list[list[int]], logits: list[torch.Tensor],
                     spans: list[list[tuple[int, int]]]) -> list[list[float]]:
        if self.head == "likelihood":  # the lowest probability of any token of the step
            lps = [token_logprobs(row_logits, ids) for ids, row_logits in zip(rows, logits)]
            return [[math.exp(float(lp[a - 1:b - 1].min())) for a, b in bounds] for lp, bounds in zip(lps, spans)]
        scores = []
        for row_logits, bounds in zip(logits, spans):
            good = verdict_logprobs(row_logits, self.good, self.bad)[:, 0].exp()  # (T,)
            scores.append([float(good[end - 1]) for _, end in bounds])  # after each step's last token
        return scores
