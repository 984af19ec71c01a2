"""A search run for one request: the strategy solving in a task of its own, its events forwarded as they happen.

The strategy is the offline one, untouched: the run sets `SEARCH_EVENTS` (the
listener every `Search` reads when it starts) inside its own task, so only this
request's search reports to it, and each event (a step or sample generated,
scored, pruned, the one chosen) is copied at once into an asyncio.Queue that
the response reads while the search goes on. Cancelling the run (the client
hung up) cancels the strategy's coroutine: it makes no further calls.

Where the policy streams (the tiny core) and the client asked for a stream,
the first sample of the search's first call (of every call, with
`stream_tokens: all`) also arrives token by token (`SEARCH_TOKENS`, called on
the engine's thread): "token" events carry the text as it is generated, and
the "generated" event of that sample then carries only the rest (its closing
newline), so the reasoning reads the same, only sooner.
The first piece is handed to the event loop at once; after it, pieces are
gathered for `flush_s` (the server's `stream_interval_ms`: each hand-over
wakes the event loop, which then competes with the engine's thread for the
interpreter).
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

from thinkscale.serve.plan import Plan
from thinkscale.strategies.base import SEARCH_EVENTS, SEARCH_TOKEN_CALLS, SEARCH_TOKENS
from thinkscale.trace import Node, Trace


@dataclass(frozen=True)
class SearchEvent:
    """One node's part in one event, as it was when the event happened."""

    event: str  # "token", "generated", "scored", "pruned" or "chosen"
    node: int | None  # None for a token: its node does not exist until its step is done
    parent: int | None
    branch: int | None  # the node's ancestor just below the root: nodes that share it share their first step
    text: str  # reasoning this event adds: a generated step or sample (ending in a newline), else ""
    tokens: int
    score: float | None
    answer: str | None
    finish_reason: str | None

    def extra(self) -> dict:
        """One entry of the documented `thinkscale.events` list of a streamed reasoning delta."""
        return {"event": self.event, "node": self.node, "parent": self.parent, "branch": self.branch,
                "score": self.score, "tokens": self.tokens, "answer": self.answer,
                "finish_reason": self.finish_reason, "text": self.text}


def branch_of(trace: Trace, node: Node) -> int | None:
    while node.parent is not None and node.parent != 0:
        node = trace.nodes[node.parent]
    return node.id if node.parent is not None else None


def event_of(event: str, trace: Trace, node: Node, scorer: str | None) -> SearchEvent:
    text = ""
    if event == "generated":
        text = node.text if node.text.endswith("\n") else node.text + "\n"
    score = node.scores.get(scorer) if scorer else next(iter(node.scores.values()), None)
    return SearchEvent(event, node.id, node.parent, branch_of(trace, node), text,
                       node.num_tokens if event == "generated" else 0, score, node.answer, node.finish_reason)


