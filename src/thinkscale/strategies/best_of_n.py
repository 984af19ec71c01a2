"""Best-of-N: sample N whole solutions, score them, answer with the best one.

Only finished solutions are scored and can be chosen; a truncated one never
is. The score of a solution is its step scores aggregated as the settings say
(`last`, `min`, `prod` or `mean`). Ties go to the earliest sample.
"""

from __future__ import annotations

from dataclasses import dataclass

from thinkscale.budget import Budget
from thinkscale.policies.base import Policy
from thinkscale.scorers.base import AGGREGATIONS, Scorer, aggregate
from thinkscale.strategies.base import SamplingSettings, Search, answered, choose_best, sample_whole
from thinkscale.tasks.base import Problem, Task
from thinkscale.trace import Trace


@dataclass(frozen=True)
class BestOfNSettings(SamplingSettings):
    aggregation: str = "min"

    def __post_init__(self) -> None:
        super().__post_init__()
        aggregate([1.0], self.aggregation)  # an unknown name fails here, naming the valid ones


class BestOfN:
    name = "best_of_n"
    Settings = BestOfNSettings

    def __init__(self, settings: BestOfNSettings | None = None) -> None:
        self.settings = settings or BestOfNSettings()

    async def solve(self, problem: Problem, task: Task, policy: Policy, scorer: Scorer | None,
                    budget: Budget, seed: int) -> Trace:
        search = Search.start(self.name, self.settings, problem, task, policy, scorer, budget, seed,
                              needs_scorer=True)
        await sample_whole(search, self.settings, scored=True)
        trace = search.trace
        candidates = answered(trace)
        scores = await search.score([n.text for n in candidates])
        if scores is not None:  # the scores cover the candidates the budget paid to score
            scored = candidates[:len(scores.per_step)]
            for node, steps in zip(scored, scores.per_step):
                node.scores[scorer.name] = aggregate(steps, self.settings.aggregation)
            search.emit("scored", scored)
            search.choose(self.choose(scored, scorer.name))
        return trace

    choose = staticmethod(choose_best)


__all__ = ["AGGREGATIONS", "BestOfN", "BestOfNSettings"]
