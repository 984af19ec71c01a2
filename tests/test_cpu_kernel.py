"""The engine's C attention kernel for a CPU (tiny/cpu_kernel.py) against exact attention, and its fallbacks.

Every engine property (a decode step equals `extend`, splits equal the whole, the prefix cache changes no
sample, static decode equals the exact loop) is checked with the kernel too: tests/test_engine.py runs each
of its tests with the torch path and with the kernel.
"""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch

from thinkscale.tiny import cpu_kernel
from thinkscale.tiny.engine import CHUNK, Engine, SampleRequest, SamplingParams
from thinkscale.tiny.model import TinyConfig, apply_rope, rope_tables

pytestmark = pytest.mark.skipif(not cpu_kernel.available(), reason=f"no CPU kernel: {cpu_kernel.why_unavailable()}")


def _case(heads: int, dim: int, rows: int, chunks: int, layers: int = 2, dtype=torch.float32, seed: int = 0):
    """A decode cache (layers, 2, chunks, rows, H, CHUNK * D) of random keys and values at each row's positions
    before its own, NaN after (never to be read), rows' qkv and positions, and the rope tables. The kernel's
    layout: keys position-major, (CHUNK, D) a head, as values."""
    g = torch.Generator().manual_seed(seed)
    pos = torch.randint(0, chunks * CHUNK, (rows,), generator=g)
    pos[:3] = torch.tensor([0, CHUNK - 1, chunks * CHUNK - 1])[: rows]  # the first position, a chunk's last, the end
    cache = torch.randn(layers, 2, chunks, rows, heads, CHUNK * dim, generator=g).to(dtype)
    both = cache.view(layers, 2, chunks, rows, heads, CHUNK, dim)
    for r, p in enumerate(pos.tolist()):
        for c in range(chunks):
            past = [j for j in range(CHUNK) if c * CHUNK + j >= p]
            both[:, :, c, r, :, past] = float("nan")
    qkv = torch.randn(rows, 3, heads, dim, generator=g).to(dtype)
    cos, sin = rope_tables(TinyConfig(hidden_size=heads * dim, num_attention_heads=heads), torch.arange(chunks * CHUNK))
    return cache, qkv, pos, cos.float().contiguous(), sin.float().contiguous()


def _exact(cache, qkv, pos, cos, sin, layer):
    """Rope, store and attention in float64 with torch: (each row's attention (A, H * D), the cache after)."""
    cache = cache.double().clone()
    A, _, H, D = qkv.shape
    x = qkv.double()
    q = apply_rope(x[:, 0], cos.double()[pos][:, None], sin.double()[pos][:, None]) / math.sqrt(D)
    k = apply_rope(x[:, 1], cos.double()[pos][:, None], sin.double()[pos][:, None])
    chunks = cache.shape[2]
    keys = cache[layer, 0].view(chunks, A, H, CHUNK, D)
    values = cache[layer, 1].view(chunks, A, H, CHUNK, D)
    out = torch.empty(A, H, D, dtype=torch.float64)
    for r, p in enumerate(pos.tolist()):
        c, o = divmod(p, CHUNK)
        keys[c, r, :, o], values[c, r, :, o] = k[r], x[r, 2]
        K = keys[:, r].permute(1, 0, 2, 3).reshape(H, chunks * CHUNK, D)[:, : p + 1]  # (H, positions, D)
        V = values[:, r].permute(1, 0, 2, 3).reshape(H, chunks * CHUNK, D)[:, : p + 1]
        weights = torch.einsum("hd,hpd->hp", q[r], K).softmax(-1)
        out[r] = torch.einsum("hp,hpd->hd", weights, V)
    return out.reshape(A, H * D), cache


@pytest.mark.parametrize("heads, dim", [(4, 32), (2, 64), (3, 16), (2, 48), (1, 128)])  # shipped, others, any
def test_the_kernel_ropes_stores_and_attends_as_exact_attention(heads, dim):
    cache, qkv, pos, cos, sin = _case(heads, dim, rows=40, chunks=4)
    expected, expected_cache = _exact(cache, qkv, pos, cos, sin, layer=1)
    out = cpu_kernel.attend(qkv, pos, cos, sin, cpu_kernel.where(cache, torch.arange(40)), 1, 40, 1 / math.sqrt(dim))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()  # nothing past a row's position was read
    assert torch.allclose(out.double(), expected, rtol=1e-5, atol=1e-5)
    written = ~expected_cache.isnan()
    assert torch.equal(written, ~cache.isnan())  # it wrote each row's position of layer 1, nothing else
    assert torch.allclose(cache.double()[written], expected_cache[written], rtol=1e-5, atol=1e-6)
    assert torch.equal(cache[:, 1][~cache[:, 1].isnan()], expected_cache[:, 1][written[:, 1]].float())  # values as given


