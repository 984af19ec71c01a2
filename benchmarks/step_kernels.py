"""Kernels in one static-decode step of the tiny engine, by chunks read: what a GPU launches per step.

    python benchmarks/step_kernels.py [--checkpoint arithmetic] [--rows 64] [--top-p]

Every op the step dispatches is counted (a TorchDispatchMode), and views
(slices, reshapes: no kernel) apart, twice per line: with the attention chunk
by chunk (`one_pass_attention` off, a CPU's) and in one softmax (on, a GPU's
default). On an H200, in CUDA graphs, tiny kernels of 1-5 us were about half
of a call's device time and the attention's matmuls most of the rest
(docs/tiny-core.md), so fewer kernels is a faster step there. Runs on the
CPU: the ops are the same on any device.
"""

from __future__ import annotations

import argparse
import collections


VIEWS = {"view", "_unsafe_view", "slice", "select", "unsqueeze", "squeeze", "expand", "unbind", "t", "alias",
         "transpose", "reshape", "as_strided", "split", "detach"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default="arithmetic")
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--top-p", action="store_true", help="a step where some row samples with top-p < 1")
    args = parser.parse_args(argv)

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from thinkscale.tiny import checkpoint
    from thinkscale.tiny.engine import CHUNK, Engine

    class Count(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops: collections.Counter = collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops[func.overloadpacket.__name__] += 1
            return func(*args, **(kwargs or {}))

    ck = checkpoint.load(args.checkpoint)
    engine = Engine(ck.model, max_rows=args.rows, static_decode=True, cpu_kernel=False)  # the torch path: a GPU's
    most = ck.model.config.max_position_embeddings // CHUNK
    engine._cache_for(most, args.rows)
    engine._state_for(args.rows)
    print(f"{args.checkpoint}: one static step of {args.rows} rows{', top-p' if args.top_p else ''}")
    for chunks in range(1, most + 1):
        counts = []
        for one_pass in (False, True):  # the online softmax chunk by chunk (a CPU's), one softmax (a GPU's)
            engine.one_pass_attention = one_pass
            with torch.inference_mode(), Count() as count:
                engine._static_body(args.rows, chunks, args.top_p)
            kernels = sum(n for name, n in count.ops.items() if name not in VIEWS)
            counts.append(f"{kernels} kernels, {sum(count.ops.values()) - kernels} views")
        print(f"{chunks} chunk(s) read ({chunks * CHUNK} positions): chunk by chunk {counts[0]}; "
              f"one softmax {counts[1]}")


if __name__ == "__main__":
    main()
