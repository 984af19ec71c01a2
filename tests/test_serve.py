"""`thinkscale serve` end to end: the real server on 127.0.0.1, the official openai client, the tiny core.

Two servers run in background threads for the module: `main` (an API key, room
for 64 concurrent streams) and `tight` (open, one search at a time, a small
body limit) for the refusals that need tight limits. Answers are checked
against the same strategy solved offline with the same seed and budget.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import httpx
import openai
import pytest
from served import running
from tiny_openai_server import TinyOpenAIServer

from thinkscale.config import BudgetConfig
from thinkscale.net import free_port
from thinkscale.serve.config import load_serve_config
from thinkscale.typed_yaml import ConfigError
from thinkscale.strategies import get_strategy
from thinkscale.tasks import Problem

KEY = "test-key-0123"
PROBLEMS = ["(3+5)*(7-2)=", "(8-3)*(2+4)-7=", "9*4-(6+2)*3=", "7+8*(9-6)-5*2="]


@pytest.fixture(scope="module")
def main():
    # a chunk per burst of events (no window), so that the tests see each round of a beam as it happens
    config = dataclasses.replace(load_serve_config(None), max_concurrent_per_key=64, stream_interval_ms=0)
    with running(config, [KEY]) as url:
        yield url


@pytest.fixture(scope="module")
def tight():  # the default stream window (50 ms)
    config = dataclasses.replace(load_serve_config(None), max_concurrent=1, max_body_bytes=2048)
    with running(config, []) as url:
        yield url


@pytest.fixture(scope="module")
def client(main):
    return openai.OpenAI(base_url=f"{main}/v1", api_key=KEY, max_retries=0)


@pytest.fixture(scope="module")
def scorers():
    from thinkscale.scorers import get_scorer

    return {"prm": get_scorer("prm", checkpoint_name="arithmetic-prm")}


@pytest.fixture(scope="module")
def offline(policy, scorers, arithmetic):
    """offline(problem text, plan) -> the Trace of the same strategy, settings, budget and seed, in process."""

    def solve_all(cases):
        async def go():
            return await asyncio.gather(*(
                get_strategy(p["strategy"], **p["settings"]).solve(
                    Problem("offline", text + "\n", 0), arithmetic, policy, scorers.get(p["scorer"]),
                    BudgetConfig(**p["budget"]).to_budget(), p["seed"])
                for text, p in cases))

        return asyncio.run(go())

    return solve_all


def chosen_id(trace) -> int:
    """The node whose answer was chosen (majority vote chooses an answer: its first solution)."""
    if trace.chosen_node is not None:
        return trace.chosen_node
    return next(n.id for n in trace.terminals() if n.finished and n.answer == trace.chosen_answer)


def solution(trace) -> str:
    return trace.solution(chosen_id(trace))


def generated(trace) -> str:
    return "".join(n.text if n.text.endswith("\n") else n.text + "\n" for n in trace.nodes[1:])


def read_stream(stream):
    """(reasoning, content, [thinkscale event fields], usage chunk) of a chat or completion stream."""
    reasoning, content, events, last = "", "", [], None
    for chunk in stream:
        last = chunk
        for choice in chunk.choices:
            extra = (choice.delta if hasattr(choice, "delta") else choice).model_extra or {}
            reasoning += extra.get("reasoning_content") or ""
            assert (extra.get("reasoning") or "") == (extra.get("reasoning_content") or "")
            if "thinkscale" in extra:
                events += extra["thinkscale"]["events"]
            content += (choice.delta.content if hasattr(choice, "delta") else choice.text) or ""
    return reasoning, content, events, last


# -- answers -------------------------------------------------------------------------

STRATEGIES = [("arithmetic", {}), ("majority_vote:arithmetic", {"n": 4}), ("best_of_n:arithmetic", {"n": 4}),
              ("beam_search:arithmetic", {"n": 4, "width": 2})]


@pytest.mark.parametrize("model,settings", STRATEGIES)
def test_chat_answers_equal_the_offline_strategy_streamed_or_not(client, offline, model, settings):
    problem, seed = PROBLEMS[1], 7
    whole = client.chat.completions.create(model=model, seed=seed, messages=[{"role": "user", "content": problem}],
                                           extra_body={"settings": settings} if settings else None)
    plan = whole.model_extra["thinkscale"]
    assert plan["seed"] == seed and plan["settings"] == (settings or {"n": 1})
    (trace,) = offline([(problem, plan)])
    message = whole.choices[0].message
    assert message.content == solution(trace) and plan["answer"] == trace.chosen_answer is not None
    assert message.model_extra["reasoning_content"] == message.model_extra["reasoning"] == generated(trace)
    assert whole.usage.completion_tokens_details.reasoning_tokens == trace.usage.generated_tokens > 0
    assert whole.usage.prompt_tokens == trace.usage.prompt_tokens

    stream = client.chat.completions.create(model=model, seed=seed, stream=True,
                                            messages=[{"role": "user", "content": problem}],
                                            extra_body={"settings": settings} if settings else None)
    reasoning, content, events, last = read_stream(stream)
    assert (reasoning, content) == (generated(trace), solution(trace))
    assert last.usage.completion_tokens_details.reasoning_tokens == trace.usage.generated_tokens
    assert last.usage.completion_tokens == trace.usage.generated_tokens
    assert [e["node"] for e in events if e["event"] == "chosen"] == [chosen_id(trace)]
    assert {e["event"] for e in events} >= {"generated", "chosen"}


def test_completions_sync_and_async_equal_offline(main, client, offline):
    problem, settings = PROBLEMS[2], {"n": 4, "width": 2}
    whole = client.completions.create(model="beam_search:arithmetic", prompt=problem, seed=3,
                                      extra_body={"settings": settings})
    (trace,) = offline([(problem, whole.model_extra["thinkscale"])])
    assert whole.choices[0].text == solution(trace)
    assert whole.usage.completion_tokens_details.reasoning_tokens == trace.usage.generated_tokens

    async def streamed():
        async with openai.AsyncOpenAI(base_url=f"{main}/v1", api_key=KEY, max_retries=0) as aclient:
            stream = await aclient.completions.create(model="beam_search:arithmetic", prompt=problem, seed=3,
                                                      stream=True, extra_body={"settings": settings})
            return [chunk async for chunk in stream]

    reasoning, content, _, last = read_stream(asyncio.run(streamed()))
    assert (reasoning, content) == (generated(trace), solution(trace))
    assert last.usage.completion_tokens_details.reasoning_tokens == trace.usage.generated_tokens


def test_reasoning_effort_buys_its_tables_search_and_budget(client, offline):
    reply = client.chat.completions.create(model="arithmetic", seed=5, reasoning_effort="low",
                                           messages=[{"role": "user", "content": PROBLEMS[0]}])
    plan = reply.model_extra["thinkscale"]
    assert (plan["strategy"], plan["settings"]) == ("beam_search", {"n": 4, "width": 2})
    assert plan["budget"]["max_generated_tokens"] == 800 and plan["reasoning_effort"] == "low"
    (trace,) = offline([(PROBLEMS[0], plan)])
    assert reply.choices[0].message.content == solution(trace)
    # the effort's budget applies to a strategy named by the model too; max_completion_tokens lowers it
    reply = client.chat.completions.create(model="majority_vote:arithmetic", seed=5, reasoning_effort="minimal",
                                           max_completion_tokens=100, extra_body={"settings": {"n": 2}},
                                           messages=[{"role": "user", "content": PROBLEMS[0]}])
    plan = reply.model_extra["thinkscale"]
    assert plan["budget"]["max_generated_tokens"] == 100 and reply.usage.completion_tokens <= 100


def test_the_first_reasoning_arrives_while_the_search_runs(client):
    stream = client.chat.completions.create(model="beam_search:arithmetic", seed=1, stream=True,
                                            messages=[{"role": "user", "content": PROBLEMS[3]}],
                                            extra_body={"settings": {"n": 4, "width": 2}})
    arrivals, roles = [], []
    for chunk in stream:
        roles += [chunk.choices[0].delta.role] if chunk.choices else []
        extra = chunk.choices[0].delta.model_extra if chunk.choices else {}
        kind = "reasoning" if extra.get("reasoning_content") else "content" if chunk.choices and \
            chunk.choices[0].delta.content else "other"
        events = (extra.get("thinkscale") or {"events": []})["events"]
        arrivals.append((time.perf_counter(), kind, [e["event"] for e in events]))
    # the role rides on the first chunk, which is already reasoning; content and finish come in one chunk
    assert roles[0] == "assistant" and arrivals[0][1] == "reasoning" and roles.count("assistant") == 1
    reasoning = [t for t, kind, _ in arrivals if kind == "reasoning"]
    first_content = next(t for t, kind, _ in arrivals if kind == "content")
    rounds = [t for t, _, events in arrivals if "generated" in events]
    assert len(rounds) >= 3  # one burst of steps per round of the beam, not one at the end
    assert reasoning[-1] - reasoning[0] > 0.01 and reasoning[0] < first_content
    # the first step's first sample arrives as it is generated, before the step is done
    events = [event for _, _, events in arrivals for event in events]
    assert events[0] == "token" and events.index("generated") > 0


def test_the_stream_window_gathers_events_and_reads_as_the_offline_search(tight, offline):
    """At the default stream_interval_ms, the first chunk goes at once, then at most one chunk a window."""
    problem, settings = PROBLEMS[3], {"n": 8, "width": 2}
    with openai.OpenAI(base_url=f"{tight}/v1", api_key="none", max_retries=0) as plain:
        started = time.perf_counter()
        stream = plain.chat.completions.create(model="beam_search:arithmetic", seed=4, stream=True,
                                               messages=[{"role": "user", "content": problem}],
                                               extra_body={"settings": settings})
        chunks = [(time.perf_counter(), chunk) for chunk in stream]
    reasoning, content, events, last = read_stream(chunk for _, chunk in chunks)
    (trace,) = offline([(problem, last.model_extra["thinkscale"])])
    assert (reasoning, content) == (generated(trace), solution(trace))
    assert [e["node"] for e in events if e["event"] == "chosen"] == [chosen_id(trace)]
    # every event is there, in order: each node generated once
    assert [e["node"] for e in events if e["event"] == "generated"] == list(range(1, len(trace.nodes)))
    # the server sent its chunks no closer than the window: all but the first and the end came a window apart,
    # over a span no longer than the client saw from its request to its last chunk
    window = load_serve_config(None).stream_interval_ms / 1000
    with_events = [t for t, chunk in chunks if chunk.choices and "thinkscale" in (chunk.choices[0].delta.model_extra
                                                                                 or {})]
    assert len(with_events) <= 3 + (with_events[-1] - started) / window
    assert sum(len(c.choices[0].delta.model_extra["thinkscale"]["events"]) for t, c in chunks
               if c.choices and "thinkscale" in (c.choices[0].delta.model_extra or {})) > 2 * len(with_events)


def test_streamed_tokens_and_the_rest_of_their_steps_read_as_the_offline_search(client, offline):
    problem, settings = PROBLEMS[2], {"n": 4, "width": 2}
    stream = client.chat.completions.create(model="beam_search:arithmetic", seed=9, stream=True,
                                            messages=[{"role": "user", "content": problem}],
                                            extra_body={"settings": settings})
    reasoning, content, events, last = read_stream(stream)
    (trace,) = offline([(problem, last.model_extra["thinkscale"])])
    assert reasoning == generated(trace) and content == solution(trace)
    tokens = [e for e in events if e["event"] == "token"]
    assert tokens and all(e["node"] is None for e in tokens)
    # by default only the first call's first sample streams (`stream_tokens: first`): one run of tokens, first
    runs = sum(1 for a, b in zip([None] + events, events)
               if b["event"] == "token" and (a or {}).get("event") != "token")
    assert runs == 1 and events[0]["event"] == "token" and trace.usage.policy_calls > 1


@pytest.mark.parametrize("mode", ["all", "none"])
def test_stream_tokens_all_streams_every_rounds_first_sample_and_none_streams_whole_steps(offline, mode):
    config = dataclasses.replace(load_serve_config(None), stream_interval_ms=0, stream_tokens=mode)
    problem, settings = PROBLEMS[2], {"n": 4, "width": 2}
    with running(config, []) as url:
        stream = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0).chat.completions.create(
            model="beam_search:arithmetic", seed=9, stream=True, messages=[{"role": "user", "content": problem}],
            extra_body={"settings": settings})
        reasoning, content, events, last = read_stream(stream)
    (trace,) = offline([(problem, last.model_extra["thinkscale"])])
    assert reasoning == generated(trace) and content == solution(trace)
    runs = sum(1 for a, b in zip([None] + events, events)
               if b["event"] == "token" and (a or {}).get("event") != "token")
    if mode == "all":  # runs of tokens in later rounds of the beam too, the first before anything else
        assert 1 < runs <= trace.usage.policy_calls and events[0]["event"] == "token"
    else:
        assert runs == 0 and events[0]["event"] == "generated"


@pytest.mark.parametrize("calls", [1, 2, None])
def test_a_search_streams_the_text_of_as_many_of_its_calls_as_asked(policy, scorers, arithmetic, calls):
    """SEARCH_TOKEN_CALLS: the first `calls` calls that can stream (one at a time does) stream their first sample
    (None: all that can), and the streamed text is each of those samples as generated, the search unchanged."""
    from thinkscale.strategies.base import SEARCH_EVENTS, SEARCH_TOKEN_CALLS, SEARCH_TOKENS

    pieces, steps = [], []

    def listen(event, trace, nodes):
        if event == "generated":
            steps.append([n.text for n in nodes])
            pieces.append(None)  # a call's end

    def solve():
        return get_strategy("beam_search", n=4, width=2).solve(
            Problem("tokens", PROBLEMS[1] + "\n", 0), arithmetic, policy, scorers["prm"],
            BudgetConfig(max_generated_tokens=800).to_budget(), 3)

    async def listened():
        SEARCH_TOKENS.set(pieces.append)
        SEARCH_TOKEN_CALLS.set(calls)
        SEARCH_EVENTS.set(listen)
        return await solve()

    trace, alone = asyncio.run(listened()), asyncio.run(solve())
    assert [n.text for n in trace.nodes] == [n.text for n in alone.nodes]  # listening changes nothing
    streamed, text = [], ""
    for piece in pieces:
        if piece is None:
            if text:
                streamed.append(text)
            text = ""
        else:
            text += piece
    # a round of the beam: its calls (one a beam) run at once, one of them streams, and their steps come together
    assert len(steps) > 2
    assert len(streamed) == (len(steps) if calls is None else calls)
    for text, step in zip(streamed, steps):  # each streamed text is a step of its round, whole (less its newline)
        assert any(s.startswith(text) and len(text) >= len(s) - 1 for s in step), (text, step)


def test_sixty_four_concurrent_streams_each_get_their_own_answer(main, offline, arithmetic):
    problems = [(e.problem.prompt.strip(), 100 + i) for i, e in enumerate(arithmetic.examples("test", 64))]

    async def one(aclient, problem, seed):
        stream = await aclient.chat.completions.create(
            model="majority_vote:arithmetic", seed=seed, stream=True, messages=[{"role": "user", "content": problem}],
            extra_body={"settings": {"n": 4}})
        return read_stream([chunk async for chunk in stream])

    async def go():
        async with openai.AsyncOpenAI(base_url=f"{main}/v1", api_key=KEY, max_retries=0) as aclient:
            return await asyncio.gather(*(one(aclient, p, s) for p, s in problems))

    served = asyncio.run(go())
    plans = [last.model_extra["thinkscale"] for *_, last in served]
    traces = offline([(p, plan) for (p, _), plan in zip(problems, plans)])
    assert [plan["seed"] for plan in plans] == [s for _, s in problems]
    assert [content for _, content, _, _ in served] == [solution(t) for t in traces]
    assert [plan["answer"] for plan in plans] == [t.chosen_answer for t in traces]


# -- the other endpoints ---------------------------------------------------------------

def test_models_health_and_metrics(main, client):
    ids = [m.id for m in client.models.list().data]
    assert {"arithmetic", "beam_search:arithmetic", "majority_vote:arithmetic", "best_of_n:arithmetic"} <= set(ids)
    assert "repeated_sampling:arithmetic" not in ids
    health = httpx.get(f"{main}/health").json()
    assert health["status"] == "ok" and health["models"] == ["arithmetic"]
    client.chat.completions.create(model="arithmetic", seed=0, messages=[{"role": "user", "content": PROBLEMS[0]}])
    text = httpx.get(f"{main}/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    for name in ('thinkscale_requests_total{endpoint="/v1/chat/completions",status="200",strategy="majority_vote"}',
                 'thinkscale_generated_tokens_total{strategy="majority_vote"}',
                 'thinkscale_request_seconds_count', 'thinkscale_searches_in_flight{strategy="majority_vote"} 0.0',
                 'thinkscale_first_reasoning_seconds_count'):
        assert name in text, name


# -- refusals ------------------------------------------------------------------------

def chat(**overrides):
    return {"model": "arithmetic", "messages": [{"role": "user", "content": PROBLEMS[0]}], **overrides}


BAD = [
    ("malformed JSON", b'{"model": "arithmetic", "messages": [', 400, "not valid JSON"),
    ("missing messages", {"model": "arithmetic"}, 400, "'messages' is required"),
    ("no user message", chat(messages=[{"role": "system", "content": "hi"}]), 400, "no user message"),
    ("unknown model", chat(model="arithmetc"), 404, "Did you mean 'arithmetic'"),
    ("unknown strategy", chat(model="beam_serch:arithmetic"), 404, "Did you mean 'beam_search'"),
    ("unknown setting", chat(model="beam_search:arithmetic", settings={"widht": 2}), 400,
     "unknown key 'widht' (did you mean 'width'?)"),
    ("wrong type", chat(model="majority_vote:arithmetic", settings={"n": "4"}), 400, "expected an integer"),
    ("unknown budget key", chat(budget={"max_tokens": 5}), 400, "unknown key 'max_tokens'"),
    ("unknown parameter", chat(setings={"n": 2}), 400, "Did you mean 'settings'?"),
    ("bad reasoning_effort", chat(reasoning_effort="maximal"), 400, "reasoning_effort must be one of none, minimal"),
    ("budget over the cap", chat(budget={"max_generated_tokens": 10**6}), 400, "over the server's cap of 16384"),
    ("budget too small", chat(model="beam_search:arithmetic", budget={"max_generated_tokens": 2}), 400,
     "cannot buy the first 16 samples"),
    ("unreadable", chat(messages=[{"role": "user", "content": "what is three plus five?"}]), 400,
     "'0123456789+-*/()=,>\\n '"),
    ("tools", chat(tools=[{"type": "function", "function": {"name": "f"}}]), 400, "'tools' is not supported"),
    ("n", chat(n=3), 400, "n must be 1"),
]


@pytest.mark.parametrize("why,body,status,says", BAD, ids=[b[0] for b in BAD])
def test_each_bad_request_gets_a_clean_error_and_the_server_keeps_serving(main, client, why, body, status, says):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    for stream in (False, True):
        if stream and isinstance(body, dict):
            content = json.dumps({**body, "stream": True}).encode()
        answer = httpx.post(f"{main}/v1/chat/completions", content=content, timeout=30,
                            headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
        assert answer.status_code == status, answer.text
        error = answer.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and says in error["message"], error
    reply = client.chat.completions.create(model="arithmetic", seed=0, messages=[{"role": "user",
                                                                                    "content": PROBLEMS[0]}])
    assert reply.choices[0].finish_reason == "stop"


def test_the_openai_client_raises_by_status(client):
    with pytest.raises(openai.NotFoundError, match="Did you mean"):
        client.chat.completions.create(model="beam_serch:arithmetic", messages=[{"role": "user", "content": "1+1="}])
    with pytest.raises(openai.BadRequestError, match="unknown key 'widht'"):
        client.chat.completions.create(model="beam_search:arithmetic", messages=[{"role": "user", "content": "1+1="}],
                                       extra_body={"settings": {"widht": 2}})


def test_wrong_or_missing_key_is_401_and_never_echoed(main):
    for headers in ({}, {"Authorization": "Bearer wrong-key"}, {"Authorization": f"Basic {KEY}"}):
        answer = httpx.post(f"{main}/v1/chat/completions", json=chat(), headers=headers)
        assert answer.status_code == 401 and answer.json()["error"]["code"] == "invalid_api_key"
        assert "wrong-key" not in answer.text
    assert httpx.get(f"{main}/v1/models").status_code == 401
    assert httpx.get(f"{main}/health").status_code == 200
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{main}/v1", api_key="nope", max_retries=0).models.list()


def test_a_body_over_the_limit_is_413(tight):
    answer = httpx.post(f"{tight}/v1/chat/completions", json=chat(padding="x" * 4000))
    assert answer.status_code == 413 and answer.json()["error"]["code"] == "request_too_large"


def test_too_many_concurrent_requests_is_429_then_a_client_hanging_up_frees_its_place(tight):
    body = chat(model="beam_search:arithmetic", seed=0, stream=True, messages=[{"role": "user",
                                                                              "content": PROBLEMS[3]}])
    with httpx.Client(timeout=30) as http:
        with http.stream("POST", f"{tight}/v1/chat/completions", json=body) as first:
            assert first.status_code == 200
            lines = first.iter_lines()  # kept: an abandoned iterator closes the connection
            next(lines)  # the search is running
            refused = httpx.post(f"{tight}/v1/chat/completions", json=chat())
            assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
            assert refused.json()["error"]["code"] == "too_many_concurrent_requests"
        # hung up mid-stream: the search is cancelled and its place freed
    deadline = time.monotonic() + 10
    while httpx.get(f"{tight}/health").json()["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert httpx.get(f"{tight}/health").json()["in_flight"] == 0
    assert 'thinkscale_searches_cancelled_total{strategy="beam_search"} 1.0' in httpx.get(f"{tight}/metrics").text
    assert httpx.post(f"{tight}/v1/chat/completions", json=chat(seed=0)).status_code == 200


def fake_client(goes_at):
    """(receive, send, sent, gone) of an ASGI client that hangs up once `gone` is set, or while a message that
    `goes_at(message)` picks is being written (a slow socket)."""
    sent, gone = [], asyncio.Event()

    async def receive():
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)
        if goes_at(message):
            gone.set()
            await asyncio.sleep(0.01)

    return receive, send, sent, gone


def test_a_stream_whose_client_hangs_up_stops_and_lands_even_where_the_cancel_is_lost_or_nothing_started():
    """The stream's response on its own, with a client that hangs up: it never sends past the hang-up, the
    body's generator is closed, and the request lands, also where the body never started."""
    from thinkscale.serve.app import EventStream

    async def case(swallow: bool, while_writing_headers: bool) -> tuple[list, list, int]:
        closed, ended = [], []
        receive, send, sent, hang_up = fake_client(lambda message: while_writing_headers)

        async def chunks():
            try:
                for i in range(50):
                    if i == 2:
                        hang_up.set()  # the client goes while the body waits for its next chunk
                    try:
                        await asyncio.sleep(0.002)
                    except asyncio.CancelledError:
                        if not swallow:  # a cancel that meets a result can be lost (wait_for on Python 3.11)
                            raise
                    yield f"data: {i}\n\n", False
            finally:
                closed.append(True)

        response = EventStream(chunks(), on_end=lambda: ended.append(True))
        await response({"type": "http"}, receive, send)
        return sent, closed, len(ended)

    for swallow in (False, True):
        sent, closed, ended = asyncio.run(case(swallow, False))
        assert len(sent) == 3 and not any(m.get("more_body") is False for m in sent), (swallow, sent)
        assert closed == [True] and ended == 1
    sent, closed, ended = asyncio.run(case(False, True))  # gone before the body started: it never will
    assert [m["type"] for m in sent] == ["http.response.start"] and closed == [] and ended == 1


