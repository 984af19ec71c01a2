"""Ways to fine-tune on one round's verified samples, each evaluated on a dev set of the train split.

    python benchmarks/sft_variants.py --search RUN_DIR [--task countdown]
        [--variants sft-300,sft-900,rpo-300] [--dev-problems 200] [--problem-seed 77] [--out runs/sft-variants]

RUN_DIR is the search ledger of one expert-iteration round (`round-1/search`
of a `thinkscale improve` or `benchmarks/flywheel.py` run, a search of the
train split). Every variant starts from the task's shipped policy, learns
from that ledger's verified solutions (never the task's reference
solutions), and is evaluated like a round of `thinkscale improve` on a dev
set: `--dev-problems` train-split problems drawn with `--problem-seed`,
which every variant's training rows leave out (judged by the prompt's
text), 32 samples each at temperature 1 (pass@1 and pass@32). A variant is
KIND-STEPS (batch 64, lr 1e-3, 20 warmup steps, cosine to a tenth, as
improve's fine-tuning):

- `sft`: the distinct verified solutions, at most 4 a problem (what a round
  of `thinkscale improve` trains on), through `finetune_policy`;
- `cap1`, `cap32`: at most 1 or 32 distinct a problem;
- `dups`: every verified sample, repeats kept (each weighted as the
  policy-gradient estimate of pass@1 weights it);
- `rpo`: `sft` plus a DPO term over pairs of a verified and a wrong solution
  of the same problem (iterative RPO, arXiv 2404.19733: the NLL of the
  verified solutions plus `--dpo-weight` times DPO's loss at `--beta`,
  against the starting policy's log-probabilities; `--pair-batch` pairs a
  step).

The first variant is the baseline. The last line names the best:
`best: VARIANT pass@1 X against BASELINE Y`.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

KINDS = ("sft", "cap1", "cap32", "dups", "rpo")


def parse_variant(text: str) -> tuple[str, int]:
    kind, _, steps = text.partition("-")
    if kind not in KINDS or not steps.isdigit() or int(steps) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KIND-STEPS with KIND one of {', '.join(KINDS)} "
                                         f"and STEPS a positive count, such as sft-300")
    return kind, int(steps)


def rows_of(search: Path, task, kind: str, dev: frozenset[str]) -> tuple[list, list]:
    """(prompt, solution) rows for the variant, and (prompt, chosen, rejected) pairs for rpo."""
    from thinkscale.store import RunStore
    from thinkscale.training.sets import training_rows

    cap = {"cap1": 1, "cap32": 32}.get(kind, 4)
    with RunStore.read(search) as store:
        rows = [(r["prompt"], r["completion"]) for r in training_rows(store, task, "sft", cap, run=str(search))]
        if kind == "dups":  # training_rows has refused a ledger of held-out problems by now
            rows = [(t.root.text, t.solution(n.id)) for t in store.iter_traces() for n in t.terminals()
                    if n.finished and n.correct]
        pairs = [] if kind != "rpo" else [
            (r["prompt"], r["chosen"], r["rejected"]) for r in training_rows(store, task, "preference", 4)
            if r["kind"] == "solution"]
    return [r for r in rows if r[0] not in dev], [p for p in pairs if p[0] not in dev]


def fine_tuning(steps: int, args: argparse.Namespace):
    """Every variant's optimizer settings: improve's fine-tuning (batch 64, lr 1e-3, 20 warmup steps, cosine)."""
    from thinkscale.training.policy import TrainSettings

    return TrainSettings(steps=steps, batch_size=64, lr=1e-3, warmup_steps=20, seed=args.seed, threads=args.threads)


def train_rpo(rows: list, pairs: list, out: Path, steps: int, args: argparse.Namespace) -> None:
    """The starting policy trained on NLL(rows) + w * DPO(pairs), through the fine-tuning's own step loop."""
    import torch
    import torch.nn.functional as F

    from thinkscale.tiny import checkpoint
    from thinkscale.training.policy import IGNORE, epochs, lm_loss, make_batch, train_steps

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    start = checkpoint.load(args.policy)
    model, tokenizer = start.model, start.tokenizer

    def logp(batch: tuple) -> torch.Tensor:  # each row's summed log-probability of its solution
        ids, tgt = batch
        logits = model(ids)
        return -F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), ignore_index=IGNORE,
                                reduction="none").view(tgt.shape).sum(1)

    def sides(chunk: list) -> tuple[tuple, tuple]:
        return (make_batch([(p, c) for p, c, _ in chunk], tokenizer),
                make_batch([(p, r) for p, _, r in chunk], tokenizer))

    with torch.inference_mode():  # the reference: the starting policy
        reference = []
        for i in range(0, len(pairs), 256):
            chosen, rejected = sides(pairs[i:i + 256])
            reference += zip(logp(chosen).tolist(), logp(rejected).tolist())

    def batches():
        pair_batch = min(args.pair_batch, len(pairs))
        for sft, idx in zip(epochs(rows, min(64, len(rows)), args.seed),
                            epochs(list(range(len(pairs))), pair_batch, args.seed + 1)):
            yield (*make_batch(sft, tokenizer), [pairs[j] for j in idx], [reference[j] for j in idx])

    def loss(m, batch: tuple) -> torch.Tensor:
        ids, tgt, chunk, ref = batch
        chosen, rejected = sides(chunk)
        ref_c, ref_r = torch.tensor(ref).unbind(1)
        margin = args.beta * ((logp(chosen) - ref_c) - (logp(rejected) - ref_r))
        return lm_loss(m, (ids, tgt)) + args.dpo_weight * -F.logsigmoid(margin).mean()

    curve, tokens = train_steps(model, batches(), loss, tokenizer.pad_id, fine_tuning(steps, args))
    checkpoint.save(model, tokenizer, out, {"init": str(start.path), "rows": len(rows), "pairs": len(pairs),
                                            "steps": steps, "tokens": tokens, "loss_curve": curve,
                                            "beta": args.beta, "dpo_weight": args.dpo_weight})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.split("\n")[2:]))
    parser.add_argument("--search", required=True, help="one round's search ledger (a run directory)")
    parser.add_argument("--task", default="countdown", help="the built-in task searched (default countdown)")
    parser.add_argument("--policy", default=None, help="the starting checkpoint (default: the task's shipped one)")
    parser.add_argument("--variants", default="sft-300,sft-900,rpo-300", type=lambda s: [parse_variant(v) for v in
                                                                                        s.split(",")],
                        help="KIND-STEPS, comma-separated; the first is the baseline (default sft-300,sft-900,rpo-300)")
    parser.add_argument("--dev-problems", type=int, default=200, help="dev problems of the train split (default 200)")
    parser.add_argument("--problem-seed", type=int, default=77, help="which dev problems are drawn (default 77)")
    parser.add_argument("--beta", type=float, default=0.1, help="rpo: DPO's beta (default 0.1)")
    parser.add_argument("--dpo-weight", type=float, default=1.0, help="rpo: the DPO term's weight (default 1)")
    parser.add_argument("--pair-batch", type=int, default=32, help="rpo: pairs a step (default 32)")
    parser.add_argument("--seed", type=int, default=1, help="training seed (default 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out", default="runs/sft-variants", help="checkpoints and evaluations go here")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    from thinkscale import torch_thread
    from thinkscale.tasks import get_task
    from thinkscale.training.improve import ImproveConfig, evaluate
    from thinkscale.training.policy import finetune_policy

    task = get_task(args.task)
    args.policy = args.policy or task.name
    search, out = Path(args.search), Path(args.out)
    dev = frozenset(e.problem.prompt for e in task.examples("train", args.dev_problems, seed=args.problem_seed))
    results = {}
    for kind, steps in args.variants:
        name = f"{kind}-{steps}"
        target, metrics_file = out / name, out / f"{name}.json"
        if metrics_file.exists():  # resumable: a finished variant is read back, not trained again
            results[name] = json.loads(metrics_file.read_text())
            continue
        rows, pairs = rows_of(search, task, kind, dev)
        if not rows or (kind == "rpo" and not pairs):
            raise SystemExit(f"{search} holds no verified solution{' or wrong one to pair with it' * (kind == 'rpo')}"
                             f" outside the dev set: nothing for {name} to learn from")
        print(f"{name}: {len(rows)} solutions" + (f", {len(pairs)} pairs" if kind == "rpo" else ""), flush=True)
        if kind == "rpo":
            torch_thread.call(train_rpo, rows, pairs, target, steps, args)  # where the evaluations ran: one OpenMP team
        else:
            finetune_policy(args.policy, rows, target, fine_tuning(steps, args), progress=False)
        dev_set = {"split": "train", "problem_seed": args.problem_seed, "problems": args.dev_problems, "samples": 32,
                   "beam": 0}
        config = ImproveConfig.from_dict({"task": task.name, "output": str(out / "eval"), "refresh": None,
                                          "threads": args.threads, "evaluate": dev_set})
        metrics = evaluate(config, out / f"eval-{name}", str(target), None, progress=False)
        metrics_file.write_text(json.dumps(metrics))
        results[name] = metrics
    print(f"\n{'variant':>10} {'pass@1':>8} {'pass@32':>8}")
    for name, m in results.items():
        print(f"{name:>10} {m['pass@1']:8.3f} {m['pass@32']:8.3f}")
    baseline = next(iter(results))
    best = max(results, key=lambda n: results[n]["pass@1"])
    print(f"best: {best} pass@1 {results[best]['pass@1']:.3f} against {baseline} {results[baseline]['pass@1']:.3f}")


if __name__ == "__main__":
    main()
