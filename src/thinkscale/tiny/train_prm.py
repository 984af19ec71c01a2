"""Train a tiny-core process reward model (PRM) on Monte-Carlo step labels.

    thinkscale train prm --task arithmetic --problems 1500 --steps 600

The PRM is a standard Llama checkpoint of the tiny family, started from the
task's policy. After each step's last token it predicts one of two label
tokens, `+` (the step can still lead to a verified answer) or `-`; the score
of a step is P(+) over those two, and training fits it to the step's
Monte-Carlo value (a soft target, as Math-Shepherd's soft estimation). So the
PRM loads in transformers like the policy does, and `prm.json` beside it says
which task it was trained for and on what.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F

from thinkscale.flywheel.step_labels import StepLabels
from thinkscale.tiny import checkpoint
from thinkscale.tiny.model import TinyLlama
from thinkscale.tiny.tokenizer import CharTokenizer
from thinkscale.tiny.train import Batch, StepProgress, TrainSettings, train_steps

GOOD, BAD = "+", "-"  # the label tokens


def prm_batch(records: list[StepLabels], tokenizer: CharTokenizer) -> Batch:
    """Input ids (B, T), where each step ends (B, T) bool, and the step values there (B, T)."""
    encoded = [tokenizer.encode_steps(r.prompt, r.steps) for r in records]
    batch = tokenizer.pad([ids for ids, _ in encoded])
    at_end = torch.zeros(batch.shape, dtype=torch.bool)
    target = torch.zeros(batch.shape)
    for i, ((_, spans), r) in enumerate(zip(encoded, records)):
        marks = [end - 1 for _, end in spans]  # the step's last token: the PRM's verdict comes next
        at_end[i, marks] = True
        target[i, marks] = torch.tensor(r.values, dtype=torch.float)
    return batch, at_end, target


def step_probabilities(model: TinyLlama, ids: torch.Tensor, good: int, bad: int) -> torch.Tensor:
    """log P(+) and log P(-) at every position, over the two label tokens: (B, T, 2)."""
    logits = model(ids)  # (B, T, vocab)
    return F.log_softmax(logits[..., [good, bad]].float(), dim=-1)


def prm_loss_for(good: int, bad: int):
    def prm_loss(model: TinyLlama, batch: Batch) -> torch.Tensor:
        ids, at_end, target = batch
        logp = step_probabilities(model, ids, good, bad)  # (B, T, 2)
        loss = -(target * logp[..., 0] + (1 - target) * logp[..., 1])  # cross-entropy with a soft target
        return loss[at_end].mean()

    return prm_loss


def _batches(records: list[StepLabels], tokenizer: CharTokenizer, batch_size: int, seed: int) -> Iterator[Batch]:
    rng = random.Random(seed)
    order = list(range(len(records)))
    while True:  # epochs, each in a new seeded order
        rng.shuffle(order)
        for i in range(0, len(order) - batch_size + 1, batch_size):
            yield prm_batch([records[j] for j in order[i:i + batch_size]], tokenizer)


def train_prm(task_name: str, records: list[StepLabels], out: str | Path, settings: TrainSettings,
              init: str, label_info: dict, progress: bool = True) -> dict:
    """Fine-tune the policy checkpoint `init` into a PRM; writes the checkpoint and prm.json."""
    if len(records) < settings.batch_size:
        raise ValueError(f"{len(records)} step-label records are fewer than one batch of {settings.batch_size}")
    torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    start = checkpoint.load(init)
    model, tokenizer = start.model, start.tokenizer
    good, bad = tokenizer.ids[GOOD], tokenizer.ids[BAD]
    on_log = StepProgress(settings.steps, f"train prm {task_name}", enabled=progress)
    t0 = time.perf_counter()
    curve, tokens = train_steps(model, _batches(records, tokenizer, settings.batch_size, settings.seed),
                                prm_loss_for(good, bad), tokenizer.pad_id, settings, on_log=on_log)
    elapsed = time.perf_counter() - t0
    on_log.close()
    summary = {
        "task": task_name, "kind": "prm", "init": str(start.path.name), "settings": asdict(settings),
        "records": len(records), "steps": settings.steps, "train_seconds": round(elapsed, 1),
        "tokens_per_s": round(tokens / elapsed, 1), "final_loss": curve[-1][1], "loss_curve": curve,
        "labels": label_info, "torch": torch.__version__,
    }
    out = checkpoint.save(model, tokenizer, out, summary)
    (Path(out) / "prm.json").write_text(json.dumps({"task": task_name, "label_tokens": [GOOD, BAD]}, indent=1))
    return summary
