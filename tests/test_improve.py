"""`thinkscale improve`: rounds of expert iteration on the tiny core, resumable, with its bad inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from thinkscale.cli import main
from thinkscale.config import ConfigError
from thinkscale.store import RunStore
from thinkscale.tasks import TASKS, get_task
from thinkscale.tasks.arithmetic import ArithmeticTask
from thinkscale.tiny import checkpoint
from thinkscale.training.improve import CONFIG_FILE, ImproveError, dev_prompts, improve, parse_improve_config

SMALL = """
task: arithmetic
output: {out}
rounds: 1
seed: 3
search: {{problems: 24, strategy: {{name: repeated_sampling, settings: {{n: 4, temperature: 1.0}}}}}}
finetune: {{steps: 4, batch_size: 16}}
refresh: {{problems: 8, steps: 2, batch_size: 4,
          strategy: {{name: beam_search, settings: {{n: 4, width: 2, aggregation: min, choose: weighted}},
                      scorer: {{name: prm}}}}}}
evaluate: {{problems: 8, samples: 4, beam: 4, best_of: 4}}
"""


def small(out: Path, **changes: str) -> str:
    text = SMALL.format(out=out)
    for key, value in changes.items():  # drop the key's line and its continuation lines, then set it anew
        lines, dropping = [], False
        for line in text.splitlines():
            dropping = line.startswith(key + ":") or (dropping and line.startswith(" "))
            if not dropping:
                lines.append(line)
        text = "\n".join(lines) + f"\n{key}: {value}\n"
    return text


def weights(path: str | Path) -> dict[str, torch.Tensor]:
    return checkpoint.load(path).model.state_dict()


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict], list[str]]:
    out = tmp_path_factory.mktemp("improve") / "run"
    logged: list[str] = []
    rows = improve(parse_improve_config(small(out)), progress=False, log=logged.append)
    return out, rows, logged


def test_a_round_fine_tunes_on_verified_solutions_only_and_refreshes_the_prm(finished) -> None:
    out, rows, logged = finished
    assert [r["round"] for r in rows] == [0, 1]
    one = rows[1]
    assert 0 < one["kept"] <= one["verified"] <= one["attempts"] == 24 * 4
    assert one["policy"] == str(out / "round-1" / "policy") and one["prm"] == str(out / "round-1" / "prm")
    start, tuned = weights("arithmetic"), weights(one["policy"])
    assert any(not torch.equal(start[k], tuned[k]) for k in start)  # the policy learned something
    prm_start, prm_tuned = weights("arithmetic-prm"), weights(one["prm"])
    assert any(not torch.equal(prm_start[k], prm_tuned[k]) for k in prm_start)
    assert json.loads((out / "round-1" / "prm" / "reward_model.json").read_text())["task"] == "arithmetic"
    summary = json.loads((out / "round-1" / "policy" / "training.json").read_text())
    assert summary["pairs"] == one["kept"] and summary["round"] == 1
    # every kept solution is one the verifier accepted, of a train-split problem
    task = get_task("arithmetic")
    with RunStore.read(out / "round-1" / "search") as store:
        verified = {(t.root.text, t.solution(n.id)) for t in store.iter_traces() for n in t.terminals()
                    if n.finished and n.correct}
        assert all(not task.held_out(t.root.text) for t in store.iter_traces())
    from thinkscale.training.sets import training_rows
    with RunStore.read(out / "round-1" / "search") as store:
        kept = {(r["prompt"], r["completion"]) for r in training_rows(store, task, "sft", 4)}
    assert kept and kept <= verified
    for metric in ("pass@1", "pass@4", "majority@4", "beam@4", "prm-best@4"):
        assert 0.0 <= one["eval"][metric] <= 1.0 and 0.0 <= rows[0]["eval"][metric] <= 1.0
    with RunStore.read(out / "round-1" / "eval") as store:  # best-of-4 chose by the refreshed PRM's scores
        best = [t for k, t in store.iter_keyed() if k.startswith("prm-best@4/")]
    assert len(best) == 8 and all(t.usage.samples == 4 and t.usage.scorer_calls > 0 for t in best)
    assert one["eval"]["prm-best@4"] == sum(bool(t.correct) for t in best) / 8
    assert (out / "improve.png").stat().st_size > 0
    assert json.loads((out / "rounds.json").read_text()) == rows
    assert any("pass@1" in line for line in logged)


def test_a_killed_run_resumes_without_retraining_what_it_finished(finished, tmp_path: Path) -> None:
    _, rows, _ = finished
    out = tmp_path / "run"
    config = parse_improve_config(small(out))
    improve(config, progress=False, log=lambda _: None)
    # as if killed while refreshing the PRM: no metrics, no PRM, a half-written PRM beside its place
    (out / "round-1" / "metrics.json").unlink()
    shutil.rmtree(out / "round-1" / "prm")
    (out / "round-1" / "prm.partial").mkdir()
    shutil.rmtree(out / "round-1" / "eval")
    policy_file = out / "round-1" / "policy" / "model.safetensors"
    before = policy_file.stat().st_mtime_ns
    again = improve(config, progress=False, log=lambda _: None)
    assert policy_file.stat().st_mtime_ns == before  # the fine-tuned policy was not trained again
    assert not (out / "round-1" / "prm.partial").exists()
    assert again[1]["eval"] == rows[1]["eval"]  # same seeds, same checkpoints: the same measurements
    prm_a, prm_b = weights(rows[1]["prm"]), weights(again[1]["prm"])
    assert all(torch.equal(prm_a[k], prm_b[k]) for k in prm_a)


def moved(finished, to: Path) -> Path:
    """A copy of the finished run at `to`, as if it had been made there."""
    out, _, _ = finished
    shutil.copytree(out, to)
    saved = json.loads((to / CONFIG_FILE).read_text())
    (to / CONFIG_FILE).write_text(json.dumps({**saved, "output": str(to)}))
    return to


def test_another_config_in_the_same_output_is_refused_and_fresh_moves_it_aside(finished, tmp_path: Path) -> None:
    copy = moved(finished, tmp_path / "run")
    other = parse_improve_config(small(copy, seed="4"))
    with pytest.raises(ImproveError, match=r"another config \(differing: seed\)"):
        improve(other, progress=False, log=lambda _: None)
    assert (copy / "round-1" / "policy").exists()  # nothing already trained is lost


def test_more_rounds_continue_the_run_from_its_last_round(finished, tmp_path: Path) -> None:
    _, rows, _ = finished
    copy = moved(finished, tmp_path / "run")
    saved = json.loads((copy / CONFIG_FILE).read_text())  # as saved before refresh.target existed (its default)
    del saved["refresh"]["target"]
    (copy / CONFIG_FILE).write_text(json.dumps(saved))
    policy_file = copy / "round-1" / "policy" / "model.safetensors"
    before = policy_file.stat().st_mtime_ns
    more = improve(parse_improve_config(small(copy, rounds="2")), progress=False, log=lambda _: None)
    assert policy_file.stat().st_mtime_ns == before  # round 1 stands as it was
    assert [r["round"] for r in more] == [0, 1, 2] and more[1]["eval"] == rows[1]["eval"]
    assert (copy / "round-2" / "policy").is_dir()
    start, second = weights(more[1]["policy"]), weights(more[2]["policy"])  # round 2 went on from round 1
    assert any(not torch.equal(start[k], second[k]) for k in start)
    with pytest.raises(ImproveError, match="another config"):  # fewer rounds would rewrite what was measured
        improve(parse_improve_config(small(copy, rounds="1")), progress=False, log=lambda _: None)


class LeakyArithmetic(ArithmeticTask):
    """Arithmetic whose test set repeats training problems: a data bug improve must catch."""

    name = "arithmetic-leaky"

    def examples(self, split: str, n: int, seed: int = 0) -> list:
        return super().examples("train", n, seed)


def test_a_test_set_that_shares_problems_with_training_is_refused(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(TASKS._entries, LeakyArithmetic.name, LeakyArithmetic)
    # round 1 of seed 3 draws its search problems with problem seed 3011: a test set drawn so overlaps
    config = parse_improve_config(small(tmp_path / "o", task="arithmetic-leaky", policy="arithmetic", refresh="null",
                                        evaluate="{problem_seed: 3011, problems: 8, beam: 0}"))
    with pytest.raises(ImproveError, match="round 1 would train on .* test set"):
        improve(config, progress=False, log=lambda _: None)
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_a_dev_set_on_the_train_split_is_left_out_of_every_training_draw(tmp_path: Path) -> None:
    config = parse_improve_config(small(tmp_path / "o", evaluate="{split: train, problem_seed: 3011, problems: 8}"))
    dev = dev_prompts(get_task("arithmetic"), config)
    assert len(dev) == 8
    improve(config, progress=False, log=lambda _: None)
    with RunStore.read(tmp_path / "o" / "round-1" / "search") as store:
        searched = {t.root.text for t in store.iter_traces()}
    assert searched and not searched & dev
    assert len(searched) == 24 - 8  # the draw is the dev set's own draw: all of it left out


def test_a_round_without_a_verified_solution_is_reported_empty(tmp_path: Path) -> None:
    # the countdown policy never writes a valid arithmetic solution
    config = parse_improve_config(small(tmp_path / "o", policy="countdown"))
    logged: list[str] = []
    rows = improve(config, progress=False, log=logged.append)
    assert rows[1]["empty"] and rows[1]["kept"] == 0
    assert rows[1]["policy"] == rows[0]["policy"] == str(checkpoint.resolve("countdown"))
    assert rows[1]["prm"] == rows[0]["prm"]
    assert not (tmp_path / "o" / "round-1" / "policy").exists()
    assert any("empty: no verified solution" in line for line in logged)


@pytest.mark.parametrize("change, match", [
    ({"prm": "countdown-prm"}, r"improve.yaml:\d+: .*'countdown-prm' is a prm made for the task 'countdown'"),
    ({"prm": "arithmetic"}, r"improve.yaml:\d+: .*not a reward model"),
    ({"rounds": "0"}, r"improve.yaml:\d+: .*rounds.*at least 1"),
    ({"finetune": "{steps: 3, start: scratch}"}, r"improve.yaml:\d+: .*start"),
    ({"search": "{problems: 4, strategy: {name: beam_serch}}"}, r"improve.yaml:\d+: .*beam_search"),
    ({"policy": "no-such-model"}, r"improve.yaml:\d+: .*policy"),
])
def test_bad_configs_name_their_line(tmp_path: Path, change: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_improve_config(small(tmp_path / "o", **change), "improve.yaml")


def test_unlearning_every_token_is_refused_for_a_verdict_head_prm(tmp_path: Path) -> None:
    from thinkscale.training.policy import TrainSettings
    from thinkscale.training.reward import train_prm
    from thinkscale.training.step_labels import StepLabels

    rows = [StepLabels("p", "(3+5)*2=\n", ["8*2\n", "16\n"], [1.0, 1.0], [1, 1])] * 4
    with pytest.raises(ValueError, match="unlearn='every' is the likelihood head's"):
        train_prm("arithmetic", rows, tmp_path / "x", TrainSettings(steps=1, batch_size=4), init="arithmetic",
                  label_info={}, progress=False, head="verdict", unlearn="every")
    train_prm("arithmetic", rows, tmp_path / "verdict", TrainSettings(steps=1, batch_size=4), init="arithmetic",
              label_info={}, progress=False, head="verdict")
    text = small(tmp_path / "o", prm=str(tmp_path / "verdict")).replace("refresh: {", "refresh: {unlearn: every, ")
    with pytest.raises(ConfigError, match=r"improve.yaml:\d+: .*has a verdict head"):
        parse_improve_config(text, "improve.yaml")
    parse_improve_config(small(tmp_path / "o", prm=str(tmp_path / "verdict")), "improve.yaml")  # weakest: fine


def test_the_command_line_reports_a_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(small(tmp_path / "o", prm="countdown-prm"))
    assert main(["improve", str(path), "--quiet"]) == 2
    assert "countdown-prm" in capsys.readouterr().err


def test_the_example_config_spells_out_the_defaults() -> None:
    from thinkscale.training.improve import ImproveConfig, load_improve_config

    example = load_improve_config(Path(__file__).resolve().parents[1] / "examples" / "improve.yaml")
    defaults = ImproveConfig.from_dict({"task": "arithmetic", "output": example.output})
    assert example.to_dict() == {**defaults.to_dict(), "policy": "arithmetic", "prm": "arithmetic-prm"}


def test_grpo_is_a_second_method_that_learns_from_rewarded_samples(tmp_path: Path) -> None:
    config = parse_improve_config(small(tmp_path / "o", method="grpo", rl="{steps: 3, prompts: 4, group: 4}",
                                        refresh="null"))
    rows = improve(config, progress=False, log=lambda _: None)
    one = rows[1]
    summary = json.loads((tmp_path / "o" / "round-1" / "policy" / "training.json").read_text())
    assert summary["method"] == "grpo" and len(summary["reward_curve"]) == 3
    assert summary["sampled_tokens"] > 0 and summary["tokens"] > 0 and one["flops"]["grpo"] == summary["flops"]
    assert all(0.0 <= r <= 1.0 for _, r in summary["reward_curve"]) and all(k >= 0 for _, k in summary["kl_curve"])
    assert one["reward"]["end"] == round(summary["reward_curve"][-1][1], 4)  # the last 5% of 3 steps: the last one
    start, tuned = weights("arithmetic"), weights(one["policy"])
    assert any(not torch.equal(start[k], tuned[k]) for k in start)
    assert 0.0 <= one["eval"]["pass@1"] <= 1.0
    # the round's time counts drawing its problems; resumed, the round is read back as it was
    assert set(one["seconds"]) == {"draw", "grpo", "evaluate"}
    (tmp_path / "o" / "round-1" / "metrics.json").unlink()
    again = improve(config, progress=False, log=lambda _: None)[1]
    assert again["searched"] == one["searched"] and again["policy"] == one["policy"]


def test_grpo_rewards_by_verifier_or_by_the_groups_majority() -> None:
    from thinkscale.training.rl import rewards

    task = get_task("arithmetic")
    example = task.examples("train", 1, seed=5)[0]
    right = task.generate(__import__("random").Random(0), 2)  # any other problem's solution: a wrong answer here
    texts = [right[2], right[2], "garbage"]
    assert rewards(task, example, texts, [True, True, True], "verifier") == [0.0, 0.0, 0.0]
    assert rewards(task, example, texts, [True, True, True], "majority") == [1.0, 1.0, 0.0]  # no reference used
    assert rewards(task, example, texts, [False, True, True], "majority") == [0.0, 1.0, 0.0]  # cut off: no answer