def test_a_row_reads_only_its_own_cache_and_its_result_is_the_same_whatever_shares_the_call():
    cache, qkv, pos, cos, sin = _case(4, 32, rows=200, chunks=3)
    scale, rows = 1 / math.sqrt(32), torch.arange(200)
    before = cache.clone()
    alone = []
    for r in range(0, 200, 23):  # each row alone, on a copy of the cache as it was
        copy = before.clone()
        alone.append(cpu_kernel.attend(qkv[r:r + 1], pos[r:r + 1], cos, sin, cpu_kernel.where(copy, rows[r:r + 1]),
                                       0, 1, scale, own=True))
    together = cpu_kernel.attend(qkv, pos, cos, sin, cpu_kernel.where(cache, rows), 0, 200, scale, own=True)
    assert torch.equal(together[::23], torch.cat(alone))


def test_rows_that_read_their_first_positions_from_a_shared_cache_compute_what_their_own_copies_give():
    """Decode's use of `lead`: each row's prompt read from the prompt's one cache, where its own holds a copy
    (positions past the lead: NaN in the shared cache, never read); the same bits as reading the copy."""
    cache, qkv, pos, cos, sin = _case(4, 32, rows=60, chunks=3)
    rows, scale = torch.arange(60), 1 / math.sqrt(32)
    lead = torch.randint(0, 1 << 30, (60,), generator=torch.Generator().manual_seed(3)) % (pos + 1)
    lead[:4] = torch.stack([pos[0], pos[1] * 0, pos[2] // CHUNK * CHUNK, pos[3]])  # all, none, whole chunks, all
    prompts = []  # one cache a row here (the engine's rows of a prompt share one): its lead positions, NaN after
    for r in range(60):
        own = cache[:, :, :, r].clone()
        by_position = own.view(2, 2, 3, 4, CHUNK, 32)  # (layers, 2, chunks, H, CHUNK, D)
        for j in range(int(lead[r]), 3 * CHUNK):
            by_position[:, :, j // CHUNK, :, j % CHUNK] = float("nan")
        prompts.append(own)
    table = torch.cat([cpu_kernel.where(p) for p in prompts])
    copy = cache.clone()  # alive while the kernel writes into it: a table holds addresses, not tensors
    plain = cpu_kernel.attend(qkv, pos, cos, sin, cpu_kernel.where(copy, rows), 0, 60, scale, own=True)
    led = cpu_kernel.attend(qkv, pos, cos, sin, cpu_kernel.where(cache, rows), 0, 60, scale, own=True,
                            lead=(table, lead))
    assert torch.isfinite(led).all() and torch.equal(led, plain)
    with pytest.raises(ValueError, match="lead counts"):  # a row's lead may not reach the position it stores
        cpu_kernel.attend(qkv, pos, cos, sin, cpu_kernel.where(cache, rows), 0, 60, scale, own=True,
                          lead=(table, pos + 1))


def test_rows_of_one_sequence_store_then_read_its_one_cache():
    """`extend`'s use: consecutive positions of one sequence, every row pointed at the same cache; rows past
    `stores` only read (an idle row)."""
    heads, dim, length = 4, 32, 70
    cache, qkv, _, cos, sin = _case(heads, dim, rows=1, chunks=3)
    pos = torch.arange(length)
    qkv = torch.randn(length + 1, 3, heads, dim)
    table = cpu_kernel.where(cache[:, :, :, 0]).expand(length + 1, -1)
    out = cpu_kernel.attend(qkv, torch.cat([pos, torch.tensor([5])]), cos, sin, table, 0, length, 0.25)
    one_by_one = cache.clone()
    for p in range(length):  # the same positions fed one at a time, as decode steps
        step = cpu_kernel.attend(qkv[p:p + 1], pos[p:p + 1], cos, sin, cpu_kernel.where(one_by_one[:, :, :, 0]), 0, 1,
                                 0.25)
        assert torch.equal(step, out[p:p + 1])
    assert torch.allclose(one_by_one, cache, rtol=0, atol=0, equal_nan=True)  # the same keys and values stored
    assert torch.isfinite(out[-1]).all()  # the idle row read positions 0..5, all written


def test_in_bfloat16_the_kernel_is_nearer_exact_attention_than_bfloat16_matmuls():
    cache, qkv, pos, cos, sin = _case(4, 32, rows=64, chunks=4, dtype=torch.bfloat16, seed=1)
    expected, expected_cache = _exact(cache, qkv, pos, cos, sin, layer=0)
    out = cpu_kernel.attend(qkv, pos, cos, sin, cpu_kernel.where(cache, torch.arange(64)), 0, 64, 1 / math.sqrt(32))
    assert out.dtype == torch.bfloat16
    error = (out.double() - expected).abs().max()
    torch_bf16 = []  # the torch path's arithmetic: rope, scores, softmax and values in bfloat16
    x = qkv
    q = apply_rope(x[:, 0], cos.bfloat16()[pos][:, None], sin.bfloat16()[pos][:, None]) * (1 / math.sqrt(32))
    for r, p in enumerate(pos.tolist()):
        K = expected_cache[0, 0, :, r].view(4, 4, CHUNK, 32).permute(1, 0, 2, 3).reshape(4, -1, 32)[:, : p + 1]
        V = expected_cache[0, 1, :, r].view(4, 4, CHUNK, 32).permute(1, 0, 2, 3).reshape(4, -1, 32)[:, : p + 1]
        w = torch.einsum("hd,hpd->hp", q[r], K.bfloat16()).softmax(-1)
        torch_bf16.append(torch.einsum("hp,hpd->hd", w, V.bfloat16()).reshape(-1))
    assert error < 0.02 and error < (torch.stack(torch_bf16).double() - expected).abs().max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_residual_step_and_norm_are_torchs_within_rounding(dtype):
    """`add_rms`: x += delta in place (to the bit: one float32 addition), then the RMS norm of the engine's
    torch path (`Engine._rms`) within float32 rounding, rounded once to out's dtype; without delta, the norm."""
    g = torch.Generator().manual_seed(5)
    x, weight = torch.randn(70, 128, generator=g) * 3, torch.rand(128, generator=g) + 0.5
    delta = torch.randn(70, 128, generator=g).to(dtype)
    expected_x = x + delta.float()
    x64 = expected_x.double()
    expected = weight.double() * (x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + 1e-5))
    out = torch.full((70, 128), float("nan"), dtype=dtype)
    assert cpu_kernel.add_rms(x, delta, weight, 1e-5, out) is out
    assert torch.equal(x, expected_x)
    step = 2.0 ** -7 if dtype == torch.bfloat16 else 2.0 ** -22  # a rounding's relative error, with room
    assert ((out.double() - expected).abs() <= step * expected.abs() + 1e-6).all()
    again = torch.empty(70, 128, dtype=dtype)
    cpu_kernel.add_rms(x.clone(), None, weight, 1e-5, again)
    assert torch.equal(again, out)  # nothing added: the same norm of the same x
    with pytest.raises(ValueError, match="out must be"):
        cpu_kernel.add_rms(x, delta, weight, 1e-5, torch.empty(70, 64, dtype=dtype))
    with pytest.raises(ValueError, match="x must be a contiguous torch.float32"):
        cpu_kernel.add_rms(x.bfloat16(), delta, weight, 1e-5, out)  # the residual stream is float32


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_mlp_activation_is_silu_gate_times_up_rounded_once(dtype):
    g = torch.Generator().manual_seed(6)
    gu = (torch.randn(40, 2 * 300, generator=g) * 4).to(dtype)  # an intermediate size past one block of 256
    gu[0, :6] = torch.tensor([0.0, -0.0, 90.0, -90.0, 1e-30, -1e-30])  # zero, far on either side, tiny
    out = cpu_kernel.silu_mul(gu, torch.empty(40, 300, dtype=dtype))
    gate, up = gu.double()[:, :300], gu.double()[:, 300:]
    expected = torch.nn.functional.silu(gate) * up
    step = 2.0 ** -8 if dtype == torch.bfloat16 else 2.0 ** -21  # one rounding (bfloat16), or a few ulps
    assert ((out.double() - expected).abs() <= step * expected.abs() + 1e-30).all()
    with pytest.raises(ValueError, match="out must be"):
        cpu_kernel.silu_mul(gu, torch.empty(40, 300, dtype=torch.float64))
    with pytest.raises(ValueError, match="gu must be"):  # gate and up, of as many columns
        cpu_kernel.silu_mul(gu[:, :599].contiguous(), torch.empty(40, 299, dtype=dtype))


def test_each_call_splits_its_rows_among_threads_and_every_row_is_the_same_whatever_the_split():
    cache, qkv, pos, cos, sin = _case(4, 32, rows=200, chunks=3, dtype=torch.bfloat16, seed=7)
    results = []
    for threads in (1, 2, 3):
        copy = cache.clone()
        rows = cpu_kernel.prepare(pos, cpu_kernel.where(copy, torch.arange(200)), 200, own=True)
        out = cpu_kernel.run(qkv, cos, sin, rows, 1, 0.17, threads=threads)
        if cpu_kernel._library().ts_openmp():  # built with OpenMP: the rows were split (at least 32 a thread)
            assert cpu_kernel.last_threads == threads
        x = torch.randn(200, 128, generator=torch.Generator().manual_seed(8))
        normed = cpu_kernel.add_rms(x, out, torch.ones(128), 1e-5, torch.empty(200, 128), threads=threads)
        act = cpu_kernel.silu_mul(torch.cat([out, out], 1), torch.empty(200, 128, dtype=torch.bfloat16),
                                  threads=threads)
        results.append((out, copy, x, normed, act))
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0][:1] + results[0][2:], other[:1] + other[2:]))
        assert torch.allclose(results[0][1], other[1], rtol=0, atol=0, equal_nan=True)  # the same stores


