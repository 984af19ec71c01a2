"""The coverage report: pass@k and majority@k by difficulty, and the coverage law.

Reads graded Traces only; it never needs to know which strategy made them.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from thinkscale.analysis.passk import majority_at_k, pass_at_k
from thinkscale.analysis.scaling import fit_beta_coverage, fit_with_interval
from thinkscale.trace import Trace


def powers_of_two(n: int) -> list[int]:
    """1, 2, 4, ... up to n (and n itself if it is not a power of two)."""
    ks = [1 << i for i in range(n.bit_length()) if 1 << i <= n]
    return ks if ks[-1] == n else ks + [n]


@dataclass(frozen=True)
class _Graded:
    """What the report keeps of one trace: enough for pass@k and majority@k, no text."""

    difficulty: str
    n: int
    correct: int
    votes: tuple[tuple[str | None, int, bool], ...]  # (answer, count, correct); None = no answer
    chose: bool  # the strategy chose an answer
    chosen_correct: bool


def _compact(trace: Trace) -> _Graded:
    terminals = list(trace.terminals())
    votes: dict[str | None, list] = {}
    for t in terminals:
        answer = t.answer if t.finished else None
        entry = votes.setdefault(answer, [0, False])
        entry[0] += 1
        entry[1] = entry[1] or (bool(t.correct) and answer is not None)
    return _Graded(str(trace.difficulty), len(terminals), sum(bool(t.correct) for t in terminals),
                   tuple((a, c, ok) for a, (c, ok) in votes.items()),
                   trace.chosen_answer is not None, bool(trace.correct))


def _pool(a: _Graded, b: _Graded) -> _Graded:
    """The samples of two traces of one problem (two seeds) as one problem's samples.

    Pooling keeps problems, not traces, as the unit that the bootstrap
    resamples, so more seeds never narrow the intervals by counting a problem twice.
    """
    votes: dict[str | None, list] = {}
    for answer, count, ok in a.votes + b.votes:
        entry = votes.setdefault(answer, [0, False])
        entry[0] += count
        entry[1] = entry[1] or ok
    return _Graded(a.difficulty, a.n + b.n, a.correct + b.correct,
                   tuple((ans, c, ok) for ans, (c, ok) in votes.items()), a.chose or b.chose,
                   a.chosen_correct and b.chosen_correct)


def _rows(g: _Graded, ks: list[int], votable: bool) -> tuple[list[float], list[float] | None]:
    coverage = [pass_at_k(g.n, g.correct, k) for k in ks]
    if not votable:
        return coverage, None
    answers = [a for a, count, _ in g.votes for _ in range(count)]
    right = {a for a, _, ok in g.votes if ok}
    return coverage, [majority_at_k(answers, right.__contains__, k) for k in ks]


def summarize(traces: Iterable[Trace], votable: bool, extrapolate_to: int = 1024) -> dict:
    """Mean pass@k / majority@k per difficulty and overall, with the coverage-law fit.

    Streams: each trace is reduced to a few counts as it is read, so memory
    grows with the number of problems, not of samples. Traces of one problem
    (several seeds) are pooled into one problem. k runs over powers of two up
    to the smallest number of samples any problem has.
    """
    graded, chosen = [], []
    by_problem: dict[str, int] = {}
    for trace in traces:
        g = _compact(trace)
        chosen.append((g.chose, g.chosen_correct))
        if trace.problem_id in by_problem:  # another seed of the same problem: pool its samples
            i = by_problem[trace.problem_id]
            graded[i] = _pool(graded[i], g)
        else:
            by_problem[trace.problem_id] = len(graded)
            graded.append(g)
    if not graded:
        raise ValueError("no traces to report on")
    samples = min(g.n for g in graded)
    if samples < 1:
        raise ValueError("a trace has no samples; pass@k needs at least one")
    ks = powers_of_two(samples)
    by_difficulty: dict[str, list] = defaultdict(list)
    for g in graded:
        row = _rows(g, ks, votable)
        by_difficulty[g.difficulty].append(row)
        by_difficulty["all"].append(row)
    groups = sorted((d for d in by_difficulty if d != "all"), key=lambda d: (len(d), d)) + ["all"]
    summary: dict = {"ks": ks, "samples": samples, "groups": {}}
    for d in groups:
        rows = by_difficulty[d]
        coverage = np.array([r[0] for r in rows])  # (problems, len(ks))
        entry = {"problems": len(rows), "pass_at_k": coverage.mean(0).round(4).tolist()}
        if votable:
            entry["majority_at_k"] = np.array([r[1] for r in rows]).mean(0).round(4).tolist()
        summary["groups"][d] = entry
    if any(chose for chose, _ in chosen):  # a strategy that answers: no answer counts as wrong
        summary["accuracy_of_chosen_answer"] = round(sum(ok for _, ok in chosen) / len(chosen), 4)
    overall = np.array([r[0] for r in by_difficulty["all"]])
    fit, predicted, (low, high) = fit_with_interval(overall, ks, at_k=extrapolate_to)
    summary["coverage_law"] = {"a": fit.a, "b": fit.b, "at_k": extrapolate_to, "predicted": predicted,
                               "interval_90": [low, high]}
    beta = fit_beta_coverage([g.correct for g in graded], [g.n for g in graded])
    summary["beta_forecast"] = {"alpha": beta.alpha, "beta": beta.beta, "at_k": extrapolate_to,
                                "predicted": float(beta.predict(extrapolate_to))}
    return summary


def format_table(summary: dict, title: str) -> str:
    ks = summary["ks"]
    head = f"{'difficulty':>10} {'problems':>8} {'metric':>10} " + " ".join(f"{'k=' + str(k):>6}" for k in ks)
    lines = [title, head, "-" * len(head)]
    for d, entry in summary["groups"].items():
        metrics = [("pass@k", entry["pass_at_k"])]
        if "majority_at_k" in entry:
            metrics.append(("majority@k", entry["majority_at_k"]))
        for i, (name, values) in enumerate(metrics):
            label = (d, str(entry["problems"])) if i == 0 else ("", "")
            lines.append(f"{label[0]:>10} {label[1]:>8} {name:>10} " + " ".join(f"{v:6.3f}" for v in values))
    law = summary["coverage_law"]
    lines.append("")
    if "accuracy_of_chosen_answer" in summary:
        lines.append(f"accuracy of the strategy's chosen answer: {summary['accuracy_of_chosen_answer']:.3f}")
    lines.append(f"coverage law (all problems): coverage ~ exp({law['a']:.3f} * k^{law['b']:.3f}); "
                 f"predicted coverage at k={law['at_k']}: {law['predicted']:.3f} "
                 f"(90% bootstrap interval over problems {law['interval_90'][0]:.3f}-{law['interval_90'][1]:.3f})")
    if "beta_forecast" in summary:
        beta = summary["beta_forecast"]
        lines.append(f"distributional forecast (per-problem success ~ Beta({beta['alpha']:.3f}, {beta['beta']:.3f})): "
                     f"predicted coverage at k={beta['at_k']}: {beta['predicted']:.3f}")
    return "\n".join(lines)


def plot_summary(summary: dict, path: Path, title: str) -> Path:
    from thinkscale.analysis.plot import plot_curves
    from thinkscale.analysis.scaling import CoverageFit

    curves = {}
    for d, entry in summary["groups"].items():
        name = "all" if d == "all" else f"difficulty {d}"
        curves[f"pass@k {name}"] = entry["pass_at_k"]
        if d == "all" and "majority_at_k" in entry:
            curves["majority@k all"] = entry["majority_at_k"]
    law = summary["coverage_law"]
    fits = {"coverage law (all)": CoverageFit(law["a"], law["b"])}
    return plot_curves(path, summary["ks"], curves, fits=fits, extrapolate_to=law["at_k"], title=title)
