"""Sampling throughput: thinkscale's engine against transformers' generate().

    python benchmarks/sampling.py [--prompts 64] [--samples 64] [--threads 1] [--problem-seed 0]
        [--dtype float32|bfloat16] [--device cpu|cuda] [--static-decode auto|on|off] [--repeats N]
        [--sync-every N] [--overlap auto|on|off] [--one-pass-attention auto|on|off] [--triton-attention]
        [--triton-step [--triton-block N] [--triton-warps N]] [--split test|train]
        [--engine-only] [--compare-exact] [--cpu-kernel | --no-cpu-kernel]

Both sample the same prompts from the same shipped checkpoint with the same
thread count, in the same run. Throughput counts generated tokens up to and
including each sample's end token. transformers gets several batchings of the
same work (all prompts in one call, one prompt per call, a few per call) and
the fastest is the baseline. Prints tokens/s for each, the engine's FLOP/s
and its share of what this CPU's float32 matmuls reach at the engine's shapes
(bfloat16 beside it), and last, on a line of its own, `ratio: N.N` (engine /
fastest transformers).

`--dtype bfloat16` runs the engine in bfloat16 (tiny/engine.py says what that
costs), prints how far its next-token distributions are from float32's on
each prompt and its first sample, and gives transformers both dtypes, float32
and bfloat16, each with every batching: the baseline is the fastest of all.
On a CPU the engine runs its attention in its C kernel where it builds (its
default: tiny/cpu_kernel.py, built on first use; the build is timed apart,
not in the engine's time). `--cpu-kernel` asks for it (an error where it
does not build) and also times the torch path, printing how many samples the
two draw the same; `--no-cpu-kernel` runs the torch path.

On a GPU the engine runs static decode (tiny/engine.py: fixed-shape steps
captured in CUDA graphs) with a row for every sample, and its first call,
which captures the graphs, is timed and printed apart from the timed calls
(the median of `--repeats`). transformers gets all prompts in one call and 16
per call there (one or eight per call cannot win on a GPU, and would take
minutes), after a warm-up call, as on the CPU. `--compare-exact` also runs the
engine's exact loop (static decode off) on the same device and prints how many
samples it draws the same. `--overlap on|off` sets whether static decode
queues each round of steps before it reads the last round's finished rows
(a GPU's default; tiny/engine.py, `_static_loop`). `--one-pass-attention on|off` sets static
decode's attention (one softmax over all chunks, a GPU's default, or chunk by
chunk; tiny/engine.py); `--triton-attention` runs it as one Triton kernel a
layer instead (tiny/attention_kernel.py), and `--triton-step` the whole step as Triton
kernels, two a layer, sampling in the last (tiny/step_kernel.py), each program of those between
the attention kernels taking `--triton-block` rows with `--triton-warps` warps (defaults
`step_kernel.BLOCK` and `NUM_WARPS`).
`--transformers-static-cache` also gives
transformers its static KV cache with all prompts per call (on a GPU its
generate may compile the model for it; its first call is timed apart). On
this CPU it was no faster than the dynamic cache (7.6-7.8k against 7.9-9.2k
tokens/s, 8 training prompts x 64 samples, one per call), so the CPU runs
leave it out. `--split train --engine-only` times the engine
alone on training problems: how a setting such as `--sync-every` is chosen
without looking at the test problems (benchmarks/gpu_check.sh does that).
"""

from __future__ import annotations

import argparse
import os
import time
from typing import get_args

from thinkscale.tiny import DtypeName  # torch-free: threads are set before torch loads


def count_until_end(rows, eos_id: int) -> int:
    """Tokens per row up to and including the first end token (all of them if none)."""
    total = 0
    for row in rows.tolist():
        total += row.index(eos_id) + 1 if eos_id in row else len(row)
    return total


def matmul_rates(config, rows: int, seconds: float = 0.3) -> dict[str, float]:
    """FLOP/s of `rows` x hidden @ hidden x (3 x hidden, 2 x intermediate) matmuls, the engine's projections,
    in float32 and bfloat16: the rate the engine's arithmetic could reach here."""
    import torch

    h, i = config.hidden_size, config.intermediate_size
    rates = {}
    for dtype in (torch.float32, torch.bfloat16):
        best = 0.0
        for k, n in ((h, 3 * h), (h, 2 * i), (i, h)):
            x, w = torch.randn(rows, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
            x @ w
            done, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds:
                x @ w
                done += 1
            best = max(best, 2 * rows * k * n * done / (time.perf_counter() - started))
        rates[str(dtype).removeprefix("torch.")] = best
    return rates


def run_transformers(model, prompts, samples, per_call, max_new_tokens, pad_id, eos_id,
                     cache: str | None = None) -> tuple[int, float]:
    import torch

    tokens, started = 0, time.perf_counter()
    for i in range(0, len(prompts), per_call):
        group = prompts[i:i + per_call]
        width = max(map(len, group))
        ids = torch.tensor([[pad_id] * (width - len(p)) + list(p) for p in group])  # left padding
        mask = (torch.arange(width)[None, :] >= torch.tensor([width - len(p) for p in group])[:, None]).long()
        ids, mask = ids.to(model.device), mask.to(model.device)
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_p=1.0,
                                 top_k=0, num_return_sequences=samples, max_new_tokens=max_new_tokens,
                                 pad_token_id=pad_id, eos_token_id=eos_id,
                                 **({"cache_implementation": cache} if cache else {}))
        tokens += count_until_end(out[:, width:], eos_id)
    return tokens, time.perf_counter() - started


