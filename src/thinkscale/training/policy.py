"""Train a tiny-core policy from scratch on a built-in task's train split.

    thinkscale train policy --task arithmetic --minutes 9 --out ckpt/

Training is deterministic for a seed and a step count. `--minutes` is turned
into a step count by timing a few steps first; the summary records that count
so that `--steps` reproduces the run exactly on any machine.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, replace
from itertools import islice
from pathlib import Path
from typing import Callable, Iterator, Sequence, TypeVar

import torch
import torch.nn.functional as F

from thinkscale import torch_thread
from thinkscale.tasks import Task
from thinkscale.tiny import checkpoint
from thinkscale.tiny.model import TinyConfig, TinyLlama
from thinkscale.tiny.tokenizer import DEFAULT_VOCAB, CharTokenizer

IGNORE = -100


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 500
    batch_size: int = 128
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.1
    seed: int = 0
    threads: int = 1
    log_every: int = 10


def make_batch(pairs: list[tuple[str, str]], tokenizer: CharTokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets; the loss falls on the solution and its end token only."""
    rows, targets = [], []
    for prompt, solution in pairs:
        p = tokenizer.encode(prompt)
        s = tokenizer.encode(solution, add_bos=False) + [tokenizer.eos_id]
        seq = p + s
        rows.append(seq[:-1])
        targets.append([IGNORE] * (len(p) - 1) + s)
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tokenizer.pad_id, dtype=torch.long)
    tgt = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, (r, t) in enumerate(zip(rows, targets)):
        ids[i, : len(r)] = torch.tensor(r)
        tgt[i, : len(t)] = torch.tensor(t)
    return ids, tgt


def lr_at(step: int, s: TrainSettings) -> float:
    if step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    progress = (step - s.warmup_steps) / max(1, s.steps - s.warmup_steps)
    return s.lr * (s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _optimizer(model: TinyLlama, s: TrainSettings) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": s.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=s.lr, betas=(0.9, 0.95),
    )


Batch = tuple[torch.Tensor, ...]  # the first tensor is always the input ids (B, T)


class StepProgress:
    """A progress bar over optimizer steps that shows the latest loss (or nothing, if off)."""

    def __init__(self, total: int, desc: str, enabled: bool = True) -> None:
        self.total = total
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="step")

    def __call__(self, step: int, loss: float) -> None:
        if self.bar is not None:
            self.bar.n = step + 1
            self.bar.set_postfix(loss=f"{loss:.4f}")
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.n = self.total
            self.bar.close()


def lm_loss(model: TinyLlama, batch: Batch) -> torch.Tensor:
    """Next-token cross-entropy where the targets are not IGNORE."""
    ids, tgt = batch
    logits = model(ids)  # (B, T, vocab)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), ignore_index=IGNORE)


def lm_batches(data: Iterator[tuple[str, str]], tokenizer: CharTokenizer, batch_size: int) -> Iterator[Batch]:
    while True:
        yield make_batch(list(islice(data, batch_size)), tokenizer)


T = TypeVar("T")


def epochs(items: Sequence[T], batch_size: int, seed: int) -> Iterator[list[T]]:
    """Endless full batches of `items`, each epoch in a new order drawn from `seed`."""
    if len(items) < batch_size:
        raise ValueError(f"{len(items)} training rows are fewer than one batch of {batch_size}")
    rng = random.Random(seed)
    order = list(range(len(items)))
    while True:
        rng.shuffle(order)
        for i in range(0, len(order) - batch_size + 1, batch_size):
            yield [items[j] for j in order[i:i + batch_size]]


