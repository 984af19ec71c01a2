"""Static decode's attention as one Triton kernel per layer (`Engine.triton_attention`, off by default).

One program per row and head: it walks the row's cached chunks up to its
position, each chunk's keys (D, CHUNK) and values (CHUNK, D) one contiguous
block of the engine's cache, with the online softmax in float32 registers.
That is one kernel a layer where `_attend_all` takes 2 x chunks + 7, and
every key is read once, at whatever rate the device gives plain loads: on an
H200 cuBLAS's batched matmuls for these shapes reached an eighth of the
card's bandwidth (docs/tiny-core.md). A chunk past a row's own position is
not read at all (its loads are masked), where the matmuls read every chunk
that any row reaches.

The same attention as `_attend` and `_attend_all`, rounded otherwise (float32
throughout, so in bfloat16 closer to the exact one). Needs Triton, which a
CUDA build of torch brings; with `TRITON_INTERPRET=1` it runs on the CPU
(slowly), which is how the tests check it where there is no GPU (`make
test-triton`). Not yet measured on a GPU: `benchmarks/gpu_check.sh` times it.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl


def interpreted() -> bool:
    """Whether Triton runs in its interpreter (on a CPU, in the tests), not compiled for a GPU."""
    return os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def narrow(x, dtype: tl.constexpr, ROUND: tl.constexpr):
    """x (float32) in `dtype`, rounded to nearest even. Triton 3.6's interpreter truncates float32 to bfloat16
    (whatever `fp_downcast_rounding` says), so there (ROUND) the rounding is done on the bits first; a GPU's
    conversion rounds to nearest even itself."""
    if ROUND and dtype == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        x = bits.to(tl.float32, bitcast=True)
    return x.to(dtype)


@triton.jit
def _attend_rows(q, keys, values, pos, out, chunk_stride, row_stride,
                 CHUNKS: tl.constexpr, H: tl.constexpr, D: tl.constexpr, K: tl.constexpr, ROUND: tl.constexpr):
    program = tl.program_id(0)  # row * H + head
    row, head = program // H, program % H
    d, k = tl.arange(0, D), tl.arange(0, K)
    query = tl.load(q + program * D + d).to(tl.float32)  # (D,), already scaled
    last = tl.load(pos + row)
    m = tl.full((), float("-inf"), tl.float32)
    total = tl.zeros((), tl.float32)
    acc = tl.zeros((D,), tl.float32)
    for chunk in range(0, CHUNKS):  # a constant: one compilation per chunk count, as a CUDA graph per shape
        reached = chunk * K <= last  # a chunk past the row's position: its loads read nothing, its update is a no-op
        block = chunk * chunk_stride + row * row_stride + head * D * K
        key = tl.load(keys + block + d[:, None] * K + k[None, :], mask=reached, other=0.0).to(tl.float32)  # (D, K)
        scores = tl.sum(query[:, None] * key, axis=0)  # (K,)
        scores = tl.where(chunk * K + k <= last, scores, float("-inf"))
        m_new = tl.maximum(m, tl.max(scores, axis=0))  # finite: chunk 0 holds position 0
        alpha = tl.exp(m - m_new)
        p = tl.exp(scores - m_new)
        value = tl.load(values + block + k[:, None] * D + d[None, :], mask=reached, other=0.0).to(tl.float32)
        total = total * alpha + tl.sum(p, axis=0)
        acc = acc * alpha + tl.sum(p[:, None] * value, axis=0)
        m = m_new
    tl.store(out + program * D + d, narrow(acc / total, out.dtype.element_ty, ROUND))


def attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, pos: torch.Tensor, chunks: int
           ) -> torch.Tensor:
    """Each row's attention over its positions 0..pos[row] among chunks 0..chunks-1: `_attend`'s.

    q (A, H, 1, D), already scaled; keys (chunks, rows, H, D, CHUNK) and
    values (chunks, rows, H, CHUNK, D), one layer's whole cache as the engine
    keeps it (`Engine._keys`, `Engine._values`; rows 0..A-1 are read); pos (A,).
    Returns (A, H, 1, D) in q's dtype.
    """
    q = q.contiguous()
    rows, heads, _, size = q.shape
    chunk = keys.shape[-1]
    block = (heads * size * chunk, size * chunk)  # a row's chunk, a head's: contiguous, keys as (D, K), values (K, D)
    if (keys.stride()[1:] != (*block, chunk, 1) or values.stride()[1:] != (*block, size, 1)
            or values.stride(0) != keys.stride(0) or keys.shape[2:4] != (heads, size)):
        raise ValueError("keys and values must be the engine's chunk-major cache: each row's chunk contiguous")
    if not (chunks <= keys.shape[0] and rows <= keys.shape[1] and pos.shape == (rows,)):
        raise ValueError(f"{rows} rows over {chunks} chunks do not fit a cache of {keys.shape[1]} rows and "
                         f"{keys.shape[0]} chunks, or pos is not one position a row")
    if size & (size - 1) or chunk & (chunk - 1):
        raise ValueError(f"head size {size} and chunk {chunk} must be powers of two (Triton's blocks)")
    if keys.shape[0] * keys.stride(0) >= 2**31:  # the kernel's offsets are 32-bit
        raise ValueError("a layer's cache of 2**31 elements or more is past this kernel's 32-bit offsets")
    out = torch.empty_like(q)
    _attend_rows[(rows * heads,)](q, keys, values, pos.contiguous(), out, keys.stride(0), keys.stride(1),
                                  CHUNKS=chunks, H=heads, D=size, K=chunk, ROUND=interpreted())
    return out
