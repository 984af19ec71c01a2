"""Process reward models: Monte-Carlo step labels, PRM training, the PRM scorer."""

from __future__ import annotations

import asyncio
import json
import random

import pytest
import torch

from thinkscale.policies import get_policy
from thinkscale.scorers import aggregate, get_scorer
from thinkscale.tasks.base import split_of
from thinkscale.tiny import checkpoint
from thinkscale.training.policy import TrainSettings
from thinkscale.training.reward import likelihood_batch, likelihood_loss, prm_batch, step_targets, train_prm
from thinkscale.training.step_labels import StepLabels, label_steps, read_jsonl, write_jsonl


@pytest.fixture(scope="module")
def records(policy, arithmetic):
    examples = arithmetic.examples("train", 24, seed=3)
    return asyncio.run(label_steps(arithmetic, policy, examples, samples=2, rollouts=4, seed=3)), examples


def test_step_labels_come_from_train_problems_and_rollouts(records, arithmetic):
    recs, examples = records
    assert len(recs) > 20
    test_prompts = {e.problem.prompt for e in arithmetic.examples("test", 200)}
    by_id = {e.problem.id: e for e in examples}
    for r in recs:
        assert split_of(r.prompt) == "train" and r.prompt not in test_prompts
        assert len(r.steps) == len(r.values) == len(r.labels)
        assert all(0.0 <= v <= 1.0 for v in r.values)
        assert all(v * 4 == int(v * 4) for v in r.values)  # k of 4 rollouts
        assert r.labels == [int(v > 0) for v in r.values]
        # the last step's value is the verdict on the whole solution
        verdict = arithmetic.verify(by_id[r.problem_id], "".join(r.steps)).correct
        assert r.values[-1] == float(verdict)
    assert any(0 < v < 1 for r in recs for v in r.values)  # some steps really are uncertain
    again = asyncio.run(label_steps(arithmetic, get_policy("tiny", checkpoint_name="arithmetic"), examples,
                                    samples=2, rollouts=4, seed=3))
    assert again == recs  # same seed, same labels


def test_rollouts_come_from_the_completer_and_solutions_from_the_policy(records, arithmetic):
    recs, examples = records
    # the countdown policy cannot finish arithmetic: every step it continues from is worth 0
    other = asyncio.run(label_steps(arithmetic, get_policy("tiny", checkpoint_name="arithmetic"), examples,
                                    samples=2, rollouts=4, seed=3,
                                    completer=get_policy("tiny", checkpoint_name="countdown")))
    assert [(r.prompt, r.steps) for r in other] == [(r.prompt, r.steps) for r in recs]
    assert [r.values[-1] for r in other] == [r.values[-1] for r in recs]  # the verdicts are the policy's
    assert any(v > 0 for r in recs for v in r.values[:-1])
    assert all(v == 0 for r in other for v in r.values[:-1])


def test_step_labels_round_trip_and_bad_lines(records, tmp_path):
    recs, _ = records
    path = tmp_path / "labels.jsonl"
    write_jsonl(recs, path)
    assert read_jsonl(path) == recs
    path.write_text(recs[0].to_json() + "\n{not json\n")
    with pytest.raises(ValueError, match=r"labels.jsonl:2: not a step-label record"):
        read_jsonl(path)