class SearchRun:
    """`plan`'s search, started now in its own task; read `events()` as they come, then `trace()`.

    After the first piece of streamed text, the next is handed over `flush_s` later, with what was drawn meanwhile.
    `stream_tokens`: which of a streamed search's calls stream their text (`ServeConfig.stream_tokens`).
    """

    def __init__(self, plan: Plan, flush_s: float, stream_tokens: Literal["first", "all", "none"]) -> None:
        self.plan, self.flush_s, self.stream_tokens = plan, flush_s, stream_tokens
        self._queue: asyncio.Queue[SearchEvent | None] = asyncio.Queue()
        self.seen: Trace | None = None  # the search's trace, from its start (what a cancelled one spent)
        self._live = ""  # text sent as tokens whose generated event has not come yet
        self._loop = asyncio.get_running_loop()
        self._lock = threading.Lock()
        self._waiting, self._waiting_tokens = "", 0  # tokens drawn, not yet handed to the event loop
        self._handed_at: float | None = None
        self._due = False  # a hand-over is scheduled
        self.ended = False  # `burst` has seen the end
        self.task = asyncio.create_task(self._solve())

    async def _solve(self) -> Trace:
        SEARCH_EVENTS.set(self._listen)  # this task's context only: other requests' searches do not see it
        if self.plan.stream and self.stream_tokens != "none":  # a whole response gains nothing from them
            SEARCH_TOKENS.set(self._tokens)
            SEARCH_TOKEN_CALLS.set(1 if self.stream_tokens == "first" else None)
        plan = self.plan
        try:
            return await plan.strategy.solve(plan.problem, plan.model.task, plan.model.policy, plan.scorer,
                                             plan.budget.to_budget(), plan.seed)
        finally:
            self._hand_over()
            self._queue.put_nowait(None)

    def _tokens(self, text: str) -> None:  # the engine's thread
        with self._lock:
            self._waiting += text
            self._waiting_tokens += 1
            if self._due:
                return  # a hand-over is coming
            now = time.perf_counter()
            wait = 0.0 if self._handed_at is None else self._handed_at + self.flush_s - now
            self._due = True
        if wait <= 0:
            self._loop.call_soon_threadsafe(self._hand_over)
        else:  # what the window gathers goes out when it closes, whether or not more tokens come
            self._loop.call_soon_threadsafe(self._loop.call_later, wait, self._hand_over)

    def _hand_over(self) -> None:
        """Queue the tokens drawn so far as one token event."""
        with self._lock:
            text, tokens, self._waiting, self._waiting_tokens = self._waiting, self._waiting_tokens, "", 0
            self._due = False
            if text:
                self._handed_at = time.perf_counter()
        if text:
            self._live += text
            self._queue.put_nowait(SearchEvent("token", None, None, None, text, tokens, None, None, None))

    def _listen(self, event: str, trace: Trace, nodes: list[Node]) -> None:
        self.seen = trace
        if event == "generated":
            self._hand_over()  # the streamed sample's last tokens go before its generated event
        for node in nodes:
            item = event_of(event, trace, node, self.plan.scorer_name)
            if event == "generated" and self._live:
                if item.text.startswith(self._live):  # the streamed sample: only the rest is new
                    item = dataclasses.replace(item, text=item.text[len(self._live):])
                self._live = ""
            self._queue.put_nowait(item)

    async def events(self) -> AsyncIterator[SearchEvent]:
        """Every event of the search, as it happens, until the search ends (then `trace()` is ready)."""
        while (item := await self._queue.get()) is not None:
            yield item

    async def burst(self, until: float | None = None) -> list[SearchEvent] | None:
        """The next event and every other one that comes by `until` (a `time.perf_counter()`; None: those
        already waiting); None once the search has ended (or failed). `ended` is True once a burst has met the
        end: the events it returned were the search's last.

        A search emits its events in bursts (a round's steps, then their
        scores): the response sends what one call returns in one chunk. An
        event that comes after `until` (a quiet spell) returns at once; one
        that comes before it waits for whatever else comes by then, so the
        stream sends at most one chunk a window. The end never waits.
        """
        item = await self._queue.get()
        burst: list[SearchEvent] = []
        while item is not None:
            if burst and item.event == burst[-1].event == "token":  # tokens ready together go out as one piece
                burst[-1] = dataclasses.replace(burst[-1], text=burst[-1].text + item.text,
                                                tokens=burst[-1].tokens + item.tokens)
            else:
                burst.append(item)
            if not self._queue.empty():
                item = self._queue.get_nowait()
                continue
            wait = 0.0 if until is None else until - time.perf_counter()
            if wait <= 0:
                return burst
            try:  # not wait_for: on Python 3.11 it can swallow a cancel (a hang-up) that meets an event
                async with asyncio.timeout(wait):
                    item = await self._queue.get()
            except TimeoutError:
                return burst
        self.ended = True
        self._queue.put_nowait(None)  # the end stays queued for the next call (and for `events`)
        return burst or None

    async def trace(self) -> Trace:
        """The finished Trace; raises what the strategy raised."""
        return await self.task

    def cancel(self) -> None:
        if not self.task.done():
            self.task.cancel()
