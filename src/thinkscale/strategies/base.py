"""What every strategy shares: settings validation, the sampling call, the Trace.

A strategy is written for one problem as an async function of
(problem, task, policy, scorer, budget, seed) and returns a Trace. It never
sees the reference answer: it gets a `Problem`, and the task only for its
format (prompt, steps, answer extraction), which holds no references.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from thinkscale.budget import Budget, BudgetExceeded, Usage
from thinkscale.policies.base import GenerationRequest, GenerationResult, Policy
from thinkscale.tasks.base import Problem, Task
from thinkscale.trace import Node, Trace

if TYPE_CHECKING:
    from thinkscale.scorers.base import Scores


def settings_from_dict(cls: type, data: dict[str, Any], where: str = "settings") -> Any:
    """Build a settings dataclass, refusing unknown keys by name."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(map(repr, unknown))} in {where}; "
                         f"valid keys: {', '.join(sorted(known))}")
    return cls(**data)


@dataclass(frozen=True)
class SamplingSettings:
    n: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 160

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be at least 1, got {self.n}")


class Strategy(Protocol):
    name: str

    async def solve(self, problem: Problem, task: Task, policy: Policy, scorer: Any,
                    budget: Budget, seed: int) -> Trace: ...


def affordable(settings: SamplingSettings, budget: Budget, usage: Usage) -> tuple[int, int]:
    """How many samples, and how many tokens each, fit in what is left of the budget.

    Each sample is capped so that even if every one runs to its token limit
    the budget holds: a strategy can never overspend, only stop early.
    """
    for limit in ("max_flops", "max_wall_s"):
        if getattr(budget, limit) is not None:
            raise ValueError(f"budget {limit} is not enforced by the sampling strategies yet; limit "
                             f"max_generated_tokens, max_samples or max_policy_calls instead")
    if budget.max_policy_calls is not None and usage.policy_calls >= budget.max_policy_calls:
        raise BudgetExceeded(f"the budget's {budget.max_policy_calls} policy calls are spent")
    n = settings.n
    left_samples = budget.remaining_samples(usage)
    if left_samples is not None:
        n = min(n, left_samples)
    max_tokens = settings.max_tokens
    left_tokens = budget.remaining_tokens(usage)
    if left_tokens is not None and n:
        max_tokens = min(max_tokens, left_tokens // n)
        if max_tokens < 1:
            raise BudgetExceeded(f"a budget of {budget.max_generated_tokens} generated tokens cannot buy {n} samples; "
                                 f"the smallest budget that works is {n} tokens")
    if n < 1:
        raise BudgetExceeded(f"the budget leaves no room for a sample ({budget.to_dict()})")
    return n, max_tokens


def account(usage: Usage, policy: Policy, result: GenerationResult, started: float) -> None:
    """Add one policy call's cost to `usage`."""
    n = len(result.generations)
    generated = sum(g.num_tokens for g in result.generations)
    cached = policy.capabilities.prefix_caching
    usage.generated_tokens += generated
    usage.prompt_tokens += result.prompt_tokens * n
    usage.cached_prompt_tokens += result.prompt_tokens * (n - 1) if cached else 0
    usage.policy_calls += result.backend_calls
    usage.samples += n
    per_token = policy.flops_per_token()
    if per_token:
        computed_prompt = result.prompt_tokens * (1 if cached else n)
        usage.flops += per_token * (generated + computed_prompt)
    usage.wall_s += time.perf_counter() - started


def account_scorer(usage: Usage, scores: "Scores", started: float) -> None:
    """Add one scorer call's cost to `usage`."""
    usage.scorer_calls += 1
    usage.scored_tokens += scores.scored_tokens
    usage.flops += scores.flops
    usage.wall_s += time.perf_counter() - started


async def sample_whole(problem: Problem, task: Task, policy: Policy, settings: SamplingSettings,
                       budget: Budget, seed: int, trace: Trace) -> None:
    """Draw whole completions under the budget and hang them under the trace's root."""
    n, max_tokens = affordable(settings, budget, trace.usage)
    request = GenerationRequest(prompt=problem.prompt, n=n, temperature=settings.temperature,
                                top_p=settings.top_p, max_tokens=max_tokens, seed=seed)
    started = time.perf_counter()
    (result,) = await policy.generate([request])
    account(trace.usage, policy, result, started)
    if not trace.nodes:
        trace.add(None, problem.prompt, num_tokens=result.prompt_tokens)
    for g in result.generations:
        finished = g.finish_reason == "stop"
        trace.add(trace.root.id, g.text, num_tokens=g.num_tokens, logprob=g.logprob, terminal=True,
                  finish_reason=g.finish_reason, answer=task.extract_answer(g.text) if finished else None)


def choose_best(candidates: list[Node], score_name: str) -> Node:
    """The highest-scoring solution (the earliest among equals)."""
    return max(candidates, key=lambda n: (n.scores[score_name], -n.id))


def choose_weighted(candidates: list[Node], score_name: str) -> Node:
    """The answer with the largest summed score (ties to the first seen), via its best solution."""
    totals: dict[str, float] = {}
    for node in candidates:
        totals[node.answer] = totals.get(node.answer, 0.0) + node.scores[score_name]
    first_seen = {a: i for i, a in reversed(list(enumerate(n.answer for n in candidates)))}
    answer = max(totals, key=lambda a: (totals[a], -first_seen[a]))
    return choose_best([n for n in candidates if n.answer == answer], score_name)


CHOOSERS = {"best": choose_best, "weighted": choose_weighted}
