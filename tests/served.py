"""What the tests of real servers (llama.cpp, vLLM, thinkscale serve) share: calling a policy, the checks both
must pass, and `thinkscale serve` running in a thread."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from contextlib import contextmanager

from thinkscale.budget import Budget
from thinkscale.policies import GenerationRequest
from thinkscale.runner import run
from thinkscale.strategies import get_strategy


def generate(policy, requests):
    async def go():
        try:
            return await policy.generate(requests)
        finally:
            await policy.close()

    return asyncio.run(go())


def texts(results):
    return [[(g.text, g.finish_reason, g.stop_string) for g in r.generations] for r in results]


def check_step_generation(policy, tiny, arithmetic) -> None:
    """A step stops at the delimiter and says so; a cut step says `length`; a finished solution just ends."""
    requests = []
    for e in arithmetic.examples("test", 8):
        (whole,) = generate(tiny, [GenerationRequest(prompt=e.problem.prompt, temperature=0, max_tokens=96)])
        first = arithmetic.split_steps(whole.generations[0].text)[0]
        partial = e.problem.prompt + first + arithmetic.step_delimiter
        requests.append(GenerationRequest(prompt=partial, temperature=0, max_tokens=64, stop=("\n",)))
        requests.append(GenerationRequest(prompt=partial, temperature=0, max_tokens=1, stop=("\n",)))
        requests.append(GenerationRequest(prompt=e.problem.prompt + whole.generations[0].text, temperature=0,
                                          max_tokens=8, stop=("\n",)))  # a finished solution: it just ends
    served = generate(policy, requests)
    assert texts(served) == texts(generate(tiny, requests))
    steps, cut, ends = ([r.generations[0] for r in served[i::3]] for i in range(3))
    assert all(g.stop_string == "\n" and not g.ended and g.text and "\n" not in g.text for g in steps)
    assert all(g.finish_reason == "length" for g in cut)
    assert all(g.ended and g.text == "" for g in ends)


def check_votes_grade_like_tiny(policy, tiny, arithmetic, problems: int, n: int = 4) -> list:
    """Greedy repeated sampling and majority vote through `policy` grade as through `tiny`; the served traces."""
    examples = arithmetic.examples("test", problems)
    traces = []
    for name in ("majority_vote", "repeated_sampling"):
        strategy = get_strategy(name, n=n, temperature=0, max_tokens=96)
        served = run(examples, arithmetic, strategy, policy, Budget(), seed=0)
        direct = run(examples, arithmetic, strategy, tiny, Budget(), seed=0)
        assert [(t.chosen_answer, t.correct) for t in served] == [(t.chosen_answer, t.correct) for t in direct]
        assert [[n.text for n in t.nodes] for t in served] == [[n.text for n in t.nodes] for t in direct]
        assert [[n.correct for n in t.terminals()] for t in served] == \
               [[n.correct for n in t.terminals()] for t in direct]
        traces += served
    return traces


@contextmanager
def running(config, keys: list[str]):
    """A real `thinkscale serve` for `config` on a free port in a thread of its own; its base URL."""
    from thinkscale.net import free_port
    from thinkscale.serve.server import build_server

    server = build_server(dataclasses.replace(config, port=free_port()), keys, log_level="warning")
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