def train_steps(
    model: TinyLlama,
    batches: Iterator[Batch],
    loss_fn: Callable[[TinyLlama, Batch], torch.Tensor],
    pad_id: int,
    s: TrainSettings,
    on_log: Callable[[int, float], None] | None = None,
) -> tuple[list[tuple[int, float]], int]:
    """Run s.steps optimizer steps; returns the logged losses and the tokens trained on."""
    optimizer = _optimizer(model, s)
    model.train()
    curve, tokens = [], 0
    for step in range(s.steps):
        torch_thread.check_interrupt()
        batch = next(batches)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, s)
        loss = loss_fn(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        tokens += int((batch[0] != pad_id).sum())
        if step % s.log_every == 0 or step == s.steps - 1:
            curve.append((step, round(loss.item(), 5)))
            if on_log:
                on_log(step, loss.item())
    model.eval()
    return curve, tokens


@torch_thread.on_torch_thread
def train_policy(
    task: Task,
    out: str | Path,
    settings: TrainSettings,
    minutes: float | None = None,
    config: TinyConfig | None = None,
    progress: bool = True,
) -> dict:
    """Train from scratch and write a checkpoint with a training summary; returns the summary."""
    torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    tokenizer = CharTokenizer(DEFAULT_VOCAB + [c for c in task.extra_characters if c not in DEFAULT_VOCAB])
    config = replace(config or TinyConfig(), vocab_size=len(tokenizer))
    model = TinyLlama(config)
    data = task.training_stream(settings.seed)

    if minutes is not None:
        # Time a few steps on a throwaway copy, then fix the step count: the run
        # itself is then deterministic and reproducible with --steps.
        probe = TinyLlama(config)
        probe_steps = 5
        t0 = time.perf_counter()
        train_steps(probe, lm_batches(task.training_stream(settings.seed + 1), tokenizer, settings.batch_size),
                    lm_loss, tokenizer.pad_id,
                    TrainSettings(**{**asdict(settings), "steps": probe_steps, "log_every": 10**9}))
        per_step = (time.perf_counter() - t0) / probe_steps
        settings = TrainSettings(**{**asdict(settings), "steps": max(1, int(minutes * 60 / per_step))})

    on_log = StepProgress(settings.steps, f"train {task.name}", enabled=progress)
    t0 = time.perf_counter()
    curve, tokens = train_steps(model, lm_batches(data, tokenizer, settings.batch_size), lm_loss,
                                tokenizer.pad_id, settings, on_log=on_log)
    elapsed = time.perf_counter() - t0
    on_log.close()
    summary = {
        "task": task.name,
        "settings": asdict(settings),
        "parameters": config.num_parameters(),
        "steps": settings.steps,
        "train_seconds": round(elapsed, 1),
        "tokens": tokens,
        "tokens_per_s": round(tokens / elapsed, 1),
        "final_loss": curve[-1][1],
        "loss_curve": curve,
        "torch": torch.__version__,
        "reproduce": f"thinkscale train policy --task {task.name} --steps {settings.steps} --seed {settings.seed} "
                     f"--batch-size {settings.batch_size} --lr {settings.lr}" + _size_flags(config)
                     + (" --tool-calls" if getattr(task, "tool_calls", False) else ""),
    }
    checkpoint.save(model, tokenizer, out, summary)
    return summary


def _size_flags(config: TinyConfig) -> str:
    """The `train policy` flags for a model size other than the shipped one."""
    default = TinyConfig()
    flags = {"--hidden-size": (config.hidden_size, default.hidden_size),
             "--intermediate-size": (config.intermediate_size, 3 * config.hidden_size),
             "--layers": (config.num_hidden_layers, default.num_hidden_layers),
             "--heads": (config.num_attention_heads, default.num_attention_heads)}
    return "".join(f" {flag} {value}" for flag, (value, usual) in flags.items() if value != usual)


@torch_thread.on_torch_thread
def finetune_policy(init: str | Path, pairs: list[tuple[str, str]], out: str | Path, settings: TrainSettings,
                    progress: bool = True, about: dict | None = None) -> dict:
    """Fine-tune the policy checkpoint `init` on (prompt, solution) pairs; writes the checkpoint to `out`.

    The loss falls on the solutions only, as in `train_policy`. With fewer
    pairs than a batch, the batch is the pairs themselves. `about` is kept in
    the training summary (where the pairs came from).
    """
    torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    if not pairs:
        raise ValueError("no training pairs: nothing to fine-tune on")
    start = checkpoint.load(init)
    model, tokenizer = start.model, start.tokenizer
    batch_size = min(settings.batch_size, len(pairs))
    batches = (make_batch(rows, tokenizer) for rows in epochs(pairs, batch_size, settings.seed))
    on_log = StepProgress(settings.steps, "fine-tune policy", enabled=progress)
    t0 = time.perf_counter()
    curve, tokens = train_steps(model, batches, lm_loss, tokenizer.pad_id, settings, on_log=on_log)
    elapsed = time.perf_counter() - t0
    on_log.close()
    summary = {
        "init": str(start.path), "settings": asdict(settings), "pairs": len(pairs), "batch_size": batch_size,
        "steps": settings.steps, "train_seconds": round(elapsed, 1), "tokens": tokens,
        "final_loss": curve[-1][1] if curve else None, "loss_curve": curve, "torch": torch.__version__,
        **(about or {}),
    }
    checkpoint.save(model, tokenizer, out, summary)
    return summary
