"""Scorers by name: reward models behind one interface (see scorers/base.py)."""

from __future__ import annotations

from typing import Any

from thinkscale.registry import Registry
from thinkscale.scorers.base import AGGREGATIONS, Scorer, Scores, aggregate

SCORERS: Registry[Scorer] = Registry("scorer")


@SCORERS.register("confidence")
def _confidence(**options: Any) -> Scorer:
    from thinkscale.scorers.confidence import ConfidenceScorer

    return ConfidenceScorer(**options)


@SCORERS.register("prm")
def _prm(**options: Any) -> Scorer:
    from thinkscale.scorers.prm import PRMScorer

    return PRMScorer(**options)


@SCORERS.register("orm")
def _orm(**options: Any) -> Scorer:
    from thinkscale.scorers.orm import ORMScorer

    return ORMScorer(**options)


def get_scorer(name: str, **options: Any) -> Scorer:
    return SCORERS.get(name)(**options)


__all__ = ["AGGREGATIONS", "SCORERS", "Scorer", "Scores", "aggregate", "get_scorer"]
