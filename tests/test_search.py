"""Step-level search: beam search, DVTS, MCTS and particle filtering on the tiny core, under budgets."""

from __future__ import annotations

import asyncio
import json

import pytest

from thinkscale.budget import Budget, BudgetExceeded
from thinkscale.runner import run
from thinkscale.strategies import get_strategy

SEARCHES = [
    ("beam_search", {"n": 8, "width": 2}),
    ("beam_search", {"n": 8, "width": 4, "lookahead": 1, "choose": "weighted"}),
    ("dvts", {"n": 8, "width": 2}),
    ("mcts", {"iterations": 8, "expansion_width": 3}),
    ("mcts", {"iterations": 4, "expansion_width": 2, "rollouts": 2, "aggregation": "min"}),
    ("particle_filtering", {"n": 8}),
]
ALL = SEARCHES + [("best_of_n", {"n": 8}), ("weighted_best_of_n", {"n": 8}), ("majority_vote", {"n": 8})]


@pytest.fixture(scope="module")
def examples(arithmetic):
    return arithmetic.examples("test", 6, seed=1)


def _solve(name, settings, examples, task, policy, scorer, budget=Budget(), seed=0):
    strategy = get_strategy(name, **settings)
    return run(examples, task, strategy, policy, budget, scorer=None if name == "majority_vote" else scorer, seed=seed)


def _without_time(trace) -> dict:
    data = trace.to_dict()
    data["usage"].pop("wall_s")
    return data


@pytest.mark.parametrize("name,settings", SEARCHES, ids=lambda x: x if isinstance(x, str) else json.dumps(x))
def test_search_grows_a_tree_and_chooses_a_finished_solution(name, settings, examples, arithmetic, policy, confidence):
    traces = _solve(name, settings, examples, arithmetic, policy, confidence)
    assert any(t.correct for t in traces)  # it solves some of them
    for t, ex in zip(traces, examples):
        assert t.root.text == ex.problem.prompt and t.strategy == name
        assert max(len(t.path(n.id)) for n in t.nodes) > 1  # deeper than one level: steps, not whole samples
        for node in t.nodes[1:]:
            if not node.terminal:
                assert "confidence" in node.scores  # every open path was scored
        if t.chosen_node is not None:
            chosen = t.nodes[t.chosen_node]
            assert chosen.terminal and chosen.finished
            solution = t.solution(chosen.id)
            assert chosen.answer == arithmetic.extract_answer(solution) == t.chosen_answer
            assert t.correct == arithmetic.verify(ex, solution).correct
        for node in t.terminals():
            if not node.finished:
                assert node.answer is None and node.correct is False  # truncated never counts
        assert t.usage.generated_tokens == sum(n.num_tokens for n in t.nodes[1:]) or "lookahead" in settings
        assert t.usage.scorer_calls > 0 and t.usage.scored_tokens > 0  # each search reads its own paths


@pytest.mark.parametrize("name,settings", SEARCHES[:1] + SEARCHES[2:4] + SEARCHES[5:],
                         ids=lambda x: x if isinstance(x, str) else json.dumps(x))
def test_same_seed_same_trace(name, settings, examples, arithmetic, policy, confidence):
    a = _solve(name, settings, examples[:3], arithmetic, policy, confidence, seed=4)
    b = _solve(name, settings, examples[:3], arithmetic, policy, confidence, seed=4)
    assert [_without_time(t) for t in a] == [_without_time(t) for t in b]
    c = _solve(name, settings, examples[:3], arithmetic, policy, confidence, seed=5)
    assert [_without_time(t)["nodes"] for t in a] != [_without_time(t)["nodes"] for t in c]


def test_beam_search_keeps_width_paths_and_dvts_keeps_one_per_subtree(examples, arithmetic, policy, confidence):
    (beam,) = _solve("beam_search", {"n": 8, "width": 2}, examples[:1], arithmetic, policy, confidence)
    (dvts,) = _solve("dvts", {"n": 8, "width": 2}, examples[:1], arithmetic, policy, confidence)
    for trace, first_calls in ((beam, 1), (dvts, 4)):
        depth = {0: 0}
        for n in trace.nodes[1:]:
            depth[n.id] = depth[n.parent] + 1
        first = [n for n in trace.nodes if depth[n.id] == 1]
        assert len(first) <= 8
        parents_at = {}
        for n in trace.nodes[1:]:
            if depth[n.id] >= 2:
                parents_at.setdefault(depth[n.id], set()).add(n.parent)
        kept = 2 if trace is beam else 4  # beam: width paths; DVTS: one per subtree, n / width subtrees
        assert parents_at and all(len(p) <= kept for p in parents_at.values())
        for parents in parents_at.values():  # each kept path grows n / kept children
            for p in parents:
                kids = [n for n in trace.nodes if n.parent == p]
                assert len(kids) <= 8 // kept


