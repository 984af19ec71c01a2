"""The `tiny` policy: the built-in tiny core behind the Policy contract.

Requests from many concurrent coroutines are gathered into one engine batch
(policies/batching.py): while the engine works on one batch on the torch
thread, new requests queue up and go together into the next. Each caller gets
its results as soon as its own requests are done, while the batch runs on.
Strategies never see this.
"""

from __future__ import annotations

import math

import torch

from thinkscale import torch_thread
from thinkscale.policies.base import Capabilities, Generation, GenerationRequest, GenerationResult, Policy
from thinkscale.policies.batching import CallerBatcher, cut
from thinkscale.tiny import DtypeName, checkpoint
from thinkscale.tiny.engine import Engine, SampleRequest, SamplingParams, dtype_named
from thinkscale.trace import FINISH_STOP


class TinyPolicy(Policy):
    name = "tiny"
    capabilities = Capabilities(native_n=True, prefix_caching=True, logprobs=True, confidence=True, streams=True,
                                reports_cuts=True)

    def __init__(self, checkpoint_name: str = "arithmetic", max_rows: int = 1024, threads: int | None = None,
                 prefix_cache_mb: float = 512, dtype: DtypeName = "float32", device: str = "cpu",
                 cpu_kernel: bool | None = None) -> None:
        """`prefix_cache_mb`: memory for the keys and values of prompts and steps already computed, which
        later prompts start from (a step search's next step reads only the new tokens). Exact: it changes
        what is computed, never a sample (tiny/prefix_cache.py). 0 turns it off. `dtype`: "float32", or
        "bfloat16" (faster where the CPU or GPU has bfloat16 units; samples then differ from float32's and
        may change with what shares their batch: tiny/engine.py). `device`: "cpu", or "cuda" ("cuda:N") for
        a GPU, where the engine decodes in steps captured in CUDA graphs (tiny/engine.py, "Static decode").
        `cpu_kernel`: on a CPU, attention in the engine's C kernel, built on first use (tiny/cpu_kernel.py):
        faster, and rounded otherwise than torch, so samples differ where two tokens nearly tied; default: on
        where it builds (no C compiler: the torch path), unless $THINKSCALE_CPU_KERNEL is 0; False: the torch
        path."""
        if prefix_cache_mb < 0:
            raise ValueError(f"prefix_cache_mb must be >= 0, got {prefix_cache_mb}")
        torch_dtype = dtype_named(dtype)
        if device.split(":")[0] not in ("cpu", "cuda"):
            raise ValueError(f"device must be cpu or cuda (cuda:N), got {device!r}")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: this torch sees no CUDA GPU (torch {torch.__version__})")

        def load() -> tuple:
            if threads is not None:
                torch.set_num_threads(threads)
            ck = checkpoint.load(checkpoint_name)
            return ck, Engine(ck.model, max_rows=max_rows, prefix_cache_bytes=int(prefix_cache_mb * 2**20),
                              dtype=torch_dtype, device=device, cpu_kernel=cpu_kernel)

        self.checkpoint, self.engine = torch_thread.call(load)  # all torch work on one thread: see torch_thread.py
        self.tokenizer = self.checkpoint.tokenizer
        self._batcher = CallerBatcher(self._run_batch)
        self.on_samples_done = None  # optional callback(count), e.g. a progress bar

    def flops_per_token(self) -> float:
        return self.engine.flops_per_token()

    def release(self, cache_scope: object) -> None:
        if self.engine.prefix_cache is not None:
            self.engine.prefix_cache.release(cache_scope)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text))

    # -- translation to and from the engine ----------------------------------
    def _stop_ids(self, stop: tuple[str, ...]) -> tuple[tuple[int, ...], tuple[str, ...]]:
        """Single-character stop strings become stop tokens; longer ones are cut after."""
        ids = tuple(self.tokenizer.ids[s] for s in stop if s in self.tokenizer.ids)
        return ids, tuple(s for s in stop if s not in self.tokenizer.ids)

    def _to_engine(self, r: GenerationRequest) -> SampleRequest:
        stop_ids, _ = self._stop_ids(r.stop)
        confidence = {}
        if r.confidence is not None:
            floor = r.confidence.floor
            confidence = {"confidence_window": r.confidence.window, "confidence_top_k": r.confidence.top_k,
                          "confidence_floor": -math.inf if floor is None else floor}
        params = SamplingParams(temperature=r.temperature, top_p=r.top_p, max_tokens=r.max_tokens,
                                stop_ids=stop_ids, seed=r.seed, stream=self._streams(r), **confidence)
        return SampleRequest(prompt_ids=tuple(self.tokenizer.encode(r.prompt)), n=r.n, params=params,
                             cache_scope=r.cache_scope)

    def _streams(self, r: GenerationRequest) -> bool:
        """Whether `r`'s first sample is streamed: it asks, and its stop strings are single tokens (a longer
        one could only be cut once whole, after its first characters had gone out)."""
        return r.on_text is not None and not self._stop_ids(r.stop)[1]

    def _from_engine(self, r: GenerationRequest, completions: list, prompt_tokens: int) -> GenerationResult:
        stop_ids, long_stops = self._stop_ids(r.stop)
        gens = []
        for c in completions:
            ids, matched = list(c.token_ids), None
            if c.finish_reason == FINISH_STOP and ids and ids[-1] in stop_ids:
                matched = self.tokenizer.decode(ids[-1:])
                ids = ids[:-1]  # the stop string is not part of the text
            text, reason = self.tokenizer.decode(ids), c.finish_reason
            for s in long_stops:
                if s in text:
                    text, reason, matched = text[: text.index(s)], FINISH_STOP, s
            gens.append(Generation(text=text, num_tokens=len(c.token_ids), finish_reason=reason, logprob=c.logprob,
                                   stop_string=matched, confidence=c.confidence))
        cached = completions[0].prompt_cached if completions else 0
        return GenerationResult(generations=tuple(gens), prompt_tokens=prompt_tokens, cached_prompt_tokens=cached)

    # -- batching across callers ---------------------------------------------
    async def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        limit = self.checkpoint.model.config.max_position_embeddings
        for r in requests:  # fail here, in the caller, not in a batch shared with others
            if len(self.tokenizer.encode(r.prompt)) >= limit:
                raise ValueError(f"a prompt of {len(r.prompt) + 1} tokens does not fit the tiny core's {limit} positions")
        return await self._batcher.submit(requests)

    def _run_batch(self, requests: list[GenerationRequest], deliver, cancelled) -> None:
        """On the torch thread: one engine batch; each request is delivered as soon as its samples are done,
        and the rows of a request whose caller gave up are dropped at once."""
        engine_requests = [self._to_engine(r) for r in requests]

        def request_done(i: int, completions: list) -> None:
            deliver(i, self._from_engine(requests[i], list(completions), len(engine_requests[i].prompt_ids)))

        ends = [set(r.params.stop_ids) | {self.engine.eos_id} for r in engine_requests]

        def tokens_drawn(drawn: list[tuple[int, int]]) -> None:  # the text, never the end or a stop token
            for i, token in drawn:
                if token not in ends[i]:
                    requests[i].on_text(self.tokenizer.decode([token]))

        streaming = any(r.params.stream for r in engine_requests)
        self.engine.generate(engine_requests, self.on_samples_done, request_done, cancelled,
                             tokens_drawn if streaming else None, lambda i, tokens: cut(requests[i], tokens))