def test_a_streams_last_chunk_is_written_with_the_bodys_end_and_only_a_written_end_lands_as_answered():
    """The last chunk and the body's end go out in one message (the client reads to the end: no second wait),
    and what follows the body's last yield (where the request is landed as answered) runs only once that chunk
    is written: a client that hangs up during the last write lands as a hang-up."""
    from thinkscale.serve.app import EventStream

    def case(hang_up_at_the_end: bool) -> tuple[list, list, list, list]:
        asked, answered, ended = [], [], []
        receive, send, sent, _ = fake_client(lambda message: hang_up_at_the_end and message.get("more_body") is False)

        async def chunks():  # as the server's: its last chunk, then the landing as answered
            for i in range(2):
                asked.append(i)
                yield f"data: {i}\n\n", i == 1
            answered.append(True)

        asyncio.run(EventStream(chunks(), on_end=lambda: ended.append(True))({"type": "http"}, receive, send))
        return sent, asked, answered, ended

    sent, asked, answered, ended = case(False)
    assert [(m.get("body"), m.get("more_body")) for m in sent[1:]] == [(b"data: 0\n\n", True), (b"data: 1\n\n", False)]
    assert asked == [0, 1] and answered == [True] and ended == [True]
    sent, asked, answered, ended = case(True)
    assert sent[-1].get("more_body") is False and asked == [0, 1] and answered == [] and ended == [True]


