"""Device time of static decode's attention products: one query per row and head against a chunk of 32 keys.

    python benchmarks/attention_products.py [--device cuda] [--rows 4096,2048,512,64]

The two products of `Engine._attend_all` per chunk, at a decode step's
shapes (4 heads, head size 32, a chunk of 32 positions, rows taken from a
4,096-row cache as the engine takes them), each timed as a batched matmul
(what the engine runs) and as a multiply-and-sum, in bfloat16 and float32.
On a GPU each is captured 50 times in a CUDA graph and replayed, so the
times are the device's, not the launches'; on a CPU, plain wall time. Also
prints how far multiply-and-sum is from the matmul (largest difference over
the largest value). A probe for whoever writes a faster attention: at 4,096
rows an H200 took 53 us in bfloat16 for 33.5 MB of keys (docs/tiny-core.md).
"""

from __future__ import annotations

import argparse
import time


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--rows", default="4096,2048,512,64", help="row counts, comma-separated")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    dev = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    heads, size, chunk, cache_rows = 4, 32, 32, 4096

    def device_us(fn, reps: int = 50) -> float:
        fn()
        if not dev.startswith("cuda"):
            started = time.perf_counter()
            for _ in range(5):
                fn()
            return (time.perf_counter() - started) / 5 * 1e6
        side = torch.cuda.Stream()  # warm-up off the current stream, as a capture asks
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(reps):
                fn()
        graph.replay()
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        for _ in range(5):
            graph.replay()
        stop.record()
        torch.cuda.synchronize()
        return start.elapsed_time(stop) * 1e3 / (5 * reps)

    print(f"device {dev}" + (f" ({torch.cuda.get_device_name(dev)})" if dev.startswith("cuda") else ""))
    for dtype in (torch.bfloat16, torch.float32):
        for rows in map(int, args.rows.split(",")):
            keys = torch.randn(cache_rows, heads, size, chunk, device=dev, dtype=dtype)[:rows]  # (rows, H, D, CHUNK)
            values = torch.randn(cache_rows, heads, chunk, size, device=dev, dtype=dtype)[:rows]  # (rows, H, CHUNK, D)
            q = torch.randn(rows, heads, 1, size, device=dev, dtype=dtype)
            p = torch.rand(rows, heads, 1, chunk, device=dev, dtype=dtype)
            acc = torch.zeros(rows * heads, 1, size, device=dev, dtype=dtype)
            products = {
                "scores matmul": lambda: torch.matmul(q, keys),
                "scores multiply-and-sum": lambda: (q.view(rows, heads, size, 1) * keys).sum(-2, keepdim=True),
                "values matmul": lambda: torch.matmul(p, values),
                "values baddbmm_": lambda: acc.baddbmm_(p.view(-1, 1, chunk), values.reshape(-1, chunk, size)),
                "values multiply-and-sum": lambda: (p.view(rows, heads, chunk, 1) * values).sum(-2, keepdim=True),
            }
            times = {name: device_us(fn) for name, fn in products.items()}
            gaps = []
            for matmul, summed in (("scores matmul", "scores multiply-and-sum"),
                                   ("values matmul", "values multiply-and-sum")):
                a, b = products[matmul]().float(), products[summed]().float()
                gaps.append(float((a - b).abs().max() / a.abs().max()))
            print(f"{str(dtype).removeprefix('torch.')}, {rows} rows: "
                  + ", ".join(f"{name} {us:.1f} us" for name, us in times.items())
                  + f"; multiply-and-sum against matmul: scores {gaps[0]:.1e}, values {gaps[1]:.1e}")


if __name__ == "__main__":
    main()