def test_the_engine_samples_the_same_on_one_thread_and_on_two(arithmetic_checkpoint, arithmetic):
    prompts = [tuple(arithmetic_checkpoint.tokenizer.encode(e.problem.prompt)) for e in arithmetic.examples("test", 6)]
    reqs = [SampleRequest(p, n=24, params=SamplingParams(max_tokens=60, seed=i)) for i, p in enumerate(prompts)]
    engine = Engine(arithmetic_checkpoint.model, dtype=torch.bfloat16, cpu_kernel=True)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = engine.generate(reqs)
        torch.set_num_threads(2)
        two = engine.generate(reqs)
    finally:
        torch.set_num_threads(threads)
    assert one == two


def test_bad_inputs_are_refused():
    cache, qkv, pos, cos, sin = _case(4, 32, rows=8, chunks=2)
    table = cpu_kernel.where(cache, torch.arange(8))
    with pytest.raises(ValueError, match="contiguous"):
        cpu_kernel.attend(qkv.transpose(0, 1).contiguous().transpose(0, 1), pos, cos, sin, table, 0, 8, 1.0)
    with pytest.raises(ValueError, match="8 rows of qkv, 7 positions"):
        cpu_kernel.attend(qkv, pos[:7], cos, sin, table, 0, 8, 1.0)
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        cpu_kernel.attend(qkv.double(), pos, cos, sin, table, 0, 8, 1.0)
    # what the table says of the cache: the call must fit it, or C would write outside it
    with pytest.raises(ValueError, match="layer 2 does not fit"):
        cpu_kernel.attend(qkv, pos, cos, sin, table, 2, 8, 1.0)  # the cache has two layers
    with pytest.raises(ValueError, match="does not fit the cache's table"):
        cpu_kernel.attend(qkv.bfloat16(), pos, cos, sin, table, 0, 8, 1.0)  # a float32 cache
    with pytest.raises(ValueError, match="does not fit the cache's table"):
        cpu_kernel.attend(qkv[:, :, :2].contiguous(), pos, cos, sin, table, 0, 8, 1.0)  # 2 heads of a 4-head cache
    with pytest.raises(ValueError, match="contiguous float32"):
        cpu_kernel.attend(qkv, pos, cos.bfloat16(), sin, table, 0, 8, 1.0)
    with pytest.raises(ValueError, match="position outside"):
        cpu_kernel.attend(qkv, pos.clamp(max=0) + 2 * CHUNK, cos, sin, table, 0, 8, 1.0)  # past its two chunks
    with pytest.raises(ValueError, match="rows outside"):
        cpu_kernel.where(cache, torch.arange(1, 9))
    with pytest.raises(ValueError, match="last two dimensions"):
        cpu_kernel.where(cache[..., ::2], torch.arange(8))
    with pytest.raises(ValueError, match="last two dimensions"):  # keys without values
        cpu_kernel.where(cache[:, :1, :, 0].contiguous())
    with pytest.raises(ValueError, match="on the CPU"):
        cpu_kernel.attend(qkv.to("meta"), pos, cos, sin, table, 0, 8, 1.0)
    with pytest.raises(ValueError, match="integers on the CPU"):
        cpu_kernel.attend(qkv, pos.float(), cos, sin, table, 0, 8, 1.0)
    with pytest.raises(ValueError, match="cache of their own"):  # `own` rows split among threads would race
        cpu_kernel.attend(qkv, pos, cos, sin, cpu_kernel.where(cache, torch.tensor([0, 1, 2, 3, 4, 5, 6, 6])), 0, 8,
                          1.0, own=True)
    with pytest.raises(ValueError, match="head size of at most 128"):
        cpu_kernel.attend(torch.zeros(8, 3, 1, 256), pos, cos, sin, table, 0, 8, 1.0)