def test_tokens_per_minute_are_limited_per_key_and_answered_traces_are_stored_under_the_keys_id(tmp_path):
    other = "other-key-4567"
    config = dataclasses.replace(load_serve_config(None), max_tokens_per_minute_per_key=50,
                                 trace_store=str(tmp_path / "served"))
    with running(config, [KEY, other]) as url:
        def ask(key):
            return httpx.post(f"{url}/v1/chat/completions", json=chat(model="majority_vote:arithmetic", seed=1),
                              headers={"Authorization": f"Bearer {key}"}, timeout=60)

        first = ask(KEY)
        assert first.status_code == 200 and first.json()["usage"]["total_tokens"] >= 50
        refused = ask(KEY)  # the first request spent the minute's tokens of this key
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        assert openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0).models.list()  # spends none
        assert ask(other).status_code == 200  # another key has its own minute
    from thinkscale.serve.auth import key_id
    from thinkscale.store import RunStore

    store = RunStore.read(tmp_path / "served")
    by_key = {key.split("/")[0]: key.split("/")[1] for key in store.done_keys()}
    assert len(store.done_keys()) == 2 and by_key[key_id(KEY)] == first.json()["id"] and key_id(other) in by_key
    (trace,) = [t for k, t in store.iter_keyed() if k.startswith(key_id(KEY))]
    assert trace.chosen_answer == first.json()["thinkscale"]["answer"]
    store.close()
    stored = b"".join(f.read_bytes() for f in (tmp_path / "served").iterdir())
    assert KEY.encode() not in stored and other.encode() not in stored


