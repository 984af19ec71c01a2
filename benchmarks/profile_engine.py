"""Where one sampling call of the tiny engine spends its time: its steps by shape, and its kernels by device time.

    python benchmarks/profile_engine.py [--device cuda] [--dtype bfloat16] [--prompts 64] [--samples 64]
        [--max-new-tokens 160] [--sync-every N] [--overlap auto|on|off] [--one-pass-attention auto|on|off]
        [--width-steps N] [--eager] [--top 15]
        [--problem-seed 0] [--cpu-kernel | --no-cpu-kernel] [--static-decode auto|on|off] [--max-rows N]
        [--split test|train] [--triton-step [--triton-block N] [--triton-warps N]]

The work is benchmarks/sampling.py's (the same problems and engine settings:
on a GPU one row per sample, on a CPU 1,024 rows and the exact loop unless
told; on a CPU the C kernel where it builds, as the engine's default,
`--no-cpu-kernel` the torch path). One call warms up (on a GPU it captures
the graphs), then one call is timed as it is, then one runs under torch.profiler. The timed call says how
long static decode's steps' calls took and how long the host spent outside them, a round of `sync_every`
steps at a time: on a CPU the host's own work between steps (collecting, swapping out and admitting rows),
on a GPU that and its waits for the device. With the kernel its C calls
(`cpu_kernel.run`, `add_rms`, `silu_mul`, `prepare`) are listed as host ops
under their own names, each wrapped in a profiler range. Prints the call's wall time; the static
steps it ran, by rows and chunks read; the kernels the device ran, their
count and summed time and that sum's share of the wall time (low: the device
waited for the host); the kernels that took the most device time; and the
host's ops by their own CPU time (on a CPU, the only table).
`--eager` runs the static steps kernel by kernel instead of as CUDA graphs.
`--triton-step` runs them as Triton kernels, two a layer (tiny/step_kernel.py), each program between two
layers of `--triton-block` rows and `--triton-warps` warps (as benchmarks/sampling.py).
A probe to find what to make faster, not a benchmark: the profiler itself
slows the host, so time a change with benchmarks/sampling.py.
"""

from __future__ import annotations

import argparse
import collections
import os
import time
from typing import get_args

from thinkscale.tiny import DtypeName  # torch-free: threads are set before torch loads