def test_checked_rows_keep_what_was_checked_and_the_caches_they_read():
    """`prepare`'s rows are copies (a caller's later change is not handed to C unchecked), and they keep the
    caches their tables point into alive, an expanded view of a `where` table included (from review)."""
    import gc
    import weakref

    cache, qkv, pos, cos, sin = _case(4, 32, rows=8, chunks=2)
    expected = cpu_kernel.attend(qkv, pos, cos, sin, cpu_kernel.where(cache.clone(), torch.arange(8)), 0, 8, 0.25,
                                 own=True)
    given = pos.clone()
    rows = cpu_kernel.prepare(given, cpu_kernel.where(cache, torch.arange(8)), 8, own=True)
    given += 1000  # past every cache: had it reached C, it would write outside the tensor
    assert torch.equal(cpu_kernel.run(qkv, cos, sin, rows, 0, 0.25), expected)
    one = torch.zeros(1, 2, 1, 4, CHUNK * 32)
    alive = weakref.ref(one)
    rows = cpu_kernel.prepare(torch.arange(4), cpu_kernel.where(one).expand(4, -1), 4)
    del one
    gc.collect()
    assert alive() is not None  # kept by `rows`
    assert torch.isfinite(cpu_kernel.run(torch.randn(4, 3, 4, 32), cos, sin, rows, 0, 0.25)).all()


