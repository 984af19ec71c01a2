"""Strategies compared at equal compute: accuracy against what each one spent.

Each strategy's accuracy (its chosen answer, graded) is set beside the mean
Usage it spent per problem: generated tokens, FLOPs with the scorer's
included, tool calls and their CPU time, and, where the run has a price
table, dollars per problem and per solved problem. Budgets are matched by what was spent, never by "N": two
strategies are comparable where their spending is. Intervals are percentile
bootstrap intervals over problems, drawn with the same resampled problems for
every strategy so that differences between strategies are paired.

Labels of the form NAME@BUDGET form one series (one strategy at several
budgets) in the plot.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from thinkscale.trace import Trace


@dataclass
class _Problem:
    difficulty: str
    correct: list[float]  # one per seed
    tokens: list[float]
    flops: list[float]
    scorer_tokens: list[float]
    dollars: list[float]
    tool_calls: list[float]
    tool_cpu_s: list[float]


def _collect(traces: Iterable[Trace]) -> dict[str, _Problem]:
    problems: dict[str, _Problem] = {}
    for t in traces:
        p = problems.setdefault(t.problem_id, _Problem(str(t.difficulty), [], [], [], [], [], [], []))
        p.correct.append(float(bool(t.correct)))
        p.tokens.append(t.usage.generated_tokens)
        p.flops.append(t.usage.flops)
        p.scorer_tokens.append(t.usage.scored_tokens)
        p.dollars.append(t.usage.dollars)
        p.tool_calls.append(t.usage.tool_calls)
        p.tool_cpu_s.append(t.usage.tool_cpu_s)
    return problems


def compare(by_label: dict[str, Iterable[Trace]], resamples: int = 1000, seed: int = 0,
            confidence: float = 0.9) -> dict:
    """Accuracy with a bootstrap interval, and mean spending, per strategy label (and per difficulty).

    Seeds of one problem are averaged, so the bootstrap resamples problems.
    Labels must cover the same problems for the paired intervals to mean
    anything; a label missing problems that others have is an error.
    """
    collected = {label: _collect(traces) for label, traces in by_label.items()}
    collected = {label: c for label, c in collected.items() if c}
    if not collected:
        raise ValueError("no traces to compare")
    ids = sorted(set().union(*(c.keys() for c in collected.values())))
    for label, c in collected.items():
        if len(c) != len(ids):
            raise ValueError(f"{label!r} has {len(c)} of the {len(ids)} problems the others have; "
                             f"finish the run before comparing")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(ids), size=(resamples, len(ids)))
    tail = (1 - confidence) / 2
    out: dict = {"problems": len(ids), "confidence": confidence, "resamples": resamples, "strategies": {}}
    for label, c in collected.items():
        rows = [c[i] for i in ids]
        acc = np.array([np.mean(p.correct) for p in rows])
        boot = acc[draws].mean(1)
        by_difficulty: dict[str, list[float]] = defaultdict(list)
        for p, a in zip(rows, acc):
            by_difficulty[p.difficulty].append(float(a))
        out["strategies"][label] = {
            "accuracy": round(float(acc.mean()), 4),
            "interval": [round(float(np.quantile(boot, tail)), 4), round(float(np.quantile(boot, 1 - tail)), 4)],
            "generated_tokens": round(float(np.mean([np.mean(p.tokens) for p in rows])), 1),
            "flops": float(np.mean([np.mean(p.flops) for p in rows])),
            "scored_tokens": round(float(np.mean([np.mean(p.scorer_tokens) for p in rows])), 1),
            "dollars": float(np.mean([np.mean(p.dollars) for p in rows])),
            # what one solved problem cost: all that was spent over the problems solved (None: none was)
            "dollars_per_solved": float(sum(np.mean(p.dollars) for p in rows) / acc.sum()) if acc.sum() else None,
            "tool_calls": round(float(np.mean([np.mean(p.tool_calls) for p in rows])), 2),
            "tool_cpu_s": float(np.mean([np.mean(p.tool_cpu_s) for p in rows])),
            "by_difficulty": {d: round(float(np.mean(v)), 4)
                              for d, v in sorted(by_difficulty.items(), key=lambda kv: (len(kv[0]), kv[0]))},
        }
    return out


def format_comparison(result: dict, title: str) -> str:
    """A table sorted by generated tokens: accuracy [interval], spending, accuracy by difficulty."""
    rows = sorted(result["strategies"].items(), key=lambda kv: (kv[1]["generated_tokens"], kv[0]))
    difficulties = list(rows[0][1]["by_difficulty"]) if rows else []
    pct = round(result["confidence"] * 100)
    width = max([len("strategy")] + [len(label) for label, _ in rows])
    priced = any(s.get("dollars") for _, s in rows)
    tools = any(s.get("tool_calls") for _, s in rows)
    head = (f"{'strategy':<{width}} {'accuracy':>8} {f'{pct}% interval':>13} {'gen tokens':>10} {'FLOPs':>9} "
            + (f"{'tool calls':>10} {'tool CPU s':>10} " if tools else "")
            + (f"{'$/problem':>10} {'$/solved':>10} " if priced else "")
            + " ".join(f"{'d=' + d:>6}" for d in difficulties))
    lines = [f"{title} ({result['problems']} problems; intervals: bootstrap over problems)", head, "-" * len(head)]
    for label, s in rows:
        lo, hi = s["interval"]
        per_solved = s.get("dollars_per_solved")
        lines.append(f"{label:<{width}} {s['accuracy']:8.3f} {f'{lo:.3f}-{hi:.3f}':>13} {s['generated_tokens']:10.0f} "
                     f"{s['flops']:9.2e} "
                     + (f"{s['tool_calls']:10.2f} {s['tool_cpu_s']:10.4f} " if tools else "")
                     + (f"{s['dollars']:10.2e} {per_solved if per_solved is not None else float('nan'):10.2e} "
                        if priced else "")
                     + " ".join(f"{s['by_difficulty'].get(d, float('nan')):6.3f}" for d in difficulties))
    return "\n".join(lines)


def series_of(label: str) -> str:
    """`beam-prm@16` and `beam-prm@64` belong to the series `beam-prm`."""
    return label.rsplit("@", 1)[0]


def plot_comparison(result: dict, path: str | Path, title: str = "") -> Path:
    """Accuracy against generated tokens and against FLOPs, one line per series, with intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[str, dict]]] = defaultdict(list)
    for label, s in result["strategies"].items():
        series[series_of(label)].append((label, s))
    panels = [("generated_tokens", "generated tokens per problem"), ("flops", "FLOPs per problem (policy + scorer)")]
    if any(s.get("dollars") for s in result["strategies"].values()):
        panels.append(("dollars", "dollars per problem (policy + scorer + tools)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.8))
    for ax, (key, xlabel) in zip(axes, panels):
        for name, points in sorted(series.items()):
            points.sort(key=lambda p: p[1][key])
            x = [max(p[1][key], 1e-9) for p in points]
            y = [p[1]["accuracy"] for p in points]
            err = np.array([[p[1]["accuracy"] - p[1]["interval"][0], p[1]["interval"][1] - p[1]["accuracy"]]
                            for p in points]).T
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=name)
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("accuracy")
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
