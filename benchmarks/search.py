"""Reward models and search at equal compute, on the tiny core.

    python benchmarks/search.py [--tasks arithmetic,countdown] [--problems 200] [--budgets 4,16,64,256]
        [--split test|dev] [--problem-seed 0] [--base-policy {task}-base] [--threads 2] [--workers 1]

For each task: repeated sampling gives pass@k (coverage, which needs the
verifier) and majority@k (exact estimators over a pool of max(budgets)
samples per problem). Then every strategy runs at each budget k, sized to
spend about k samples' worth of generated tokens: best-of-k by the ORM,
best-of-k and weighted best-of-k by the PRM, PRM beam search with n = k
(width sqrt(k)), DVTS with n = k (width 4), and MCTS run until it has spent k
samples' worth of generated tokens (`iterations: null` under a token budget
of k x the pool's mean tokens a sample; `--mcts-exploration`, `--mcts-width`
and `--mcts-rollouts` set its PUCT constant, expansion width and rollouts,
chosen with `--split dev`). Each row reports what the strategy actually spent
(generated tokens per problem, and FLOPs with the scorer's) beside its
accuracy with a 90% bootstrap interval over problems, so budgets are matched
by what was spent, not by N. The pool rows (pass@k, majority@k) report the
FLOPs that k samples of the pool cost. FLOPs count what was computed: the
policy and the reward models keep the keys and values of what they computed
(tiny/prefix_cache.py), so a step search's next step and its PRM score read
only the new tokens. The lines `prm-beam@k: N.NNx` give each step search's
FLOPs per generated token over PRM best-of-k's at the same k;
`--prefix-cache-mb 0` shows them with every path reread at every step. The
runner solves every problem at once, so the caches hold 200 searches' paths:
the default here is 4096 MB a model (the library's is 512), because what is
evicted is computed again.

The stronger model as the policy. The shipped PRM starts from `{task}-base`,
a model of the same architecture trained about 6x longer than the shipped
policy. The first question a skeptic asks is whether search with the small
policy beats spending the same compute on that stronger model. So where
`--base-policy` exists, the base model also runs as the policy: its pass@k
and majority@k (from a pool of `--base-pool` samples, default 4 x the
largest budget), and best-of-k and weighted best-of-k by the same PRM at the
same budgets. Both models have the same size, so a token costs the same FLOPs
(the script checks and prints it), and the rows at one budget k spend about
the same FLOPs whichever model samples. Search spends more FLOPs than
best-of-k at the same tokens (the PRM reads every partial path), so a last
table sets each small-policy row beside the base model's majority vote over
as many samples as that row's FLOPs buy.

Choosing settings. The recipes and their settings (aggregation, widths,
thresholds) are chosen on a dev set, never on the test split: `--split dev`
draws problems from the train split (seed 1000 + `--problem-seed`), leaving
out every problem the reward models' labels were made from (read from their
`training.json`; `task.examples("train", 1500, seed=0)` for the shipped
ones), checked by problem text. Dev problems are train-split problems, which
the policies trained on: in a 400-problem arithmetic draw, 72 (mostly 2- and
3-operation problems) appear verbatim in arithmetic-base's training stream,
so dev accuracies run higher than test ones; use dev to choose and test to
report. The settings above predate this rule (they were chosen on the test
split); `--split dev` lets a reader redo the choice. `--problem-seed` picks
which problems are drawn (default 0, the draw behind the README's numbers),
so the numbers can be checked on a fresh draw.

Arithmetic has a verifier gap at N = 64: pass@64 - majority@64. The last line
is the share of that gap closed by PRM-weighted best-of-64:
`gap closed: 0.NN`. Countdown has no single answer to vote on; there
best-of-N and search stand against pass@k.

Wall time. Each row (a strategy at one budget over every problem) runs on
its own: its searches keep their caches in scopes of their own and sampling
is counter-based, so a row prints the same numbers whichever process ran it
and whatever ran there before. `--workers N` runs the rows in N processes,
each loading the models once and taking the next row when free (the largest
budgets first); every figure but the seconds is the same as with one. On a
2-core CPU `--workers 2 --threads 1` keeps both cores busy; each worker holds
its own prefix caches (up to `--prefix-cache-mb` a model), so memory grows
with N (docs/benchmarks.md has the measured peak). `--dtype bfloat16` runs
the policies and the reward models in bfloat16 (tiny/engine.py): faster on a
CPU with bfloat16 units, but samples and scores move a little from
float32's, so the figures are not float32's; compare each row with float32's
interval, not its digits.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import time
from typing import get_args

from thinkscale.tiny import DtypeName  # torch-free: threads are set before torch loads

DEV_SEED_OFFSET = 1000  # dev draws: task.examples("train", ..., seed=DEV_SEED_OFFSET + problem_seed)


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


def pool_flops(traces, per_token: float):
    """FLOPs of k samples of a pool, as a function of k: the prompt once (a prefix cache), k samples' tokens,
    at `per_token` FLOPs a token."""
    samples = sum(t.usage.samples for t in traces)
    generated = sum(t.usage.generated_tokens for t in traces) / samples
    prompt = sum(t.usage.prompt_tokens for t in traces) / samples  # counted once per sample: one prompt's length
    return lambda k: per_token * (prompt + k * generated)


# From --mcts-exploration, --mcts-width, --mcts-rollouts; these defaults were chosen on 100 dev problems at 16
# samples' worth (docs/benchmarks.md): without rollouts, MCTS run to its budget explores breadth and ends with
# no finished path and nothing left to commit with.
MCTS = {"exploration": 0.3, "expansion_width": 4, "rollouts": 1}


def strategies_at(k: int, votable: bool) -> dict[str, tuple[str, dict, str]]:
    """label -> (strategy, settings, scorer) at a budget of k samples' worth (MCTS: a token budget, below)."""
    width = max(1, 2 ** round(math.log2(k) / 2))
    choose = "weighted" if votable else "best"  # answers that cannot be pooled: the best-scoring solution
    out = {
        f"orm-best_of_n@{k}": ("best_of_n", {"n": k, "aggregation": "last"}, "orm"),
        f"prm-best_of_n@{k}": ("best_of_n", {"n": k, "aggregation": "min"}, "prm"),
        f"prm-beam@{k}": ("beam_search", {"n": k, "width": width, "aggregation": "min", "choose": choose}, "prm"),
        f"prm-dvts@{k}": ("dvts", {"n": k, "width": min(4, k), "aggregation": "min", "choose": choose}, "prm"),
        f"prm-mcts@{k}": ("mcts", {"iterations": None, **MCTS, "aggregation": "min", "choose": choose}, "prm"),
    }
    if votable:
        out[f"prm-weighted_best_of_n@{k}"] = ("weighted_best_of_n", {"n": k, "aggregation": "min"}, "prm")
    return out


