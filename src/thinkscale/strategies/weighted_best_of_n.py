"""Weighted best-of-N: sum the scores of the solutions behind each distinct answer.

Majority vote weighted by a reward model: the answer with the largest total
score wins (ties to the answer seen first), and the trace points at that
answer's best-scoring solution.
"""

from __future__ import annotations

from thinkscale.strategies.best_of_n import BestOfN, BestOfNSettings
from thinkscale.trace import Node


class WeightedBestOfN(BestOfN):
    name = "weighted_best_of_n"
    Settings = BestOfNSettings

    @staticmethod
    def choose(candidates: list[Node], score_name: str) -> Node:
        totals: dict[str, float] = {}
        for node in candidates:
            totals[node.answer] = totals.get(node.answer, 0.0) + node.scores[score_name]
        first_seen = {a: i for i, a in reversed(list(enumerate(n.answer for n in candidates)))}
        answer = max(totals, key=lambda a: (totals[a], -first_seen[a]))
        return BestOfN.choose([n for n in candidates if n.answer == answer], score_name)
