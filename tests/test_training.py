"""Training: a few seconds lower the loss, and a seed reproduces the run."""

from __future__ import annotations

import torch

from thinkscale.tasks import get_task
from thinkscale.tiny import checkpoint
from thinkscale.tiny.model import TinyConfig, TinyLlama
from thinkscale.tiny.tokenizer import DEFAULT_VOCAB, CharTokenizer
from thinkscale.training.policy import TrainSettings, lm_batches, lm_loss, make_batch, train_policy, train_steps

SMALL = TinyConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)


def test_a_few_steps_lower_the_loss():
    torch.manual_seed(0)
    task, tok = get_task("arithmetic"), CharTokenizer(DEFAULT_VOCAB)
    model = TinyLlama(SMALL)
    settings = TrainSettings(steps=40, batch_size=32, lr=1e-2, warmup_steps=5, log_every=1)
    curve, tokens = train_steps(model, lm_batches(task.training_stream(0), tok, settings.batch_size), lm_loss,
                                tok.pad_id, settings)
    first, last = sum(l for _, l in curve[:5]) / 5, sum(l for _, l in curve[-5:]) / 5
    assert last < 0.7 * first
    assert tokens > 0


def test_training_is_deterministic_for_a_seed(tmp_path):
    task = get_task("countdown")
    settings = TrainSettings(steps=3, batch_size=8, seed=5)
    a = train_policy(task, tmp_path / "a", settings, config=SMALL, progress=False)
    b = train_policy(task, tmp_path / "b", settings, config=SMALL, progress=False)
    assert a["loss_curve"] == b["loss_curve"]
    wa, wb = checkpoint.load(tmp_path / "a").model.state_dict(), checkpoint.load(tmp_path / "b").model.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    c = train_policy(task, tmp_path / "c", TrainSettings(steps=3, batch_size=8, seed=6), config=SMALL, progress=False)
    assert c["loss_curve"] != a["loss_curve"]


def test_loss_falls_on_the_solution_only():
    tok = CharTokenizer(DEFAULT_VOCAB)
    ids, targets = make_batch([("1+2=\n", "3\n"), ("2*3+1=\n", "6+1\n7\n")], tok)
    assert ids.shape == targets.shape
    # Row 0: bos 1 + 2 = \n | 3 \n eos -> targets for the 5 prompt-predicting positions are ignored.
    assert (targets[0, :5] == -100).all()
    assert targets[0, 5:8].tolist() == tok.encode("3\n", add_bos=False) + [tok.eos_id]
    assert (targets[0, 8:] == -100).all()