@pytest.mark.parametrize("name,settings", ALL, ids=lambda x: x if isinstance(x, str) else json.dumps(x))
@pytest.mark.parametrize("budget", [Budget(max_generated_tokens=60), Budget(max_generated_tokens=200),
                                    Budget(max_samples=10), Budget(max_policy_calls=3)],
                         ids=["60tok", "200tok", "10samples", "3calls"])
def test_no_strategy_ever_exceeds_its_budget(name, settings, budget, examples, arithmetic, policy, confidence):
    try:
        traces = _solve(name, settings, examples[:3], arithmetic, policy, confidence, budget=budget)
    except BudgetExceeded as e:
        assert "smallest budget that works" in str(e) or "spent" in str(e) or "no room" in str(e)
        return
    for t in traces:
        assert budget.exceeded_by(t.usage) == [], (name, t.usage)


@pytest.mark.parametrize("name", ["beam_search", "dvts", "mcts"])
def test_a_budget_too_small_for_one_step_is_refused_with_the_smallest_that_works(name, examples, arithmetic,
                                                                                 policy, confidence):
    settings = {"n": 8, "width": 2} if name != "mcts" else {"expansion_width": 4}
    with pytest.raises(BudgetExceeded, match=r"smallest budget that works is \d+ generated tokens"):
        _solve(name, settings, examples[:1], arithmetic, policy, confidence, budget=Budget(max_generated_tokens=3))


@pytest.mark.parametrize("name", ["beam_search", "mcts"])
def test_truncated_steps_never_become_answers(name, examples, arithmetic, policy, confidence):
    settings = {"n": 4, "width": 2, "max_step_tokens": 2} if name == "beam_search" else \
        {"iterations": 4, "expansion_width": 2, "max_step_tokens": 2}
    traces = _solve(name, settings, examples[3:], arithmetic, policy, confidence)  # harder problems: long first steps
    for t in traces:
        for node in t.terminals():
            if node.finish_reason == "length":
                assert node.answer is None and not node.correct
        if t.chosen_node is not None:
            assert t.nodes[t.chosen_node].finished


def test_search_needs_a_scorer_that_fits_the_task(examples, arithmetic, countdown, policy, confidence):
    with pytest.raises(ValueError, match="beam_search needs a scorer"):
        asyncio.run(get_strategy("beam_search").solve(examples[0].problem, arithmetic, policy, None, Budget(), 0))
    with pytest.raises(ValueError, match=r"n \(6\) must be a positive multiple of width \(4\)"):
        get_strategy("beam_search", n=6, width=4)
    with pytest.raises(ValueError, match="unknown choose 'vote'"):
        get_strategy("dvts", choose="vote")
    with pytest.raises(ValueError, match="unknown key"):
        get_strategy("mcts", iteration=3)


def test_mcts_with_too_few_iterations_still_follows_its_best_path_to_an_answer(arithmetic, policy, confidence):
    deep = [e for e in arithmetic.examples("test", 12, seed=2) if e.problem.difficulty == 7][:2]
    traces = _solve("mcts", {"iterations": 1, "expansion_width": 3}, deep, arithmetic, policy, confidence)
    for t in traces:
        assert t.chosen_node is not None  # one expansion cannot reach the end of 7 steps; the commit phase does
        assert len(t.path(t.chosen_node)) >= 4
    tight = _solve("mcts", {"iterations": 1, "expansion_width": 3}, deep, arithmetic, policy, confidence,
                   budget=Budget(max_generated_tokens=40))
    for t in tight:
        assert t.usage.generated_tokens <= 40  # committing never breaks the budget


