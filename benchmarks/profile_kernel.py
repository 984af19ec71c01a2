"""How long the CPU kernel's attention takes a row, by where its keys and values come from: L2, L3, memory.

    python benchmarks/profile_kernel.py [--dtype bfloat16] [--rows 1024] [--lead 16] [--own 23] [--layers 8]
        [--threads 1] [--seconds 2]

One layer's call (`cpu_kernel.run`) of the shipped arithmetic model's shape
(4 heads of 32), decode as the engine runs it: each row reads its first
`--lead` positions from one shared prompt cache and about `--own` positions
(drawn between half and one and a half times that, fixed seed) from a cache
of its own, storing none. The same call timed three ways, per row:

- L2: 64 rows, called again and again (their caches stay in the core's L2);
- L3: `--rows` rows of one layer, called again and again (a few MB: L3 when
  it is ours, as far as a shared L3 allows);
- memory: `--rows` rows, each call a different layer of `--layers` (tens of
  MB between a layer's calls: what the engine meets, its four layers and
  matmuls between two calls of a layer).

Each figure is the best of five runs of `--seconds` / 5, less the call's cost
at 0 rows (Python and ctypes). A probe to see how much of the kernel's time
is arithmetic and how much waits for memory, not a benchmark: the engine's
own calls are in benchmarks/profile_engine.py --cpu-kernel.
"""

from __future__ import annotations

import argparse
import os
import time


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="bfloat16")
    parser.add_argument("--rows", type=int, default=1024, help="rows of the L3 and memory calls (default 1024)")
    parser.add_argument("--lead", type=int, default=16, help="positions read from the shared prompt (default 16)")
    parser.add_argument("--own", type=int, default=23, help="a row's own positions, on average (default 23)")
    parser.add_argument("--layers", type=int, default=8, help="layers the memory calls cycle through (default 8)")
    parser.add_argument("--threads", type=int, default=1, help="threads (default 1)")
    parser.add_argument("--seconds", type=float, default=2.0, help="time spent on each figure (default 2)")
    args = parser.parse_args(argv)
    if args.rows < 64 or args.lead < 0 or args.own < 1 or args.layers < 1 or args.threads < 1:
        parser.error("--rows at least 64, --lead at least 0, --own, --layers and --threads at least 1")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)

    import torch

    from thinkscale.tiny import cpu_kernel
    from thinkscale.tiny.cpu_kernel import CHUNK

    torch.set_num_threads(args.threads)
    if not cpu_kernel.available():
        parser.error(f"the kernel is not available here ({cpu_kernel.why_unavailable()})")
    heads, dim, dtype = 4, 32, getattr(torch, args.dtype)
    g = torch.Generator().manual_seed(0)
    own = torch.randint(max(1, args.own // 2), args.own * 3 // 2 + 1, (args.rows,), generator=g)
    pos = args.lead + own - 1  # the position each row feeds: its lead, then its own positions up to this one
    chunks = int(pos.max()) // CHUNK + 1
    if not cpu_kernel.fits(heads, dim, int(pos.max()) + 1):
        parser.error("--lead + --own too long for the kernel's bounds")
    cache = torch.randn(args.layers, 2, chunks, args.rows, heads, CHUNK * dim, generator=g).to(dtype)
    prompt = torch.randn(args.layers, 2, -(-max(1, args.lead) // CHUNK), heads, CHUNK * dim, generator=g).to(dtype)
    cos, sin = torch.randn(chunks * CHUNK, dim, generator=g), torch.randn(chunks * CHUNK, dim, generator=g)
    qkv = torch.randn(args.rows, 3, heads, dim, generator=g).to(dtype)
    table, prompt_table = cpu_kernel.where(cache, torch.arange(args.rows)), cpu_kernel.where(prompt)

    def rows_of(n: int) -> tuple:
        rows = cpu_kernel.prepare(pos[:n], table[:n], 0, own=True,
                                  lead=(prompt_table.expand(n, -1), torch.full((n,), args.lead)))
        return rows, qkv[:n].contiguous(), torch.empty(n, heads * dim, dtype=dtype)

    def per_call(n: int, layers: list[int]) -> float:
        rows, q, out = rows_of(n)
        best, budget = float("inf"), args.seconds / 5
        for _ in range(5):
            started, calls = time.perf_counter(), 0
            while time.perf_counter() - started < budget or calls < 10:
                cpu_kernel.run(q, cos, sin, rows, layers[calls % len(layers)], 0.17, out=out)
                calls += 1
            best = min(best, (time.perf_counter() - started) / calls)
        return best

    overhead = per_call(0, [0])
    figures = {
        "L2": (64, per_call(64, [0])),
        "L3": (args.rows, per_call(args.rows, [0])),
        "memory": (args.rows, per_call(args.rows, list(range(args.layers)))),
    }
    line_bytes = heads * dim * qkv.element_size() * 2  # a position's keys and values, all heads
    print(f"cpu_kernel.run, {args.dtype}, {heads} heads of {dim}, {args.threads} thread(s); each row reads "
          f"{args.lead} prompt positions (shared) and {float(own.float().mean()):.1f} of its own on average "
          f"({float(own.float().mean()) * line_bytes / 1024:.1f} KB a row); a call's cost at 0 rows "
          f"{overhead * 1e6:.1f} us, taken off below")
    for name, (n, seconds) in figures.items():
        print(f"  {name:6s} {n:5d} rows: {(seconds - overhead) / n * 1e6:.3f} us a row")
    l2, memory = (figures[k][1] - overhead for k in ("L2", "memory"))
    print(f"from memory, a row takes {memory / figures['memory'][0] / (l2 / 64):.2f}x what it takes in L2")


if __name__ == "__main__":
    main()
