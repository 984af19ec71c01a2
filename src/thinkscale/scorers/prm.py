"""The process reward model scorer: P(+) after every step, from a tiny-family PRM.

Trained by `thinkscale train prm` (see tiny/train_prm.py). A PRM knows one
task's format; asked to score another task it refuses by name. The solutions
of one problem are scored together in one batch, so a score depends only on
its problem's samples.
"""

from __future__ import annotations

import json

import torch

from thinkscale.scorers.base import TinyFamilyScorer
from thinkscale.tiny.train_prm import step_probabilities


class PRMScorer(TinyFamilyScorer):
    name = "prm"

    def __init__(self, checkpoint_name: str = "arithmetic-prm") -> None:
        super().__init__(checkpoint_name)
        meta_path = self.checkpoint.path / "prm.json"
        if not meta_path.exists():
            raise ValueError(f"{self.checkpoint.path} is not a PRM checkpoint: it has no prm.json "
                             f"(train one with `thinkscale train prm`)")
        meta = json.loads(meta_path.read_text())
        self.task = meta["task"]
        self.good, self.bad = (self.tokenizer.ids[t] for t in meta["label_tokens"])

    def check_task(self, task_name: str) -> None:
        if task_name != self.task:
            raise ValueError(f"the PRM {self.checkpoint.path.name!r} was trained on {self.task!r} and cannot score "
                             f"{task_name!r}: its step format is another task's")

    def _step_scores(self, batch: torch.Tensor, spans: list[list[tuple[int, int]]]) -> list[list[float]]:
        good = step_probabilities(self.checkpoint.model, batch, self.good, self.bad)[..., 0].exp()  # (B, T)
        return [[float(good[i, end - 1]) for _, end in bounds] for i, bounds in enumerate(spans)]  # each step's last token