def test_a_model_outside_the_kernels_bounds_runs_the_torch_path_with_a_warning():
    from thinkscale.tiny.model import TinyLlama

    model = TinyLlama(TinyConfig(hidden_size=512, num_attention_heads=2, num_hidden_layers=1))  # heads of 256
    reqs = [SampleRequest((1, 5, 6), n=2, params=SamplingParams(max_tokens=5, seed=1))]
    with pytest.warns(RuntimeWarning, match="outside the CPU kernel's bounds"):  # told: said when built
        engine = Engine(model, cpu_kernel=True)
    assert not engine.cpu_kernel
    drawn = engine.generate(reqs)
    assert drawn == Engine(model, cpu_kernel=False).generate(reqs)
    with warnings.catch_warnings():  # not told, it was only the default: no word
        warnings.simplefilter("error")
        quiet = Engine(model)
        assert quiet.generate(reqs) == drawn
    assert not quiet.cpu_kernel
    quiet.cpu_kernel = True  # told now: said at the next call
    with pytest.warns(RuntimeWarning, match="outside the CPU kernel's bounds"):
        assert quiet.generate(reqs) == drawn


def test_the_engine_with_the_kernel_draws_the_torch_paths_samples_but_where_two_tokens_nearly_tied(
        arithmetic_checkpoint, arithmetic):
    prompts = [tuple(arithmetic_checkpoint.tokenizer.encode(e.problem.prompt)) for e in arithmetic.examples("test", 8)]
    reqs = [SampleRequest(p, n=16, params=SamplingParams(max_tokens=100, seed=i)) for i, p in enumerate(prompts)]
    torch_path = Engine(arithmetic_checkpoint.model, cpu_kernel=False).generate(reqs)
    kernel = Engine(arithmetic_checkpoint.model, cpu_kernel=True)
    assert kernel._fused()
    drawn = kernel.generate(reqs)
    pairs = [(a, b) for x, y in zip(torch_path, drawn) for a, b in zip(x, y)]
    same = [(a, b) for a, b in pairs if a.token_ids == b.token_ids]
    assert len(same) >= 0.9 * len(pairs)
    assert all(abs(a.logprob - b.logprob) < 1e-3 for a, b in same)


