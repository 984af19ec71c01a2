"""A real OpenAI-compatible HTTP server on 127.0.0.1, for the openai policy's tests.

It answers `/v1/completions`, `/v1/chat/completions` and `/v1/models` with the
tiny policy's real generations (nothing canned), over real sockets. On request
it also misbehaves the ways real servers do, one fault per incoming request:

    server.faults.extend(["429", "drop"])   # the next two requests fail, then it answers

Faults: "429", "500", "503" (a retryable status), "401", "malformed" (a body
that is not JSON), "drop" (headers and half the body, then the connection
closes), "hang" (answers only after `hang_s`), "no_usage", "bad_finish"
(finish_reason null), "no_choices".

Its chat template is the tiny core's: the messages' texts one after another.
An assistant's last message is continued (vLLM's `continue_final_message`).
With `tools` (one function of one string argument), it parses calls the way
vLLM's tool parsers do: a generation that stops at the tiny core's tag, as in
`[347*28`, comes back as a call of that function with `347*28`, finish_reason
"tool_calls"; the call and its `tool` message are written back as
`[347*28]=9716` (a result the core cannot spell is left out, as the search's
own tag syntax does).

Give the server a policy of its own: it runs the policy on its own event
loop thread, and a policy serves one event loop at a time.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from thinkscale.policies.base import GenerationRequest, Policy


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:  # a client that gave up on a hung answer
        pass


def chat_template(messages: list[dict]) -> str:
    """The tiny core's chat template: the texts in order, each call as its tag and its result after it."""
    text = ""
    for message in messages:
        if message["role"] == "tool":
            result = message["content"].strip()
            text += "]=" + (result if result.lstrip("-").isdigit() else "")
            continue
        text += message.get("content") or ""
        for call in message.get("tool_calls") or []:
            text += "[" + next(iter(json.loads(call["function"]["arguments"]).values()))
    return text


def tool_call(text: str, function: dict, call_id: str) -> dict | None:
    """The assistant message of a generation that stopped at the tag's end, if it opened a call."""
    before, opened, argument = text.rpartition("[")
    if not opened:
        return None
    name = function["parameters"]["required"][0]
    return {"role": "assistant", "content": before or None,
            "tool_calls": [{"id": call_id, "type": "function",
                            "function": {"name": function["name"], "arguments": json.dumps({name: argument})}}]}


class TinyOpenAIServer:
    def __init__(self, policy: Policy, honour_n: bool = True, api_key: str | None = None, delay_s: float = 0.0,
                 hang_s: float = 2.0, model: str = "tiny-arithmetic", says_stop_reason: bool = True) -> None:
        self.policy, self.honour_n, self.api_key = policy, honour_n, api_key
        self.says_stop_reason = says_stop_reason  # as vLLM does: the stop string that ended a choice, or null
        self.delay_s, self.hang_s, self.model = delay_s, hang_s, model
        self.faults: deque[str] = deque()
        self.bodies: list[dict] = []  # every completion request received, in order
        self.in_flight = self.max_in_flight = 0
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._http = _QuietServer(("127.0.0.1", 0), self._handler())
        self.base_url = f"http://127.0.0.1:{self._http.server_address[1]}/v1"
        self._threads = [threading.Thread(target=self._loop.run_forever, daemon=True),
                         threading.Thread(target=self._http.serve_forever, daemon=True)]

    def __enter__(self) -> "TinyOpenAIServer":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._http.shutdown()
        self._http.server_close()

        async def settle() -> None:  # the policy's own tasks end here, not on a stopped loop
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            await asyncio.gather(*others, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(settle(), self._loop).result(timeout=60)
        self._loop.call_soon_threadsafe(self._loop.stop)

    # -- what the server does ------------------------------------------------------
    def _next_fault(self) -> str | None:
        with self._lock:
            return self.faults.popleft() if self.faults else None

    def complete(self, path: str, body: dict) -> dict:
        """The OpenAI-format answer to one completion request, from the tiny policy."""
        chat = path.endswith("/chat/completions")
        prompt = chat_template(body["messages"]) if chat else body["prompt"]
        tools = body.get("tools") or []
        n = int(body.get("n", 1)) if self.honour_n else 1
        request = GenerationRequest(prompt=prompt, n=n, temperature=float(body.get("temperature", 1.0)),
                                    top_p=float(body.get("top_p", 1.0)), max_tokens=int(body.get("max_tokens", 16)),
                                    stop=tuple(body.get("stop") or ()) + (("]",) if tools else ()),
                                    seed=int(body.get("seed") or 0))
        (result,) = asyncio.run_coroutine_threadsafe(self.policy.generate([request]), self._loop).result()
        choices = []
        for i, g in enumerate(result.generations):
            choice = {"index": i, "finish_reason": g.finish_reason, "logprobs": None}
            call = tool_call(g.text, tools[0]["function"], f"call_{i}") if tools and g.stop_string == "]" else None
            if self.says_stop_reason:
                choice["stop_reason"] = None if call else g.stop_string
            if call:
                choice.update(finish_reason="tool_calls", message=call)
            else:
                choice.update({"message": {"role": "assistant", "content": g.text}} if chat else {"text": g.text})
            choices.append(choice)
        completion = sum(g.num_tokens for g in result.generations)
        return {"id": "cmpl-tiny", "object": "chat.completion" if chat else "text_completion", "created": 0,
                "model": self.model, "choices": choices,
                "usage": {"prompt_tokens": result.prompt_tokens, "completion_tokens": completion,
                          "total_tokens": result.prompt_tokens + completion}}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep pytest's output clean
                pass

            def send_json(self, status: int, payload, headers: dict | None = None) -> None:
                body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def authorised(self) -> bool:
                if server.api_key is None or self.headers.get("Authorization") == f"Bearer {server.api_key}":
                    return True
                self.send_json(401, {"error": {"message": "Incorrect API key provided",
                                               "type": "invalid_request_error"}})
                return False

            def do_GET(self) -> None:
                if not self.authorised():
                    return
                if self.path != "/v1/models":
                    self.send_json(404, {"error": {"message": f"no route {self.path}"}})
                    return
                self.send_json(200, {"object": "list", "data": [{"id": server.model, "object": "model"}]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                if not self.authorised():
                    return
                if self.path not in ("/v1/completions", "/v1/chat/completions"):
                    self.send_json(404, {"error": {"message": f"no route {self.path}"}})
                    return
                with server._lock:
                    server.bodies.append(body)
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    self.answer(body)
                finally:
                    with server._lock:
                        server.in_flight -= 1

            def answer(self, body: dict) -> None:
                fault = server._next_fault()
                if fault in ("429", "500", "503"):
                    self.send_json(int(fault), {"error": {"message": f"fault {fault}"}}, {"Retry-After": "0"})
                    return
                if fault == "401":
                    self.send_json(401, {"error": {"message": "Incorrect API key provided"}})
                    return
                if fault == "malformed":
                    self.send_json(200, b'{"choices": [{"text": "12", ')
                    return
                if fault == "hang":
                    time.sleep(server.hang_s)
                if server.delay_s:
                    time.sleep(server.delay_s)
                answer = server.complete(self.path, body)
                if fault == "no_usage":
                    del answer["usage"]
                if fault == "bad_finish":
                    answer["choices"][0]["finish_reason"] = None
                if fault == "no_choices":
                    answer["choices"] = []
                if fault == "drop":
                    payload = json.dumps(answer).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload[: len(payload) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.send_json(200, answer)

        return Handler
