"""Repeated sampling: n independent whole completions, a Trace of depth one.

It chooses nothing: its output is measured as coverage (pass@k), which may use
the verifier. Majority vote and the reward-model strategies choose from it.
"""

from __future__ import annotations

from typing import Any

from thinkscale.budget import Budget
from thinkscale.policies.base import Policy
from thinkscale.strategies.base import SamplingSettings, Search, sample_whole
from thinkscale.tasks.base import Problem, Task
from thinkscale.trace import Node, Trace


class RepeatedSampling:
    name = "repeated_sampling"
    Settings = SamplingSettings

    def __init__(self, settings: SamplingSettings | None = None) -> None:
        self.settings = settings or SamplingSettings()

    async def solve(self, problem: Problem, task: Task, policy: Policy, scorer: object,
                    budget: Budget, seed: int) -> Trace:
        search = Search.start(self.name, self.settings, problem, task, policy, scorer, budget, seed)
        rule = self.rule()
        if rule is None:
            await sample_whole(search, self.settings)
        else:
            async def enough(new: list[Node]) -> bool:
                return rule.should_stop(search.trace.answers())

            await sample_whole(search, self.settings, wave=rule.wave, after_wave=enough)
        self.decide(search)
        return search.trace

    def rule(self) -> Any:
        """The stopping rule, where the strategy has one (strategies/stopping.py)."""
        return None

    def decide(self, search: Search) -> None:
        """Choose among the samples: repeated sampling chooses nothing (it is measured as coverage)."""
