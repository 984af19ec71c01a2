"""The engine against the slow reference generate, seeds, stops and batching."""

from __future__ import annotations

import pytest

from thinkscale.tiny.engine import Engine, SampleRequest, SamplingParams, reference_generate


def requests_for(checkpoint, task, count, n, **params):
    examples = task.examples("test", count)
    return [SampleRequest(tuple(checkpoint.tokenizer.encode(e.problem.prompt)), n=n,
                          params=SamplingParams(seed=i, **params)) for i, e in enumerate(examples)]


def test_engine_equals_reference_under_greedy_decoding(arithmetic_checkpoint, arithmetic):
    reqs = requests_for(arithmetic_checkpoint, arithmetic, 12, 1, temperature=0.0, max_tokens=120)
    # Few rows, so that finished rows are swapped out and waiting ones admitted mid-run.
    fast = Engine(arithmetic_checkpoint.model, max_rows=4).generate(reqs)
    slow = reference_generate(arithmetic_checkpoint.model, reqs)
    for a, b in zip(fast, slow):
        assert a[0].token_ids == b[0].token_ids
        assert a[0].finish_reason == b[0].finish_reason
        assert a[0].logprob == pytest.approx(b[0].logprob, abs=1e-3)
    assert any(c[0].finish_reason == "stop" for c in fast)


def test_engine_equals_reference_when_sampling(countdown_checkpoint, countdown):
    reqs = requests_for(countdown_checkpoint, countdown, 3, 4, temperature=1.0, top_p=0.9, max_tokens=40)
    fast = Engine(countdown_checkpoint.model, max_rows=5).generate(reqs)
    slow = reference_generate(countdown_checkpoint.model, reqs)
    assert [[c.token_ids for c in r] for r in fast] == [[c.token_ids for c in r] for r in slow]


def test_same_seed_same_samples_whatever_the_batch(arithmetic_checkpoint, arithmetic):
    reqs = requests_for(arithmetic_checkpoint, arithmetic, 6, 8, temperature=1.0, max_tokens=100)
    engine = Engine(arithmetic_checkpoint.model, max_rows=64)
    first = engine.generate(reqs)
    again = Engine(arithmetic_checkpoint.model, max_rows=7).generate(reqs)
    alone = engine.generate(reqs[2:3])
    tokens = lambda res: [[c.token_ids for c in r] for r in res]  # noqa: E731
    assert tokens(first) == tokens(again)
    assert tokens(alone) == tokens(first)[2:3]
    # samples of one request differ from each other, and a new seed changes them
    assert len(set(tokens(first)[0])) > 1
    reseeded = [SampleRequest(r.prompt_ids, r.n, SamplingParams(temperature=1.0, max_tokens=100, seed=r.params.seed + 100))
                for r in reqs]
    assert tokens(engine.generate(reseeded)) != tokens(first)


def test_stop_tokens_and_length_limits(arithmetic_checkpoint, arithmetic):
    tok = arithmetic_checkpoint.tokenizer
    newline = tok.ids["\n"]
    reqs = requests_for(arithmetic_checkpoint, arithmetic, 4, 3, temperature=1.0, max_tokens=60)
    steps = [SampleRequest(r.prompt_ids, r.n, SamplingParams(temperature=1.0, max_tokens=60, seed=r.params.seed,
                                                             stop_ids=(newline,))) for r in reqs]
    for result in Engine(arithmetic_checkpoint.model).generate(steps):
        for c in result:
            assert c.finish_reason == "stop" and c.token_ids[-1] == newline
            assert newline not in c.token_ids[:-1]
    short = [SampleRequest(r.prompt_ids, r.n, SamplingParams(temperature=1.0, max_tokens=3, seed=0)) for r in reqs]
    for result in Engine(arithmetic_checkpoint.model).generate(short):
        for c in result:
            assert len(c.token_ids) == 3 and c.finish_reason == "length"


def test_top_p_near_zero_is_greedy(arithmetic_checkpoint, arithmetic):
    engine = Engine(arithmetic_checkpoint.model)
    greedy = engine.generate(requests_for(arithmetic_checkpoint, arithmetic, 5, 1, temperature=0.0))
    nucleus = engine.generate(requests_for(arithmetic_checkpoint, arithmetic, 5, 3, temperature=1.0, top_p=1e-6))
    for g, ns in zip(greedy, nucleus):
        assert all(n.token_ids == g[0].token_ids for n in ns)


def test_prompt_too_long_is_refused(arithmetic_checkpoint):
    engine = Engine(arithmetic_checkpoint.model)
    with pytest.raises(ValueError, match="does not fit"):
        engine.generate([SampleRequest(tuple([1] * 300))])