def add_triton_step_flags(parser: argparse.ArgumentParser) -> None:
    """--triton-step and its program's rows and warps (this script's and profile_engine.py's)."""
    parser.add_argument("--triton-step", action="store_true",
                        help="static decode's whole step as Triton kernels, two a layer (tiny/step_kernel.py; needs "
                             "Triton, so a GPU)")
    parser.add_argument("--triton-block", type=int, default=None,
                        help="with --triton-step: rows a program (a power of two, at least 16; default step_kernel's)")
    parser.add_argument("--triton-warps", type=int, default=None,
                        help="with --triton-step: warps a program (1, 2, 4, 8 or 16; default step_kernel's)")


def triton_step_from_flags(parser: argparse.ArgumentParser, args, engine):
    """Set `engine.triton_step` and the step's rows and warps from the flags; returns tiny/step_kernel.py (which
    needs Triton) where the step was asked for, else None."""
    engine.triton_step = args.triton_step
    if (args.triton_block or args.triton_warps) and not args.triton_step:
        parser.error("--triton-block and --triton-warps go with --triton-step")
    if not args.triton_step:
        return None
    from thinkscale.tiny import step_kernel

    try:
        step_kernel.configure(args.triton_block, args.triton_warps)
    except ValueError as error:
        parser.error(f"--triton-block/--triton-warps: {error}")
    return step_kernel