def test_mcts_without_an_iteration_count_runs_until_its_budget_is_spent(examples, arithmetic, policy, confidence):
    settings = {"iterations": None, "expansion_width": 4, "exploration": 2.0}
    with pytest.raises(ValueError, match="runs until its budget is spent: give it a budget"):
        _solve("mcts", settings, examples[:1], arithmetic, policy, confidence)
    counted = _solve("mcts", {**settings, "iterations": 8}, examples, arithmetic, policy, confidence)
    budget = Budget(max_generated_tokens=600)
    spent = _solve("mcts", settings, examples, arithmetic, policy, confidence, budget=budget)
    tokens = [t.usage.generated_tokens for t in spent]
    assert all(n <= 600 for n in tokens)
    assert sum(tokens) > sum(t.usage.generated_tokens for t in counted)  # more than 8 iterations bought
    assert sum(t.stopped_by == "max_generated_tokens" for t in spent) >= len(spent) // 2


def test_particle_filtering_resamples_in_proportion_to_the_reward():
    import random

    from thinkscale.strategies.particle_filtering import effective_sample_size, systematic_resample, weights

    w = weights([0.8, 0.2, 0.0, 0.8], temperature=1.0)
    assert w == pytest.approx([0.8 / 1.8, 0.2 / 1.8, 0.0, 0.8 / 1.8])  # the PRM score as likelihood
    assert weights([0.8, 0.2], temperature=0.5) == pytest.approx([0.64 / 0.68, 0.04 / 0.68])  # sharper
    assert weights([0.0, 0.0], 1.0) == [0.5, 0.5]
    assert effective_sample_size([0.25] * 4) == pytest.approx(4) and effective_sample_size([1, 0, 0]) == 1
    picks = systematic_resample([0.5, 0.25, 0.0, 0.25], random.Random(3))
    assert sorted(picks) == [0, 0, 1, 3]  # systematic: each particle gets floor or ceil of n * w copies
    draws = [systematic_resample([0.7, 0.3], random.Random(i)).count(0) for i in range(200)]
    assert set(draws) == {1, 2}


def test_particle_filtering_keeps_its_population_and_prunes_by_weight(examples, arithmetic, policy, confidence):
    (trace,) = _solve("particle_filtering", {"n": 6}, examples[:1], arithmetic, policy, confidence)
    first = [n for n in trace.nodes if n.parent == 0]
    assert len(first) == 6  # n particles grow from the prompt
    depth = {n.id: len(trace.path(n.id)) for n in trace.nodes[1:]}
    for d in range(1, max(depth.values()) + 1):
        assert sum(1 for v in depth.values() if v == d) <= 6  # never more than n steps a round


@pytest.mark.parametrize("name,settings", [("beam_search", {"n": 4, "width": 2}), ("mcts", {"iterations": 12}),
                                           ("particle_filtering", {"n": 4})])
def test_a_finished_solution_above_stop_score_ends_the_search(name, settings, examples, arithmetic, policy,
                                                               confidence):
    full = _solve(name, settings, examples[:3], arithmetic, policy, confidence)
    early = _solve(name, {**settings, "stop_score": 0.0}, examples[:3], arithmetic, policy, confidence)
    for a, b in zip(full, early):
        first = min((n.id for n in a.terminals() if n.finished and n.answer is not None), default=None)
        if first is None:
            continue
        assert b.usage.generated_tokens <= a.usage.generated_tokens
        assert b.chosen_answer is not None and len(b.nodes) <= len(a.nodes)
        assert not any(n.id > first and n.parent == first for n in b.nodes)


def test_a_finished_search_leaves_nothing_in_the_caches(examples, arithmetic):
    """Each search's prefix-cache entries are its own, and go when it ends: a long-running server stays flat."""
    import gc

    from thinkscale import torch_thread
    from thinkscale.policies import get_policy
    from thinkscale.scorers import get_scorer

    policy, prm = get_policy("tiny", checkpoint_name="arithmetic"), get_scorer("prm", checkpoint_name="arithmetic-prm")
    traces = _solve("beam_search", {"n": 8, "width": 2, "aggregation": "min"}, examples[:3], arithmetic, policy, prm)
    assert all(t.usage.cached_prompt_tokens > 0 for t in traces)  # the caches were used
    gc.collect()  # a search may sit in a reference cycle until the collector runs
    caches = policy.engine.prefix_cache, prm.engine.prefix_cache
    assert torch_thread.call(lambda: [(c.tidy(), len(c), c.nbytes) for c in caches]) == [(None, 0, 0)] * 2
