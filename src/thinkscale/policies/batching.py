"""One caller-batcher for the local policies (tiny core, transformers): many callers, one batch at a time.

Strategies are written for one problem, and the runner solves many problems
concurrently, so requests arrive from many coroutines at once. The batcher
gathers whatever has arrived into one batch and runs it on the torch thread
(torch_thread.py); requests that arrive meanwhile wait for the next batch.
Each caller gets its results as soon as its own requests are done, while the
batch runs on, and a failure is handed to the callers of that batch only.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Callable

from thinkscale import torch_thread
from thinkscale.policies.base import GenerationRequest, GenerationResult

Deliver = Callable[[int, GenerationResult], None]  # (index in the batch, its result); callable from any thread
Cancelled = Callable[[], list[int]]  # indices in the batch whose callers gave up (it only grows)
RunBatch = Callable[[list[GenerationRequest], Deliver, Cancelled], None]  # runs on the torch thread


@dataclass
class _Pending:
    requests: list[GenerationRequest]
    future: asyncio.Future
    results: list[GenerationResult | None]
    left: int
    cancelled: bool = False  # the caller gave up (a deadline, a closed connection): its work may stop


def cut(request: GenerationRequest, tokens: int) -> None:
    """Report to `request`'s caller, who gave up on it, the tokens it had generated."""
    if request.on_cut is not None:
        request.on_cut(tokens)


class CallerBatcher:
    """Gathers concurrent callers' requests into batches for `run_batch`, one batch at a time.

    `run_batch(requests, deliver, cancelled)` runs on the torch thread and
    calls `deliver(i, result)` once for each request, in any order, as each
    finishes; `cancelled()` lists the requests whose callers gave up, whose
    work it may stop at once (and then need not deliver, but must report what
    they had generated: `cut(request, tokens)`).

    Every request whose caller gave up is reported once: here if it never
    started or had been delivered (before or after), by `run_batch` if it
    stopped it while it ran.
    """

    def __init__(self, run_batch: RunBatch) -> None:
        self._run_batch = run_batch
        self._queue: list[_Pending] = []
        self._drainer: asyncio.Task | None = None

    async def submit(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        """Results for `requests`, in order, once all of them are done."""
        if not requests:
            return []
        pending = _Pending(list(requests), asyncio.get_running_loop().create_future(), [None] * len(requests),
                           len(requests))
        self._queue.append(pending)
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain())
        try:
            return await pending.future
        except asyncio.CancelledError:  # the caller gave up: its rows stop, or it never starts
            pending.cancelled = True
            if any(p is pending for p in self._queue):  # not in a batch yet: it never starts, nothing generated
                self._queue = [p for p in self._queue if p is not pending]
                for request in pending.requests:
                    cut(request, 0)
                raise
            for request, result in zip(pending.requests, pending.results):  # what was done is reported now
                if result is not None:
                    cut(request, sum(g.num_tokens for g in result.generations))
            raise

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            await asyncio.sleep(0)  # let every coroutine that is ready add its requests
            for p in self._queue:
                if p.cancelled:  # never started: nothing generated
                    for request in p.requests:
                        cut(request, 0)
            batch, self._queue = [p for p in self._queue if not p.cancelled], []
            flat = [(p, i) for p in batch for i in range(len(p.requests))]
            if not flat:
                continue

            def cancelled() -> list[int]:  # torch thread; `p.cancelled` is set on the loop, a plain flag
                return [k for k, (p, _) in enumerate(flat) if p.cancelled]

            def deliver_on_loop(k: int, result: GenerationResult) -> None:
                p, i = flat[k]
                if p.cancelled:  # done after its caller gave up: what it generated is reported instead
                    cut(p.requests[i], sum(g.num_tokens for g in result.generations))
                    return
                p.results[i] = result
                p.left -= 1
                if p.left == 0 and not p.future.done():  # a caller that gave up (cancelled) is skipped
                    p.future.set_result(p.results)

            def deliver(k: int, result: GenerationResult) -> None:  # torch thread
                loop.call_soon_threadsafe(deliver_on_loop, k, result)

            try:
                await torch_thread.run(self._run_batch, [p.requests[i] for p, i in flat], deliver, cancelled)
            except Exception as e:  # hand the error to every caller of this batch still waiting
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(e)
            await asyncio.sleep(0)  # deliveries scheduled by the torch thread run before the next batch
