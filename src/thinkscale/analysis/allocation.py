"""Learning a compute-optimal table: which strategy and budget each difficulty bin gets, for an average budget.

The strategy (strategies/compute_optimal.py) bins a problem by its probe's
confidence and runs that bin's table entry. Here the table is learned from
dev problems: each was probed (its confidence) and solved by every candidate
(whether it was right, and what it cost with the probe included). Bins are
cut at quantiles of the dev confidences; then for an average budget the
learner picks one candidate per bin to maximise dev accuracy with the mean
cost over all dev problems at most the budget (a knapsack over bins, solved
exactly on its Pareto front). Among equally accurate tables the cheapest
wins, so a bin whose candidates tie gets the cheapest.

    edges = quantile_edges(confidences, bins=4)
    table = learn_table([bin_of(c, edges) for c in confidences], len(edges) + 1, outcomes, budget=600.0)
    table.labels  # one candidate label per bin, least confident first
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Outcome:
    """One candidate on the dev problems: per problem, right or not and the cost (probe included)."""

    correct: list[bool]
    cost: list[float]


@dataclass(frozen=True)
class LearnedTable:
    labels: list[str]  # the chosen candidate per bin
    accuracy: float  # dev accuracy of the table
    cost: float  # its mean cost per dev problem
    shares: list[float]  # the share of dev problems in each bin


def quantile_edges(confidences: list[float], bins: int) -> list[float]:
    """Edges that cut the confidences into `bins` bins of about equal counts (fewer where values repeat)."""
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    values = np.asarray(confidences, dtype=float)
    edges = sorted({round(float(np.quantile(values, i / bins, method="higher")), 6) for i in range(1, bins)})
    return [e for e in edges if e > values.min()]  # an edge at the minimum would leave the first bin empty


def learn_table(bins: list[int], n_bins: int, outcomes: dict[str, Outcome], budget: float) -> LearnedTable:
    """The most accurate choice of one candidate per bin whose mean cost is at most `budget`.

    `bins[i]` is dev problem i's bin; `outcomes` maps each candidate label to
    its per-problem results. Ties in accuracy go to the cheaper table; a bin
    with no dev problems gets the candidate cheapest over all of them. Refuses
    a budget below the cheapest table, saying what it costs.
    """
    n = len(bins)
    if not n or not outcomes:
        raise ValueError("learning a table needs dev problems and at least one candidate")
    for label, o in outcomes.items():
        if len(o.correct) != n or len(o.cost) != n:
            raise ValueError(f"candidate {label!r} has {len(o.correct)} results for {n} dev problems")
    # Cheapest first: among tables of equal cost and accuracy the one built of cheaper candidates is kept.
    labels = sorted(outcomes, key=lambda label: (float(np.mean(outcomes[label].cost)), label))
    front: list[tuple[float, int, tuple[str, ...]]] = [(0.0, 0, ())]  # (total cost, right answers, choice)
    for b in range(n_bins):
        members = [i for i in range(n) if bins[i] == b]
        options = [(sum(outcomes[label].cost[i] for i in members), sum(bool(outcomes[label].correct[i])
                                                                        for i in members), label) for label in labels]
        grown = [(cost + c, right + r, choice + (label,)) for cost, right, choice in front for c, r, label in options]
        front = _pareto(grown)
    fits = [state for state in front if state[0] <= budget * n + 1e-9]
    if not fits:
        raise ValueError(f"the budget of {budget:.1f} a problem is below the cheapest table, which costs "
                         f"{front[0][0] / n:.1f} a problem on the dev problems (the probe alone is most of that); "
                         f"raise the budget or use a smaller probe")
    cost, right, choice = max(fits, key=lambda s: (s[1], -s[0]))
    shares = [sum(b == k for b in bins) / n for k in range(n_bins)]
    return LearnedTable(labels=list(choice), accuracy=right / n, cost=cost / n, shares=shares)


def _pareto(states: list[tuple[float, int, tuple[str, ...]]]) -> list[tuple[float, int, tuple[str, ...]]]:
    """The states no cheaper-or-equal state beats in right answers, cheapest first (stable among equals)."""
    front: list[tuple[float, int, tuple[str, ...]]] = []
    for state in sorted(states, key=lambda s: (s[0], -s[1])):  # sorted() is stable: equal states keep their order
        if not front or state[1] > front[-1][1]:
            front.append(state)
    return front


__all__ = ["LearnedTable", "Outcome", "learn_table", "quantile_edges"]
