"""Stopping rules: when to stop sampling one problem, decided on the samples seen so far.

    strategies:
      - name: majority_vote
        settings: {n: 64, stopping: {rule: adaptive_consistency, confidence: 0.95}}
      - name: weighted_best_of_n
        settings: {n: 64, stopping: {rule: verifier, confidence: 0.95, wave: 4}}
        scorer: {name: prm}

Samples arrive in waves (`wave` at a time, 1 by default); after each wave the
rule sees every answer so far (and, for the verifier rule, each sample's
reward-model score) and says stop or go on. `n` stays the most a problem may
take. The rules:

- `adaptive_consistency` (Aggarwal et al., arXiv 2305.11860): stop once the
  posterior probability that the leading answer is the majority answer
  reaches `confidence`. `prior: beta` looks at the top two answers,
  P(p1 > p2) under Beta(c1 + 1, c2 + 1); `prior: dirichlet` at all of them,
  P(leader has the largest share) under Dirichlet(c + 1), estimated from
  `draws` seeded draws (deterministic).
- `esc` (Early-Stopping Self-Consistency, arXiv 2401.10480): samples come in
  windows of `window`; stop at the first window whose answers all agree.
- `verifier`: the Dirichlet rule on soft counts, each answer counted by the
  summed reward-model scores of its samples: stop once the answer with the
  largest summed score leads with probability `confidence`. Needs a scorer
  (best-of-N, weighted best-of-N).

Samples without an answer (truncated, or none extracted) count for nothing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from thinkscale.registry import unknown_name_error


@dataclass(frozen=True)
class AdaptiveConsistency:
    confidence: float = 0.95
    prior: str = "dirichlet"  # or "beta": the top two answers only
    wave: int = 1
    draws: int = 4000  # Monte-Carlo draws of the Dirichlet posterior
    needs_scores = False

    def __post_init__(self) -> None:
        _check_common(self.confidence, self.wave)
        if self.prior not in ("beta", "dirichlet"):
            raise ValueError(f"prior must be 'beta' or 'dirichlet', got {self.prior!r}")

    def should_stop(self, answers: list[str | None], scores: list[float] | None = None) -> bool:
        counts = _totals(answers, [1.0] * len(answers))
        return leader_probability(counts, self.prior, self.draws) >= self.confidence


@dataclass(frozen=True)
class EarlyStoppingWindows:
    window: int = 8

    needs_scores = False

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"window must be at least 1, got {self.window}")

    @property
    def wave(self) -> int:
        return self.window

    def should_stop(self, answers: list[str | None], scores: list[float] | None = None) -> bool:
        last = answers[-self.window:]
        return len(last) == self.window and last[0] is not None and all(a == last[0] for a in last)


@dataclass(frozen=True)
class VerifierDominance:
    confidence: float = 0.95
    wave: int = 1
    draws: int = 4000
    needs_scores = True

    def __post_init__(self) -> None:
        _check_common(self.confidence, self.wave)

    def should_stop(self, answers: list[str | None], scores: list[float] | None = None) -> bool:
        if scores is None:
            raise ValueError("the verifier rule needs each sample's score")
        return leader_probability(_totals(answers, scores), "dirichlet", self.draws) >= self.confidence


RULES = {"adaptive_consistency": AdaptiveConsistency, "esc": EarlyStoppingWindows, "verifier": VerifierDominance}


def _check_common(confidence: float, wave: int) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    if wave < 1:
        raise ValueError(f"wave must be at least 1, got {wave}")


def _totals(answers: list[str | None], weights: list[float]) -> list[float]:
    """Each distinct answer's summed weight, leader first (the first seen among equals)."""
    totals: dict[str, float] = {}
    for answer, weight in zip(answers, weights):
        if answer is not None:
            totals[answer] = totals.get(answer, 0.0) + max(weight, 0.0)
    return sorted(totals.values(), reverse=True)


def leader_probability(counts: list[float], prior: str = "dirichlet", draws: int = 4000) -> float:
    """P(the answer with the largest count has the largest share), under a uniform prior over shares."""
    if not counts:
        return 0.0
    from scipy.stats import beta

    if prior == "beta" or len(counts) <= 2:
        first, second = counts[0], counts[1] if len(counts) > 1 else 0.0
        return float(beta.sf(0.5, first + 1, second + 1))
    import numpy as np

    rng = np.random.default_rng(0)  # the same draws every time: a rule is a pure function of its samples
    shares = rng.dirichlet(np.asarray(counts) + 1.0, size=draws)  # (draws, answers)
    return float((shares.argmax(axis=1) == 0).mean())


def make_rule(spec: dict[str, Any] | None, strategy: str, has_scores: bool) -> Any:
    """The rule a strategy's `stopping` setting describes; None for no setting.

    Refuses an unknown rule or key by name, and a rule the strategy cannot use.
    """
    if spec is None:
        return None
    if not isinstance(spec, dict) or "rule" not in spec:
        raise ValueError(f"stopping must be a mapping with a rule: one of {', '.join(RULES)} "
                         f"(e.g. {{rule: adaptive_consistency, confidence: 0.95}})")
    options = dict(spec)
    name = options.pop("rule")
    if name not in RULES:
        raise unknown_name_error("stopping rule", str(name), RULES)
    cls = RULES[name]
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(map(repr, unknown))} in the {name} stopping rule; "
                         f"valid keys: rule, {', '.join(sorted(known))}")
    rule = cls(**options)
    if rule.needs_scores and not has_scores:
        raise ValueError(f"the {name} stopping rule needs reward-model scores, and {strategy} has none; use it "
                         f"with best_of_n or weighted_best_of_n, or use adaptive_consistency or esc")
    return rule
