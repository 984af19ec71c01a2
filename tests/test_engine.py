"""The engine against the slow reference generate, seeds, stops and batching."""

from __future__ import annotations

import dataclasses
import itertools
import os
import re

import numpy as np
import pytest
import torch

from thinkscale.tiny import cpu_kernel
from thinkscale.tiny.engine import CHUNK, Engine, SampleRequest, SamplingParams, reference_generate


@pytest.fixture(autouse=True, params=["torch", "kernel"])
def attention(request, monkeypatch):
    """Every test here runs twice on a CPU: attention by the torch path, and by the C kernel (cpu_kernel.py),
    each the default of every engine not told otherwise; each path must hold every property by itself."""
    from thinkscale.tiny import engine as engine_module

    if request.param == "kernel":
        if not cpu_kernel.available():
            pytest.skip(f"the CPU kernel is not available: {cpu_kernel.why_unavailable()}")
        monkeypatch.setenv("THINKSCALE_CPU_KERNEL", "1")
    else:
        monkeypatch.setattr(engine_module, "cpu_kernel_default", lambda: False)
    return request.param


def requests_for(checkpoint, task, count, n, **params):
    examples = task.examples("test", count)
    return [SampleRequest(tuple(checkpoint.tokenizer.encode(e.problem.prompt)), n=n,
                          params=SamplingParams(seed=i, **params)) for i, e in enumerate(examples)]


def _floor_between(results) -> float:
    """A confidence floor halfway between the middle two of `results`' samples' confidences (so never on one):
    about half of the samples go below it."""
    everything = sorted({c.confidence for r in results for c in r if c.confidence is not None})
    middle = len(everything) // 2
    return (everything[middle - 1] + everything[middle]) / 2


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


def test_rows_read_a_chunk_in_runs_and_no_sample_changes_with_the_runs(arithmetic_checkpoint, arithmetic,
                                                                        monkeypatch):
    from thinkscale.tiny import engine as engine_module

    monkeypatch.setattr(engine_module, "GAP_ROWS", 2)
    engine = Engine(arithmetic_checkpoint.model)
    pos = torch.tensor([70, 3, 40] + list(range(5, 22)) + [45])  # chunk 1: rows 0, 2 and 20; chunk 2: row 0
    plan = [(chunk, a, b) for chunk, a, b, _ in engine._plan(pos)]
    assert plan == [(0, 0, 21), (1, 0, 3), (1, 20, 21), (2, 0, 1)]  # rows 0-2 read as one run: row 1 is no gap
    for chunk, a, b, bias in engine._plan(pos):  # each row sees exactly its own positions of the chunk
        visible = (chunk * 32 + torch.arange(32))[None, :] <= pos[a:b, None]
        assert torch.equal(bias[:, 0, 0] == 0, visible)

    # Rows that stop early are swapped out, so long and short rows mix: runs split at every gap (0) or never
    # (a chunk is read by a prefix of the rows, as before runs), and the samples stay the same to the bit.
    reqs = requests_for(arithmetic_checkpoint, arithmetic, 8, 6, temperature=1.0, max_tokens=100)
    drawn = {}
    for gap in (0, 10**6):
        monkeypatch.setattr(engine_module, "GAP_ROWS", gap)
        drawn[gap] = [[(c.token_ids, c.logprob) for c in r] for r in Engine(arithmetic_checkpoint.model,
                                                                             max_rows=48).generate(reqs)]
    assert drawn[0] == drawn[10**6]
    assert max(len(ids) for r in drawn[0] for ids, _ in r) + min(map(len, (r.prompt_ids for r in reqs))) > 64


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


@pytest.mark.parametrize("static", [False, True])
def test_a_request_for_no_tokens_or_samples_is_done_at_once_and_the_others_as_alone(arithmetic_checkpoint,
                                                                                  arithmetic, static):
    """max_tokens=0 (the engine's own callers refuse it, but the engine is public): empty samples, as the
    reference gives, reported done before any step, in either loop, as is a request for no samples; a negative
    count is refused."""
    model = arithmetic_checkpoint.model
    reqs = requests_for(arithmetic_checkpoint, arithmetic, 3, 2, temperature=1.0, max_tokens=30)
    none = SampleRequest(reqs[0].prompt_ids, n=3, params=SamplingParams(max_tokens=0))
    nobody = SampleRequest(reqs[1].prompt_ids, n=0, params=reqs[1].params)
    engine = Engine(model, max_rows=4, static_decode=static, sync_every=3)
    done, finished = [], []
    got = engine.generate([reqs[0], none, reqs[1], nobody, reqs[2]], on_finish=finished.append,
                          on_request_done=lambda r, samples: done.append(r))
    assert got[1] == reference_generate(model, [none])[0] == [got[1][0]] * 3
    assert got[1][0].token_ids == () and got[1][0].finish_reason == "length" and got[3] == []
    assert [got[0], got[2], got[4]] == Engine(model, max_rows=4).generate(reqs)
    assert done[:2] == [1, 3] and sorted(done) == [0, 1, 2, 3, 4] and sum(finished) == 9
    assert engine.generate([none]) == [got[1]]
    for bad in (SampleRequest((1, 5), params=SamplingParams(max_tokens=-1)), SampleRequest((1, 5), n=-1)):
        with pytest.raises(ValueError, match="max_tokens and n must be at least 0"):
            engine.generate([bad])


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


def _positions(kv, length, transposed, head_dim=32):
    """(layers, 2, chunks, H, CHUNK * D) keys and values -> each (layers, H, length, D); the keys transposed in
    each chunk (the torch path's layout) or position-major as the values (the CPU kernel's)."""
    layers, _, chunks, heads, flat = kv.shape
    chunk = flat // head_dim
    keys = (kv[:, 0].view(layers, chunks, heads, head_dim, chunk).permute(0, 2, 1, 4, 3) if transposed
            else kv[:, 0].view(layers, chunks, heads, chunk, head_dim).permute(0, 2, 1, 3, 4))
    values = kv[:, 1].view(layers, chunks, heads, chunk, head_dim).permute(0, 2, 1, 3, 4)
    return [t.reshape(layers, heads, chunks * chunk, head_dim)[:, :, :length] for t in (keys, values)]


def _same_positions(engine, a, b, length):
    """Whether caches a and b of `engine` (in its path's layout) hold the same keys and values at 0..length-1."""
    transposed = not engine._fused()
    return all(torch.equal(x, y) for x, y in zip(_positions(a, length, transposed), _positions(b, length, transposed)))


