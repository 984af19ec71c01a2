"""The ASGI app: OpenAI's endpoints in front of thinkscale's strategies.

    POST /v1/chat/completions   POST /v1/completions   GET /v1/models   GET /health   GET /metrics

A completion request goes: key checked (401), the key's tokens in the last
minute checked (429), a place among the searches in flight taken (429), the
body read within its size limit (413) and turned into a Plan (400/404 naming
what is wrong), then the search runs in a task of its own (events.py). A
stream sends each step or sample as a reasoning delta while the search goes
on, then the chosen solution as content, then the usage; a whole response
waits for the search and returns the same in one body. If the client goes
away, the search is cancelled: it makes no further calls. What a
search spent is charged to its key's tokens per minute when it ends (answered,
failed or cancelled), and with a trace store an answered request's trace is
written there under its key's id.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from thinkscale.budget import BudgetExceeded
from thinkscale.serve.auth import Keys
from thinkscale.serve.config import ServeConfig
from thinkscale.serve.errors import APIError, bad_request
from thinkscale.serve.events import SearchEvent, SearchRun
from thinkscale.serve.limits import Gate, TokenWindow, read_json
from thinkscale.serve.metrics import Metrics
from thinkscale.serve.models import ServedModel, load_models
from thinkscale.serve.plan import make_plan, model_ids
from thinkscale.serve.shapes import Shaper
from thinkscale.store import RunStore

log = logging.getLogger("thinkscale.serve")
ENDPOINTS = {"chat": "/v1/chat/completions", "completion": "/v1/completions"}


def search_error(error: BaseException) -> APIError:
    """What a failed search tells the client: its own words for a request it cannot serve, else a 500."""
    if isinstance(error, BudgetExceeded):
        return bad_request(str(error), "budget", "budget_too_small")
    if isinstance(error, ValueError):
        return bad_request(str(error))
    log.error("search failed", exc_info=error)
    return APIError(500, f"the search failed ({type(error).__name__}); the server's log has the details")


def sse(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, separators=(',', ':'))}\n\n"


class Flight:
    """One request's place in the server, from its key check to its last byte; `land` is idempotent."""

    def __init__(self, server: Server, endpoint: str, key: str) -> None:
        self.server, self.endpoint, self.key = server, endpoint, key
        self.started = time.perf_counter()
        self.strategy = ""
        self.run: SearchRun | None = None
        self._landed = False
        if server.tokens is not None:
            server.tokens.check(key)
        server.gate.enter(key)

    def start(self, run: SearchRun) -> None:
        self.run, self.strategy = run, run.plan.strategy_name
        self.server.metrics.in_flight.labels(self.strategy).inc()
        if self.server.tokens is not None:  # charged once the search has ended, cut calls counted
            run.task.add_done_callback(self._charge)

    def _charge(self, task: asyncio.Task) -> None:
        spent = self.run.seen if self.run is not None else None
        if spent is not None:
            self.server.tokens.charge(self.key, spent.usage.prompt_tokens + spent.usage.generated_tokens)

    def land(self, status: int, trace: Any = None) -> None:
        if self._landed:
            return
        self._landed = True
        metrics = self.server.metrics
        self.server.gate.leave(self.key)
        if self.run is not None:
            metrics.in_flight.labels(self.strategy).dec()
            if not self.run.task.done():
                self.run.cancel()
                metrics.cancelled.labels(self.strategy).inc()
        if trace is not None:
            metrics.generated_tokens.labels(self.strategy).inc(trace.usage.generated_tokens)
            metrics.prompt_tokens.labels(self.strategy).inc(trace.usage.prompt_tokens)
        if status == 200 and trace is not None:
            self.server.keep(self.key, trace)
        metrics.requests.labels(self.endpoint, self.strategy, str(status)).inc()
        metrics.latency.labels(self.endpoint, self.strategy).observe(time.perf_counter() - self.started)


