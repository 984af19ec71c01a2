"""Batched sampling for the tiny core: exact prefix reuse, continuous batching.

Each distinct prompt is computed once and its keys and values are copied
into the cache row of every sample drawn from it. Samples from many prompts
share one batch of rows; a row that finishes (end token, stop token or length)
is swapped out at once and a waiting sample takes its place, so the batch never
carries dead rows and the active rows always sit at the front of the cache.

Randomness is counter-based: the Gumbel noise for sample j of a request at step
t is a hash of (seed, j, t, token), so a sample does not depend on which other
samples shared its batch. Same seed, same samples; and the slow `reference_generate`
beside the engine draws the same tokens (a test holds them equal).

Row by row, to the bit. Every position is computed as one row: a prompt's
positions are rows of `extend`, a sample's next token is a row of a decode
step, and both run the same row-wise arithmetic (projections over at least
`MIN_ROWS` rows, below which the CPU matmul takes another path with other
rounding; attention that walks the cache in fixed chunks of `CHUNK` positions
with an online softmax, where a fully masked chunk adds exact zeros). So the
keys, values and logits at position t are a function of tokens 0..t alone,
whatever else shared the batch and however the sequence was split into
calls. A resumed run, which batches fewer problems together, draws exactly
what the uninterrupted run drew; and the prefix cache (prefix_cache.py) can
hand a prompt the keys and values of its longest known prefix, computed by
an earlier prompt or by the decode steps that generated it, and change no
result: only what is computed.

Confidence (DeepConf, arXiv 2508.15260), where a request asks for it with a
`confidence_window`: each token's confidence is minus the mean log-probability
of the `confidence_top_k` most likely tokens at its step (high: the model was
sure), a group's confidence is the mean over a sliding window of tokens, and a
completion reports its lowest group's (its mean, if it is shorter than a
window). With a `confidence_floor`, a row whose current window falls below it
is stopped at once, `FINISH_CUT`, its tokens counted: the other rows and every
sample's tokens stay as they would be without it.

bfloat16 (`dtype`, off by default). The layers' matmuls (weights and
inputs), rotary embeddings, attention (its softmax included) and the keys and
values in bfloat16; the residual stream, the norms and the output head (so the
logits) in float32. What it buys: half the memory each decode step reads, and
the matmuls on a CPU's bfloat16 units (AMX) or a GPU's. What it costs: each next-token distribution moves a
little from float32's (a test bounds the distance), so a sample differs from
float32's from the first token where two tokens were nearly tied. Samples
are still counter-based and the same on every run. Whether they are also the
same whatever else the batch holds, and however a sequence is split (what
makes the prefix cache exact), is up to the bfloat16 kernels: on an Intel
Xeon with AMX they were, in a probe, but no test holds other CPUs to it.

Static decode (`static_decode`; default on a CUDA device, off on a CPU).
The exact loop above asks the device, at every step, which rows finished
and which rows reach which chunk: cheap on a CPU, but on a GPU each question
stops the queue of kernels, and a step of a model this small is a few
hundred launches of tiny kernels. Static decode runs steps of fixed shapes
instead: every row (at least the active ones: a power of two up to 256, above
that a multiple of an eighth of one, `_static_width`) reads every
chunk any row can reach in the next `sync_every` steps, a row's sampling
settings and stop tokens sit in per-row tensors, and a finished row just
stops changing (its tokens, position and log-probability stay; its step
writes past them) until the engine looks, every `sync_every` steps, and
swaps it out. On a GPU each shape's round of `sync_every` steps is captured
once in a CUDA graph and replayed, one launch a round (`cuda_graphs`); the
graphs are kept between calls and dropped when the weights or the cache
change. Between rounds (`_static_loop`) the host waits for the device twice,
for copies it queued: the round's snapshot (each row's liveness, position,
count, last token, log-probability) and, a round later, the tokens of the
rows that snapshot found finished; what it sends (rows to move, new rows'
requests) is queued from pinned memory. With `overlap` (a GPU's default) it
queues the next round before it reads the last one's snapshot, so the device
computes while the host records finished rows, swaps them out and admits
waiting samples: a finished row then computes one round more (changing
nothing), a call ends with a round that only finds every row finished
(unless the length limits already said so), and a result reaches the
caller up to two rounds after its row finished (without overlap, at the end
of the round it finished in). A fully masked chunk is an exact no-op
(`_attend`), so on a CPU in float32 static decode draws the exact loop's
samples to the bit (a test holds them equal), only slower there (it reads
chunks and rows the exact loop skips). On a GPU nothing is batch-invariant
to begin with (the kernels a library picks depend on the shape), so there a
sample may change with its batch in either loop. Since stop 44 static
decode takes every request (before, a call with a streamed or a confident
one went to the exact loop): a streamed first sample's tokens ride in the
round's snapshot, so `on_tokens` hears them a round at a time; where a call
tracks confidence, its steps compute it as the exact loop does (its graphs
are captured apart), and the cut rows are found by the snapshot.

Two more GPU defaults (off on a CPU, attributes a test can turn on anywhere).
`one_pass_attention`: static decode's attention is one softmax over all the
chunks a step reads (`_attend_all`: about 2 kernels a chunk where the online
softmax takes 14), the same attention rounded otherwise, as close to the
exact one in bfloat16 (a test); so on a GPU static decode's samples are not
the CPU's static or exact loop's to the bit. `batched_extend`: `extend`
gives all its sequences one cache and gathers each row's keys and values,
one set of kernels and one wait for the device per pass instead of one per
sequence (at most `EXTEND_BYTES` of cache at once); the same bits (a test),
but the gathered copies cost a CPU more than the kernels save. And
`triton_attention` (off everywhere until a GPU has measured it): static
decode's attention as one Triton kernel a layer (attention_kernel.py);
`triton_step` (off too): static decode's whole step as Triton kernels, that
attention and one kernel between each two layers, sampling in the last
where no row uses top-p (step_kernel.py).

The CPU kernel (`cpu_kernel`; on by default on a CPU where it builds,
since stop 41; `cpu_kernel=False` or $THINKSCALE_CPU_KERNEL=0 for the torch
path). On a CPU, each layer's rotary
embedding, cache write and attention run as one call into C
(cpu_kernel.py, cpu_attention.c, built for this CPU on first use), in
float32 whatever the dtype: about 14 torch operations a chunk become one
pass that reads each key and value once, as far as its row reaches. Every
row's arithmetic is its own, in a fixed order, so the row-by-row exactness
above holds with it (tests/test_engine.py runs every test both ways), but it
rounds otherwise than torch, so a sample can differ from the torch path's
where two tokens nearly tied (in float32, none of the sampling benchmark's
4,096 samples and none of the demo's 12,800 did). Where it cannot be built
(no C compiler), the torch path runs: quietly by default, with a warning
where the kernel was asked for.
With it, the cache keeps its keys position-major, as its values (`_keys`),
and the exact loop's decode reads each row's prompt from the prompt's one
cache, which the rows of a prompt share (`Fused.lead`): no row gets a copy,
and each active row keeps its keys and values in a slot of the cache of its
own (`slots`), so a row that takes a finished row's place takes its slot
number, not a copy of its cache. The rest of a layer between its matmuls runs in C too (the
residual steps with the RMS norms after them, the MLP's activation), into
buffers kept between steps (`_rows_fused`), and each C call splits its rows
among torch's threads (where `cpu_kernel.parallel()`). The norms and the activation round otherwise than
torch's as well (the activation once, where torch rounds silu(gate) and the
product each to bfloat16).
"""

from __future__ import annotations

import collections
import itertools
import math
import mmap
import warnings
from dataclasses import dataclass, field
from typing import Callable, get_args

import numpy as np
import torch
import torch.nn.functional as F

from thinkscale.budget import forward_flops_per_token
from thinkscale.tiny import DtypeName, cpu_kernel
from thinkscale.tiny.cpu_kernel import default as cpu_kernel_default
from thinkscale.tiny.cpu_kernel import setting as cpu_kernel_setting
from thinkscale.tiny.model import TinyLlama, apply_rope, rope_tables
from thinkscale.tiny.prefix_cache import Entry, PrefixCache
from thinkscale.trace import FINISH_CUT, FINISH_LENGTH, FINISH_STOP

_M32 = 0xFFFFFFFF
DTYPES = dict(zip(get_args(DtypeName), (torch.float32, torch.bfloat16), strict=True))  # by name: `dtype_named`
MIN_ROWS = 16  # matmuls with fewer rows round differently on the CPU (below 8 rows here)
# Rows a step's matmuls take, a multiple of this (the rows past the real ones computed and ignored): the CPU's
# bfloat16 matmul (oneDNN) builds a new kernel for each new row count, about 0.5 ms each, and a sampling call
# of 64 x 64 samples otherwise met several hundred row counts, each with four matmul shapes.
ROW_STEP = 32
CHUNK = cpu_kernel.CHUNK  # attention reduces over fixed chunks of cache positions (32; the C kernel's too)
FLOOR_TOLERANCE = 1e-9  # a window this close to the confidence floor is not below it
EXTEND_ROWS = 2048  # positions computed together by one pass of `extend` (bounds its memory)
EXTEND_BYTES = 1 << 30  # at most this much cache for the sequences of one batched `extend` (more: several calls)
GAP_ROWS = 16  # rows that do not reach a chunk, between two runs that do, read with them (`_plan`)
# static decode's widths between two powers of two above 256 rows (`_static_width`): eight, so at most an eighth of
# a step's rows idle, where a power of two left up to half; more widths are more CUDA graphs to capture
WIDTH_STEPS = 8


@dataclass(frozen=True)
class Fused:
    """`_rows`' attention by the CPU kernel: each row's cache (`cpu_kernel.where`'s table), and how many of
    the rows, from the first, store their keys and values (the rest only read: `extend`'s idle rows); `own`:
    each row has a cache of its own (decode), none shared with another row; `lead`: where each row's first
    positions are read from instead (`cpu_kernel.prepare`'s: decode reads its prompt's cache)."""
    table: torch.Tensor
    stores: int
    own: bool = False
    lead: tuple[torch.Tensor, torch.Tensor] | None = None


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    max_tokens: int = 128
    stop_ids: tuple[int, ...] = ()  # besides the end token
    seed: int = 0
    confidence_window: int = 0  # tokens per group of a completion's confidence; 0: no confidence computed
    confidence_top_k: int = 5  # the most likely tokens whose mean log-probability makes a token's confidence
    confidence_floor: float = -math.inf  # a row whose current group's confidence falls below this is cut
    stream: bool = False  # report the first sample's tokens as they are drawn (generate's `on_tokens`)


@dataclass(frozen=True)
class SampleRequest:
    prompt_ids: tuple[int, ...]
    n: int = 1
    params: SamplingParams = field(default_factory=SamplingParams)
    cache_scope: object = None  # the prefix cache's scope its prompt and steps are looked up and kept in


@dataclass(frozen=True)
class Completion:
    token_ids: tuple[int, ...]  # generated tokens, the stop/end token included
    finish_reason: str
    logprob: float  # sum of the model's log-probabilities (temperature 1) of token_ids
    prompt_cached: int = 0  # prompt positions taken from the prefix cache, not computed
    confidence: float | None = None  # its lowest group's confidence, where the request asked for it


def _fmix32(h: torch.Tensor) -> torch.Tensor:
    """murmur3's finaliser on int64 tensors holding 32-bit values."""
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B) & _M32
    h = h ^ (h >> 13)
    h = (h * 0xC2B2AE35) & _M32
    return h ^ (h >> 16)


