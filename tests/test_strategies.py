"""Strategies on the tiny core: honest about references, budgets and truncation."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from thinkscale.budget import Budget, BudgetExceeded
from thinkscale.policies import GenerationRequest, get_policy
from thinkscale.runner import grade, run
from thinkscale.strategies import get_strategy
from thinkscale.strategies.majority_vote import vote
from thinkscale.tasks.base import Problem


class ProblemsSeen:
    """Wraps a strategy and records the objects that reach its `solve`."""

    def __init__(self, inner):
        self.inner, self.seen = inner, []

    async def solve(self, problem, *args):
        self.seen.append(problem)
        return await self.inner.solve(problem, *args)


def test_strategies_get_the_problem_without_its_reference(policy, arithmetic):
    examples = arithmetic.examples("test", 6)
    spy = ProblemsSeen(get_strategy("majority_vote", n=4))
    traces = run(examples, arithmetic, spy, policy, Budget(), seed=1)
    assert all(type(p) is Problem for p in spy.seen)
    assert {f.name for f in dataclasses.fields(spy.seen[0])} == {"id", "prompt", "difficulty"}
    for problem, example in zip(spy.seen, examples):
        assert problem == example.problem
        assert str(example.reference) not in problem.prompt.split("=")[-1]  # the prompt ends at '='
    assert all(t.correct is not None or t.chosen_answer is None for t in traces)


def test_repeated_sampling_builds_a_depth_one_trace_with_usage(policy, arithmetic):
    examples = arithmetic.examples("test", 4)
    traces = run(examples, arithmetic, get_strategy("repeated_sampling", n=8), policy, Budget(), seed=3)
    for trace, example in zip(traces, examples):
        assert trace.root.parent is None and trace.root.text == example.problem.prompt
        terminals = list(trace.terminals())
        assert len(terminals) == 8 and all(n.parent == trace.root.id for n in terminals)
        assert trace.usage.samples == 8 and trace.usage.policy_calls == 1
        assert trace.usage.generated_tokens == sum(n.num_tokens for n in terminals) > 0
        assert trace.usage.prompt_tokens == 8 * trace.root.num_tokens
        # the prompt is computed once for the 8 samples
        cached = trace.usage.cached_prompt_tokens
        assert cached == 7 * trace.root.num_tokens
        computed = trace.usage.generated_tokens + trace.usage.prompt_tokens - cached
        assert trace.usage.flops == pytest.approx(policy.flops_per_token() * computed) and trace.usage.wall_s > 0
        for node in terminals:  # graded, and consistent with the verifier
            assert node.correct == (node.finished and arithmetic.verify(example, node.text).correct)
    again = run(examples, arithmetic, get_strategy("repeated_sampling", n=8), policy, Budget(), seed=3)
    assert [[n.text for n in t.nodes] for t in again] == [[n.text for n in t.nodes] for t in traces]
    # each search is charged for what it computed itself, whatever ran before on the same policy
    assert [(t.usage.cached_prompt_tokens, t.usage.flops) for t in again] == \
        [(t.usage.cached_prompt_tokens, t.usage.flops) for t in traces]


def test_majority_vote_chooses_the_most_common_finished_answer(policy, arithmetic):
    examples = arithmetic.examples("test", 10)
    traces = run(examples, arithmetic, get_strategy("majority_vote", n=16), policy, Budget(), seed=0)
    for trace, example in zip(traces, examples):
        answers = trace.answers()
        assert trace.chosen_answer == vote(answers)
        if trace.chosen_answer is not None:
            assert answers.count(trace.chosen_answer) == max(answers.count(a) for a in answers if a is not None)
            assert trace.correct == (trace.chosen_answer == str(example.reference))
    assert vote(["3", None, "5", "5", "3"]) == "3"  # tie: first seen
    assert vote([None, None]) is None


def test_truncated_generations_never_count(policy, arithmetic):
    examples = arithmetic.examples("test", 4)
    traces = run(examples, arithmetic, get_strategy("majority_vote", n=6, max_tokens=4), policy, Budget(), seed=0)
    for trace in traces:
        for node in trace.terminals():
            if node.finish_reason == "length":
                assert node.answer is None and node.correct is False
    # A finished-looking text that was cut off is still not an answer.
    trace = traces[0]
    node = next(trace.terminals())
    node.finish_reason, node.text, node.answer = "length", "21\n", None
    grade(trace, arithmetic, examples[0])
    assert node.correct is False


def test_strategies_stay_inside_their_budget(policy, arithmetic):
    examples = arithmetic.examples("test", 5)
    budget = Budget(max_generated_tokens=200, max_samples=8)
    for name in ["repeated_sampling", "majority_vote"]:
        for trace in run(examples, arithmetic, get_strategy(name, n=16), policy, budget, seed=0):
            assert not budget.exceeded_by(trace.usage)
            assert trace.usage.samples == 8


def test_budget_too_small_is_refused_with_the_smallest_that_works(policy, arithmetic):
    problem = arithmetic.examples("test", 1)[0].problem
    strategy = get_strategy("repeated_sampling", n=16)
    with pytest.raises(BudgetExceeded, match="smallest budget that works is 16 generated tokens"):
        asyncio.run(strategy.solve(problem, arithmetic, policy, None, Budget(max_generated_tokens=10), 0))


def test_majority_vote_refuses_a_task_graded_on_steps(countdown):
    policy = get_policy("tiny", checkpoint_name="countdown")
    problem = countdown.examples("test", 1)[0].problem
    with pytest.raises(ValueError, match="graded on its steps"):
        asyncio.run(get_strategy("majority_vote", n=2).solve(problem, countdown, policy, None, Budget(), 0))


def test_unknown_strategy_and_setting_are_named():
    with pytest.raises(ValueError, match="Did you mean 'majority_vote'"):
        get_strategy("majority")
    with pytest.raises(ValueError, match="unknown key.*'samples'.*valid keys"):
        get_strategy("repeated_sampling", samples=4)


def test_policy_stop_strings_and_concurrent_callers_are_batched(policy, arithmetic):
    prompts = [e.problem.prompt for e in arithmetic.examples("test", 5)]

    async def many():
        calls = [policy.generate([GenerationRequest(p, n=3, stop=("\n",), seed=i)]) for i, p in enumerate(prompts)]
        return await asyncio.gather(*calls)

    results = asyncio.run(many())
    for (result,) in results:
        assert len(result.generations) == 3
        for g in result.generations:
            assert "\n" not in g.text
            assert g.finish_reason in ("stop", "length") and g.num_tokens >= len(g.text)
    with pytest.raises(ValueError, match="not in the tiny core's vocabulary"):
        asyncio.run(policy.generate([GenerationRequest("what is 2+2?")]))


def test_bad_requests_fail_their_own_caller_only(policy, arithmetic):
    from thinkscale.tiny.engine import Engine

    good = GenerationRequest(arithmetic.examples("test", 1)[0].problem.prompt, n=2, seed=0)

    async def both():
        return await asyncio.gather(policy.generate([good]), policy.generate([GenerationRequest("1" * 300)]),
                                    return_exceptions=True)

    ok, bad = asyncio.run(both())
    assert len(ok[0].generations) == 2
    assert isinstance(bad, ValueError) and "does not fit" in str(bad)
    with pytest.raises(ValueError, match="empty stop string"):
        GenerationRequest("1+2=\n", stop=("",))
    with pytest.raises(ValueError, match="max_rows must be at least 1"):
        Engine(policy.checkpoint.model, max_rows=0)


def test_a_caller_that_gives_up_stops_the_tiny_cores_rows(arithmetic):
    """A wall-time cut (or a client gone) cancels the call: its rows stop at once, and the policy goes on."""
    import asyncio

    from thinkscale.policies import get_policy
    from thinkscale.policies.base import GenerationRequest

    policy = get_policy("tiny", checkpoint_name="arithmetic")
    finished = []
    policy.on_samples_done = finished.append
    prompt = arithmetic.examples("test", 1)[0].problem.prompt
    request = GenerationRequest(prompt=prompt, n=4096, max_tokens=200, seed=1)  # 4 waves of 1,024 rows

    async def go():
        # cut as soon as the first sample ends, not after a fixed time (a fast machine drew 512 in 0.1 s): the
        # first wave's rows may end before the cut reaches them, the three waves waiting never start
        call = asyncio.ensure_future(policy.generate([request]))
        while not finished:
            await asyncio.sleep(0.001)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        (after,) = await policy.generate([GenerationRequest(prompt=prompt, n=2, max_tokens=20)])
        return after

    after = asyncio.run(go())
    assert len(after.generations) == 2
    # the 2 samples asked afterwards finished; of the 4,096 cut after the first ended, most never ran to their end
    assert len(finished) - 2 < 2048


@pytest.mark.parametrize("backend", ["tiny", "transformers"])
def test_a_call_cut_by_the_wall_time_budget_still_counts_what_it_generated(arithmetic, backend):
    """Its samples are dropped (none is an answer), but the tokens its rows had generated, and their FLOPs,
    are in the trace's usage: the backend reports them when it stops the rows."""
    import asyncio

    from thinkscale.budget import Budget
    from thinkscale.policies import get_policy
    from thinkscale.runner import run

    policy = get_policy("tiny", checkpoint_name="arithmetic", threads=1) if backend == "tiny" else \
        get_policy("transformers", model="arithmetic", threads=1)
    # the hardest of a few test problems: its long solutions keep the whole call several times longer than the
    # cut even on a quiet machine (an easy one's 768 samples ended in 0.35-0.6 s, around the 0.4 s cut)
    examples = [max(arithmetic.examples("test", len(arithmetic.difficulties)), key=lambda e: e.problem.difficulty)]
    strategy = get_strategy("majority_vote", n=384, max_tokens=150)
    # the whole call first: it also warms the backend up (the engine's cache for these rows is allocated, which
    # takes longer than the cut leaves on a slow machine, and nothing is generated before it is)
    (whole,) = run(examples, arithmetic, strategy, policy, Budget())
    (trace,) = run(examples, arithmetic, strategy, policy, Budget(max_wall_s=0.4))
    assert trace.stopped_by == "max_wall_s" and len(trace.nodes) == 1 and trace.chosen_answer is None
    assert trace.usage.generated_tokens > 0 and trace.usage.samples == 0
    assert trace.usage.flops == pytest.approx(trace.usage.generated_tokens * policy.flops_per_token())
    assert trace.usage.generated_tokens < whole.usage.generated_tokens
    assert whole.usage.wall_s > 2 * 0.4  # the cut came well inside the call
    assert asyncio.run(policy.generate([])) == []  # and the policy serves on


def test_the_tiny_policy_in_bfloat16_solves_through_the_same_contract(arithmetic):
    with pytest.raises(ValueError, match="dtype must be one of float32, bfloat16, got 'float16'"):
        get_policy("tiny", dtype="float16")
    with pytest.raises(ValueError, match="device must be cpu or cuda"):
        get_policy("tiny", device="tpu")
    import torch

    if not torch.cuda.is_available():  # a GPU asked for where there is none: said before anything loads
        with pytest.raises(ValueError, match="'cuda': this torch sees no CUDA GPU"):
            get_policy("tiny", device="cuda")
    policy = get_policy("tiny", dtype="bfloat16", threads=1)
    assert policy.engine.dtype.is_floating_point and str(policy.engine.dtype) == "torch.bfloat16"
    examples = arithmetic.examples("test", 4)
    traces = run(examples, arithmetic, get_strategy("repeated_sampling", n=4), policy, Budget(), seed=0)
    assert all(len(list(t.terminals())) == 4 and t.usage.generated_tokens > 0 for t in traces)
