"""Strategies by name: one file each, `solve(problem, task, policy, scorer, budget, seed) -> Trace`."""

from __future__ import annotations

from typing import Any

from thinkscale.registry import Registry
from thinkscale.strategies.base import Strategy, settings_from_dict

STRATEGIES: Registry[Strategy] = Registry("strategy")


@STRATEGIES.register("repeated_sampling")
def _repeated_sampling(**settings: Any) -> Strategy:
    from thinkscale.strategies.repeated_sampling import RepeatedSampling

    return RepeatedSampling(settings_from_dict(RepeatedSampling.Settings, settings, "repeated_sampling settings"))


@STRATEGIES.register("majority_vote")
def _majority_vote(**settings: Any) -> Strategy:
    from thinkscale.strategies.majority_vote import MajorityVote

    return MajorityVote(settings_from_dict(MajorityVote.Settings, settings, "majority_vote settings"))


def get_strategy(name: str, **settings: Any) -> Strategy:
    return STRATEGIES.get(name)(**settings)


__all__ = ["STRATEGIES", "Strategy", "get_strategy"]
