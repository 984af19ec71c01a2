"""Tests for thinkscale.analysis: estimators against brute force, fits, plots."""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter
from fractions import Fraction

import numpy as np
import pytest

from thinkscale.analysis import (
    CoverageFit,
    fit_coverage_law,
    fit_with_interval,
    majority_at_k,
    mean_pass_at_k,
    pass_at_k,
    plot_curves,
)


def brute_pass_at_k(n: int, c: int, k: int) -> float:
    samples = [1] * c + [0] * (n - c)
    subsets = list(itertools.combinations(samples, k))
    return sum(any(s) for s in subsets) / len(subsets)


def brute_majority_at_k(answers: list[str | None], correct: set[str], k: int) -> float:
    total = 0.0
    subsets = list(itertools.combinations(answers, k))
    for subset in subsets:
        votes = Counter(a for a in subset if a is not None)
        if not votes:
            continue  # only None answers: the vote is wrong
        top = max(votes.values())
        winners = [a for a, v in votes.items() if v == top]
        total += sum(a in correct for a in winners) / len(winners)
    return total / len(subsets)


def test_pass_at_k_matches_brute_force():
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(n, c, k), abs=1e-12)


def test_pass_at_k_exact_at_k_equals_n():
    assert pass_at_k(16, 0, 16) == 0.0
    assert pass_at_k(16, 1, 16) == 1.0
    assert pass_at_k(16, 16, 16) == 1.0


def test_pass_at_k_rejects_k_above_n():
    with pytest.raises(ValueError, match=r"n=16"):
        pass_at_k(16, 3, 64)


@pytest.mark.parametrize("n, c", [(4, -1), (4, 5)])
def test_pass_at_k_rejects_bad_c(n, c):
    with pytest.raises(ValueError):
        pass_at_k(n, c, 1)


def test_pass_at_k_stable_for_large_n():
    exact = 1 - Fraction(math.comb(997, 500), math.comb(1000, 500))
    assert pass_at_k(1000, 3, 500) == pytest.approx(float(exact), abs=1e-12)


def test_mean_pass_at_k_averages_problems():
    counts = [(8, 0), (8, 8), (8, 2)]
    expected = (0.0 + 1.0 + pass_at_k(8, 2, 3)) / 3
    assert mean_pass_at_k(counts, 3) == pytest.approx(expected)


def test_majority_at_k_matches_brute_force():
    rng = random.Random(0)
    for trial in range(40):
        n = rng.randint(1, 9)
        pool = ["a", "b", "c", "d", None]
        answers = [rng.choice(pool) for _ in range(n)]
        # Sometimes two distinct strings are both correct (e.g. "0.5" and "1/2").
        correct = {"a", "b"} if trial % 2 else {"a"}
        for k in range(1, n + 1):
            got = majority_at_k(answers, lambda s: s in correct, k)
            assert got == pytest.approx(brute_majority_at_k(answers, correct, k), abs=1e-12), (
                answers,
                correct,
                k,
            )


def test_majority_at_k_tie_counts_fraction():
    # One correct and two wrong answers, one sample each: a three-way tie at k=3.
    assert majority_at_k(["a", "b", "c"], lambda s: s == "a", 3) == pytest.approx(1 / 3)
    assert majority_at_k([None, None], lambda s: True, 2) == 0.0


def test_majority_at_k_at_one_is_fraction_correct():
    answers = ["1", "2", "1", None, "3", "1", "2", None]
    assert majority_at_k(answers, lambda s: s == "1", 1) == pytest.approx(3 / 8)


def test_majority_at_k_rejects_k_above_n():
    with pytest.raises(ValueError, match=r"n=3"):
        majority_at_k(["a", "b", "c"], lambda s: True, 4)


def test_majority_at_k_at_full_n_is_the_plain_vote_and_large_n_is_bounded():
    rng = random.Random(1)
    answers = [str(rng.randrange(30)) for _ in range(64)]
    right = {"0", "1", "2"}
    counts = Counter(answers)
    top = max(counts.values())
    leaders = [a for a, c in counts.items() if c == top]
    expected = sum(a in right for a in leaders) / len(leaders)  # ties broken uniformly
    assert majority_at_k(answers, right.__contains__, 64) == pytest.approx(expected, abs=1e-12)
    # Large n: C(256, 128) ~ 6e75 must not overflow anything.
    big = [str(rng.randrange(40)) if rng.random() < 0.9 else None for _ in range(256)]
    assert 0.0 <= majority_at_k(big, lambda s: s == "0", 128) <= 1.0


def test_fit_coverage_law_recovers_parameters():
    ks = 2.0 ** np.arange(0, 9)
    fit = fit_coverage_law(ks, np.exp(-1.5 * ks**-0.4))
    assert fit.a == pytest.approx(-1.5, abs=1e-3)
    assert fit.b == pytest.approx(-0.4, abs=1e-3)
    assert isinstance(fit.predict(4), float)
    assert fit.predict(ks).shape == ks.shape


@pytest.mark.parametrize("value", [0.0, 1.0, 0.3])
def test_fit_coverage_law_flat_curves(value):
    ks = [1, 2, 4, 8]
    fit = fit_coverage_law(ks, [value] * 4)
    assert np.all(np.isfinite([fit.a, fit.b]))
    assert fit.predict(1024) == pytest.approx(max(value, 1e-6), rel=1e-6)


