"""Process reward models: Monte-Carlo step labels, PRM training, the PRM scorer."""

from __future__ import annotations

import asyncio
import json
import random

import pytest
import torch

from thinkscale.flywheel.step_labels import StepLabels, label_steps, read_jsonl, write_jsonl
from thinkscale.policies import get_policy
from thinkscale.scorers import aggregate, get_scorer
from thinkscale.tasks.base import split_of
from thinkscale.tiny.train import TrainSettings
from thinkscale.tiny.train_prm import prm_batch, train_prm


@pytest.fixture(scope="module")
def policy():
    return get_policy("tiny", checkpoint_name="arithmetic")


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


def test_step_labels_round_trip_and_bad_lines(records, tmp_path):
    recs, _ = records
    path = tmp_path / "labels.jsonl"
    write_jsonl(recs, path)
    assert read_jsonl(path) == recs
    path.write_text(recs[0].to_json() + "\n{not json\n")
    with pytest.raises(ValueError, match=r"labels.jsonl:2: not a step-label record"):
        read_jsonl(path)


def test_prm_batch_marks_each_steps_last_token(arithmetic_checkpoint):
    tok = arithmetic_checkpoint.tokenizer
    r = StepLabels("p", "(3+5)*2=\n", ["8*2\n", "16\n"], [0.5, 1.0], [1, 1])
    ids, at_end, target = prm_batch([r], tok)
    marks = at_end[0].nonzero()[:, 0].tolist()
    text = tok.decode(ids[0].tolist())
    assert text == "(3+5)*2=\n8*2\n16\n"
    assert [ids[0, m].item() for m in marks] == [tok.ids["\n"]] * 2
    assert marks[-1] == len(tok.encode(text)) - 1
    assert target[0, marks].tolist() == [0.5, 1.0]


def test_training_a_prm_lowers_its_loss_and_the_scorer_refuses_other_tasks(records, tmp_path):
    recs, _ = records
    settings = TrainSettings(steps=30, batch_size=8, lr=1e-3, warmup_steps=3, log_every=1)
    summary = train_prm("arithmetic", recs, tmp_path / "prm", settings, init="arithmetic",
                        label_info={"test": True}, progress=False)
    first = sum(l for _, l in summary["loss_curve"][:5]) / 5
    last = sum(l for _, l in summary["loss_curve"][-5:]) / 5
    assert last < first
    assert json.loads((tmp_path / "prm" / "prm.json").read_text())["task"] == "arithmetic"
    scorer = get_scorer("prm", checkpoint_name=str(tmp_path / "prm"))
    scores = asyncio.run(scorer.score("(3+5)*2=\n", ["8*2\n16\n", "8*2\n"], "\n"))
    assert [len(s) for s in scores.per_step] == [2, 1]
    assert all(0 < x < 1 for s in scores.per_step for x in s)
    scorer.check_task("arithmetic")
    with pytest.raises(ValueError, match="trained on 'arithmetic' and cannot score 'countdown'"):
        scorer.check_task("countdown")
    with pytest.raises(ValueError, match="is not a PRM checkpoint"):
        get_scorer("prm", checkpoint_name="arithmetic")


@pytest.mark.parametrize("task_name", ["arithmetic", "countdown"])
def test_shipped_prm_prefers_valid_solutions(task_name, request):
    from thinkscale.tasks import get_task
    from thinkscale.tiny.checkpoint import shipped_names

    if f"{task_name}-prm" not in shipped_names():
        pytest.skip(f"no shipped {task_name}-prm checkpoint")
    task = get_task(task_name)
    scorer = get_scorer("prm", checkpoint_name=f"{task_name}-prm")
    rng = random.Random(0)
    wins = total = 0
    for _ in range(30):
        prompt, reference, solution = task.generate(rng, rng.choice(task.difficulties))
        lines = solution.splitlines()
        # corrupt one number of the last step
        last = lines[-1]
        digit = next(i for i in range(len(last) - 1, -1, -1) if last[i].isdigit())
        lines[-1] = last[:digit] + str((int(last[digit]) + rng.randint(1, 8)) % 10) + last[digit + 1:]
        wrong = "\n".join(lines) + "\n"
        s = asyncio.run(scorer.score(prompt, [solution, wrong], "\n")).per_step
        wins += aggregate(s[0], "min") > aggregate(s[1], "min")
        total += 1
    assert wins >= 0.8 * total
