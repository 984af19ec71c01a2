"""`thinkscale serve` against the same strategy called in process, on the same tiny core: what serving costs.

    python benchmarks/serve.py [--effort low] [--problems 64] [--problem-seed 0] [--latency-requests 200]
                               [--concurrency 1,16,64] [--throughput-requests 256] [--requests 10000]
                               [--memory-effort none] [--threads 1]

The script starts `thinkscale serve` itself, as a user runs it, on 127.0.0.1
and a free port (its config: the default tiny arithmetic core and reward
models, the policy on `--threads` torch threads, room for the largest
concurrency), and stops it at the end, on an error or Ctrl-C too. Beside it,
in this process, the same config's model (the same checkpoint, the same
reward models, the same effort table and cap) runs the same strategy with the
same budget, problems and seeds: `strategy.solve(...)` called directly on
one event loop, with no listener, no HTTP and no JSON, the best the strategy
does without a server. The server is timed as a user waits for it, with the
official `openai` client: HTTP, JSON, server-sent events and the client's
parsing included. Prompts are arithmetic test problems (`--problem-seed`
draws another set); request i of a phase is problem i (cycling) with seed i.

What it measures, in this order:

- answers: every served answer (content, chosen answer, reasoning tokens)
  against the in-process one of the same problem and seed; all must agree,
  and the server must say it ran the same strategy, settings and budget;
- latency at concurrency 1, p50 and p99, and the median of each request's
  difference from the same request in process: in process; served and
  streamed, read by the openai client; the same read by a bare SSE reader
  (httpx, `json.loads` of each event: the server's cost without the openai
  client's); served whole (chat and completions in turn). The ways take
  turns request by request, so that a busy moment of a shared machine hits
  them alike, in a balanced order (`ORDERS`: a server left idle answers
  later, and each way meets that as often as the others);
- time to the first reasoning delta of a stream, against the upstream's own
  first token (the same tiny policy asked for one token of the same prompt,
  in process) and against the in-process search's first `generated` event
  (the floor for a server that streams whole steps and samples);
- throughput in requests/s at each `--concurrency`, in process (that many
  searches at once on one event loop, batched by the policy) and served
  (that many streaming openai clients at once), with the CPU time a request
  took: in process; the server process's (/proc/PID/stat) and the clients';
- the server's memory (VmRSS from /proc/PID/status) through `--requests`
  cheap requests (`--memory-effort`, default `none`: one sample), chat and
  completions, streamed and whole, at the largest concurrency: after 100 of
  them and at every tenth after, with the requests above served before.

Event loop: uvicorn runs the server on uvloop (and httptools) where they
are installed (the `serve` extra installs them); this script then runs its
own loop, the client's and the in-process strategy's, on uvloop too, so the
baseline gets the faster loop as well.

Stream window: `--stream-interval-ms` is the server's `stream_interval_ms`
(default 50, the server's default): after the first reasoning, at most one
chunk per window. `--stream-tokens` is its `stream_tokens` (default `first`,
the server's: the first call's first sample token by token, later steps
whole as each is generated; `all`: every call's).

Threads: torch runs on `--threads` threads (default 1) in the server and in
this process (set before torch loads). The two sides never compute at once:
each phase runs one side at a time. On a busy 2-core machine more threads
fight over the cores and run slower. The default run takes about 15 minutes
on 2 shared cores (the memory phase about 5 of them); `--latency-requests 20
--throughput-requests 64 --requests 2000` about 3.

Prints the tables, then on its last line the headline `overhead: N%`: how
much longer a served, streamed request read by the openai client takes than
the same request in process (the median of the paired differences at
concurrency 1), as a share of the in-process p50. The line before it gives
the p50 against the p50 as well: the 64 problems' latencies are spread out
(p50 about 70 ms, p99 about 200), so two medians of 200 requests can land on
different problems (in one run a bare SSE reader's p50 came out at +11.8%
and the openai client's at +4.4%, while the bare reader's paired difference
was the smaller, +4.3 ms against +5.1).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

MODEL = "arithmetic"  # the served model's name: plain, so that reasoning_effort picks the strategy
MEMORY_FIRST = 100  # the memory phase reads the server's RSS after this many requests, then after all
LATENCY_ROWS = ("in process", "served, streamed, openai", "served, streamed, bare SSE", "served, whole, openai")
# The order the four ways take at each latency request, cycling: a balanced Latin square (Williams), so each way
# comes first as often as the others (after the in-process probes that end each request: the upstream's first
# token and first event) and, within a request, follows each other way once a cycle of four requests. So each
# served way comes after in-process work in two requests of four. A server that sat idle while this process
# searched answers its next request later (a GET /health 0.7 ms after a busy server's last answer, 2.3 ms after
# 70 ms idle, on this 2-core VM): a plain rotation put the openai stream after the in-process search every
# time, and only that way paid it. A --latency-requests that is not a multiple of 4 leaves the last cycle short.
ORDERS = ((0, 1, 3, 2), (1, 2, 0, 3), (2, 3, 1, 0), (3, 0, 2, 1))


@dataclass(frozen=True)
class Answer:
    """What must agree between the server and the process: the chosen solution, its answer, tokens spent."""

    content: str
    answer: str | None
    reasoning_tokens: int


@dataclass(frozen=True)
class Timed:
    answer: Answer
    seconds: float
    first_reasoning_s: float | None = None  # streams only: when the first reasoning delta arrived


# -- the server ----------------------------------------------------------------

def server_config(threads: int, concurrency: int, stream_interval_ms: float = 50.0,
                  stream_tokens: str = "first") -> str:
    """The default server, its policy on `threads` threads, limits wide enough for `concurrency` clients."""
    return (f"models:\n"
            f"  - name: {MODEL}\n"
            f"    task: arithmetic\n"
            f"    policy: {{name: tiny, options: {{checkpoint_name: arithmetic, threads: {threads}}}}}\n"
            f"max_concurrent: {concurrency}\n"
            f"max_concurrent_per_key: {concurrency}\n"
            f"stream_interval_ms: {stream_interval_ms}\n"
            f"stream_tokens: {stream_tokens}\n")


@contextmanager
def serving(config: Path, threads: int, log_path: Path) -> Iterator[tuple[subprocess.Popen, str, Any]]:
    """`thinkscale serve --config config` started now on a free port: (process, base URL, its log).

    Stopped on the way out, whatever the way: an error, Ctrl-C, or the end.
    """
    from thinkscale.net import free_port

    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "THINKSCALE_API_KEYS": ""}  # open: it binds to loopback
    with open(log_path, "w+b") as log:
        process = subprocess.Popen([sys.executable, "-m", "thinkscale.cli", "serve", "--config", str(config),
                                    "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            yield process, f"http://127.0.0.1:{port}", log
        finally:
            stop(process)


def stop(process: subprocess.Popen) -> None:
    """SIGTERM (the server finishes what is in flight and exits), then SIGKILL if it does not."""
    from thinkscale.net import stop_server

    stop_server(process, timeout_s=45)


def rss_mib(pid: int) -> float:
    """A process's resident memory, VmRSS from /proc/PID/status, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/{pid}/status has no VmRSS")


