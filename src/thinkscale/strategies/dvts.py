"""DVTS, diverse verifier tree search: n / width independent subtrees.

Each subtree starts from its own `width` first steps and is a beam search
that keeps one path and grows it `width` ways per round, so no subtree can
crowd out the others (a single beam tends to collapse onto one line of
reasoning). The solutions of all subtrees are pooled and chosen from as the
settings say. Settings as beam search's (strategies/beam_search.py).
"""

from __future__ import annotations

from thinkscale.strategies.beam_search import BeamSearch, BeamSearchSettings


class DVTS(BeamSearch):
    name = "dvts"
    Settings = BeamSearchSettings

    @staticmethod
    def layout(s: BeamSearchSettings) -> tuple[int, int, int]:
        return s.n // s.width, 1, s.width
