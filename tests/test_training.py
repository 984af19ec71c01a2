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


def test_every_trainer_runs_its_torch_work_on_the_one_torch_thread(tmp_path):
    """Training after search in one process must not start a second OpenMP team (improve's rounds ran 1.9x slower)."""
    import threading

    from thinkscale import torch_thread
    from thinkscale.training.policy import finetune_policy
    from thinkscale.training.reward import train_prm
    from thinkscale.training.rl import RLSettings, train_grpo
    from thinkscale.training.step_labels import StepLabels

    threads: set[str] = set()
    hook = torch.nn.modules.module.register_module_forward_hook(
        lambda *_: threads.add(threading.current_thread().name))
    try:
        task = get_task("arithmetic")
        train_policy(task, tmp_path / "p", TrainSettings(steps=1, batch_size=4), config=SMALL, progress=False)
        finetune_policy(tmp_path / "p", [("1+2=", "3")], tmp_path / "f", TrainSettings(steps=1, batch_size=1),
                        progress=False)
        train_grpo(tmp_path / "p", task, task.examples("train", 2), tmp_path / "g",
                   RLSettings(steps=1, prompts=2, group=2, max_tokens=8), progress=False)
        labels = [StepLabels("p0", "1+2=", ["3\n"], [1.0], [1])]
        train_prm("arithmetic", labels, tmp_path / "r", TrainSettings(steps=1, batch_size=1), init=str(tmp_path / "p"),
                  label_info={}, progress=False)
    finally:
        hook.remove()
    assert threads == {"thinkscale-torch"}
    assert torch_thread.call(lambda: torch_thread.call(threading.current_thread)).name == "thinkscale-torch"


def test_an_interrupted_training_stops_at_its_next_step_and_the_process_exits_cleanly():
    """Ctrl-C while a trainer runs on the torch thread: it stops at its next step, and the process does not
    leave while that thread is inside torch code (that aborts it: "terminate called without an active
    exception")."""
    import signal
    import subprocess
    import sys
    import time

    code = ("import torch\nfrom thinkscale import torch_thread\ntorch.set_num_threads(1)\n"
            "def train():\n    a = torch.randn(300, 300, requires_grad=True)\n    while True:\n"
            "        torch_thread.check_interrupt()\n        (a @ a).sum().backward()\n"
            "print('ready', flush=True)\ntorch_thread.call(train)\n")
    # Ctrl-C's default in the child whatever this process was started with: a shell's background job ignores
    # SIGINT, the child would inherit that, and Python then never raises KeyboardInterrupt
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert child.stdout.readline().strip() == "ready"
        time.sleep(0.5)
        started = time.perf_counter()
        child.send_signal(signal.SIGINT)
        child.wait(timeout=30)
        assert time.perf_counter() - started < 10
        errors = child.stderr.read()
        assert "KeyboardInterrupt" in errors and "terminate called" not in errors
        assert child.returncode == -signal.SIGINT  # Python's own exit on an unhandled Ctrl-C, not an abort
    finally:
        child.kill()
