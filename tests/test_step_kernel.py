"""Static decode's whole step as Triton kernels (tiny/step_kernel.py), checked where there is no GPU by Triton's
interpreter (`make test-triton` installs Triton and sets TRITON_INTERPRET=1)."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.triton
# skips the module where Triton cannot run
from triton_device import DEVICE, assert_static_decode_draws_the_exact_loops_samples  # noqa: E402

from thinkscale.tiny import checkpoint, step_kernel  # noqa: E402
from thinkscale.tiny.engine import CHUNK, Engine, SampleRequest, SamplingParams  # noqa: E402
from thinkscale.tiny.model import TinyConfig, TinyLlama  # noqa: E402

from test_engine import _mixed_requests  # noqa: E402


def _engine(model, dtype=torch.float32, rows=32):
    # the torch path on a CPU too: there the C kernel, every engine's default, would keep its own cache layout
    return Engine(copy.deepcopy(model), max_rows=rows, device=DEVICE, dtype=dtype, cpu_kernel=False)


def _step_inputs(engine, rows, chunks, seed=0):
    """A cache of random keys and values with more rows and chunks than a step of `rows` rows reads, and each
    row's token and position, the first, a chunk's last and the last position among them."""
    gen = torch.Generator().manual_seed(seed)
    cache = engine._cache_for(chunks + 1, rows + 5)
    cache.copy_(torch.randn(cache.shape, generator=gen))
    tokens = torch.randint(0, engine.config.vocab_size, (rows,), generator=gen)
    pos = torch.randint(0, chunks * CHUNK, (rows,), generator=gen)
    pos[:3] = torch.tensor([0, CHUNK - 1, chunks * CHUNK - 1])
    return cache[:, :, :chunks + 1, :rows + 5], tokens.to(DEVICE), pos.to(DEVICE)


@pytest.mark.parametrize("name", ["arithmetic", "arithmetic-4x"])  # head sizes 32 and 64
def test_the_step_is_the_engines_decode(name):
    """In float32 the kernels' logits, and the keys and values they store, are the torch path's; rows that are
    not a multiple of a program's; no other row or position of the cache is written."""
    engine = _engine(checkpoint.load(name).model)
    rows, chunks = 21, 3
    cache, tokens, pos = _step_inputs(engine, rows, chunks)
    torch_cache, original = cache.clone(), cache.clone()
    want = engine._decode(torch_cache[:, :, :chunks, :rows], tokens, pos)
    got = step_kernel.decode(engine, cache[:, :, :chunks, :rows], tokens, pos, chunks)
    assert got.shape == want.shape and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(cache, torch_cache, rtol=1e-5, atol=1e-5)
    assert not torch.equal(cache, original)  # each row's keys and values stored
    assert torch.equal(cache[:, :, :, rows:], torch_cache[:, :, :, rows:])  # rows past the step: as they were
    assert torch.equal(cache[:, :, chunks:], torch_cache[:, :, chunks:])


def test_in_bfloat16_the_step_is_closer_to_float32_than_the_torch_path():
    """The residual, the norms and every product's sums in float32, rounded to bfloat16 only where stored."""
    model = checkpoint.load("arithmetic").model
    full, half = _engine(model), _engine(model, torch.bfloat16)
    rows, chunks = 21, 3
    cache, tokens, pos = _step_inputs(half, rows, chunks)
    reference = full._decode(cache.float()[:, :, :chunks, :rows].clone(), tokens, pos)
    torch_half = half._decode(cache[:, :, :chunks, :rows].clone(), tokens, pos)
    kernels = step_kernel.decode(half, cache[:, :, :chunks, :rows], tokens, pos, chunks)
    error = float((kernels - reference).abs().mean())
    assert 0 < error <= float((torch_half - reference).abs().mean())


