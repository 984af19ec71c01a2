"""Compute-optimal allocation: the probe picks the bin, the bin's strategy runs in the same budget, the table is learned."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

import pytest

from thinkscale.analysis.allocation import Outcome, learn_table, quantile_edges
from thinkscale.budget import Budget, BudgetExceeded
from thinkscale.runner import run
from thinkscale.strategies import get_strategy
from thinkscale.strategies.compute_optimal import bin_of, probe_confidence

BEAM = {"strategy": "beam_search", "settings": {"n": 4, "width": 2, "aggregation": "min", "choose": "weighted"}}
VOTE = {"strategy": "majority_vote", "settings": {"n": 8}}
PROBE_ONLY = {"strategy": "weighted_best_of_n", "settings": {"n": 4}}


@pytest.fixture(scope="module")
def prm():
    from thinkscale.scorers import get_scorer

    return get_scorer("prm", checkpoint_name="arithmetic-prm")


@pytest.fixture(scope="module")
def examples(arithmetic):
    return arithmetic.examples("test", 6)


def probe_nodes(trace, probe=4):
    return [n for n in trace.nodes if n.parent == 0][:probe]


def test_the_probe_picks_the_bins_strategy(examples, arithmetic, policy, prm):
    # edge 0: every confidence reaches it (bin 1, vote); edge 1: none does (bin 0, beam search)
    for edges, expected in (([0.0], "majority_vote"), ([1.0], "beam_search")):
        traces = run(examples[:3], arithmetic, get_strategy("compute_optimal", edges=edges, table=[BEAM, VOTE]),
                     policy, Budget(), scorer=prm, seed=1)
        for t in traces:
            assert t.settings["chosen"]["strategy"] == expected
            deepest = max(len(t.path(n.id)) for n in t.nodes[1:])
            assert (deepest > 1) == (expected == "beam_search")  # beam search grows steps; voting whole samples
    traces = run(examples, arithmetic, get_strategy("compute_optimal", edges=[0.7], table=[BEAM, VOTE]), policy,
                 Budget(), scorer=prm, seed=1)
    for t in traces:  # the recorded bin is the one the probe's own samples give
        probe = probe_nodes(t)
        _, _, confidence = probe_confidence([n.answer if n.finished else None for n in probe],
                                            [n.scores.get(prm.name, 0.0) for n in probe])
        chosen = t.settings["chosen"]
        assert chosen["confidence"] == pytest.approx(confidence)
        assert chosen["bin"] == bin_of(confidence, [0.7])
        assert chosen["strategy"] == ("beam_search", "majority_vote")[chosen["bin"]]
    assert {t.settings["chosen"]["bin"] for t in traces} == {0, 1}, "the draw should reach both bins"


def test_the_probe_is_paid_for_and_reused_as_the_first_wave(examples, arithmetic, policy, prm):
    (alone,) = run(examples[:1], arithmetic, get_strategy("compute_optimal", edges=[], table=[PROBE_ONLY]), policy,
                   Budget(), scorer=prm, seed=2)
    probe = probe_nodes(alone)
    assert alone.usage.samples == 4 and alone.usage.scorer_calls == 1 and alone.usage.flops > 0
    assert alone.usage.generated_tokens == sum(n.num_tokens for n in probe) > 0
    (more,) = run(examples[:1], arithmetic, get_strategy("compute_optimal", edges=[], table=[
        {"strategy": "weighted_best_of_n", "settings": {"n": 12}}]), policy, Budget(), scorer=prm, seed=2)
    assert more.usage.samples == 12  # the probe's 4 and 8 more, not 4 + 12
    assert [n.text for n in probe_nodes(more)] == [n.text for n in probe]  # the same probe, same seed
    assert more.chosen_node in {n.id for n in more.terminals()}
    (beam,) = run(examples[:1], arithmetic, get_strategy("compute_optimal", edges=[], table=[BEAM]), policy,
                  Budget(), scorer=prm, seed=2)
    assert beam.usage.samples > 4 and beam.usage.scorer_calls > 1
    # every generated token is a node of the trace: the probe's and the beam's, in one Usage
    assert beam.usage.generated_tokens == sum(n.num_tokens for n in beam.nodes[1:])
    assert all(n.parent == 0 and n.terminal for n in probe_nodes(beam))
    again = run(examples[:1], arithmetic, get_strategy("compute_optimal", edges=[], table=[BEAM]), policy,
                Budget(), scorer=prm, seed=2)
    assert again[0].to_dict()["nodes"] == beam.to_dict()["nodes"]  # same seed, same trace


def test_a_probe_larger_than_the_budget_is_refused(examples, arithmetic, policy, prm):
    strategy = get_strategy("compute_optimal", table=[PROBE_ONLY] * 3)
    with pytest.raises(BudgetExceeded, match=r"probe draws 4 samples, more than the budget's max_samples 2; "
                                             r"the smallest budget that works is max_samples 4, or set probe to "
                                             r"at most 2"):
        asyncio.run(strategy.solve(examples[0].problem, arithmetic, policy, prm, Budget(max_samples=2), 0))


def test_bad_tables_are_refused_by_name():
    with pytest.raises(ValueError, match="2 edges make 3 bins, and the table has 2"):
        get_strategy("compute_optimal", edges=[0.3, 0.6], table=[BEAM, VOTE])
    with pytest.raises(ValueError, match=r"table\[1\] \(beam_search\): n \(6\) must be a positive multiple"):
        get_strategy("compute_optimal", edges=[0.5], table=[VOTE, {"strategy": "beam_search",
                                                                   "settings": {"n": 6, "width": 4}}])
    with pytest.raises(ValueError, match=r"unknown strategy 'beam'.*Did you mean 'beam_search'"):
        get_strategy("compute_optimal", edges=[], table=[{"strategy": "beam"}])
    with pytest.raises(ValueError, match="cannot run itself"):
        get_strategy("compute_optimal", edges=[], table=[{"strategy": "compute_optimal"}])
    with pytest.raises(ValueError, match="edges must be ascending"):
        get_strategy("compute_optimal", edges=[0.8, 0.2], table=[VOTE] * 3)


def test_the_learner_picks_the_cheaper_strategy_when_accuracies_tie():
    bins = [0, 0, 1, 1]
    outcomes = {
        "cheap": Outcome(correct=[True, False, True, True], cost=[10, 10, 10, 10]),
        "dear": Outcome(correct=[True, False, True, True], cost=[50, 50, 50, 50]),  # no better anywhere
        "hard-fixer": Outcome(correct=[True, True, False, True], cost=[40, 40, 40, 40]),
    }
    table = learn_table(bins, 2, outcomes, budget=100)
    assert table.labels == ["hard-fixer", "cheap"]  # bin 0 gains from it; bin 1 ties, so the cheaper
    assert table.accuracy == 1.0 and table.cost == 25 and table.shares == [0.5, 0.5]
    assert learn_table(bins, 2, outcomes, budget=20).labels == ["cheap", "cheap"]  # the budget binds
    assert learn_table(bins, 3, outcomes, budget=100).labels[2] == "cheap"  # an empty bin: the cheapest
    with pytest.raises(ValueError, match="below the cheapest table, which costs 10.0"):
        learn_table(bins, 2, outcomes, budget=5)
    assert quantile_edges([0.1, 0.2, 0.3, 0.9], 2) == [0.3]
    assert quantile_edges([0.5] * 6, 4) == []  # nothing to cut: one bin


BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "compute_optimal.py"


def test_the_benchmark_headline_and_its_bad_input():
    args = ["--problems", "4", "--dev-problems", "6", "--budgets", "4,8", "--max-n", "8", "--pool", "8",
            "--bins", "2"]
    result = subprocess.run([sys.executable, str(BENCHMARK), *args], check=False, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert re.fullmatch(r"efficiency: (>|<=)?\d+\.\dx at k=(4|8)", lines[-1]), lines[-1]
    assert any(line.startswith("compute_optimal@8") for line in lines)
    refused = subprocess.run([sys.executable, str(BENCHMARK), "--probe", "8", "--budgets", "4,16"],
                             check=False, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2
    assert "the probe (8 samples) is larger than the budget of 4 samples' worth" in refused.stderr
    assert "use --probe 4 or less, or budgets of at least 8" in refused.stderr


def test_a_listener_hears_the_bins_strategy_through_the_outer_trace(examples, arithmetic, policy, prm):
    from thinkscale.strategies.base import SEARCH_EVENTS

    for table in ([BEAM], [VOTE]):
        heard: list[tuple[str, int, int]] = []
        token = SEARCH_EVENTS.set(lambda event, trace, nodes, heard=heard: heard.extend(
            (event, id(trace), n.id) for n in nodes))
        try:
            trace = asyncio.run(get_strategy("compute_optimal", edges=[], table=table).solve(
                examples[3].problem, arithmetic, policy, prm, Budget(), 5))
        finally:
            SEARCH_EVENTS.reset(token)
        assert {t for _, t, _ in heard} == {id(trace)}  # never the inner search's own trace
        assert {i for e, _, i in heard if e == "generated"} == {n.id for n in trace.nodes[1:]}
        assert {i for e, _, i in heard if e == "scored"} == {n.id for n in trace.nodes if prm.name in n.scores}
        chosen = [i for e, _, i in heard if e == "chosen"]
        assert trace.chosen_answer is not None and len(chosen) == 1
        assert trace.chosen_node is None or chosen == [trace.chosen_node]
