"""Reward models and search at equal compute, on the tiny core.

    python benchmarks/search.py [--tasks arithmetic,countdown] [--problems 200] [--budgets 4,16,64,256]

For each task, on its test split: repeated sampling gives pass@k (coverage,
which needs the verifier) and majority@k (exact estimators over a pool of
max(budgets) samples per problem). Then every strategy runs at each budget k,
sized to spend about k samples' worth of generated tokens:
best-of-k by the ORM, best-of-k and weighted best-of-k by the PRM, PRM beam search with n = k
(width sqrt(k)), DVTS with n = k (width 4), and MCTS with k iterations
(expansion width 4). Each row reports what the strategy actually spent
(generated tokens per problem, and FLOPs with the scorer's) beside its
accuracy with a 90% bootstrap interval over problems, so budgets are matched
by what was spent, not by N.

Arithmetic has a verifier gap at N = 64: pass@64 - majority@64. The last line
is the share of that gap closed by PRM-weighted best-of-64:
`gap closed: 0.NN`. Countdown has no single answer to vote on; there
best-of-N and search stand against pass@k.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import time


def pool_stats(task, examples, traces, ks):
    """pass@k, majority@k and (where the task checks steps) valid pass@k per k, averaged over
    problems, and the mean tokens of one sample.

    Valid pass@k counts only right answers reached by valid steps: the most a
    perfect step checker can find. The rest of pass@k is luck (a wrong step
    that still lands on the right number).
    """
    from thinkscale.analysis.passk import majority_at_k, pass_at_k

    cover = {k: 0.0 for k in ks}
    vote = {k: 0.0 for k in ks}
    checks_steps = hasattr(task, "first_invalid_step")
    valid = {k: 0.0 for k in ks}
    tokens = samples = 0
    for example, t in zip(examples, traces):
        terminals = list(t.terminals())
        right = {n.answer for n in terminals if n.correct}
        answers = [n.answer if n.finished else None for n in terminals]
        sound = sum(1 for n in terminals if n.correct and checks_steps
                    and task.first_invalid_step(example, t.solution(n.id)) is None)
        for k in ks:
            cover[k] += pass_at_k(len(terminals), sum(bool(n.correct) for n in terminals), k) / len(traces)
            valid[k] += pass_at_k(len(terminals), sound, k) / len(traces)
            if task.votable:
                vote[k] += majority_at_k(answers, right.__contains__, k) / len(traces)
        tokens += t.usage.generated_tokens
        samples += len(terminals)
    return cover, (vote if task.votable else None), (valid if checks_steps else None), tokens / samples


def strategies_at(k: int, votable: bool) -> dict[str, tuple[str, dict, str]]:
    """label -> (strategy, settings, scorer) at a budget of k samples' worth."""
    width = max(1, 2 ** round(math.log2(k) / 2))
    choose = "weighted" if votable else "best"  # answers that cannot be pooled: the best-scoring solution
    out = {
        f"orm-best_of_n@{k}": ("best_of_n", {"n": k, "aggregation": "last"}, "orm"),
        f"prm-best_of_n@{k}": ("best_of_n", {"n": k, "aggregation": "min"}, "prm"),
        f"prm-beam@{k}": ("beam_search", {"n": k, "width": width, "aggregation": "min", "choose": choose}, "prm"),
        f"prm-dvts@{k}": ("dvts", {"n": k, "width": min(4, k), "aggregation": "min", "choose": choose}, "prm"),
        f"prm-mcts@{k}": ("mcts", {"iterations": k, "expansion_width": 4, "aggregation": "min",
                                   "choose": choose}, "prm"),
    }
    if votable:
        out[f"prm-weighted_best_of_n@{k}"] = ("weighted_best_of_n", {"n": k, "aggregation": "min"}, "prm")
    return out