def test_reloaded_weights_sample_as_a_new_engine_over_them(arithmetic_checkpoint, arithmetic):
    import copy

    model = copy.deepcopy(arithmetic_checkpoint.model)
    reqs = requests_for(arithmetic_checkpoint, arithmetic, 4, 8, temperature=1.0, max_tokens=60)
    engine = Engine(model, max_rows=16, prefix_cache_bytes=16 << 20)
    before = engine.generate(reqs)
    with torch.no_grad():  # what a training step does: every weight changed in place
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    stale = engine.generate(reqs)
    engine.reload_weights()
    tokens = lambda res: [[(c.token_ids, c.logprob) for c in r] for r in res]  # noqa: E731
    assert tokens(engine.generate(reqs)) == tokens(Engine(model, max_rows=16).generate(reqs)) != tokens(before)
    assert tokens(stale) != tokens(engine.generate(reqs))  # without the reload, the old projections stay


def _step_rounds(engine, prompts, newline, rounds=4):
    """A step search in miniature: each round continues the first sample of each path by one step."""
    frontier, drawn = list(prompts), []
    for depth in range(rounds):
        reqs = [SampleRequest(p, n=3, params=SamplingParams(max_tokens=30, stop_ids=(newline,), seed=10 * depth + i),
                              cache_scope="search") for i, p in enumerate(frontier)]
        results = engine.generate(reqs)
        drawn.append([[(c.token_ids, c.logprob) for c in r] for r in results])
        frontier = [p + r[0].token_ids for p, r in zip(frontier, results) if r[0].token_ids[-1] == newline]
    return drawn, results


def test_the_prefix_cache_changes_what_is_computed_never_a_sample(arithmetic_checkpoint, arithmetic):
    tok, model = arithmetic_checkpoint.tokenizer, arithmetic_checkpoint.model
    prompts = [tuple(tok.encode(e.problem.prompt)) for e in arithmetic.examples("test", 6)]
    plain, _ = _step_rounds(Engine(model), prompts, tok.ids["\n"])
    engine = Engine(model, prefix_cache_bytes=64 << 20)
    cached, last = _step_rounds(engine, prompts, tok.ids["\n"])
    assert cached == plain  # same tokens, same log-probabilities, to the bit
    # a later round's prompt is its parent's path: all of it but the step's last token came from the cache
    assert last and all(r[0].prompt_cached >= 1 for r in last)
    # a tiny cache evicts nearly everything and still changes nothing
    assert _step_rounds(Engine(model, prefix_cache_bytes=1 << 20), prompts, tok.ids["\n"])[0] == plain