def triton_step_held(args, engine) -> None:
    """After a warm-up call: stop where --triton-step was asked for and the engine fell back to the torch path (it
    warned why), so no figure is printed under the step's name."""
    if args.triton_step and not engine.triton_step:
        raise SystemExit("--triton-step: the Triton step could not run here (the warning above says why)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default="arithmetic")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--problem-seed", type=int, default=0, help="which test problems are the prompts (default 0)")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-rows", type=int, default=None,
                        help="engine rows per batch (default 1024 on a CPU, every sample on a GPU)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--static-decode", choices=("auto", "on", "off"), default="auto",
                        help="the engine's static decode (default auto: on a GPU only)")
    parser.add_argument("--one-pass-attention", choices=("auto", "on", "off"), default="auto",
                        help="static decode's attention in one softmax over all chunks, not chunk by chunk "
                             "(default auto: on a GPU only)")
    parser.add_argument("--triton-attention", action="store_true",
                        help="static decode's attention as one Triton kernel a layer (tiny/attention_kernel.py; "
                             "needs Triton, so a GPU)")
    add_triton_step_flags(parser)
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed engine calls, the median reported (default 1 on a CPU, 3 on a GPU)")
    parser.add_argument("--sync-every", type=int, default=None,
                        help="static decode's steps between looks for finished rows (default: the engine's)")
    parser.add_argument("--overlap", choices=("auto", "on", "off"), default="auto",
                        help="static decode queues a round of steps before it reads the last one's finished rows "
                             "(default auto: on a GPU only)")
    parser.add_argument("--split", choices=("test", "train"), default="test",
                        help="the problems' split (default test; train to choose settings)")
    parser.add_argument("--engine-only", action="store_true", help="time the engine alone, no transformers")
    parser.add_argument("--transformers-static-cache", action="store_true",
                        help="also give transformers its static KV cache (all prompts per call; on a GPU its "
                             "generate may compile the model for it), the time of a first call apart")
    parser.add_argument("--compare-exact", action="store_true",
                        help="also draw the samples with the exact loop and count how many are the same")
    parser.add_argument("--cpu-kernel", action=argparse.BooleanOptionalAction, default=None,
                        help="the engine's attention in its C kernel (CPU only; tiny/cpu_kernel.py; the engine's "
                             "default where it builds): given, also timed against the torch path; --no-cpu-kernel: "
                             "the torch path")
    parser.add_argument("--dtype", choices=get_args(DtypeName), default="float32",
                        help="the engine's dtype (default float32); with bfloat16, transformers tries both")
    args = parser.parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)

    import torch
    import transformers

    from thinkscale.tasks import get_task
    from thinkscale.tiny import checkpoint
    from thinkscale.tiny.engine import DTYPES, Engine, SampleRequest, SamplingParams

    torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.startswith("cuda")
    max_rows = args.max_rows or (args.prompts * args.samples if gpu else 1024)
    repeats = args.repeats or (3 if gpu else 1)
    static = {"auto": None, "on": True, "off": False}[args.static_decode]
    transformers.logging.set_verbosity_error()
    ck = checkpoint.load(args.checkpoint)
    task = get_task(ck.summary.get("task", args.checkpoint))
    examples = task.examples(args.split, args.prompts, seed=args.problem_seed)
    prompts = [tuple(ck.tokenizer.encode(e.problem.prompt)) for e in examples]
    pad_id, eos_id = ck.tokenizer.pad_id, ck.tokenizer.eos_id
    print(f"checkpoint {ck.path} ({ck.model.config.num_parameters():,} parameters); {args.prompts} prompts x "
          f"{args.samples} samples, up to {args.max_new_tokens} new tokens; {args.threads} thread(s); device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if gpu else ""))

    if args.cpu_kernel and gpu:
        parser.error("--cpu-kernel runs on a CPU (--device cpu)")
    if args.cpu_kernel is not False and not gpu:
        from thinkscale.tiny import cpu_kernel

        started = time.perf_counter()
        if cpu_kernel.available():
            print(f"the CPU kernel built or loaded in {time.perf_counter() - started:.2f} s (once per machine and "
                  "version; not in the engine's time)")
        elif args.cpu_kernel:
            parser.error(f"--cpu-kernel: the kernel is not available here ({cpu_kernel.why_unavailable()})")
    engine = Engine(ck.model.to(device), max_rows=max_rows, device=device, dtype=DTYPES[args.dtype],
                    static_decode=static, cpu_kernel=args.cpu_kernel,
                    **({"sync_every": args.sync_every} if args.sync_every else {}))
    if args.one_pass_attention != "auto":
        engine.one_pass_attention = args.one_pass_attention == "on"
    if args.overlap != "auto":
        engine.overlap = args.overlap == "on"
    engine.triton_attention = args.triton_attention
    step_kernel = triton_step_from_flags(parser, args, engine)
    requests = [SampleRequest(p, n=args.samples, params=SamplingParams(temperature=1.0, max_tokens=args.max_new_tokens,
                                                                       seed=i)) for i, p in enumerate(prompts)]
    kernel = engine._fused()  # asked for, or the engine's default on a CPU where it builds and the model fits
    attention = "" if kernel else ", " + (
        f"Triton step ({step_kernel.BLOCK} rows, {step_kernel.NUM_WARPS} warps a program) and" if engine.triton_step
        else "Triton" if engine.triton_attention else "one-pass" if engine.one_pass_attention else "chunked"
    ) + " attention"
    name = (f"thinkscale engine (max_rows {max_rows}, {args.dtype}, " + ("C kernel, " if kernel else "")
            + (f"static decode, sync every {engine.sync_every}{', overlapped' if engine.overlap else ''}{attention})"
               if engine.static_decode else "exact loop)"))
    started = time.perf_counter()
    results = engine.generate(requests if gpu else requests[:2])  # warm up; on a GPU, the graphs' capture
    triton_step_held(args, engine)
    if gpu:
        print(f"{name}, first call (graphs captured): {time.perf_counter() - started:.2f} s")
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        results = engine.generate(requests)
        times.append(time.perf_counter() - started)
    engine_s = sorted(times)[len(times) // 2]
    engine_tokens = sum(len(c.token_ids) for r in results for c in r)
    engine_rate = engine_tokens / engine_s
    print(f"{name}: {engine_tokens} tokens in {engine_s:.3f} s (median of {repeats}: "
          f"{', '.join(f'{t:.3f}' for t in times)}) = {engine_rate:,.0f} tokens/s")
    if args.cpu_kernel:  # the same engine with the torch path's attention, and how many samples are the same
        plain = Engine(ck.model, max_rows=max_rows, dtype=DTYPES[args.dtype], static_decode=static, cpu_kernel=False)
        plain.generate(requests[:2])
        started = time.perf_counter()
        drawn = plain.generate(requests)
        seconds = time.perf_counter() - started
        tokens = sum(len(c.token_ids) for r in drawn for c in r)
        same = [a.token_ids == b.token_ids for x, y in zip(results, drawn) for a, b in zip(x, y)]
        print(f"the same engine, attention in torch: {tokens} tokens in {seconds:.3f} s = {tokens / seconds:,.0f} "
              f"tokens/s; the C kernel {engine_rate / (tokens / seconds):.2f}x; {sum(same)} of {len(same)} samples "
              "the same tokens")
    if args.compare_exact:
        exact = Engine(ck.model, max_rows=max_rows, device=device, dtype=DTYPES[args.dtype], static_decode=False,
                       cpu_kernel=kernel)  # the same attention
        # the tokens: a log-probability summed by other kernels differs in its last bits (before stop 42 the whole
        # completion was compared, so such a sample counted as different)
        same = [a.token_ids == b.token_ids for x, y in zip(results, exact.generate(requests)) for a, b in zip(x, y)]
        print(f"exact loop on {device}: {sum(same)} of {len(same)} samples the same tokens as static decode's")

    if args.engine_only:
        return
    if args.dtype != "float32":  # what the dtype costs: how far each next-token distribution moves
        paths = [(None, 0, p + results[i][0].token_ids) for i, p in enumerate(prompts)]
        reference = Engine(ck.model, max_rows=max_rows, device=device, cpu_kernel=kernel)  # float32, same attention
        distance = torch.cat([(a.softmax(-1) - b.softmax(-1)).abs().sum(-1) / 2
                              for (_, a), (_, b) in zip(reference.extend(paths), engine.extend(paths))])
        print(f"{args.dtype} against float32: total variation distance of the next-token distribution at "
              f"{len(distance):,} positions (each prompt and its first sample): mean {float(distance.mean()):.4f}, "
              f"99th percentile {float(distance.quantile(0.99)):.3f}, largest {float(distance.max()):.3f}")

    best_name, best_rate = None, 0.0
    for dtype in ("float32", "bfloat16") if args.dtype == "bfloat16" else ("float32",):
        hf = transformers.AutoModelForCausalLM.from_pretrained(ck.path, dtype=DTYPES[dtype]).to(device).eval()
        run_transformers(hf, prompts[:1], 2, 1, 8, pad_id, eos_id)  # warm up
        for per_call in sorted({args.prompts, *((16,) if gpu else (1, 8))} & set(range(1, args.prompts + 1)),
                               reverse=True):
            torch.manual_seed(0)
            tokens, seconds = run_transformers(hf, prompts, args.samples, per_call, args.max_new_tokens, pad_id,
                                               eos_id)
            rate = tokens / seconds
            name = f"transformers generate, {dtype}, {per_call} prompt(s) x {args.samples} per call"
            print(f"{name}: {tokens} tokens in {seconds:.2f} s = {rate:,.0f} tokens/s")
            if rate > best_rate:
                best_name, best_rate = name, rate
        if args.transformers_static_cache:
            name = f"transformers generate, {dtype}, static cache, {args.prompts} prompt(s) x {args.samples} per call"
            try:
                started = time.perf_counter()
                run_transformers(hf, prompts, args.samples, args.prompts, args.max_new_tokens, pad_id, eos_id,
                                 "static")  # the first call builds the cache (and compiles, where generate does)
                print(f"{name}, first call: {time.perf_counter() - started:.2f} s")
                torch.manual_seed(0)
                tokens, seconds = run_transformers(hf, prompts, args.samples, args.prompts, args.max_new_tokens,
                                                   pad_id, eos_id, "static")
            except Exception as error:  # noqa: BLE001 - a baseline setting this transformers lacks is reported
                print(f"{name}: failed ({type(error).__name__}: {error})")
            else:
                rate = tokens / seconds
                print(f"{name}: {tokens} tokens in {seconds:.2f} s = {rate:,.0f} tokens/s")
                if rate > best_rate:
                    best_name, best_rate = name, rate
    flops = engine.flops_per_token() * engine_rate
    print(f"baseline: fastest transformers configuration ({best_name}) at {best_rate:,.0f} tokens/s")
    print(f"engine achieved {flops / 1e9:.1f} GFLOP/s (2 x non-embedding parameters x tokens / s)")
    if device == "cpu":
        rates = matmul_rates(ck.model.config, max_rows)
        print("this CPU's matmul rate at the engine's projection shapes (the best of them, this thread count): "
              + ", ".join(f"{name} {rate / 1e9:.1f} GFLOP/s" for name, rate in rates.items()))
        short = {"float32": "fp32", "bfloat16": "bf16"}[args.dtype]  # the engine's own dtype's rate
        print(f"engine share of the {short} matmul rate: {flops / rates[args.dtype]:.0%}")
    print(f"ratio: {engine_rate / best_rate:.1f}")


if __name__ == "__main__":
    main()
