"""Scorers by name: reward models behind one interface (see scorers/base.py)."""

from __future__ import annotations

from typing import Any

from thinkscale.registry import Registry
from thinkscale.scorers.base import AGGREGATIONS, Scorer, Scores, aggregate

SCORERS: Registry[Scorer] = Registry("scorer")
SCORERS.register_class("confidence", "thinkscale.scorers.confidence:ConfidenceScorer")
SCORERS.register_class("prm", "thinkscale.scorers.prm:PRMScorer")
SCORERS.register_class("orm", "thinkscale.scorers.orm:ORMScorer")


def get_scorer(name: str, **options: Any) -> Scorer:
    return SCORERS.get(name)(**options)


__all__ = ["AGGREGATIONS", "SCORERS", "Scorer", "Scores", "aggregate", "get_scorer"]
