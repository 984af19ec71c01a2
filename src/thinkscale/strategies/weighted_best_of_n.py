"""Weighted best-of-N: sum the scores of the solutions behind each distinct answer.

Majority vote weighted by a reward model: the answer with the largest total
score wins (ties to the answer seen first), and the trace points at that
answer's best-scoring solution.
"""

from __future__ import annotations

from thinkscale.strategies.base import choose_weighted
from thinkscale.strategies.best_of_n import BestOfN, BestOfNSettings


class WeightedBestOfN(BestOfN):
    name = "weighted_best_of_n"
    Settings = BestOfNSettings
    choose = staticmethod(choose_weighted)
