"""The Budget holds for every registered strategy, under every single limit, on every backend.

Each strategy first runs unlimited on a few problems; then under each limit
set to half of what it spent. Its Usage must never pass the limit, and where
the limit cut the search short the trace names it. The test iterates the
strategy registry, so a strategy added later is held to the same rule. The
backends: the tiny core, and the openai policy against a real HTTP server on
127.0.0.1 that ignores `n` (so one request with n samples costs n calls).
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from tiny_openai_server import TinyOpenAIServer

from thinkscale.budget import Budget, BudgetExceeded, Usage, Work
from thinkscale.policies import get_policy
from thinkscale.runner import solve_all
from thinkscale.scorers import get_scorer
from thinkscale.strategies import STRATEGIES, get_strategy

LIMITS = {  # Budget field -> the Usage counter it bounds
    "max_generated_tokens": "generated_tokens",
    "max_samples": "samples",
    "max_policy_calls": "policy_calls",
    "max_flops": "flops",
    "max_wall_s": "wall_s",
}
SMALL = {"n": 4, "width": 2, "iterations": 6, "expansion_width": 2, "max_depth": 8,  # where a strategy has them
         "warmup": 2, "wave": 1}


def small_strategy(name: str):
    fields = {f.name for f in dataclasses.fields(get_strategy(name).Settings)}
    return get_strategy(name, **{k: v for k, v in SMALL.items() if k in fields})


@pytest.fixture(scope="module")
def prm():
    return get_scorer("prm", checkpoint_name="arithmetic-prm")


@pytest.fixture(scope="module")
def served():
    return get_policy("tiny", checkpoint_name="arithmetic")


@pytest.fixture(scope="module")
def backends(policy, served):
    """The tiny policy, and the openai policy in front of a server that ignores `n`."""
    with TinyOpenAIServer(served, honour_n=False) as server:
        yield {"tiny": policy,
               "openai": get_policy("openai", base_url=server.base_url, model="tiny-arithmetic", logprobs=True,
                                    flops_per_token=policy.flops_per_token(), max_retries=1, backoff_s=0.01)}


def solve(strategy, examples, task, policy, scorer, budget):
    async def go():
        try:
            return await solve_all(examples, task, strategy, policy, budget, seed=3, scorer=scorer)
        finally:
            await policy.close()

    return asyncio.run(go())


@pytest.mark.parametrize("backend", ["tiny", "openai"])
@pytest.mark.parametrize("name", STRATEGIES.names())
def test_no_strategy_passes_any_limit(name, backend, backends, arithmetic, prm):
    examples = arithmetic.examples("test", 3)
    strategy = small_strategy(name)
    if name == "deepconf" and not backends[backend].capabilities.confidence:  # it needs the engine's confidences
        with pytest.raises(ValueError, match="needs per-token confidences"):
            solve(strategy, examples, arithmetic, backends[backend], prm, Budget())
        return
    free = solve(strategy, examples, arithmetic, backends[backend], prm, Budget())
    assert all(t.stopped_by is None for t in free)
    for limit, counter in LIMITS.items():
        ran = 0
        for example, unlimited in zip(examples, free):  # each problem under half of what it took
            spent = getattr(unlimited.usage, counter)
            cap = spent / 2 if isinstance(spent, float) else max(1, spent // 2)
            try:
                (trace,) = solve(strategy, [example], arithmetic, backends[backend], prm, Budget(**{limit: cap}))
            except BudgetExceeded as e:  # half cannot buy even the first call: refused before anything is spent
                assert "smallest budget that works" in str(e)
                continue
            ran += 1
            used = getattr(trace.usage, counter)
            assert used <= cap, f"{name} on {backend}: {counter} {used} > {limit} {cap}"
            if limit != "max_wall_s" and cap < spent:
                # less than the whole search took cannot buy the whole search: the trace says what stopped it
                assert trace.stopped_by == limit, (name, backend, limit, trace.stopped_by, trace.usage)
        assert ran, f"{name} on {backend}: half of what it spent never bought a first call under {limit}"


def test_afford_holds_in_the_worst_case():
    usage = Usage(generated_tokens=100, samples=3, policy_calls=2, flops=1e6)
    work = Work(samples=4, max_tokens=48, calls=2, prompt_tokens=30, flops_per_token=1e3,
                scored_prefix_tokens=4 * 40, scorer_flops_per_token=2e3)
    assert Budget().afford(usage, work) == 48
    assert Budget(max_generated_tokens=200).afford_why(usage, work) == (25, "max_generated_tokens")
    assert Budget(max_samples=6).afford_why(usage, work) == (0, "max_samples")
    assert Budget(max_policy_calls=3).afford_why(usage, work) == (0, "max_policy_calls")
    tokens, why = Budget(max_flops=1.5e6).afford_why(usage, work)
    assert why == "max_flops" and usage.flops + work.flops(tokens) <= 1.5e6 < usage.flops + work.flops(tokens + 1)
    assert Budget(max_wall_s=1.0).afford_why(Usage(wall_s=1.0), work) == (0, "max_wall_s")
    # what is left for a second strategy run after the first, and the limit that is used up
    assert Budget(max_samples=10, max_flops=2e6).left_after(usage) == Budget(max_samples=7, max_flops=1e6)
    assert Budget(max_samples=3).left_after(usage) is None and Budget(max_samples=3).used_up(usage) == "max_samples"
    assert Budget(max_samples=10).used_up(usage) is None
    with pytest.raises(ValueError, match="FLOPs per token"):
        Budget(max_flops=1e9).afford(usage, dataclasses.replace(work, flops_per_token=None))


def test_usage_reads_ledgers_written_before_tool_and_dollar_counters():
    old = {k: v for k, v in Usage(generated_tokens=5).to_dict().items()
           if not k.startswith("tool_") and k != "dollars"}
    assert Usage.from_dict(old) == Usage(generated_tokens=5)
    assert Usage.from_dict({**old, "retired_counter": 3}) == Usage(generated_tokens=5)


def test_a_listener_sees_every_node_generated_scored_and_the_one_chosen(policy, arithmetic, prm):
    from thinkscale.strategies.base import SEARCH_EVENTS

    problem = arithmetic.examples("test", 1)[0].problem
    for name in STRATEGIES.names():
        seen: list[tuple[str, int]] = []
        token = SEARCH_EVENTS.set(lambda event, trace, nodes: seen.extend((event, n.id) for n in nodes))
        try:
            trace = asyncio.run(small_strategy(name).solve(problem, arithmetic, policy, prm, Budget(), 1))
        finally:
            SEARCH_EVENTS.reset(token)
        generated = {i for event, i in seen if event == "generated"}
        assert generated == {n.id for n in trace.nodes[1:]}, name  # every node but the root, once generated
        scored = {i for event, i in seen if event == "scored"}
        assert scored == {n.id for n in trace.nodes if prm.name in n.scores}, name
        chosen = [i for event, i in seen if event == "chosen"]
        assert len(chosen) == (trace.chosen_answer is not None), name
        if trace.chosen_node is not None:
            assert chosen == [trace.chosen_node], name