def test_prm_batches_mark_each_steps_last_token_or_what_each_step_teaches(arithmetic_checkpoint):
    tok = arithmetic_checkpoint.tokenizer
    r = StepLabels("p", "(3+5)*2=\n", ["8*2\n", "16\n"], [0.5, 1.0], [1, 1])
    ids, at_end, target = prm_batch([r], tok)
    marks = at_end[0].nonzero()[:, 0].tolist()
    text = tok.decode(ids[0].tolist())
    assert text == "(3+5)*2=\n8*2\n16\n"
    assert [ids[0, m].item() for m in marks] == [tok.ids["\n"]] * 2
    assert marks[-1] == len(tok.encode(text)) - 1
    assert target[0, marks].tolist() == [1.0, 1.0]
    _, _, soft = prm_batch([r], tok, target="soft")
    assert soft[0, marks].tolist() == [0.5, 1.0]
    # likelihood head: a verified solution's steps are learnt token by token (token t predicted at t - 1) ...
    wrong = StepLabels("p", "(3+5)*2=\n", ["8*2\n", "17\n"], [0.75, 0.0], [1, 0])
    ids, goal, failed = likelihood_batch([r, wrong], tok)
    learnt = goal[0][goal[0] != -100].tolist()
    assert tok.decode(learnt) == "8*2\n16\n" and (goal[1] == -100).all()
    # ... and a failed step marks the positions that predict its tokens, nothing else
    assert tok.decode([ids[1, t + 1].item() for t in failed[1].nonzero()[:, 0].tolist()]) == "17\n"
    assert not failed[0].any()
    # a right answer after a step no continuation could finish is luck: that step fails, nothing is learnt
    lucky = StepLabels("p", "(3+5)*2=\n", ["9*2\n", "16\n"], [0.0, 1.0], [0, 1])
    ids, goal, failed = likelihood_batch([lucky], tok)
    assert (goal == -100).all()
    assert tok.decode([ids[0, t + 1].item() for t in failed[0].nonzero()[:, 0].tolist()]) == "9*2\n"


def test_soft_targets_unlearn_every_failed_step_hard_only_the_first(arithmetic_checkpoint):
    """A path of the search tree, labelled by its subtrees: a wrong step, then a step that forces the answer
    (countdown's usual mistake). Hard targets stop at the first failure; soft ones mark the later one too,
    as a step of its own, so that the loss pushes down each one's weakest token."""
    tok = arithmetic_checkpoint.tokenizer
    path = StepLabels("p", "(3+5)*2=\n", ["9*2\n", "17\n"], [0.0, 0.0], [0, 0])

    def failed_text(target: str) -> list[str]:
        ids, goal, failed = likelihood_batch([path], tok, target=target)
        assert (goal == -100).all()  # nothing of a failed path is learnt
        return [tok.decode([ids[0, t + 1].item() for t in (failed[0] == k).nonzero()[:, 0].tolist()])
                for k in range(1, int(failed.max()) + 1)]

    assert failed_text("hard") == ["9*2\n"]
    assert failed_text("soft") == ["9*2\n", "17\n"]
    # the loss: one -log(1 - p) a failed step, p its weakest token's probability under the model
    model = arithmetic_checkpoint.model
    batch = likelihood_batch([path], tok, target="soft")
    ids, _, failed = batch
    with torch.no_grad():
        loss = likelihood_loss(model, batch)
        lp = torch.log_softmax(model(ids).float()[0, :-1], -1).gather(-1, ids[0, 1:, None])[:, 0]
    weakest = [lp[failed[0, :-1] == k].min() for k in (1, 2)]
    assert loss.item() == pytest.approx(sum(-torch.log(1 - w.exp()).item() for w in weakest) / 2, rel=1e-5)


def test_hard_targets_stop_at_the_first_error():
    wrong = StepLabels("p", "x", ["a\n", "b\n", "c\n", "d\n"], [0.5, 0.0, 0.25, 0.0], [1, 0, 1, 0])
    assert step_targets(wrong, "hard") == [1.0, 0.0, None, None]
    assert step_targets(wrong, "soft") == [0.5, 0.0, 0.25, 0.0]
    lucky = StepLabels("p", "x", ["a\n", "b\n", "c\n"], [0.0, 1.0, 1.0], [0, 1, 1])  # right answer, dead step
    assert step_targets(lucky, "hard") == [0.0, None, None]
    with pytest.raises(ValueError, match="unknown PRM target 'medium'"):
        step_targets(lucky, "medium")


