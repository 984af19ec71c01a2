"""Run-ledger throughput: thinkscale's RunStore against one JSON file per problem.

    python benchmarks/store.py [--nodes 1000000] [--samples 64] [--dir /tmp] [--problem-seed 0]

Writes the same synthetic repeated-sampling traces (drawn with
`--problem-seed`; a root and `--samples` terminal completions each,
~40-character texts, log-probabilities, answers, verdicts and a full Usage)
two ways, in the same run, on the same disk:

- baseline: one JSON file per problem under a directory, as Large Language
  Monkeys keeps its samples (plain writes, no fsync, no atomicity);
- thinkscale: `RunStore.put_trace`, one SQLite transaction per trace (WAL,
  synchronous=NORMAL), including the final close.

Then, in a subprocess so that its peak RSS is its own, a report pass streams the
ledger with `iter_traces` and computes pass@k for k = 1..samples per problem with
`thinkscale.analysis.passk.pass_at_k`, and the mean over problems, as the report
does. Prints nodes/s for both, their ratio, the report pass's peak memory, and
last, on a line of its own, `thinkscale store: N nodes/s`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TEMPLATES = 256  # distinct traces, reused under new problem ids: writes cost the same, memory stays small


def make_template(rng: random.Random, samples: int):
    """One realistic repeated-sampling trace: an arithmetic prompt and `samples` graded completions."""
    from thinkscale.budget import Usage
    from thinkscale.trace import FINISH_LENGTH, FINISH_STOP, Trace

    accuracy = rng.random()
    a, b, c = rng.randint(2, 99), rng.randint(2, 99), rng.randint(2, 9)
    truth = (a + b) * c
    trace = Trace(problem_id="", strategy="repeated_sampling",
                  settings={"n": samples, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 160},
                  seed=rng.randrange(1 << 31), difficulty=rng.randint(2, 7))
    trace.add(None, f"Compute ({a}+{b})*{c}. Answer:", num_tokens=18)
    generated = 0
    for _ in range(samples):
        answer = truth if rng.random() < accuracy else truth + rng.choice([-10, -1, 1, 2, c])
        text = f" {a}+{b}={a + b}. {a + b}*{c}={answer}. So it is {answer}."  # ~40 characters
        finished = rng.random() > 0.03
        tokens = len(text) + 1
        generated += tokens
        trace.add(0, text, num_tokens=tokens, logprob=-rng.uniform(0.5, 30.0), terminal=True,
                  finish_reason=FINISH_STOP if finished else FINISH_LENGTH,
                  answer=str(answer) if finished else None, correct=finished and answer == truth)
    trace.usage = Usage(generated_tokens=generated, prompt_tokens=18 * samples, cached_prompt_tokens=18 * (samples - 1),
                        policy_calls=1, samples=samples, flops=2 * 0.8e6 * (generated + 18 * samples),
                        wall_s=rng.uniform(0.01, 0.2))
    trace.chosen_answer = None
    return trace


def problems(count: int, samples: int, seed: int = 0):
    """(key, trace) for `count` problems, built from a few templates without holding them all."""
    rng = random.Random(seed)
    templates = [make_template(rng, samples) for _ in range(min(TEMPLATES, count))]
    for i in range(count):
        trace = dataclasses.replace(templates[i % len(templates)], problem_id=f"p{i:07d}")
        yield f"repeated_sampling/0/{trace.problem_id}", trace


def write_json_files(directory: Path, count: int, samples: int, seed: int = 0) -> float:
    """The baseline: one JSON file per problem. Returns seconds spent."""
    directory.mkdir()
    batch = list(problems(count, samples, seed))  # shared nodes: cheap; built before the clock starts
    started = time.perf_counter()
    for _, trace in batch:
        record = {**trace.__dict__, "nodes": [n.__dict__ for n in trace.nodes], "usage": trace.usage.__dict__}
        with open(directory / f"{trace.problem_id}.json", "w") as f:
            f.write(json.dumps(record, separators=(",", ":")))
    return time.perf_counter() - started


def write_store(run_dir: Path, count: int, samples: int, seed: int = 0) -> float:
    from thinkscale.store import RunStore

    batch = list(problems(count, samples, seed))
    started = time.perf_counter()
    with RunStore.open(run_dir, {"benchmark": "store", "problems": count, "samples": samples}) as store:
        for key, trace in batch:
            store.put_trace(key, trace)
    return time.perf_counter() - started


def report_pass(run_dir: str, samples: int) -> None:
    """The subprocess: the report's own pass (`summarize`, as `thinkscale report` runs it) over the ledger."""
    from thinkscale.analysis.report import summarize
    from thinkscale.store import RunStore

    started = time.perf_counter()
    nodes = 0

    def counted(traces):
        nonlocal nodes
        for trace in traces:
            nodes += len(trace.nodes)
            yield trace

    with RunStore.read(run_dir) as store:
        summary = summarize(counted(store.iter_traces()), votable=True)
    overall = summary["groups"]["all"]
    print(json.dumps({"seconds": time.perf_counter() - started, "problems": overall["problems"], "nodes": nodes,
                      "pass@1": overall["pass_at_k"][0], f"pass@{summary['samples']}": overall["pass_at_k"][-1],
                      "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))  # KB on Linux


def directory_mb(path: Path) -> float:
    return sum(entry.stat().st_size for entry in os.scandir(path) if entry.is_file()) / 2**20


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=1_000_000, help="about this many nodes in all")
    parser.add_argument("--samples", type=int, default=64, help="terminal nodes per trace (plus the root)")
    parser.add_argument("--dir", default=None, help="where to write (default: the system temp dir)")
    parser.add_argument("--problem-seed", type=int, default=0, help="which synthetic problems are drawn (default 0)")
    parser.add_argument("--report-pass", metavar="RUN_DIR", help=argparse.SUPPRESS)  # the subprocess's entry
    args = parser.parse_args(argv)
    if args.report_pass:
        report_pass(args.report_pass, args.samples)
        return

    count = max(1, round(args.nodes / (args.samples + 1)))
    nodes = count * (args.samples + 1)
    print(f"{nodes} nodes: {count} traces x ({args.samples} samples + root)", flush=True)
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="thinkscale-bench-") as tmp:
        tmp = Path(tmp)
        baseline_s = write_json_files(tmp / "json", count, args.samples, args.problem_seed)
        baseline_rate = nodes / baseline_s
        print(f"baseline (one JSON file per problem): {baseline_rate:.0f} nodes/s "
              f"({baseline_s:.1f} s, {directory_mb(tmp / 'json'):.0f} MB in {count} files)", flush=True)

        store_s = write_store(tmp / "run", count, args.samples, args.problem_seed)
        store_rate = nodes / store_s
        print(f"thinkscale store: {store_s:.1f} s, {directory_mb(tmp / 'run'):.0f} MB; "
              f"ratio (store / baseline): {store_rate / baseline_rate:.2f}", flush=True)

        out = subprocess.run([sys.executable, __file__, "--report-pass", str(tmp / "run"),
                              "--samples", str(args.samples)], capture_output=True, text=True, check=True)
        result = json.loads(out.stdout)
        peak_mb = result["peak_mb"]
        print(f"report pass (thinkscale's report: pass@k and majority@k by difficulty, coverage fit; "
              f"{result['nodes']} nodes): "
              f"{result['seconds']:.1f} s, mean pass@1 {result['pass@1']:.3f}, "
              f"pass@{args.samples} {result[f'pass@{args.samples}']:.3f}")
        print(f"report pass peak memory: {peak_mb:.0f} MB")
    print(f"thinkscale store: {store_rate:.0f} nodes/s")


if __name__ == "__main__":
    main()