def bench_task(name: str, args) -> dict:
    from thinkscale.analysis.compare import compare, format_comparison
    from thinkscale.budget import Budget
    from thinkscale.policies import get_policy
    from thinkscale.runner import run
    from thinkscale.scorers import get_scorer
    from thinkscale.strategies import get_strategy
    from thinkscale.tasks import get_task

    task = get_task(name)
    examples = task.examples("test", args.problems)
    policy = get_policy("tiny", checkpoint_name=name, threads=args.threads)
    scorers = {kind: get_scorer(kind, checkpoint_name=pattern.format(task=name))
               for kind, pattern in (("prm", args.prm), ("orm", args.orm))}
    ks = args.budgets
    started = time.perf_counter()
    pool = run(examples, task, get_strategy("repeated_sampling", n=max(ks)), policy, Budget(), seed=args.seed)
    cover, vote, valid, per_sample = pool_stats(task, examples, pool, ks)
    print(f"\n== {name}: {len(examples)} test problems; repeated sampling pool of {max(ks)} "
          f"({per_sample:.1f} generated tokens a sample) in {time.perf_counter() - started:.0f} s", flush=True)
    by_label = {}
    title = f"{name}/test, PRM {args.prm.format(task=name)}, ORM {args.orm.format(task=name)}"
    for k in ks:  # the table so far after each budget: a long run shows its results as it goes
        for label, (strategy, settings, kind) in strategies_at(k, task.votable).items():
            if args.only and not re.search(args.only, label):
                continue
            t0 = time.perf_counter()
            by_label[label] = run(examples, task, get_strategy(strategy, **settings), policy, Budget(),
                                  scorer=scorers[kind], seed=args.seed)
            print(f"  {label}: {time.perf_counter() - t0:.0f} s", flush=True)
        result = compare(by_label, seed=args.seed)
        print(format_comparison(result, title))
        print(f"{'k':>5} {'k samples (tokens)':>18} {'pass@k':>7} " + ("valid pass@k " if valid else "")
              + ("majority@k" if vote else ""))
        for done in ks[:ks.index(k) + 1]:
            print(f"{done:>5} {done * per_sample:18.0f} {cover[done]:7.3f} "
                  + (f"{valid[done]:12.3f} " if valid else "") + (f"{vote[done]:10.3f}" if vote else ""))
        print(flush=True)
    return {"result": result, "cover": cover, "vote": vote, "valid": valid, "per_sample": per_sample}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.split("\n")[2:]))
    parser.add_argument("--tasks", default="arithmetic,countdown", help="comma-separated built-in tasks")
    parser.add_argument("--problems", type=int, default=200, help="test problems per task (default 200)")
    parser.add_argument("--budgets", default="4,16,64,256", help="budgets in samples' worth (default 4,16,64,256)")
    parser.add_argument("--prm", default="{task}-prm", help="PRM checkpoint; {task} is replaced (default {task}-prm)")
    parser.add_argument("--orm", default="{task}-orm", help="ORM checkpoint; {task} is replaced (default {task}-orm)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", help="run only the strategies whose label matches this regular expression")
    args = parser.parse_args()
    args.budgets = [int(b) for b in args.budgets.split(",")]
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    tasks = args.tasks.split(",")
    results = {name: bench_task(name, args) for name in tasks}

    s = results.get("arithmetic", {}).get("result", {}).get("strategies", {})
    if "prm-weighted_best_of_n@64" in s:
        r = results["arithmetic"]
        gap = r["cover"][64] - r["vote"][64]
        wbon = s["prm-weighted_best_of_n@64"]
        print(f"\narithmetic at N = 64: pass@64 {r['cover'][64]:.3f}, majority@64 {r['vote'][64]:.3f}, "
              f"verifier gap {gap:.3f}")
        if r["valid"]:
            print(f"valid pass@64 {r['valid'][64]:.3f}: picking only answers reached by valid steps closes at most "
                  f"{(r['valid'][64] - r['vote'][64]) / gap:.2f} of the gap (a perfect step checker); "
                  f"the rest of pass@64 is luck, right numbers after a wrong step")
        for label in ("prm-weighted_best_of_n@64", "prm-best_of_n@64", "prm-beam@64", "prm-dvts@64", "prm-mcts@64"):
            if label in s:
                print(f"{label}: {s[label]['accuracy']:.3f} ({s[label]['generated_tokens']:.0f} tokens a problem)")
        print(f"gap closed: {(wbon['accuracy'] - r['vote'][64]) / gap:.2f}")


if __name__ == "__main__":
    main()
