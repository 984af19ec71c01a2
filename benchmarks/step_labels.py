"""How often Monte-Carlo step labels are wrong, by who writes the rollouts.

    python benchmarks/step_labels.py [--problems 200] [--samples 8] [--rollouts 8] \
        [--completer arithmetic-base] [--problem-seed 1]

The policy writes `--samples` solutions to each of `--problems` arithmetic
train problems (drawn with `--problem-seed`, default 1; the reward models'
labels came from the draw with seed 0); each step is valued by `--rollouts`
continuations, written once by the policy itself (the baseline,
Math-Shepherd's setting) and once by `--completer`. Arithmetic can check every step (`first_invalid_step`), so the
labels can be graded:

- of the steps labelled as the first failure (no rollout verified), the share
  that were valid reductions: a PRM trained on them learns to doubt right work;
- of the verified solutions that went through a wrong step (luck), the share
  whose labels catch the wrong step;
- of the verified solutions with every step valid, the share wrongly flagged.

The last line is `valid steps labelled failed: policy P, completer C` (lower
is better).
"""

from __future__ import annotations

import argparse
import asyncio
import time


def grade(task, records) -> dict[str, float]:
    """Share of first-failure labels on valid steps; lucky solutions caught; sound solutions flagged."""
    from thinkscale.training.reward import step_targets

    failed = failed_valid = lucky = lucky_caught = sound = sound_flagged = 0
    for r in records:
        bad = task.first_invalid_step(_example(r), "".join(r.steps))
        targets = step_targets(r, "hard")
        zero = next((i for i, t in enumerate(targets) if t == 0.0), None)
        if r.values[-1] >= 1.0:  # verified
            if bad is None:
                sound += 1
                sound_flagged += zero is not None
            else:
                lucky += 1
                lucky_caught += zero is not None
        elif zero is not None:
            failed += 1
            failed_valid += bad is None or zero < bad
    return {"failed_valid": failed_valid / max(failed, 1), "failed": failed,
            "lucky_caught": lucky_caught / max(lucky, 1), "lucky": lucky,
            "sound_flagged": sound_flagged / max(sound, 1), "sound": sound}


def _example(record):
    from thinkscale.tasks.base import Example, Problem

    return Example(Problem(record.problem_id, record.prompt, 0), None)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.split("\n")[2:]))
    parser.add_argument("--problems", type=int, default=200, help="train problems (default 200)")
    parser.add_argument("--samples", type=int, default=8, help="solutions per problem (default 8)")
    parser.add_argument("--rollouts", type=int, default=8, help="continuations per step (default 8)")
    parser.add_argument("--completer", default="arithmetic-base",
                        help="checkpoint that writes the other rollouts (default arithmetic-base, shipped)")
    parser.add_argument("--problem-seed", type=int, default=1,
                        help="which train problems are drawn (default 1, the draw behind the README's numbers)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)

    from thinkscale.training.step_labels import label_steps
    from thinkscale.policies.tiny import TinyPolicy
    from thinkscale.tasks import get_task

    task = get_task("arithmetic")
    examples = task.examples("train", args.problems, seed=args.problem_seed)
    policy = TinyPolicy("arithmetic", threads=args.threads)
    completer = TinyPolicy(args.completer, threads=args.threads)
    results = {}
    for name, writer in (("policy", None), ("completer", completer)):
        t0 = time.perf_counter()
        records = asyncio.run(label_steps(task, policy, examples, samples=args.samples, rollouts=args.rollouts,
                                          completer=writer))
        g = results[name] = grade(task, records)
        print(f"{name:>9} ({args.completer if writer else 'arithmetic'}, {time.perf_counter() - t0:.0f} s): "
              f"{g['failed_valid']:.3f} of {g['failed']} first failures are valid steps; "
              f"{g['lucky_caught']:.3f} of {g['lucky']} lucky solutions caught; "
              f"{g['sound_flagged']:.3f} of {g['sound']} sound solutions flagged", flush=True)
    print(f"valid steps labelled failed: policy {results['policy']['failed_valid']:.2f}, "
          f"completer {results['completer']['failed_valid']:.2f}")


if __name__ == "__main__":
    main()
