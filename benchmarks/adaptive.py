"""Adaptive stopping against a fixed number of samples, on the tiny core.

    python benchmarks/adaptive.py [--task arithmetic] [--problems 200] [--n 64] [--problem-seed 0] [--threads 1]
                                  [--verifier] [--particles 4,16] [--deepconf]

Majority vote with the Adaptive-Consistency rule (strategies/stopping.py)
against plain majority@n on the same test problems, in the same run: the
accuracy difference with a paired 90% bootstrap interval over problems, and
how many times fewer samples the rule drew. The rule's confidence is chosen
first on dev problems drawn from the train split (`--dev-problems`, never the
test split): the most saving confidence whose dev accuracy is within
`--max-loss` of fixed majority@n (the highest tried if none is).
`--verifier` does the same for weighted best-of-n with the verifier rule and
the shipped PRM. `--particles K,...` sets particle filtering beside beam
search (width sqrt(K)) at K samples' worth, with tokens and FLOPs spent.
`--deepconf` sets DeepConf (strategies/deepconf.py) beside plain majority@n:
its `keep` and `window` are chosen on the dev problems (the most token-saving
online setting within `--max-loss` of majority@n there), then offline and
online are measured on the test problems, accuracy and generated tokens.

Every figure is measured here, in this run; `--problem-seed` draws another
set of test problems (0 is the first `--problems` of the split as the other
benchmarks draw them). The last line is the headline:
`samples saved: N.Nx at -0.X pt` (accuracy of adaptive minus fixed, in points).
"""

from __future__ import annotations

import argparse
import os
import time

CONFIDENCES = (0.8, 0.9, 0.95, 0.99)
LABEL_DRAW = (1500, 0)  # the shipped PRM's label problems: task.examples("train", 1500, seed=0)


