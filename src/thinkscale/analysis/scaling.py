"""The coverage law of Large Language Monkeys: coverage(k) ~ exp(a * k**b).

Fit it to a measured pass@k curve, extrapolate to budgets not sampled (say
k = 1024 from 64 samples), and put a bootstrap interval over problems on the
extrapolation so that a reader knows how far to trust it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit

_FLOOR = 1e-6  # log(0) is -inf: coverage below this is read as this


@dataclass(frozen=True)
class CoverageFit:
    """Parameters of coverage(k) = exp(a * k**b); usually a < 0 and b < 0."""

    a: float
    b: float

    def predict(self, k: float | np.ndarray) -> float | np.ndarray:
        """Predicted coverage at k, clipped to [0, 1].

        Args:
            k: A budget, or an array of budgets (k >= 1).

        Returns:
            A float for a scalar k, else an array shaped like k.
        """
        kk = np.asarray(k, dtype=float)
        # a > 0 can come out of a fit to a noisy curve; coverage above 1 means nothing.
        out = np.clip(np.exp(self.a * kk**self.b), 0.0, 1.0)
        return float(out) if out.ndim == 0 else out


def _log_log_guess(ks: np.ndarray, logcov: np.ndarray) -> tuple[float, float]:
    """Initial (a, b) from a line through log(-log coverage) against log k."""
    below = logcov < 0  # points at coverage 1 carry no slope information
    if below.sum() >= 2:
        b, log_neg_a = np.polyfit(np.log(ks[below]), np.log(-logcov[below]), 1)
        return -float(np.exp(log_neg_a)), float(b)
    if below.sum() == 1:
        b = -0.5  # a typical exponent; one point fixes only the scale
        return float(logcov[below][0] * ks[below][0] ** -b), b
    return 0.0, 0.0


def fit_coverage_law(
    ks: Sequence[int] | np.ndarray,
    coverage: Sequence[float] | np.ndarray,
    p0: tuple[float, float] | None = None,
) -> CoverageFit:
    """Least-squares fit of log(coverage) = a * k**b.

    Args:
        ks: Budgets at which coverage was measured, all >= 1.
        coverage: Fraction of problems solved at each k.
        p0: Starting (a, b); by default a line fitted in log(-log) space.

    Returns:
        The fit. A flat curve (all solved, none solved, or any constant) gives
        b = 0 and exp(a) equal to that constant, instead of an error.

    Raises:
        ValueError: If ks and coverage differ in length or are empty.
    """
    k = np.asarray(ks, dtype=float)
    y = np.log(np.clip(np.asarray(coverage, dtype=float), _FLOOR, 1.0))
    if k.shape != y.shape or k.size == 0:
        raise ValueError(f"ks and coverage must be equal, non-empty 1-D: {k.shape} vs {y.shape}")
    if np.ptp(y) < 1e-12:
        return CoverageFit(a=float(y.mean()), b=0.0)
    guess = p0 if p0 is not None else _log_log_guess(k, y)
    if guess[0] >= 0:  # outside the bounds below; start just inside them
        guess = (-1e-3, guess[1])
    try:
        with warnings.catch_warnings():
            # A covariance that cannot be estimated is no reason to fail the fit.
            warnings.simplefilter("ignore", OptimizeWarning)
            (a, b), _ = curve_fit(
                lambda kk, a, b: a * kk**b,
                k,
                y,
                p0=guess,
                bounds=([-np.inf, -np.inf], [0.0, np.inf]),  # exp(a k^b) <= 1
                maxfev=10_000,
            )
    except (RuntimeError, ValueError):
        a, b = guess  # the log-log line is a fair answer when least squares stalls
    return CoverageFit(a=float(a), b=float(b))


def fit_with_interval(
    per_problem: np.ndarray,
    ks: Sequence[int] | np.ndarray,
    at_k: int,
    n_boot: int = 200,
    seed: int = 0,
    level: float = 0.9,
) -> tuple[CoverageFit, float, tuple[float, float]]:
    """Fit the mean curve, extrapolate to at_k, and bootstrap over problems.

    Args:
        per_problem: Per-problem pass@k values, shape (problems, len(ks)).
        ks: The budgets of the columns.
        at_k: Budget to predict coverage at, e.g. 1024.
        n_boot: Bootstrap resamples of the problem set.
        seed: Seed of the numpy Generator that draws the resamples.
        level: Coverage of the percentile interval, in (0, 1).

    Returns:
        (fit, prediction, (low, high)). The interval is widened, if need be, to
        contain the prediction, which a percentile interval does not promise.

    Raises:
        ValueError: If per_problem is not (problems, len(ks)) or level is not in (0, 1).
    """
    values = np.asarray(per_problem, dtype=float)
    k = np.asarray(ks, dtype=float)
    if values.ndim != 2 or values.shape[1] != k.size or values.shape[0] == 0:
        raise ValueError(f"per_problem must be (problems, {k.size}), got {values.shape}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    fit = fit_coverage_law(k, values.mean(axis=0))
    prediction = float(fit.predict(at_k))

    rng = np.random.Generator(np.random.PCG64(seed))
    picks = rng.integers(0, values.shape[0], size=(n_boot, values.shape[0]))  # (boot, problems)
    start = (fit.a, fit.b) if fit.a < 0 else None  # warm start: resampled curves are close
    preds = np.array(
        [fit_coverage_law(k, values[idx].mean(axis=0), p0=start).predict(at_k) for idx in picks]
    )
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(preds, [tail, 1.0 - tail]) if n_boot > 0 else (prediction, prediction)
    return fit, prediction, (min(float(low), prediction), max(float(high), prediction))


@dataclass(frozen=True)
class BetaCoverage:
    """Coverage forecast from the distribution of per-problem single-attempt success (Schaeffer et al., 2025).

    Each problem's chance p of being solved in one attempt is taken to follow
    Beta(alpha, beta) over problems. A problem fails k attempts with
    probability (1 - p)^k, so coverage(k) = 1 - E[(1 - p)^k]
    = 1 - B(alpha, beta + k) / B(alpha, beta). The aggregate power law is what
    this looks like from afar; fitting the distribution uses every sample of
    every problem, not only the pooled curve.
    """

    alpha: float
    beta: float

    def predict(self, k: float | np.ndarray) -> float | np.ndarray:
        from scipy.special import betaln

        kk = np.asarray(k, dtype=float)
        out = 1.0 - np.exp(betaln(self.alpha, self.beta + kk) - betaln(self.alpha, self.beta))
        return float(out) if out.ndim == 0 else out


def fit_beta_coverage(correct: Sequence[int] | np.ndarray, samples: Sequence[int] | np.ndarray) -> BetaCoverage:
    """Maximum-likelihood Beta over per-problem success, from each problem's `correct` of `samples` attempts.

    The counts are beta-binomial under the model, so the fit weighs each
    problem by what its samples say (0 of 16 is not the same as 0 of 256).
    """
    from scipy.optimize import minimize
    from scipy.stats import betabinom

    c = np.asarray(correct, dtype=float)
    n = np.asarray(samples, dtype=float)
    if c.shape != n.shape or c.size == 0 or (c > n).any() or (c < 0).any():
        raise ValueError("correct and samples must be equal-length counts with 0 <= correct <= samples")

    def loss(log_params: np.ndarray) -> float:
        a, b = np.exp(log_params)
        return -float(betabinom.logpmf(c, n, a, b).sum())

    mean = float(np.clip(c.sum() / n.sum(), 1e-3, 1 - 1e-3))
    start = np.log([mean, 1 - mean])  # a weak prior-sized start: alpha + beta = 1
    best = minimize(loss, start, method="Nelder-Mead", options={"xatol": 1e-6, "fatol": 1e-9, "maxiter": 4000})
    a, b = np.exp(best.x)
    return BetaCoverage(alpha=float(a), beta=float(b))