def test_a_position_is_computed_the_same_however_the_sequence_is_split(arithmetic_checkpoint, arithmetic):
    tok = arithmetic_checkpoint.tokenizer
    engine = Engine(arithmetic_checkpoint.model, prefix_cache_bytes=64 << 20)
    examples = arithmetic.examples("test", 5)
    seq = tuple(tok.encode("".join(e.problem.prompt for e in examples * 4)))[:100]
    kv, logits = engine.extend([(None, 0, seq)])[0]
    for cut in (1, 7, 31, 32, 33, 64, 99):
        head_kv, head_logits = engine.extend([(None, 0, seq[:cut])])[0]
        tail_kv, tail_logits = engine.extend([(head_kv, cut, seq[cut:])])[0]
        assert _same_positions(engine, tail_kv, kv, len(seq))
        assert torch.equal(torch.cat([head_logits, tail_logits]), logits)
    # with other sequences in the same call
    together = engine.extend([(None, 0, seq[:5]), (None, 0, seq), (None, 0, seq[3:40])])
    assert torch.equal(together[1][1], logits)
    # a decode step computes what extend computes: the keys and values a sampled step left in the cache, its
    # prompt's too (with the kernel a row's cache holds only its own positions: the prompt's are put back),
    # for prompts ending inside a first, second and third chunk
    newline, equals = tok.ids["\n"], tok.ids["="]
    prompts = [seq[:cut + 1] for cut, t in enumerate(seq) if t == equals]
    assert {len(p) // CHUNK for p in prompts} >= {0, 1, 2}
    for prompt in prompts:
        (sample,) = engine.generate([SampleRequest(prompt, params=SamplingParams(max_tokens=30, stop_ids=(newline,)),
                                                   cache_scope="decode")])[0]
        path = prompt + sample.token_ids[:-1]
        length, entry = engine.prefix_cache.longest(path, "decode")
        assert length == len(path) and len(sample.token_ids) > 1
        fresh_kv, _ = engine.extend([(None, 0, path)])[0]
        assert _same_positions(engine, entry.kv, fresh_kv, length)


def test_prefix_cache_bounds_its_memory_and_keeps_scopes_apart():
    from thinkscale.tiny.prefix_cache import Entry, PrefixCache

    cache = PrefixCache(max_bytes=3 * 4096)
    entry = lambda: Entry(torch.zeros(1024), None)  # noqa: E731  4096 bytes
    cache.put((1, 2), entry(), "a")
    cache.put((1, 2, 3, 4), entry(), "a")
    assert cache.longest((1, 2, 3, 4, 5), "a")[0] == 4
    assert cache.longest((1, 2, 3, 4, 5), "b") == (0, None)  # another search sees nothing of it
    assert cache.longest((1, 2, 3), "a")[0] == 2
    cache.put((7,), entry(), "a")
    cache.put((8,), entry(), "a")  # past the bound: the least recently used, (1, 2, 3, 4), goes
    assert len(cache) == 3 and cache.nbytes <= cache.max_bytes
    assert cache.longest((1, 2, 3, 4), "a")[0] == 2
    cache.put((1, 2), entry(), "b")
    cache.release("a")  # a search that ended: its entries go at the next use, another's stay
    cache.tidy()
    assert len(cache) == 1 and cache.nbytes == 4096 and cache.longest((1, 2, 3), "b")[0] == 2
    with pytest.raises(ValueError, match="max_bytes"):
        PrefixCache(-1)


def test_a_cancelled_request_stops_at_once_and_changes_no_other_sample(arithmetic_checkpoint, arithmetic):
    reqs = requests_for(arithmetic_checkpoint, arithmetic, 4, 6, temperature=1.0, max_tokens=100)
    engine = Engine(arithmetic_checkpoint.model, max_rows=8)  # fewer rows than samples: some still wait
    whole = engine.generate(reqs)
    steps, finished, delivered = [0], [], []

    def cancelled():  # the caller of request 1 gives up after three steps
        steps[0] += 1
        return [1] if steps[0] > 3 else []

    cut = engine.generate(reqs, on_finish=finished.append, on_request_done=lambda r, _: delivered.append(r),
                          cancelled=cancelled)
    assert 1 not in delivered and sorted(delivered) == [0, 2, 3]
    assert any(c is None for c in cut[1])  # its rows were dropped, its waiting samples never started
    assert len(finished) < sum(r.n for r in reqs)
    assert [cut[i] for i in (0, 2, 3)] == [whole[i] for i in (0, 2, 3)]


def test_confidence_is_deepconfs_lowest_group_and_a_floor_cuts_only_its_own_rows(arithmetic_checkpoint, arithmetic):
    """Each completion's confidence is the lowest window mean of minus the mean top-k log-probability, as the
    model's own forward pass gives them; asking for it changes no sample; a floor cuts a row in flight
    exactly where its window first falls below it, and no other row."""
    model, window, k = arithmetic_checkpoint.model, 6, 3
    plain = requests_for(arithmetic_checkpoint, arithmetic, 5, 6, temperature=1.0, max_tokens=100)
    asked = [SampleRequest(r.prompt_ids, r.n, SamplingParams(temperature=1.0, max_tokens=100, seed=r.params.seed,
                                                             confidence_window=window, confidence_top_k=k))
             for r in plain]
    engine = Engine(model, max_rows=7)
    before, measured = engine.generate(plain), engine.generate(asked)
    assert [[c.token_ids for c in r] for r in before] == [[c.token_ids for c in r] for r in measured]
    assert all(c.confidence is None for r in before for c in r)

    def groups(prompt, tokens):
        with torch.no_grad():
            logits = model(torch.tensor([prompt + tokens]))[0, len(prompt) - 1:-1].double()
        conf = -torch.log_softmax(logits, -1).topk(k, -1).values.mean(-1)
        return conf.unfold(0, window, 1).mean(-1) if len(conf) >= window else conf.mean()[None]

    for request, result in zip(asked, measured):
        for c in result:
            assert c.confidence == pytest.approx(float(groups(list(request.prompt_ids), list(c.token_ids)).min()),
                                                 abs=1e-4)
    floor = _floor_between(measured)
    cut_requests = [SampleRequest(r.prompt_ids, r.n, SamplingParams(
        temperature=1.0, max_tokens=100, seed=r.params.seed, confidence_window=window, confidence_top_k=k,
        confidence_floor=floor)) for r in asked[:3]] + plain[3:]  # the last two ask for nothing
    cut = engine.generate(cut_requests)
    assert [[c.token_ids for c in r] for r in cut[3:]] == [[c.token_ids for c in r] for r in before[3:]]
    stopped = 0
    for request, whole, result in zip(asked[:3], measured[:3], cut[:3]):
        for full, c in zip(whole, result):
            g = groups(list(request.prompt_ids), list(full.token_ids)).tolist()
            if any(abs(v - floor) < 1e-4 for v in g):
                continue  # a window within the forward pass's rounding of the floor: either way is right
            below = [i for i, v in enumerate(g) if v < floor and len(full.token_ids) >= window]
            if below:  # cut at the first window below the floor: that window's last token is the last one
                stopped += 1
                assert c.finish_reason == "cut" and c.token_ids == full.token_ids[:below[0] + window]
            else:
                assert c.token_ids == full.token_ids and c.finish_reason == full.finish_reason
    assert stopped > 0


def test_streamed_first_samples_report_every_token_in_order_whatever_the_rows(arithmetic_checkpoint, arithmetic):
    plain = requests_for(arithmetic_checkpoint, arithmetic, 6, 5, temperature=1.0, max_tokens=80)
    asked = [SampleRequest(r.prompt_ids, r.n, SamplingParams(temperature=1.0, max_tokens=80, seed=r.params.seed,
                                                             stream=i % 2 == 0)) for i, r in enumerate(plain)]
    heard: dict[int, list[int]] = {}
    # few rows: finished rows are swapped out and waiting ones admitted while the streamed rows run
    result = Engine(arithmetic_checkpoint.model, max_rows=5).generate(
        asked, on_tokens=lambda drawn: [heard.setdefault(r, []).append(t) for r, t in drawn])
    assert [[c.token_ids for c in r] for r in result] == \
           [[c.token_ids for c in r] for r in Engine(arithmetic_checkpoint.model).generate(plain)]
    assert sorted(heard) == [0, 2, 4]  # the requests that asked; each one's first sample, whole, in order
    assert all(tuple(heard[i]) == result[i][0].token_ids for i in heard)


def test_bfloat16_stays_near_float32_and_solves_as_many_problems(arithmetic_checkpoint, arithmetic):
    """The bfloat16 setting (off by default): float32 logits, each next-token distribution close to float32's,
    and pass@k inside float32's 90% interval over problems on the same samples' seeds."""
    from thinkscale.analysis.passk import pass_at_k

    ck, examples = arithmetic_checkpoint, arithmetic.examples("test", 32)
    f32, b16 = Engine(ck.model), Engine(ck.model, dtype=torch.bfloat16)
    assert (f32.dtype, b16.dtype, b16.w_qkv[0].dtype, b16.new_kv(40).dtype) == \
           (torch.float32, torch.bfloat16, torch.bfloat16, torch.bfloat16)
    reqs = requests_for(ck, arithmetic, 32, 8, temperature=1.0, max_tokens=160)
    samples = {name: engine.generate(reqs) for name, engine in (("f32", f32), ("b16", b16))}
    # every position of prompts and float32's first samples, read by both
    paths = [(None, 0, r.prompt_ids + s[0].token_ids) for r, s in zip(reqs, samples["f32"])]
    read = list(zip(f32.extend(paths), b16.extend(paths)))
    assert all(a.dtype == b.dtype == torch.float32 for (_, a), (_, b) in read)
    # total variation distance of each position's next-token distribution (measured on this CPU, AMX: mean
    # 0.0026, 99th percentile 0.025, largest 0.091 over these 1,639 positions)
    distance = torch.cat([(a.softmax(-1) - b.softmax(-1)).abs().sum(-1) / 2 for (_, a), (_, b) in read])
    assert float(distance.mean()) < 0.01 and float(distance.max()) < 0.15
    eos = ck.tokenizer.eos_id
    right = {name: [sum(arithmetic.verify(e, ck.tokenizer.decode([t for t in c.token_ids if t != eos])).correct
                        for c in got) for e, got in zip(examples, result)] for name, result in samples.items()}
    assert sum(a == b for r, s in zip(samples["f32"], samples["b16"]) for a, b in zip(r, s)) < 32 * 8  # not float32
    rng = torch.Generator().manual_seed(0)
    for k in (1, 8):
        per_problem = {name: torch.tensor([pass_at_k(8, c, k) for c in counts]) for name, counts in right.items()}
        means = per_problem["f32"][torch.randint(0, 32, (1000, 32), generator=rng)].mean(1)
        low, high = means.quantile(0.05), means.quantile(0.95)
        assert low <= per_problem["b16"].mean() <= high, (k, float(per_problem["b16"].mean()), float(low), float(high))


def test_extend_over_several_passes_never_reads_memory_nobody_wrote(arithmetic_checkpoint, arithmetic, monkeypatch):
    from thinkscale.tiny import engine as engine_module

    engine = Engine(arithmetic_checkpoint.model)
    reqs = requests_for(arithmetic_checkpoint, arithmetic, 6, 1, temperature=1.0, max_tokens=100)
    paths = [(None, 0, r.prompt_ids + s[0].token_ids) for r, s in zip(reqs, engine.generate(reqs))]
    whole = engine.extend(paths)  # one pass
    new_kv = engine.new_kv
    # what new_kv leaves unwritten may hold anything: here NaN, the worst it can hold
    monkeypatch.setattr(engine, "new_kv", lambda positions: new_kv(positions).index_fill_(2, torch.tensor(
        list(range(-(-positions // engine_module.CHUNK) - 1)), dtype=torch.long), float("nan")))
    monkeypatch.setattr(engine_module, "EXTEND_ROWS", 16)  # passes that end inside sequences
    for (kv, logits), (kv_whole, logits_whole) in zip(engine.extend(paths), whole):
        assert torch.equal(logits, logits_whole) and torch.equal(kv, kv_whole)
    # on top of known positions that end inside a chunk, past them anything (NaN): the passes keep what was known
    known = [(kv[:, :, :2].clone(), 40, tokens[40:]) for (kv, _), (_, _, tokens) in zip(whole, paths)
             if len(tokens) > 56]
    assert known
    for kv, _, _ in known:
        for layer in kv:  # in the layout of the engine's path (the CPU kernel keeps its keys as its values)
            engine._clear_from(layer, 1, 40 % engine_module.CHUNK, float("nan"))
    for (kv, logits), (kv_whole, logits_whole) in zip(engine.extend(known), [w for w, (_, _, t) in zip(whole, paths)
                                                                             if len(t) > 56]):
        assert torch.equal(logits, logits_whole[40:]) and torch.equal(kv, kv_whole)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_batched_extend_computes_the_grouped_bits_with_fewer_waits(arithmetic_checkpoint, arithmetic, monkeypatch,
                                                                   dtype, attention):
    """`extend` of many sequences at once (a GPU's default: one cache for all, each row's keys gathered) draws
    what it draws item by item, to the bit, over one pass or several that end inside sequences, over one call or
    several (its memory bound), and on top of known positions, another continuation's among them; while it waits
    for the device once per pass, not once per sequence."""
    from thinkscale.tiny import engine as engine_module

    grouped = Engine(arithmetic_checkpoint.model, dtype=dtype)
    batched = Engine(arithmetic_checkpoint.model, dtype=dtype)
    assert not batched.batched_extend  # off on a CPU, where its gathered copies cost more than its kernels save
    batched.batched_extend = True
    reqs = requests_for(arithmetic_checkpoint, arithmetic, 8, 2, temperature=1.0, max_tokens=100)
    drawn = grouped.generate(reqs)
    paths = [(None, 0, r.prompt_ids + s[0].token_ids) for r, s in zip(reqs, drawn)]
    whole = grouped.extend(paths)
    known = [(kv[:, :, :2].clone(), 40, t[40:]) for (kv, _), (_, _, t) in zip(whole, paths) if len(t) > 41]
    # a known prompt whose cache a longer continuation left (as the prefix cache hands out), then a short other one
    other_from = [(r.prompt_ids, s[1].token_ids[:3], kv) for (kv, _), r, s in zip(whole, reqs, drawn)
                  if len(r.prompt_ids) % engine_module.CHUNK and len(s[1].token_ids) >= 3]
    other = [(kv, len(prompt), tokens) for prompt, tokens, kv in other_from]
    assert len({len(t) for _, _, t in paths}) > 3 and known and other
    c = arithmetic_checkpoint.model.config
    per_sequence = (c.num_hidden_layers * 2 * max(kv.shape[2] for kv, _ in whole) * c.num_attention_heads
                    * engine_module.CHUNK * c.head_dim * dtype.itemsize)  # the longest path's cache, in bytes
    calls, extend = [0], batched.extend
    monkeypatch.setattr(batched, "extend", lambda items: calls.__setitem__(0, calls[0] + 1) or extend(items))
    waits = _Waits(monkeypatch)
    for rows, fit in ((engine_module.EXTEND_ROWS, None), (16, 3), (37, 2)):
        monkeypatch.setattr(engine_module, "EXTEND_ROWS", rows)
        if fit:  # room for `fit` of the longest sequences a call: the paths' call splits into several
            monkeypatch.setattr(engine_module, "EXTEND_BYTES", fit * per_sequence)
        for items in (paths, known, other):
            with waits as seen:
                expected = grouped.extend(items)
            grouped_waits = seen.count("aten.nonzero.default")
            calls[0] = 0
            with waits as seen:
                got = batched.extend(items)
            if items is paths and fit is None:  # one pass, one call: a look per chunk, not per sequence and chunk
                assert calls[0] == 1  # (the kernel looks at nothing: its rows read their items' caches)
                assert attention == "kernel" or seen.count("aten.nonzero.default") < grouped_waits / 2
            elif items is paths:
                assert calls[0] == 1 + -(-len(items) // fit)
            assert len(got) == len(items)
            for (kv, logits), (kv_expected, logits_expected) in zip(got, expected):
                assert kv.shape == kv_expected.shape and kv.is_contiguous()
                assert torch.equal(kv, kv_expected) and torch.equal(logits, logits_expected)
    for (kv, logits), (prompt, tokens, _) in zip(got, other_from):  # what the sequence computed whole holds
        fresh_kv, fresh_logits = grouped.extend([(None, 0, prompt + tokens)])[0]
        assert torch.equal(kv, fresh_kv) and torch.equal(logits, fresh_logits[len(prompt):])


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads resident memory from /proc")
def test_the_cpu_cache_costs_memory_only_where_rows_write(arithmetic_checkpoint, arithmetic):
    from thinkscale.tiny.engine import CHUNK

    engine = Engine(arithmetic_checkpoint.model, max_rows=2048)
    before = _resident_bytes()
    cache = engine._cache_for(2, 2048)
    whole = engine._cache
    # made for every position at once (8 chunks of 2,048 rows: 1 GiB), and zeros
    assert whole.shape[2:4] == (-(-arithmetic_checkpoint.model.config.max_position_embeddings // CHUNK), 2048)
    assert whole.nbytes >= 2**30 and not whole[:, :, :, ::97].any()
    assert _resident_bytes() - before < 64 * 2**20  # read, not written: nothing resident
    reqs = requests_for(arithmetic_checkpoint, arithmetic, 4, 4, temperature=1.0, max_tokens=60)
    first = engine.generate(reqs)
    assert engine._cache is whole and cache.data_ptr() == whole.data_ptr()  # never made again
    assert _resident_bytes() - before < 128 * 2**20
    again = Engine(arithmetic_checkpoint.model, max_rows=5).generate(reqs)  # rows written, reused and zero alike
    assert [[c.token_ids for c in r] for r in first] == [[c.token_ids for c in r] for r in again]


def _mixed_requests(checkpoint, task, n=5):
    """Requests that differ in every setting a row carries: temperature (0 too), top_p, length, stop tokens."""
    newline = checkpoint.tokenizer.ids["\n"]
    return [SampleRequest(tuple(checkpoint.tokenizer.encode(e.problem.prompt)), n=n, params=SamplingParams(
        seed=i, temperature=(1.0, 0.0, 0.7)[i % 3], top_p=(1.0, 0.9)[i % 2], max_tokens=(100, 20, 60)[i % 3],
        stop_ids=(newline,) if i % 4 == 0 else ())) for i, e in enumerate(task.examples("test", 10))]


def test_the_triton_step_where_triton_does_not_import_warns_and_runs_the_torch_path(arithmetic_checkpoint, attention,
                                                                                   monkeypatch):
    """`triton_step` asked for where Triton is not installed: one warning, then the torch path's samples (with the
    C kernel in use, the kernel comes first and the step is never tried)."""
    import sys
    import warnings

    import thinkscale.tiny

    monkeypatch.setitem(sys.modules, "thinkscale.tiny.step_kernel", None)  # as where Triton is not installed
    monkeypatch.delattr(thinkscale.tiny, "step_kernel", raising=False)
    model = arithmetic_checkpoint.model
    engine = Engine(model, max_rows=4, static_decode=True)
    engine.triton_step = True
    reqs = [SampleRequest((1, 5, 6), n=2, params=SamplingParams(temperature=1.0, max_tokens=6, seed=3))]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = engine.generate(reqs)
    told = [w for w in caught
            if re.search(r"Triton step cannot run here \((ModuleNotFound|Import)Error", str(w.message))]
    assert len(told) == (attention == "torch") and engine.triton_step == (attention == "kernel")
    assert got == Engine(model, max_rows=4, static_decode=False).generate(reqs)


@pytest.mark.parametrize("max_rows, sync_every, overlap", [(8, 3, False), (8, 3, True), (64, 8, True)])
def test_static_decode_draws_the_exact_loops_samples(arithmetic_checkpoint, arithmetic, max_rows, sync_every,
                                                     overlap):
    """Fixed-shape steps (every row, every chunk in reach; finished rows found every few steps) compute each
    row as the exact loop does, to the bit, with rows finishing, waiting and being admitted mid-run; with the
    next round queued before the last one is read (`overlap`) too."""
    model, reqs = arithmetic_checkpoint.model, _mixed_requests(arithmetic_checkpoint, arithmetic)
    exact = Engine(model, max_rows=max_rows).generate(reqs)
    engine = Engine(model, max_rows=max_rows, static_decode=True, sync_every=sync_every)
    engine.overlap = overlap
    assert engine.generate(reqs) == exact
    assert {c.finish_reason for r in exact for c in r} == {"stop", "length"}
    assert engine.generate(reqs[3:5]) == exact[3:5]  # its state is kept between calls; a smaller call after


def test_static_decode_computes_at_most_an_eighth_idle_rows_above_256(arithmetic_checkpoint, arithmetic):
    """A static step's rows: a power of two up to 256; above, the next multiple of an eighth of the power of two
    (whole Triton programs, at most an eighth idle where a power of two left up to half); at these widths static
    decode still draws the exact loop's samples."""
    from thinkscale.tiny.engine import _static_width

    for rows in range(1, 5000):
        width = _static_width(rows, 8192)
        power = 1 << (rows - 1).bit_length()
        assert rows <= width and (width == max(16, power) if power <= 256 else
                                  width % 64 == 0 and width - rows < power // 8), (rows, width)
    assert _static_width(3000, 3000) == 3000 and _static_width(300, 4096) == 320
    model, reqs = arithmetic_checkpoint.model, _mixed_requests(arithmetic_checkpoint, arithmetic, n=40)
    engine, widths = Engine(model, max_rows=512, static_decode=True), []
    step = engine._static_step
    engine._static_step = lambda width, *args: widths.append(width) or step(width, *args)
    assert engine.generate(reqs) == Engine(model, max_rows=512).generate(reqs)
    assert widths[0] == 448 and {384, 320} & set(widths)  # 400 rows, then fewer


def test_one_pass_attention_is_the_chunked_attention_rounded_otherwise(arithmetic_checkpoint, arithmetic):
    """Static decode's attention in one softmax over all chunks (a GPU's default) equals the online softmax's to
    rounding, rows that see part of a chunk and rows that see none of a later one alike; end to end it draws
    the exact loop's samples but where two tokens were nearly tied."""
    gen = torch.Generator().manual_seed(0)
    A, H, D, C = 40, 4, 32, 3
    q = torch.randn(A, H, 1, D, generator=gen)
    keys, values = torch.randn(C, A, H, D, CHUNK, generator=gen), torch.randn(C, A, H, CHUNK, D, generator=gen)
    pos = torch.randint(0, C * CHUNK, (A,), generator=gen)
    hidden = torch.arange(C * CHUNK).view(C, 1, CHUNK) > pos[None, :, None]
    bias = torch.zeros(C, A, 1, 1, CHUNK).masked_fill_(hidden[:, :, None, None, :], float("-inf"))
    chunked = Engine._attend(q, keys, values, [(c, 0, A, bias[c]) for c in range(C)])
    one_pass = Engine._attend_all(q, keys, values, bias)
    torch.testing.assert_close(one_pass, chunked, rtol=1e-5, atol=1e-6)
    assert not torch.equal(one_pass, chunked)  # another order of operations: not the same bits
    # in bfloat16 (a GPU's usual dtype) it is no further from the exact attention (float64) than chunk by chunk
    exact = Engine._attend(q.double(), keys.double(), values.double(),
                           [(c, 0, A, bias[c].double()) for c in range(C)])
    b16 = [t.bfloat16() for t in (q, keys, values, bias)]
    errors = [float((out.double() - exact).abs().mean()) for out in (
        Engine._attend(*b16[:3], [(c, 0, A, b16[3][c]) for c in range(C)]), Engine._attend_all(*b16))]
    assert errors[1] <= 1.05 * errors[0], errors

    model, reqs = arithmetic_checkpoint.model, _mixed_requests(arithmetic_checkpoint, arithmetic, n=8)
    exact = Engine(model, max_rows=32).generate(reqs)
    engine = Engine(model, max_rows=32, static_decode=True)
    engine.one_pass_attention = True
    drawn = engine.generate(reqs)
    pairs = [(a, b) for x, y in zip(exact, drawn) for a, b in zip(x, y)]
    same = [(a, b) for a, b in pairs if a.token_ids == b.token_ids]
    assert len(same) >= 0.9 * len(pairs)
    assert all(abs(a.logprob - b.logprob) < 1e-3 for a, b in same)


@pytest.mark.parametrize("overlap", [False, True])
def test_static_decode_keeps_steps_in_the_prefix_cache_and_drops_cancelled_rows(arithmetic_checkpoint, arithmetic,
                                                                               overlap):
    tok, model = arithmetic_checkpoint.tokenizer, arithmetic_checkpoint.model
    prompts = [tuple(tok.encode(e.problem.prompt)) for e in arithmetic.examples("test", 6)]
    plain, _ = _step_rounds(Engine(model), prompts, tok.ids["\n"])
    engine = Engine(model, prefix_cache_bytes=64 << 20, static_decode=True, sync_every=4)
    engine.overlap = overlap
    cached, last = _step_rounds(engine, prompts, tok.ids["\n"])
    assert cached == plain and all(r[0].prompt_cached >= 1 for r in last)

    reqs = requests_for(arithmetic_checkpoint, arithmetic, 4, 6, temperature=1.0, max_tokens=100)
    engine = Engine(model, max_rows=8, static_decode=True, sync_every=2)
    engine.overlap = overlap
    whole, asked, dropped = engine.generate(reqs), [0], {}

    def cancelled():  # asked every two steps: request 1 goes at the third asking
        asked[0] += 1
        return [1] if asked[0] > 2 else []

    cut = engine.generate(reqs, cancelled=cancelled, on_dropped=dropped.__setitem__)
    assert any(c is None for c in cut[1]) and list(dropped) == [1] and dropped[1] > 0
    assert [cut[i] for i in (0, 2, 3)] == [whole[i] for i in (0, 2, 3)]

    # cancelled at the very look that finds its sample finished (its third token, in the first round of two
    # steps): the sample is kept and reported done, as the exact loop does, and nothing is reported dropped
    reqs = [SampleRequest(r.prompt_ids, 1, SamplingParams(temperature=1.0, max_tokens=(100, 3)[i], seed=i))
            for i, r in enumerate(reqs[:2])]
    heard, dropped, looks = [], {}, []

    def from_the_second_look():
        looks.append(True)
        return [1] if len(looks) >= 2 else []

    cut = engine.generate(reqs, cancelled=from_the_second_look, on_dropped=dropped.__setitem__,
                          on_request_done=lambda r, got: heard.append(r))
    assert cut[1] == Engine(model).generate(reqs[1:])[0] and len(cut[1][0].token_ids) == 3
    assert heard == [1, 0] and not dropped


@pytest.mark.parametrize("overlap", [False, True])
def test_static_decode_streams_first_samples(arithmetic_checkpoint, arithmetic, monkeypatch, overlap):
    """Streamed first samples run in static decode (a server's batches often have one): `on_tokens` hears each
    one's tokens in order, the stop token too, at most one a request a call, and a cancelled request's stream is
    a beginning of its sample; the samples are the exact loop's."""
    model = arithmetic_checkpoint.model
    plain = requests_for(arithmetic_checkpoint, arithmetic, 6, 5, temperature=1.0, max_tokens=80)
    asked = [SampleRequest(r.prompt_ids, r.n, SamplingParams(temperature=1.0, max_tokens=80, seed=r.params.seed,
                                                             stream=i % 2 == 0)) for i, r in enumerate(plain)]
    exact = Engine(model, max_rows=5).generate(asked)
    engine = Engine(model, max_rows=12, static_decode=True, sync_every=3)  # requests 0 and 2 side by side, others wait
    engine.overlap, loop, loops = overlap, engine._static_loop, []
    monkeypatch.setattr(engine, "_static_loop", lambda call: loops.append(call) or loop(call))

    def listen(heard, calls):
        def on_tokens(drawn):
            calls.append([r for r, _ in drawn])
            for r, t in drawn:
                heard.setdefault(r, []).append(t)
        return on_tokens

    heard, calls = {}, []
    assert engine.generate(asked, on_tokens=listen(heard, calls)) == exact and len(loops) == 1
    assert sorted(heard) == [0, 2, 4] and all(tuple(heard[i]) == exact[i][0].token_ids for i in heard)
    assert all(len(set(c)) == len(c) for c in calls) and max(map(len, calls)) > 1  # rows heard side by side
    looks = []

    def cancelled():  # request 2's caller gives up at the fourth look
        looks.append(1)
        return [2] if len(looks) >= 4 else []

    heard = {}
    got = engine.generate(asked, cancelled=cancelled, on_tokens=listen(heard, []))
    assert got[2] == [None] * 5 and [got[i] for i in (0, 1, 3, 4, 5)] == [exact[i] for i in (0, 1, 3, 4, 5)]
    assert 0 < len(heard[2]) < len(exact[2][0].token_ids)
    assert tuple(heard[2]) == exact[2][0].token_ids[:len(heard[2])]
    # Rows 0-4 end after two tokens, so the streamed row 10 moves into one of their places mid-stream; it ends at
    # its length limit (every column it may have drawn copied); each request's tokens come before it is done.
    from thinkscale.tiny import engine as engine_module

    upload, moved = engine_module._upload, []
    monkeypatch.setattr(engine_module, "_upload", lambda values, device: (
        moved.append(np.asarray(values)) if np.ndim(values) == 2 else None) or upload(values, device))
    short = [SampleRequest(plain[0].prompt_ids, 5, SamplingParams(temperature=1.0, max_tokens=2)), plain[1],
             SampleRequest(plain[2].prompt_ids, 2, SamplingParams(temperature=1.0, max_tokens=5, seed=4, stream=True))]
    timeline = []
    got = engine.generate(short, on_request_done=lambda r, samples: timeline.append(("done", r)),
                          on_tokens=lambda drawn: timeline.extend(("token", r, t) for r, t in drawn))
    assert got == Engine(model, max_rows=5).generate(short) and got[2][0].finish_reason == "length"
    assert tuple(t for kind, *rest in timeline if kind == "token" for _, t in [rest]) == got[2][0].token_ids
    assert timeline.index(("done", 2)) > max(i for i, event in enumerate(timeline) if event[0] == "token")
    assert any(10 in m[1] for m in moved)  # (holes, movers): row 10 moved


@pytest.mark.parametrize("overlap", [False, True])
def test_static_decode_tracks_confidence_and_cuts_as_the_exact_loop(arithmetic_checkpoint, arithmetic, monkeypatch,
                                                                    overlap):
    """Confidence in static decode (a captured step computes it where a call asks): each completion's confidence
    and each floor's cut are the exact loop's to the bit, beside requests that ask for none and rows that wait;
    the rows a previous call cut leave nothing behind for the next."""
    model = arithmetic_checkpoint.model
    plain = requests_for(arithmetic_checkpoint, arithmetic, 6, 5, temperature=1.0, max_tokens=100)
    measured = [SampleRequest(r.prompt_ids, r.n, SamplingParams(
        temperature=1.0, max_tokens=100, seed=r.params.seed, confidence_window=(6, 0, 4)[i % 3], confidence_top_k=3,
        stream=i == 0)) for i, r in enumerate(plain)]
    exact = Engine(model, max_rows=7).generate(measured)
    floor = _floor_between(exact)
    floored = [SampleRequest(r.prompt_ids, r.n, dataclasses.replace(r.params, confidence_floor=floor))
               if r.params.confidence_window else r for r in measured]
    exact_cut = Engine(model, max_rows=7).generate(floored)
    engine = Engine(model, max_rows=7, static_decode=True, sync_every=3)
    engine.overlap, loop, loops = overlap, engine._static_loop, []
    monkeypatch.setattr(engine, "_static_loop", lambda call: loops.append(call) or loop(call))
    heard = {}
    assert engine.generate(floored, on_tokens=lambda drawn: [heard.setdefault(r, []).append(t) for r, t in drawn]) \
        == exact_cut
    assert tuple(heard[0]) == exact_cut[0][0].token_ids
    assert engine.generate(measured) == exact and engine.generate(plain[:2]) == Engine(model).generate(plain[:2])
    assert len(loops) == 3
    reasons = [c.finish_reason for r in exact_cut for c in r]
    assert reasons.count("cut") >= 3 and {"stop", "length"} & set(reasons)
    assert all(c.confidence is None for i in (1, 4) for c in exact[i])


class _Waits:
    """Records the ops that make the host wait for the device (or copy host data to it) while it is entered:
    what a CUDA graph's capture refuses. `tolist` is not an op: it is watched as a method."""

    def __init__(self, monkeypatch):
        from torch.utils._python_dispatch import TorchDispatchMode

        aten, seen = torch.ops.aten, []
        waiting = {aten._local_scalar_dense.default, aten.is_nonzero.default, aten.item.default, aten.equal.default,
                   aten.nonzero.default, aten.masked_select.default, aten.lift_fresh.default,
                   aten.unique_consecutive.default, aten._unique2.default}

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                masks = func in (aten.index.Tensor, aten.index_put_.default, aten._index_put_impl_.default) and any(
                    i is not None and i.dtype == torch.bool for i in args[1])
                if func in waiting or masks:
                    seen.append(str(func))
                return func(*args, **(kwargs or {}))

        tolist = torch.Tensor.tolist
        monkeypatch.setattr(torch.Tensor, "tolist", lambda t: seen.append("tolist") or tolist(t))
        self.mode, self.seen = Mode(), seen

    def __enter__(self):
        self.seen.clear()
        self.mode.__enter__()
        return self.seen

    def __exit__(self, *exc):
        self.mode.__exit__(*exc)


@pytest.mark.parametrize("one_pass", [False, True])
def test_a_static_step_never_waits_for_the_device(arithmetic_checkpoint, arithmetic, monkeypatch, one_pass,
                                                  attention):
    """What a CUDA graph can capture, checked where there is no GPU: the static step (`_static_body`) has no op
    that waits for the device or copies host data to it; the exact loop's step has (the watch sees them)."""
    if attention == "kernel":
        pytest.skip("a GPU's step: the C kernel runs on a CPU only, on addresses the host hands it")
    engine, waits = Engine(arithmetic_checkpoint.model, max_rows=16, static_decode=True), _Waits(monkeypatch)
    engine.one_pass_attention = one_pass
    body, steps = engine._static_body, []

    def watched(*args):
        with waits as seen:
            body(*args)
        steps.append((args, list(seen)))

    monkeypatch.setattr(engine, "_static_body", watched)
    engine.generate(_mixed_requests(arithmetic_checkpoint, arithmetic, n=3))
    assert {nucleus for (_, _, nucleus, _), _ in steps} == {True}  # the mixed requests ask for top-p
    engine.generate(requests_for(arithmetic_checkpoint, arithmetic, 3, 4, max_tokens=50))
    assert {nucleus for (_, _, nucleus, _), _ in steps} == {True, False}
    engine.generate(requests_for(arithmetic_checkpoint, arithmetic, 3, 4, max_tokens=50, confidence_window=4,
                                 confidence_floor=1.0))
    assert {confident for (*_, confident), _ in steps} == {True, False}
    assert len({args for args, _ in steps}) > 3 and all(seen == [] for _, seen in steps)
    exact = Engine(arithmetic_checkpoint.model, max_rows=16)
    decode = exact._decode
    with waits as seen:
        decode(exact._cache_for(2, 16), torch.zeros(16, dtype=torch.long), torch.arange(16) * 3)
    assert "aten.nonzero.default" in seen and "tolist" in seen


@pytest.mark.parametrize("overlap", [False, True])
def test_static_decode_waits_for_the_device_only_for_its_snapshots(arithmetic_checkpoint, arithmetic, monkeypatch,
                                                                  overlap):
    """Between its steps, static decode's loop (`_static_loop`) waits for the device only to read a copy it
    queued (a round's snapshot, and the tokens of the rows that snapshot found finished), at most twice a round,
    and sends the device data only through `_upload` (queued, on a GPU). With `overlap` the host reads a
    snapshot after it has queued the next round (on a GPU: while the device computes it); without, never."""
    from torch.utils._python_dispatch import _disable_current_modes

    from thinkscale.tiny import engine as engine_module

    engine, waits = Engine(arithmetic_checkpoint.model, max_rows=16, static_decode=True), _Waits(monkeypatch)
    engine.overlap = overlap
    timeline, download, upload, step, loop = [], engine_module._Download, engine_module._upload, \
        engine._static_step, engine._static_loop

    class Watched(download):
        def __init__(self, t, what):
            super().__init__(t, what)
            timeline.append(("queued", self))

        def result(self):
            timeline.append(("read", self))
            with _disable_current_modes():
                return super().result()

    def uploaded(values, device):
        with _disable_current_modes():
            return upload(values, device)

    def stepped(*args):
        timeline.append(("step", args[3]))
        with _disable_current_modes():  # a step never waits: test_a_static_step_never_waits_for_the_device
            step(*args)

    def watched(call):
        with waits as seen:
            loop(call)
        timeline.append(("waits", list(seen)))

    monkeypatch.setattr(engine_module, "_Download", Watched)
    monkeypatch.setattr(engine_module, "_upload", uploaded)
    monkeypatch.setattr(engine, "_static_step", stepped)
    monkeypatch.setattr(engine, "_static_loop", watched)
    reqs = [dataclasses.replace(r, params=dataclasses.replace(r.params, stream=i % 3 == 0))  # streams ride along
            for i, r in enumerate(_mixed_requests(arithmetic_checkpoint, arithmetic, n=3))]
    heard = {}
    got = engine.generate(reqs, on_tokens=lambda drawn: [heard.setdefault(r, []).append(t) for r, t in drawn])
    assert got == Engine(arithmetic_checkpoint.model, max_rows=16).generate(reqs)
    assert sorted(heard) == [0, 3, 6, 9] and all(tuple(heard[i]) == got[i][0].token_ids for i in heard)
    assert timeline[-1] == ("waits", [])
    assert {count for kind, count in timeline if kind == "step"} == {engine.sync_every}  # a round: one call
    rounds = sum(kind == "step" for kind, _ in timeline)
    reads = [(i, copy) for i, (kind, copy) in enumerate(timeline) if kind == "read"]
    assert rounds > 5 and len(reads) <= 2 * rounds + 2
    assert {copy.what for _, copy in reads} == {"snapshot", "tokens"}
    behind = [any(kind == "step" for kind, _ in timeline[timeline.index(("queued", copy)):i])
              for i, copy in reads if copy.what == "snapshot"]
    # with overlap only a call's last snapshot may find no round behind it (where no row had tokens left)
    assert (sum(behind) >= len(behind) - 1) if overlap else not any(behind)


def test_the_engine_and_the_model_keep_everything_on_their_device(arithmetic_checkpoint):
    """The meta device (shapes, no data) stands in for a GPU where there is none: any tensor of the engine's
    set-up, the static step or the model's forward pass left on the CPU would meet a meta one and raise."""
    import copy

    model = copy.deepcopy(arithmetic_checkpoint.model)
    engine = Engine(model, device="meta", dtype=torch.bfloat16, static_decode=True)
    tables = (engine.cos, engine.sin, engine.w_qkv[0], engine.embed, engine.w_head, engine.norm_f)
    assert {t.device.type for t in tables} == {"meta"}
    engine._cache_for(6, 32)
    state = engine._state_for(32)
    for nucleus, one_pass, confident in itertools.product((True, False), repeat=3):
        engine.one_pass_attention = one_pass
        engine._static_body(32, 3, nucleus, confident)
    assert {t.device.type for t in state.values()} == {"meta"}
    assert model(torch.zeros(2, 5, dtype=torch.long, device="meta")).shape == (2, 5, model.config.vocab_size)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_graphs_replay_the_static_steps(arithmetic_checkpoint, arithmetic, dtype):
    """On a GPU the static steps run as captured CUDA graphs: the same samples as the steps run one kernel at
    a time, on the first call (capturing) and on later ones (replaying), and after new weights are loaded."""
    import copy

    reqs = _mixed_requests(arithmetic_checkpoint, arithmetic, n=40)
    graphed = Engine(copy.deepcopy(arithmetic_checkpoint.model), max_rows=128, device="cuda", dtype=dtype)
    eager = Engine(copy.deepcopy(arithmetic_checkpoint.model), max_rows=128, device="cuda", dtype=dtype)
    eager.cuda_graphs = False
    assert graphed.static_decode and eager.static_decode  # on by default on a GPU
    first = graphed.generate(reqs)
    assert graphed._graphs and first == eager.generate(reqs)
    assert graphed.generate(reqs) == first
    for engine in (graphed, eager):  # weights changed in place, as training does, then loaded again
        with torch.no_grad():
            engine.model.lm_head.weight.mul_(1.5)
        engine.reload_weights()
    assert graphed.generate(reqs) == eager.generate(reqs) != first


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_static_decode_streams_and_cuts_as_its_steps_one_kernel_at_a_time(arithmetic_checkpoint, arithmetic):
    """On a GPU a call with streamed and confident requests takes static decode too: its captured graphs give
    what its steps one kernel at a time give, confidences and the floor's cuts included, and each stream is
    its sample's tokens."""
    import copy

    reqs = [dataclasses.replace(r, params=dataclasses.replace(
        r.params, stream=i % 3 == 0, confidence_window=(0, 5)[i % 2], confidence_top_k=3))
        for i, r in enumerate(_mixed_requests(arithmetic_checkpoint, arithmetic, n=40))]
    graphed = Engine(copy.deepcopy(arithmetic_checkpoint.model), max_rows=128, device="cuda")
    eager = Engine(copy.deepcopy(arithmetic_checkpoint.model), max_rows=128, device="cuda")
    eager.cuda_graphs = False
    floor = _floor_between(eager.generate(reqs))
    floored = [dataclasses.replace(r, params=dataclasses.replace(r.params, confidence_floor=floor))
               if r.params.confidence_window else r for r in reqs]
    heard = {}
    got = graphed.generate(floored, on_tokens=lambda drawn: [heard.setdefault(r, []).append(t) for r, t in drawn])
    assert graphed._graphs and got == eager.generate(floored)
    assert any(c.finish_reason == "cut" for r in got for c in r)
    assert sorted(heard) == [i for i in range(len(reqs)) if i % 3 == 0]
    assert all(tuple(heard[i]) == got[i][0].token_ids for i in heard)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_gpus_one_pass_attention_and_batched_extend_draw_what_the_cpus_paths_draw(arithmetic_checkpoint,
                                                                                      arithmetic):
    """On a GPU static decode attends in one softmax and `extend` batches its sequences, by default: in float32
    they draw the samples the CPU's paths (chunk by chunk, sequence by sequence) draw on the same card, but
    where two tokens were nearly tied, and their prompts' logits agree to rounding."""
    import copy

    reqs = _mixed_requests(arithmetic_checkpoint, arithmetic, n=40)
    gpu = Engine(copy.deepcopy(arithmetic_checkpoint.model), max_rows=128, device="cuda")
    cpu_paths = Engine(copy.deepcopy(arithmetic_checkpoint.model), max_rows=128, device="cuda")
    assert gpu.one_pass_attention and gpu.batched_extend
    cpu_paths.one_pass_attention = cpu_paths.batched_extend = False
    pairs = [(a, b) for x, y in zip(gpu.generate(reqs), cpu_paths.generate(reqs)) for a, b in zip(x, y)]
    same = [(a, b) for a, b in pairs if a.token_ids == b.token_ids]
    assert len(same) >= 0.9 * len(pairs) and all(abs(a.logprob - b.logprob) < 1e-3 for a, b in same)
    items = [(None, 0, r.prompt_ids) for r in reqs]
    for (kv, logits), (kv_cpu, logits_cpu) in zip(gpu.extend(items), cpu_paths.extend(items)):
        torch.testing.assert_close(logits, logits_cpu, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(kv, kv_cpu, rtol=1e-4, atol=1e-4)
