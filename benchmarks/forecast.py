"""Forecasting coverage from few samples: the distributional forecast against the power-law fit.

    python benchmarks/forecast.py [--task arithmetic] [--problems 200] [--fit-samples 16] [--samples 256]
                                  [--problem-seed 0] [--threads 1]

Draws `--samples` attempts at each test problem with the shipped tiny core,
then fits both forecasts on the first `--fit-samples` of them only:
- the power law of Large Language Monkeys, coverage ~ exp(a * k^b), fitted to
  the pooled pass@k curve for k <= fit-samples;
- the distributional forecast (Schaeffer et al., arXiv 2502.17578): a Beta
  distribution over the problems' single-attempt success, fitted by maximum
  likelihood to each problem's count of right answers, which gives
  coverage(k) = 1 - B(alpha, beta + k) / B(alpha, beta).
Each predicts pass@k at 4x and 16x the samples it saw, and is set against
pass@k measured on all `--samples` attempts (the unbiased estimator). The last
line is the headline: `forecast error at k=256: beta N.N pt, power law N.N pt`.
"""

from __future__ import annotations

import argparse
import os
import time


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="arithmetic")
    parser.add_argument("--problems", type=int, default=200, help="test problems (default 200)")
    parser.add_argument("--samples", type=int, default=256, help="attempts per problem, measured (default 256)")
    parser.add_argument("--fit-samples", type=int, default=16, help="attempts the forecasts see (default 16)")
    parser.add_argument("--problem-seed", type=int, default=0, help="which test problems are drawn (default 0)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if not 1 <= args.fit_samples < args.samples:
        raise SystemExit("--fit-samples must be at least 1 and fewer than --samples")
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    import numpy as np
    import torch

    from thinkscale.analysis.passk import pass_at_k
    from thinkscale.analysis.report import powers_of_two
    from thinkscale.analysis.scaling import fit_beta_coverage, fit_coverage_law
    from thinkscale.budget import Budget
    from thinkscale.policies import get_policy
    from thinkscale.runner import run
    from thinkscale.strategies import get_strategy
    from thinkscale.tasks import get_task

    torch.set_num_threads(args.threads)
    task = get_task(args.task)
    policy = get_policy("tiny", checkpoint_name=task.name, threads=args.threads)
    examples = task.examples("test", args.problems, seed=args.problem_seed)
    started = time.perf_counter()
    traces = run(examples, task, get_strategy("repeated_sampling", n=args.samples), policy, Budget(), seed=0)
    print(f"{task.name}: {len(traces)} test problems (problem seed {args.problem_seed}) x {args.samples} samples "
          f"in {time.perf_counter() - started:.0f} s; the forecasts see the first {args.fit_samples} of each")
    verdicts = np.array([[bool(n.correct) for n in t.terminals()] for t in traces])  # (problems, samples)
    seen = verdicts[:, :args.fit_samples]
    ks = powers_of_two(args.fit_samples)
    curve = [np.mean([pass_at_k(args.fit_samples, int(c), k) for c in seen.sum(1)]) for k in ks]
    law = fit_coverage_law(ks, curve)
    beta = fit_beta_coverage(seen.sum(1), [args.fit_samples] * len(seen))
    print(f"power law: coverage ~ exp({law.a:.3f} * k^{law.b:.3f}); Beta({beta.alpha:.3f}, {beta.beta:.3f}) over "
          f"per-problem success")
    targets = [k for k in (4 * args.fit_samples, 16 * args.fit_samples) if k <= args.samples] or [args.samples]
    errors = {}
    for k in targets:
        measured = float(np.mean([pass_at_k(args.samples, int(c), k) for c in verdicts.sum(1)]))
        by_law, by_beta = float(law.predict(k)), float(beta.predict(k))
        errors[k] = (abs(by_beta - measured), abs(by_law - measured))
        print(f"pass@{k}: measured {measured:.3f}; distributional forecast {by_beta:.3f} "
              f"(error {100 * errors[k][0]:.1f} pt); power law {by_law:.3f} (error {100 * errors[k][1]:.1f} pt)")
    k = targets[-1]
    print(f"forecast error at k={k}: beta {100 * errors[k][0]:.1f} pt, power law {100 * errors[k][1]:.1f} pt")


if __name__ == "__main__":
    main()