def test_an_engine_not_told_runs_the_kernel_on_a_cpu_unless_turned_off(arithmetic_checkpoint, monkeypatch):
    if not cpu_kernel.available():
        pytest.skip(f"no CPU kernel: {cpu_kernel.why_unavailable()}")
    monkeypatch.delenv("THINKSCALE_CPU_KERNEL", raising=False)
    assert Engine(arithmetic_checkpoint.model)._fused()
    assert not Engine(arithmetic_checkpoint.model, cpu_kernel=False)._fused()
    assert not Engine(copy.deepcopy(arithmetic_checkpoint.model), device="meta").cpu_kernel  # a CPU's default only
    monkeypatch.setenv("THINKSCALE_CPU_KERNEL", "no")
    assert not Engine(arithmetic_checkpoint.model).cpu_kernel
    monkeypatch.setenv("THINKSCALE_CPU_KERNEL", "maybe")
    with pytest.warns(RuntimeWarning, match="taken as unset"):
        assert cpu_kernel.default() and cpu_kernel.setting() is None


def test_a_cache_folder_that_cannot_be_made_leaves_the_torch_path_found_out_once(arithmetic_checkpoint, monkeypatch,
                                                                                  tmp_path):
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("THINKSCALE_CACHE", str(tmp_path / "a-file" / "cache"))  # under a file: no folder there
    cpu_kernel._library.cache_clear()
    try:
        assert not cpu_kernel.available()
        assert "cache folder" in cpu_kernel.why_unavailable()
        failures = list(cpu_kernel._failure)
        with warnings.catch_warnings():  # not told: quietly the torch path
            warnings.simplefilter("error")
            assert not Engine(arithmetic_checkpoint.model)._fused()
        assert cpu_kernel._failure == failures  # found out once, not again for each engine
    finally:
        monkeypatch.undo()
        cpu_kernel._library.cache_clear()
        cpu_kernel._failure.clear()
    assert cpu_kernel.available()


def test_without_a_compiler_or_when_turned_off_the_engine_warns_and_runs_the_torch_path(
        arithmetic_checkpoint, arithmetic, monkeypatch, tmp_path):
    """Where the kernel cannot run, the torch path does: with a warning where the kernel was asked for, without
    one where it was only the engine's default."""
    prompt = tuple(arithmetic_checkpoint.tokenizer.encode(arithmetic.examples("test", 1)[0].problem.prompt))
    reqs = [SampleRequest(prompt, n=4, params=SamplingParams(max_tokens=40))]
    expected = Engine(arithmetic_checkpoint.model, cpu_kernel=False).generate(reqs)
    for off in ("0", "off", "false"):
        monkeypatch.setenv("THINKSCALE_CPU_KERNEL", off)
        assert not cpu_kernel.default() and not cpu_kernel.available()
        with pytest.warns(RuntimeWarning, match=f"THINKSCALE_CPU_KERNEL={off}"):
            engine = Engine(arithmetic_checkpoint.model, cpu_kernel=True)
        assert engine.generate(reqs) == expected
        assert not engine.cpu_kernel
    monkeypatch.delenv("THINKSCALE_CPU_KERNEL")
    monkeypatch.setenv("THINKSCALE_CACHE", str(tmp_path))  # nothing built there yet
    monkeypatch.setenv("CC", "/bin/false")
    cpu_kernel._library.cache_clear()
    try:
        assert not cpu_kernel.available()
        assert "/bin/false" in cpu_kernel.why_unavailable()
        with pytest.warns(RuntimeWarning, match="not available"):
            engine = Engine(arithmetic_checkpoint.model, cpu_kernel=True)
        assert engine.generate(reqs) == expected
        with warnings.catch_warnings():  # not told: the default, so no warning
            warnings.simplefilter("error")
            quiet = Engine(arithmetic_checkpoint.model)
            assert quiet.generate(reqs) == expected
        assert not quiet.cpu_kernel
        monkeypatch.setenv("THINKSCALE_CPU_KERNEL", "1")  # the process asks for it: each engine says so
        with pytest.warns(RuntimeWarning, match="not available"):
            assert not Engine(arithmetic_checkpoint.model).cpu_kernel
    finally:
        monkeypatch.undo()
        cpu_kernel._library.cache_clear()
        cpu_kernel._failure.clear()
    assert cpu_kernel.available()