def test_the_last_kernel_samples_as_choose_tokens_does():
    """Without top-p, the last kernel draws each row's token and moves its state as `_static_take` would from
    the kernels' logits: greedy and sampled rows, rows that stop at a stop token or at their length, rows not
    live."""
    engine = _engine(checkpoint.load("arithmetic").model)
    rows, chunks = 21, 3
    cache, tokens, pos = _step_inputs(engine, rows, chunks)
    gen = torch.Generator().manual_seed(1)
    s = engine._state_for(rows + 5)  # rows past the step's: never touched
    s["tok"][:rows] = tokens
    s["pos"][:rows] = pos
    s["temp"][:rows] = torch.tensor([0.0, 0.7, 1.0, 1.3])[torch.randint(0, 4, (rows,), generator=gen)]
    s["key"][:rows] = torch.randint(0, 2**32, (rows,), generator=gen)
    s["ngen"][:rows] = torch.randint(0, 20, (rows,), generator=gen)
    s["max"][:rows] = s["ngen"][:rows] + torch.randint(1, 3, (rows,), generator=gen)
    s["lp"][:rows] = -torch.rand(rows, generator=gen, dtype=torch.float64)
    s["live"][:rows] = torch.rand(rows, generator=gen) < 0.8
    s["stop"][:rows] = torch.rand(rows, engine.config.vocab_size, generator=gen) < 0.3
    before = {name: value.clone() for name, value in s.items()}
    logits = step_kernel.decode(engine, cache[:, :, :chunks, :rows], s["tok"][:rows], pos, chunks, state=s)
    got = {name: value.clone() for name, value in s.items()}
    for name, value in before.items():
        s[name].copy_(value)
    engine._static_take(slice(0, rows), logits, nucleus=False)
    for name in s:
        if name == "lp":
            torch.testing.assert_close(got[name], s[name], rtol=0, atol=1e-5)  # a GPU's exp is approximate
        else:
            assert torch.equal(got[name], s[name]), name
    assert not torch.equal(got["tok"], before["tok"]) and not torch.equal(got["live"], before["live"])
    assert all(torch.equal(got[name][rows:], before[name][rows:]) for name in s)
    assert len(set(got["tok"][:rows].tolist())) > 2  # rows drew different tokens


# the last kernel samples; the torch path samples top-p, and tracks confidence
@pytest.mark.parametrize("top_p, window", [(1.0, 0), (0.9, 0), (1.0, 3)])
def test_static_decode_on_the_step_draws_the_exact_loops_samples(arithmetic_checkpoint, arithmetic, top_p, window,
                                                                 monkeypatch):
    """End to end, static decode on the kernels (float32) draws the exact loop's samples but where two tokens
    were nearly tied: without top-p or confidence, sampled by the last kernel (on a GPU, in a captured graph);
    with either, by torch from the kernels' logits."""
    reqs = [replace(r, params=replace(r.params, max_tokens=10, top_p=top_p, confidence_window=window))
            for r in _mixed_requests(arithmetic_checkpoint, arithmetic, n=2)[:4]]
    sampled = []
    decode = step_kernel.decode

    def watched(*args, state=None):
        sampled.append(state is not None)
        return decode(*args, state=state)

    monkeypatch.setattr(step_kernel, "decode", watched)
    assert_static_decode_draws_the_exact_loops_samples(arithmetic_checkpoint.model, reqs, "triton_step")
    assert sampled and set(sampled) == {top_p == 1.0 and not window}


def test_a_model_the_kernels_cannot_hold_falls_back_to_the_torch_path_with_a_warning():
    model = TinyLlama(TinyConfig(hidden_size=64, intermediate_size=96, num_attention_heads=4))  # head size 16
    engine = Engine(copy.deepcopy(model), max_rows=4, device=DEVICE, static_decode=True, cpu_kernel=False)
    engine.triton_step = True
    reqs = [SampleRequest((1, 5, 6), n=2, params=SamplingParams(temperature=1.0, max_tokens=6, seed=3))]
    with pytest.warns(RuntimeWarning, match="head size 16.*triton_step = False"):
        got = engine.generate(reqs)
    assert not engine.triton_step
    exact = Engine(copy.deepcopy(model), max_rows=4, device=DEVICE, static_decode=False, cpu_kernel=False)
    assert [c.token_ids for c in got[0]] == [c.token_ids for c in exact.generate(reqs)[0]]


