"""Exported training sets in their real consumer: TRL's SFT and DPO trainers, a few steps on a shipped checkpoint.

    make test-trl        # installs the trl extra, then pytest -m trl

The column names of `thinkscale export --as sft|preference` follow TRL's
documented formats; these tests hand the files, loaded as they are (provenance
columns included), to `SFTTrainer` and `DPOTrainer` with the shipped
`arithmetic` checkpoint, and check that every row is consumed, that SFT learns
from the completion only, and that a few optimiser steps move the weights with
a finite loss. The provenance columns (run, strategy, seed, problem_id, kind)
need no dropping: both trainers tokenize into columns of their own and leave
the rest out of their batches.

TRL ends every chosen and rejected with <eos>, so each must close a whole
solution: a step pair carries the finished paths beneath its two steps.
"""

from __future__ import annotations

import math

import pytest
import torch

from thinkscale.config import RunConfig
from thinkscale.runner import run_experiment
from thinkscale.store import RunStore
from thinkscale.tiny.checkpoint import resolve
from thinkscale.training.sets import export_training_set

pytestmark = pytest.mark.trl
pytest.importorskip("trl", reason="needs trl: run `make test-trl`")

PROBLEMS = 24


@pytest.fixture(scope="module")
def train_run(tmp_path_factory, policy, arithmetic):
    """A real run of the tiny core on the train split: whole samples, and a step search scored by the PRM
    (so that the preference set holds step pairs as well as solution pairs)."""
    cfg = RunConfig.from_dict({
        "task": "arithmetic", "split": "train", "problems": PROBLEMS, "seeds": [0],
        "output": str(tmp_path_factory.mktemp("trl") / "run"),
        "policy": {"name": "tiny", "options": {"threads": 1}},
        "strategies": [{"name": "repeated_sampling", "label": "rs", "settings": {"n": 8}},
                       {"name": "beam_search", "label": "beam", "settings": {"n": 4, "width": 2},
                        "scorer": {"name": "prm"}}]})
    with RunStore.open(cfg.output_path, cfg.to_dict()) as store:
        run_experiment(cfg, store, arithmetic, policy)
    return cfg.output_path


def exported(train_run, tmp_path, kind: str):
    """One training set exported to JSONL and read back by `datasets`, every column kept."""
    import datasets

    path = tmp_path / f"{kind}.jsonl"
    rows = export_training_set(train_run, path, kind)
    dataset = datasets.load_dataset("json", data_files=str(path), split="train")
    assert len(dataset) == rows > 0
    return dataset


def trainer_options(tmp_path) -> dict:
    """A few float32 steps on the CPU, two rows a batch, nothing saved or reported."""
    return {"output_dir": str(tmp_path / "out"), "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1,
            "learning_rate": 1e-5, "logging_steps": 1, "save_strategy": "no", "report_to": "none",
            "use_cpu": True, "bf16": False, "disable_tqdm": True, "seed": 0}


def weights(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def assert_trained(trainer, before: dict[str, torch.Tensor], steps: int) -> list[float]:
    """The trainer ran `steps` optimiser steps with finite losses, and every parameter tensor moved."""
    result = trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert trainer.state.global_step == steps and len(losses) == steps
    assert all(math.isfinite(loss) for loss in losses) and math.isfinite(result.training_loss)
    after = weights(trainer.model)
    moved = [name for name, value in before.items() if not torch.equal(value, after[name])]
    assert set(moved) == set(before), f"unchanged: {sorted(set(before) - set(moved))}"
    return losses


def test_sft_trains_on_the_completions_of_the_sft_set(train_run, tmp_path):
    from trl import SFTConfig, SFTTrainer

    dataset = exported(train_run, tmp_path, "sft")
    checkpoint = str(resolve("arithmetic"))
    trainer = SFTTrainer(model=checkpoint, train_dataset=dataset,
                         args=SFTConfig(max_steps=3, **trainer_options(tmp_path)))
    tokenizer = trainer.processing_class
    assert trainer.completion_only_loss  # chosen by TRL from the prompt/completion columns

    prepared = trainer.train_dataset
    assert len(prepared) == len(dataset)  # no row dropped (by truncation, or as unreadable)
    for row, example in zip(dataset, prepared):
        prompt_ids = tokenizer(row["prompt"])["input_ids"]  # <bos> and one id a character
        ids, labels = example["input_ids"], example["labels"]
        assert ids == tokenizer(row["prompt"] + row["completion"])["input_ids"] + [tokenizer.eos_token_id]
        assert labels[:len(prompt_ids)] == [-100] * len(prompt_ids)  # the prompt teaches nothing
        assert labels[len(prompt_ids):] == ids[len(prompt_ids):]  # the completion and its <eos> are learned
    losses = assert_trained(trainer, weights(trainer.model), steps=3)
    # the rows are the checkpoint's own verified samples: read as it was trained to read them (<bos>, one id a
    # character, <eos>), they are likely under it; a misreading would cost about ln(24) = 3.2 nats a token
    assert losses[0] < 0.5


def test_dpo_trains_on_the_preference_set(train_run, tmp_path):
    from trl import DPOConfig, DPOTrainer

    dataset = exported(train_run, tmp_path, "preference")
    assert set(dataset["kind"]) == {"solution", "step"}
    checkpoint = str(resolve("arithmetic"))  # DPOTrainer loads a second copy from it as the reference
    trainer = DPOTrainer(model=checkpoint, train_dataset=dataset,
                         args=DPOConfig(max_steps=2, **trainer_options(tmp_path)))
    tokenizer = trainer.processing_class

    prepared = trainer.train_dataset
    assert len(prepared) == len(dataset)
    for row, example in zip(dataset, prepared):
        assert example["prompt_ids"] == tokenizer(row["prompt"])["input_ids"]
        assert example["chosen_ids"] == tokenizer(row["chosen"], add_special_tokens=False)["input_ids"] + [
            tokenizer.eos_token_id]
        assert example["rejected_ids"] == tokenizer(row["rejected"], add_special_tokens=False)["input_ids"] + [
            tokenizer.eos_token_id]
    losses = assert_trained(trainer, weights(trainer.model), steps=2)
    # the reference is the same checkpoint, so before the first update the policy equals it: loss = -log sigmoid(0)
    assert losses[0] == pytest.approx(math.log(2), abs=1e-4)


def test_every_preference_pair_ends_where_a_solution_ends(train_run, tmp_path, arithmetic):
    """DPOTrainer appends <eos> to every plain-text chosen and rejected, so each must close a whole solution.

    A step pair whose steps are not the last (`"prompt": "3+7+(1+9)=\\n", "chosen": "10+(1+9)\\n"`)
    is trained as "stop here": the checkpoint gives that <eos> a log-probability of -8 to -19
    (about 0 after a last step), more than the step itself costs, and DPO raises it after every
    chosen step and lowers it after every rejected one.
    """
    dataset = exported(train_run, tmp_path, "preference")
    prompts = {e.problem.id: e.problem.prompt for e in arithmetic.examples("train", PROBLEMS)}
    unfinished = []
    for row in dataset:
        path = row["prompt"].removeprefix(prompts[row["problem_id"]])  # the steps before the pair's, if any
        for side in ("chosen", "rejected"):
            if arithmetic.extract_answer(path + row[side]) is None:
                unfinished.append((row["kind"], row[side]))
    assert not unfinished, f"{len(unfinished)} sides end mid-solution, e.g. {unfinished[0]}"
