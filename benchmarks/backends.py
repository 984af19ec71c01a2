"""Best-of-N through the openai policy against a real llama.cpp server: what the client costs.

    python benchmarks/backends.py [--problems 50] [--n 16] [--concurrency 16] [--server-threads 1]

The shipped arithmetic core is converted to GGUF (cached under .cache/gguf/)
and served by llama-cpp-python's OpenAI-compatible server on 127.0.0.1
(needs `pip install -e '.[llamacpp]'`). Best-of-N with the confidence scorer
solves the same problems twice in one run (after a short warm-up), with the
policy's concurrency at 1 (the baseline) and at `--concurrency`; the samples
are seeded, so both runs draw the same ones. Throughput counts the generated
tokens the server reported.

What the client costs is measured against the server's own time, the CPU
time of the server process (utime + stime from /proc/PID/stat, all its
threads), in the concurrency-1 run, where nothing of the client hides behind
a request in flight:

- the client process's CPU time (`time.process_time`), split into the thread
  that runs the event loop (strategy, runner, grading, the HTTP client:
  thinkscale's own work) and the other threads (the confidence scorer's
  torch thread: model work the user asked for, like the server's);
- the wall time outside policy and scorer calls (no request and no scoring
  in flight): time the user waits on thinkscale alone.

Prints one line per run, the throughput ratio, the client's costs against
the server's, and last, on a line of its own, `overhead: N.NN`: the event
loop thread's CPU time per second of server CPU time at concurrency 1 (0.10:
the client spends a tenth of what the server spends; above 1, the client
costs more than the model it drives).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from importlib.metadata import version
from pathlib import Path
from urllib.parse import urlparse


class Both:
    """Two clocks ticking together: the server's alone, and the server's or the scorer's."""

    def __init__(self, *clocks) -> None:
        self.clocks = clocks

    def enter(self) -> None:
        for c in self.clocks:
            c.enter()

    def leave(self) -> None:
        for c in self.clocks:
            c.leave()


def timed(call, clock):
    """`call` (a coroutine function) counted as in flight on `clock` while it runs."""
    async def run(*args, **kwargs):
        clock.enter()
        try:
            return await call(*args, **kwargs)
        finally:
            clock.leave()

    return run


def process_cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) a process has used, from /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": field 3 (state) is fields[0]
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def server_pid(url: str) -> int:
    """The pid of the llama_cpp.server child of this process that listens on `url`'s port."""
    port = str(urlparse(url).port)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # gone, or not ours to read
        words = [a.decode(errors="replace") for a in argv]
        if ppid == os.getpid() and "llama_cpp.server" in words and port in words:
            return int(entry.name)
    raise RuntimeError(f"no llama_cpp.server child of this process listens on port {port}")


