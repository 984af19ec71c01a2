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


@STRATEGIES.register("best_of_n")
def _best_of_n(**settings: Any) -> Strategy:
    from thinkscale.strategies.best_of_n import BestOfN

    return BestOfN(settings_from_dict(BestOfN.Settings, settings, "best_of_n settings"))


@STRATEGIES.register("weighted_best_of_n")
def _weighted_best_of_n(**settings: Any) -> Strategy:
    from thinkscale.strategies.weighted_best_of_n import WeightedBestOfN

    return WeightedBestOfN(settings_from_dict(WeightedBestOfN.Settings, settings, "weighted_best_of_n settings"))


@STRATEGIES.register("beam_search")
def _beam_search(**settings: Any) -> Strategy:
    from thinkscale.strategies.beam_search import BeamSearch

    return BeamSearch(settings_from_dict(BeamSearch.Settings, settings, "beam_search settings"))


@STRATEGIES.register("dvts")
def _dvts(**settings: Any) -> Strategy:
    from thinkscale.strategies.dvts import DVTS

    return DVTS(settings_from_dict(DVTS.Settings, settings, "dvts settings"))


@STRATEGIES.register("mcts")
def _mcts(**settings: Any) -> Strategy:
    from thinkscale.strategies.mcts import MCTS

    return MCTS(settings_from_dict(MCTS.Settings, settings, "mcts settings"))


@STRATEGIES.register("particle_filtering")
def _particle_filtering(**settings: Any) -> Strategy:
    from thinkscale.strategies.particle_filtering import ParticleFiltering

    return ParticleFiltering(settings_from_dict(ParticleFiltering.Settings, settings, "particle_filtering settings"))


@STRATEGIES.register("compute_optimal")
def _compute_optimal(**settings: Any) -> Strategy:
    from thinkscale.strategies.compute_optimal import ComputeOptimal

    return ComputeOptimal(settings_from_dict(ComputeOptimal.Settings, settings, "compute_optimal settings"))


@STRATEGIES.register("deepconf")
def _deepconf(**settings: Any) -> Strategy:
    from thinkscale.strategies.deepconf import DeepConf

    return DeepConf(settings_from_dict(DeepConf.Settings, settings, "deepconf settings"))


def get_strategy(name: str, **settings: Any) -> Strategy:
    return STRATEGIES.get(name)(**settings)


__all__ = ["STRATEGIES", "Strategy", "get_strategy"]
