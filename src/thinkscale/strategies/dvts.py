"""DVTS, diverse verifier tree search: n / width independent subtrees.

Each subtree starts from its own `width` first steps and is a beam search
that keeps one path and grows it `width` ways per round, so no subtree can
crowd out the others (a single beam tends to collapse onto one line of
reasoning). The solutions of all subtrees are pooled and chosen from as the
settings say. Settings as beam search's (strategies/beam_search.py).
"""

from __future__ import annotations

from dataclasses import asdict

from thinkscale.budget import Budget
from thinkscale.policies.base import Policy
from thinkscale.scorers.base import Scorer
from thinkscale.strategies.beam_search import BeamSearchSettings, grouped_search
from thinkscale.strategies.steps import start_trace
from thinkscale.tasks.base import Problem, Task
from thinkscale.trace import Trace


class DVTS:
    name = "dvts"
    Settings = BeamSearchSettings

    def __init__(self, settings: BeamSearchSettings | None = None) -> None:
        self.settings = settings or BeamSearchSettings()

    async def solve(self, problem: Problem, task: Task, policy: Policy, scorer: Scorer | None,
                    budget: Budget, seed: int) -> Trace:
        s = self.settings
        trace = start_trace(problem, self.name, asdict(s), seed, scorer, task)
        await grouped_search(task, policy, scorer, budget, seed, trace, s, groups=s.n // s.width, keep=1, grow=s.width)
        return trace
