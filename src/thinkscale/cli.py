"""The `thinkscale` command: thin, one function per subcommand.

    thinkscale demo                       # repeated sampling + coverage report
    thinkscale train policy --task arithmetic --minutes 9 --out ckpt/
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def cmd_train_policy(args: argparse.Namespace) -> int:
    from thinkscale.tasks import get_task
    from thinkscale.tiny.train import TrainSettings, train_policy

    task = get_task(args.task)
    if args.steps is None and args.minutes is None:
        raise SystemExit("give --steps N (exact, reproducible) or --minutes M (timed here, then fixed as steps)")
    settings = TrainSettings(steps=args.steps or 1, batch_size=args.batch_size, lr=args.lr,
                             seed=args.seed, threads=args.threads)
    out = Path(args.out or f"checkpoints/{task.name}")
    summary = train_policy(task, out, settings, minutes=None if args.steps else args.minutes)
    print(f"wrote {out}: {summary['steps']} steps in {summary['train_seconds']} s, "
          f"{summary['tokens_per_s']:.0f} tokens/s, final loss {summary['final_loss']:.4f}")
    print(f"reproduce exactly: {summary['reproduce']}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    import json
    import time

    from tqdm import tqdm

    from thinkscale.analysis.report import format_table, plot_summary, summarize
    from thinkscale.budget import Budget
    from thinkscale.policies.tiny import TinyPolicy
    from thinkscale.runner import run
    from thinkscale.strategies import get_strategy
    from thinkscale.tasks import get_task

    task = get_task(args.task)
    examples = task.examples("test", args.problems, seed=args.seed)
    policy = TinyPolicy(args.checkpoint or task.name, max_rows=args.max_rows, threads=args.threads)
    strategy = get_strategy("repeated_sampling", n=args.samples, temperature=args.temperature)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    traces_path = out / "traces.jsonl"
    started = time.perf_counter()
    with open(traces_path, "w") as traces_file, tqdm(total=len(examples) * args.samples, unit="sample",
                                                      desc=f"sampling {task.name}") as bar:
        policy.on_samples_done = bar.update
        traces = run(examples, task, strategy, policy, Budget(), seed=args.seed,
                     on_trace=lambda t: traces_file.write(t.to_json() + "\n"))
    elapsed = time.perf_counter() - started
    tokens = sum(t.usage.generated_tokens for t in traces)
    summary = summarize(traces, args.samples, votable=task.votable, extrapolate_to=args.extrapolate_to)
    summary.update(task=task.name, checkpoint=str(policy.checkpoint.path), seed=args.seed,
                   sampling_seconds=round(elapsed, 1), generated_tokens=tokens)
    title = (f"{task.name} test split: {len(examples)} problems x {args.samples} samples\n"
             f"(temperature {args.temperature}, seed {args.seed})")
    print(format_table(summary, title.replace("\n", " ")))
    if not task.votable:
        print("(majority@k is not reported: this task is graded on its steps, so final answers cannot be voted on)")
    (out / "report.json").write_text(json.dumps(summary, indent=1))
    plot = plot_summary(summary, out / "coverage.png", title)
    print(f"\nsampled {tokens} tokens in {elapsed:.1f} s ({tokens / elapsed:.0f} tokens/s); "
          f"wrote {traces_path}, {out / 'report.json'}, {plot}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="thinkscale", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="repeated sampling on the tiny core, with the coverage report",
                          description="Sample many attempts per held-out problem with the shipped tiny model, verify "
                                      "them, and print pass@k and majority@k by difficulty with the fitted coverage "
                                      "law; writes the traces (JSONL), a JSON report and a PNG plot.")
    demo.add_argument("--task", default="arithmetic", help="built-in task (default arithmetic)")
    demo.add_argument("--checkpoint", help="shipped checkpoint name or directory (default: the task's own)")
    demo.add_argument("--problems", type=int, default=200, help="held-out problems (default 200)")
    demo.add_argument("--samples", type=int, default=64, help="samples per problem (default 64)")
    demo.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    demo.add_argument("--seed", type=int, default=0, help="seed for problems and sampling (default 0)")
    demo.add_argument("--extrapolate-to", type=int, default=1024, help="k to extrapolate coverage to (default 1024)")
    demo.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    demo.add_argument("--max-rows", type=int, default=512, help="engine batch rows (default 512)")
    demo.add_argument("--out", default="demo-out", help="output directory (default demo-out)")
    demo.set_defaults(func=cmd_demo)

    train = sub.add_parser("train", help="train a tiny-core model", description="Train a tiny-core model from scratch.")
    train_sub = train.add_subparsers(dest="what", required=True, metavar="WHAT")
    policy = train_sub.add_parser("policy", help="train a tiny-core policy on a built-in task",
                                  description="Train a tiny-core policy from scratch on a built-in task's train split, "
                                              "on the CPU, deterministically for a seed and a step count.")
    policy.add_argument("--task", required=True, help="built-in task: arithmetic or countdown")
    policy.add_argument("--minutes", type=float, help="train for about this long (timed here, then fixed as a step count)")
    policy.add_argument("--steps", type=int, help="exact number of optimizer steps (overrides --minutes)")
    policy.add_argument("--batch-size", type=int, default=128, help="sequences per step (default 128)")
    policy.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (default 3e-3)")
    policy.add_argument("--seed", type=int, default=0, help="seed for data and initialisation (default 0)")
    policy.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    policy.add_argument("--out", help="checkpoint directory to write (default checkpoints/TASK)")
    policy.set_defaults(func=cmd_train_policy)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"thinkscale: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
