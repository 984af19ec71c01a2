"""Repeated sampling: n independent whole completions, a Trace of depth one.

It chooses nothing: its output is measured as coverage (pass@k), which may use
the verifier. Majority vote and the reward-model strategies choose from it.
"""

from __future__ import annotations

from dataclasses import asdict

from thinkscale.budget import Budget
from thinkscale.policies.base import Policy
from thinkscale.strategies.base import SamplingSettings, sample_whole
from thinkscale.tasks.base import Problem, Task
from thinkscale.trace import Trace


class RepeatedSampling:
    name = "repeated_sampling"
    Settings = SamplingSettings

    def __init__(self, settings: SamplingSettings | None = None) -> None:
        self.settings = settings or SamplingSettings()

    async def solve(self, problem: Problem, task: Task, policy: Policy, scorer: object,
                    budget: Budget, seed: int) -> Trace:
        trace = Trace(problem_id=problem.id, strategy=self.name, settings=asdict(self.settings), seed=seed,
                      difficulty=problem.difficulty)
        await sample_whole(problem, task, policy, self.settings, budget, seed, trace)
        return trace