def sample_key(seed: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
    """Each row's 32-bit key, a hash of (seed, sample index): what its noise hashes at every step (static decode
    keeps it per row, so a step hashes only the step and the token)."""
    return _fmix32(_fmix32((seed & _M32) ^ 0x9E3779B9) ^ (sample & _M32))


def gumbel_noise(key: torch.Tensor, step: torch.Tensor, vocab: int) -> torch.Tensor:
    """(rows, vocab) Gumbel noise, a pure function of (seed, sample index, step, token): key is `sample_key`'s."""
    v = torch.arange(vocab, dtype=torch.int64, device=key.device)
    h = _fmix32(key ^ (step & _M32))[:, None]  # (rows, 1)
    h = _fmix32(h ^ (v * 0x27D4EB2F & _M32))  # (rows, vocab)
    u = (h.double() + 0.5) / 4294967296.0
    return -torch.log(-torch.log(u)).float()


def choose_tokens(
    logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor,
    key: torch.Tensor, step: torch.Tensor, nucleus: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick one token per row; returns (tokens, their log-probability at temperature 1).

    logits (rows, vocab) float32; the other arguments are per-row tensors (`key`: `sample_key`'s).
    `nucleus`: whether any row may have top_p < 1 (None: look, which waits
    for the device; a captured CUDA graph cannot).
    """
    logprobs = F.log_softmax(logits, dim=-1)
    greedy = temperature <= 0
    scaled = logits / torch.where(greedy, torch.ones_like(temperature), temperature)[:, None]
    if bool((top_p < 1).any()) if nucleus is None else nucleus:
        sorted_logits, order = scaled.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token once the tokens before it already hold top_p of the mass (only in rows with top_p < 1:
        # a row's mass can round to 1 before its last token, and its samples must not depend on its batch)
        drop_sorted = ((probs.cumsum(-1) - probs) >= top_p[:, None]) & (top_p < 1)[:, None]
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        scaled = scaled.masked_fill(drop, float("-inf"))
    noisy = scaled + gumbel_noise(key, step, logits.shape[-1])
    tokens = torch.where(greedy, logits.argmax(-1), noisy.argmax(-1))
    return tokens, logprobs.gather(-1, tokens[:, None])[:, 0]


def dtype_named(name: str) -> torch.dtype:
    """The dtype an engine computes in, by the name a config or a flag gives it."""
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    return DTYPES[name]


class Engine:
    """Continuous-batching sampler over one TinyLlama's weights."""

    def __init__(self, model: TinyLlama, max_rows: int = 1024, device: str | torch.device | None = None,
                 prefix_cache_bytes: int = 0, dtype: torch.dtype | None = None, static_decode: bool | None = None,
                 sync_every: int = 8, cpu_kernel: bool | None = None) -> None:
        """`prefix_cache_bytes` > 0 keeps the keys and values of prompts, and of samples that ended at a stop
        token other than the end token (a step, to be continued), for later prompts to start from. `dtype`:
        what the layers compute in and keep their keys and values in (default the model's; bfloat16: the
        module's docstring, which says what stays float32). `static_decode` (default: on a CUDA device only)
        and `sync_every`: the module's docstring, "Static decode". `cpu_kernel`: on a CPU, attention in C (the
        module's docstring, "The CPU kernel"; default: on, unless $THINKSCALE_CPU_KERNEL is 0)."""
        if max_rows < 1:
            raise ValueError(f"max_rows must be at least 1, got {max_rows}")
        if sync_every < 1:
            raise ValueError(f"sync_every must be at least 1, got {sync_every}")
        if dtype is not None and dtype not in DTYPES.values():
            raise ValueError(f"dtype must be torch.float32 or torch.bfloat16, got {dtype}")
        self.prefix_cache = PrefixCache(prefix_cache_bytes) if prefix_cache_bytes > 0 else None
        self.device = torch.device(device) if device else next(model.parameters()).device
        model = model.to(self.device).eval()
        self.model = model
        self.dtype = dtype = dtype or next(model.parameters()).dtype
        self.config = c = model.config
        self.max_rows = max_rows
        self.eos_id = c.eos_token_id
        self.static_decode = self.device.type == "cuda" if static_decode is None else static_decode
        self.sync_every = sync_every
        # static decode queues a round before reading the last one's finished rows (`_static_loop`): on a GPU
        # the host's work between rounds then overlaps the device's
        self.overlap = self.device.type == "cuda"
        self.cuda_graphs = True  # static decode's steps as CUDA graphs on a GPU (off: run as they are; tests)
        # static decode's attention in one softmax over all its chunks (`_attend_all`): fewer kernels, other
        # rounding; default on a GPU only, where static decode is not the exact loop's to the bit anyway
        self.one_pass_attention = self.device.type == "cuda"
        self.batched_extend = self.device.type == "cuda"  # `extend`: all items at once (same bits, more memory)
        # static decode's attention as one Triton kernel a layer (attention_kernel.py): off until a GPU measures it
        self.triton_attention = False
        # static decode's whole step as Triton kernels, two a layer (step_kernel.py, its attention the one above):
        # off until a GPU measures it; a CPU kernel in use (`_fused`) comes first
        self.triton_step = False
        # on a CPU, attention (with rope and the cache write) as one C call a layer (cpu_kernel.py), by default
        # where it builds; `_fused` says whether it is in use, and warns only where it was asked for
        asked = cpu_kernel_setting() is True if cpu_kernel is None else bool(cpu_kernel)
        self._cpu_kernel = (cpu_kernel_default() and self.device.type == "cpu") if cpu_kernel is None else cpu_kernel
        self._cpu_kernel_asked = asked
        self._graphs: dict[tuple, torch.cuda.CUDAGraph] = {}  # (rows, chunks, nucleus, attention) -> a step
        self._buffers: dict[str, torch.Tensor] = {}  # the fused path's intermediates (`_buffer`)
        self.reload_weights()
        if self.device.type == "cpu":
            self._fused()  # the kernel built (once per machine, about 3 s) now, not in a first call's time

    @property
    def cpu_kernel(self) -> bool:
        """On a CPU, attention (with rope and the cache write) as one C call a layer (cpu_kernel.py). The kernel
        keeps its keys in a layout of its own (`_keys`), so setting it to another value empties the prefix
        cache."""
        return self._cpu_kernel

    @cpu_kernel.setter
    def cpu_kernel(self, on: bool) -> None:
        if on != self._cpu_kernel and self.prefix_cache is not None:
            self.prefix_cache = PrefixCache(self.prefix_cache.max_bytes)
        self._cpu_kernel = on
        self._cpu_kernel_asked = on

    def reload_weights(self) -> None:
        """Read the model's weights again, after training changed them in place.

        The KV cache's memory is kept (zeroing a new one costs about as much
        as a short call), and the prefix cache is emptied: its keys and values
        came from the old weights.
        """
        model, dtype, c = self.model, self.dtype, self.config
        self._graphs = {}  # they read the old weights
        if self.prefix_cache is not None:
            self.prefix_cache = PrefixCache(self.prefix_cache.max_bytes)
        layers = model.model.layers
        with torch.no_grad():
            # Fused projections: one matmul for q, k, v and one for gate, up.
            self.w_qkv = [torch.cat([l.self_attn.q_proj.weight, l.self_attn.k_proj.weight,
                                     l.self_attn.v_proj.weight]).T.to(dtype).contiguous() for l in layers]  # (h, 3h)
            self.w_o = [l.self_attn.o_proj.weight.T.to(dtype).contiguous() for l in layers]  # (h, h)
            self.w_gu = [torch.cat([l.mlp.gate_proj.weight, l.mlp.up_proj.weight]).T.to(dtype).contiguous()
                         for l in layers]
            self.w_down = [l.mlp.down_proj.weight.T.to(dtype).contiguous() for l in layers]  # (i, h)
            self.norm1 = [l.input_layernorm.weight.detach() for l in layers]  # norms and the residual: float32
            self.norm2 = [l.post_attention_layernorm.weight.detach() for l in layers]
            self.norm_f = model.model.norm.weight.detach()
            self.embed = model.model.embed_tokens.weight.detach()
            self.w_head = model.lm_head.weight.T.contiguous()  # (h, vocab): float32, as the logits
            cos, sin = rope_tables(c, torch.arange(c.max_position_embeddings, device=self.device))
            self.cos, self.sin = cos.to(dtype).contiguous(), sin.to(dtype).contiguous()  # (positions, head_dim)
            self.cos32, self.sin32 = cos.float().contiguous(), sin.float().contiguous()  # the CPU kernel's

    def flops_per_token(self) -> float:
        """2 x (non-embedding parameters): the usual estimate of a forward pass."""
        return forward_flops_per_token(self.config.num_parameters(), self.config.vocab_size * self.config.hidden_size)

    def _rms(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.config.rms_norm_eps))

    # -- positions as rows ------------------------------------------------------
    # Keys and values live chunk-major, (layers, 2, chunks, rows, H, CHUNK * D):
    # one chunk of the first n rows is one contiguous block. A chunk's keys are
    # kept transposed, (D, CHUNK), and its values as (CHUNK, D) (`_keys`,
    # `_values`): with the keys transposed, a query multiplied by keys that
    # many rows share (a broadcast view, nothing copied) rounds exactly as by
    # a row's own copy, so `extend` can attend many positions of one sequence
    # to its one cache and still match a decode step to the bit.
    # Short rows skip the long rows' chunks: chunk c is read only by the runs
    # of rows that reach it (`_plan`). In `extend` a sequence's rows are sorted
    # longest first, so that is one run; in decode, rows that finish are filled
    # by the last rows, so long and short rows mix, and reading each chunk by
    # the rows of a prefix read 1.55x the row-chunks needed (1.20x in runs; 64
    # arithmetic prompts x 64 samples). Re-sorting decode rows by position now
    # and then measured no faster: the copy eats the gain.
    # With the CPU kernel the keys are position-major, (CHUNK, D) as the values:
    # a row then reads only the cache lines of its own positions, and decode
    # reads a prompt's positions from the prompt's one cache (`Fused.lead`).
    # Only the kernel reads and writes keys then (`_clear_from` aside).
    def _keys(self, kv: torch.Tensor) -> torch.Tensor:
        """The keys of one layer's (2, chunks, [rows,] H, CHUNK * D) cache as (chunks, [rows,] H, D, CHUNK) (the
        torch path's layout)."""
        return kv[0].view(*kv.shape[1:-1], self.config.head_dim, CHUNK)

    def _values(self, kv: torch.Tensor) -> torch.Tensor:
        """The values of such a cache as (chunks, [rows,] H, CHUNK, D)."""
        return kv[1].view(*kv.shape[1:-1], CHUNK, self.config.head_dim)

    def _clear_from(self, kv: torch.Tensor, chunk: int, offset: int, value: float = 0.0) -> None:
        """Set positions `offset`.. of chunk `chunk` of one layer's one-sequence cache (2, chunks, H, CHUNK * D)
        to `value` (keys and values), in the layout of the path in use."""
        if self._fused():
            kv[:, chunk].view(2, kv.shape[2], CHUNK, self.config.head_dim)[:, :, offset:] = value
        else:
            self._keys(kv)[chunk, :, :, offset:] = value
            self._values(kv)[chunk, :, offset:] = value

    def _plan(self, pos: torch.Tensor) -> list[tuple[int, int, int, torch.Tensor]]:
        """Which rows read which chunk: (chunk, start, stop, additive mask of rows start..stop-1), chunk by chunk.

        Chunk 0 is read by every row. A later chunk is read by the runs of rows
        that reach it, where two runs closer than `GAP_ROWS` rows are read as
        one: the rows between them have the chunk fully masked, an exact no-op
        (`_attend`), which costs less than another matmul call.
        """
        chunk_of = pos // CHUNK
        offsets = torch.arange(CHUNK, device=self.device)
        plan = []
        for chunk in range(int(chunk_of.max()) + 1):
            if chunk == 0:
                runs = [(0, len(pos))]
            else:
                rows = (chunk_of >= chunk).nonzero()[:, 0]
                cut = ((rows[1:] - rows[:-1]) > GAP_ROWS).nonzero()[:, 0]  # a run ends at rows[cut]
                last = rows.new_tensor([len(rows) - 1])
                runs = zip(rows[torch.cat([last * 0, cut + 1])].tolist(), (rows[torch.cat([cut, last])] + 1).tolist())
            for start, stop in runs:
                visible = chunk * CHUNK + offsets[None, :] <= pos[start:stop, None]  # (rows, CHUNK)
                bias = torch.zeros(stop - start, 1, 1, CHUNK, device=self.device, dtype=self.dtype).masked_fill_(
                    ~visible[:, None, None, :], float("-inf"))
                plan.append((chunk, start, stop, bias))
        return plan

    def _rows(self, tokens: torch.Tensor, pos: torch.Tensor,
              attend: Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | Fused
              ) -> torch.Tensor:
        """Feed `tokens` (A,) at positions `pos` (A,), one row each; returns logits (A, vocab).

        Per layer, `attend(layer, q, k, v)` stores the rows' keys and values
        (each (A, H, D)) where their positions belong and returns each row's
        attention over its own positions, (A, H, 1, D), for q already scaled.
        Or, with the CPU kernel (`cpu_kernel`), `attend` is a `Fused`: where
        each row's cache is, and how many of the rows store; the kernel ropes,
        stores and attends in one call a layer.
        """
        if isinstance(attend, Fused):
            return self._rows_fused(tokens, pos, attend)
        c = self.config
        A, H, D = tokens.shape[0], c.num_attention_heads, c.head_dim
        cos, sin = self.cos[pos][:, None, :], self.sin[pos][:, None, :]  # (A, 1, D)
        scale = 1.0 / math.sqrt(D)
        x = self.embed[tokens]  # (A, h)
        for i in range(c.num_hidden_layers):
            qkv = self._rms(x, self.norm1[i]).to(self.dtype) @ self.w_qkv[i]  # (A, 3h)
            q, k = apply_rope(qkv.view(A, 3, H, D)[:, :2], cos[:, None], sin[:, None]).unbind(1)  # each (A, H, D)
            v = qkv.view(A, 3, H, D)[:, 2]
            y = attend(i, (q * scale)[:, :, None, :], k, v)  # (A, H, 1, D)
            x = x + y.reshape(A, -1) @ self.w_o[i]
            g, u = (self._rms(x, self.norm2[i]).to(self.dtype) @ self.w_gu[i]).chunk(2, dim=-1)
            x = x + (F.silu(g) * u) @ self.w_down[i]
        return self._rms(x, self.norm_f) @ self.w_head  # (A, vocab), float32 whatever the dtype

    def _rows_fused(self, tokens: torch.Tensor, pos: torch.Tensor, attend: Fused) -> torch.Tensor:
        """`_rows` with the CPU kernel: attention, and the norms with the residual steps before them and the
        MLP's activation (`cpu_kernel.add_rms`, `silu_mul`), in C, between torch's matmuls, each writing into
        buffers kept between calls (`_buffer`): on this path a step allocates only its logits. Allocated
        afresh, intermediates of over 128 KB come from the system, page by page, a page fault each (about
        200,000 a sampling call of 64 x 64 samples)."""
        c = self.config
        A, H, D, h = tokens.shape[0], c.num_attention_heads, c.head_dim, c.hidden_size
        rows = cpu_kernel.prepare(pos, attend.table, attend.stores, attend.own, attend.lead)  # once, every layer
        scale, eps, last = 1.0 / math.sqrt(D), c.rms_norm_eps, c.num_hidden_layers - 1
        x = torch.index_select(self.embed.float(), 0, tokens, out=self._buffer("x", A, h, torch.float32))
        normed = cpu_kernel.add_rms(x, None, self.norm1[0].float(), eps, self._buffer("normed", A, h))
        for i in range(c.num_hidden_layers):
            qkv = torch.mm(normed, self.w_qkv[i], out=self._buffer("qkv", A, 3 * h))
            y = cpu_kernel.run(qkv.view(A, 3, H, D), self.cos32, self.sin32, rows, i, scale,
                               out=self._buffer("y", A, h))
            o = torch.mm(y, self.w_o[i], out=self._buffer("o", A, h))
            normed = cpu_kernel.add_rms(x, o, self.norm2[i].float(), eps, normed)
            gu = torch.mm(normed, self.w_gu[i], out=self._buffer("gu", A, 2 * c.intermediate_size))
            act = cpu_kernel.silu_mul(gu, self._buffer("act", A, c.intermediate_size))
            down = torch.mm(act, self.w_down[i], out=o)
            if i < last:
                normed = cpu_kernel.add_rms(x, down, self.norm1[i + 1].float(), eps, normed)
        final = cpu_kernel.add_rms(x, down, self.norm_f.float(), eps, self._buffer("final", A, h, torch.float32))
        return final @ self.w_head  # (A, vocab), float32, a tensor of its own

    def _buffer(self, name: str, rows: int, cols: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Rows 0..rows-1 of the (at least rows, cols) buffer `name`, kept between calls (`_rows_fused`), in
        the engine's dtype unless told."""
        dtype = dtype or self.dtype
        have = self._buffers.get(name)
        if have is None or len(have) < rows or have.shape[1] != cols or have.dtype != dtype:
            have = self._buffers[name] = torch.empty(max(rows, self.max_rows), cols, dtype=dtype)
        return have[:rows]

    def _store(self, kv: torch.Tensor, chunk_of: torch.Tensor, rows: torch.Tensor | None, offset: torch.Tensor,
               k: torch.Tensor, v: torch.Tensor) -> None:
        """Write keys and values (each (n, H, D)) of one layer's cache `kv` (2, chunks, [rows,] H, CHUNK * D)."""
        keys, values = self._keys(kv), self._values(kv)
        if rows is None:  # one sequence's cache
            keys[chunk_of, :, :, offset] = k
            values[chunk_of, :, offset] = v
        else:
            keys[chunk_of, rows, :, :, offset] = k
            values[chunk_of, rows, :, offset] = v

    def new_kv(self, positions: int) -> torch.Tensor:
        """Keys and values for one sequence of `positions`: (layers, 2, chunks, H, CHUNK * D), all but the
        last chunk uninitialised (whoever fills the sequence writes them before reading them, or zeroes them:
        `extend` over several passes), the last zeroed: its positions past the sequence are masked, but
        multiplied by 0, and 0 x NaN is NaN."""
        c = self.config
        kv = torch.empty(c.num_hidden_layers, 2, -(-positions // CHUNK), c.num_attention_heads, CHUNK * c.head_dim,
                         device=self.device, dtype=self.dtype)
        kv[:, :, -1] = 0
        return kv

    def _fused(self) -> bool:
        """Whether attention runs in the CPU kernel: `cpu_kernel` (by default on), on a CPU, and built. Where it
        cannot run, the torch path runs from then on: with a warning where the kernel was asked for (the
        constructor's `cpu_kernel=True`, or set so), quietly where it was only the default."""
        if not self.cpu_kernel or self.device.type != "cpu":
            return False
        c, why = self.config, None
        if not cpu_kernel.fits(c.num_attention_heads, c.head_dim, c.max_position_embeddings):
            why = (f"the model ({c.num_attention_heads} heads of {c.head_dim}, {c.max_position_embeddings} positions) "
                   "is outside the CPU kernel's bounds (cpu_kernel.fits)")
        elif not cpu_kernel.available():
            why = f"the engine's CPU kernel is not available ({cpu_kernel.why_unavailable()})"
        if why is not None:
            if self._cpu_kernel_asked:
                warnings.warn(f"{why}; attention runs in torch", RuntimeWarning, stacklevel=3)
            self.cpu_kernel = False
        return self.cpu_kernel

    # -- extend: a sequence's next positions, on top of its known ones --------
    @torch.inference_mode()
    def extend(self, items: list[tuple[torch.Tensor | None, int, tuple[int, ...]]]
               ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """For each (kv, start, tokens): feed `tokens` at positions start, start + 1, ... on top of `kv`.

        `kv` holds the sequence's positions 0..start-1 (None when start is 0)
        and is not changed. Returns, per item, the keys and values of all its
        positions (a new tensor) and the logits of the fed positions
        (len(tokens), vocab). Positions are rows (see the module's docstring):
        the results equal, to the bit, what any other split of the sequence,
        or a decode step, computes for the same positions.
        """
        c, dev = self.config, self.device
        for kv, start, tokens in items:
            if not tokens or start + len(tokens) > c.max_position_embeddings:
                raise ValueError(f"cannot extend a sequence of {start} positions by {len(tokens)} tokens "
                                 f"(at least 1, and at most {c.max_position_embeddings} positions in all)")
        # Batched (`batched_extend`): every item's cache is a slice of one tensor, and each pass stores its rows
        # and gathers the keys and values they read in one go, where grouped costs ~14 kernels per item per
        # layer and chunk, and a wait for the device per item (`_plan`). The same bits: a row's own copy of its
        # keys rounds as a view that many rows share (see "positions as rows").
        batched = self.batched_extend and len(items) > 1
        if batched:
            chunks = max(-(-(start + len(tokens)) // CHUNK) for _, start, tokens in items)
            shape = (c.num_hidden_layers, 2, chunks, len(items), c.num_attention_heads, CHUNK * c.head_dim)
            fit = max(1, EXTEND_BYTES // (math.prod(shape) // len(items) * self.dtype.itemsize))
            if fit < len(items):  # each sequence gets the longest one's chunks: a few calls, each in its bound
                return [done for i in range(0, len(items), fit) for done in self.extend(items[i:i + fit])]
            joint = torch.zeros(shape, device=dev, dtype=self.dtype)
        own = []
        for s, (kv, start, tokens) in enumerate(items):
            buf = joint[:, :, :, s] if batched else self.new_kv(start + len(tokens))
            if kv is not None and start:
                have = min(kv.shape[2], buf.shape[2], -(-start // CHUNK))
                buf[:, :, :have] = kv[:, :, :have]
                if start % CHUNK and have == -(-start // CHUNK):  # past `start`, the last known chunk holds what
                    # another continuation left (a prefix cache's entry): zeros, as a sequence computed whole has
                    for layer in buf:
                        self._clear_from(layer, have - 1, start % CHUNK)
            own.append(buf)
        logits = [torch.empty(len(tokens), c.vocab_size, device=dev) for _, _, tokens in items]
        # Rows in order (item, position), cut into passes of at most EXTEND_ROWS: a pass sees the
        # keys and values of every earlier position, written by this pass or an earlier one.
        flat = [(s, start + t, tok) for s, (_, start, tokens) in enumerate(items) for t, tok in enumerate(tokens)]
        fused = self._fused()  # the CPU kernel: each row reads its item's cache, in `own` or `joint` alike
        # A pass stores all its positions before it reads any. Where a pass ends inside a chunk of a sequence
        # that the next pass goes on with, it reads that chunk before its later positions are written: they
        # must be zeros (masked, but multiplied by 0, and 0 x NaN is NaN), not what the memory held.
        for cut in range(EXTEND_ROWS, len(flat), EXTEND_ROWS):
            (s, _, _), (same, position, _) = flat[cut - 1], flat[cut]
            chunk, offset = divmod(position, CHUNK)
            if s == same and offset:
                for layer in own[s]:  # the chunk's positions from `offset` on; the earlier ones are written
                    self._clear_from(layer, chunk, offset)
        for first in range(0, len(flat), EXTEND_ROWS):
            part = sorted(flat[first:first + EXTEND_ROWS], key=lambda r: (r[0], -r[1]))  # by item, longest first
            width = _width(len(part))  # rows past the real ones (position 0) are computed and ignored
            pos = torch.tensor([p for _, p, _ in part] + [0] * (width - len(part)), device=dev)
            tokens = torch.tensor([t for _, _, t in part] + [c.pad_token_id] * (width - len(part)), device=dev)
            bounds = [r for r in range(len(part) + 1) if r in (0, len(part)) or part[r][0] != part[r - 1][0]]
            groups = []  # (item, its rows, the rows that attend, where they write, their plan: grouped only)
            for first_row, end in zip(bounds, bounds[1:]):
                real = slice(first_row, end)
                attending = slice(first_row, width if end == len(part) else end)  # the last also takes the idle rows
                groups.append((part[first_row][0], real, attending, pos[real] // CHUNK, pos[real] % CHUNK,
                               None if batched or fused else self._plan(pos[attending])))
            if fused:
                attend = Fused(torch.cat([cpu_kernel.where(own[s]).expand(rows.stop - rows.start, -1)
                                          for s, _, rows, _, _, _ in groups]), len(part))
            elif batched:
                n, plan = len(part), self._plan(pos)
                item = torch.tensor([s for s, _, _ in part] + [part[-1][0]] * (width - n), device=dev)
                chunk_of, offset, used = pos[:n] // CHUNK, pos[:n] % CHUNK, plan[-1][0] + 1

                def attend(i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
                    self._store(joint[i], chunk_of, item[:n], offset, k[:n], v[:n])
                    keys, values = self._keys(joint[i]), self._values(joint[i])  # (chunks, items, ...)
                    return self._attend(q, keys[:used, item], values[:used, item], plan)  # each row its item's
            else:
                attend = self._attend_groups(own, groups)

            out = self._rows(tokens, pos, attend)
            for s, real, _, _, _, _ in groups:  # an item's rows in this pass: consecutive positions, longest first
                lowest = part[real.stop - 1][1] - items[s][1]
                logits[s][lowest:lowest + real.stop - real.start] = out[real].flip(0)
        if batched:  # each item's own tensor, of its own chunks
            own = [kv[:, :, :-(-(start + len(tokens)) // CHUNK)].contiguous() for kv, (_, start, tokens)
                   in zip(own, items)]
        return list(zip(own, logits))

    def _attend_groups(self, own: list[torch.Tensor], groups: list[tuple]
                       ) -> Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
        """`extend`'s attention item by item: each item's rows store into and read its own cache `own[item]`."""

        def attend(i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            for s, real, _, chunk_of, offset, _ in groups:
                self._store(own[s][i], chunk_of, None, offset, k[real], v[real])
            out = []
            for s, _, rows, _, _, plan in groups:  # every row of the sequence reads its one cache, not a copy
                n = rows.stop - rows.start
                keys, values = self._keys(own[s][i]), self._values(own[s][i])
                out.append(self._attend(q[rows], keys[:, None].expand(-1, n, -1, -1, -1),
                                        values[:, None].expand(-1, n, -1, -1, -1), plan))
            return out[0] if len(out) == 1 else torch.cat(out)

        return attend

    @torch.inference_mode()
    def read(self, sequences: list[tuple[int, ...]], prefix: int = 0, scope: object = None,
             max_tokens: int | None = None) -> tuple[list[torch.Tensor], int]:
        """The logits at every position of each sequence, and how many positions were computed.

        What a reader (a reward model) needs. With a prefix cache, each
        sequence starts from its longest prefix cached in `scope` and is then
        cached itself, whole; a sequence that knows less than its first
        `prefix` tokens (the prompt the sequences share) starts after them,
        computed once and cached as an entry of their own. With `max_tokens`,
        only the leading sequences whose reading computes at most that many
        positions are read: the result is then shorter than `sequences`.
        """
        cache = self.prefix_cache

        def known(seq: tuple[int, ...]) -> tuple[int, torch.Tensor | None, torch.Tensor | None]:
            """(positions known, their kv, their logits)"""
            start, entry = cache.longest(seq, scope) if cache is not None else (0, None)
            logits = entry.logits_from(start, 0) if entry is not None else None
            return (start, entry.kv, logits) if logits is not None else (0, None, None)

        seqs = [tuple(s) for s in sequences]
        prompts: dict[tuple[int, ...], tuple] = {}  # shared prompt -> what is known of it
        plan: dict[tuple[int, ...], tuple] = {}  # sequence -> (what is known of it, the prompt it starts after)
        computed = fit = 0
        for seq in seqs:
            if seq not in plan:
                start, kv, logits = known(seq)
                shared, first = seq[:prefix], None
                if cache is not None and 0 < len(shared) < len(seq) and start < len(shared):
                    first = None if shared in prompts else known(shared)
                    cost = (len(shared) - first[0] if first else 0) + len(seq) - len(shared)
                else:
                    shared, cost = None, len(seq) - start
                if max_tokens is not None and computed + cost > max_tokens:
                    break
                computed += cost
                if first is not None:
                    prompts[shared] = first
                plan[seq] = ((start, kv, logits), shared)
            fit += 1

        def run(items: dict[tuple[int, ...], tuple]) -> dict[tuple[int, ...], tuple]:
            """Compute each sequence from what is known of it; (kv, logits of every position) for each."""
            out = {seq: (kv, logits) for seq, (start, kv, logits) in items.items() if start == len(seq)}
            todo = [(seq, start, kv, logits) for seq, (start, kv, logits) in items.items() if start < len(seq)]
            for (seq, start, _, logits), (kv, new) in zip(todo, self.extend([(kv, start, seq[start:])
                                                                            for seq, start, kv, _ in todo])):
                full = new if not start else torch.cat([logits, new])
                out[seq] = (kv, full)
                if cache is not None:
                    cache.put(seq, Entry(kv, full), scope)
            return out

        shared_done = run(prompts)
        done = run({seq: (len(shared), *shared_done[shared]) if shared is not None else known_
                    for seq, (known_, shared) in plan.items()})
        return [done[seq][1] for seq in seqs[:fit]], computed

    # -- one decode step over the active rows ---------------------------------
    def _decode(self, cache: torch.Tensor, tokens: torch.Tensor, pos: torch.Tensor,
                attention: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                lead: tuple[torch.Tensor, torch.Tensor] | None = None, slots: torch.Tensor | None = None
                ) -> torch.Tensor:
        """Feed `tokens` (A,) at positions `pos` (A,) for rows 0..A-1; returns logits (A, vocab).

        `attention(q, keys, values)` over one layer's whole cache (`_keys`, `_values`); default `_attend` by
        `_plan`'s chunks, which waits for the device to say which rows reach which. `lead`: with the CPU
        kernel, where each row's prompt is read from (`Fused.lead`); `slots` (A,), with the kernel too: row
        r's keys and values are the cache's row slots[r] (distinct), not row r."""
        rows = torch.arange(tokens.shape[0], device=self.device)
        if self._fused():  # the cache is in the kernel's layout: only the kernel reads it
            if attention is not None:
                raise ValueError("with the CPU kernel, decode's attention is the kernel's")
            return self._rows(tokens, pos, Fused(cpu_kernel.where(cache, rows if slots is None else slots), len(rows),
                                                 own=True, lead=lead))
        if slots is not None:
            raise ValueError("decode's rows live in slots of their own only with the CPU kernel")
        chunk_of, offset = pos // CHUNK, pos % CHUNK
        if attention is None:
            plan = self._plan(pos)
            attention = lambda q, keys, values: self._attend(q, keys, values, plan)  # noqa: E731

        def attend(i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            self._store(cache[i], chunk_of, rows, offset, k, v)
            return attention(q, self._keys(cache[i]), self._values(cache[i]))

        return self._rows(tokens, pos, attend)

    @staticmethod
    def _attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, plan: list) -> torch.Tensor:
        """One query per row against its cached positions, chunk by chunk (online softmax).

        q (A, H, 1, D), already scaled; keys (chunks, rows, H, D, CHUNK) and
        values (chunks, rows, H, CHUNK, D); plan lists (chunk, start, stop,
        bias) in order of chunk (`_plan`): rows start..stop-1 read chunk
        `chunk`. A row that skips a chunk has it fully masked, where the update
        below would be an exact no-op, so skipping changes no bit of its
        result. Plain matmuls beat the CPU flash kernel for one query per row.
        """
        m = l = acc = None
        for chunk, a, b, bias in plan:
            scores = torch.matmul(q[a:b], keys[chunk, a:b]).add_(bias)  # (rows, H, 1, CHUNK)
            if m is None:  # chunk 0: every row needs it, and it holds position 0, so the max is finite
                m = scores.amax(-1, keepdim=True)
                p = (scores - m).exp_()
                l, acc = p.sum(-1, keepdim=True), torch.matmul(p, values[chunk, a:b])
                continue
            m_new = torch.maximum(m[a:b], scores.amax(-1, keepdim=True))
            alpha = (m[a:b] - m_new).exp_()
            p = (scores - m_new).exp_()  # exactly 0 where masked
            if b - a == len(m):  # every row (static decode): the same values, with no copies back into slices
                l, m = l * alpha + p.sum(-1, keepdim=True), m_new
                acc = acc * alpha + torch.matmul(p, values[chunk, a:b])
                continue
            l[a:b] = l[a:b] * alpha + p.sum(-1, keepdim=True)
            acc[a:b] = acc[a:b] * alpha + torch.matmul(p, values[chunk, a:b])
            m[a:b] = m_new
        return acc / l

    @staticmethod
    def _attend_all(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """`_attend` for every row over the same chunks, in one softmax: 2 x chunks + 7 kernels where the online
        softmax takes about 14 a chunk. The same attention, rounded differently (one max over all chunks).

        q (A, H, 1, D), already scaled; keys (C, A, H, D, CHUNK) and values (C, A, H, CHUNK, D), chunks 0..C-1
        of rows 0..A-1; bias (C, A, 1, 1, CHUNK), additive, -inf where a row does not see a position. One
        matmul a chunk each way: a chunk of the first A rows is a contiguous block, all chunks together are not
        (unless A is every row), and one batched matmul over them would copy the keys first.
        """
        scores = torch.stack([torch.matmul(q, k) for k in keys]).add_(bias)  # (C, A, H, 1, CHUNK)
        p = scores.sub_(scores.amax((0, -1), keepdim=True)).exp_()  # the max is finite: chunk 0 holds position 0
        total = p.sum((0, -1), keepdim=True)[0]  # (A, H, 1, 1)
        acc = torch.matmul(p[0], values[0])  # (A, H, 1, D)
        flat = acc.view(-1, 1, acc.shape[-1])
        for chunk in range(1, len(keys)):
            flat.baddbmm_(p[chunk].view(len(flat), 1, CHUNK), values[chunk].reshape(len(flat), CHUNK, -1))
        return acc / total

    # -- static decode: steps of fixed shapes, captured in CUDA graphs ---------
    def _state_for(self, rows: int) -> dict[str, torch.Tensor]:
        """Per-row state for static decode, kept between calls (a captured step reads and writes these very
        tensors): what `generate` keeps per call, and each row's sampling settings and whether it is live."""
        c, dev = self.config, self.device
        have = getattr(self, "_state", None)
        if have is None or have["pos"].shape[0] < rows:
            self._graphs = {}
            long = lambda: torch.zeros(rows, dtype=torch.long, device=dev)  # noqa: E731
            self._state = have = {
                "pos": long(), "tok": long(), "ngen": long(), "key": long(),
                "max": long(), "lp": torch.zeros(rows, dtype=torch.float64, device=dev),
                "temp": torch.zeros(rows, device=dev), "top_p": torch.ones(rows, device=dev),
                "live": torch.zeros(rows, dtype=torch.bool, device=dev),
                "stop": torch.zeros(rows, c.vocab_size, dtype=torch.bool, device=dev),
                # a spare column: a finished row's step writes one past its tokens until it is collected
                "out": torch.zeros(rows, c.max_position_embeddings + 1, dtype=torch.long, device=dev),
                # confidence, where a call asks for it: each token's, the sum over the row's current window,
                # whether the floor cut it, and its request's window, top k and floor (`track_confidence`)
                "conf": torch.zeros(rows, c.max_position_embeddings + 1, dtype=torch.float64, device=dev),
                "wsum": torch.zeros(rows, dtype=torch.float64, device=dev),
                "cut": torch.zeros(rows, dtype=torch.bool, device=dev), "window": long(), "top_k": long(),
                "floor": torch.zeros(rows, dtype=torch.float64, device=dev)}
        return have

    def _static_step(self, width: int, chunks: int, nucleus: bool, count: int = 1, confident: bool = False) -> None:
        """`count` decode steps of rows 0..width-1 over cache chunks 0..chunks-1, as one CUDA graph on a GPU
        (`confident`: some row tracks its confidence).

        A shape's first steps run as they are and are then captured (capture
        records, it does not run); its later steps replay the capture, one
        launch for all `count`.
        """
        if self.device.type != "cuda" or not self.cuda_graphs:
            for _ in range(count):
                self._static_body(width, chunks, nucleus, confident)
            return
        kernels = self._step_kernels()  # their programs' rows and warps: settings a benchmark may change
        step = (kernels.BLOCK, kernels.NUM_WARPS) if kernels else None
        key = (width, chunks, nucleus, count, confident, self.one_pass_attention, self.triton_attention, step)
        with torch.cuda.device(self.device):  # cuda:N: capture and replay on N's streams, whatever is current
            graph = self._graphs.get(key)
            if graph is not None:
                graph.replay()
                return None
            here = torch.cuda.current_stream()
            side = torch.cuda.Stream()  # warm-up off the current stream, as torch.cuda.graphs asks
            side.wait_stream(here)
            with torch.cuda.stream(side):
                for _ in range(count):
                    self._static_body(width, chunks, nucleus, confident)
            here.wait_stream(side)
            if not self._graphs:
                self._pool = torch.cuda.graph_pool_handle()  # one pool: a replay leaves nothing alive in it
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph, pool=self._pool, stream=side):
                    for _ in range(count):
                        self._static_body(width, chunks, nucleus, confident)
            except RuntimeError as error:  # the steps above ran; the later ones run as they are
                warnings.warn(f"the engine's decode step could not be captured in a CUDA graph ({error}); "
                              "it runs kernel by kernel from now on (cuda_graphs = False)", RuntimeWarning,
                              stacklevel=2)
                self.cuda_graphs = False
                return None
            self._graphs[key] = graph
        return None

    def _static_body(self, width: int, chunks: int, nucleus: bool, confident: bool = False) -> None:
        """The step: feed each row's last token, draw its next one and update its state, with nothing that
        waits for the device. A row that is not live (finished or idle) is computed and changes nothing the
        caller reads: its state stays, its token goes to its spare column, its keys and values to a position
        past its own (`_state_for`, `generate`)."""
        s, cache = self._state, self._cache
        pos = s["pos"][:width].clamp(max=chunks * CHUNK - 1)  # an idle row's stale position stays in range
        ran, logits = (self._triton_step(width, chunks, pos, nucleus or confident)
                       if self.triton_step and not self._fused() else (False, None))
        if not ran:
            logits = self._decode(cache, s["tok"][:width], pos, self._static_attention(width, chunks, pos))
        if logits is not None:  # (None: the Triton step's last kernel drew the tokens and moved the state on)
            self._static_take(slice(0, width), logits, nucleus, confident=confident)

    def _triton_step(self, width: int, chunks: int, pos: torch.Tensor, logits_wanted: bool
                     ) -> tuple[bool, torch.Tensor | None]:
        """The step on `step_kernel`'s kernels: (True, None) where they also drew the tokens (no row with top-p,
        none tracking confidence: `logits_wanted` false), else (True, the logits). (False, None) where they
        cannot run (a model they cannot hold; Triton failing to compile or to launch them on this device): then,
        with one warning, `triton_step` is off and the torch path runs. A shape's first step runs before its
        capture in a CUDA graph, so a failure is met there, and a kernel that failed stored nothing that the torch
        path's run of the same step does not write again (the state moves only in the last kernel)."""
        step_kernel = self._step_kernels()
        if step_kernel is None:
            return False, None
        s = self._state
        try:
            if not logits_wanted:
                step_kernel.decode(self, self._cache, s["tok"][:width], pos, chunks, state=s)
                return True, None
            return True, step_kernel.decode(self, self._cache, s["tok"][:width], pos, chunks)
        except step_kernel.FAILURES as error:
            self._triton_step_fails(error)
            return False, None

    def _step_kernels(self):
        """step_kernel.py where `triton_step` is on and Triton imports (imported only then), else None."""
        if not self.triton_step:
            return None
        try:
            from thinkscale.tiny import step_kernel
        except ImportError as error:
            self._triton_step_fails(error)
            return None
        return step_kernel

    def _triton_step_fails(self, error: Exception) -> None:
        warnings.warn(f"static decode's Triton step cannot run here ({type(error).__name__}: {error}); the torch "
                      "path runs from now on (triton_step = False)", RuntimeWarning, stacklevel=3)
        self.triton_step = False

    def _static_take(self, rows: slice, logits: torch.Tensor, nucleus: bool, fed: bool = True,
                     confident: bool = False) -> None:
        """Static decode's `rows` draw their next tokens from `logits` (rows, vocab), and their state moves on:
        position (where `fed`: a step fed their last token; not for a new row's first token, drawn from its
        prompt's logits), tokens, log-probability, count, whether they are still live, and with `confident`
        their confidence, as the exact loop's `track_confidence` computes it, and the floor's cut."""
        s = self._state
        live, ngen = s["live"][rows], s["ngen"][rows]
        if fed:
            s["pos"][rows] += live
        tok, lp = choose_tokens(logits, s["temp"][rows], s["top_p"][rows], s["key"][rows], ngen, nucleus)
        s["out"][rows].scatter_(1, ngen[:, None], tok[:, None])
        s["tok"][rows] = tok
        s["lp"][rows] += torch.where(live, lp.double(), 0.0)
        stop = s["stop"][rows].gather(1, tok[:, None])[:, 0]
        if confident:  # a finished row's go to its spare column and its window sum, which nothing reads
            # (an idle row's top k is a former sample's, or 0 if none: clamped, it reads a column; a real row's is
            # at least 1)
            window, conf, wsum = s["window"][rows], s["conf"][rows], s["wsum"][rows]
            now = _token_confidence(logits, s["top_k"][rows].clamp(min=1))
            conf.scatter_(1, ngen[:, None], now[:, None])
            leaving = torch.where(ngen >= window, conf.gather(1, (ngen - window).clamp(min=0)[:, None])[:, 0],
                                  torch.zeros_like(now))
            wsum += now - leaving
            cut = live & _below_floor(wsum, window, ngen, s["floor"][rows])
            s["cut"][rows] |= cut
            stop |= cut
        ngen += live
        live &= ~(stop | (ngen >= s["max"][rows]))

    def _static_attention(self, width: int, chunks: int, pos: torch.Tensor
                          ) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None:
        """A static step's attention over chunks 0..chunks-1 for rows 0..width-1 at positions `pos`: None where
        the CPU kernel reads each row as far as its position (the exact loop's attention), else Triton's, one
        softmax over all chunks, or chunk by chunk (the attributes `triton_attention`, `one_pass_attention`)."""
        if self._fused():
            return None
        if self.triton_attention:
            from thinkscale.tiny import attention_kernel  # Triton: imported only where asked for

            return lambda q, keys, values: attention_kernel.attend(q, keys, values, pos, chunks)
        hidden = torch.arange(chunks * CHUNK, device=self.device).view(chunks, 1, CHUNK) > pos[None, :, None]
        bias = torch.zeros(chunks, width, 1, 1, CHUNK, device=self.device, dtype=self.dtype).masked_fill_(
            hidden[:, :, None, None, :], float("-inf"))
        plan = [(chunk, 0, width, bias[chunk]) for chunk in range(chunks)]  # every row, every chunk

        def attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
            if self.one_pass_attention:
                return self._attend_all(q, keys[:chunks, :width], values[:chunks, :width], bias)
            return self._attend(q, keys, values, plan)

        return attention

    def _cache_for(self, chunks: int, rows: int) -> torch.Tensor:
        """A KV cache of at least this size, kept between calls.

        Zeros, not empty, when new: masked positions are multiplied by 0, and
        0 x NaN is NaN. Reused, it holds only finite values written earlier.
        On a CPU it covers every position from the start, in memory the
        kernel zeroes page by page as rows first write it (`_lazy_zeros`):
        nothing is spent up front and only the pages used count. torch.zeros
        of the ~1 GB it takes at 1,024 rows cost 0.3-3.5 s on these machines,
        and again each time a call needed more chunks.
        """
        c = self.config
        have = getattr(self, "_cache", None)
        if have is None or have.shape[2] < chunks or have.shape[3] < rows:
            # Grow to cover both the old and the new shape, rows rounded up to a power of two (at most what a call
            # can ask for): a step search's calls of slowly growing size would otherwise make a new one each. On a
            # CPU every position at once: untouched pages cost nothing.
            size = max(chunks, 0 if have is None else have.shape[2],
                       -(-c.max_position_embeddings // CHUNK) if self.device.type == "cpu" else 0), max(
                rows, 0 if have is None else have.shape[3], min(1 << (rows - 1).bit_length(), self.max_rows))
            self._cache = self._state = None  # free the old ones first; the graphs read them
            self._graphs = {}
            shape = (c.num_hidden_layers, 2, *size, c.num_attention_heads, CHUNK * c.head_dim)
            self._cache = (_lazy_zeros(shape, self.dtype) if self.device.type == "cpu"
                           else torch.zeros(shape, device=self.device, dtype=self.dtype))
        return self._cache[:, :, :chunks, :rows]

    def _known_prefix(self, prompt: tuple[int, ...], scope: object
                      ) -> tuple[int, torch.Tensor | None, torch.Tensor | None]:
        """(start, kv, last logits) for `prompt`: its positions before `start` are known from the prefix
        cache (kv; None when start is 0), and the last logits too when the whole prompt is known."""
        if self.prefix_cache is None:
            return 0, None, None
        length, entry = self.prefix_cache.longest(prompt, scope)
        if entry is None:
            return 0, None, None
        if length == len(prompt):
            last = entry.logits_from(length, length - 1)
            if last is not None:
                return length, entry.kv, last[-1]
            length -= 1  # its last position's logits are needed: that one position is computed again
        return length, entry.kv if length else None, None

    # -- the sampling loop ----------------------------------------------------
    @torch.inference_mode()
    def generate(
        self, requests: list[SampleRequest], on_finish: Callable[[int], None] | None = None,
        on_request_done: Callable[[int, list[Completion]], None] | None = None,
        cancelled: Callable[[], list[int]] | None = None,
        on_tokens: Callable[[list[tuple[int, int]]], None] | None = None,
        on_dropped: Callable[[int, int], None] | None = None,
    ) -> list[list[Completion]]:
        """All samples of all requests; result[r][j] is sample j of request r.

        `on_finish(1)` is called as each sample finishes, and
        `on_request_done(r, samples)` as soon as every sample of request r has,
        so that callers can use early results while the batch runs on.
        `cancelled()`, asked before every step (every `sync_every` steps in
        static decode), lists requests nobody waits
        for any more (it may only grow): their rows are dropped at once and
        their waiting samples never start; their results stay None. The other
        requests' samples do not change (a sample does not depend on its batch).
        `on_dropped(r, tokens)` says, for each unfinished request r that
        `cancelled()` dropped, the tokens its samples had generated.
        `on_tokens([(r, token id), ...])` is called after each step with the
        token just drawn for the first sample of each request r that asks
        for `stream` (the end or stop token included); static decode reads
        a round's tokens at once, then makes a call for each, in order. A
        request for no samples or no tokens (`max_tokens` 0) is done before
        any step, its samples empty (no confidence, nothing streamed).
        """
        c, dev = self.config, self.device
        if not requests:
            return []
        for r in requests:
            if len(r.prompt_ids) >= c.max_position_embeddings:
                raise ValueError(f"prompt of {len(r.prompt_ids)} tokens does not fit the model's "
                                 f"{c.max_position_embeddings} positions")
            if r.params.max_tokens < 0 or r.n < 0:
                raise ValueError(f"max_tokens and n must be at least 0, got {r.params.max_tokens} and {r.n}")
        # Each distinct prompt (of each cache scope) once, from its longest cached prefix.
        distinct: dict[tuple, int] = {}
        for r in requests:
            distinct.setdefault((r.cache_scope, tuple(r.prompt_ids)), len(distinct))
        prompts = [prompt for _, prompt in distinct]
        known = [self._known_prefix(prompt, scope) for scope, prompt in distinct]  # (start, kv, last logits | None)
        todo = [i for i, (_, _, last) in enumerate(known) if last is None]
        computed = dict(zip(todo, self.extend([(known[i][1], known[i][0], prompts[i][known[i][0]:]) for i in todo])))
        kvs, lasts = [], []
        for i, (scope, prompt) in enumerate(distinct):
            if i in computed:
                kv, logits = computed[i]
                if self.prefix_cache is not None:
                    self.prefix_cache.put(prompt, Entry(kv, logits[-1:].clone()), scope)
                kvs.append(kv)
                lasts.append(logits[-1])
            else:
                kvs.append(known[i][1])
                lasts.append(known[i][2])
        prompt_cached = [start for start, _, _ in known]
        # With the CPU kernel, decode reads each row's prompt from the prompt's one cache (`Fused.lead`)
        prompt_where = torch.cat([cpu_kernel.where(kv) for kv in kvs]) if self._fused() else None
        prompt_chunks = [-(-len(p) // CHUNK) for p in prompts]
        prompt_logits = torch.stack(lasts)
        prompt_len = torch.tensor([len(p) for p in prompts], device=dev)
        req_prompt = torch.tensor([distinct[(r.cache_scope, tuple(r.prompt_ids))] for r in requests], device=dev)
        req_len = prompt_len[req_prompt]
        limits = [min(r.params.max_tokens, c.max_position_embeddings - len(r.prompt_ids)) for r in requests]
        req_max = torch.tensor(limits, device=dev)
        req_temp = torch.tensor([float(r.params.temperature) for r in requests], device=dev)
        req_top_p = torch.tensor([float(r.params.top_p) for r in requests], device=dev)
        req_seed = torch.tensor([r.params.seed for r in requests], dtype=torch.int64, device=dev)
        req_window = torch.tensor([r.params.confidence_window for r in requests], device=dev)
        req_top_k = torch.tensor([max(1, min(r.params.confidence_top_k, c.vocab_size)) for r in requests],
                                 device=dev)
        # in float64, as the window sums it is compared with (in float32 it moved by more than FLOOR_TOLERANCE)
        req_floor = torch.tensor([float(r.params.confidence_floor) for r in requests], dtype=torch.float64, device=dev)
        confident = bool((req_window > 0).any())
        streamed = {i for i, r in enumerate(requests) if r.params.stream} if on_tokens is not None else set()
        live_rows: dict[int, int] = {}  # row -> request, for the rows of streamed first samples
        stop_table = torch.zeros(len(requests), c.vocab_size, dtype=torch.bool, device=dev)
        stop_table[:, self.eos_id] = True
        for i, r in enumerate(requests):
            stop_table[i, list(r.params.stop_ids)] = True
        ends = [set(r.params.stop_ids) | {self.eos_id} for r in requests]  # the same, for Python
        windows, prompt_of = req_window.tolist(), req_prompt.tolist()

        results: list[list[Completion | None]] = [[None] * r.n for r in requests]
        unfinished = [r.n for r in requests]
        for ri, r in enumerate(requests):  # no sample, or no token to draw: done before any row is taken
            if limits[ri] == 0 or r.n == 0:
                results[ri] = [Completion((), FINISH_LENGTH, 0.0, prompt_cached[prompt_of[ri]])] * r.n
                _report_finished([ri] * r.n, unfinished, results, on_finish, on_request_done)
                if r.n == 0 and on_request_done:
                    on_request_done(ri, [])
        pending = [(ri, j) for ri, r in enumerate(requests) if limits[ri] for j in range(r.n)]
        if not pending:
            return results  # type: ignore[return-value]
        pending.reverse()  # pop() from the end takes them in order

        R = min(self.max_rows, len(pending))
        T_cap = -(-int(min(c.max_position_embeddings, int((req_len + req_max).max()))) // CHUNK) * CHUNK
        R_alloc = max(R, MIN_ROWS)
        cache = self._cache_for(T_cap // CHUNK, R_alloc)
        if self.static_decode:
            self._static_loop(_StaticCall(
                requests, pending, results, unfinished, R, T_cap // CHUNK, bool((req_top_p < 1).any()), limits,
                req_len, req_max, req_temp, req_top_p, req_seed, stop_table, ends, prompt_of, prompt_cached, kvs,
                prompt_chunks, prompt_logits, req_prompt, on_finish, on_request_done, cancelled, on_dropped, streamed,
                on_tokens, confident, windows, req_window, req_top_k, req_floor))
            return results  # type: ignore[return-value]
        # Per-row state; rows 0..A-1 are active.
        row_req = torch.zeros(R_alloc, dtype=torch.long, device=dev)
        row_sample = torch.zeros(R_alloc, dtype=torch.long, device=dev)
        row_pos = torch.zeros(R_alloc, dtype=torch.long, device=dev)  # where the row's last token will be fed
        row_tok = torch.zeros(R_alloc, dtype=torch.long, device=dev)  # last token drawn, not yet fed
        row_ngen = torch.zeros(R_alloc, dtype=torch.long, device=dev)
        row_lp = torch.zeros(R_alloc, dtype=torch.float64, device=dev)
        out_tokens = torch.zeros(R_alloc, int(req_max.max()), dtype=torch.long, device=dev)
        # With confidence: each token's, the sum over the row's current window, and whether the floor cut it.
        out_conf = torch.zeros(R_alloc if confident else 1, int(req_max.max()), dtype=torch.float64, device=dev)
        row_wsum = torch.zeros(R_alloc, dtype=torch.float64, device=dev)
        row_cut = torch.zeros(R_alloc, dtype=torch.bool, device=dev)
        # With the CPU kernel the exact loop reads each row's prompt from the prompt's one cache (`lead`), so no
        # prompt is copied into a row's cache, and active row r keeps its keys and values in the cache's row
        # slot[r]: a row that moves into a finished row's place takes its slot number, not a copy of its cache.
        slot = torch.arange(R_alloc, device=dev) if prompt_where is not None else None
        A = 0

        def free(rows: list[int]) -> None:
            """Forget these active rows: the last active rows that stay move into their slots."""
            nonlocal A
            gone = set(rows)
            A -= len(gone)
            for row in gone:
                live_rows.pop(row, None)
            holes = sorted((r for r in gone if r < A), reverse=True)
            movers = sorted((r for r in range(A, A + len(gone)) if r not in gone), reverse=True)
            if holes:
                dst, src = torch.tensor(holes, device=dev), torch.tensor(movers, device=dev)
                if slot is not None:  # the finished rows' slots go past the active rows, free for the next
                    slot[dst], slot[src] = slot[src], slot[dst]
                else:
                    for hole, mover, length in zip(holes, movers, row_pos[src].tolist()):
                        used = (length - 1) // CHUNK + 1  # the chunks the mover has written (the rest: stale, finite)
                        cache[:, :, :used, hole] = cache[:, :, :used, mover]  # a strided copy: faster than a gather
                for t in (row_req, row_sample, row_pos, row_tok, row_ngen, row_lp, out_tokens, row_wsum, row_cut):
                    t[dst] = t[src]
                if confident:
                    out_conf[dst] = out_conf[src]
                for hole, mover in zip(holes, movers):
                    if mover in live_rows:
                        live_rows[hole] = live_rows.pop(mover)

        dropped: set[int] = set()

        def drop_cancelled() -> None:
            """Forget the requests nobody waits for: their waiting samples and their rows."""
            nonlocal pending
            gone = set(cancelled()) - dropped
            if not gone:
                return
            dropped.update(gone)
            pending = [(ri, j) for ri, j in pending if ri not in gone]
            spent = dict.fromkeys((ri for ri in gone if unfinished[ri]), 0)
            for ri in spent:
                spent[ri] += sum(len(c.token_ids) for c in results[ri] if c is not None)
            leaving = [r for r, ri in enumerate(row_req[:A].tolist()) if ri in gone]
            for ri, n in zip(row_req[leaving].tolist(), row_ngen[leaving].tolist()):
                if ri in spent:
                    spent[ri] += n
            free(leaving)
            if on_dropped is not None:
                for ri, tokens in spent.items():
                    on_dropped(ri, tokens)

        def row_cache(row: int, length: int, p: int) -> torch.Tensor:
            """A copy of active row `row`'s keys and values at positions 0..length-1 (whole chunks), prompt p's
            first: in a slot (`slot`), the row's cache holds only its own positions."""
            if slot is None:
                return cache[:, :, :-(-length // CHUNK), row].clone()
            kv = cache[:, :, :-(-length // CHUNK), int(slot[row])].clone()
            n = len(prompts[p])
            whole, part = divmod(n, CHUNK)
            kv[:, :, :whole] = kvs[p][:, :, :whole]
            if part:  # positions 0..part-1 of the chunk the prompt ends in (keys and values position-major)
                kv[:, :, whole].unflatten(-1, (CHUNK, -1))[..., :part, :] = (
                    kvs[p][:, :, whole].unflatten(-1, (CHUNK, -1))[..., :part, :])
            return kv

        def finish_rows(done: torch.Tensor) -> None:
            """Record finished rows, then forget them (`free`)."""
            rows = sorted(done.tolist(), reverse=True)
            at = torch.tensor(rows, device=dev)
            ngen = row_ngen[at].tolist()
            columns = zip(row_req[at].tolist(), row_sample[at].tolist(), ngen, row_pos[at].tolist(),
                          row_cut[at].tolist(), row_lp[at].tolist(), out_tokens[at, :max(ngen)].tolist())
            finished = []
            for row, (ri, j, n, length, was_cut, logprob, drawn) in zip(rows, columns):
                finished.append(ri)
                tokens = tuple(drawn[:n])
                last = tokens[-1]
                reason = FINISH_CUT if was_cut else FINISH_STOP if last in ends[ri] else FINISH_LENGTH
                if self.prefix_cache is not None and reason == FINISH_STOP and last != self.eos_id and n > 1:
                    # a step, to be continued: its keys and values (all but the stop token, not fed yet)
                    self.prefix_cache.put(tuple(requests[ri].prompt_ids) + tokens[:-1],
                                          Entry(row_cache(row, length, prompt_of[ri]), None), requests[ri].cache_scope)
                window = windows[ri]
                results[ri][j] = Completion(tokens, reason, logprob, prompt_cached[prompt_of[ri]],
                                            _lowest_group(out_conf[row, :n], window) if window else None)
            free(rows)
            _report_finished(finished, unfinished, results, on_finish, on_request_done)

        def track_confidence(rows: torch.Tensor, req: torch.Tensor, logits: torch.Tensor) -> None:
            """This step's token confidences, each row's window sum, and the floor's cut (before ngen moves on)."""
            window, n = req_window[req], row_ngen[rows]
            conf = _token_confidence(logits, req_top_k[req])
            out_conf[rows, n] = conf
            leaving = torch.where(n >= window, out_conf[rows, (n - window).clamp(min=0)], torch.zeros_like(conf))
            row_wsum[rows] += conf - leaving
            row_cut[rows] = _below_floor(row_wsum[rows], window, n, req_floor[req])

        def take_token(rows: torch.Tensor, logits: torch.Tensor) -> None:
            """Draw the next token for `rows` and finish those that stop or run out."""
            req = row_req[rows]
            tok, lp = choose_tokens(logits, req_temp[req], req_top_p[req],
                                    sample_key(req_seed[req], row_sample[rows]), row_ngen[rows])
            out_tokens[rows, row_ngen[rows]] = tok
            row_tok[rows] = tok
            row_lp[rows] += lp.double()
            if confident:
                track_confidence(rows, req, logits)
            if live_rows:  # `rows` is always a contiguous range of rows
                first, last = int(rows[0]), int(rows[0]) + len(rows)
                drawn = [(ri, int(tok[row - first])) for row, ri in live_rows.items() if first <= row < last]
                if drawn:
                    on_tokens(drawn)
            row_ngen[rows] += 1
            done = stop_table[req, tok] | (row_ngen[rows] >= req_max[req]) | row_cut[rows]
            if bool(done.any()):
                finish_rows(rows[done])

        while pending or A:
            if cancelled is not None:
                drop_cancelled()
                if not (pending or A):
                    break
            # Admit waiting samples into free rows: copy their prompt's KV (not with `slot`), draw their first token.
            if pending and A < R:
                m = min(R - A, len(pending))
                admitted = [pending.pop() for _ in range(m)]
                rows = torch.arange(A, A + m, device=dev)
                req = torch.tensor([a[0] for a in admitted], device=dev)
                row_req[rows], row_sample[rows] = req, torch.tensor([a[1] for a in admitted], device=dev)
                row_pos[rows], row_ngen[rows], row_lp[rows] = req_len[req], 0, 0.0
                row_wsum[rows], row_cut[rows] = 0.0, False
                if slot is None:  # each run of rows with one prompt: its keys and values, broadcast (no gathered copy)
                    first = A
                    for p, run in itertools.groupby(admitted, key=lambda a: prompt_of[a[0]]):
                        stop = first + len(list(run))
                        cache[:, :, :prompt_chunks[p], first:stop] = kvs[p][:, :, :prompt_chunks[p], None]
                        first = stop
                live_rows.update((A + k, ri) for k, (ri, j) in enumerate(admitted) if j == 0 and ri in streamed)
                A += m
                take_token(rows, prompt_logits[req_prompt[req]])
                continue  # finished-at-once rows may have freed slots
            active = torch.arange(A, device=dev)
            width = _width(A, len(row_pos))  # rows past A are idle slots, computed and ignored
            pos = row_pos[:width].clone()
            pos[A:] = 0  # an idle slot writes at its own position 0, rewritten on admission
            lead = None
            if prompt_where is not None:
                prompt = req_prompt[row_req[:width]]
                counts = prompt_len[prompt]
                counts[A:] = 0  # an idle slot reads its own position 0
                lead = (prompt_where[prompt], counts)
            slots = None if slot is None else slot[:width]
            logits = self._decode(cache, row_tok[:width], pos, lead=lead, slots=slots)[:A]
            row_pos[:A] += 1
            take_token(active, logits)
        return results  # type: ignore[return-value]

    def _static_loop(self, call: _StaticCall) -> None:
        """Static decode's rows (the module's docstring): rounds of `sync_every` steps of fixed shapes.

        After each round one snapshot of the rows' state goes to the host
        (whether live, position, count, last token, log-probability), then
        the tokens of the rows it found finished: so the host waits for the
        device twice a round and nowhere else, and what it sends (rows to
        move, new rows' requests) goes without waiting. With `overlap`, the
        next round is queued before the last one's snapshot is read: the
        device computes while the host records the finished rows, swaps them
        out and admits waiting samples. A finished row then computes one round
        more, changing nothing its results read; its tokens are read behind
        that round, so its result reaches the caller a round later; a
        cancelled row's tokens counted for `on_dropped` include that round's;
        and a call ends with a round that finds every row finished. A round is
        queued only while some row may still be live (`left`, from the length
        limits). A row the snapshot finds finished is recorded even if its
        request is cancelled at that look, as in the exact loop. A streamed
        first sample's new tokens come in the same snapshot: `on_tokens` hears
        them as the host reads it, a call for each token a row drew since.
        """
        s, dev, every, cache = self._state_for(self._cache.shape[3]), self.device, self.sync_every, self._cache
        live, size = s["live"], len(s["live"])
        live.zero_()
        confidence = ("conf", "wsum", "window", "top_k", "floor") if call.confident else ()
        moving = [s[k] for k in ("pos", "tok", "ngen", "key", "max", "lp", "temp", "top_p", "live", "stop", "out",
                                 "cut", *confidence)]
        # the host's view of active rows 0..A-1: request, sample, length limit, and bounds at the next round's
        # first step: the highest position it feeds, and the most tokens it has left (none: finished)
        req, sample, most, pos, left = (np.zeros(size, dtype=np.int64) for _ in range(5))
        heard = np.zeros(size, dtype=bool)  # whether the row is a streamed first sample
        told = np.zeros(size, dtype=np.int64)  # a streamed row's tokens `on_tokens` has heard
        A, queued = 0, 0  # queued: rounds queued since the unread snapshot
        unread: _Download | None = None
        streams: tuple[np.ndarray, int] | None = None  # the unread snapshot's streamed rows, and tokens copied a row
        recorded: _Departed | None = None  # rows swapped out, their tokens and counts still on their way
        dropped: set[int] = set()

        def launch() -> None:
            nonlocal queued
            chunks = min(call.chunks, (int(pos[:A].max()) + every - 1) // CHUNK + 1)
            self._static_step(_static_width(A, size), chunks, call.nucleus, every, call.confident)
            pos[:A] += every
            left[:A] -= every
            queued += 1

        def snapshot() -> _Download:
            """The rows' state, and behind it in the same copy the streamed rows' tokens that may be new: each
            row's `span` columns from the first `on_tokens` has not heard (span: the most any of them may have
            drawn since)."""
            nonlocal streams
            ngen = s["ngen"][:A]
            last = s["out"][:A].gather(1, (ngen - 1).clamp(min=0)[:, None])[:, 0]
            state = torch.stack([live[:A].long(), s["pos"][:A], ngen, last, s["lp"][:A].view(torch.int64),
                                 s["cut"][:A].long()]).flatten()
            rows, streams = np.flatnonzero(heard[:A]), None
            if len(rows):
                span = int((most[rows] - np.maximum(left[rows], 0) - told[rows]).max())
                streams = rows, span
                if span > 0:
                    cols = _upload(told[rows], dev)[:, None] + torch.arange(span, device=dev)
                    state = torch.cat([state, s["out"][_upload(rows, dev)[:, None],
                                                       cols.clamp(max=s["out"].shape[1] - 1)].flatten()])
            return _Download(state, "snapshot")

        def tell(rows: np.ndarray, drawn: np.ndarray, ngen: np.ndarray) -> None:
            """`on_tokens` hears the streamed rows' tokens that are new in a snapshot (`drawn`: each row's, from
            the first not heard), a call for each: the first new token of each row, then the second, ..."""
            new = ngen[rows] - told[rows]
            for k in range(int(new.max())):
                call.on_tokens([(int(req[r]), int(drawn[i, k])) for i, r in enumerate(rows) if k < new[i]])
            told[rows] = ngen[rows]

        def settle(snap: np.ndarray | None) -> None:
            """From a snapshot, record the rows it found finished (their tokens to follow); drop cancelled requests'
            waiting samples and live rows; swap the finished and dropped rows out: the last active rows that stay
            move into their places."""
            nonlocal A, recorded
            done = np.zeros(0, dtype=np.int64)
            at = ngen = last = logprob = cut = done
            if snap is not None:
                at, ngen, last, logprob, cut = snap[1], snap[2], snap[3], snap[4].view(np.float64), snap[5]
                done = np.flatnonzero(snap[0] == 0)
                pos[:A], left[:A] = at + queued * every, most[:A] - ngen - queued * every
            gone = set(call.cancelled()) - dropped if call.cancelled is not None else set()
            dropped.update(gone)
            if gone:
                call.pending[:] = [(ri, j) for ri, j in call.pending if ri not in gone]
            leaving = np.zeros(0, dtype=np.int64)
            if gone:  # a cancelled request's rows that the snapshot found finished are recorded, as they finished
                leaving = np.setdiff1d(np.flatnonzero(np.isin(req[:A], list(gone))), done)
            finished = []
            for r in done.tolist():
                ri, n, tail = int(req[r]), int(ngen[r]), int(last[r])
                reason = FINISH_CUT if cut[r] else FINISH_STOP if tail in call.ends[ri] else FINISH_LENGTH
                kv = None  # a step, to be continued: its keys and values (all but the stop token, not fed yet)
                if self.prefix_cache is not None and reason == FINISH_STOP and tail != self.eos_id and n > 1:
                    kv = cache[:, :, :-(-int(at[r]) // CHUNK), r].clone()
                finished.append((ri, int(sample[r]), n, reason, float(logprob[r]), kv))
            counted = collections.Counter(ri for ri, *_ in finished)  # being recorded now: not unfinished
            spent = {ri: sum(len(c.token_ids) for c in call.results[ri] if c is not None)
                     + sum(n for rj, _, n, *_ in finished if rj == ri)
                     for ri in gone if call.unfinished[ri] > counted[ri]}
            departing = np.concatenate([done, leaving])
            tokens = None
            if len(departing):
                rows = _upload(departing, dev)
                width = max([n for _, _, n, *_ in finished], default=1)
                columns = [s["out"][rows, :width], s["ngen"][rows, None]]  # tokens, count; confidences between
                if call.confident:
                    columns.insert(1, s["conf"][rows, :width].view(torch.int64))
                tokens = _Download(torch.cat(columns, 1), "tokens")
            if finished or spent:
                recorded = _Departed(tokens, finished, req[leaving].tolist(), spent)
            kept = A - len(departing)
            out = set(departing.tolist())
            holes = [r for r in sorted(out) if r < kept]
            movers = [r for r in range(kept, A) if r not in out]
            if holes:
                dst, src = _upload(np.array([holes, movers]), dev)
                used = min(call.chunks, (int(pos[movers].max()) - 1) // CHUNK + 1)  # the chunks movers have written
                cache[:, :, :used, dst] = cache[:, :, :used, src]
                for t in moving:
                    t[dst] = t[src]
                for a in (req, sample, most, pos, left, heard, told):
                    a[holes] = a[movers]
            live[kept:A].zero_()  # idle now (a mover's old row too)
            A = kept

        def record() -> None:
            """The departed rows' results, now that their tokens are here; then the callers hear of them."""
            nonlocal recorded
            if recorded is None:
                return
            batch, recorded = recorded, None
            table = batch.tokens.result() if batch.tokens is not None else None  # each row's tokens, then its count
            width = (table.shape[1] - 1) // (2 if call.confident else 1) if table is not None else 0
            for k, (ri, j, n, reason, logprob, kv) in enumerate(batch.finished):
                drawn = tuple(table[k, :n].tolist())
                request, window = call.requests[ri], call.windows[ri]
                if kv is not None:
                    self.prefix_cache.put(tuple(request.prompt_ids) + drawn[:-1], Entry(kv, None), request.cache_scope)
                confidence = None  # its tokens' confidences are the columns after the tokens
                if window:
                    confidence = _lowest_group(torch.from_numpy(table[k, width:width + n].view(np.float64)), window)
                call.results[ri][j] = Completion(drawn, reason, logprob, call.prompt_cached[call.prompt_of[ri]],
                                                 confidence)
            for k, ri in enumerate(batch.leaving, start=len(batch.finished)):
                if ri in batch.spent:
                    batch.spent[ri] += int(table[k, -1])
            _report_finished([ri for ri, *_ in batch.finished], call.unfinished, call.results, call.on_finish,
                             call.on_request_done)
            if call.on_dropped is not None:
                for ri, n in batch.spent.items():
                    call.on_dropped(ri, n)

        def admit() -> None:
            """Waiting samples into the free rows: their settings, their prompt's keys and values (each run of
            rows with one prompt: broadcast, no gathered copy) and their first token, from the prompt's logits."""
            nonlocal A
            m = min(call.rows - A, len(call.pending))
            if m <= 0:
                return
            admitted = np.array([call.pending.pop() for _ in range(m)]).reshape(m, 2)
            new = slice(A, A + m)
            ri, j = _upload(admitted.T, dev)
            s["ngen"][new].zero_()  # zero_ and fill_: no scalar sent to the device
            s["lp"][new].zero_()
            live[new].fill_(True)
            s["pos"][new], s["max"][new], s["stop"][new] = call.req_len[ri], call.req_max[ri], call.stop_table[ri]
            s["temp"][new], s["top_p"][new] = call.req_temp[ri], call.req_top_p[ri]
            s["key"][new] = sample_key(call.req_seed[ri], j)
            s["cut"][new].zero_()
            if call.confident:
                s["wsum"][new].zero_()
                s["window"][new], s["top_k"][new], s["floor"][new] = (call.req_window[ri], call.req_top_k[ri],
                                                                      call.req_floor[ri])
            first = A
            for p, run in itertools.groupby(admitted[:, 0].tolist(), key=lambda r: call.prompt_of[r]):
                stop = first + len(list(run))
                cache[:, :, :call.prompt_chunks[p], first:stop] = call.kvs[p][:, :, :call.prompt_chunks[p], None]
                first = stop
            self._static_take(new, call.prompt_logits[call.req_prompt[ri]], call.nucleus, fed=False,
                              confident=call.confident)
            req[new], sample[new] = admitted[:, 0], admitted[:, 1]
            heard[new] = [j == 0 and r in call.streamed for r, j in admitted.tolist()]
            told[new] = 0
            most[new] = [call.limits[r] for r in admitted[:, 0].tolist()]
            pos[new] = [len(call.requests[r].prompt_ids) for r in admitted[:, 0].tolist()]
            left[new] = most[new] - 1
            A += m

        while True:
            ahead = self.overlap and unread is not None and bool((left[:A] > 0).any())
            if ahead:
                launch()  # the device runs this round while the host reads the last one's snapshot
            record()  # the last settle's rows: with overlap their copy came before the round just queued
            snap, unread = (unread.result() if unread is not None else None), None
            if snap is not None:
                snap, drawn = snap[:6 * A].reshape(6, A), snap[6 * A:]
                if streams is not None:
                    rows, span = streams
                    tell(rows, drawn.reshape(len(rows), span), snap[2])
            settle(snap)
            if not ahead:  # nothing queued after their copy: its wait is short, and results reach the caller now
                record()
            admit()
            if not A:  # nothing waits either: admit() fills free rows
                record()
                return
            if not ahead and (left[:A] > 0).any():
                launch()
            unread, queued = snapshot(), 0


@dataclass
class _StaticCall:
    """One `generate` call as static decode runs it (`Engine._static_loop`): the requests, what is done of
    them (filled in as samples finish), and what `generate` built for them."""
    requests: list[SampleRequest]
    pending: list[tuple[int, int]]  # (request, sample) waiting for a row; pop() takes the next
    results: list[list[Completion | None]]
    unfinished: list[int]  # per request: samples not recorded yet
    rows: int  # at most this many active at once
    chunks: int  # the cache chunks a row of this call can reach
    nucleus: bool  # whether any request asks for top-p
    limits: list[int]  # per request: most tokens a sample draws
    req_len: torch.Tensor  # per request on the device: prompt length, and its settings
    req_max: torch.Tensor
    req_temp: torch.Tensor
    req_top_p: torch.Tensor
    req_seed: torch.Tensor
    stop_table: torch.Tensor  # (requests, vocab): the tokens a sample stops at
    ends: list[set[int]]  # the same, for Python
    prompt_of: list[int]  # per request: its distinct prompt
    prompt_cached: list[int]  # per distinct prompt: positions taken from the prefix cache
    kvs: list[torch.Tensor]  # per distinct prompt: its keys and values
    prompt_chunks: list[int]
    prompt_logits: torch.Tensor  # (distinct prompts, vocab): each one's last position's
    req_prompt: torch.Tensor
    on_finish: Callable[[int], None] | None
    on_request_done: Callable[[int, list[Completion]], None] | None
    cancelled: Callable[[], list[int]] | None
    on_dropped: Callable[[int, int], None] | None
    streamed: set[int]  # the requests whose first sample's tokens go to `on_tokens` as they are drawn
    on_tokens: Callable[[list[tuple[int, int]]], None] | None
    confident: bool  # whether any request tracks confidence; per request, its window (0: none), top k and floor
    windows: list[int]
    req_window: torch.Tensor
    req_top_k: torch.Tensor
    req_floor: torch.Tensor


@dataclass
class _Departed:
    """Rows static decode swapped out, whose tokens (and, for a cancelled request's rows, counts) come behind
    the device's next round: `finished` (request, sample, tokens, reason, log-probability, keys and values to
    keep or None), then the cancelled rows' requests (`leaving`), and the tokens the cancelled requests had
    spent before (`spent`)."""
    tokens: _Download | None
    finished: list[tuple]
    leaving: list[int]
    spent: dict[int, int]


class _Download:
    """A device tensor's copy to the host, queued behind the device's work so far: `result()` waits for that
    work (not for what was queued after it) and returns the copy as a numpy array."""

    def __init__(self, t: torch.Tensor, what: str) -> None:
        self.what, self._ready = what, None  # what: the kind of copy, for a reader
        if t.device.type == "cuda":
            stream = torch.cuda.current_stream(t.device)
            self._host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            self._host.copy_(t, non_blocking=True)
            self._ready = torch.cuda.Event()
            self._ready.record(stream)
        else:
            self._host = t.to("cpu", copy=True)

    def result(self) -> np.ndarray:
        if self._ready is not None:
            self._ready.synchronize()
        return self._host.numpy()


def _report_finished(finished: list[int], unfinished: list[int], results: list[list[Completion | None]],
                     on_finish: Callable[[int], None] | None,
                     on_request_done: Callable[[int, list[Completion]], None] | None) -> None:
    """Tell `generate`'s callers of samples just recorded, one request number each: `on_finish(1)` a sample,
    and `on_request_done` for each request whose last sample this was."""
    for ri in finished:
        if on_finish:
            on_finish(1)
        unfinished[ri] -= 1
        if unfinished[ri] == 0 and on_request_done:
            on_request_done(ri, results[ri])


def _upload(values: np.ndarray, device: torch.device) -> torch.Tensor:
    """Integers to the device without waiting for it (from pinned memory on a GPU: the copy is queued)."""
    host = torch.tensor(np.asarray(values, dtype=np.int64))
    return host.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else host.to(device)


def _static_width(rows: int, most: int) -> int:
    """The rows a static step computes for `rows` active ones, at most `most`: a power of two (at least MIN_ROWS)
    up to 256; above that the next multiple of a `WIDTH_STEPS`th of the power of two above `rows` (at least 64,
    so a whole number of the Triton step's programs)."""
    whole = max(MIN_ROWS, 1 << (rows - 1).bit_length())
    if whole > 256:
        part = whole // WIDTH_STEPS
        whole = -(-rows // part) * part
    return min(whole, most)


def _width(rows: int, most: int | None = None) -> int:
    """The rows a step computes for `rows` real ones: at least MIN_ROWS, a multiple of ROW_STEP, at most `most`
    (where there are no more rows to compute)."""
    width = max(MIN_ROWS, -(-rows // ROW_STEP) * ROW_STEP)
    return width if most is None else max(rows, min(width, most))


def _lazy_zeros(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Zeros on the CPU in a private anonymous mapping: the kernel hands each page over zeroed when it is
    first touched, so the tensor costs no time to make and no memory where it is never written."""
    if not hasattr(mmap, "MAP_PRIVATE"):  # not a POSIX system: plain zeros
        return torch.zeros(shape, dtype=dtype)
    memory = mmap.mmap(-1, math.prod(shape) * dtype.itemsize, flags=mmap.MAP_PRIVATE)  # not shared with a fork
    return torch.frombuffer(memory, dtype=dtype).view(shape)  # the tensor keeps the mapping alive


def _token_confidence(logits: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Each row's token confidence (DeepConf): minus the mean log-probability of its k most likely tokens."""
    ranked = F.log_softmax(logits.double(), dim=-1).sort(dim=-1, descending=True).values
    return -ranked.cumsum(-1).gather(-1, (k - 1)[:, None])[:, 0] / k


def _below_floor(wsum: torch.Tensor, window: torch.Tensor, n: torch.Tensor, floor: torch.Tensor) -> torch.Tensor:
    """Whether each row's window, full after its token n, is below its floor by more than rounding: the running
    sum `wsum` and `_lowest_group` round differently, and a floor is often some sample's own confidence, which must
    not be cut."""
    return (window > 0) & (n + 1 >= window) & (wsum / window.clamp(min=1) < floor - FLOOR_TOLERANCE)


def _lowest_group(conf: torch.Tensor, window: int) -> float:
    """The lowest mean over `window` consecutive token confidences (the mean of all, if fewer)."""
    if len(conf) < window:
        return float(conf.mean())
    return float(conf.unfold(0, window, 1).mean(-1).min())


@torch.inference_mode()
def reference_generate(model: TinyLlama, requests: list[SampleRequest]) -> list[list[Completion]]:
    """The slow, obviously-correct generate: full forward per token, one sample at a time."""
    c = model.config
    results = []
    for r in requests:
        stops = {c.eos_token_id, *r.params.stop_ids}
        max_tokens = min(r.params.max_tokens, c.max_position_embeddings - len(r.prompt_ids))
        one = lambda x, dtype=torch.float32: torch.tensor([x], dtype=dtype)  # noqa: E731
        samples = []
        for j in range(r.n):
            ids, out, total = list(r.prompt_ids), [], 0.0
            while len(out) < max_tokens:
                logits = model(torch.tensor([ids]))[:, -1]  # (1, vocab)
                tok, lp = choose_tokens(logits, one(r.params.temperature), one(r.params.top_p),
                                        sample_key(one(r.params.seed, torch.int64), one(j, torch.int64)),
                                        one(len(out), torch.int64))
                out.append(int(tok))
                ids.append(int(tok))
                total += float(lp)
                if int(tok) in stops:
                    break
            reason = FINISH_STOP if out and out[-1] in stops else FINISH_LENGTH
            samples.append(Completion(tuple(out), reason, total))
        results.append(samples)
    return results