class Served:
    """Requests to the server through the official async openai client (and one bare SSE reader)."""

    def __init__(self, url: str, timeout_s: float = 600) -> None:
        import httpx
        import openai

        self.client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=timeout_s)
        self.http = httpx.AsyncClient(base_url=url, timeout=timeout_s)
        self.answered = 0
        self.last_plan: dict = {}  # the `thinkscale` field of the last answer: what the server ran

    async def ask(self, text: str, seed: int, effort: str, stream: bool, chat: bool = True) -> Timed:
        if chat:
            create = self.client.chat.completions.create
            args = {"messages": [{"role": "user", "content": text}], "reasoning_effort": effort}
        else:  # the completions endpoint has no reasoning_effort of its own: it goes in the body as thinkscale's
            create = self.client.completions.create
            args = {"prompt": text, "extra_body": {"reasoning_effort": effort}}
        started = time.perf_counter()
        if not stream:
            reply = await create(model=MODEL, seed=seed, **args)
            seconds = time.perf_counter() - started
            choice = reply.choices[0]
            plan = self.last_plan = reply.model_extra["thinkscale"]
            self.answered += 1
            content = choice.message.content if chat else choice.text
            return Timed(Answer(content, plan["answer"], reply.usage.completion_tokens_details.reasoning_tokens),
                         seconds)
        first, pieces, last = None, [], None
        async for chunk in await create(model=MODEL, seed=seed, stream=True, **args):
            last = chunk
            for choice in chunk.choices:
                fields = (choice.delta if chat else choice).model_extra or {}
                if first is None and fields.get("reasoning_content"):
                    first = time.perf_counter() - started
                pieces.append((choice.delta.content if chat else choice.text) or "")
        seconds = time.perf_counter() - started
        plan = self.last_plan = last.model_extra["thinkscale"]
        self.answered += 1
        return Timed(Answer("".join(pieces), plan["answer"], last.usage.completion_tokens_details.reasoning_tokens),
                     seconds, first)

    async def ask_sse(self, text: str, seed: int, effort: str) -> Timed:
        """A streamed chat request read by a bare client: httpx, SSE lines, json.loads of each event.

        What the server costs without the openai client's parsing (a pydantic model per chunk).
        """
        body = {"model": MODEL, "seed": seed, "stream": True, "reasoning_effort": effort,
                "messages": [{"role": "user", "content": text}]}
        first, pieces, last = None, [], None
        started = time.perf_counter()
        async with self.http.stream("POST", "/v1/chat/completions", json=body) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                last = json.loads(line[6:])
                for choice in last["choices"]:
                    if first is None and choice["delta"].get("reasoning_content"):
                        first = time.perf_counter() - started
                    pieces.append(choice["delta"].get("content") or "")
        seconds = time.perf_counter() - started
        plan = self.last_plan = last["thinkscale"]
        self.answered += 1
        tokens = last["usage"]["completion_tokens_details"]["reasoning_tokens"]
        return Timed(Answer("".join(pieces), plan["answer"], tokens), seconds, first)

    async def close(self) -> None:
        await self.client.close()
        await self.http.aclose()


