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


# -- DeepConf: confidence-weighted votes, and samples cut in flight ------------------------------------------

def test_deepconf_offline_filters_and_weights_the_same_samples_majority_vote_draws(examples, arithmetic, policy):
    from thinkscale.strategies.deepconf import SCORE, floor_of, weighted_vote

    plain = run(examples, arithmetic, get_strategy("majority_vote", n=16), policy, Budget(), seed=4)
    offline = run(examples, arithmetic, get_strategy("deepconf", n=16, mode="offline", keep=0.5, window=8), policy,
                  Budget(), seed=4)
    for vote, trace in zip(plain, offline):
        assert [n.text for n in trace.terminals()] == [n.text for n in vote.terminals()]  # the same samples
        confidences = [n.scores[SCORE] for n in trace.terminals()]
        assert trace.settings["floor"] == floor_of(confidences, 0.5)
        kept = [n for n in trace.terminals() if n.finished and n.answer and n.scores[SCORE] >= trace.settings["floor"]]
        totals = {}
        for n in kept:
            totals[n.answer] = totals.get(n.answer, 0.0) + n.scores[SCORE]
        assert trace.chosen_answer == (max(totals, key=totals.get) if totals else None)
        assert weighted_vote(list(trace.terminals()), trace.settings["floor"])[0] == trace.chosen_answer


def test_deepconf_online_cuts_unconfident_samples_and_spends_less(examples, arithmetic, policy):
    from thinkscale.strategies.deepconf import SCORE

    settings = {"n": 32, "warmup": 8, "wave": 8, "keep": 0.5, "window": 8, "consensus": None}
    offline = run(examples, arithmetic, get_strategy("deepconf", mode="offline", **settings), policy, Budget(), seed=5)
    online = run(examples, arithmetic, get_strategy("deepconf", **settings), policy, Budget(), seed=5)
    assert sum(t.usage.generated_tokens for t in online) < 0.9 * sum(t.usage.generated_tokens for t in offline)
    cut = [n for t in online for n in t.terminals() if n.finish_reason == "cut"]
    assert cut and all(n.answer is None for n in cut)
    for t in online:
        assert t.usage.samples == 32 and t.usage.generated_tokens == sum(n.num_tokens for n in t.terminals())
        warm = list(t.terminals())[:8]  # drawn whole: none is cut, and they set the floor
        assert all(n.finish_reason != "cut" for n in warm)
        later = list(t.terminals())[8:]  # drawn with the floor: every window of those not cut stayed above it
        assert all(n.scores[SCORE] >= t.settings["floor"] for n in later if n.finish_reason != "cut"
                   and n.num_tokens >= 8)
    again = run(examples[:3], arithmetic, get_strategy("deepconf", **settings), policy, Budget(), seed=5)
    assert [t.to_dict()["nodes"] for t in again] == [t.to_dict()["nodes"] for t in online[:3]]
    # with consensus, a settled vote stops drawing; a token budget holds as for every strategy
    settled = run(examples, arithmetic, get_strategy("deepconf", **{**settings, "consensus": 0.8}), policy, Budget(),
                  seed=5)
    assert sum(t.usage.samples for t in settled) < 32 * len(examples)
    tight = run(examples[:4], arithmetic, get_strategy("deepconf", **settings), policy,
                Budget(max_generated_tokens=300), seed=5)
    assert all(t.usage.generated_tokens <= 300 for t in tight)


def test_deepconf_is_refused_on_a_policy_without_confidences(arithmetic):
    from thinkscale.policies.openai import OpenAIPolicy

    with pytest.raises(ValueError, match="deepconf needs per-token confidences.*the openai policy gives neither"):
        run(arithmetic.examples("test", 1), arithmetic, get_strategy("deepconf"), OpenAIPolicy("http://127.0.0.1:9/v1"),
            Budget())
    with pytest.raises(ValueError, match="mode must be 'online' or 'offline'"):
        get_strategy("deepconf", mode="live")
