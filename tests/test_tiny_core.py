"""The tiny core's checkpoints: standard Hugging Face files, same numbers as ours."""

from __future__ import annotations

import shutil

import pytest
import torch

from thinkscale.tiny import checkpoint
from thinkscale.tiny.tokenizer import CHARACTERS

transformers = pytest.importorskip("transformers")

TEXTS = ["(3+5)*(7-2)=\n8*(7-2)\n8*5\n40\n", "3,7,5,9>24\n7-5=2\n9+3=12\n12*2=24\n", "1+2=\n"]


@pytest.mark.parametrize("name", ["arithmetic", "countdown"])
def test_shipped_checkpoint_loads_in_transformers_with_equal_logits(name):
    ours = checkpoint.load(name)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(ours.path)
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(ours.path)
    assert hf_model.config.model_type == "llama"
    for text in TEXTS:
        ids = ours.tokenizer.encode(text)
        assert hf_tokenizer(text)["input_ids"] == ids
        assert hf_tokenizer.decode(ids, skip_special_tokens=True) == text
        with torch.no_grad():
            mine = ours.model(torch.tensor([ids]))
            theirs = hf_model(torch.tensor([ids])).logits
        assert mine.shape == theirs.shape
        assert (mine - theirs).abs().max().item() < 1e-4
        assert mine.abs().max().item() > 1.0  # a trained model, not near-zero logits


def test_shipped_checkpoints_carry_a_training_summary():
    names = checkpoint.shipped_names()
    assert {"arithmetic", "countdown", "arithmetic-base", "arithmetic-prm", "arithmetic-orm", "countdown-prm",
            "countdown-orm"} <= set(names)
    for name in names:
        summary = checkpoint.load(name).summary
        assert summary["loss_curve"][-1][1] < summary["loss_curve"][0][1]
        if not name.endswith(("-prm", "-orm")):  # a policy (arithmetic-base: the one the reward models start from;
            # arithmetic-large-tool: trained to call a tool; arithmetic-4x: four times the parameters)
            assert name == summary["task"] or name in {f"{summary['task']}-{v}" for v in ("base", "tool", "4x")}
            assert summary["reproduce"].startswith("thinkscale train policy")
            assert ("--tool-calls" in summary["reproduce"]) == name.endswith("-tool")
        else:  # a reward model: which task, which kind, started from what, labelled how (train split only)
            task, kind = name.split("-")
            assert (summary["task"], summary["kind"]) == (task, kind)
            stages = [summary]  # a second stage starts from the first, whose summary it keeps (countdown's)
            while stages[-1]["init"] == name:
                stages.append(stages[-1]["init_training"])
            assert stages[-1]["init"] == f"{task}-base"
            for stage in stages:
                assert stage["labels"]["split"] == "train"
                assert stage["labels"]["kind"] == kind and stage["labels"]["policy"] == task


def test_missing_file_is_named(tmp_path, arithmetic_checkpoint):
    target = tmp_path / "ckpt"
    shutil.copytree(arithmetic_checkpoint.path, target)
    (target / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="missing model.safetensors"):
        checkpoint.load(target)


def test_unknown_checkpoint_names_the_closest_choices():
    with pytest.raises(ValueError, match="Did you mean 'arithmetic'"):
        checkpoint.load("arithmetik")


def test_tokenizer_round_trip_and_bad_character(arithmetic_checkpoint):
    tok = arithmetic_checkpoint.tokenizer
    assert tok.decode(tok.encode(CHARACTERS)) == CHARACTERS
    with pytest.raises(ValueError, match="'x' is not in the tiny core's vocabulary"):
        tok.encode("2x3")
