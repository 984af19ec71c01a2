"""Static decode's whole step as Triton kernels (`Engine.triton_step`, off by default): two kernels a layer.

A static step of the torch path is about 280 kernels on a GPU (stop 36's
H200 profile: norms, rotary embedding, the projections, attention, the
residual), each a few microseconds. This one is `layers` attention kernels
(attention_kernel.py) and `layers + 1` kernels for everything between them:

- the first: each row's token embedded, layer 0's norm, its q, k and v,
  the rotary embedding, k and v stored in the cache, q kept for attention;
- between layer i's attention and layer i+1's: the attention's output
  projection and the residual, the norm, the MLP and the residual, then
  layer i+1's norm, q, k and v as above;
- the last: layer L-1's output projection and MLP, the final norm and the
  output head, writing the logits; and, given static decode's state, no
  row with top-p and none tracking confidence, drawing each row's token as
  `choose_tokens` does and
  moving its state on (`_sample`), so sampling takes no kernel of its own.

One program takes `BLOCK` rows through all of that: a row's step depends
on its own cache alone, so the rows never wait for each other. The residual
stream and the norms are float32, the matmuls take their inputs in the
engine's dtype and add in float32 (`tl.dot`), the keys and values are
stored in the engine's dtype, the output head is float32: the torch path's
precision, rounded otherwise (the torch path rounds each projection's output
to the dtype, this keeps it in float32 until it is stored). The rotary
embedding is taken on each head's two halves, each its own product, so no
column is moved in registers.

Needs Triton (a CUDA build of torch brings it); with `TRITON_INTERPRET=1`
it runs on a CPU, slowly, which is how the tests check it without a GPU
(`make test-triton`). Triton 3.6's interpreter multiplies bfloat16 wrongly
(in a probe, a 16 x 32 product came out orders of magnitude off), so there
(INTERP) the products take their bfloat16 inputs as float32, which is exact (a bfloat16
is a float32 with a shorter fraction, and the sums are float32 either way),
and values are rounded to bfloat16 on their bits (`attention_kernel.narrow`:
the interpreter truncates). `benchmarks/triton_kernels.py` compiles the
kernels for a GPU without one. Not yet measured on a GPU:
`benchmarks/gpu_check.sh` times it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.errors import TritonError

from thinkscale.tiny import attention_kernel
from thinkscale.tiny.attention_kernel import narrow

MAX_VOCAB = 256  # the last kernel keeps the whole head and each row's noise over the vocabulary in registers
BLOCK = 16  # rows a program: tl.dot's smallest (gpu_check.sh chooses 16 to 64, and the warps, on training problems)
NUM_WARPS = 4


def configure(block: int | None = None, warps: int | None = None) -> None:
    """Set the rows (`BLOCK`) and warps (`NUM_WARPS`) of a program between two layers, for every engine from its
    next step (they are part of a step's CUDA graph's key); None keeps a setting."""
    if block is not None and (block < 16 or block & (block - 1)):
        raise ValueError(f"rows a program must be a power of two of at least 16 (tl.dot's smallest), got {block}")
    if warps is not None and warps not in (1, 2, 4, 8, 16):
        raise ValueError(f"warps a program must be 1, 2, 4, 8 or 16, got {warps}")
    global BLOCK, NUM_WARPS
    BLOCK, NUM_WARPS = block or BLOCK, warps or NUM_WARPS


@triton.jit
def _dot(a, b, INTERP: tl.constexpr, IEEE: tl.constexpr):
    """a @ b added in float32: in float32 (IEEE, not TF32) where the inputs are, bfloat16 products on a GPU,
    float32 ones in the interpreter (INTERP)."""
    if INTERP:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    elif IEEE:
        return tl.dot(a, b, input_precision="ieee")
    else:
        return tl.dot(a, b)


@triton.jit
def _rms(x, weight, cols, eps, HIDDEN: tl.constexpr):
    """RMS norm of x (BLOCK, HIDDEN) float32 by weight[cols], in float32."""
    inv = 1.0 / tl.sqrt(tl.sum(x * x, axis=1) / HIDDEN + eps)
    return x * inv[:, None] * tl.load(weight + cols).to(tl.float32)[None, :]


@triton.jit
def _fmix32(h):
    """murmur3's finaliser on uint32 (`engine._fmix32`'s, which works in int64 masked to 32 bits)."""
    h = h ^ (h >> 16)
    h = h * 0x85EBCA6B
    h = h ^ (h >> 13)
    h = h * 0xC2B2AE35
    return h ^ (h >> 16)


@triton.jit
def _sample(logits, r, v, mine, tok, s_pos, s_live, s_ngen, s_max, s_temp, s_key, s_lp, s_stop, s_out, out_stride,
            V: tl.constexpr):
    """`choose_tokens` without top-p, then the state's update of `Engine._static_take`, for rows r: logits
    (BLOCK, VP) float32, columns v (VP,), past V padding. The same Gumbel noise to the bit (a hash of the row's
    key, its step and the token, made a float in float64 as `gumbel_noise` does), so the same token wherever
    the logits are the same."""
    logits = tl.where(v[None, :] < V, logits, float("-inf"))
    top = tl.max(logits, axis=1)
    logprobs = logits - top[:, None] - tl.log(tl.sum(tl.exp(logits - top[:, None]), axis=1))[:, None]
    temp = tl.load(s_temp + r, mask=mine, other=1.0)
    greedy = temp <= 0
    scaled = tl.div_rn(logits, tl.where(greedy, 1.0, temp)[:, None])  # rounded as torch divides (not approximate)
    ngen = tl.load(s_ngen + r, mask=mine, other=0)
    h = _fmix32((tl.load(s_key + r, mask=mine, other=0) ^ (ngen & 0xFFFFFFFF)).to(tl.uint32))
    h = _fmix32(h[:, None] ^ (v.to(tl.uint32) * 0x27D4EB2F)[None, :])
    u = (h.to(tl.float64) + 0.5) / 4294967296.0
    noisy = scaled + (-tl.log(-tl.log(u))).to(tl.float32)
    chosen = tl.where(greedy, tl.argmax(logits, axis=1), tl.argmax(noisy, axis=1))
    picked = v[None, :] == chosen[:, None]
    lp = tl.sum(tl.where(picked, logprobs, 0.0), axis=1)
    live = tl.load(s_live + r, mask=mine, other=0)
    tl.store(s_pos + r, tl.load(s_pos + r, mask=mine, other=0) + live, mask=mine)
    tl.store(s_out + r.to(tl.int64) * out_stride + ngen, chosen.to(tl.int64), mask=mine)
    tl.store(tok + r, chosen.to(tl.int64), mask=mine)
    tl.store(s_lp + r, tl.load(s_lp + r, mask=mine, other=0.0) + tl.where(live, lp.to(tl.float64), 0.0), mask=mine)
    ngen += live
    tl.store(s_ngen + r, ngen, mask=mine)
    stop = tl.sum(tl.where(picked, tl.load(s_stop + r[:, None] * V + v[None, :], mask=mine[:, None] & (v[None, :] < V),
                                           other=0).to(tl.int32), 0), axis=1) != 0
    ended = stop | (ngen >= tl.load(s_max + r, mask=mine, other=0))
    tl.store(s_live + r, live & ~ended, mask=mine)


@triton.jit
def _between(tok, x_buf, y_buf, q_buf, logits, pos, rows,
             embed, w_o, norm2, w_gu, w_down, norm1, w_qkv, cos, sin, keys, values, norm_f, w_head,
             chunk_stride, row_stride, eps, scale,
             s_pos, s_live, s_ngen, s_max, s_temp, s_key, s_lp, s_stop, s_out, out_stride,
             FIRST: tl.constexpr, LAST: tl.constexpr, SAMPLE: tl.constexpr, H: tl.constexpr, D: tl.constexpr,
             HIDDEN: tl.constexpr, INTER: tl.constexpr, IC: tl.constexpr, KC: tl.constexpr, V: tl.constexpr,
             VP: tl.constexpr, CHUNK: tl.constexpr, BLOCK: tl.constexpr, INTERP: tl.constexpr, IEEE: tl.constexpr):
    """Rows BLOCK x program_id .. of one layer boundary (the module's docstring): FIRST embeds the tokens, else
    the previous layer's attention output `y_buf` goes through its output projection and MLP onto the residual
    `x_buf`; LAST then writes the logits (and with SAMPLE draws the tokens), else the next layer's q goes to
    `q_buf` and its k and v into `keys` and `values` at each row's position `pos`."""
    r = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mine = r < rows
    c = tl.arange(0, HIDDEN)
    if FIRST:  # the rows' tokens embedded (float32)
        token = tl.load(tok + r, mask=mine, other=0)
        x = tl.load(embed + token[:, None] * HIDDEN + c[None, :]).to(tl.float32)
    else:  # the previous layer's attention output through o_proj, then its MLP, each added to the residual
        x = tl.load(x_buf + r[:, None] * HIDDEN + c[None, :], mask=mine[:, None], other=0.0)
        k = tl.arange(0, KC)
        for k0 in range(0, HIDDEN, KC):
            y = tl.load(y_buf + r[:, None] * HIDDEN + k0 + k[None, :], mask=mine[:, None], other=0.0)
            x += _dot(y, tl.load(w_o + (k0 + k)[:, None] * HIDDEN + c[None, :]), INTERP, IEEE)
        normed = narrow(_rms(x, norm2, c, eps, HIDDEN), w_gu.dtype.element_ty, INTERP)
        down = tl.zeros((BLOCK, HIDDEN), tl.float32)
        j = tl.arange(0, IC)
        for j0 in range(0, INTER, IC):  # the MLP's width a slice at a time: gate, up, down
            gate = _dot(normed, tl.load(w_gu + c[:, None] * (2 * INTER) + j0 + j[None, :]), INTERP, IEEE)
            up = _dot(normed, tl.load(w_gu + c[:, None] * (2 * INTER) + INTER + j0 + j[None, :]), INTERP, IEEE)
            act = narrow(gate * tl.sigmoid(gate) * up, w_down.dtype.element_ty, INTERP)
            down += _dot(act, tl.load(w_down + (j0 + j)[:, None] * HIDDEN + c[None, :]), INTERP, IEEE)
        x += down
    if LAST:  # the final norm and the output head, in float32
        v = tl.arange(0, VP)
        head = tl.load(w_head + c[:, None] * V + v[None, :], mask=v[None, :] < V, other=0.0).to(tl.float32)
        out = tl.dot(_rms(x, norm_f, c, eps, HIDDEN), head, input_precision="ieee")
        tl.store(logits + r[:, None] * V + v[None, :], out, mask=mine[:, None] & (v[None, :] < V))
        if SAMPLE:
            _sample(out, r, v, mine, tok, s_pos, s_live, s_ngen, s_max, s_temp, s_key, s_lp, s_stop, s_out,
                    out_stride, V)
    else:  # the next layer's norm, q, k and v with the rotary embedding; k and v into the cache, q kept
        tl.store(x_buf + r[:, None] * HIDDEN + c[None, :], x, mask=mine[:, None])
        normed = narrow(_rms(x, norm1, c, eps, HIDDEN), w_qkv.dtype.element_ty, INTERP)
        p = tl.load(pos + r, mask=mine, other=0)
        half = tl.arange(0, D // 2)
        cos_ = tl.load(cos + p[:, None] * D + half[None, :])  # a table's two halves are the same
        sin_ = tl.load(sin + p[:, None] * D + half[None, :])
        block = (p // CHUNK).to(tl.int64) * chunk_stride + r.to(tl.int64) * row_stride
        offset = (p % CHUNK)[:, None]
        width = 3 * HIDDEN
        for head_ in range(H):
            col = head_ * D
            q_lo = _dot(normed, tl.load(w_qkv + c[:, None] * width + col + half[None, :]), INTERP, IEEE)
            q_hi = _dot(normed, tl.load(w_qkv + c[:, None] * width + col + D // 2 + half[None, :]), INTERP, IEEE)
            q_base = q_buf + r[:, None] * HIDDEN + col + half[None, :]
            tl.store(q_base, narrow((q_lo * cos_ - q_hi * sin_) * scale, q_buf.dtype.element_ty, INTERP),
                     mask=mine[:, None])
            tl.store(q_base + D // 2, narrow((q_hi * cos_ + q_lo * sin_) * scale, q_buf.dtype.element_ty, INTERP),
                     mask=mine[:, None])
            col = HIDDEN + head_ * D
            k_lo = _dot(normed, tl.load(w_qkv + c[:, None] * width + col + half[None, :]), INTERP, IEEE)
            k_hi = _dot(normed, tl.load(w_qkv + c[:, None] * width + col + D // 2 + half[None, :]), INTERP, IEEE)
            k_base = keys + block[:, None] + head_ * D * CHUNK + half[None, :] * CHUNK + offset  # keys (D, CHUNK)
            tl.store(k_base, narrow(k_lo * cos_ - k_hi * sin_, keys.dtype.element_ty, INTERP), mask=mine[:, None])
            tl.store(k_base + (D // 2) * CHUNK, narrow(k_hi * cos_ + k_lo * sin_, keys.dtype.element_ty, INTERP),
                     mask=mine[:, None])
            col = 2 * HIDDEN + head_ * D
            v_lo = _dot(normed, tl.load(w_qkv + c[:, None] * width + col + half[None, :]), INTERP, IEEE)
            v_hi = _dot(normed, tl.load(w_qkv + c[:, None] * width + col + D // 2 + half[None, :]), INTERP, IEEE)
            v_base = values + block[:, None] + head_ * CHUNK * D + offset * D + half[None, :]  # values (CHUNK, D)
            tl.store(v_base, narrow(v_lo, values.dtype.element_ty, INTERP), mask=mine[:, None])
            tl.store(v_base + D // 2, narrow(v_hi, values.dtype.element_ty, INTERP), mask=mine[:, None])


def _power_of_two(n: int) -> bool:
    return n > 0 and not n & (n - 1)


def _slice(n: int, most: int) -> int:
    """The largest power of two up to `most` that divides n."""
    return min(n & -n, most)


class Unfit(ValueError):
    """A model the kernels cannot hold (`why_unfit`)."""


FAILURES = (Unfit, TritonError)  # what `decode` raises where the kernels cannot run: compiling, resources, shapes


def why_unfit(config, chunk: int) -> str | None:
    """Why a model of this config cannot run on these kernels (Triton's blocks are powers of two), or None."""
    if not _power_of_two(config.hidden_size) or config.hidden_size < 16:
        return f"hidden size {config.hidden_size} is not a power of two of at least 16"
    if not _power_of_two(config.head_dim) or config.head_dim < 32:
        return f"head size {config.head_dim} is not a power of two of at least 32"
    if _slice(config.intermediate_size, 64) < 16:
        return f"intermediate size {config.intermediate_size} is not a multiple of 16"
    if config.vocab_size > MAX_VOCAB:
        return f"vocabulary {config.vocab_size} is over {MAX_VOCAB} (the last kernel holds it in registers)"
    if not _power_of_two(chunk):
        return f"the cache's chunk {chunk} is not a power of two"
    return None


def launch_options(dtype: torch.dtype) -> dict[str, int]:
    """Triton's options for `_between` beyond its warps. In float32 its loops are not pipelined (num_stages 1):
    float32 products in IEEE precision keep their operands in shared memory, and pipelined, `arithmetic-4x`'s
    step would need 412 KB a program, over any GPU's limit (86 KB unpipelined; benchmarks/triton_kernels.py).
    bfloat16's compiled the same either way."""
    return {"num_stages": 1} if dtype == torch.float32 else {}


def shapes(config, chunk: int) -> dict[str, int]:
    """The model's sizes as `_between` takes them (compile-time constants)."""
    return {"H": config.num_attention_heads, "D": config.head_dim, "HIDDEN": config.hidden_size,
            "INTER": config.intermediate_size, "IC": _slice(config.intermediate_size, 64),
            "KC": min(config.hidden_size, 64), "V": config.vocab_size,
            "VP": max(16, triton.next_power_of_2(config.vocab_size)), "CHUNK": chunk}


def decode(engine, cache: torch.Tensor, tokens: torch.Tensor, pos: torch.Tensor, chunks: int,
           state: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """`Engine._decode` for static decode on these kernels: feed `tokens` (A,) at positions `pos` (A,) for rows
    0..A-1 of `cache` (the engine's, (layers, 2, chunks, rows, H, CHUNK * D)), reading chunks 0..chunks-1;
    returns the logits (A, vocab), float32. Reads the engine's weights as `reload_weights` keeps them.

    With `state` (static decode's, `Engine._state_for`; `tokens` its "tok"), the last kernel also draws each
    row's next token as `choose_tokens` does without top-p, and updates the state's first A rows as
    `Engine._static_body` does: no kernel more for sampling."""
    interpreted = attention_kernel.interpreted()
    if tokens.device.type != "cuda" and not interpreted:
        raise Unfit(f"Triton's kernels run on a CUDA device (or in its interpreter, TRITON_INTERPRET=1), not on "
                    f"{tokens.device.type}")
    c = engine.config
    chunk = cache.shape[-1] // c.head_dim
    reason = why_unfit(c, chunk)
    if reason:
        raise Unfit(f"static decode's Triton step cannot run this model: {reason}")
    rows, h, heads, size, dtype = tokens.shape[0], c.hidden_size, c.num_attention_heads, c.head_dim, engine.dtype
    if cache[0, 0].numel() >= 2**31:  # the attention kernel's offsets are 32-bit
        raise Unfit("a layer's cache of 2**31 elements or more is past the Triton kernels' 32-bit offsets")
    x = torch.empty(rows, h, device=tokens.device, dtype=torch.float32)
    q = torch.empty(rows, heads, 1, size, device=tokens.device, dtype=dtype)
    logits = torch.empty(rows, c.vocab_size, device=tokens.device, dtype=torch.float32)
    y = q

    def rows_of(name: str) -> torch.Tensor:  # the state's first rows; without a state, a tensor never read
        return tokens if state is None else state[name][:rows]

    out = rows_of("out")
    sizes = shapes(c, chunk)
    tokens, pos = tokens.contiguous(), pos.contiguous()
    last = c.num_hidden_layers
    for i in range(last + 1):
        before, after = i - 1 if i else 0, min(i, last - 1)  # the layer whose MLP ends here, the one that starts
        kv = cache[after]
        keys, values = engine._keys(kv), engine._values(kv)
        _between[(triton.cdiv(rows, BLOCK),)](
            tokens, x, y, q, logits, pos, rows,
            engine.embed, engine.w_o[before], engine.norm2[before], engine.w_gu[before], engine.w_down[before],
            engine.norm1[after], engine.w_qkv[after], engine.cos32, engine.sin32, keys, values, engine.norm_f,
            engine.w_head, keys.stride(0), keys.stride(1), c.rms_norm_eps, size ** -0.5,
            rows_of("pos"), rows_of("live"), rows_of("ngen"), rows_of("max"), rows_of("temp"), rows_of("key"),
            rows_of("lp"), rows_of("stop"), out, out.stride(0),
            FIRST=i == 0, LAST=i == last, SAMPLE=state is not None, BLOCK=BLOCK, INTERP=interpreted,
            IEEE=dtype == torch.float32, num_warps=NUM_WARPS, **sizes, **launch_options(dtype))
        if i < last:
            y = attention_kernel.attend(q, keys, values, pos, chunks)  # (A, H, 1, D): the next kernel's input
    return logits
