"""Budget and Usage: what compute a strategy may spend, and what it spent.

Every strategy reports its Usage in the same units, so that strategies are
compared at equal compute rather than at equal "N". Before any piece of work
(a policy call, a scorer call) a strategy asks `Budget.afford` what it may
cost; the answer is computed for the worst case of that work (every sample
runs to its token limit, a server that ignores `n` gets one call per sample),
so no strategy can pass a limit on any backend, only stop early.

    budget = Budget(max_generated_tokens=2000, max_flops=1e9)
    tokens = budget.afford(usage, Work(samples=8, max_tokens=48, calls=1, prompt_tokens=20,
                                       flops_per_token=1.7e6))
    # 0: not even one token each fits; else each of the 8 samples may generate up to `tokens`
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields


@dataclass
class Usage:
    """Compute spent. Counters add up; `+=` merges the usage of two pieces of work."""

    generated_tokens: int = 0
    prompt_tokens: int = 0  # prompt tokens sent, counted once per sample
    cached_prompt_tokens: int = 0  # of those, how many were not computed again (shared by n samples, or cached)
    policy_calls: int = 0  # requests sent to the backend (a server that ignores `n` gets one per sample)
    samples: int = 0  # completions received
    scorer_calls: int = 0
    scored_tokens: int = 0  # tokens the scorer computed (a cached prefix is not read again)
    flops: float = 0.0  # estimate: 2 x non-embedding parameters x tokens computed, policy and scorer
    wall_s: float = 0.0  # time spent waiting on policy, scorer and tool calls
    tool_calls: int = 0  # tool calls run (tools/), failed ones included
    tool_errors: int = 0  # of those, the ones that failed (the policy read an error)
    tool_cpu_s: float = 0.0  # CPU seconds the tools took, every process they used
    tool_wall_s: float = 0.0  # the tool calls' wall time, summed (calls that run at once overlap in wall_s)
    dollars: float = 0.0  # under a price table (Prices), where the run has one

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
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class Prices:
    """What compute costs in dollars: per million tokens of the policy and the scorer, per CPU-hour of tools.

    `dollars(usage)` prices a Usage from its counters alone, so a ledger can
    be priced again under another table. Prompt tokens a cache held are
    charged at `cached_prompt` (an API's cached-input price); a local model is
    priced by turning its hourly price into one per token at a stated
    throughput (`per_token_from_hour`).
    """

    prompt: float  # $ per million prompt tokens computed (sent and not cached)
    generated: float  # $ per million generated tokens
    cached_prompt: float | None = None  # $ per million cached prompt tokens; None: the prompt price
    scored: float = 0.0  # $ per million tokens the scorer computed
    tool_cpu_hour: float = 0.0  # $ per CPU-hour of tool calls

    def __post_init__(self) -> None:
        for name in ("prompt", "generated", "cached_prompt", "scored", "tool_cpu_hour"):
            value = getattr(self, name)
            if value is not None and (not math.isfinite(value) or value < 0):
                raise ValueError(f"price {name} must be a finite number >= 0, got {value}")

    def dollars(self, usage: "Usage") -> float:
        cached = self.prompt if self.cached_prompt is None else self.cached_prompt
        tokens = ((usage.prompt_tokens - usage.cached_prompt_tokens) * self.prompt
                  + usage.cached_prompt_tokens * cached + usage.generated_tokens * self.generated
                  + usage.scored_tokens * self.scored)
        return tokens / 1e6 + usage.tool_cpu_s / 3600 * self.tool_cpu_hour


def per_token_from_hour(per_hour: float, tokens_per_s: float) -> float:
    """$ per million tokens of a machine that costs `per_hour` and computes `tokens_per_s`."""
    if not per_hour >= 0 or not tokens_per_s > 0:
        raise ValueError(f"need per_hour >= 0 and tokens_per_s > 0, got {per_hour} and {tokens_per_s}")
    return per_hour / 3600 / tokens_per_s * 1e6


def forward_flops_per_token(parameters: int, embedding_parameters: int) -> float:
    """The usual estimate of one token's forward pass: 2 x the parameters that are not the input embedding."""
    return 2.0 * (parameters - embedding_parameters)


class BudgetExceeded(ValueError):
    """Raised when a strategy cannot buy even its first piece of work within its Budget."""

    def __init__(self, message: str, limit: str | None = None) -> None:
        super().__init__(message)
        self.limit = limit  # the Budget field that ran short, where one did


@dataclass(frozen=True)
class Work:
    """One piece of work a strategy is about to ask for, described for its worst case.

    `samples` generations of at most `max_tokens` tokens each, sent in at most
    `calls` backend calls. FLOPs: the policy computes `prompt_tokens` prompt
    tokens (already counted as the backend computes them: once with a prefix
    cache, once per sample without) and every generated token at
    `flops_per_token`; if the generations will be scored, the scorer then
    reads each sample's prefix (`scored_prefix_tokens`, summed over the
    samples) and its generated tokens at `scorer_flops_per_token`. A FLOPs rate of None means "unknown": a FLOPs
    limit cannot be held for such work and is refused.
    """

    samples: int
    max_tokens: int
    calls: int = 1
    new_samples: bool = True  # False: the generations continue samples already counted (after a tool call)
    prompt_tokens: int = 0
    flops_per_token: float | None = 0.0
    scored_prefix_tokens: int = 0
    scorer_flops_per_token: float | None = 0.0

    def flops(self, tokens: int) -> float:
        """Worst-case FLOPs if each sample generates `tokens` tokens."""
        policy = (self.flops_per_token or 0.0) * (self.samples * tokens + self.prompt_tokens)
        scorer = (self.scorer_flops_per_token or 0.0) * (self.scored_prefix_tokens + self.samples * tokens)
        return policy + scorer


@dataclass(frozen=True)
class Budget:
    """Limits on one strategy's compute for one problem; None means unlimited.

    Every limit here is held by every strategy on every backend (`afford`);
    there is no limit that some strategy ignores.
    """

    max_generated_tokens: int | None = None
    max_samples: int | None = None
    max_policy_calls: int | None = None
    max_flops: float | None = None
    max_wall_s: float | None = None
    max_tool_calls: int | None = None
    max_tool_cpu_s: float | None = None

    _LIMITS = {
        "max_generated_tokens": "generated_tokens",
        "max_samples": "samples",
        "max_policy_calls": "policy_calls",
        "max_flops": "flops",
        "max_wall_s": "wall_s",
        "max_tool_calls": "tool_calls",
        "max_tool_cpu_s": "tool_cpu_s",
    }

    def left_after(self, usage: Usage) -> Budget | None:
        """What is left of this budget once `usage` is spent; None when some limit has nothing left."""
        left = {}
        for limit, counter in self._LIMITS.items():
            cap = getattr(self, limit)
            if cap is not None:
                left[limit] = cap - getattr(usage, counter)
                if left[limit] <= 0:
                    return None
        return Budget(**left)

    def used_up(self, usage: Usage) -> str | None:
        """The first limit that `usage` has reached, if any."""
        return next((limit for limit, counter in self._LIMITS.items()
                     if getattr(self, limit) is not None and getattr(usage, counter) >= getattr(self, limit)), None)

    def exceeded_by(self, usage: Usage) -> list[str]:
        """Names of the limits that `usage` goes past (empty if within budget)."""
        over = []
        for limit, counter in self._LIMITS.items():
            cap = getattr(self, limit)
            if cap is not None and getattr(usage, counter) > cap:
                over.append(f"{counter} {getattr(usage, counter)} > {limit} {cap}")
        return over

    def afford(self, usage: Usage, work: Work) -> int:
        """The most tokens per sample (up to `work.max_tokens`) that `work` may use; 0 if it does not fit.

        The answer holds in the worst case: if every sample runs to that many
        tokens and every call is made, `usage` plus the work stays within every
        limit. Raises ValueError for a FLOPs limit with work whose FLOPs are
        unknown (a backend that does not know its model's size).
        """
        return self.afford_why(usage, work)[0]

    def afford_why(self, usage: Usage, work: Work) -> tuple[int, str | None]:
        """`afford`, with the name of the limit that cut the work short (None when all of it fits)."""
        if work.samples < 1 or work.max_tokens < 1:
            raise ValueError(f"work must ask for at least one sample of one token, got {work}")
        if self.max_wall_s is not None and usage.wall_s >= self.max_wall_s:
            return 0, "max_wall_s"
        if self.max_samples is not None and work.new_samples and usage.samples + work.samples > self.max_samples:
            return 0, "max_samples"
        if self.max_policy_calls is not None and usage.policy_calls + work.calls > self.max_policy_calls:
            return 0, "max_policy_calls"
        tokens, why = work.max_tokens, None
        if self.max_generated_tokens is not None:
            fit = (self.max_generated_tokens - usage.generated_tokens) // work.samples
            if fit < tokens:
                tokens, why = fit, "max_generated_tokens"
        if self.max_flops is not None:
            if work.flops_per_token is None or (work.scorer_flops_per_token is None and work.scored_prefix_tokens):
                raise ValueError("a max_flops budget needs FLOPs per token of the policy and the scorer; this "
                                 "backend does not know its model's size (the openai policy takes "
                                 "flops_per_token=2 x the served model's non-embedding parameters)")
            left = self.max_flops - usage.flops
            per_token = work.flops(1) - work.flops(0)
            fit = math.floor((left - work.flops(0)) / per_token) if per_token else (tokens if left >= work.flops(0) else 0)
            while fit > 0 and usage.flops + work.flops(fit) > self.max_flops:  # float rounding
                fit -= 1
            if fit < tokens:
                tokens, why = fit, "max_flops"
        return max(tokens, 0), why

    def wall_left(self, usage: Usage) -> float | None:
        """Seconds of waiting on calls still allowed, or None for no wall-time limit."""
        return None if self.max_wall_s is None else max(0.0, self.max_wall_s - usage.wall_s)

    def affords_tool(self, usage: Usage, worst_cpu_s: float) -> str | None:
        """None if one more tool call that may take `worst_cpu_s` CPU seconds fits; else the limit in the way."""
        if self.max_wall_s is not None and usage.wall_s >= self.max_wall_s:
            return "max_wall_s"
        if self.max_tool_calls is not None and usage.tool_calls + 1 > self.max_tool_calls:
            return "max_tool_calls"
        if self.max_tool_cpu_s is not None and usage.tool_cpu_s + worst_cpu_s > self.max_tool_cpu_s:
            return "max_tool_cpu_s"
        return None

    def affords_scoring(self, usage: Usage, flops: float) -> bool:
        """Whether one scorer call costing `flops` FLOPs fits the budget."""
        if self.max_wall_s is not None and usage.wall_s >= self.max_wall_s:
            return False
        return self.max_flops is None or usage.flops + flops <= self.max_flops

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self._LIMITS}

    def describe(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in self.to_dict().items() if v is not None) or "unlimited"
