"""Stopping rules: fewer samples where the answer is settled, never more than n, same seed same trace."""

from __future__ import annotations

import pytest

from thinkscale.budget import Budget
from thinkscale.runner import run
from thinkscale.strategies import get_strategy
from thinkscale.strategies.stopping import AdaptiveConsistency, EarlyStoppingWindows, VerifierDominance, \
    leader_probability


def test_leader_probability_grows_with_agreement():
    assert leader_probability([4]) == pytest.approx(1 - 0.5 ** 5)  # Beta(5, 1): P(p1 > 1/2)
    assert leader_probability([3, 1], "beta") == pytest.approx(0.8125)  # Beta(4, 2) above 1/2
    assert leader_probability([5, 5]) == pytest.approx(0.5)
    assert leader_probability([6, 1, 1]) > leader_probability([4, 2, 2]) > leader_probability([3, 3, 2])
    assert leader_probability([6, 1, 1]) == leader_probability([6, 1, 1])  # seeded draws: a pure function
    assert leader_probability([]) == 0.0


def test_rules_decide_on_the_samples_so_far():
    rule = AdaptiveConsistency(confidence=0.95)
    assert not rule.should_stop(["7", "7", "7"])  # 0.9375 < 0.95
    assert rule.should_stop(["7", "7", "7", "7"])  # 0.969
    assert not rule.should_stop(["7", "7", "7", "7", "3", None])
    esc = EarlyStoppingWindows(window=3)
    assert esc.wave == 3 and not esc.should_stop(["1", "2", "2", "2", None])
    assert esc.should_stop(["1", "2", "2", "2", "2", "2"])
    verifier = VerifierDominance(confidence=0.9)
    assert verifier.should_stop(["5", "6", "5", "5", "5"], [0.9, 0.01, 0.9, 0.9, 0.9])
    assert not verifier.should_stop(["5", "6", "5"], [0.1, 0.9, 0.1])


@pytest.fixture(scope="module")
def examples(arithmetic):
    return arithmetic.examples("train", 12, seed=3)  # dev problems: rules are tuned on the train split


def test_adaptive_majority_vote_spends_less_and_never_more_than_n(examples, arithmetic, policy):
    fixed = run(examples, arithmetic, get_strategy("majority_vote", n=24), policy, Budget(), seed=1)
    adaptive = run(examples, arithmetic, get_strategy("majority_vote", n=24, stopping={
        "rule": "adaptive_consistency", "confidence": 0.95, "wave": 2}), policy, Budget(), seed=1)
    samples = [t.usage.samples for t in adaptive]
    assert max(samples) <= 24 and min(samples) >= 2 and sum(samples) < 0.85 * 24 * len(examples)
    for t in adaptive:
        answers = [a for a in t.answers() if a is not None]
        if t.usage.samples < 24:  # it stopped: the rule agreed at that point
            assert AdaptiveConsistency(confidence=0.95).should_stop(t.answers())
            assert t.chosen_answer == max(set(answers), key=answers.count)
    accuracy = lambda traces: sum(bool(t.correct) for t in traces) / len(traces)  # noqa: E731
    assert accuracy(adaptive) >= accuracy(fixed) - 0.15
    again = run(examples[:4], arithmetic, get_strategy("majority_vote", n=24, stopping={
        "rule": "adaptive_consistency", "wave": 2}), policy, Budget(), seed=1)
    assert [t.to_dict()["nodes"] for t in again] == [t.to_dict()["nodes"] for t in adaptive[:4]]


def test_esc_and_the_verifier_rule(examples, arithmetic, policy):
    from thinkscale.scorers import get_scorer

    esc = run(examples[:6], arithmetic, get_strategy("majority_vote", n=16, stopping={"rule": "esc", "window": 4}),
              policy, Budget(), seed=2)
    for t in esc:
        assert t.usage.samples % 4 == 0 and t.usage.samples <= 16
        if t.usage.samples < 16:
            last = t.answers()[-4:]
            assert last[0] is not None and len(set(last)) == 1
    prm = get_scorer("prm")
    weighted = run(examples[:6], arithmetic, get_strategy("weighted_best_of_n", n=16, stopping={
        "rule": "verifier", "confidence": 0.9, "wave": 2}), policy, Budget(), seed=2, scorer=prm)
    assert sum(t.usage.samples for t in weighted) < 16 * 6
    assert all(t.usage.scorer_calls == t.usage.policy_calls for t in weighted)  # each wave scored as it came


def test_rules_a_strategy_cannot_use_are_refused_by_name():
    with pytest.raises(ValueError, match="needs reward-model scores.*adaptive_consistency or esc"):
        get_strategy("majority_vote", stopping={"rule": "verifier"})
    with pytest.raises(ValueError, match="unknown stopping rule 'adaptive'.*Did you mean 'adaptive_consistency'"):
        get_strategy("majority_vote", stopping={"rule": "adaptive"})
    with pytest.raises(ValueError, match="unknown key.*'windows'.*valid keys: rule, window"):
        get_strategy("majority_vote", stopping={"rule": "esc", "windows": 4})
    with pytest.raises(ValueError, match="unknown key.*'stopping'"):
        get_strategy("repeated_sampling", stopping={"rule": "esc"})  # coverage has nothing to stop on
    with pytest.raises(ValueError, match="confidence must be between 0 and 1"):
        get_strategy("best_of_n", stopping={"rule": "verifier", "confidence": 1.5})