# -- the same strategy in process ------------------------------------------------

class InProcess:
    """The server config's model and effort level, solved by calling the strategy directly."""

    def __init__(self, config: Any, model: Any, effort: str) -> None:
        from thinkscale.serve.config import within_cap
        from thinkscale.strategies import get_strategy

        level = config.effort[effort]
        self.model, self.effort = model, effort
        self.strategy_name, self.settings = level.strategy, dict(level.settings)
        self.strategy = get_strategy(level.strategy, **level.settings)
        self.budget = within_cap(level.budget, config.cap)  # what the server gives the level: its budget, capped
        self.scorer_name = config.default_scorer if config.default_scorer in model.scorers else None
        self.scorer = model.scorers.get(self.scorer_name)

    def describe(self) -> dict:
        """What the server's `thinkscale` field must say it ran."""
        import dataclasses

        return {"strategy": self.strategy_name, "settings": self.settings, "scorer": self.scorer_name,
                "budget": {k: v for k, v in dataclasses.asdict(self.budget).items() if v is not None}}

    async def solve(self, prompt: str, seed: int) -> Timed:
        from thinkscale.serve.shapes import chosen_solution
        from thinkscale.tasks import Problem

        m = self.model
        started = time.perf_counter()
        trace = await self.strategy.solve(Problem("benchmark", prompt, 0), m.task, m.policy, self.scorer,
                                          self.budget.to_budget(), seed)
        seconds = time.perf_counter() - started
        return Timed(Answer(chosen_solution(trace) or "", trace.chosen_answer, trace.usage.generated_tokens), seconds)

    async def first_event(self, prompt: str, seed: int) -> float:
        """Seconds to the search's first `generated` event (a listener set as the server sets it)."""
        from thinkscale.strategies.base import SEARCH_EVENTS
        from thinkscale.tasks import Problem

        m, first = self.model, []

        def listen(event: str, trace: Any, nodes: list) -> None:
            if event == "generated" and not first:
                first.append(time.perf_counter())

        async def watched() -> None:
            SEARCH_EVENTS.set(listen)  # this task's context only
            await self.strategy.solve(Problem("benchmark", prompt, 0), m.task, m.policy, self.scorer,
                                      self.budget.to_budget(), seed)

        started = time.perf_counter()
        await asyncio.create_task(watched())
        return first[0] - started

    async def first_token(self, prompt: str, seed: int) -> float:
        """Seconds the upstream (the same tiny policy) takes to its own first token of `prompt`.

        In a cache scope of its own, as every served search has: the policy's
        prefix cache must not hand it a prompt an earlier call computed (a
        search's first call computes its prompt too), or the figure would be the
        cost of one token, not of a first token.
        """
        from thinkscale.policies import GenerationRequest

        policy, scope = self.model.policy, object()
        try:
            started = time.perf_counter()
            await policy.generate([GenerationRequest(prompt, n=1, max_tokens=1, seed=seed, cache_scope=scope)])
            return time.perf_counter() - started
        finally:
            policy.release(scope)