def test_fit_with_interval_brackets_prediction():
    rng = np.random.default_rng(0)
    ks = np.array([1, 2, 4, 8, 16, 32])
    rates = rng.beta(0.5, 2.0, size=40)  # per-problem chance that one sample is right
    per_problem = 1.0 - (1.0 - rates[:, None]) ** ks[None, :]  # (problems, ks)
    fit, pred, (low, high) = fit_with_interval(per_problem, ks, at_k=1024, n_boot=40)
    assert isinstance(fit, CoverageFit)
    assert 0.0 <= low <= pred <= high <= 1.0
    assert pred >= per_problem.mean(axis=0)[-1] - 1e-6  # extrapolating up a rising curve


def test_plot_curves_writes_png(tmp_path):
    ks = [1, 2, 4, 8]
    out = plot_curves(
        tmp_path / "sub" / "cov.png",
        ks,
        {"pass@k": [0.2, 0.35, 0.5, 0.6], "majority@k": [0.2, 0.25, 0.3, 0.32]},
        fits={"pass@k": CoverageFit(a=-1.6, b=-0.4)},
        extrapolate_to=1024,
        title="test",
    )
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 1000


def test_report_pools_the_seeds_of_a_problem_into_one_problem():
    from thinkscale.analysis.report import summarize
    from thinkscale.trace import Trace

    def trace(problem: str, answers: list[str | None], right: str) -> Trace:
        t = Trace(problem_id=problem, strategy="repeated_sampling", settings={}, seed=0, difficulty=1)
        root = t.add(None, "q")
        for a in answers:
            t.add(root.id, "x", terminal=True, finish_reason="stop" if a else "length", answer=a, correct=a == right)
        return t

    traces = [trace("p1", ["1", "2"], "1"), trace("p1", ["2", "2"], "1"), trace("p2", ["3", None], "3")]
    summary = summarize(traces, votable=True)
    assert summary["groups"]["all"]["problems"] == 2  # two problems, not three traces
    assert summary["samples"] == 2 and summary["ks"] == [1, 2]
    # p1 pooled: 4 samples, 1 right -> pass@1 0.25; p2: 1 of 2 -> 0.5
    assert summary["groups"]["all"]["pass_at_k"][0] == pytest.approx((0.25 + 0.5) / 2)
    assert 0 < summary["beta_forecast"]["predicted"] <= 1  # fitted on the pooled counts: 1 of 4, 1 of 2


def test_beta_forecast_recovers_the_distribution_and_forecasts_from_few_samples():
    from thinkscale.analysis.scaling import BetaCoverage, fit_beta_coverage

    rng = np.random.default_rng(0)
    p = rng.beta(0.4, 1.2, size=2000)  # each problem's single-attempt success
    fit = fit_beta_coverage(rng.binomial(16, p), [16] * p.size)  # 16 samples a problem seen
    assert fit.alpha == pytest.approx(0.4, rel=0.15) and fit.beta == pytest.approx(1.2, rel=0.15)
    truth = float(np.mean(1 - (1 - p) ** 256))
    assert fit.predict(256) == pytest.approx(truth, abs=0.02)
    exact = BetaCoverage(1.0, 1.0)  # uniform p: coverage(k) = 1 - 1 / (k + 1)
    assert exact.predict(1) == pytest.approx(0.5) and exact.predict(np.array([3, 9])) == pytest.approx([0.75, 0.9])
    with pytest.raises(ValueError, match="0 <= correct <= samples"):
        fit_beta_coverage([3], [2])


def _trace(pid: str, correct: bool, tokens: int, difficulty: int = 2, seed: int = 0):
    from thinkscale.budget import Usage
    from thinkscale.trace import Trace

    return Trace(problem_id=pid, strategy="s", settings={}, seed=seed, correct=correct, difficulty=difficulty,
                 usage=Usage(generated_tokens=tokens, flops=10.0 * tokens))


def test_compare_pairs_problems_pools_seeds_and_bounds_accuracy():
    from thinkscale.analysis.compare import compare, format_comparison, series_of

    a = [_trace(f"p{i}", i % 2 == 0, 100) for i in range(40)]
    b = [_trace(f"p{i}", True, 400, seed=s) for i in range(40) for s in (0, 1)]
    b[1].correct = False  # problem p0: one seed of two right -> 0.5
    result = compare({"a@4": a, "b@16": b}, resamples=500, seed=3)
    ra, rb = result["strategies"]["a@4"], result["strategies"]["b@16"]
    assert ra["accuracy"] == 0.5 and rb["accuracy"] == round(39.5 / 40, 4)
    assert ra["interval"][0] < 0.5 < ra["interval"][1]
    assert rb["interval"][1] <= 1.0
    assert ra["generated_tokens"] == 100 and rb["generated_tokens"] == 400 and rb["flops"] == 4000
    assert result["problems"] == 40  # seeds pooled: problems, not traces, are the unit
    assert compare({"a@4": a, "b@16": b}, resamples=500, seed=3) == result
    table = format_comparison(result, "t")
    assert table.index("a@4") < table.index("b@16")  # sorted by what was spent
    assert series_of("beam-prm@64") == "beam-prm" and series_of("vote") == "vote"
    with pytest.raises(ValueError, match="'a@4' has 39 of the 40 problems"):
        compare({"a@4": a[:-1], "b@16": b})