@pytest.mark.parametrize("head", ["likelihood", "verdict"])
def test_training_a_prm_lowers_its_loss_and_the_scorer_refuses_other_tasks(head, records, tmp_path):
    recs, _ = records
    settings = TrainSettings(steps=30, batch_size=8, lr=1e-3, warmup_steps=3, log_every=1)
    summary = train_prm("arithmetic", recs, tmp_path / "prm", settings, init="arithmetic",
                        label_info={"test": True}, progress=False, head=head)
    first = sum(l for _, l in summary["loss_curve"][:5]) / 5
    last = sum(l for _, l in summary["loss_curve"][-5:]) / 5
    assert last < first
    meta = json.loads((tmp_path / "prm" / "reward_model.json").read_text())
    assert meta["task"] == "arithmetic" and meta["head"] == head
    scorer = get_scorer("prm", checkpoint_name=str(tmp_path / "prm"))
    scores = asyncio.run(scorer.score("(3+5)*2=\n", ["8*2\n16\n", "8*2\n"], "\n"))
    assert [len(s) for s in scores.per_step] == [2, 1]
    assert all(0 < x < 1 for s in scores.per_step for x in s)
    scorer.check_task("arithmetic")
    with pytest.raises(ValueError, match="trained on 'arithmetic' and cannot score 'countdown'"):
        scorer.check_task("countdown")
    with pytest.raises(ValueError, match="is not a reward model checkpoint"):
        get_scorer("prm", checkpoint_name="arithmetic")
    with pytest.raises(ValueError, match="is an 'prm' checkpoint, not a 'orm' one"):
        get_scorer("orm", checkpoint_name=str(tmp_path / "prm"))
    with pytest.raises(ValueError, match="unknown reward-model head 'value'"):
        train_prm("arithmetic", recs, tmp_path / "x", settings, init="arithmetic", label_info={}, head="value")


def test_orm_learns_from_whole_solutions_of_train_problems(policy, arithmetic, tmp_path):
    from thinkscale.training.step_labels import label_outcomes

    examples = arithmetic.examples("train", 24, seed=5)
    recs = asyncio.run(label_outcomes(arithmetic, policy, examples, samples=4, seed=5))
    assert recs and all(len(r.steps) == 1 and r.values[0] in (0.0, 1.0) for r in recs)
    by_id = {e.problem.id: e for e in examples}
    for r in recs:
        assert split_of(r.prompt) == "train"
        assert r.values[0] == float(arithmetic.verify(by_id[r.problem_id], r.steps[0]).correct)
    settings = TrainSettings(steps=20, batch_size=8, lr=1e-3, warmup_steps=2, log_every=1)
    train_prm("arithmetic", recs, tmp_path / "orm", settings, init="arithmetic", label_info={}, progress=False,
              kind="orm")
    scorer = get_scorer("orm", checkpoint_name=str(tmp_path / "orm"))
    scores = asyncio.run(scorer.score("(3+5)*2=\n", ["8*2\n16\n", "8*2\n"], "\n"))
    assert [len(s) for s in scores.per_step] == [1, 1]  # one score for the whole solution
    with pytest.raises(ValueError, match="ORM 'orm' was trained on 'arithmetic'"):
        scorer.check_task("countdown")


@pytest.mark.parametrize("kind", ["prm", "orm"])
@pytest.mark.parametrize("task_name", ["arithmetic", "countdown"])
def test_shipped_reward_models_prefer_valid_solutions_of_test_problems(task_name, kind):
    from thinkscale.tasks import get_task
    from thinkscale.tiny.checkpoint import shipped_names

    if f"{task_name}-{kind}" not in shipped_names():
        pytest.skip(f"no shipped {task_name}-{kind} checkpoint")
    task = get_task(task_name)
    scorer = get_scorer(kind, checkpoint_name=f"{task_name}-{kind}")
    rng = random.Random(0)
    wins = total = 0
    while total < 40:
        prompt, reference, solution = task.generate(rng, rng.choice(task.difficulties))
        if split_of(prompt) != "test":  # judged on problems it never learnt from
            continue
        lines = solution.splitlines()
        # corrupt one digit of the last step, or (for a PRM) of a step in the middle
        at = len(lines) - 1 if kind == "orm" or total % 2 else rng.randrange(len(lines))
        line = lines[at]
        digit = next(i for i in range(len(line) - 1, -1, -1) if line[i].isdigit())
        lines[at] = line[:digit] + str((int(line[digit]) + rng.randint(1, 8)) % 10) + line[digit + 1:]
        wrong = "\n".join(lines) + "\n"
        s = asyncio.run(scorer.score(prompt, [solution, wrong], "\n")).per_step
        wins += aggregate(s[0], "min") > aggregate(s[1], "min")
        total += 1
    assert wins >= 0.8 * total, f"{wins} of {total}"