def accuracy_difference(a, b, resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of a - b (per problem, 0/1) with a paired 90% bootstrap interval over problems."""
    import numpy as np

    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    draws = np.random.default_rng(seed).integers(0, len(diff), size=(resamples, len(diff)))
    boot = diff[draws].mean(1)
    return float(diff.mean()), float(np.quantile(boot, 0.05)), float(np.quantile(boot, 0.95))


def solve(examples, task, strategy, policy, scorer=None):
    from thinkscale.budget import Budget
    from thinkscale.runner import run

    started = time.perf_counter()
    traces = run(examples, task, strategy, policy, Budget(), scorer=scorer, seed=0)
    return traces, time.perf_counter() - started


def summary(traces) -> dict:
    n = len(traces)
    return {"correct": [bool(t.correct) for t in traces], "accuracy": sum(bool(t.correct) for t in traces) / n,
            "samples": sum(t.usage.samples for t in traces) / n,
            "tokens": sum(t.usage.generated_tokens for t in traces) / n,
            "flops": sum(t.usage.flops for t in traces) / n}


def choose_confidence(name, settings, dev, task, policy, scorer, rule, max_loss):
    """The most saving confidence whose dev accuracy is within max_loss of the fixed strategy."""
    from thinkscale.strategies import get_strategy

    fixed = summary(solve(dev, task, get_strategy(name, **settings), policy, scorer)[0])
    print(f"dev ({len(dev)} train-split problems): fixed {name}@{settings['n']} accuracy {fixed['accuracy']:.3f}")
    best = None
    for confidence in CONFIDENCES:
        stopping = {"rule": rule, "confidence": confidence}
        s = summary(solve(dev, task, get_strategy(name, **settings, stopping=stopping), policy, scorer)[0])
        ok = s["accuracy"] >= fixed["accuracy"] - max_loss
        print(f"  confidence {confidence}: accuracy {s['accuracy']:.3f}, {s['samples']:.1f} samples a problem"
              f"{'' if ok else ' (loses too much)'}")
        if ok and (best is None or s["samples"] < best[1]):
            best = (confidence, s["samples"])
    chosen = best[0] if best else CONFIDENCES[-1]
    print(f"  chosen on dev: confidence {chosen}")
    return chosen


def compare_on_test(label, name, settings, rule, confidence, test, task, policy, scorer):
    from thinkscale.strategies import get_strategy

    fixed_traces, fixed_s = solve(test, task, get_strategy(name, **settings), policy, scorer)
    adaptive_traces, adaptive_s = solve(test, task, get_strategy(
        name, **settings, stopping={"rule": rule, "confidence": confidence}), policy, scorer)
    fixed, adaptive = summary(fixed_traces), summary(adaptive_traces)
    diff, low, high = accuracy_difference(adaptive["correct"], fixed["correct"])
    ratio = fixed["samples"] / adaptive["samples"]
    print(f"{label}: fixed accuracy {fixed['accuracy']:.3f} ({fixed['samples']:.1f} samples, "
          f"{fixed['tokens']:.0f} tokens a problem, {fixed_s:.0f} s); adaptive {adaptive['accuracy']:.3f} "
          f"({adaptive['samples']:.1f} samples, {adaptive['tokens']:.0f} tokens, {adaptive_s:.0f} s); "
          f"difference {100 * diff:+.1f} pt (90% interval {100 * low:+.1f} to {100 * high:+.1f}); "
          f"samples {ratio:.1f}x fewer")
    return ratio, diff


DEEPCONF_GRID = [(keep, window) for keep in (0.9, 0.5, 0.1) for window in (4, 8, 16)]


def deepconf_against_majority(n, dev, test, task, policy, max_loss):
    """DeepConf's keep and window chosen on dev; then offline and online against majority@n on test."""
    from thinkscale.strategies import get_strategy

    fixed = summary(solve(dev, task, get_strategy("majority_vote", n=n), policy)[0])
    print(f"DeepConf: dev majority@{n} accuracy {fixed['accuracy']:.3f}, {fixed['tokens']:.0f} tokens a problem")
    best = None
    for keep, window in DEEPCONF_GRID:
        s = summary(solve(dev, task, get_strategy("deepconf", n=n, keep=keep, window=window), policy)[0])
        ok = s["accuracy"] >= fixed["accuracy"] - max_loss
        print(f"  online keep {keep}, window {window}: accuracy {s['accuracy']:.3f}, {s['tokens']:.0f} tokens, "
              f"{s['samples']:.1f} samples{'' if ok else ' (loses too much)'}")
        key = (ok, -s["tokens"] if ok else s["accuracy"])
        if best is None or key > best[0]:
            best = (key, keep, window)
    _, keep, window = best
    print(f"  chosen on dev: keep {keep}, window {window}")
    rows = {f"majority@{n}": get_strategy("majority_vote", n=n),
            f"DeepConf offline@{n}": get_strategy("deepconf", n=n, mode="offline", keep=keep, window=window),
            f"DeepConf online@{n}": get_strategy("deepconf", n=n, keep=keep, window=window)}
    results = {label: summary(solve(test, task, strategy, policy)[0]) for label, strategy in rows.items()}
    base = results[f"majority@{n}"]
    for label, r in results.items():
        diff, low, high = accuracy_difference(r["correct"], base["correct"])
        print(f"  test {label}: accuracy {r['accuracy']:.3f} ({100 * diff:+.1f} pt, 90% interval {100 * low:+.1f} "
              f"to {100 * high:+.1f}), {r['tokens']:.0f} tokens ({base['tokens'] / r['tokens']:.2f}x fewer), "
              f"{r['samples']:.1f} samples a problem")


def particles_against_beam(ks, test, task, policy, scorer):
    import math

    from thinkscale.strategies import get_strategy

    for k in ks:
        width = max(1, 2 ** round(math.log2(k) / 2))
        rows = {f"particle_filtering@{k}": get_strategy("particle_filtering", n=k, aggregation="min"),
                f"beam_search@{k} (width {width})": get_strategy("beam_search", n=k, width=width, aggregation="min",
                                                                 choose="weighted")}
        for label, strategy in rows.items():
            s = summary(solve(test, task, strategy, policy, scorer)[0])
            print(f"  {label}: accuracy {s['accuracy']:.3f}, {s['tokens']:.0f} tokens, {s['flops']:.3g} FLOPs "
                  f"a problem")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="arithmetic")
    parser.add_argument("--problems", type=int, default=200, help="test problems (default 200)")
    parser.add_argument("--dev-problems", type=int, default=100, help="train-split problems to choose on (100)")
    parser.add_argument("--n", type=int, default=64, help="the fixed number of samples, and the adaptive cap (64)")
    parser.add_argument("--max-loss", type=float, default=0.005, help="accuracy the rule may lose on dev (0.005)")
    parser.add_argument("--problem-seed", type=int, default=0, help="which test problems are drawn (default 0)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--verifier", action="store_true", help="also weighted best-of-n with the verifier rule")
    parser.add_argument("--particles", default="", help="budgets K for particle filtering against beam search")
    parser.add_argument("--deepconf", action="store_true", help="also DeepConf offline and online against majority")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    import torch

    from thinkscale.policies import get_policy
    from thinkscale.scorers import get_scorer
    from thinkscale.tasks import get_task

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    task = get_task(args.task)
    policy = get_policy("tiny", checkpoint_name=task.name, threads=args.threads)
    test = task.examples("test", args.problems, seed=args.problem_seed)
    labelled = {e.problem.prompt for e in task.examples("train", LABEL_DRAW[0], seed=LABEL_DRAW[1])}
    dev = [e for e in task.examples("train", args.dev_problems * 2, seed=2000 + args.problem_seed)
           if e.problem.prompt not in labelled][:args.dev_problems]
    print(f"{task.name}: {len(test)} test problems (problem seed {args.problem_seed}), {len(dev)} dev problems "
          f"from the train split, none of them the PRM's label problems; n = {args.n}, {args.threads} thread(s)")
    prm = get_scorer("prm", checkpoint_name=f"{task.name}-prm") if args.verifier or args.particles else None
    if args.verifier:
        settings = {"n": args.n, "aggregation": "min"}
        confidence = choose_confidence("weighted_best_of_n", settings, dev, task, policy, prm, "verifier",
                                       args.max_loss)
        compare_on_test(f"weighted best-of-{args.n}, verifier rule", "weighted_best_of_n", settings, "verifier",
                        confidence, test, task, policy, prm)
    if args.particles:
        print("particle filtering against beam search, same budgets, PRM:")
        particles_against_beam([int(k) for k in args.particles.split(",")], test, task, policy, prm)
    if not task.votable:
        raise SystemExit(f"{task.name} is graded on its steps: there is no majority vote to stop early")
    if args.deepconf:
        deepconf_against_majority(args.n, dev, test, task, policy, args.max_loss)
    settings = {"n": args.n}
    confidence = choose_confidence("majority_vote", settings, dev, task, policy, None, "adaptive_consistency",
                                   args.max_loss)
    ratio, diff = compare_on_test(f"majority vote @{args.n}, adaptive consistency", "majority_vote", settings,
                                  "adaptive_consistency", confidence, test, task, policy, None)
    print(f"whole benchmark: {time.perf_counter() - started:.0f} s")
    print(f"samples saved: {ratio:.1f}x at {100 * diff:+.1f} pt")


if __name__ == "__main__":
    main()
