"""pass@k and majority@k: exact expected scores over random subsets of n samples.

Both estimators assume n samples were drawn per problem once (at the largest N)
and ask what a run with only k of them would have scored, averaged over every
subset of size k. Nothing here draws random numbers, so the numbers are
reproducible and free of subsampling noise.

    pass_at_k(n=16, c=2, k=4)                       # 1 - C(14,4)/C(16,4) = 0.45
    majority_at_k(["7", "7", "8", None], lambda a: a == "7", k=2)
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Callable, Sequence

import numpy as np
from scipy.signal import convolve2d
from scipy.special import gammaln


def _check_nk(name: str, n: int, k: int) -> None:
    """Reject sample counts for which the subset estimators are undefined."""
    if n < 1:
        raise ValueError(f"{name} needs at least one sample per problem, got n={n}")
    if k < 1:
        raise ValueError(f"{name} needs k >= 1, got k={k}")
    if k > n:
        raise ValueError(
            f"{name} needs at least {k} samples per problem, got n={n}: "
            f"the unbiased estimator is undefined for k > n"
        )


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k: the chance a random k-subset of n samples holds a correct one.

    Equals 1 - C(n-c, k) / C(n, k), computed as the product form of the Codex
    paper so that no binomial coefficient is ever formed (C(1000, 500) would
    overflow a float).

    Args:
        n: Samples drawn for the problem.
        c: How many of them are correct.
        k: Subset size.

    Returns:
        The expected pass@k in [0, 1]; exactly 1.0 when every k-subset must
        contain a correct sample (n - c < k).

    Raises:
        ValueError: If n < 1, c is outside [0, n], k < 1, or k > n.
    """
    _check_nk(f"pass@{k}", n, k)
    if not 0 <= c <= n:
        raise ValueError(f"pass@{k} needs 0 <= c <= n, got c={c}, n={n}")
    if n - c < k:
        return 1.0
    # C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k/i): each factor is in (0, 1].
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def mean_pass_at_k(counts: Sequence[tuple[int, int]], k: int) -> float:
    """Average pass@k over problems.

    Args:
        counts: One (n, c) pair per problem: samples drawn and samples correct.
        k: Subset size; must not exceed any problem's n.

    Returns:
        The mean of pass_at_k over problems.

    Raises:
        ValueError: If counts is empty or any pair is invalid for k.
    """
    if len(counts) == 0:
        raise ValueError("mean_pass_at_k needs at least one problem")
    return float(sum(pass_at_k(n, c, k) for n, c in counts) / len(counts))


def _binom_pmf(c: int, p: float) -> np.ndarray:
    """Binomial(c, p) probabilities for 0..c successes, shape (c + 1,)."""
    i = np.arange(c + 1)
    if p >= 1.0:
        return (i == c).astype(float)
    logp = gammaln(c + 1) - gammaln(i + 1) - gammaln(c - i + 1)
    return np.exp(logp + i * math.log(p) + (c - i) * math.log1p(-p))


def majority_at_k(
    answers: Sequence[str | None],
    is_correct: Callable[[str], bool],
    k: int,
) -> float:
    """Expected accuracy of a majority vote over a uniformly random k-subset.

    None answers (unfinished or unparseable samples) never win; a subset of only
    None answers votes wrong. Ties among the most common answers are broken
    uniformly at random, so a tie between a correct answer and m others counts
    1 / (m + 1). Several distinct answer strings may be correct.

    Args:
        answers: The final answer of each of the n samples, or None.
        is_correct: Grades one distinct answer string; called once per string.
        k: Subset size.

    Returns:
        The exact expectation over all C(n, k) subsets, in [0, 1].

    Raises:
        ValueError: If answers is empty, k < 1, or k > len(answers).
    """
    n = len(answers)
    _check_nk(f"majority@{k}", n, k)
    groups = Counter(a for a in answers if a is not None)
    n_none = n - sum(groups.values())
    names = list(groups)
    sizes = np.array([groups[a] for a in names], dtype=int)
    correct = [i for i, a in enumerate(names) if is_correct(a)]

    # Generating function in x (subset size) and y (groups tied with the winner):
    # the answer is the x^k coefficient of a product over groups, divided by
    # C(n, k). Counts reach C(256, 128) ~ 6e75, so each group's factor is scaled
    # to Binomial(c_h, p) probabilities with p = k/n; the x^k coefficient of the
    # whole product then carries Binomial(n, p).pmf(k) in place of C(n, k), and
    # every intermediate stays a probability.
    p = k / n
    pmfs = [_binom_pmf(int(c), p) for c in sizes]
    norm = _binom_pmf(n, p)[k]

    total = 0.0
    for g in correct:
        for j in range(1, min(int(sizes[g]), k) + 1):
            rows = k - j + 1  # only coefficients of x^0..x^(k-j) are ever needed
            # Groups smaller than j can neither beat nor tie g: they pool with the
            # None samples into one binomial factor over their combined size.
            others = [h for h in range(len(names)) if h != g]
            free = n_none + int(sum(sizes[h] for h in others if sizes[h] < j))
            rivals = [h for h in others if sizes[h] >= j]
            max_ties = min(len(rivals), (k - j) // j)  # each tie spends j slots
            dp = np.zeros((rows, max_ties + 1))  # (subset size, ties)
            pool = _binom_pmf(free, p)[:rows]
            dp[: len(pool), 0] = pool
            for h in rivals:
                below = pmfs[h][:j]  # the rival holds fewer than j: g still leads
                new = convolve2d(dp, below[:, None])[:rows]
                if rows > j and max_ties > 0:  # the rival holds exactly j: a tie
                    new[j:, 1:] += pmfs[h][j] * dp[: rows - j, :-1]
                dp = new
            share = dp[k - j] / np.arange(1, max_ties + 2)  # P(g wins a tie of t+1)
            total += pmfs[g][j] * float(share.sum())
    return float(min(max(total / norm, 0.0), 1.0))
