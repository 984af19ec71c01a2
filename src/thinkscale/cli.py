"""The `thinkscale` command: thin, one function per subcommand.

    thinkscale demo                        # repeated sampling + coverage report on the tiny core
    thinkscale run CONFIG.yaml             # an experiment from a YAML file, resumable
    thinkscale report RUN_DIR              # print and plot what a run measured
    thinkscale export RUN_DIR --format parquet
    thinkscale train policy --task arithmetic --minutes 9 --out ckpt/
    thinkscale improve CONFIG.yaml         # expert iteration: search, keep the verified, fine-tune (resumable)
    thinkscale serve                       # an OpenAI-compatible reasoning server on 127.0.0.1:8000
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

# -- shared pieces -------------------------------------------------------------

def _execute(config: Any, fresh: bool) -> Path:
    from thinkscale.runner import execute_run

    return execute_run(config, fresh=fresh)


def _report(run_dir: Path, extrapolate_to: int) -> dict:
    """Print the coverage table of every strategy in a run; write report.json and plots."""
    from thinkscale.analysis.report import format_table, plot_summary, summarize
    from thinkscale.config import RunConfig
    from thinkscale.store import RunStore
    from thinkscale.tasks import get_task

    with RunStore.read(run_dir) as store:
        config = RunConfig.from_dict(store.config, source=str(store.path))
        task = get_task(config.task)
        reports = {}
        for strategy in config.strategies:
            label = strategy.effective_label
            if not any(True for key in store.done_keys() if key.startswith(label + "/")):
                print(f"{label}: no traces yet (run `thinkscale run` to finish the run)\n")
                continue
            traces = (t for key, t in store.iter_keyed() if key.startswith(label + "/"))
            summary = summarize(traces, votable=task.votable, extrapolate_to=extrapolate_to)
            settings = ", ".join(f"{k}={v}" for k, v in strategy.settings.items())
            size = f"{summary['groups']['all']['problems']} problems x {summary['samples']} samples"
            print(format_table(summary, f"{label} ({strategy.name}{': ' + settings if settings else ''}) on "
                                        f"{task.name}/{config.split}, {size}, seeds {config.seeds}"))
            plot = plot_summary(summary, Path(run_dir) / f"coverage-{label}.png",
                                f"{task.name}/{config.split}, {label}: {size}")
            print(f"plot: {plot}\n")
            reports[label] = summary
    if not task.votable:
        print("(majority@k is not reported: this task is graded on its steps, so final answers cannot be voted on)")
    (Path(run_dir) / "report.json").write_text(json.dumps(reports, indent=1))
    return reports


# -- subcommands ---------------------------------------------------------------

def cmd_demo(args: argparse.Namespace) -> int:
    import time

    from thinkscale.config import RunConfig

    config = RunConfig.from_dict({
        "task": args.task,
        "problems": args.problems,
        "seeds": [args.seed],
        "output": args.out,
        # threads are part of the config: a run resumes with the thread count it started with,
        # since matmuls split over another number of threads round differently
        "policy": {"name": "tiny", "options": {"checkpoint_name": args.checkpoint or args.task,
                                               "max_rows": args.max_rows, "threads": args.threads}},
        "strategies": [{"name": "repeated_sampling", "settings": {"n": args.samples, "temperature": args.temperature}}],
    }, source="thinkscale demo")
    started = time.perf_counter()
    run_dir = _execute(config, fresh=args.fresh)
    elapsed = time.perf_counter() - started
    _report(run_dir, args.extrapolate_to)
    print(f"sampled and graded in {elapsed:.1f} s; the run's ledger is {run_dir / 'run.sqlite'} "
          f"(`thinkscale report {run_dir}` prints this again, `thinkscale export {run_dir}` writes the traces)")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from thinkscale.config import load_config

    config = load_config(args.config)
    run_dir = _execute(config, fresh=args.fresh)
    _report(run_dir, args.extrapolate_to)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    _report(Path(args.run_dir), args.extrapolate_to)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from thinkscale.analysis.compare import compare, format_comparison, plot_comparison
    from thinkscale.config import RunConfig, load_config, load_prices
    from thinkscale.store import RunStore

    target = Path(args.target)
    if target.is_dir():
        run_dir = target
    elif target.exists():
        run_dir = _execute(load_config(target), fresh=args.fresh)
    else:
        raise ValueError(f"{target}: no such experiment file or run directory")
    with RunStore.read(run_dir) as store:
        config = RunConfig.from_dict(store.config, source=str(store.path))
        by_label: dict[str, list] = {s.effective_label: [] for s in config.strategies}
        for key, trace in store.iter_keyed():
            label = key.split("/", 1)[0]
            if label in by_label:
                by_label[label].append(trace)
    if args.prices:  # the same ledger under another price table: dollars come from the counters alone
        prices = load_prices(args.prices).to_prices()
        for traces in by_label.values():
            for trace in traces:
                trace.usage.dollars = prices.dollars(trace.usage)
    missing = [label for label, traces in by_label.items() if not traces]
    for label in missing:
        print(f"{label}: no traces yet (run `thinkscale run` to finish the run)")
    result = compare({k: v for k, v in by_label.items() if v}, resamples=args.resamples, seed=args.seed)
    title = f"{config.task}/{config.split}"
    print(format_comparison(result, title))
    (run_dir / "compare.json").write_text(json.dumps(result, indent=1))
    plot = plot_comparison(result, run_dir / "compare.png", title)
    print(f"\nwrote {run_dir / 'compare.json'} and {plot}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from thinkscale.export import export

    suffix = "parquet" if args.format == "parquet" else "jsonl"
    if args.as_set:
        from thinkscale.training.sets import export_training_set

        out = Path(args.out) if args.out else Path(args.run_dir) / f"train-{args.as_set}.{suffix}"
        rows = export_training_set(args.run_dir, out, args.as_set, format=args.format,
                                   max_per_problem=args.max_per_problem, chat=args.chat)
        print(f"wrote {rows} {args.as_set} rows to {out}")
        return 0
    out = Path(args.out) if args.out else Path(args.run_dir) / f"traces-{args.rows}.{suffix}"
    rows = export(args.run_dir, out, format=args.format, rows=args.rows)
    print(f"wrote {rows} {args.rows} rows to {out}")
    return 0


def cmd_train_policy(args: argparse.Namespace) -> int:
    from thinkscale.tasks import get_task
    from thinkscale.training.policy import TrainSettings, train_policy

    from thinkscale.tiny.model import TinyConfig

    task = get_task(args.task)
    if args.tool_calls:
        if not hasattr(task, "tool_calls"):
            raise SystemExit(f"thinkscale train policy: --tool-calls: task {args.task!r} has no solutions that call "
                             f"a tool (arithmetic-large has)")
        task = get_task(args.task, tool_calls=True)
    if args.steps is None and args.minutes is None:
        raise SystemExit("thinkscale train policy: give --steps N (exact, reproducible) "
                         "or --minutes M (timed here, then fixed as steps)")
    settings = TrainSettings(steps=args.steps or 1, batch_size=args.batch_size, lr=args.lr,
                             seed=args.seed, threads=args.threads)
    size = TinyConfig(hidden_size=args.hidden_size, intermediate_size=args.intermediate_size or 3 * args.hidden_size,
                      num_hidden_layers=args.layers, num_attention_heads=args.heads)
    out = Path(args.out or f"checkpoints/{task.name}")
    summary = train_policy(task, out, settings, minutes=None if args.steps else args.minutes, config=size)
    print(f"wrote {out}: {summary['steps']} steps in {summary['train_seconds']} s, "
          f"{summary['tokens_per_s']:.0f} tokens/s, final loss {summary['final_loss']:.4f}")
    print(f"reproduce exactly: {summary['reproduce']}")
    return 0


def cmd_train_reward(args: argparse.Namespace) -> int:
    """`train prm` and `train orm`: label the policy's own solutions to train problems, then fine-tune."""
    from thinkscale.tasks import get_task
    from thinkscale.training.labels import label_settings, reward_labels
    from thinkscale.training.policy import TrainSettings
    from thinkscale.training.reward import train_prm

    task = get_task(args.task)
    kind = args.what
    policy_name = args.policy or task.name
    out = Path(args.out or f"checkpoints/{task.name}-{kind}")
    labels_path = Path(args.labels or f"{out}.labels.jsonl")
    info = label_settings(kind, args.problems, args.samples, getattr(args, "rollouts", 0), policy_name,
                          getattr(args, "completer", None), args.seed)
    records, label_info = reward_labels(task, labels_path, info, threads=args.threads, relabel=args.relabel)
    settings = TrainSettings(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                             threads=args.threads, warmup_steps=min(50, args.steps // 10 + 1))
    summary = train_prm(task.name, records, out, settings, init=args.init or policy_name, label_info=label_info,
                        kind=kind, target=getattr(args, "target", "hard"), head=args.head, unlearn=args.unlearn)
    loss = "" if summary["final_loss"] is None else f", final loss {summary['final_loss']:.4f}"
    print(f"wrote {out}: {summary['steps']} steps in {summary['train_seconds']} s{loss}")
    return 0


def cmd_improve(args: argparse.Namespace) -> int:
    from thinkscale.training.improve import improve, load_improve_config

    improve(load_improve_config(args.config), progress=not args.quiet, fresh=args.fresh)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import dataclasses

    try:
        from thinkscale.serve.auth import load_keys
        from thinkscale.serve.config import load_serve_config
        from thinkscale.serve.server import serve
    except ImportError as e:
        raise SystemExit(f"thinkscale serve needs the serve extra ({e.name} is not installed): "
                         f"pip install 'thinkscale[serve]'") from None

    config = load_serve_config(args.config)
    flags = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    serve(dataclasses.replace(config, **flags), load_keys(args.api_key_file), log_level=args.log_level)
    return 0


# -- the parser ----------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="thinkscale", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.split("\n")[2:]))
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="repeated sampling on the tiny core, with the coverage report",
                          description="Sample many attempts per held-out problem with the shipped tiny model, verify "
                                      "them, and print pass@k and majority@k by difficulty with the fitted coverage "
                                      "law. The run goes through the run store in --out (resumable); a JSON report "
                                      "and a PNG plot are written beside it.")
    demo.add_argument("--task", default="arithmetic", help="built-in task (default arithmetic)")
    demo.add_argument("--checkpoint", help="shipped checkpoint name or directory (default: the task's own)")
    demo.add_argument("--problems", type=int, default=200, help="held-out problems (default 200)")
    demo.add_argument("--samples", type=int, default=64, help="samples per problem (default 64)")
    demo.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    demo.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    demo.add_argument("--extrapolate-to", type=int, default=1024, help="k to extrapolate coverage to (default 1024)")
    demo.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    demo.add_argument("--max-rows", type=int, default=1024, help="engine batch rows (default 1024)")
    demo.add_argument("--out", default="demo-out", help="run directory (default demo-out)")
    demo.add_argument("--fresh", action="store_true", help="discard an earlier run in --out instead of resuming it")
    demo.set_defaults(func=cmd_demo)

    run = sub.add_parser("run", help="run an experiment described in a YAML file (resumable)",
                         description="Run the experiment in CONFIG.yaml: task and split, policy, strategies with "
                                     "their budgets, seeds, output directory. Interrupted and started again with the "
                                     "same command, it resumes where it stopped.")
    run.add_argument("config", help="the experiment's YAML file")
    run.add_argument("--fresh", action="store_true", help="discard an earlier run in the output directory")
    run.add_argument("--extrapolate-to", type=int, default=1024, help="k to extrapolate coverage to (default 1024)")
    run.set_defaults(func=cmd_run)

    report = sub.add_parser("report", help="print and plot what a run measured",
                            description="Read a run's store and print pass@k / majority@k by difficulty and the "
                                        "coverage law for each strategy; writes report.json and PNG plots there.")
    report.add_argument("run_dir", help="a run directory (holding run.sqlite)")
    report.add_argument("--extrapolate-to", type=int, default=1024, help="k to extrapolate coverage to (default 1024)")
    report.set_defaults(func=cmd_report)

    comp = sub.add_parser("compare", help="compare strategies at equal compute, with bootstrap intervals",
                          description="Run (or resume) the experiment in CONFIG.yaml, or read a finished run "
                                      "directory, and compare its strategies: accuracy of the chosen answer with a "
                                      "bootstrap interval over problems, against generated tokens and against "
                                      "FLOPs including the scorer's. Labels NAME@BUDGET plot as one series. Writes "
                                      "compare.json and compare.png in the run directory.")
    comp.add_argument("target", help="an experiment YAML file, or a run directory (holding run.sqlite)")
    comp.add_argument("--fresh", action="store_true", help="discard an earlier run in the output directory")
    comp.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default 1000)")
    comp.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    comp.add_argument("--prices", help="a price table (YAML, as an experiment's `prices:` section) to price the "
                                       "run's usage under, instead of the run's own")
    comp.set_defaults(func=cmd_compare)

    export = sub.add_parser("export", help="write a run's traces, or training sets made of them, as Parquet or JSONL",
                            description="Write a run's traces, one row per node or one per solution, as Parquet "
                                        "(pandas, datasets.load_dataset('parquet', ...)) or JSONL; or with --as, a "
                                        "training set in the format TRL's trainers read: sft (prompt/completion: "
                                        "verified solutions), preference (prompt/chosen/rejected: a verified "
                                        "solution or step against a wrong one) or steps (prompt/completions/labels: "
                                        "each step labelled by whether its subtree reached a verified answer). "
                                        "Every row names its run, strategy, seed and problem; a run holding "
                                        "problems of the test split is refused.")
    export.add_argument("run_dir", help="a run directory (holding run.sqlite)")
    export.add_argument("--format", choices=["parquet", "jsonl"], default="jsonl", help="file format (default jsonl)")
    export.add_argument("--rows", choices=["node", "solution"], default="solution",
                        help="one row per node or per solution (default solution)")
    export.add_argument("--as", dest="as_set", choices=["sft", "preference", "steps"],
                        help="write a training set instead of the traces")
    export.add_argument("--max-per-problem", type=int, default=4,
                        help="with --as: rows of each kind per problem and strategy at most (default 4)")
    export.add_argument("--chat", action="store_true", help="with --as sft: chat `messages` instead of prompt/completion")
    export.add_argument("--out", help="output file (default RUN_DIR/traces-ROWS.FORMAT, or RUN_DIR/train-SET.FORMAT)")
    export.set_defaults(func=cmd_export)

    train = sub.add_parser("train", help="train a tiny-core model", description="Train a tiny-core model from scratch.")
    train_sub = train.add_subparsers(dest="what", required=True, metavar="WHAT")
    policy = train_sub.add_parser("policy", help="train a tiny-core policy on a built-in task",
                                  description="Train a tiny-core policy from scratch on a built-in task's train split, "
                                              "on the CPU, deterministically for a seed and a step count.")
    policy.add_argument("--task", required=True, help="built-in task: arithmetic, arithmetic-large or countdown")
    policy.add_argument("--minutes", type=float, help="train for about this long (timed here, then fixed as a step count)")
    policy.add_argument("--steps", type=int, help="exact number of optimizer steps (overrides --minutes)")
    policy.add_argument("--batch-size", type=int, default=128, help="sequences per step (default 128)")
    policy.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (default 3e-3)")
    policy.add_argument("--seed", type=int, default=0, help="seed for data and initialisation (default 0)")
    policy.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    policy.add_argument("--hidden-size", type=int, default=128, help="model width (default 128, the shipped size)")
    policy.add_argument("--intermediate-size", type=int, help="MLP width (default 3 x the hidden size)")
    policy.add_argument("--layers", type=int, default=4, help="transformer layers (default 4)")
    policy.add_argument("--heads", type=int, default=4, help="attention heads (default 4)")
    policy.add_argument("--tool-calls", action="store_true",
                        help="train on solutions that call a tool for the hard operations (tasks that have them: "
                             "arithmetic-large)")
    policy.add_argument("--out", help="checkpoint directory to write (default checkpoints/TASK)")
    policy.set_defaults(func=cmd_train_policy)

    prm = train_sub.add_parser("prm", help="train a process reward model on Monte-Carlo step labels",
                               description="Label the steps of the policy's own solutions to train-split problems "
                                           "by Monte-Carlo rollouts (a step's value: the share of continuations "
                                           "from it, written by --completer, that verify), then fine-tune a "
                                           "tiny-core model into a PRM that predicts, after every step, whether the "
                                           "solution can still succeed.")
    orm = train_sub.add_parser("orm", help="train an outcome reward model on whole solutions and their verdicts",
                               description="Sample the policy's own solutions to train-split problems, grade them "
                                           "with the task's verifier, then fine-tune a tiny-core model into an ORM "
                                           "that predicts the verdict after the whole solution.")
    for kind, cmd in (("prm", prm), ("orm", orm)):
        cmd.add_argument("--task", required=True, help="built-in task: arithmetic or countdown")
        cmd.add_argument("--policy", help="policy checkpoint whose solutions are labelled (default: the task's)")
        cmd.add_argument("--init", help=f"checkpoint the {kind.upper()} starts from (default: the policy)")
        cmd.add_argument("--problems", type=int, default=1500, help="train problems to label (default 1500)")
        cmd.add_argument("--samples", type=int, default=4 if kind == "prm" else 8,
                         help=f"solutions per problem (default {4 if kind == 'prm' else 8})")
        if kind == "prm":
            cmd.add_argument("--rollouts", type=int, default=8,
                             help="continuations per step (default 8; 0: each step is valued by its own "
                                  "solution's verdict, no rollouts; with --target hard only a wrong solution's "
                                  "first step is then unlearnt, with soft every step)")
            cmd.add_argument("--completer", help="checkpoint that writes the rollouts (default: the policy); a "
                                                 "stronger one labels fewer valid steps as failed")
            cmd.add_argument("--target", choices=["hard", "soft"], default="hard",
                             help="hard labels up to the first error (default) or the soft Monte-Carlo values "
                                  "(the verdict head learns soft values; the likelihood head splits at 1/2)")
        cmd.add_argument("--head", choices=["likelihood", "verdict"], default="likelihood",
                         help="likelihood: score a step by the lowest probability of its tokens (default); "
                              "verdict: predict a +/- label after each step (Math-Shepherd)")
        cmd.add_argument("--unlearn", choices=["weakest", "every"], default="weakest",
                         help="likelihood head: the tokens of a failed step pushed down, its weakest (default) or "
                                 "every one (where the policy is sure of its mistakes, as on countdown)")
        cmd.add_argument("--steps", type=int, default=200,
                         help="optimizer steps (default 200; 0 keeps --init as it is, the untrained baseline)")
        cmd.add_argument("--batch-size", type=int, default=64, help="solutions per step (default 64)")
        cmd.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (default 1e-4)")
        cmd.add_argument("--seed", type=int, default=0, help="seed for problems, sampling and training (default 0)")
        cmd.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
        cmd.add_argument("--out", help=f"checkpoint directory (default checkpoints/TASK-{kind})")
        cmd.add_argument("--labels", help="label JSONL to write, or reuse if it exists (default OUT.labels.jsonl)")
        cmd.add_argument("--relabel", action="store_true", help="redo the labels even if the file exists")
        cmd.set_defaults(func=cmd_train_reward)

    imp = sub.add_parser("improve", help="rounds of expert iteration: the policy and its PRM learn from their own "
                                         "verified search (resumable)",
                         description="Each round searches the train split with the current policy, keeps the "
                                     "solutions the verifier accepts, fine-tunes the policy on them, refreshes the "
                                     "PRM on the new policy's own search trees and evaluates on the test split "
                                     "(pass@1, majority@N, pass@N, PRM beam search, PRM best-of-N); `method: grpo` "
                                     "learns by reinforcement learning instead. Checkpoints and ledgers of every "
                                     "round stay in the output directory; run the same command again to resume "
                                     "(with more rounds, to continue). See "
                                     "examples/improve.yaml and docs/learn.md.")
    imp.add_argument("config", help="the improve run's YAML file")
    imp.add_argument("--fresh", action="store_true",
                     help="start afresh when the output holds a run of another config (it is moved aside)")
    imp.add_argument("--quiet", action="store_true", help="no progress bars")
    imp.set_defaults(func=cmd_improve)

    srv = sub.add_parser("serve", help="an OpenAI-compatible server whose reasoning effort buys more search",
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         description="Serve models behind OpenAI's API: /v1/chat/completions, /v1/completions,\n"
                                     "/v1/models, /health and /metrics. The model name picks the strategy\n"
                                     "(beam_search:arithmetic; plain arithmetic is one sample), reasoning_effort buys\n"
                                     "a budget, and a stream sends every step the search generates as reasoning\n"
                                     "while it runs. With no arguments it serves the shipped tiny arithmetic core\n"
                                     "and its reward models, offline, on 127.0.0.1:8000. See docs/serve.md.",
                         epilog="example, with the openai client:\n"
                                "  thinkscale serve &\n"
                                "  client = OpenAI(base_url='http://127.0.0.1:8000/v1', api_key='none')\n"
                                "  client.chat.completions.create(model='beam_search:arithmetic', seed=0,\n"
                                "      reasoning_effort='high', messages=[{'role': 'user', 'content': '(3+5)*(7-2)='}])")
    srv.add_argument("--config", help="server config YAML: models, cap on any request's budget, effort table, "
                                      "presets, limits (default: the tiny arithmetic core)")
    srv.add_argument("--host", help="interface to bind (default 127.0.0.1; any other needs API keys)")
    srv.add_argument("--port", type=int, help="port (default 8000)")
    srv.add_argument("--api-key-file", help="file of API keys, one a line (also $THINKSCALE_API_KEYS, "
                                            "comma-separated); none: open, loopback only")
    srv.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                     help="uvicorn's log level (default info); keys are never logged")
    srv.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("\nthinkscale: interrupted; finished traces are kept, run the same command again to resume",
              file=sys.stderr)
        return 130
    except (ValueError, OSError) as e:  # config, names, missing files, a full disk: say what and where
        print(f"thinkscale: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
