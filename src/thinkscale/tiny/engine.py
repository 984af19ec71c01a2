"""Batched sampling for the tiny core: shared prompt KV, continuous batching.

Each distinct prompt is run once (prefill) and its keys and values are copied
into the cache row of every sample drawn from it. Samples from many prompts
share one batch of rows; a row that finishes (end token, stop token or length)
is swapped out at once and a waiting sample takes its place, so the batch never
carries dead rows and the active rows always sit at the front of the cache.

Randomness is counter-based: the Gumbel noise for sample j of a request at step
t is a hash of (seed, j, t, token), so a sample does not depend on which other
samples shared its batch. Same seed, same samples; and the slow `reference_generate`
beside the engine draws the same tokens (a test holds them equal).

A sample also does not depend on its batch numerically: a resumed run, which
batches fewer problems together, must draw exactly what the uninterrupted run
drew. Each prompt is prefilled on its own; decode steps run on at least
`MIN_ROWS` rows (below that the CPU matmul takes another path with other
rounding); and attention walks the cache in fixed chunks of `CHUNK` positions
with an online softmax, so a row's sums never depend on how long the other
rows in its batch are (a fully masked trailing chunk adds exact zeros).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from thinkscale.budget import forward_flops_per_token
from thinkscale.tiny.model import TinyLlama, apply_rope, rope_tables
from thinkscale.trace import FINISH_LENGTH, FINISH_STOP

_M32 = 0xFFFFFFFF
MIN_ROWS = 16  # matmuls with fewer rows round differently on the CPU (below 12 rows with 2 threads)
CHUNK = 32  # attention reduces over fixed chunks of cache positions


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    max_tokens: int = 128
    stop_ids: tuple[int, ...] = ()  # besides the end token
    seed: int = 0


@dataclass(frozen=True)
class SampleRequest:
    prompt_ids: tuple[int, ...]
    n: int = 1
    params: SamplingParams = field(default_factory=SamplingParams)


@dataclass(frozen=True)
class Completion:
    token_ids: tuple[int, ...]  # generated tokens, the stop/end token included
    finish_reason: str
    logprob: float  # sum of the model's log-probabilities (temperature 1) of token_ids


def _fmix32(h: torch.Tensor) -> torch.Tensor:
    """murmur3's finaliser on int64 tensors holding 32-bit values."""
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B) & _M32
    h = h ^ (h >> 13)
    h = (h * 0xC2B2AE35) & _M32
    return h ^ (h >> 16)


def gumbel_noise(seed: torch.Tensor, sample: torch.Tensor, step: torch.Tensor, vocab: int) -> torch.Tensor:
    """(rows, vocab) Gumbel noise, a pure function of (seed, sample index, step, token)."""
    v = torch.arange(vocab, dtype=torch.int64, device=seed.device)
    h = _fmix32((seed & _M32) ^ 0x9E3779B9)
    h = _fmix32(h ^ (sample & _M32))
    h = _fmix32(h ^ (step & _M32))[:, None]  # (rows, 1)
    h = _fmix32(h ^ (v * 0x27D4EB2F & _M32))  # (rows, vocab)
    u = (h.double() + 0.5) / 4294967296.0
    return -torch.log(-torch.log(u)).float()