def solve(url: str, pid: int, concurrency: int, examples, task, strategy, scorer) -> dict:
    from thinkscale.budget import Budget
    from thinkscale.policies.openai import (
        LLAMACPP_PLAIN_SAMPLING,
        BusyClock,
        OpenAIPolicy,
    )
    from thinkscale.runner import solve_all

    policy = OpenAIPolicy(url, concurrency=concurrency, extra_body=LLAMACPP_PLAIN_SAMPLING)
    server, backend = BusyClock(), BusyClock()  # requests in flight; requests or scorer calls in flight
    policy.clock = Both(server, backend)
    score = scorer.score
    scorer.score = timed(score, backend)

    async def main():
        try:
            return await solve_all(examples, task, strategy, policy, Budget(), seed=0, scorer=scorer)
        finally:
            await policy.close()

    server_cpu, client_cpu, loop_cpu = process_cpu_seconds(pid), time.process_time(), time.thread_time()
    started = time.perf_counter()
    try:
        traces = asyncio.run(main())  # the event loop runs on this thread
    finally:
        scorer.score = score
    wall = time.perf_counter() - started
    loop_cpu = time.thread_time() - loop_cpu
    client_cpu = time.process_time() - client_cpu
    server_cpu = process_cpu_seconds(pid) - server_cpu
    return {"wall": wall, "tokens": sum(t.usage.generated_tokens for t in traces),
            "samples": sum(t.usage.samples for t in traces), "requests": policy.requests_sent,
            "accuracy": sum(bool(t.correct) for t in traces) / len(traces),
            "outside": wall - backend.busy_s, "server_busy": server.busy_s, "server_cpu": server_cpu,
            "client_cpu": client_cpu, "loop_cpu": loop_cpu, "other_cpu": client_cpu - loop_cpu}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.split("\n")[2:]))
    parser.add_argument("--problems", type=int, default=50)
    parser.add_argument("--problem-seed", type=int, default=0, help="which test problems are drawn (default 0)")
    parser.add_argument("--n", type=int, default=16, help="samples per problem (best-of-N)")
    parser.add_argument("--concurrency", type=int, default=16, help="the policy's requests in flight")
    parser.add_argument("--server-threads", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the scorer")
    parser.add_argument("--max-tokens", type=int, default=96)
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    import torch

    torch.set_num_threads(args.threads)
    from thinkscale.scorers import get_scorer
    from thinkscale.strategies import get_strategy
    from thinkscale.tasks import get_task
    from thinkscale.tiny.gguf import cached_gguf, serve_llamacpp

    task = get_task("arithmetic")
    examples = task.examples("test", args.problems, seed=args.problem_seed)
    strategy = get_strategy("best_of_n", n=args.n, temperature=1.0, max_tokens=args.max_tokens)
    scorer = get_scorer("confidence", checkpoint_name=task.name)
    model = cached_gguf("arithmetic")
    print(f"llama-cpp-python {version('llama_cpp_python')} server ({args.server_threads} thread(s)) on {model.name}; "
          f"best_of_n n={args.n} with the confidence scorer on {args.problems} arithmetic test problems "
          f"(seed {args.problem_seed})", flush=True)
    results = {}
    with serve_llamacpp(model, threads=args.server_threads) as url:
        pid = server_pid(url)
        solve(url, pid, 1, examples[:2], task, strategy, scorer)  # warm-up: first requests, first scorer batch
        for concurrency in (1, args.concurrency):
            r = results[concurrency] = solve(url, pid, concurrency, examples, task, strategy, scorer)
            print(f"concurrency {concurrency}: {r['requests']} requests, {r['samples']} samples, {r['tokens']} tokens "
                  f"in {r['wall']:.1f} s = {r['tokens'] / r['wall']:,.0f} tokens/s; accuracy {r['accuracy']:.2f}; "
                  f"server CPU {r['server_cpu']:.1f} s, requests in flight {r['server_busy'] / r['wall']:.0%} of "
                  f"wall time; client CPU {r['client_cpu']:.1f} s (event loop thread {r['loop_cpu']:.1f} s, "
                  f"scorer and other threads {r['other_cpu']:.1f} s); wall outside policy and scorer calls "
                  f"{r['outside']:.1f} s ({r['outside'] / r['wall']:.0%})", flush=True)
    base, best = results[1], results[args.concurrency]
    print(f"baseline: the same run at concurrency 1; throughput ratio (concurrency {args.concurrency} / 1): "
          f"{(best['tokens'] / best['wall']) / (base['tokens'] / base['wall']):.2f}")
    server = base["server_cpu"]
    print(f"what the client costs at concurrency 1, per second of the server's CPU time ({server:.1f} s): "
          f"event loop thread CPU {base['loop_cpu'] / server:.2f}, wall time outside policy and scorer calls "
          f"{base['outside'] / server:.2f}, the whole client process's CPU (scorer included) "
          f"{base['client_cpu'] / server:.2f}")
    print(f"overhead: {base['loop_cpu'] / server:.2f}")


if __name__ == "__main__":
    main()
