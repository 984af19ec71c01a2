"""GRPO on the tiny core: thinkscale's own loop against TRL's `GRPOTrainer`, same run, same settings.

    python benchmarks/grpo.py [--task arithmetic] [--steps 40] [--prompts 16] [--group 8] [--lr 1e-4]
        [--kl 0.02] [--problems 200] [--problem-seed 0] [--eval-samples 16] [--out runs/grpo]

Both start from the task's shipped policy (a standard Llama checkpoint, which
TRL loads as it is) and take `--steps` steps. Each step samples `--group`
completions of `--prompts` train problems at temperature 1 (at most 128
tokens), rewards each by the task's verifier, standardizes the rewards within
each group, and takes one AdamW step (betas 0.9/0.95, no weight decay,
constant learning rate, gradients clipped at 1) on the policy gradient plus
`--kl` times the k3 estimate of the KL to the starting policy, normalized by
the batch's completion tokens:

- **thinkscale** (`training/rl.py`, `method: grpo` of `thinkscale improve`):
  samples on the tiny engine;
- **TRL** (`GRPOTrainer`, `loss_type: dapo`, its default, which normalizes
  the same way; `num_iterations: 1`, on-policy as ours; `beta` = `--kl`):
  samples with transformers' `generate`, all of a step's completions in one
  batch, the KV cache on (its defaults; `--trl-continuous-batching` tries
  transformers' continuous batching, 3.4x slower a step here on 2 steps).
  Gradient checkpointing is off (TRL's default is on; it recomputes the
  forward pass, which a model this small does not need).

The problems are the same, in the same order (TRL's shuffling off). What
differs is the sampler, what each framework does around it, and one thing in
the update: ours leaves out the groups whose rewards are all equal (no
advantage: no forward or backward pass over them), where TRL keeps them in
the batch, under the KL term and in the token count. TRL's logs here show
30-60% of groups so, so part of the ratio is training on fewer rows, not
only sampling faster. Both checkpoints are then evaluated the
same way on `--problems` test problems (problem seed `--problem-seed`):
pass@1, majority and pass@N of `--eval-samples` samples at temperature 1. The
wall time of each is everything a user waits for: loading, sampling,
training, saving. The headline is the last line:
`ratio: thinkscale GRPO N.Nx faster than TRL GRPOTrainer (seconds a step)`
(TRL's seconds over ours).
Needs TRL (`pip install -e '.[trl]'`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path


def examples_for(args: argparse.Namespace):
    from thinkscale.tasks import get_task

    task = get_task(args.task)
    return task, task.examples("train", args.steps * args.prompts, seed=args.seed + 1)


def run_thinkscale(args: argparse.Namespace, target: Path) -> dict:
    from thinkscale.training.rl import RLSettings, train_grpo

    task, examples = examples_for(args)
    settings = RLSettings(steps=args.steps, prompts=args.prompts, group=args.group, lr=args.lr, kl=args.kl,
                          seed=args.seed, threads=args.threads)
    t0 = time.perf_counter()
    summary = train_grpo(args.task, task, examples, target, settings, progress=not args.quiet)
    return {"seconds": time.perf_counter() - t0, "sampled_tokens": summary["sampled_tokens"],
            "reward": [r for _, r in summary["reward_curve"]]}


def run_trl(args: argparse.Namespace, target: Path) -> dict:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from thinkscale.tiny.checkpoint import resolve
    from thinkscale.training.rl import RLSettings, rewards

    task, examples = examples_for(args)
    by_prompt = {e.problem.prompt: e for e in examples}
    sampled = [0]
    rewards_seen: list[float] = []

    def verifier(prompts, completions, completion_ids, **_) -> list[float]:
        out = []
        for prompt, text, ids in zip(prompts, completions, completion_ids):
            sampled[0] += len(ids)
            done = len(ids) > 0 and ids[-1] == tokenizer.eos_token_id
            out += rewards(task, by_prompt[prompt], [text], [done], "verifier")  # our loop's own reward
        rewards_seen.append(sum(out) / len(out))
        return out

    class Rewards(TrainerCallback):
        def on_step_end(self, *_, **__):
            if not args.quiet:
                print(f"  trl step {len(rewards_seen)}: mean reward {rewards_seen[-1]:.3f}", flush=True)

    t0 = time.perf_counter()
    torch.set_num_threads(args.threads)
    checkpoint = str(resolve(args.task))
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    dataset = datasets.Dataset.from_list([{"prompt": e.problem.prompt} for e in examples])
    config = GRPOConfig(
        output_dir=str(target.parent / "trl-work"), max_steps=args.steps, num_generations=args.group,
        per_device_train_batch_size=args.prompts * args.group, gradient_accumulation_steps=1,
        max_completion_length=RLSettings().max_tokens, temperature=1.0, top_p=1.0, top_k=0, learning_rate=args.lr,
        beta=args.kl, loss_type="dapo", num_iterations=1, gradient_checkpointing=False, scale_rewards="group",
        adam_beta1=0.9, adam_beta2=0.95, weight_decay=0.0, max_grad_norm=1.0, lr_scheduler_type="constant",
        warmup_steps=0, shuffle_dataset=False,
        logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, bf16=False, disable_tqdm=args.quiet,
        seed=args.seed, log_completions=False,
        use_transformers_continuous_batching=args.trl_continuous_batching)
    trainer = GRPOTrainer(model=model, reward_funcs=verifier, args=config, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[Rewards()])
    trainer.train()
    trainer.save_model(str(target))
    tokenizer.save_pretrained(str(target))
    return {"seconds": time.perf_counter() - t0, "sampled_tokens": sampled[0], "reward": rewards_seen}


def evaluate_policy(args: argparse.Namespace, policy: str, out: Path) -> dict:
    from thinkscale.training.improve import ImproveConfig, evaluate

    config = ImproveConfig.from_dict({
        "task": args.task, "output": str(out), "threads": args.threads, "refresh": None,
        "evaluate": {"split": "test", "problems": args.problems, "problem_seed": args.problem_seed,
                     "samples": args.eval_samples, "beam": 0}}, source="benchmarks/grpo.py")
    return evaluate(config, out, policy, None, progress=not args.quiet)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.split("\n")[2:]))
    parser.add_argument("--task", default="arithmetic", help="a built-in task with a shipped policy (arithmetic)")
    parser.add_argument("--steps", type=int, default=40, help="GRPO steps for each (default 40)")
    parser.add_argument("--prompts", type=int, default=16, help="problems a step (default 16)")
    parser.add_argument("--group", type=int, default=8, help="completions a problem (default 8)")
    parser.add_argument("--lr", type=float, default=1e-4, help="learning rate (default 1e-4)")
    parser.add_argument("--kl", type=float, default=0.02, help="weight of the KL to the start (default 0.02)")
    parser.add_argument("--problems", type=int, default=200, help="test problems to evaluate on (default 200)")
    parser.add_argument("--problem-seed", type=int, default=0, help="which test problems are drawn (default 0)")
    parser.add_argument("--eval-samples", type=int, default=16, help="samples a test problem (default 16)")
    parser.add_argument("--seed", type=int, default=0, help="training seed; also draws the train problems")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out", default="runs/grpo", help="where the checkpoints and evaluations go")
    parser.add_argument("--trl-continuous-batching", action="store_true",
                        help="TRL samples with transformers' continuous batching instead of generate")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    out = Path(args.out) / f"{args.task}-steps{args.steps}-seed{args.seed}"
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name, train in (("trl", run_trl), ("thinkscale", run_thinkscale)):
        print(f"{name}: {args.steps} GRPO steps of {args.prompts} problems x {args.group} samples", flush=True)
        results[name] = train(args, out / name)
    from thinkscale.tiny.checkpoint import resolve

    for old in out.glob("eval-*"):  # evaluations of an earlier run's checkpoints: measured again, not resumed
        shutil.rmtree(old)
    start = evaluate_policy(args, str(resolve(args.task)), out / "eval-start")
    for name, result in results.items():
        result["eval"] = evaluate_policy(args, str(out / name), out / f"eval-{name}")
    (out / "grpo.json").write_text(json.dumps(results, indent=1))

    metrics = list(start)
    print(f"\n{args.task}: {args.steps} steps of {args.prompts} train problems x {args.group} samples, lr {args.lr}, "
          f"KL {args.kl}; {args.threads} torch thread(s); evaluated on {args.problems} test problems "
          f"(problem seed {args.problem_seed}), {args.eval_samples} samples each")
    head = f"{'':>12} {'seconds':>8} {'s/step':>7} {'tokens/s':>9} {'reward 1st..last 5':>19} " + " ".join(
        f"{m:>12}" for m in metrics)
    print(head + "\n" + "-" * len(head))
    print(f"{'start':>12} {'':>8} {'':>7} {'':>9} {'':>19} " + " ".join(f"{start[m]:>12.3f}" for m in metrics
                                                                        if start[m] is not None))
    for name, r in results.items():
        first, last = r["reward"][:5], r["reward"][-5:]
        curve = f"{sum(first) / len(first):.3f}..{sum(last) / len(last):.3f}"
        print(f"{name:>12} {r['seconds']:>8.1f} {r['seconds'] / args.steps:>7.2f} "
              f"{r['sampled_tokens'] / r['seconds']:>9.0f} {curve:>19} "
              + " ".join(f"{r['eval'][m]:>12.3f}" for m in metrics if r["eval"][m] is not None))
    ratio = results["trl"]["seconds"] / results["thinkscale"]["seconds"]
    print(f"ratio: thinkscale GRPO {ratio:.1f}x faster than TRL GRPOTrainer (seconds a step)")


if __name__ == "__main__":
    main()