def test_the_token_window_says_when_a_key_may_spend_again():
    from thinkscale.serve.errors import APIError
    from thinkscale.serve.limits import TokenWindow

    now = [0.0]
    window = TokenWindow(100, clock=lambda: now[0])
    window.charge("a", 60)
    now[0] = 10.0
    window.charge("a", 50)
    window.check("b")
    with pytest.raises(APIError) as refused:
        window.check("a")
    assert refused.value.status == 429 and refused.value.headers["Retry-After"] == "50"  # the first 60 leave at 60 s
    now[0] = 60.0
    window.check("a")
    assert window.spent("a") == 50
    now[0] = 70.0
    assert window.spent("a") == 0


def test_a_served_upstream_another_openai_compatible_server_answers_as_in_process(offline, arithmetic):
    """thinkscale serve in front of an OpenAI-compatible server (the tiny core over HTTP), not a model of its
    own: the search's calls go upstream through the openai policy, and the answers are the offline ones."""
    from thinkscale.config import PolicyConfig
    from thinkscale.policies import get_policy
    from thinkscale.serve.config import ModelConfig

    with TinyOpenAIServer(get_policy("tiny", checkpoint_name="arithmetic")) as upstream:
        served = ModelConfig("upstream", "arithmetic", PolicyConfig("openai", {"base_url": upstream.base_url}),
                             ["prm"])
        config = dataclasses.replace(load_serve_config(None), models=[served])
        with running(config, []) as url:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
            answers = [client.chat.completions.create(model=model, seed=5, messages=[
                {"role": "user", "content": problem}], extra_body={"settings": settings})
                for problem in PROBLEMS[:2]
                for model, settings in [("majority_vote:upstream", {"n": 4}),
                                        ("beam_search:upstream", {"n": 4, "width": 2})]]
        assert len(upstream.bodies) > 4
    plans = [a.model_extra["thinkscale"] for a in answers]
    traces = offline([(problem, plan) for problem, plan in zip([PROBLEMS[0]] * 2 + [PROBLEMS[1]] * 2, plans)])
    assert [a.choices[0].message.content for a in answers] == [solution(t) for t in traces]
    assert [p["answer"] for p in plans] == [t.chosen_answer for t in traces]


