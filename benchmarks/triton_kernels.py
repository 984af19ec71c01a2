"""What Triton makes of static decode's kernels for a GPU, on a machine without one: registers, spills, shared memory.

    PYTHONPATH=.triton-site python benchmarks/triton_kernels.py [--checkpoint arithmetic] [--arch 90]
        [--dtype bfloat16|float32] [--blocks 16,32,64] [--warps 4,8] [--chunks 6]

`make test-triton` installs Triton into .triton-site/. This script compiles the attention kernel
(tiny/attention_kernel.py) and the step's kernels (tiny/step_kernel.py: the first, one between two layers,
the last with and without sampling) for the checkpoint's shapes and the GPU architecture `--arch` (90: an
H100 or H200), with the ptxas that Triton's wheel ships. No GPU is needed and none is used. For each kernel
it prints the registers a thread uses, the bytes it spills to local memory when registers run out (a
spill slows a kernel), the shared memory a program takes (over the device's limit, a launch fails), and how
long the compilation took, with the options the engine launches them with (`step_kernel.launch_options`). A probe for
choosing blocks and warps before a GPU lease, not a benchmark: only a GPU can say which runs faster.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile
import time


def ptxas_report(ptx: str, arch: int) -> dict[str, int]:
    """Registers, spilled bytes and shared memory as ptxas reports them for `ptx`."""
    import triton

    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "kernel.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        result = subprocess.run([ptxas, f"-arch=sm_{arch}a", "-v", path, "-o", os.devnull], capture_output=True,
                                text=True, check=True)
    number = lambda pattern: int(re.search(pattern, result.stderr).group(1))  # noqa: E731
    return {"registers": number(r"Used (\d+) registers"), "spilled": number(r"(\d+) bytes spill stores")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default="arithmetic")
    parser.add_argument("--arch", type=int, default=90, help="the GPU's compute capability x 10 (default 90)")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    parser.add_argument("--blocks", default="16,32,64", help="the step's rows a program, comma-separated")
    parser.add_argument("--warps", default="4,8", help="warps a program, comma-separated")
    parser.add_argument("--chunks", type=int, default=6, help="cache chunks the attention kernel reads (default 6)")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("this compiles for a GPU: unset TRITON_INTERPRET")

    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from thinkscale.tiny import attention_kernel, checkpoint, step_kernel
    from thinkscale.tiny.engine import CHUNK

    config = checkpoint.load(args.checkpoint).model.config
    target = GPUTarget("cuda", args.arch, 32)
    dt = {"bfloat16": "bf16", "float32": "fp32"}[args.dtype]
    dtype = getattr(torch, args.dtype)
    print(f"{args.checkpoint}: hidden {config.hidden_size}, {config.num_attention_heads} heads of "
          f"{config.head_dim}, MLP {config.intermediate_size}, vocabulary {config.vocab_size}; {args.dtype}; "
          f"sm_{args.arch}; Triton {triton.__version__}")

    def compiled(name: str, fn, signature: dict[str, str], constants: dict, warps: int, **options) -> None:
        started = time.perf_counter()
        kernel = triton.compile(ASTSource(fn=fn, signature={**signature, **dict.fromkeys(constants, "constexpr")},
                                          constexprs=constants), target=target,
                                options={"num_warps": warps, **options})
        seconds = time.perf_counter() - started
        report = ptxas_report(kernel.asm["ptx"], args.arch)
        print(f"{name}, {warps} warps: {report['registers']} registers, {report['spilled']:,} bytes spilled, "
              f"{kernel.metadata.shared:,} bytes shared memory (compiled in {seconds:.1f} s)")

    for warps in (1, 2, 4):
        compiled(f"attention kernel, {args.chunks} chunks", attention_kernel._attend_rows,
                 {"q": f"*{dt}", "keys": f"*{dt}", "values": f"*{dt}", "pos": "*i64", "out": f"*{dt}",
                  "chunk_stride": "i32", "row_stride": "i32"},
                 {"CHUNKS": args.chunks, "H": config.num_attention_heads, "D": config.head_dim, "K": CHUNK,
                  "ROUND": False}, warps)
    signature = {name: f"*{dt}" for name in ("y_buf", "q_buf", "w_o", "w_gu", "w_down", "w_qkv", "keys", "values")}
    signature.update({name: "*fp32" for name in ("x_buf", "logits", "embed", "norm2", "norm1", "cos", "sin",
                                                  "norm_f", "w_head", "s_temp")})
    signature.update({name: "*i64" for name in ("tok", "pos", "s_pos", "s_ngen", "s_max", "s_key", "s_out")})
    signature.update({"s_live": "*i1", "s_stop": "*i1", "s_lp": "*fp64", "rows": "i32", "chunk_stride": "i64",
                      "row_stride": "i64", "eps": "fp32", "scale": "fp32", "out_stride": "i32"})
    shapes = step_kernel.shapes(config, CHUNK)
    for block in map(int, args.blocks.split(",")):
        for warps in map(int, args.warps.split(",")):
            for name, first, last, sample in (("first", True, False, False), ("between two layers", False, False,
                                              False), ("last, sampling", False, True, True),
                                              ("last, logits only", False, True, False)):
                compiled(f"step kernel ({name}), {block} rows", step_kernel._between, signature,
                         {**shapes, "FIRST": first, "LAST": last, "SAMPLE": sample, "BLOCK": block,
                          "INTERP": False, "IEEE": dt == "fp32"}, warps, **step_kernel.launch_options(dtype))


if __name__ == "__main__":
    main()