def base_strategies_at(k: int, votable: bool) -> dict[str, tuple[str, dict, str]]:
    """The base model as the policy: best-of-k (and weighted) by the same PRM, as the small policy's rows."""
    rows = strategies_at(k, votable)
    return {f"base-{label}": rows[label] for label in (f"prm-best_of_n@{k}", f"prm-weighted_best_of_n@{k}")
            if label in rows}


def labelled_problems(task, checkpoint_names) -> set[str]:
    """Prompts of the train-split problems the reward models' labels were made from (their training.json)."""
    from thinkscale.tiny.checkpoint import resolve

    draws = set()  # (problems, seed): the PRM and the ORM were labelled on the same draw
    for name in checkpoint_names:
        path = resolve(name) / "training.json"
        labels = json.loads(path.read_text()).get("labels") if path.exists() else None
        if labels and labels.get("split") == "train":
            draws.add((labels["problems"], labels["seed"]))
    return {e.problem.prompt for problems, seed in draws for e in task.examples("train", problems, seed=seed)}


def dev_examples(task, n: int, problem_seed: int, exclude: set[str]):
    """`n` train-split problems none of which is in `exclude`, spread evenly over the difficulties as a draw is."""
    drawn = task.examples("train", n + n // 4 + 16, seed=DEV_SEED_OFFSET + problem_seed)
    by_difficulty: dict[int, list] = {d: [] for d in task.difficulties}
    for e in drawn:
        if e.problem.prompt not in exclude:
            by_difficulty[e.problem.difficulty].append(e)
    out = []
    for i in range(n):
        bucket = by_difficulty[task.difficulties[i % len(task.difficulties)]]
        if not bucket:
            raise RuntimeError(f"{task.name}: too few dev problems outside the reward models' label problems")
        out.append(bucket.pop(0))
    assert not {e.problem.prompt for e in out} & exclude
    return out


def kernel_note(names) -> str:
    """", C kernel" where the CPU kernel runs: an engine runs it only for a model within its bounds
    (`cpu_kernel.fits`), so a checkpoint outside them (a custom --prm or --orm) is named as on the torch path."""
    from thinkscale.tiny import cpu_kernel
    from thinkscale.tiny.checkpoint import resolve
    from thinkscale.tiny.model import TinyConfig

    outside = []
    for name in dict.fromkeys(names):
        c = TinyConfig.from_hf(json.loads((resolve(name) / "config.json").read_text()))
        if not cpu_kernel.fits(c.num_attention_heads, c.head_dim, c.max_position_embeddings):
            outside.append(name)
    return ", C kernel" + (f" ({', '.join(outside)} on the torch path: outside its bounds)" if outside else "")


def base_policy_name(pattern: str | None, task_name: str, explicit: bool) -> str | None:
    """The base checkpoint for `task_name`, or None (with a note) when the default names none that exists."""
    from thinkscale.tiny.checkpoint import resolve

    if not pattern or pattern == "none":
        return None
    name = pattern.format(task=task_name)
    try:
        resolve(name)
    except ValueError:
        if explicit:
            raise
        print(f"  (no {name} checkpoint: no base-policy rows for {task_name})")
        return None
    return name


# -- where rows run: in this process, or in worker processes -------------------
# A row is one strategy over every problem of a task. Rows are independent: each search keeps its
# caches in a scope of its own and is charged for what it computed itself, and sampling is
# counter-based, so a row's results do not depend on which process ran it or what ran there before.
LOADED: dict = {}  # what this process loaded to run rows (`load_models`)


def load_models(task_name: str, examples, policies: dict[str, str], scorers: dict[str, str], threads: int,
                prefix_cache_mb: float, seed: int, dtype: str = "float32") -> None:
    """Load the task and the models the rows need: role -> policy checkpoint, kind -> scorer checkpoint."""
    from thinkscale.policies import get_policy
    from thinkscale.scorers import get_scorer
    from thinkscale.tasks import get_task

    cache = {"prefix_cache_mb": prefix_cache_mb, "dtype": dtype}
    LOADED.update(task=get_task(task_name), examples=examples, seed=seed,
                  policies={role: get_policy("tiny", checkpoint_name=name, threads=threads, **cache)
                            for role, name in policies.items()},
                  scorers={kind: get_scorer(kind, checkpoint_name=name, **cache) for kind, name in scorers.items()})


def run_row(strategy: str, settings: dict, kind: str | None, role: str, max_tokens: int | None):
    """One row: `strategy` with `settings` over every problem, sampled by the policy `role` and scored by
    the scorer `kind` under a budget of `max_tokens` generated tokens (None: none). (traces, seconds, the
    process that ran it)."""
    from thinkscale.budget import Budget
    from thinkscale.runner import run
    from thinkscale.strategies import get_strategy

    started = time.perf_counter()
    budget = Budget(max_generated_tokens=max_tokens) if max_tokens is not None else Budget()
    traces = run(LOADED["examples"], LOADED["task"], get_strategy(strategy, **settings), LOADED["policies"][role],
                 budget, scorer=LOADED["scorers"][kind] if kind else None, seed=LOADED["seed"])
    return traces, time.perf_counter() - started, os.getpid()


def model_facts(role: str) -> tuple[float, int]:
    """The policy `role`'s FLOPs a token and parameters."""
    policy = LOADED["policies"][role]
    return policy.flops_per_token(), policy.checkpoint.model.config.num_parameters()


class Deferred:
    """A call made when its result is first asked for: rows in one process, in the order they are read."""

    def __init__(self, fn, *args) -> None:
        self.fn, self.args, self.done = fn, args, False

    def result(self):
        if not self.done:
            self.value, self.done = self.fn(*self.args), True
        return self.value


class InProcess:
    """Runs rows in this process, each when its result is read (what the script did before `--workers`)."""

    def __init__(self, *load_args) -> None:
        load_models(*load_args)

    def submit(self, fn, *args) -> Deferred:
        return Deferred(fn, *args)

    def shutdown(self, cancel_futures: bool = False) -> None:
        pass


def workers_for(count: int, *load_args):
    """`count` worker processes, each with the models loaded once; rows go to whichever is free, in the order
    they are submitted. One worker: this process. Workers start by spawning (the parent may hold torch threads)."""
    if count <= 1:
        return InProcess(*load_args)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(count, mp_context=multiprocessing.get_context("spawn"), initializer=load_models,
                               initargs=load_args)


def bench_task(name: str, args) -> dict:
    from thinkscale.tasks import get_task

    task = get_task(name)
    reward_models = {kind: pattern.format(task=name) for kind, pattern in (("prm", args.prm), ("orm", args.orm))}
    if args.split == "dev":
        labelled = labelled_problems(task, reward_models.values())
        examples = dev_examples(task, args.problems, args.problem_seed, labelled)
        where = (f"dev problems (train split, seed {DEV_SEED_OFFSET + args.problem_seed}; none of the "
                 f"{len(labelled)} problems the reward models were labelled on)")
    else:
        examples = task.examples("test", args.problems, seed=args.problem_seed)
        where = f"test problems (seed {args.problem_seed})"
    base_name = base_policy_name(args.base_policy, name, args.base_policy_given)
    policies = {"policy": name, **({"base": base_name} if base_name else {})}
    started = time.perf_counter()
    runner = workers_for(args.workers, name, examples, policies, reward_models, args.threads, args.prefix_cache_mb,
                         args.seed, args.dtype)
    try:
        out = bench_rows(name, args, task, examples, where, reward_models, base_name, runner)
    finally:
        runner.shutdown(cancel_futures=True)  # after an error, rows not yet started are not run
    here, worker = (resource.getrusage(who).ru_maxrss / 1024 for who in (resource.RUSAGE_SELF,
                                                                         resource.RUSAGE_CHILDREN))
    elsewhere = len(out["pids"] - {os.getpid()})
    print(f"{name}: {time.perf_counter() - started:.0f} s in all, {args.workers} worker"
          f"{'s' if args.workers > 1 else ''} of {args.threads} torch thread{'s' if args.threads > 1 else ''} "
          f"(rows run in {elsewhere} other process{'es' if elsewhere != 1 else ''}), {args.dtype}"
          + (kernel_note({**policies, **reward_models}.values()) if args.cpu_kernel else "") + "; peak memory so far "
          f"{here:.0f} MB" + (f" here, {worker:.0f} MB the largest worker" if args.workers > 1 else ""), flush=True)
    return out


def bench_rows(name: str, args, task, examples: list, where: str, reward_models: dict[str, str], base_name: str | None,
               runner) -> dict:
    """The task's pools and rows, run by `runner` (`workers_for`), and their tables; `out["pids"]`: the processes
    that ran them."""
    from thinkscale.analysis.compare import compare, format_comparison

    ks = args.budgets
    facts = {role: runner.submit(model_facts, role) for role in ("policy", "base") if role != "base" or base_name}
    pool_size = args.base_pool or 4 * max(ks)
    pool_job = runner.submit(run_row, "repeated_sampling", {"n": max(ks)}, None, "policy", None)
    base_job = runner.submit(run_row, "repeated_sampling", {"n": pool_size}, None, "base", None) if base_name else None
    pool, seconds, pid = pool_job.result()
    pids = {pid}
    per_token = facts["policy"].result()[0]
    cover, vote, valid, per_sample = pool_stats(task, examples, pool, ks)
    flops_of = pool_flops(pool, per_token)
    print(f"\n== {name}: {len(examples)} {where}; repeated sampling pool of {max(ks)} "
          f"({per_sample:.1f} generated tokens a sample) in {seconds:.0f} s", flush=True)
    # Every row at once, so that workers never wait; with several, the largest budgets first (the longest rows),
    # so that none is left running alone at the end. MCTS runs until it has spent k samples' worth of the pool's
    # tokens; the others are sized by n.
    jobs: dict[int, dict] = {}  # k -> label -> its row
    for k in (ks if args.workers <= 1 else sorted(ks, reverse=True)):
        todo = [(label, spec, "policy") for label, spec in strategies_at(k, task.votable).items()]
        if base_name:
            todo += [(label, spec, "base") for label, spec in base_strategies_at(k, task.votable).items()]
        for label, (strategy, settings, kind), role in todo:
            if not args.only or re.search(args.only, label):
                budget = round(k * per_sample) if strategy == "mcts" else None
                jobs.setdefault(k, {})[label] = runner.submit(run_row, strategy, settings, kind, role, budget)
    base = None
    if base_name:
        base_per_token, base_parameters = facts["base"].result()
        same = base_per_token == per_token
        print(f"base policy {base_name}: {base_per_token:.3e} FLOPs a token against the policy's "
              f"{per_token:.3e} ({'the same' if same else 'NOT the same'}: "
              f"{base_parameters:,} and {facts['policy'].result()[1]:,} parameters)", flush=True)
        base_pool, seconds, pid = base_job.result()
        pids.add(pid)
        base = {"name": base_name, "pool": pool_size, "flops_of": pool_flops(base_pool, base_per_token),
                "stats": lambda some_ks: pool_stats(task, examples, base_pool, some_ks)}
        base["cover"], base["vote"], _, base["per_sample"] = base["stats"](ks)
        print(f"base pool of {pool_size} ({base['per_sample']:.1f} generated tokens a sample) in "
              f"{seconds:.0f} s", flush=True)
    by_label = {}
    title = f"{name}/{args.split}, PRM {reward_models['prm']}, ORM {reward_models['orm']}"
    for k in ks:  # the table so far after each budget (with one worker, a long run shows them as it goes)
        for label, job in jobs.get(k, {}).items():
            by_label[label], seconds, pid = job.result()
            pids.add(pid)
            print(f"  {label}: {seconds:.0f} s", flush=True)
        if by_label:
            result = compare(by_label, seed=args.seed)
            print(format_comparison(result, title))
        else:
            result = {"strategies": {}}
        print(f"{'k':>5} {'k samples (tokens)':>18} {'FLOPs':>9} {'pass@k':>7} "
              + ("valid pass@k " if valid else "") + ("majority@k" if vote else ""))
        for done in ks[:ks.index(k) + 1]:
            print(f"{done:>5} {done * per_sample:18.0f} {flops_of(done):9.2e} {cover[done]:7.3f} "
                  + (f"{valid[done]:12.3f} " if valid else "") + (f"{vote[done]:10.3f}" if vote else ""))
        print(flush=True)
    print_flop_ratios(result, ks)
    if base:
        print_base(base, task, ks, result)
    return {"result": result, "cover": cover, "vote": vote, "valid": valid, "per_sample": per_sample,
            "base": base, "pids": pids}


def flop_ratios(result: dict, k: int) -> dict[str, float]:
    """Each step search's FLOPs per generated token over PRM best-of-k's, at budget k (scorer FLOPs included)."""
    rows = result["strategies"]
    bon = rows.get(f"prm-best_of_n@{k}")
    if not bon or not bon["generated_tokens"]:
        return {}
    per_token = bon["flops"] / bon["generated_tokens"]
    return {label: rows[label]["flops"] / rows[label]["generated_tokens"] / per_token
            for label in (f"prm-beam@{k}", f"prm-dvts@{k}", f"prm-mcts@{k}")
            if label in rows and rows[label]["generated_tokens"]}


def print_flop_ratios(result: dict, ks) -> None:
    """The FLOP ratio at equal generated tokens: what a step search pays beyond sampling whole solutions."""
    lines = [f"  {label}: {ratio:.2f}x" for k in ks for label, ratio in flop_ratios(result, k).items()]
    if lines:
        print("FLOPs per generated token, policy and PRM, against PRM best-of-k at the same k:")
        print("\n".join(lines), flush=True)


def print_base(base: dict, task, ks, result: dict) -> None:
    """The base model's pool rows, and each small-policy row beside the base's vote at the same FLOPs."""
    name, flops_of = base["name"], base["flops_of"]
    rows = {label: s for label, s in result["strategies"].items() if not label.startswith("base-")}
    # k': the most samples of the base whose FLOPs do not pass the row's, at most the pool
    k_prime = {label: max((k for k in range(1, base["pool"] + 1) if flops_of(k) <= s["flops"]), default=1)
               for label, s in rows.items()}
    shown = sorted(set(ks) | set(k_prime.values()))
    cover, vote, _, _ = base["stats"](shown)
    print(f"{name} as the policy: pool of {base['pool']} samples a problem")
    print(f"{'k':>5} {'k samples (tokens)':>18} {'FLOPs':>9} {'pass@k':>7} " + ("majority@k" if vote else ""))
    for k in shown:
        print(f"{k:>5} {k * base['per_sample']:18.0f} {flops_of(k):9.2e} {cover[k]:7.3f} "
              + (f"{vote[k]:10.3f}" if vote else ""))
    if not rows:
        return
    print(f"\nat equal FLOPs: each row of the small policy beside {name} sampling k' times, as many as the row's "
          f"FLOPs buy (at most the pool of {base['pool']})")
    width = max(len(label) for label in rows)
    kind = "majority@k'" if vote else "pass@k'"
    print(f"{'strategy':<{width}} {'FLOPs':>9} {'accuracy':>8} {'k-prime':>7} {'base FLOPs':>10} {'base ' + kind:>16}")
    for label, s in sorted(rows.items(), key=lambda kv: (kv[1]["flops"], kv[0])):
        k = k_prime[label]
        value = (vote or cover)[k]
        short = k == base["pool"] and flops_of(k) < 0.9 * s["flops"]
        print(f"{label:<{width}} {s['flops']:9.2e} {s['accuracy']:8.3f} {k:>7} {flops_of(k):10.2e} {value:16.3f}"
              + ("  (pool too small: fewer FLOPs)" if short else ""))
    for k in ks:  # at one budget the two policies' best-of-k spend about the same
        for label in (f"prm-best_of_n@{k}", f"prm-weighted_best_of_n@{k}"):
            if label in rows and f"base-{label}" in result["strategies"]:
                b = result["strategies"][f"base-{label}"]
                print(f"{label}: policy {rows[label]['accuracy']:.3f} ({rows[label]['flops']:.2e} FLOPs), "
                      f"{name} {b['accuracy']:.3f} ({b['flops']:.2e} FLOPs)")
    print(flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.split("\n")[2:]))
    parser.add_argument("--tasks", default="arithmetic,countdown", help="comma-separated built-in tasks")
    parser.add_argument("--problems", type=int, default=200, help="problems per task (default 200)")
    parser.add_argument("--split", choices=("test", "dev"), default="test",
                        help="test (report) or dev (train-split problems, none the reward models were labelled on: "
                             "choose settings here)")
    parser.add_argument("--problem-seed", type=int, default=0,
                        help="which problems are drawn (default 0: the draw behind the README's numbers)")
    parser.add_argument("--budgets", default="4,16,64,256", help="budgets in samples' worth (default 4,16,64,256)")
    parser.add_argument("--prm", default="{task}-prm", help="PRM checkpoint; {task} is replaced (default {task}-prm)")
    parser.add_argument("--orm", default="{task}-orm", help="ORM checkpoint; {task} is replaced (default {task}-orm)")
    parser.add_argument("--base-policy", default=None,
                        help="the stronger model of the same size, run as the policy too; {task} is replaced "
                             "(default {task}-base where it exists; 'none' for no base rows)")
    parser.add_argument("--base-pool", type=int, default=None,
                        help="samples a problem in the base policy's pool (default 4 x the largest budget)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each process (default 2)")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes that run the rows, each with its own models and caches (default 1: this "
                             "one); on a 2-core CPU, --workers 2 --threads 1 keeps both cores busy")
    parser.add_argument("--prefix-cache-mb", type=float, default=4096,
                        help="the policy's and each scorer's prefix cache (default 4096: every problem's search "
                             "runs at once, and an evicted prefix is computed again; the library's default is 512); "
                             "0 rereads every path at every step, as before the caches")
    parser.add_argument("--dtype", choices=get_args(DtypeName), default="float32",
                        help="what the policies and the reward models compute in (default float32; bfloat16 is "
                             "faster where the CPU has bfloat16 units, and its samples and scores differ a little: "
                             "'Wall time' below)")
    parser.add_argument("--cpu-kernel", action=argparse.BooleanOptionalAction, default=None,
                        help="the policies' and the reward models' attention in the engine's C kernel "
                             "(tiny/cpu_kernel.py; the engines' default where it builds): faster on a CPU, rounded "
                             "otherwise, so compare each row with the torch path's interval, not its digits; "
                             "given, an error where it does not build; --no-cpu-kernel: the torch path (sets "
                             "THINKSCALE_CPU_KERNEL to 1 or 0 for every process)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed of every strategy")
    parser.add_argument("--only", help="run only the strategies whose label matches this regular expression")
    parser.add_argument("--mcts-exploration", type=float, default=MCTS["exploration"],
                        help=f"MCTS's PUCT constant (default {MCTS['exploration']})")
    parser.add_argument("--mcts-width", type=int, default=MCTS["expansion_width"],
                        help=f"MCTS's expansion width (default {MCTS['expansion_width']})")
    parser.add_argument("--mcts-rollouts", type=int, default=MCTS["rollouts"],
                        help=f"MCTS's rollouts valuing each new node (default {MCTS['rollouts']})")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    MCTS.update(exploration=args.mcts_exploration, expansion_width=args.mcts_width, rollouts=args.mcts_rollouts)
    args.budgets = [int(b) for b in args.budgets.split(",")]
    args.base_policy_given = args.base_policy is not None
    if args.base_policy is None:
        args.base_policy = "{task}-base"
    if args.base_pool is not None and args.base_pool < max(args.budgets):
        parser.error(f"--base-pool {args.base_pool} is smaller than the largest budget {max(args.budgets)}")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    if args.cpu_kernel is False:
        os.environ["THINKSCALE_CPU_KERNEL"] = "0"  # every engine of this process and of its workers
    else:
        from thinkscale.tiny import cpu_kernel

        available = cpu_kernel.available()  # built here once, before the workers load it
        if args.cpu_kernel and not available:
            parser.error(f"--cpu-kernel: the kernel is not available here ({cpu_kernel.why_unavailable()})")
        if args.cpu_kernel or not available:  # asked for (each engine then warns where it cannot run), or not here:
            os.environ["THINKSCALE_CPU_KERNEL"] = "1" if available else "0"  # the workers need not try to build it
        args.cpu_kernel = available
    tasks = args.tasks.split(",")
    results = {name: bench_task(name, args) for name in tasks}

    r = results.get("arithmetic", {})
    s = r.get("result", {}).get("strategies", {})
    if "prm-weighted_best_of_n@64" in s:
        gap = r["cover"][64] - r["vote"][64]
        wbon = s["prm-weighted_best_of_n@64"]
        print(f"\narithmetic at N = 64: pass@64 {r['cover'][64]:.3f}, majority@64 {r['vote'][64]:.3f}, "
              f"verifier gap {gap:.3f}")
        if r["valid"] and gap > 0:
            print(f"valid pass@64 {r['valid'][64]:.3f}: picking only answers reached by valid steps closes at most "
                  f"{(r['valid'][64] - r['vote'][64]) / gap:.2f} of the gap (a perfect step checker); "
                  f"the rest of pass@64 is luck, right numbers after a wrong step")
        for label in ("prm-weighted_best_of_n@64", "prm-best_of_n@64", "prm-beam@64", "prm-dvts@64", "prm-mcts@64",
                      "base-prm-weighted_best_of_n@64", "base-prm-best_of_n@64"):
            if label in s:
                print(f"{label}: {s[label]['accuracy']:.3f} ({s[label]['generated_tokens']:.0f} tokens, "
                      f"{s[label]['flops']:.2e} FLOPs a problem)")
        if r["base"]:
            b = r["base"]
            print(f"{b['name']} as the policy at N = 64: pass@64 {b['cover'][64]:.3f}, "
                  f"majority@64 {b['vote'][64]:.3f}")
        print(f"gap closed: {(wbon['accuracy'] - r['vote'][64]) / gap:.2f}" if gap > 0
              else "gap closed: nan (pass@64 = majority@64: no gap to close)")


if __name__ == "__main__":
    main()