# -- measuring -----------------------------------------------------------------------

def percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q))


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) a process has used, from /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": fields[11], [12] are utime, stime
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def pool(concurrency: int, jobs: list[Callable[[], Awaitable[Timed]]]) -> tuple[list[Timed], float]:
    """Run `jobs` with `concurrency` of them in flight at once; (their results in order, wall seconds)."""
    results: list[Timed | None] = [None] * len(jobs)
    next_job = iter(range(len(jobs)))

    async def worker() -> None:
        for i in next_job:
            results[i] = await jobs[i]()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(jobs)))))
    return results, time.perf_counter() - started


class Agreement:
    """Served answers against in-process ones of the same problem and seed."""

    def __init__(self) -> None:
        self.checked, self.differ = 0, []

    def check(self, where: str, served: Answer, local: Answer) -> None:
        self.checked += 1
        if served != local:
            self.differ.append(f"{where}: served {served} != in process {local}")


class Bench:
    """One run: the server, the same strategy in process, the problems, and the answers compared so far."""

    def __init__(self, args: argparse.Namespace, served: Served, pid: int, local: InProcess,
                 problems: list[str]) -> None:
        self.args, self.served, self.pid, self.local, self.problems = args, served, pid, local, problems
        self.levels = [int(c) for c in args.concurrency.split(",")]
        self.agree = Agreement()

    def prompt(self, i: int) -> str:
        return self.problems[i % len(self.problems)]

    def ask(self, i: int, seed: int, stream: bool, chat: bool = True, effort: str | None = None) -> Awaitable[Timed]:
        """Problem i as a user sends it (`(3+5)*(7-2)=`: the server writes it as the task's prompt)."""
        return self.served.ask(self.prompt(i).strip(), seed, effort or self.args.effort, stream, chat)

    async def warm_up(self) -> None:
        """First requests and first batches on both sides, the largest concurrency once each."""
        most = max(self.levels)
        await pool(most, [partial(self.local.solve, self.prompt(i), 10**6 + i) for i in range(most)])
        await pool(most, [partial(self.ask, i, 10**6 + i, True) for i in range(most)])
        for i in range(4):
            await self.local.first_token(self.prompt(i), i)
            await self.ask(i, 10**6 + i, False, chat=False)

    async def latency(self) -> dict[str, list]:
        """Concurrency 1: each request in process, served streamed, served whole, in turn (`ORDERS`)."""
        ways: dict[str, list] = {name: [] for name in (*LATENCY_ROWS, "upstream first token",
                                                       "in-process first event")}
        for i in range(self.args.latency_requests):
            prompt, seed = self.prompt(i), i
            runs = [("in process", partial(self.local.solve, prompt, seed)),
                    ("served, streamed, openai", partial(self.ask, i, seed, True)),
                    ("served, streamed, bare SSE", partial(self.served.ask_sse, prompt.strip(), seed, self.args.effort)),
                    ("served, whole, openai", partial(self.ask, i, seed, False, i % 2 == 0))]  # chat and completions
            for way in ORDERS[i % len(ORDERS)]:
                name, run = runs[way]
                ways[name].append(await run())
            for name in LATENCY_ROWS[1:]:
                self.agree.check(f"latency request {i}, {name}", ways[name][-1].answer, ways["in process"][-1].answer)
            ways["upstream first token"].append(await self.local.first_token(prompt, seed))
            ways["in-process first event"].append(await self.local.first_event(prompt, seed))
        ran = {k: self.served.last_plan[k] for k in ("strategy", "settings", "scorer", "budget")}
        if ran != self.local.describe():
            self.agree.differ.append(f"the server ran {ran}, the process {self.local.describe()}")
        return ways

    async def throughput(self) -> dict[int, dict[str, float]]:
        """The same requests at each concurrency, in process and then served (streamed); rates and CPU."""
        count, rates = self.args.throughput_requests, {}
        for c in self.levels:
            cpu = time.process_time()
            ours, ours_s = await pool(c, [partial(self.local.solve, self.prompt(i), i) for i in range(count)])
            ours_cpu = time.process_time() - cpu
            cpu, server_cpu = time.process_time(), cpu_seconds(self.pid)
            theirs, theirs_s = await pool(c, [partial(self.ask, i, i, True) for i in range(count)])
            client_cpu, server_cpu = time.process_time() - cpu, cpu_seconds(self.pid) - server_cpu
            for i, (s, o) in enumerate(zip(theirs, ours)):
                self.agree.check(f"concurrency {c} request {i}", s.answer, o.answer)
            rates[c] = {"in process": count / ours_s, "served": count / theirs_s, "in-process CPU": ours_cpu / count,
                        "server CPU": server_cpu / count, "client CPU": client_cpu / count}
        return rates

    async def memory(self) -> list[tuple[int, float]]:
        """The server's RSS through `--requests` cheap requests of every kind: after 100, then every tenth."""
        total, step, most = self.args.requests, max(self.args.requests // 10, 1), max(self.levels)
        marks = sorted({MEMORY_FIRST, total, *range(step, total, step)} - set(range(MEMORY_FIRST)))
        rss, done = [], 0
        for mark in marks:
            await pool(most, [partial(self.ask, i, i, i % 2 == 0, (i // 2) % 2 == 0, self.args.memory_effort)
                              for i in range(done, mark)])
            done = mark
            rss.append((done, rss_mib(self.pid)))
        return rss


def event_loop_name() -> str:
    """The event loop both sides run on: uvicorn picks uvloop where it is installed, and so does this script."""
    import importlib.util

    return "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"


def event_loop_run(coroutine: Any) -> Any:
    """`asyncio.run` on uvloop where it is installed (as the server runs), else on asyncio's own loop.

    The client and the in-process strategy share this loop: both get the faster one.
    """
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


# -- reporting -----------------------------------------------------------------------

def report(args: argparse.Namespace, bench: Bench, latency: dict[str, list], rates: dict[int, dict[str, float]],
           rss: list[tuple[int, float]], served_before: int) -> None:
    ms = 1000
    base = percentile([t.seconds for t in latency["in process"]], 50)
    print(f"\nlatency at concurrency 1, ms ({args.latency_requests} requests each way, interleaved):")
    print(f"  {'':28} {'p50':>8} {'p99':>8} {'p50 vs in process':>18} {'paired diff p50':>16} "
          f"{'first reasoning p50':>20}")
    for name in LATENCY_ROWS:
        seconds = [t.seconds for t in latency[name]]
        first = [t.first_reasoning_s for t in latency[name] if t.first_reasoning_s is not None]
        paired = [t.seconds - o.seconds for t, o in zip(latency[name], latency["in process"])]
        p50 = percentile(seconds, 50)
        print(f"  {name:28} {p50 * ms:8.1f} {percentile(seconds, 99) * ms:8.1f} {p50 / base - 1:+18.1%} "
              f"{percentile(paired, 50) * ms:+16.1f} {percentile(first, 50) * ms if first else float('nan'):20.1f}")
    for name in ("upstream first token", "in-process first event"):
        seconds = latency[name]
        print(f"  {name:28} {percentile(seconds, 50) * ms:8.1f} {percentile(seconds, 99) * ms:8.1f}")

    print(f"\nthroughput, requests/s ({args.throughput_requests} requests at each concurrency; served: streamed):")
    print(f"  {'concurrency':30} " + " ".join(f"{c:>8}" for c in bench.levels))
    rows = [("in process", "in process", 1), ("served", "served", 1),
            ("CPU ms a request, in process", "in-process CPU", ms), ("  served: the server", "server CPU", ms),
            ("  served: the openai client", "client CPU", ms)]
    for label, key, scale in rows:
        print(f"  {label:30} " + " ".join(f"{rates[c][key] * scale:8.1f}" for c in bench.levels))
    print(f"  {'served / in process':30} " + " ".join(
        f"{rates[c]['served'] / rates[c]['in process']:8.2f}" for c in bench.levels))

    first_delta = percentile([t.first_reasoning_s for t in latency["served, streamed, openai"]], 50)
    first_token = percentile(latency["upstream first token"], 50)
    first_event = percentile(latency["in-process first event"], 50)
    print(f"\nfirst reasoning delta, p50: served {first_delta * ms:.1f} ms; the upstream's own first token "
          f"{first_token * ms:.1f} ms: {first_delta / first_token:.1f}x (goal: at most 2x); the in-process "
          f"search's first step or sample {first_event * ms:.1f} ms: {first_delta / first_event:.2f}x")
    after_first, after_all = rss[0][1], rss[-1][1]
    print(f"server memory (VmRSS) through {args.requests} '{args.memory_effort}' requests, chat and completions, "
          f"streamed and whole, at concurrency {max(bench.levels)} ({served_before} served before them): "
          + ", ".join(f"{mib:.1f} MiB after {n}" for n, mib in rss))
    print(f"memory growth from request {MEMORY_FIRST} to {args.requests}: {after_all - after_first:+.1f} MiB "
          f"({after_all / after_first - 1:+.1%})")
    agree = bench.agree
    if agree.differ:
        print(f"ANSWERS DIFFER: {len(agree.differ)} of {agree.checked} served answers differ from the in-process "
              f"ones of the same problem and seed, e.g.:\n  " + "\n  ".join(agree.differ[:5]))
    else:
        print(f"answers: all {agree.checked} served answers equal the in-process ones of the same problem and seed "
              f"(content, chosen answer, reasoning tokens)")
    way = latency["served, streamed, openai"]
    streamed = percentile([t.seconds for t in way], 50)
    paired = percentile([t.seconds - o.seconds for t, o in zip(way, latency["in process"])], 50)
    print(f"served, streamed, openai client, against in process at concurrency 1: the p50s {streamed * ms:.1f} and "
          f"{base * ms:.1f} ms ({100 * (streamed / base - 1):+.1f}%); the median paired difference "
          f"{paired * ms:+.1f} ms, {100 * paired / base:.1f}% of the in-process p50 (goal: at most 5%)")
    print(f"overhead: {100 * paired / base:.1f}%")


async def run_all(args: argparse.Namespace, url: str, pid: int, local: InProcess, problems: list[str]) -> tuple:
    served = Served(url)
    try:
        bench = Bench(args, served, pid, local, problems)
        await bench.warm_up()
        latency = await bench.latency()
        rates = await bench.throughput()
        served_before = served.answered
        rss = await bench.memory()
    finally:
        await served.close()
    return bench, latency, rates, rss, served_before


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.split("\n")[2:]))
    parser.add_argument("--effort", default="low", help="the reasoning_effort measured (default low: beam search "
                                                        "n=4, width 2, with the PRM)")
    parser.add_argument("--problems", type=int, default=64, help="distinct test problems (default 64)")
    parser.add_argument("--problem-seed", type=int, default=0, help="which test problems are drawn (default 0)")
    parser.add_argument("--latency-requests", type=int, default=200, help="requests each way at concurrency 1 "
                                                                          "(default 200)")
    parser.add_argument("--concurrency", default="1,16,64", help="concurrency levels for throughput (1,16,64)")
    parser.add_argument("--throughput-requests", type=int, default=256, help="requests at each level (256)")
    parser.add_argument("--requests", type=int, default=10000, help=f"requests of the memory phase; the server's "
                                                                   f"RSS after {MEMORY_FIRST} and after all "
                                                                   f"(default 10000)")
    parser.add_argument("--memory-effort", default="none", help="reasoning_effort of the memory phase's requests "
                                                                "(default none: one sample)")
    parser.add_argument("--stream-interval-ms", type=float, default=50.0,
                        help="the server's stream_interval_ms: a chunk at most this often after the first (default 50)")
    parser.add_argument("--stream-tokens", choices=("first", "all", "none"), default="first",
                        help="the server's stream_tokens: which calls of a search stream their text token by token "
                             "(default first, the server's default)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, in the server and here (default 1)")
    args = parser.parse_args(argv)
    if args.requests <= MEMORY_FIRST:
        parser.error(f"--requests must be over {MEMORY_FIRST}: memory is compared after {MEMORY_FIRST} and after all")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)

    import torch

    torch.set_num_threads(args.threads)
    from thinkscale.net import wait_until_serving
    from thinkscale.serve.config import EFFORTS, load_serve_config
    from thinkscale.serve.models import ServedModel
    from thinkscale.tasks import get_task

    for effort in (args.effort, args.memory_effort):
        if effort not in EFFORTS:
            parser.error(f"reasoning_effort must be one of {', '.join(EFFORTS)}, got {effort!r}")
    started = time.perf_counter()
    most = max(int(c) for c in args.concurrency.split(","))
    problems = [e.problem.prompt for e in get_task("arithmetic").examples("test", args.problems,
                                                                           seed=args.problem_seed)]
    with tempfile.TemporaryDirectory(prefix="thinkscale-serve-bench-") as tmp:
        config_path = Path(tmp) / "serve.yaml"
        config_path.write_text(server_config(args.threads, most, args.stream_interval_ms, args.stream_tokens))
        with serving(config_path, args.threads, Path(tmp) / "serve.log") as (process, url, log):
            config = load_serve_config(config_path)  # the same config, loaded here while the server loads there
            local = InProcess(config, ServedModel.load(config.models[0]), args.effort)
            wait_until_serving(f"{url}/v1", process, 180, "thinkscale serve", log)
            print(f"thinkscale serve (pid {process.pid}, {url}) against the same strategy in process: reasoning_effort "
                  f"{args.effort!r} = {local.strategy_name} {local.settings}, scorer {local.scorer_name}, budget "
                  f"{local.describe()['budget']}; {len(problems)} arithmetic test problems (problem seed "
                  f"{args.problem_seed}); {args.threads} torch thread(s) each side; the official openai client; "
                  f"event loop: {event_loop_name()} each side; stream_interval_ms {args.stream_interval_ms:g}, "
                  f"stream_tokens {args.stream_tokens}",
                  flush=True)
            results = event_loop_run(run_all(args, url, process.pid, local, problems))
    print(f"whole benchmark: {time.perf_counter() - started:.0f} s")
    report(args, *results)


if __name__ == "__main__":
    main()
