"""The `openai` policy: any OpenAI-compatible server behind the Policy contract.

vLLM, SGLang, llama.cpp's server, llama-cpp-python, Ollama and OpenAI itself
all speak the same `/v1/completions` and `/v1/chat/completions`:

    policy:
      name: openai
      options: {base_url: "http://127.0.0.1:8000/v1", concurrency: 32}

What it does for the caller:
- Requests go out concurrently, at most `concurrency` at a time, each to the
  base URL with the fewest requests in flight (several URLs are load-balanced,
  and a retry moves to another URL when there is one).
- 429, 5xx, timeouts and dropped connections are retried with exponential
  backoff (a server's Retry-After is honoured). Anything else -- a wrong URL,
  a refused key, an answer that is not a completion -- raises `BackendError`
  at once, naming what to fix. A failed request never becomes an empty sample.
- `n` samples are asked for in one request. Some servers ignore `n`
  (llama.cpp's does); that is seen in the answer (fewer choices than asked),
  and from then on the policy sends `n` concurrent single requests, seeds
  `seed`, `seed + 1`, ... so that they differ.
- Stop strings are sent to the server and also cut locally, so the stop
  string is never part of the text whatever the server does. Which one ended
  a choice (`Generation.stop_string`; None for the end token) is read from
  the server's `stop_reason` (vLLM) or `matched_stop` (SGLang), or else from
  the generated tokens, which are asked for along with stop strings.
- Token counts come from the server's `usage`. When one answer holds several
  choices and no per-choice counts (no logprobs), its completion tokens are
  shared out in proportion to the choices' text lengths; the total is exact.

With `api: chat`, a request whose prompt holds part of the model's own reply
(step search, a sample continued after a tool result) is sent as that reply:
the assistant's message last, with `continue_final_message: true` and
`add_generation_prompt: false` (vLLM's and SGLang's fields), so the server
continues it instead of starting a new turn. OpenAI's own API has no such
field: there set `continue_final_message: false`, and a request that would
need it is refused by name (whole-sample strategies still work). The
completions API needs none of this: it continues raw text on any server.

Tools, with `api: chat`: a request that declares tools (a search whose tools
use the `tool_calls` syntax) sends them as OpenAI `tools`, one call at a time
(`parallel_tool_calls: false`). A choice that calls a tool comes back as text
the trace can read, `<tool_call>` JSON (policies/base.py), stopped there; once
the search has run it, the continuation sends the call back as the assistant's
`tool_calls` and its result as a `tool` message.

Servers differ in what they do besides temperature and top_p. llama.cpp's
server and llama-cpp-python's cut to top_k=40 and min_p=0.05 unless told
otherwise, and llama-cpp-python also applies a repeat penalty of 1.1, which
changes even greedy decoding. To sample the model's own distribution from
them, pass `extra_body: LLAMACPP_PLAIN_SAMPLING` ({top_k: 0, min_p: 0,
repeat_penalty: 1.0}). OpenAI's API refuses these fields, so they are not
sent unless asked for.

The API key, where the server wants one, is read from the environment
variable named by `api_key_env` (default OPENAI_API_KEY) and never logged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import random
import time
from typing import Any

import httpx

from thinkscale.policies.base import (TOOL_CALL_CLOSE, Capabilities, Generation, GenerationRequest, GenerationResult,
                                      Policy, first_stop, tool_call_text, tool_exchanges)

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
FINISH_REASONS = frozenset({"stop", "length"})
MAX_BACKOFF_S = 30.0
# llama.cpp's sampling defaults switched off: the model's distribution, only temperature and top_p applied
LLAMACPP_PLAIN_SAMPLING = {"top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0}


class BusyClock:
    """Wall time during which at least one call is in flight, however many overlap."""

    def __init__(self) -> None:
        self.in_flight, self.busy_s, self._since = 0, 0.0, 0.0

    def enter(self) -> None:
        if self.in_flight == 0:
            self._since = time.perf_counter()
        self.in_flight += 1

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self.busy_s += time.perf_counter() - self._since


class BackendError(RuntimeError):
    """A request to a model server that failed for good; the message says what to fix."""


class OpenAIPolicy(Policy):
    name = "openai"

    def __init__(
        self,
        base_url: str | list[str] = "http://127.0.0.1:8000/v1",
        model: str | None = None,
        api: str = "completions",
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 16,
        timeout_s: float = 300.0,
        max_retries: int = 4,
        backoff_s: float = 0.5,
        logprobs: bool = False,
        prefix_caching: bool = False,
        extra_body: dict[str, Any] | None = None,
        flops_per_token: float | None = None,
        continue_final_message: bool = True,
    ) -> None:
        """
        Args:
            base_url: the server's API root (ending in `/v1`), or several to spread requests over.
            model: the served model's name; by default the first one `GET /models` lists.
            api: "completions" (raw text in, raw text out: continuations and step generation
                work as on the tiny core) or "chat" (the prompt is the user's message and the
                server applies its chat template).
            api_key_env: environment variable holding the key, sent as a Bearer token if set.
            concurrency: requests in flight at most, over all URLs.
            timeout_s: seconds one request may take before it is retried.
            max_retries: retries of a request after a transient failure.
            backoff_s: first retry delay; it doubles with each retry (with jitter).
            logprobs: ask for token log-probabilities (summed into Generation.logprob).
            prefix_caching: whether the server computes a prompt once for its n samples.
            extra_body: more fields for every request body (e.g. {"top_k": 20}).
            flops_per_token: 2 x the served model's non-embedding parameters, so that usage counts
                FLOPs and a FLOPs budget can be held (unknown, and refused by such a budget, if unset).
            continue_final_message: (chat) the server continues a partial assistant reply when asked
                (vLLM, SGLang); False for servers that cannot (OpenAI's), where step search is refused.
        """
        urls = [base_url] if isinstance(base_url, str) else list(base_url)
        if not urls or not all(isinstance(u, str) and u.startswith(("http://", "https://")) for u in urls):
            raise ValueError(f"base_url must be one or more http(s):// URLs, got {base_url!r}")
        if api not in ("completions", "chat"):
            raise ValueError(f"api must be 'completions' or 'chat', got {api!r}")
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be greater than 0, got {timeout_s}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be at least 0, got {max_retries}")
        self.base_urls = [u.rstrip("/") for u in urls]
        self.model = model
        self.api = api
        self.api_key_env = api_key_env
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.logprobs = logprobs
        self.extra_body = dict(extra_body or {})
        if flops_per_token is not None and flops_per_token <= 0:
            raise ValueError(f"flops_per_token must be greater than 0, got {flops_per_token}")
        self._flops_per_token = flops_per_token
        self.continue_final_message = continue_final_message
        self._prompt_overhead: int | None = None  # most tokens a prompt took beyond its UTF-8 bytes, once seen
        self.native_n: bool | None = None  # unknown until a server answers a request with n > 1
        self.capabilities = Capabilities(native_n=True, prefix_caching=prefix_caching, logprobs=logprobs,
                                         tool_calls=api == "chat")
        # Bound to the event loop that first uses them (asyncio.run makes a new loop each time).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: httpx.AsyncClient | None = None
        self._gate: asyncio.Semaphore | None = None
        self._model_lock: asyncio.Lock | None = None
        self._in_flight = dict.fromkeys(self.base_urls, 0)
        # What the policy did, for benchmarks and logs.
        self.requests_sent = 0
        self.retries = 0
        self.clock = BusyClock()  # wall time with at least one request in flight (a benchmark may share it)
        self._warned_unknown_stop = False

    # -- the Policy contract -------------------------------------------------
    async def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        return await _gather(self._generate_one(r) for r in requests)

    def flops_per_token(self) -> float | None:
        return self._flops_per_token

    def count_tokens(self, text: str) -> int:
        """A bound on the server's count: UTF-8 bytes (a byte-level tokenizer's most) plus the special
        tokens seen added so far (16 before any answer; chat templates add more, so chat keeps 16 + 64)."""
        if self.api == "chat":
            return len(text.encode()) + 80
        return len(text.encode()) + (16 if self._prompt_overhead is None else self._prompt_overhead)

    def max_calls(self, request: GenerationRequest) -> int:
        """One call, or on a server that ignores `n` one per sample (n + 1 while that is not yet known)."""
        if request.n == 1 or request.temperature == 0 or self.native_n:
            return 1
        return request.n if self.native_n is False else request.n + 1

    async def close(self) -> None:
        if self._client is not None and self._loop is asyncio.get_running_loop():
            await self._client.aclose()
        self._client = self._loop = None

    # -- one request, n samples ------------------------------------------------
    async def _generate_one(self, request: GenerationRequest) -> GenerationResult:
        if request.temperature == 0 and request.n > 1:  # greedy samples are all the same; vLLM refuses n > 1 here
            one = await self._generate_one(dataclasses.replace(request, n=1))
            return dataclasses.replace(one, generations=one.generations * request.n)
        generations: list[Generation] = []
        prompt_tokens, calls = None, 0
        if request.n == 1 or self.native_n is not False:
            data = await self._post(self._body(request, request.n, request.seed))
            generations, prompt_tokens = self._parse(data, request)
            calls = 1
            if len(generations) > request.n:
                raise BackendError(f"asked for {request.n} choices, the server returned {len(generations)}")
            if request.n > 1 and len(generations) == request.n:
                self.native_n = True
            elif len(generations) < request.n:
                self._learn_no_native_n(len(generations), request.n)
        missing = range(len(generations), request.n)
        if missing:  # the server ignores n: one request per remaining sample, each with its own seed
            answers = await _gather(self._post(self._body(request, 1, request.seed + i)) for i in missing)
            for data in answers:
                (generation,), tokens = self._parse(data, request, expect_one=True)
                generations.append(generation)
                prompt_tokens = tokens if prompt_tokens is None else prompt_tokens
            calls += len(missing)
        if prompt_tokens is not None and self.api == "completions":
            overhead = prompt_tokens - len(request.prompt.encode())
            self._prompt_overhead = max(overhead, self._prompt_overhead or 0)
        return GenerationResult(generations=tuple(generations), prompt_tokens=prompt_tokens, backend_calls=calls)

    def _learn_no_native_n(self, got: int, asked: int) -> None:
        if self.native_n is not False:
            log.info("the server returned %d of %d choices: it ignores `n`; sending concurrent single "
                     "requests from now on", got, asked)
        self.native_n = False
        self.capabilities = dataclasses.replace(self.capabilities, native_n=False)

    def _body(self, request: GenerationRequest, n: int, seed: int) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "n": n, "temperature": request.temperature,
                                "top_p": request.top_p, "max_tokens": request.max_tokens, "seed": seed}
        if request.stop:
            body["stop"] = list(request.stop)
        # The generated tokens also tell servers that do not say why they stopped (llama.cpp's) whether
        # a stop string or the end token ended a choice: step search needs to know.
        tokens_wanted = self.logprobs or bool(request.stop)
        if self.api == "chat":
            body["messages"] = self._messages(request)
            if body["messages"][-1]["role"] == "assistant":
                body.update(continue_final_message=True, add_generation_prompt=False)
            if request.tools:
                body.update(tools=[t.as_openai() for t in request.tools], parallel_tool_calls=False)
            if tokens_wanted:
                body["logprobs"] = True
        else:
            body["prompt"] = request.prompt
            if tokens_wanted:
                body["logprobs"] = 1
        return {**body, **self.extra_body}

    def _messages(self, request: GenerationRequest) -> list[dict[str, Any]]:
        """The chat a request's prompt stands for: the user's message, then the reply so far (tool calls as
        the assistant's calls and `tool` messages), its unfinished text as the assistant's message to continue."""
        messages: list[dict[str, Any]] = [{"role": "user", "content": request.user_prompt}]
        exchanges, rest = tool_exchanges(request.reply)
        for i, exchange in enumerate(exchanges):
            call_id = f"call_{i}"
            call = {"id": call_id, "type": "function",
                    "function": {"name": exchange.name, "arguments": json.dumps(exchange.arguments)}}
            messages.append({"role": "assistant", "content": exchange.before or None, "tool_calls": [call]})
            messages.append({"role": "tool", "tool_call_id": call_id, "content": exchange.result})
        if rest:
            if not self.continue_final_message:
                raise BackendError("this request continues a partial reply (step search, or a sample after a tool "
                                   "result), and the policy is set with continue_final_message: false. Use a "
                                   "whole-sample strategy, api: completions, or a server that continues an "
                                   "assistant message (vLLM, SGLang)")
            messages.append({"role": "assistant", "content": rest})
        return messages

    # -- reading an answer -------------------------------------------------------
    def _parse(self, data: Any, request: GenerationRequest,
               expect_one: bool = False) -> tuple[list[Generation], int]:
        """The generations in one answer, and its prompt tokens; BackendError if it is not a completion."""
        def bad(why: str) -> BackendError:
            return BackendError(f"the server's answer is not a {self.api} completion: {why} "
                                f"(answer: {_excerpt(data)})")

        if not isinstance(data, dict):
            raise bad("expected a JSON object")
        if "error" in data and "choices" not in data:
            raise BackendError(f"the server answered with an error: {_excerpt(data['error'])}")
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices:
            raise bad("no choices")
        if expect_one and len(choices) != 1:
            raise bad(f"asked for 1 choice, got {len(choices)}")
        usage = data.get("usage")
        if not isinstance(usage, dict) or not all(isinstance(usage.get(k), int) and usage[k] >= 0
                                                  for k in ("prompt_tokens", "completion_tokens")):
            raise bad("no usage.prompt_tokens and usage.completion_tokens (thinkscale counts compute "
                      "from them)")
        if not all(isinstance(c, dict) for c in choices):
            raise bad("a choice is not an object")
        choices = sorted(choices, key=lambda c: c.get("index", 0) if isinstance(c.get("index"), int) else 0)
        parts, counts = [], []
        for c in choices:
            message = c.get("message")
            text = (message.get("content") if isinstance(message, dict) else None) if self.api == "chat" \
                else c.get("text")
            call = _tool_call(message, bad) if self.api == "chat" and request.tools else None
            if call is not None:
                text = text or ""  # a call may come with no content (null)
            if not isinstance(text, str):
                raise bad("a choice has no text" if self.api == "completions" else "a choice has no message.content")
            reason = c.get("finish_reason")
            tokens, values = _generated_tokens(c.get("logprobs"))
            if call is not None:  # stopped at a call: the search runs it and continues the reply
                text, reason, stop_string = text + tool_call_text(*call), "stop", TOOL_CALL_CLOSE
            elif reason not in FINISH_REASONS:
                raise bad(f"finish_reason {reason!r} (expected 'stop' or 'length')")
            elif (stop_string := first_stop(text, request.stop)) is not None:  # the server kept it in the text
                text, reason = text[: text.index(stop_string)], "stop"
            elif reason == "stop" and request.stop:
                stop_string = self._reported_stop(c, text, tokens, request.stop)
            logprob = sum(values) if self.logprobs and values is not None else None
            parts.append((text, reason, logprob, stop_string))
            counts.append(len(tokens) if tokens is not None else None)
        if None in counts:
            counts = _share(usage["completion_tokens"], [len(text) + 1 for text, *_ in parts])
        generations = [Generation(text=text, num_tokens=k, finish_reason=reason, logprob=logprob,
                                  stop_string=stop_string)
                       for (text, reason, logprob, stop_string), k in zip(parts, counts)]
        return generations, usage["prompt_tokens"]

    def _reported_stop(self, choice: dict, text: str, tokens: list[str] | None, stop: tuple[str, ...]) -> str | None:
        """Which stop string ended a choice, or None if the end token did.

        vLLM says it (`stop_reason`), SGLang too (`matched_stop`); otherwise the
        generated tokens show whether a stop string followed the text.
        """
        for key in ("stop_reason", "matched_stop"):
            if key in choice:
                return choice[key] if isinstance(choice[key], str) else None
        if tokens is not None:
            generated = "".join(tokens)
            if generated.startswith(text):
                return next((s for s in stop if generated[len(text):].startswith(s)), None)
        if not self._warned_unknown_stop:
            log.warning("the server says neither why it stopped nor which tokens it generated; a choice that "
                        "stopped with text is taken to have reached a stop string, an empty one to have ended")
            self._warned_unknown_stop = True
        return stop[0] if text and len(stop) == 1 else None

    # -- HTTP ---------------------------------------------------------------------
    def _session(self) -> tuple[httpx.AsyncClient, asyncio.Semaphore]:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
            timeout = httpx.Timeout(self.timeout_s, connect=min(self.timeout_s, 10.0))
            self._client = httpx.AsyncClient(timeout=timeout, limits=limits)
            self._gate = asyncio.Semaphore(self.concurrency)
            self._model_lock = asyncio.Lock()
            self._loop = loop
        return self._client, self._gate

    def _headers(self) -> dict[str, str]:
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        return {"Authorization": f"Bearer {key}"} if key else {}

    async def _post(self, body: dict[str, Any]) -> Any:
        if body.get("model") is None:
            body = {**body, "model": await self._served_model()}
        path = "/chat/completions" if self.api == "chat" else "/completions"
        return await self._request("POST", path, body)

    async def _served_model(self) -> str:
        self._session()
        async with self._model_lock:
            if self.model is None:
                data = await self._request("GET", "/models")
                try:
                    self.model = str(data["data"][0]["id"])
                except (KeyError, IndexError, TypeError):
                    raise BackendError(f"GET {self.base_urls[0]}/models did not list a model ({_excerpt(data)}); "
                                       f"give the policy a `model` option") from None
        return self.model

    async def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """The JSON answer to one request, retried on transient failures; BackendError otherwise."""
        client, gate = self._session()
        failures: list[str] = []
        tried: set[str] = set()
        for attempt in range(self.max_retries + 1):
            async with gate:
                url = self._pick_url(tried)
                tried.add(url)
                self._enter(url)
                try:
                    response = await client.request(method, url + path, json=body, headers=self._headers())
                except httpx.TimeoutException:
                    failures.append(f"{url}: no answer within {self.timeout_s:g}s")
                    response = None
                except httpx.TransportError as e:
                    failures.append(f"{url}: {_describe_transport_error(e)}")
                    response = None
                finally:
                    self._leave(url)
            delay = self.backoff_s * 2 ** attempt * random.uniform(0.5, 1.0)
            if response is not None:
                if response.status_code < 400:
                    try:
                        return response.json()
                    except ValueError:
                        raise BackendError(f"{method} {url}{path} answered {response.status_code} with a body that "
                                           f"is not JSON: {response.text[:200]!r}") from None
                if response.status_code not in RETRY_STATUS:
                    raise BackendError(self._refusal(method, url + path, response))
                failures.append(f"{url}: {response.status_code} {_excerpt(response.text)}")
                delay = _retry_after(response) or delay
            if attempt < self.max_retries:
                self.retries += 1
                await asyncio.sleep(min(delay, MAX_BACKOFF_S))
        raise BackendError(f"{method} {path} failed {len(failures)} times, giving up. Last failure: {failures[-1]}")

    def _refusal(self, method: str, url: str, response: httpx.Response) -> str:
        """Why a request was refused for good, and what to change."""
        status, said = response.status_code, _excerpt(response.text)
        hints = {
            401: f"the server wants an API key: set ${self.api_key_env}" if not self._headers()
                 else f"the key in ${self.api_key_env} was refused",
            403: f"the key in ${self.api_key_env} may not use this model or endpoint",
            404: "check base_url (it usually ends in /v1) and the model name",
            405: "check base_url (it usually ends in /v1)",
        }
        hint = hints.get(status, "check the request settings (model, max_tokens, stop) against the server's limits")
        return f"{method} {url} was refused: {status} {said}. {hint}"

    def _pick_url(self, tried: set[str]) -> str:
        """The least busy URL, preferring one this request has not failed on yet."""
        fresh = [u for u in self.base_urls if u not in tried] or self.base_urls
        return min(fresh, key=lambda u: self._in_flight[u])

    def _enter(self, url: str) -> None:
        self._in_flight[url] += 1
        self.requests_sent += 1
        self.clock.enter()

    def _leave(self, url: str) -> None:
        self._in_flight[url] -= 1
        self.clock.leave()


# -- helpers ------------------------------------------------------------------------

async def _gather(coroutines) -> list:
    """Run coroutines concurrently; on the first failure cancel the rest and raise it."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _tool_call(message: Any, bad: Any) -> tuple[str, dict] | None:
    """The name and arguments of the (first) tool a chat choice calls, if it calls one."""
    calls = message.get("tool_calls") if isinstance(message, dict) else None
    if not calls:
        return None
    try:
        function = calls[0]["function"]
        arguments = json.loads(function["arguments"]) if isinstance(function["arguments"], str) \
            else function["arguments"]
        if not isinstance(arguments, dict):
            raise TypeError
        return str(function["name"]), arguments
    except (KeyError, IndexError, TypeError, ValueError):
        raise bad(f"a tool call is not {{function: {{name, arguments (a JSON object)}}}}: {_excerpt(calls[0])}") \
            from None


def _generated_tokens(logprobs: Any) -> tuple[list[str] | None, list[float] | None]:
    """One choice's generated tokens and their log-probabilities, from either layout servers use."""
    if not isinstance(logprobs, dict):
        return None, None
    content = logprobs.get("content")
    if isinstance(content, list):  # chat layout (and llama.cpp's completions)
        tokens = [t.get("token") if isinstance(t, dict) else None for t in content]
        values = [t.get("logprob") if isinstance(t, dict) else None for t in content]
    else:
        tokens, values = logprobs.get("tokens"), logprobs.get("token_logprobs")
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        return None, None
    if not isinstance(values, list) or not all(isinstance(v, (int, float)) for v in values):
        values = None
    return tokens, [float(v) for v in values] if values is not None else None


def _share(total: int, weights: list[int]) -> list[int]:
    """`total` split in proportion to `weights`, in whole numbers that add up to it (largest remainder)."""
    whole = sum(weights)
    exact = [total * w / whole for w in weights]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: counts[i] - exact[i])
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers.get("retry-after", "")))
    except ValueError:
        return None


def _describe_transport_error(e: httpx.TransportError) -> str:
    if isinstance(e, httpx.ConnectError):
        return f"cannot connect ({e}); is the server running at this address?"
    if isinstance(e, httpx.RemoteProtocolError):
        return f"the connection was dropped before the answer was complete ({e})"
    return f"{type(e).__name__}: {e}"


def _excerpt(value: Any, limit: int = 200) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


# -- servers started here (tests, benchmarks) ---------------------------------------