def test_every_unlearning_pushes_down_each_token_of_a_failed_step_beside_the_verified_mean(arithmetic_checkpoint):
    tok, model = arithmetic_checkpoint.tokenizer, arithmetic_checkpoint.model
    right = StepLabels("p", "(3+5)*2=\n", ["8*2\n", "16\n"], [1.0, 1.0], [1, 1])
    wrong = StepLabels("p", "(3+5)*2=\n", ["9*2\n", "17\n"], [0.0, 0.0], [0, 0])
    batch = likelihood_batch([right, wrong], tok, target="soft")
    ids, goal, failed = batch
    with torch.no_grad():
        loss = likelihood_loss(model, batch, unlearn="every")
        lp = torch.log_softmax(model(ids).float()[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0]
    learnt = goal[:, :-1] != -100  # the verified row's tokens, each predicted one position before
    assert tok.decode(ids[0, 1:][learnt[0]].tolist()) == "8*2\n16\n"
    doubted = failed[:, :-1] > 0
    assert tok.decode(ids[1, 1:][doubted[1]].tolist()) == "9*2\n17\n"  # every token of both failed steps
    by_hand = -lp[learnt].mean() - torch.log(1 - lp[doubted].exp()).mean()
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5)
    with pytest.raises(ValueError, match="unknown unlearning 'most'; valid: weakest, every"):
        likelihood_loss(model, batch, unlearn="most")
    with torch.no_grad():  # a batch with nothing verified, or nothing failed, is still a finite loss
        alone = [likelihood_loss(model, likelihood_batch([r], tok, target="soft"), unlearn="every").item()
                 for r in (right, wrong)]
    assert alone[0] == pytest.approx(-lp[learnt].mean().item(), rel=1e-5)
    assert alone[1] == pytest.approx(-torch.log(1 - lp[doubted].exp()).mean().item(), rel=1e-5)


def test_every_unlearning_teaches_a_reward_model_to_doubt_what_the_policy_is_sure_of(countdown, tmp_path):
    """Countdown's policy writes the target as its last line's result, true or not, and is sure of it: the
    weakest token of such a step is elsewhere, so only unlearning every token reaches the false result."""
    examples = countdown.examples("train", 24, seed=11)
    recs = asyncio.run(label_steps(countdown, get_policy("tiny", checkpoint_name="countdown"), examples,
                                   samples=8, rollouts=0, seed=11))
    by_id = {e.problem.id: e for e in examples}
    for r in recs:  # no rollouts: every step is valued by its own solution's verdict
        verdict = float(countdown.verify(by_id[r.problem_id], "".join(r.steps)).correct)
        assert r.values == [verdict] * len(r.steps) and r.labels == [int(verdict)] * len(r.steps)
    lies = [r for r in recs if r.values[-1] == 0 and "ends at" not in countdown.verify(
        by_id[r.problem_id], "".join(r.steps)).reason and r.steps[-1].split("=")[1].strip() == str(
        countdown.parse_prompt(r.prompt)[1])]
    assert len(lies) >= 40 and any(r.values[-1] == 1 for r in recs)

    def false_result_probability(name: str) -> float:
        """The mean over the lies of the probability the model gives the last line's false result."""
        ckpt = checkpoint.load(name)
        total = 0.0
        for r in lies:
            text = r.prompt + "".join(r.steps)
            head = len(ckpt.tokenizer.encode(text[:text.rindex("=") + 1]))
            ids = torch.tensor([ckpt.tokenizer.encode(text)])
            with torch.no_grad():
                lp = torch.log_softmax(ckpt.model(ids).float()[0, :-1], -1).gather(-1, ids[0, 1:, None])[:, 0]
            total += lp[head - 1:-1].sum().exp().item()  # the result's digits, not the line's end
        return total / len(lies)

    settings = TrainSettings(steps=40, batch_size=16, lr=1e-3, warmup_steps=4, log_every=10)
    mean = {}
    for unlearn in ("weakest", "every"):
        summary = train_prm("countdown", recs, tmp_path / unlearn, settings, init="countdown", label_info={},
                            progress=False, target="soft", unlearn=unlearn)
        assert summary["unlearn"] == unlearn
        mean[unlearn] = false_result_probability(str(tmp_path / unlearn))
    assert false_result_probability("countdown") > 0.9  # the policy is sure of them
    # measured: weakest 0.36, every 0.05 (the pushed-down weakest tokens are mostly the line's other choices)
    assert mean["every"] < 0.15 and mean["every"] < mean["weakest"] / 3
