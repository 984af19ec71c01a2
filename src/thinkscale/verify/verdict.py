"""The Verdict: what a verifier says about one solution. Every checker and every task returns one."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Verdict:
    correct: bool
    reason: str = ""  # why not, where a checker can say (a failed test, an invalid step, a time-out)