def choose_tokens(
    logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor,
    seed: torch.Tensor, sample: torch.Tensor, step: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick one token per row; returns (tokens, their log-probability at temperature 1).

    logits (rows, vocab) float32; the other arguments are per-row tensors.
    """
    logprobs = F.log_softmax(logits, dim=-1)
    greedy = temperature <= 0
    scaled = logits / torch.where(greedy, torch.ones_like(temperature), temperature)[:, None]
    if bool((top_p < 1).any()):
        sorted_logits, order = scaled.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token once the tokens before it already hold top_p of the mass
        drop_sorted = (probs.cumsum(-1) - probs) >= top_p[:, None]
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        scaled = scaled.masked_fill(drop, float("-inf"))
    noisy = scaled + gumbel_noise(seed, sample, step, logits.shape[-1])
    tokens = torch.where(greedy, logits.argmax(-1), noisy.argmax(-1))
    return tokens, logprobs.gather(-1, tokens[:, None])[:, 0]


class Engine:
    """Continuous-batching sampler over one TinyLlama's weights."""

    def __init__(self, model: TinyLlama, max_rows: int = 1024, device: str | torch.device | None = None) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows must be at least 1, got {max_rows}")
        self.device = torch.device(device) if device else next(model.parameters()).device
        model = model.to(self.device).eval()
        self.model = model
        self.config = c = model.config
        self.max_rows = max_rows
        self.eos_id = c.eos_token_id
        layers = model.model.layers
        with torch.no_grad():
            # Fused projections: one matmul for q, k, v and one for gate, up.
            self.w_qkv = [torch.cat([l.self_attn.q_proj.weight, l.self_attn.k_proj.weight,
                                     l.self_attn.v_proj.weight]).T.contiguous() for l in layers]  # (h, 3h)
            self.w_o = [l.self_attn.o_proj.weight.T.contiguous() for l in layers]  # (h, h)
            self.w_gu = [torch.cat([l.mlp.gate_proj.weight, l.mlp.up_proj.weight]).T.contiguous() for l in layers]
            self.w_down = [l.mlp.down_proj.weight.T.contiguous() for l in layers]  # (i, h)
            self.norm1 = [l.input_layernorm.weight.detach() for l in layers]
            self.norm2 = [l.post_attention_layernorm.weight.detach() for l in layers]
            self.norm_f = model.model.norm.weight.detach()
            self.embed = model.model.embed_tokens.weight.detach()
            self.w_head = model.lm_head.weight.T.contiguous()  # (h, vocab)
            cos, sin = rope_tables(c, torch.arange(c.max_position_embeddings, device=self.device))
            self.cos, self.sin = cos.contiguous(), sin.contiguous()  # (positions, head_dim)

    def flops_per_token(self) -> float:
        """2 x (non-embedding parameters): the usual estimate of a forward pass."""
        return forward_flops_per_token(self.config.num_parameters(), self.config.vocab_size * self.config.hidden_size)

    def _rms(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.config.rms_norm_eps))

    # -- prefill -------------------------------------------------------------
    @torch.inference_mode()
    def prefill(self, prompts: list[tuple[int, ...]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run prompts once: keys and values (layers, 2, P, H, Lmax, D) and last logits (P, vocab)."""
        c = self.config
        lengths = torch.tensor([len(p) for p in prompts], device=self.device)
        L = int(lengths.max())
        ids = torch.full((len(prompts), L), c.pad_token_id, dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, : len(p)] = torch.tensor(p)
        ids = ids.to(self.device)
        P, H, D = len(prompts), c.num_attention_heads, c.head_dim
        x = F.embedding(ids, self.embed)  # (P, L, h)
        cos, sin = self.cos[:L], self.sin[:L]
        kv = torch.empty(c.num_hidden_layers, 2, P, H, L, D, device=self.device)
        for i in range(c.num_hidden_layers):
            qkv = self._rms(x, self.norm1[i]) @ self.w_qkv[i]  # (P, L, 3h)
            q, k, v = qkv.view(P, L, 3, H, D).permute(2, 0, 3, 1, 4)  # each (P, H, L, D)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            kv[i, 0], kv[i, 1] = k, v
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + y.transpose(1, 2).reshape(P, L, -1) @ self.w_o[i]
            g, u = (self._rms(x, self.norm2[i]) @ self.w_gu[i]).chunk(2, dim=-1)
            x = x + (F.silu(g) * u) @ self.w_down[i]
        last = x[torch.arange(P, device=self.device), lengths - 1]  # (P, h)
        return kv, self._rms(last, self.norm_f) @ self.w_head, lengths

    # -- one decode step over the active rows ---------------------------------
    # The cache is chunk-major, (layers, 2, chunks, rows, H, CHUNK, D), so that
    # one chunk of the first n rows is one contiguous block. Rows sit roughly in
    # order of admission, so longer rows come first and chunk c is needed only by
    # a prefix of the rows: short rows skip the long rows' chunks. (Re-sorting
    # rows by position now and then measured no faster: the copy eats the gain.)
    def _decode(self, cache: torch.Tensor, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Feed `tokens` (A,) at positions `pos` (A,) for rows 0..A-1; returns logits (A, vocab)."""
        c = self.config
        A, H, D = tokens.shape[0], c.num_attention_heads, c.head_dim
        rows = torch.arange(A, device=self.device)
        chunk_of, offset = pos // CHUNK, pos % CHUNK
        cos, sin = self.cos[pos][:, None, :], self.sin[pos][:, None, :]  # (A, 1, D)
        # For each chunk: how many leading rows need it, and their additive mask.
        offsets = torch.arange(CHUNK, device=self.device)
        plan = []
        for chunk in range(int(chunk_of.max()) + 1):
            needed = (chunk_of >= chunk).nonzero()
            n = int(needed[-1]) + 1
            visible = chunk * CHUNK + offsets[None, :] <= pos[:n, None]  # (n, CHUNK)
            bias = torch.zeros(n, 1, 1, CHUNK, device=self.device).masked_fill_(~visible[:, None, None, :],
                                                                                 float("-inf"))
            plan.append((chunk, n, bias))
        scale = 1.0 / math.sqrt(D)
        x = self.embed[tokens]  # (A, h)
        for i in range(c.num_hidden_layers):
            qkv = self._rms(x, self.norm1[i]) @ self.w_qkv[i]  # (A, 3h)
            q, k, v = qkv.view(A, 3, H, D).unbind(1)  # each (A, H, D)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            cache[i, 0, chunk_of, rows, :, offset] = k
            cache[i, 1, chunk_of, rows, :, offset] = v
            y = self._attend((q * scale)[:, :, None, :], cache[i], plan)  # (A, H, 1, D)
            x = x + y.reshape(A, -1) @ self.w_o[i]
            g, u = (self._rms(x, self.norm2[i]) @ self.w_gu[i]).chunk(2, dim=-1)
            x = x + (F.silu(g) * u) @ self.w_down[i]
        return self._rms(x, self.norm_f) @ self.w_head  # (A, vocab)

    @staticmethod
    def _attend(q: torch.Tensor, kv: torch.Tensor, plan: list) -> torch.Tensor:
        """One query per row against its cached positions, chunk by chunk (online softmax).

        q (A, H, 1, D), already scaled; kv (2, chunks, rows, H, CHUNK, D); plan lists
        (chunk, n, bias): chunk `chunk` is read by the first n rows only. A row
        that skips a chunk has it fully masked, where the update below would be
        an exact no-op, so skipping changes no bit of its result. Plain matmuls
        beat the CPU flash kernel for one query per row.
        """
        m = l = acc = None
        for chunk, n, bias in plan:
            keys, values = kv[0, chunk, :n], kv[1, chunk, :n]  # (n, H, CHUNK, D), contiguous
            scores = torch.matmul(q[:n], keys.transpose(-1, -2)).add_(bias)  # (n, H, 1, CHUNK)
            if m is None:  # chunk 0: every row needs it, and it holds position 0, so the max is finite
                m = scores.amax(-1, keepdim=True)
                p = (scores - m).exp_()
                l, acc = p.sum(-1, keepdim=True), torch.matmul(p, values)
                continue
            m_new = torch.maximum(m[:n], scores.amax(-1, keepdim=True))
            alpha = (m[:n] - m_new).exp_()
            p = (scores - m_new).exp_()  # exactly 0 where masked
            l[:n] = l[:n] * alpha + p.sum(-1, keepdim=True)
            acc[:n] = acc[:n] * alpha + torch.matmul(p, values)
            m[:n] = m_new
        return acc / l

    def _cache_for(self, chunks: int, rows: int) -> torch.Tensor:
        """A KV cache of at least this size, kept between calls (allocating ~1 GB costs time).

        Zeros, not empty, when new: masked positions are multiplied by 0, and
        0 x NaN is NaN. Reused, it holds only finite values written earlier.
        """
        c = self.config
        have = getattr(self, "_cache", None)
        if have is None or have.shape[2] < chunks or have.shape[3] < rows:
            if have is not None:  # grow to cover both the old and the new shape, so calls do not thrash
                chunks, rows = max(chunks, have.shape[2]), max(rows, have.shape[3])
            self._cache = None  # free the old one first
            self._cache = torch.zeros(c.num_hidden_layers, 2, chunks, rows, c.num_attention_heads, CHUNK,
                                      c.head_dim, device=self.device, dtype=self.embed.dtype)
        return self._cache[:, :, :chunks, :rows]

    # -- the sampling loop ----------------------------------------------------
    @torch.inference_mode()
    def generate(
        self, requests: list[SampleRequest], on_finish: Callable[[int], None] | None = None,
        on_request_done: Callable[[int, list[Completion]], None] | None = None,
    ) -> list[list[Completion]]:
        """All samples of all requests; result[r][j] is sample j of request r.

        `on_finish(1)` is called as each sample finishes, and
        `on_request_done(r, samples)` as soon as every sample of request r has,
        so that callers can use early results while the batch runs on.
        """
        c, dev = self.config, self.device
        if not requests:
            return []
        for r in requests:
            if len(r.prompt_ids) >= c.max_position_embeddings:
                raise ValueError(f"prompt of {len(r.prompt_ids)} tokens does not fit the model's "
                                 f"{c.max_position_embeddings} positions")
        # Prefill each distinct prompt once.
        distinct: dict[tuple[int, ...], int] = {}
        for r in requests:
            distinct.setdefault(tuple(r.prompt_ids), len(distinct))
        # One prompt at a time: a prompt's keys and values must not depend on the
        # other prompts of the batch (their padding would change the rounding).
        parts = [self.prefill([p]) for p in distinct]
        Lp = max(kv.shape[4] for kv, _, _ in parts)
        prompt_kv = torch.zeros(c.num_hidden_layers, 2, len(parts), c.num_attention_heads, Lp, c.head_dim,
                                device=dev)
        for i, (kv, _, _) in enumerate(parts):
            prompt_kv[:, :, i, :, :kv.shape[4]] = kv[:, :, 0]
        prompt_logits = torch.cat([logits for _, logits, _ in parts])
        prompt_len = torch.cat([length for _, _, length in parts])
        req_prompt = torch.tensor([distinct[tuple(r.prompt_ids)] for r in requests], device=dev)
        req_len = prompt_len[req_prompt]
        req_max = torch.tensor([min(r.params.max_tokens, c.max_position_embeddings - len(r.prompt_ids))
                                for r in requests], device=dev)
        req_temp = torch.tensor([float(r.params.temperature) for r in requests], device=dev)
        req_top_p = torch.tensor([float(r.params.top_p) for r in requests], device=dev)
        req_seed = torch.tensor([r.params.seed for r in requests], dtype=torch.int64, device=dev)
        stop_table = torch.zeros(len(requests), c.vocab_size, dtype=torch.bool, device=dev)
        stop_table[:, self.eos_id] = True
        for i, r in enumerate(requests):
            stop_table[i, list(r.params.stop_ids)] = True

        pending = [(ri, j) for ri, r in enumerate(requests) for j in range(r.n)]
        pending.reverse()  # pop() from the end takes them in order
        results: list[list[Completion | None]] = [[None] * r.n for r in requests]
        unfinished = [r.n for r in requests]

        R = min(self.max_rows, len(pending))
        T_cap = -(-int(min(c.max_position_embeddings, int((req_len + req_max).max()))) // CHUNK) * CHUNK
        R_alloc = max(R, MIN_ROWS)
        cache = self._cache_for(T_cap // CHUNK, R_alloc)
        # Per-row state; rows 0..A-1 are active.
        row_req = torch.zeros(R_alloc, dtype=torch.long, device=dev)
        row_sample = torch.zeros(R_alloc, dtype=torch.long, device=dev)
        row_pos = torch.zeros(R_alloc, dtype=torch.long, device=dev)  # position the row's last token will be fed at
        row_tok = torch.zeros(R_alloc, dtype=torch.long, device=dev)  # last token drawn, not yet fed
        row_ngen = torch.zeros(R_alloc, dtype=torch.long, device=dev)
        row_lp = torch.zeros(R_alloc, dtype=torch.float64, device=dev)
        out_tokens = torch.zeros(R_alloc, int(req_max.max()), dtype=torch.long, device=dev)
        A = 0

        def finish_rows(done: torch.Tensor) -> None:
            """Record finished rows and swap the last active rows into their slots."""
            nonlocal A
            for row in sorted(done.tolist(), reverse=True):
                ri, j, n = int(row_req[row]), int(row_sample[row]), int(row_ngen[row])
                last = int(out_tokens[row, n - 1])
                reason = FINISH_STOP if bool(stop_table[ri, last]) else FINISH_LENGTH
                results[ri][j] = Completion(tuple(out_tokens[row, :n].tolist()), reason, float(row_lp[row]))
                A -= 1
                if row != A:  # move the last active row into the freed slot
                    cache[:, :, :, row] = cache[:, :, :, A]
                    for t in (row_req, row_sample, row_pos, row_tok, row_ngen, row_lp, out_tokens):
                        t[row] = t[A]
                if on_finish:
                    on_finish(1)
                unfinished[ri] -= 1
                if unfinished[ri] == 0 and on_request_done:
                    on_request_done(ri, results[ri])

        def take_token(rows: torch.Tensor, logits: torch.Tensor) -> None:
            """Draw the next token for `rows` and finish those that stop or run out."""
            req = row_req[rows]
            tok, lp = choose_tokens(logits, req_temp[req], req_top_p[req], req_seed[req],
                                    row_sample[rows], row_ngen[rows])
            out_tokens[rows, row_ngen[rows]] = tok
            row_tok[rows] = tok
            row_lp[rows] += lp.double()
            row_ngen[rows] += 1
            done = stop_table[req, tok] | (row_ngen[rows] >= req_max[req])
            if bool(done.any()):
                finish_rows(rows[done])

        while pending or A:
            # Admit waiting samples into free rows: copy their prompt's KV, draw their first token.
            if pending and A < R:
                m = min(R - A, len(pending))
                admitted = [pending.pop() for _ in range(m)]
                rows = torch.arange(A, A + m, device=dev)
                req = torch.tensor([a[0] for a in admitted], device=dev)
                row_req[rows], row_sample[rows] = req, torch.tensor([a[1] for a in admitted], device=dev)
                row_pos[rows], row_ngen[rows], row_lp[rows] = req_len[req], 0, 0.0
                prompts = prompt_kv[:, :, req_prompt[req]]  # (layers, 2, m, H, Lp, D)
                for chunk, start in enumerate(range(0, Lp, CHUNK)):
                    width = min(CHUNK, Lp - start)
                    cache[:, :, chunk, A:A + m, :, :width] = prompts[..., start:start + width, :]
                A += m
                take_token(rows, prompt_logits[req_prompt[req]])
                continue  # finished-at-once rows may have freed slots
            active = torch.arange(A, device=dev)
            width = max(A, MIN_ROWS)  # rows past A are idle slots, computed and ignored
            pos = row_pos[:width].clone()
            pos[A:] = 0  # an idle slot writes at its own position 0, rewritten on admission
            logits = self._decode(cache, row_tok[:width], pos)[:A]
            row_pos[:A] += 1
            take_token(active, logits)
        return results  # type: ignore[return-value]


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
                                        one(r.params.seed, torch.int64), one(j, torch.int64), one(len(out), torch.int64))
                out.append(int(tok))
                ids.append(int(tok))
                total += float(lp)
                if int(tok) in stops:
                    break
            reason = FINISH_STOP if out and out[-1] in stops else FINISH_LENGTH
            samples.append(Completion(tuple(out), reason, total))
        results.append(samples)
    return results