@pytest.mark.skipif(DEVICE == "cuda", reason="on a CPU only: where Triton has no device to compile for")
def test_on_a_cpu_without_the_interpreter_the_step_falls_back_to_the_torch_path(arithmetic_checkpoint, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # as a CPU machine with Triton installed runs it
    model = arithmetic_checkpoint.model
    engine = Engine(copy.deepcopy(model), max_rows=4, device=DEVICE, static_decode=True, cpu_kernel=False)
    engine.triton_step = True
    reqs = [SampleRequest((1, 5, 6), n=2, params=SamplingParams(temperature=1.0, max_tokens=6, seed=3))]
    with pytest.warns(RuntimeWarning, match="run on a CUDA device .* not on cpu"):
        got = engine.generate(reqs)
    exact = Engine(copy.deepcopy(model), max_rows=4, device=DEVICE, static_decode=False, cpu_kernel=False)
    assert not engine.triton_step and got == exact.generate(reqs)
    root = Path(__file__).resolve().parents[1]  # and the benchmark prints no figure under the step's name
    result = subprocess.run([sys.executable, str(root / "benchmarks" / "sampling.py"), "--device", "cpu",
                             "--static-decode", "on", "--no-cpu-kernel", "--triton-step", "--prompts", "2", "--samples",
                             "2", "--max-new-tokens", "4", "--engine-only"], capture_output=True, text=True,
                            timeout=300, cwd=root, env={**os.environ, "TRITON_INTERPRET": "0"})
    assert result.returncode != 0 and "Triton step could not run here" in result.stderr
    assert "tokens/s" not in result.stdout


def test_a_model_the_kernels_cannot_hold_is_refused_with_the_reason():
    model = TinyLlama(TinyConfig(hidden_size=64, intermediate_size=96, num_attention_heads=4))  # head size 16
    engine = _engine(model)
    cache, tokens, pos = _step_inputs(engine, 4, 1)
    with pytest.raises(ValueError, match="head size 16"):
        step_kernel.decode(engine, cache[:, :, :1, :4], tokens, pos, 1)
    assert step_kernel.why_unfit(TinyConfig(), CHUNK) is None
    assert "intermediate size 100" in step_kernel.why_unfit(TinyConfig(intermediate_size=100), CHUNK)
    assert "vocabulary 300" in step_kernel.why_unfit(TinyConfig(vocab_size=300), CHUNK)
    for setting in ({"block": 8}, {"block": 48}, {"warps": 3}):
        with pytest.raises(ValueError, match="a program must be"):
            step_kernel.configure(**setting)
    assert (step_kernel.BLOCK, step_kernel.NUM_WARPS) == (16, 4)  # a refused setting changes nothing


def test_the_sampling_benchmark_runs_static_decode_on_the_step():
    from test_benchmarks import bench

    # not the defaults (16, 4); on a GPU 16 rows all the same: float32's kernels of more rows take minutes to compile
    block, warps = ("16", "8") if DEVICE == "cuda" else ("32", "2")
    lines = bench("sampling.py", "--prompts", "2", "--samples", "2", "--max-new-tokens", "8", "--max-rows", "4",
                  "--device", DEVICE, "--static-decode", "on", "--triton-step", "--compare-exact", "--engine-only",
                  "--problem-seed", "3", "--triton-block", block, "--triton-warps", warps,
                  *(["--no-cpu-kernel"] if DEVICE == "cpu" else []))
    assert any(line.startswith("thinkscale engine (max_rows 4, float32, static decode, sync every 8, Triton step "
                               f"({block} rows, {warps} warps a program) and attention): ") for line in lines)
    assert f"exact loop on {DEVICE}: 4 of 4 samples the same tokens as static decode's" in lines
    lines = bench("profile_engine.py", "--prompts", "2", "--samples", "2", "--max-new-tokens", "8", "--device",
                  DEVICE, "--static-decode", "on", "--triton-step", "--triton-block", block, "--triton-warps", warps,
                  "--dtype", "float32", *(["--no-cpu-kernel"] if DEVICE == "cpu" else []))
    assert f"Triton step ({block} rows, {warps} warps a program), " in lines[0]
    assert lines[1].startswith("one call, not profiled: ") and lines[1].endswith("(1 round of 8 steps)"), lines[1]
    assert re.fullmatch(r"one call, profiled: 32 tokens in .*", lines[2]), lines[2]


def test_the_kernels_compile_for_an_h100_and_at_the_defaults_spill_nothing():
    """benchmarks/triton_kernels.py compiles every kernel for sm_90 with the ptxas Triton ships (no GPU needed):
    a GPU lease finds no kernel that does not compile or does not fit, and the default step keeps every value in
    registers."""
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, str(root / "benchmarks" / "triton_kernels.py"), "--blocks",
                             str(step_kernel.BLOCK), "--warps", str(step_kernel.NUM_WARPS)],
                            capture_output=True, text=True, timeout=600, cwd=root, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    reports = re.findall(r"^(.*), (\d+) warps: (\d+) registers, ([\d,]+) bytes spilled", result.stdout, re.M)
    names = [name for name, *_ in reports]
    assert len(reports) == 7 and sum("attention kernel" in name for name in names) == 3, result.stdout
    for name, warps, registers, spilled in reports:
        assert 0 < int(registers) <= 255
        if "step kernel" in name:
            assert int(warps) == step_kernel.NUM_WARPS and spilled == "0", (name, spilled)
    # float32 on the wider model (the GPU runs the tests above in float32): within an H100's shared memory a program
    result = subprocess.run([sys.executable, str(root / "benchmarks" / "triton_kernels.py"), "--checkpoint",
                             "arithmetic-4x", "--dtype", "float32", "--blocks", str(step_kernel.BLOCK), "--warps",
                             str(step_kernel.NUM_WARPS)], capture_output=True, text=True, timeout=600, cwd=root,
                            env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    shared = [int(n.replace(",", "")) for n in re.findall(r"([\d,]+) bytes shared memory", result.stdout)]
    assert len(shared) == 7 and max(shared) <= 227 * 1024, result.stdout