def test_a_transformers_model_served_answers_as_the_tiny_core_greedily(offline):
    """A local Hugging Face model behind the server (the shipped checkpoint through transformers' generate):
    greedy, its answers are the tiny core's own, offline."""
    pytest.importorskip("transformers")
    from thinkscale.config import PolicyConfig
    from thinkscale.serve.config import ModelConfig

    served = ModelConfig("hf", "arithmetic", PolicyConfig("transformers", {"model": "arithmetic", "threads": 1}),
                         ["prm"])
    config = dataclasses.replace(load_serve_config(None), models=[served])
    greedy = [("majority_vote:hf", {"n": 1, "temperature": 0}), ("beam_search:hf", {"n": 2, "width": 1,
                                                                                    "temperature": 0})]
    with running(config, []) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        answers = [client.chat.completions.create(model=model, seed=0, messages=[{"role": "user", "content": p}],
                                                  extra_body={"settings": settings})
                   for p in PROBLEMS[:2] for model, settings in greedy]
    plans = [a.model_extra["thinkscale"] for a in answers]
    traces = offline([(problem, plan) for problem, plan in zip([PROBLEMS[0]] * 2 + [PROBLEMS[1]] * 2, plans)])
    assert [a.choices[0].message.content for a in answers] == [solution(t) for t in traces]


