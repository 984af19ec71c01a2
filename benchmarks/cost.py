"""What compute really costs: tools in the loop, and a small model with search against a 4x larger one.

    python benchmarks/cost.py [--problems 200] [--problem-seed 0] [--cpu-hour 0.05] [--threads 1]
        [--parts tools,models] [--large arithmetic-4x]

Every configuration is priced by one stated table: a CPU-hour costs
`--cpu-hour` dollars, whoever spends it. A tiny core's tokens cost what the
CPU time to compute them costs, at the tokens per CPU-second measured in
this run (one torch thread; each model size timed on its own; a prompt token
the prefix cache held is not computed, and costs nothing), and a tool's CPU
time is charged as the kernel counted it (the sandbox's processes included). So
"equal cost" here means equal CPU time, the tools' counted.

**Part 1, tools** (`arithmetic-large`: 2-4 operations on numbers of up to
four digits, test split). The same-size core trained by hand
(`arithmetic-large`) against the one trained to call a tool for every
operation beyond 99 (`arithmetic-large-tool`), with the in-process `calc`
and with `python` in the code sandbox (its own process per call). Each runs
majority vote at k = 1, 4 and 16 (k = 1 is pass@1). The ratio is the tool's
accuracy over the by-hand core's at equal cost (the by-hand core's accuracy
at the tool's cost, interpolated in log cost on its own curve; where the tool
costs more than the by-hand core's largest k, its best is used, which favours
the baseline). Where python's process cost outweighs what it buys: what a
sandboxed call costs in the core's tokens, what `calc` buys at `python`'s
cost, and what each spends on the problems whose numbers all stay within 99
(they need no tool).

**Part 2, models** (`arithmetic`, test split): the shipped policy (0.85M
parameters besides its embeddings) alone, by majority vote, and with the
shipped PRM by weighted best-of-N and PRM beam search, at 2, 4, 16 and 64,
against `arithmetic-4x` (3.4M, four times as many; trained by `thinkscale
train policy`, see docs/tiny-core.md) with one sample, majority vote at 4 and
16, and PRM-weighted best-of-N at 4 and 16. For each of the large model's
configurations, the small model's best configuration at no more FLOPs (and at
no more dollars) on the same problems is set beside it, by difficulty, with
a 90% paired bootstrap interval on the difference (Snell et al., arXiv
2408.03314: search wins on easy and medium problems, not on the hardest).
Then the Monkeys question (Brown et al., arXiv 2407.21787): the cheapest
small configuration that reaches the large model's pass@1, and what it costs
against the large model's one sample. Both choices (the configuration per
difficulty and budget, and the cheapest that reaches) are made on
`--dev-problems` train-split problems (none the PRM was labelled on, drawn as
`benchmarks/search.py --split dev` draws them) and reported on test.

The last line is the headline: `cost per solved problem: small+search $X vs large $Y`
(with only part 1: `tools: accuracy at equal cost N.Nx (calc), N.Nx (python)`).
Part 1 took 5 minutes here, part 2 15 (one thread of a 2-core CPU, other jobs
on the machine). Measured: docs/tools.md.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/search.py: the dev draw

TOOL_CONFIGS = {  # label -> (checkpoint, tool or None)
    "by-hand": ("arithmetic-large", None),
    "tool-calc": ("arithmetic-large-tool", "calc"),
    "tool-python": ("arithmetic-large-tool", "python"),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", type=int, default=200, help="test problems per part (default 200)")
    parser.add_argument("--problem-seed", type=int, default=0, help="which test problems are drawn (default 0)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--ks", default="1,4,16", help="majority-vote sizes in part 1 (default 1,4,16)")
    parser.add_argument("--search-ns", default="2,4,16,64",
                        help="the small model's vote and search sizes (default 2,4,16,64)")
    parser.add_argument("--dev-problems", type=int, default=120,
                        help="dev problems (train split, none the PRM was labelled on) that choose the small "
                             "configurations of part 2 (default 120)")
    parser.add_argument("--large-ns", default="4,16", help="the large model's vote/best-of sizes (default 4,16)")
    parser.add_argument("--large", default="arithmetic-4x",
                        help="the large policy of part 2: a shipped name or a checkpoint directory (default arithmetic-4x)")
    parser.add_argument("--cpu-hour", type=float, default=0.05, help="dollars per CPU-hour (default 0.05)")
    parser.add_argument("--parts", default="tools,models", help="tools, models or both (default both)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    for name in ("ks", "search_ns", "large_ns", "parts"):
        setattr(args, name, [int(v) if v.isdigit() else v for v in getattr(args, name).split(",") if v])
    if not set(args.parts) <= {"tools", "models"}:
        parser.error(f"--parts takes tools and/or models, got {','.join(args.parts)}")
    return args


def throughput(policy, task, problems: int, seed: int) -> float:
    """Tokens computed (prompt tokens not cached, and generated) per CPU second of this process, `policy` alone.

    CPU time, not wall time: what a machine-hour buys does not depend on what
    else shared the machine while it was measured."""
    from thinkscale.budget import Budget
    from thinkscale.runner import run
    from thinkscale.strategies import get_strategy

    examples = task.examples("train", problems, seed=seed + 99)  # timing only: never the test draw
    run(examples[:4], task, get_strategy("repeated_sampling", n=4), policy, Budget())  # warm up
    started = time.process_time()
    traces = run(examples, task, get_strategy("repeated_sampling", n=32), policy, Budget())
    seconds = time.process_time() - started
    tokens = sum(t.usage.generated_tokens + t.usage.prompt_tokens - t.usage.cached_prompt_tokens for t in traces)
    return tokens / seconds


def interpolate(cost: float, curve: list[tuple[float, float]]) -> float:
    """Accuracy of a (cost, accuracy) curve at `cost`, linear in log cost; its best below, beyond its ends."""
    curve = sorted(curve)
    if cost <= curve[0][0]:
        return curve[0][1]  # cheaper than its cheapest point: its cheapest point (favours the curve)
    for (c0, a0), (c1, a1) in zip(curve, curve[1:]):
        if c0 <= cost <= c1:
            share = (math.log(cost) - math.log(c0)) / (math.log(c1) - math.log(c0)) if c1 > c0 else 1.0
            return a0 + share * (a1 - a0)
    return max(a for _, a in curve)


def tools_part(args) -> dict:
    from thinkscale.analysis.compare import compare, format_comparison
    from thinkscale.budget import Budget, Prices, per_token_from_hour
    from thinkscale.policies import get_policy
    from thinkscale.runner import run
    from thinkscale.strategies import get_strategy
    from thinkscale.tasks import get_task
    from thinkscale.tasks.arithmetic_large import needs_tool
    from thinkscale.tools import Toolbox

    task = get_task("arithmetic-large")
    examples = task.examples("test", args.problems, seed=args.problem_seed)
    policies = {name: get_policy("tiny", checkpoint_name=name, threads=args.threads)
                for name in {c for c, _ in TOOL_CONFIGS.values()}}
    rate = throughput(policies["arithmetic-large"], task, 24, args.seed)
    per_million = per_token_from_hour(args.cpu_hour, rate)
    prices = Prices(prompt=per_million, generated=per_million, cached_prompt=0.0, tool_cpu_hour=args.cpu_hour)
    print(f"price table: ${args.cpu_hour}/CPU-hour; the tiny core computes {rate:,.0f} tokens a CPU-second here, "
          f"so a million tokens cost ${prices.generated:.4f}; tools pay their CPU time at the same rate")
    by_label = {}
    for label, (checkpoint, tool) in TOOL_CONFIGS.items():
        for k in args.ks:
            toolbox = Toolbox.build([tool], timeout_s=2.0) if tool else None
            started = time.perf_counter()
            traces = run(examples, task, get_strategy("majority_vote", n=k, max_tokens=200), policies[checkpoint],
                         Budget(), seed=args.seed, tools=toolbox, prices=prices)
            if toolbox is not None:
                toolbox.close()
            by_label[f"{label}@{k}"] = traces
            u = [t.usage for t in traces]
            print(f"{label}@{k}: accuracy {sum(bool(t.correct) for t in traces) / len(traces):.3f}, "
                  f"{sum(x.tool_calls for x in u) / len(u):.2f} tool calls and {sum(x.tool_cpu_s for x in u) / len(u) * 1e3:.2f} "
                  f"ms of tool CPU a problem, ${sum(x.dollars for x in u) / len(u):.2e} a problem "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
    result = compare(by_label)
    print(format_comparison(result, "arithmetic-large, test split: majority vote at k, tools' CPU priced"))
    s = result["strategies"]
    hand = [(s[f"by-hand@{k}"]["dollars"], s[f"by-hand@{k}"]["accuracy"]) for k in args.ks]
    ratios = {}
    for tool in ("calc", "python"):
        print(f"\ntool-{tool} against by-hand at equal cost:")
        at_k = []
        for k in args.ks:
            mine = s[f"tool-{tool}@{k}"]
            baseline = interpolate(mine["dollars"], hand)
            # none solved by hand: bound its accuracy by the rule of three (95% upper bound 3/n of 0 in n)
            bound = baseline <= 0
            ratio = mine["accuracy"] / (baseline if not bound else 3 / result["problems"])
            tool_share = mine["tool_cpu_s"] / 3600 * args.cpu_hour / mine["dollars"] if mine["dollars"] else 0.0
            print(f"  k={k}: {mine['accuracy']:.3f} at ${mine['dollars']:.2e} ({tool_share:.0%} of it tools) against "
                  f"by-hand's {baseline:.3f} at that cost: {'>' if bound else ''}{ratio:.1f}x")
            at_k.append((ratio, bound))
        ratios[tool] = min(at_k)  # the headline takes the smallest ratio over k
    calc = [(s[f"tool-calc@{k}"]["dollars"], s[f"tool-calc@{k}"]["accuracy"]) for k in args.ks]
    python_calls = sum(s[f"tool-python@{k}"]["tool_calls"] for k in args.ks)
    per_call = sum(s[f"tool-python@{k}"]["tool_cpu_s"] for k in args.ks) / python_calls if python_calls else 0.0
    print(f"\npython against calc: the same calls and answers; a sandboxed call costs {per_call * 1e3:.1f} ms of CPU, "
          f"the tiny core's compute for {per_call * rate:.0f} tokens")
    for k in args.ks:
        mine = s[f"tool-python@{k}"]
        print(f"  python@{k}: {mine['accuracy']:.3f} at ${mine['dollars']:.2e}; calc at that cost: "
              f"{interpolate(mine['dollars'], calc):.3f}")
    print(f"\naccuracy by difficulty (operations) at k={args.ks[0]}:")
    for d in s[f"by-hand@{args.ks[0]}"]["by_difficulty"]:
        row = {label: s[f"{label}@{args.ks[0]}"] for label in TOOL_CONFIGS}
        print(f"  d={d}: " + ", ".join(f"{label} {r['by_difficulty'][d]:.3f}" for label, r in row.items()))
    no_hard = [e for e in examples if not needs_tool(e.problem.prompt)]
    if no_hard:
        ids = {e.problem.id for e in no_hard}
        print(f"\n{len(no_hard)} problems need no tool (every number in them stays within 99):")
        for label in TOOL_CONFIGS:
            traces = [t for t in by_label[f"{label}@{args.ks[0]}"] if t.problem_id in ids]
            acc = sum(bool(t.correct) for t in traces) / len(traces)
            cost = sum(t.usage.dollars for t in traces) / len(traces)
            print(f"  {label}@{args.ks[0]}: accuracy {acc:.3f} at ${cost:.2e} a problem")
    return {"ratios": ratios, "result": result}


def bootstrap(values, resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """90% percentile bootstrap interval of the mean of `values`."""
    import numpy as np

    values = np.asarray(values, dtype=float)
    draws = np.random.default_rng(seed).integers(0, len(values), size=(resamples, len(values)))
    means = values[draws].mean(1)
    return float(np.quantile(means, 0.05)), float(np.quantile(means, 0.95))


def models_part(args) -> dict:
    import math as _math

    from search import dev_examples, labelled_problems

    from thinkscale.budget import Budget, Prices, per_token_from_hour
    from thinkscale.policies import get_policy
    from thinkscale.runner import run
    from thinkscale.scorers import get_scorer
    from thinkscale.strategies import get_strategy
    from thinkscale.tasks import get_task

    task = get_task("arithmetic")
    examples = task.examples("test", args.problems, seed=args.problem_seed)
    dev = dev_examples(task, args.dev_problems, args.problem_seed, labelled_problems(task, ["arithmetic-prm"]))
    small = get_policy("tiny", checkpoint_name="arithmetic", threads=args.threads)
    large = get_policy("tiny", checkpoint_name=args.large, threads=args.threads)
    prm = get_scorer("prm", checkpoint_name="arithmetic-prm")
    rates = {"small": throughput(small, task, 24, args.seed), "large": throughput(large, task, 24, args.seed)}
    per_million = {name: per_token_from_hour(args.cpu_hour, rate) for name, rate in rates.items()}
    print(f"\nprice table: ${args.cpu_hour}/CPU-hour; measured here, tokens a CPU-second: the small policy "
          f"{rates['small']:,.0f} (${per_million['small']:.4f} a million), the large policy ({args.large}) "
          f"{rates['large']:,.0f} (${per_million['large']:.4f} a million); the PRM's tokens at the "
          f"small policy's price (it is the small model's size)")
    prices = {name: Prices(prompt=rate, generated=rate, cached_prompt=0.0, scored=per_million["small"])
              for name, rate in per_million.items()}
    configs = {"small@1": ("small", get_strategy("majority_vote", n=1), None)}  # label -> (model, strategy, scorer)
    for n in args.search_ns:
        width = max(1, 2 ** round(_math.log2(n) / 2))
        configs[f"small-vote@{n}"] = ("small", get_strategy("majority_vote", n=n), None)
        configs[f"small-wbon@{n}"] = ("small", get_strategy("weighted_best_of_n", n=n, aggregation="min"), prm)
        configs[f"small-beam@{n}"] = ("small", get_strategy("beam_search", n=n, width=width, aggregation="min",
                                                            choose="weighted"), prm)
    configs["large@1"] = ("large", get_strategy("majority_vote", n=1), None)
    for k in args.large_ns:
        configs[f"large-vote@{k}"] = ("large", get_strategy("majority_vote", n=k), None)
        configs[f"large-wbon@{k}"] = ("large", get_strategy("weighted_best_of_n", n=k, aggregation="min"), prm)

    def run_all(draw: list, split: str) -> dict[str, dict[str, object]]:
        table = {}
        for label, (which, strategy, scorer) in configs.items():
            started = time.perf_counter()
            traces = run(draw, task, strategy, small if which == "small" else large, Budget(), seed=args.seed,
                         scorer=scorer, prices=prices[which])
            table[label] = {t.problem_id: t for t in traces}
            print(f"{split} {label}: accuracy {sum(bool(t.correct) for t in traces) / len(traces):.3f} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
        return table

    tables = {"dev": run_all(dev, "dev"), "test": run_all(examples, "test")}
    ids = {"dev": [e.problem.id for e in dev], "test": [e.problem.id for e in examples]}
    difficulty = {e.problem.id: e.problem.difficulty for e in dev + examples}

    def summary(split: str, label: str, subset: list[str]) -> tuple[float, float, float]:
        traces = [tables[split][label][i] for i in subset]
        return (sum(bool(t.correct) for t in traces) / len(traces), sum(t.usage.flops for t in traces) / len(traces),
                sum(t.usage.dollars for t in traces) / len(traces))

    test_ids = ids["test"]
    print(f"\ntest split, {len(test_ids)} problems:")
    print(f"{'config':<16} {'accuracy':>8} {'90% interval':>13} {'FLOPs':>9} {'$/problem':>10} {'$/solved':>10}")
    for label in configs:
        acc, flops, dollars = summary("test", label, test_ids)
        lo, hi = bootstrap([bool(tables["test"][label][i].correct) for i in test_ids])
        print(f"{label:<16} {acc:8.3f} {f'{lo:.3f}-{hi:.3f}':>13} {flops:9.2e} {dollars:10.2e} "
              f"{dollars / acc if acc else float('nan'):10.2e}")

    small_labels = [label for label in configs if label.startswith("small")]
    levels = sorted(set(difficulty.values()))
    for unit, column in (("FLOPs", 1), ("dollars", 2)):
        print(f"\nSnell at matched {unit}: for each large configuration and difficulty, the small configuration "
              f"chosen on dev (the most accurate there at no more {unit} than the large one spent there), on test; "
              f"small - large with a 90% paired bootstrap interval over the test problems:")
        for large_label in [label for label in configs if label.startswith("large")]:
            print(f"  against {large_label}:")
            for d in levels:
                dev_d = [i for i in ids["dev"] if difficulty[i] == d]
                test_d = [i for i in test_ids if difficulty[i] == d]
                spend = summary("dev", large_label, dev_d)[column]
                affordable = [label for label in small_labels if summary("dev", label, dev_d)[column] <= spend]
                if not affordable:
                    print(f"    d={d}: no small configuration costs as little on dev")
                    continue
                best = max(affordable, key=lambda label: summary("dev", label, dev_d)[0])
                diff = [float(bool(tables["test"][best][i].correct)) - float(bool(tables["test"][large_label][i].correct))
                        for i in test_d]
                lo, hi = bootstrap(diff)
                verdict = "small wins" if lo > 0 else "large wins" if hi < 0 else "no clear difference"
                mine, theirs = summary("test", best, test_d), summary("test", large_label, test_d)
                print(f"    d={d}: {best} {mine[0]:.3f} vs {theirs[0]:.3f}: {sum(diff) / len(diff):+.3f} "
                      f"[{lo:+.3f}, {hi:+.3f}] {verdict} (test {unit}: {mine[column]:.2e} vs {theirs[column]:.2e})")

    dev_large = summary("dev", "large@1", ids["dev"])[0]
    large_acc, _, large_dollars = summary("test", "large@1", test_ids)
    reaching = sorted((summary("dev", label, ids["dev"])[2], label) for label in small_labels
                      if summary("dev", label, ids["dev"])[0] >= dev_large)
    print(f"\nMonkeys: the large model's pass@1 is {large_acc:.3f} on test ({dev_large:.3f} on dev) at "
          f"${large_dollars:.2e} a problem")
    if reaching:
        label = reaching[0][1]
        acc, _, cost = summary("test", label, test_ids)
        print(f"  the cheapest small configuration that reaches it on dev: {label}; on test {acc:.3f} at ${cost:.2e} "
              f"a problem ({cost / large_dollars:.2f}x the large model's one sample)")
    else:
        label = max(small_labels, key=lambda label: summary("dev", label, ids["dev"])[0])
        acc, _, cost = summary("test", label, test_ids)
        print(f"  no small configuration reaches it on dev; the most accurate there, {label}, reaches {acc:.3f} on "
              f"test at ${cost:.2e} a problem (the headline uses it)")
    per_solved = cost / acc if acc else float("inf")
    large_per_solved = large_dollars / large_acc if large_acc else float("inf")
    return {"headline": f"cost per solved problem: small+search ${per_solved:.2e} vs large ${large_per_solved:.2e}"}


def main() -> None:
    args = parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    headline = None
    if "tools" in args.parts:
        ratios = tools_part(args)["ratios"]
        shown = {tool: f"{'>' if bound else ''}{ratio:.1f}x" for tool, (ratio, bound) in ratios.items()}
        headline = f"tools: accuracy at equal cost {shown['calc']} (calc), {shown['python']} (python)"
    if "models" in args.parts:
        headline = models_part(args)["headline"]
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    print(headline)


if __name__ == "__main__":
    main()
