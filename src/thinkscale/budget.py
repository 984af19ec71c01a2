"""Budget and Usage: what compute a strategy may spend, and what it spent.

Every strategy reports its Usage in the same units, so that strategies are
compared at equal compute rather than at equal "N".
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields


@dataclass
class Usage:
    """Compute spent. Counters add up; `+=` merges the usage of two pieces of work."""

    generated_tokens: int = 0
    prompt_tokens: int = 0  # prompt tokens sent, counted once per sample
    cached_prompt_tokens: int = 0  # of those, how many a prefix cache could reuse
    policy_calls: int = 0  # requests sent to the policy
    samples: int = 0  # completions received
    scorer_calls: int = 0
    scored_tokens: int = 0
    tool_calls: int = 0
    tool_cpu_s: float = 0.0
    flops: float = 0.0  # estimate: 2 x parameters x tokens computed, policy and scorer
    wall_s: float = 0.0
    dollars: float = 0.0

    def __iadd__(self, other: "Usage") -> "Usage":
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self

    def __add__(self, other: "Usage") -> "Usage":
        total = dataclasses.replace(self)
        total += other
        return total

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Usage":
        return cls(**data)


class BudgetExceeded(ValueError):
    """Raised when a strategy asks for more than its Budget allows."""


@dataclass(frozen=True)
class Budget:
    """Limits on compute; None means unlimited. Checked against a Usage."""

    max_generated_tokens: int | None = None
    max_samples: int | None = None
    max_policy_calls: int | None = None
    max_flops: float | None = None
    max_wall_s: float | None = None

    _LIMITS = {
        "max_generated_tokens": "generated_tokens",
        "max_samples": "samples",
        "max_policy_calls": "policy_calls",
        "max_flops": "flops",
        "max_wall_s": "wall_s",
    }

    def exceeded_by(self, usage: Usage) -> list[str]:
        """Names of the limits that `usage` goes past (empty if within budget)."""
        over = []
        for limit, counter in self._LIMITS.items():
            cap = getattr(self, limit)
            if cap is not None and getattr(usage, counter) > cap:
                over.append(f"{counter} {getattr(usage, counter)} > {limit} {cap}")
        return over

    def remaining_tokens(self, usage: Usage) -> int | None:
        if self.max_generated_tokens is None:
            return None
        return max(0, self.max_generated_tokens - usage.generated_tokens)

    def remaining_samples(self, usage: Usage) -> int | None:
        if self.max_samples is None:
            return None
        return max(0, self.max_samples - usage.samples)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self._LIMITS}