# -- the command ---------------------------------------------------------------------

def test_serve_command_answers_offline_and_stops_gracefully_on_sigterm(tmp_path):
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "THINKSCALE_API_KEYS": KEY}
    with open(tmp_path / "serve.log", "w+b") as log:
        process = subprocess.Popen([sys.executable, "-m", "thinkscale.cli", "serve", "--port", str(port)],
                                   stdout=log, stderr=subprocess.STDOUT, env=env)
        _serve_then_sigterm(port, process, log)
    log = (tmp_path / "serve.log").read_text()
    assert "POST /v1/chat/completions" in log and KEY not in log  # requests are logged, keys never


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health").status_code == 200
    except httpx.TransportError:
        return False


def _serve_then_sigterm(port: int, process: subprocess.Popen, log) -> None:
    try:
        deadline = time.monotonic() + 60
        while not _healthy(f"http://127.0.0.1:{port}"):
            assert process.poll() is None and time.monotonic() < deadline, log.seek(0) or log.read().decode()
            time.sleep(0.2)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0)
        stream = client.chat.completions.create(model="beam_search:arithmetic", seed=0, stream=True,
                                                messages=[{"role": "user", "content": PROBLEMS[3]}])
        first = next(iter(stream))
        process.send_signal(signal.SIGTERM)  # in flight: it finishes, then the server exits
        _, content, _, last = read_stream(stream)
        assert first.choices[0].delta.role == "assistant" and content and last.usage.completion_tokens > 0
        assert process.wait(timeout=30) == -signal.SIGTERM  # uvicorn stops gracefully, then dies of the signal
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_serve_refuses_an_open_server_off_loopback_and_a_config_over_its_cap(tmp_path):
    env = {**os.environ, "THINKSCALE_API_KEYS": ""}
    result = subprocess.run([sys.executable, "-m", "thinkscale.cli", "serve", "--host", "0.0.0.0"],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 2 and "without API keys" in result.stderr
    config = tmp_path / "serve.yaml"
    config.write_text("cap: {max_generated_tokens: 1000}\n")
    result = subprocess.run([sys.executable, "-m", "thinkscale.cli", "serve", "--config", str(config)],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 2
    assert "effort.low.budget: max_generated_tokens 800" not in result.stderr  # low fits; medium's 1600 does not
    assert "effort.medium.budget: max_generated_tokens 1600 is over the server's cap of 1000" in result.stderr
    help_text = subprocess.run([sys.executable, "-m", "thinkscale.cli", "serve", "--help"], capture_output=True,
                               text=True, timeout=60).stdout
    assert "usage: thinkscale serve" in help_text and "--api-key-file" in help_text
    config.write_text("stream_interval_ms: -5\n")
    with pytest.raises(ConfigError, match="stream_interval_ms: must be a finite number at least 0, got -5"):
        load_serve_config(config)
    config.write_text("stream_interval_ms: .nan\n")
    with pytest.raises(ConfigError, match="stream_interval_ms: must be a finite number at least 0, got nan"):
        load_serve_config(config)