def main(argv: list[str] | None = None) -> None:
    from sampling import add_triton_step_flags, triton_step_from_flags, triton_step_held  # (torch-free too)

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default="arithmetic")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--problem-seed", type=int, default=0, help="which test problems are the prompts (default 0)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--dtype", choices=get_args(DtypeName), default="bfloat16")
    parser.add_argument("--sync-every", type=int, default=None,
                        help="static decode's steps between looks for finished rows (default: the engine's)")
    parser.add_argument("--overlap", choices=("auto", "on", "off"), default="auto",
                        help="static decode queues a round before it reads the last (default auto: on a GPU)")
    parser.add_argument("--one-pass-attention", choices=("auto", "on", "off"), default="auto",
                        help="static decode's attention in one softmax (default auto: the engine's, on a GPU)")
    parser.add_argument("--width-steps", type=int, default=None,
                        help="static decode's widths between two powers of two above 256 rows (default: the "
                             "engine's WIDTH_STEPS; 1: powers of two, as before stop 43)")
    add_triton_step_flags(parser)
    parser.add_argument("--eager", action="store_true", help="static steps kernel by kernel, no CUDA graphs")
    parser.add_argument("--top", type=int, default=15, help="kernels (ops on a CPU) listed (default 15)")
    parser.add_argument("--cpu-kernel", action=argparse.BooleanOptionalAction, default=None,
                        help="the engine's C kernel (CPU only; tiny/cpu_kernel.py; the engine's default where it "
                             "builds); --no-cpu-kernel: the torch path")
    parser.add_argument("--static-decode", choices=("auto", "on", "off"), default="auto",
                        help="static decode (default auto: the engine's, on a GPU)")
    parser.add_argument("--max-rows", type=int, default=None,
                        help="the engine's rows (default: prompts x samples on a GPU, 1024 on a CPU, as "
                             "benchmarks/sampling.py)")
    parser.add_argument("--split", choices=("test", "train"), default="test", help="the problems' split (default test)")
    args = parser.parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)

    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    from thinkscale.tasks import get_task
    from thinkscale.tiny import checkpoint
    from thinkscale.tiny import engine as engine_module
    from thinkscale.tiny.engine import DTYPES, Engine, SampleRequest, SamplingParams

    torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.startswith("cuda")
    ck = checkpoint.load(args.checkpoint)
    task = get_task(ck.summary.get("task", args.checkpoint))
    prompts = [tuple(ck.tokenizer.encode(e.problem.prompt))
               for e in task.examples(args.split, args.prompts, seed=args.problem_seed)]
    requests = [SampleRequest(p, n=args.samples, params=SamplingParams(temperature=1.0, max_tokens=args.max_new_tokens,
                                                                       seed=i)) for i, p in enumerate(prompts)]
    if args.cpu_kernel and gpu:
        parser.error("--cpu-kernel runs on a CPU (--device cpu)")
    if args.cpu_kernel is not False and not gpu:
        from thinkscale.tiny import cpu_kernel

        if args.cpu_kernel and not cpu_kernel.available():
            parser.error(f"--cpu-kernel: the kernel is not available here ({cpu_kernel.why_unavailable()})")
        for name in ("run", "add_rms", "silu_mul", "prepare"):  # each C call a named range in the profile
            setattr(cpu_kernel, name, _ranged(f"cpu_kernel.{name}", getattr(cpu_kernel, name)))
    max_rows = args.max_rows or (args.prompts * args.samples if gpu else 1024)
    engine = Engine(ck.model.to(device), max_rows=max_rows, device=device, dtype=DTYPES[args.dtype],
                    static_decode={"auto": None, "on": True, "off": False}[args.static_decode],
                    cpu_kernel=args.cpu_kernel, **({"sync_every": args.sync_every} if args.sync_every else {}))
    kernel = engine._fused()  # asked for, or the engine's default on a CPU where it builds and the model fits
    if args.one_pass_attention != "auto":
        engine.one_pass_attention = args.one_pass_attention == "on"
    if args.overlap != "auto":
        engine.overlap = args.overlap == "on"
    if args.width_steps is not None:
        if args.width_steps < 1 or args.width_steps & (args.width_steps - 1) or args.width_steps > 8:
            parser.error(f"--width-steps: 1, 2, 4 or 8, got {args.width_steps}")
        engine_module.WIDTH_STEPS = args.width_steps
    engine.cuda_graphs = not args.eager
    step_kernel = triton_step_from_flags(parser, args, engine)
    steps: collections.Counter = collections.Counter()
    stepped, in_steps = engine._static_step, [0.0]

    def counted(width: int, chunks: int, nucleus: bool, count: int = 1, confident: bool = False) -> None:
        steps[width, chunks] += count  # static decode's (none exact)
        started = time.perf_counter()
        stepped(width, chunks, nucleus, count, confident)
        in_steps[0] += time.perf_counter() - started

    engine._static_step = counted
    engine.generate(requests)  # warm up: on a GPU the graphs are captured here
    triton_step_held(args, engine)

    def synced() -> None:
        if gpu:
            torch.cuda.synchronize(device)

    print(f"{ck.path.name}, {args.prompts} prompts x {args.samples} samples, {args.threads} thread(s), device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if gpu else "") + f", {args.dtype}, max_rows {max_rows}, "
          + ("C kernel, " if kernel else "")
          + (f"static decode, sync every {engine.sync_every}, "
             + ("" if kernel else f"Triton step ({step_kernel.BLOCK} rows, {step_kernel.NUM_WARPS} warps a program), "
                if engine.triton_step
                else "one-pass attention " + ("on, " if engine.one_pass_attention else "off, "))
             + ("CUDA graphs" if gpu and engine.cuda_graphs else "kernel by kernel")
             if engine.static_decode else "exact loop"))
    if engine.static_decode:
        steps.clear()
        in_steps[0] = 0.0
        started = time.perf_counter()
        engine.generate(requests)
        synced()
        wall = time.perf_counter() - started
        rounds = max(1, sum(steps.values()) // engine.sync_every)
        outside = wall - in_steps[0]
        print(f"one call, not profiled: {wall:.3f} s; the static steps' calls {in_steps[0]:.3f} s, outside them "
              f"{outside:.3f} s = {outside / rounds * 1e3:.2f} ms a round ({rounds} round{'s' * (rounds > 1)} of "
              f"{engine.sync_every} steps{', overlapped' if engine.overlap else ''})")
    steps.clear()

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])
    with profile(activities=activities) as prof:
        started = time.perf_counter()
        results = engine.generate(requests)
        synced()
        wall = time.perf_counter() - started
    tokens = sum(len(c.token_ids) for r in results for c in r)
    print(f"one call, profiled: {tokens} tokens in {wall:.3f} s ({tokens / wall:,.0f} tokens/s under the profiler)")
    widths: collections.Counter = collections.Counter()
    for (width, _), n in steps.items():
        widths[width] += n
    if steps:
        print(f"static steps: {sum(steps.values())}; by rows: "
              + ", ".join(f"{w} x {n}" for w, n in sorted(widths.items(), reverse=True))
              + f"; row-steps {sum(w * n for (w, _), n in steps.items()):,}, row-chunk-steps "
              + f"{sum(w * c * n for (w, c), n in steps.items()):,} (tokens drawn: {tokens:,})")
    if gpu:
        kernels = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
        busy = sum(e.device_time for e in kernels) / 1e6  # microseconds
        print(f"device kernels: {len(kernels):,}, {busy:.3f} s in all = {busy / wall:.0%} of the wall time; "
              f"{len(kernels) / max(1, sum(steps.values())):.0f} per static step")
        by_name: dict[str, list[float]] = collections.defaultdict(list)
        for e in kernels:
            by_name[e.name].append(e.device_time)
        ranked = sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:args.top]
        for name, times in ranked:
            print(f"  {sum(times) / 1e3:8.2f} ms {sum(times) / 1e4 / wall:5.1f}%  {len(times):7,} x "
                  f"{sum(times) / len(times):6.1f} us  {name[:110]}")
    print("host ops by their own CPU time (on a GPU, waits for it show as synchronisations and copies):")
    ops = sorted(prof.key_averages(), key=lambda a: -a.self_cpu_time_total)[:args.top]
    for op in ops:
        print(f"  {op.self_cpu_time_total / 1e3:8.2f} ms {op.self_cpu_time_total / 1e4 / wall:5.1f}%  "
              f"{op.count:7,} x  {op.key}")


def _ranged(name: str, call):
    """`call` inside a profiler range named `name`, so a C call (invisible to torch's profiler) gets its own row."""
    import functools

    from torch.profiler import record_function

    @functools.wraps(call)
    def ranged(*args, **kwargs):
        with record_function(name):
            return call(*args, **kwargs)
    return ranged


if __name__ == "__main__":
    main()
