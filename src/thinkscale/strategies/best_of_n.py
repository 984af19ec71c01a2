"""Best-of-N: sample N whole solutions, score them, answer with the best one.

Only finished solutions are scored and can be chosen; a truncated one never
is. The score of a solution is its step scores aggregated as the settings say
(`last`, `min`, `prod` or `mean`). Ties go to the earliest sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from thinkscale.budget import Budget
from thinkscale.policies.base import Policy
from thinkscale.scorers.base import AGGREGATIONS, Scorer, aggregate
from thinkscale.strategies.base import SamplingSettings, Search, answered, choose_best, sample_whole
from thinkscale.strategies.stopping import make_rule
from thinkscale.tasks.base import Problem, Task
from thinkscale.trace import Node, Trace


@dataclass(frozen=True)
class BestOfNSettings(SamplingSettings):
    aggregation: str = "min"
    stopping: dict[str, Any] | None = None  # a stopping rule (strategies/stopping.py); n is then the most

    def __post_init__(self) -> None:
        super().__post_init__()
        aggregate([1.0], self.aggregation)  # an unknown name fails here, naming the valid ones
        make_rule(self.stopping, "best_of_n", has_scores=True)


class BestOfN:
    name = "best_of_n"
    Settings = BestOfNSettings

    def __init__(self, settings: BestOfNSettings | None = None) -> None:
        self.settings = settings or BestOfNSettings()

    async def solve(self, problem: Problem, task: Task, policy: Policy, scorer: Scorer | None,
                    budget: Budget, seed: int) -> Trace:
        s = self.settings
        search = Search.start(self.name, s, problem, task, policy, scorer, budget, seed, needs_scorer=True)
        trace, rule = search.trace, make_rule(s.stopping, self.name, has_scores=True)

        async def score_wave(new: list[Node]) -> bool:
            """Score the wave's finished solutions; True when the stopping rule says enough."""
            candidates = [n for n in new if n.finished and n.answer is not None]
            scores = await search.score([n.text for n in candidates])
            if scores is not None:  # the scores cover the candidates the budget paid to score
                scored = candidates[:len(scores.per_step)]
                for node, steps in zip(scored, scores.per_step):
                    node.scores[scorer.name] = aggregate(steps, s.aggregation)
                search.emit("scored", scored)
            if rule is None:
                return False
            terminals = list(trace.terminals())
            return rule.should_stop([n.answer if n.finished else None for n in terminals],
                                    [n.scores.get(scorer.name, 0.0) for n in terminals])

        await sample_whole(search, s, scored=True, wave=rule.wave if rule else None, after_wave=score_wave)
        scored = [n for n in answered(trace) if scorer.name in n.scores]
        if scored:
            search.choose(self.choose(scored, scorer.name))
        return trace

    choose = staticmethod(choose_best)


__all__ = ["AGGREGATIONS", "BestOfN", "BestOfNSettings"]