class Server:
    """What the app holds: its config, the keys, the gate, the metrics and (once started) the models."""

    def __init__(self, config: ServeConfig, keys: Keys) -> None:
        self.config, self.keys = config, keys
        self.gate = Gate(config.max_concurrent, config.max_concurrent_per_key, config.retry_after_s)
        self.metrics = Metrics()
        self.models: dict[str, ServedModel] = {}
        per_minute = config.max_tokens_per_minute_per_key
        self.tokens = TokenWindow(per_minute) if per_minute is not None else None
        self.store: RunStore | None = None  # opened with the models, when the app starts

    def keep(self, key: str, trace: Any) -> None:
        """Write an answered request's trace to the trace store, if there is one; a failure is logged, and
        the client, who has the answer, is not told."""
        if self.store is None:
            return
        try:
            self.store.put_trace(f"{key}/{trace.problem_id}", trace)
        except Exception as e:  # noqa: BLE001 - a full disk must not fail requests that were answered
            log.error("trace %s not stored: %s", trace.problem_id, e)

    def authorize(self, request: Request) -> str:
        key = self.keys.check(request.headers.get("authorization"))
        if key is None:
            raise APIError(401, "a valid API key is required: send it as 'Authorization: Bearer KEY'", None,
                           "invalid_api_key")
        return key

    async def complete(self, request: Request, kind: str) -> Response:
        flight = Flight(self, ENDPOINTS[kind], self.authorize(request))
        try:
            body = await read_json(request, self.config.max_body_bytes)
            prefix = "chatcmpl-" if kind == "chat" else "cmpl-"
            response_id = prefix + uuid.uuid4().hex
            plan = make_plan(self.config, self.models, body, kind, response_id)
            flight.start(SearchRun(plan, self.config.stream_interval_ms / 1000, self.config.stream_tokens))
            shaper = Shaper(kind, response_id, body["model"], self.config.reasoning_fields)
            if plan.stream:
                return await self._stream(request, flight, shaper)
            return await self._whole(request, flight, shaper)
        except APIError as e:
            flight.land(e.status)
            raise
        except BaseException:
            flight.land(500)
            raise

    async def _whole(self, request: Request, flight: Flight, shaper: Shaper) -> Response:
        run = flight.run
        gone = asyncio.create_task(_disconnected(request.receive))
        try:
            await asyncio.wait({run.task, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if not run.task.done():  # the client hung up: stop the search (land cancels it)
            flight.land(499)
            return Response(status_code=499)
        try:
            trace = await run.trace()
        except Exception as e:  # noqa: BLE001 - any failure of the search becomes the client's error
            raise search_error(e) from None
        reasoning = "".join([event.text async for event in run.events()])
        flight.land(200, trace)
        return JSONResponse(shaper.body(run.plan, trace, reasoning))

    async def _stream(self, request: Request, flight: Flight, shaper: Shaper) -> Response:
        run = flight.run
        first = await run.burst()
        if first is None:  # over before any event: a refusal still gets its status, not a broken stream
            try:
                await run.trace()
            except Exception as e:  # noqa: BLE001 - as above
                raise search_error(e) from None

        return EventStream(self._events(flight, shaper, first), on_end=lambda: flight.land(499))

    async def _events(self, flight: Flight, shaper: Shaper, first: list[SearchEvent] | None
                      ) -> AsyncGenerator[tuple[str, bool], None]:
        """The stream's body: the first event at once, then one chunk a window (`stream_interval_ms`).

        A search's events come in bursts (the first token; a round's steps;
        then their scores and the pruned). The first burst goes out as soon
        as it comes; after each chunk, what comes within the window is
        gathered into the next, and the end (the last events, the chosen
        solution with its finish, the usage) goes out at once, in one write;
        the last events ride on the solution's chunk if they add no text.
        Each chunk comes with whether it is the last: the last goes out with
        the body's end, in the same write.
        Every chunk costs the client a parse (the openai client builds a
        pydantic model of it) and the server a write: a system call that
        gives up the GIL to the engine's thread and waits to get it back. A
        chat's role rides on its first chunk.
        """
        run, status, trace = flight.run, 499, None
        interval = self.config.stream_interval_ms / 1000
        try:
            burst, opening, last = first, shaper.kind == "chat", []
            while burst is not None:
                if burst is first:
                    self.metrics.first_reasoning.labels(flight.strategy).observe(time.perf_counter() - flight.started)
                if run.ended:  # the search's last events: they go out with the end
                    last = burst
                    break
                yield sse(shaper.reasoning(burst, opening)), False
                opening, burst = False, await run.burst(time.perf_counter() + interval)
            head = ""
            if any(event.text for event in last):  # reasoning goes before the content, in a chunk of its own
                head, opening, last = sse(shaper.reasoning(last, opening)), False, []
            try:
                trace = await run.trace()
            except Exception as e:  # noqa: BLE001 - as above, told in the stream
                error = search_error(e)
                status = error.status
                yield head + (sse(shaper.reasoning(last, opening)) if last else "") + sse(error.body()), True
                return
            # events without text (the chosen, the last scores) ride on the content's chunk
            yield "".join([head, sse(shaper.content(trace, last, opening)), sse(shaper.usage_chunk(run.plan, trace)),
                           sse("[DONE]")]), True
            status = 200  # reached only once the last chunk is written (EventStream asks for the next)
        finally:
            flight.land(status, trace)


class EventStream(Response):
    """A server-sent event stream: each chunk of `chunks` written as soon as it comes, from the request's task.

    `chunks` gives (text, last): the last chunk is written with the body's
    end (one write, so the client, which reads to the end, is not kept
    waiting for a second), and once it is written `chunks` is asked for one
    more, so that what follows its last yield runs (the request is landed
    as answered); closed there without it, it lands as a hang-up.

    If the client goes away first, the stream's task is cancelled where it
    waits, and the stream stops at its next chunk if that cancel was lost
    (a cancel that meets a result can be). Either way `chunks` is closed
    (its `finally` lands the flight, as a hang-up unless its last chunk was
    written) and `on_end` runs (it lands one whose `chunks` never started).
    Starlette's StreamingResponse does the same from a second task of a task
    group, one more trip round the event loop before the first byte.
    """

    media_type = "text/event-stream"

    def __init__(self, chunks: AsyncGenerator[tuple[str, bool], None], on_end: Callable[[], None]) -> None:
        self.chunks, self.on_end, self.status_code, self.background = chunks, on_end, 200, None
        self.init_headers({"Cache-Control": "no-cache"})

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        task, gone = asyncio.current_task(), False

        async def watch() -> None:
            nonlocal gone
            await _disconnected(receive)
            gone = True
            task.cancel()

        watcher = asyncio.create_task(watch())
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            ended = False
            async for chunk, last in self.chunks:
                if gone:
                    break
                await send({"type": "http.response.body", "body": chunk.encode(), "more_body": not last})
                if last:
                    ended = True
                    break
            watcher.cancel()  # from here on a hang-up cancels nothing
            if ended:  # the end is written: `chunks` runs past its last yield and finishes
                await anext(self.chunks, None)
            elif not gone:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not gone or task.uncancel():  # the server's own cancel (a shutdown) goes on
                raise
        finally:
            watcher.cancel()
            await self.chunks.aclose()
            self.on_end()


async def _disconnected(receive: Callable[[], Awaitable[dict]]) -> None:
    """Returns when the client has gone away (the body was read already: the next message says so)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def create_app(config: ServeConfig, keys: Keys | None = None) -> FastAPI:
    """The app serving `config`'s models; they load when the app starts (its lifespan), in its event loop."""
    server = Server(config, keys or Keys([]))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        server.models = load_models(config)
        if config.trace_store is not None:
            server.store = RunStore.open(config.trace_store, {"served": "thinkscale serve"})
        log.info("serving %s", ", ".join(server.models))
        yield
        for model in server.models.values():
            await model.close()
        if server.store is not None:
            server.store.close()

    app = FastAPI(title="thinkscale serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server

    @app.exception_handler(APIError)
    async def refused(request: Request, error: APIError) -> Response:
        return error.response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> Response:
        message = f"{request.method} {request.url.path}: {error.detail}"
        return APIError(error.status_code, message, None, None, dict(error.headers or {})).response()

    @app.exception_handler(Exception)
    async def failed(request: Request, error: Exception) -> Response:
        log.error("request failed", exc_info=error)
        return APIError(500, f"internal error ({type(error).__name__}); the server's log has the details").response()

    # The two endpoints of every search as plain Starlette routes: FastAPI's dependency solving has nothing to do
    # for them and costs each request's first byte (they take the Request as it is).
    for path, kind in (("/v1/chat/completions", "chat"), ("/v1/completions", "completion")):
        app.add_route(path, partial(server.complete, kind=kind), methods=["POST"], name=f"{kind}_completions")

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        server.authorize(request)
        return JSONResponse({"object": "list", "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "thinkscale"} for name in model_ids(config)]})

    @app.get("/health")
    async def health() -> Response:
        return JSONResponse({"status": "ok", "models": list(server.models), "in_flight": server.gate.in_flight})

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        server.authorize(request)
        return Response(server.metrics.exposition(), media_type=server.metrics.content_type)

    return app
