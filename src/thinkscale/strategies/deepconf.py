"""DeepConf (Fu et al., arXiv 2508.15260): a vote that trusts confident samples, and stops unconfident ones early.

    strategies:
      - name: deepconf
        settings: {n: 64, mode: online, warmup: 16, keep: 0.9, window: 16}

Each sample carries its confidence: the lowest mean, over any `window`
consecutive tokens, of minus the mean log-probability of the `top_k` most
likely tokens at each step (tiny/engine.py; high means the model was sure).

- `offline`: draw all `n`, keep the `keep` share with the highest confidence
  (the floor is that share's quantile), and vote among the kept, each answer
  weighted by its samples' summed confidence.
- `online`: draw `warmup` samples whole; the floor is the same quantile of
  theirs. Then draw `wave` at a time with the floor given to the policy, which
  cuts a sample while it is generated as soon as its current window falls
  below it (FINISH_CUT: its tokens counted, never an answer); stop once the
  leading answer holds `consensus` of the weighted vote, or at `n` samples.
  The vote is among the samples at or above the floor, weighted as offline.

`keep: 0.9` is DeepConf-high, `keep: 0.1` DeepConf-low. Needs a policy that
gives per-token confidences and cuts in flight (`Capabilities.confidence`:
the tiny core); another is refused by name before anything is spent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from thinkscale.budget import Budget
from thinkscale.policies.base import Confidence, Policy
from thinkscale.strategies.base import SamplingSettings, Search, draw_wave, wave_seed
from thinkscale.tasks.base import Problem, Task
from thinkscale.trace import Node, Trace

SCORE = "deepconf"


@dataclass(frozen=True)
class DeepConfSettings(SamplingSettings):
    mode: str = "online"  # or "offline": draw all n, then filter and weight
    warmup: int = 16  # online: samples drawn whole first, to set the floor
    keep: float = 0.9  # the share of samples the floor keeps (DeepConf-high 0.9, DeepConf-low 0.1)
    window: int = 16  # tokens per group
    top_k: int = 5  # tokens whose mean log-probability makes a token's confidence
    wave: int = 8  # online: samples drawn together after the warm-up
    consensus: float | None = 0.95  # online: stop once the leader holds this share of the weighted vote

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode not in ("online", "offline"):
            raise ValueError(f"mode must be 'online' or 'offline', got {self.mode!r}")
        if not 0 < self.keep <= 1:
            raise ValueError(f"keep must be in (0, 1], got {self.keep}")
        for name in ("warmup", "window", "top_k", "wave"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.consensus is not None and not 0 < self.consensus <= 1:
            raise ValueError(f"consensus must be in (0, 1], got {self.consensus}")


def floor_of(confidences: list[float], keep: float) -> float:
    """The confidence at or above which the `keep` share of `confidences` lies."""
    return float(np.quantile(np.asarray(confidences), 1.0 - keep, method="lower")) if confidences else -np.inf


def weighted_vote(nodes: list[Node], floor: float) -> tuple[str | None, float]:
    """The answer with the largest summed confidence among answered samples at or above `floor` (the first
    seen among equals), and its share of the vote."""
    totals: dict[str, float] = {}
    for node in nodes:
        if node.finished and node.answer is not None and node.scores[SCORE] >= floor:
            totals[node.answer] = totals.get(node.answer, 0.0) + node.scores[SCORE]
    if not totals:
        return None, 0.0
    best, total = max(totals.values()), sum(totals.values())
    leader = next(a for a in totals if totals[a] == best)
    return leader, best / total if total > 0 else 1.0 / len(totals)


class DeepConf:
    name = "deepconf"
    Settings = DeepConfSettings

    def __init__(self, settings: DeepConfSettings | None = None) -> None:
        self.settings = settings or DeepConfSettings()

    async def solve(self, problem: Problem, task: Task, policy: Policy, scorer: object,
                    budget: Budget, seed: int) -> Trace:
        if not policy.capabilities.confidence:
            raise ValueError(f"deepconf needs per-token confidences and a policy that cuts a sample in flight; "
                             f"the {policy.name} policy gives neither (the tiny policy does). Use majority_vote "
                             f"with a stopping rule (adaptive_consistency or esc) instead")
        if not task.votable:
            raise ValueError(f"deepconf votes on answers; {task.name} is graded on its steps")
        s = self.settings
        search = Search.start(self.name, s, problem, task, policy, scorer, budget, seed)
        measured = Confidence(window=s.window, top_k=s.top_k)
        first = s.n if s.mode == "offline" else min(s.warmup, s.n)
        drawn = await draw_wave(search, s, first, wave_seed(search, 0), confidence=measured)
        floor = floor_of([n.scores[SCORE] for n in drawn], s.keep)
        index, count = 1, len(drawn)
        while s.mode == "online" and drawn and count < s.n and not self._settled(search, floor):
            cut = Confidence(window=s.window, top_k=s.top_k, floor=floor)
            new = await draw_wave(search, s, min(s.wave, s.n - count), wave_seed(search, index), confidence=cut)
            if not new:
                break  # the budget ended it
            index, count = index + 1, count + len(new)
        trace = search.trace
        trace.settings["floor"] = floor if drawn else None  # None: the budget bought no sample
        trace.chosen_answer, _ = weighted_vote(list(trace.terminals()), floor)
        search.emit("chosen", [n for n in trace.terminals() if n.finished and n.answer == trace.chosen_answer
                               and n.scores[SCORE] >= floor][:1])
        return trace

    def _settled(self, search: Search, floor: float) -> bool:
        if self.settings.consensus is None:
            return False
        _, share = weighted_vote(list(search.trace.terminals()), floor)
        return share >= self.settings.consensus
