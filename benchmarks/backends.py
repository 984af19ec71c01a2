"""Best-of-N through the openai policy against a real llama.cpp server: concurrency and overhead.

    python benchmarks/backends.py [--problems 50] [--n 16] [--concurrency 16] [--server-threads 1]

The shipped arithmetic core is converted to GGUF (cached under .cache/gguf/)
and served by llama-cpp-python's OpenAI-compatible server on 127.0.0.1
(needs `pip install -e '.[llamacpp]'`). Best-of-N with the confidence scorer
solves the same problems twice in one run (after a short warm-up), with the
policy's concurrency at 1 (the baseline) and at `--concurrency`; the samples
are seeded, so both runs draw the same ones. Throughput counts the generated tokens the server
reported. "Backend" time is wall time during which at least one policy or
scorer call was in flight; the rest is thinkscale's own work (strategy,
runner, grading, scheduling). Prints one line per run, the throughput ratio,
and last, on a line of its own, `overhead: 0.NN`: the share of the
configured-concurrency run's wall time spent outside backend calls.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from importlib.metadata import version


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


def solve(url: str, concurrency: int, examples, task, strategy, scorer_name: str) -> dict:
    from thinkscale.budget import Budget
    from thinkscale.policies.openai import LLAMACPP_PLAIN_SAMPLING, BusyClock, OpenAIPolicy
    from thinkscale.runner import solve_all
    from thinkscale.scorers import get_scorer

    policy = OpenAIPolicy(url, concurrency=concurrency, extra_body=LLAMACPP_PLAIN_SAMPLING)
    scorer = get_scorer(scorer_name, checkpoint_name=task.name)
    server, backend = BusyClock(), BusyClock()  # requests in flight; requests or scorer calls in flight
    policy.clock = Both(server, backend)
    scorer.score = timed(scorer.score, backend)

    async def main():
        try:
            return await solve_all(examples, task, strategy, policy, Budget(), seed=0, scorer=scorer)
        finally:
            await policy.close()

    started = time.perf_counter()
    traces = asyncio.run(main())
    wall = time.perf_counter() - started
    return {"wall": wall, "tokens": sum(t.usage.generated_tokens for t in traces),
            "samples": sum(t.usage.samples for t in traces), "requests": policy.requests_sent,
            "accuracy": sum(bool(t.correct) for t in traces) / len(traces),
            "overhead": 1 - backend.busy_s / wall, "server_busy": server.busy_s / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--problems", type=int, default=50)
    parser.add_argument("--n", type=int, default=16, help="samples per problem (best-of-N)")
    parser.add_argument("--concurrency", type=int, default=16, help="the policy's requests in flight")
    parser.add_argument("--server-threads", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the scorer")
    parser.add_argument("--max-tokens", type=int, default=96)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    import torch

    torch.set_num_threads(args.threads)
    from thinkscale.strategies import get_strategy
    from thinkscale.tasks import get_task
    from thinkscale.tiny.gguf import cached_gguf, serve_llamacpp

    task = get_task("arithmetic")
    examples = task.examples("test", args.problems)
    strategy = get_strategy("best_of_n", n=args.n, temperature=1.0, max_tokens=args.max_tokens)
    model = cached_gguf("arithmetic")
    print(f"llama-cpp-python {version('llama_cpp_python')} server ({args.server_threads} thread(s)) on {model.name}; "
          f"best_of_n n={args.n} with the confidence scorer on {args.problems} arithmetic test problems")
    results = {}
    with serve_llamacpp(model, threads=args.server_threads) as url:
        solve(url, 1, examples[:2], task, strategy, "confidence")  # warm-up: first requests, scorer load
        for concurrency in (1, args.concurrency):
            r = results[concurrency] = solve(url, concurrency, examples, task, strategy, "confidence")
            print(f"concurrency {concurrency}: {r['requests']} requests, {r['samples']} samples, {r['tokens']} tokens "
                  f"in {r['wall']:.1f} s = {r['tokens'] / r['wall']:,.0f} tokens/s; accuracy {r['accuracy']:.2f}; "
                  f"server busy {r['server_busy']:.0%} of wall time; outside backend calls {r['overhead']:.0%}")
    base, best = results[1], results[args.concurrency]
    print(f"baseline: the same run at concurrency 1; throughput ratio (concurrency {args.concurrency} / 1): "
          f"{(best['tokens'] / best['wall']) / (base['tokens'] / base['wall']):.2f}")
    print(f"overhead: {best['overhead']:.2f}")


if __name__ == "__main__":
    main()
