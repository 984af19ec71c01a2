"""Majority vote: sample n completions and answer with the most common answer.

Only finished samples with an extracted answer vote. Ties go to the answer
that appeared first, so the choice is a pure function of the samples.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from thinkscale.budget import Budget
from thinkscale.policies.base import Policy
from thinkscale.strategies.base import SamplingSettings, Search
from thinkscale.strategies.repeated_sampling import RepeatedSampling
from thinkscale.strategies.stopping import make_rule
from thinkscale.tasks.base import Problem, Task
from thinkscale.trace import Trace


def vote(answers: list[str | None]) -> str | None:
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    best = max(counts.values())
    return next(a for a in answers if a is not None and counts[a] == best)


@dataclass(frozen=True)
class VoteSettings(SamplingSettings):
    stopping: dict[str, Any] | None = None  # a stopping rule (strategies/stopping.py); n is then the most

    def __post_init__(self) -> None:
        super().__post_init__()
        make_rule(self.stopping, "majority_vote", has_scores=False)  # a bad rule fails here, by name


class MajorityVote(RepeatedSampling):
    name = "majority_vote"
    Settings = VoteSettings

    def __init__(self, settings: VoteSettings | None = None) -> None:
        super().__init__(settings or VoteSettings())

    def rule(self) -> Any:
        return make_rule(self.settings.stopping, self.name, has_scores=False)

    async def solve(self, problem: Problem, task: Task, policy: Policy, scorer: object,
                    budget: Budget, seed: int) -> Trace:
        if not task.votable:
            raise ValueError(f"majority vote needs a task whose answers can be compared; {task.name} is graded "
                             f"on its steps. Use repeated_sampling (coverage) or a reward-model strategy.")
        return await super().solve(problem, task, policy, scorer, budget, seed)

    def decide(self, search: Search) -> None:
        trace = search.trace
        trace.chosen_answer = vote(trace.answers())
        search.emit("chosen", [n for n in trace.terminals() if n.finished and n.answer == trace.chosen_answer][:1])
