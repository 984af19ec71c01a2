"""Train a tiny-core policy from scratch on a built-in task's train split.

    thinkscale train policy --task arithmetic --minutes 9 --out ckpt/

Training is deterministic for a seed and a step count. `--minutes` is turned
into a step count by timing a few steps first; the summary records that count
so that `--steps` reproduces the run exactly on any machine.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

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


def train_steps(
    model: TinyLlama,
    data: Iterator[tuple[str, str]],
    tokenizer: CharTokenizer,
    s: TrainSettings,
    on_log: Callable[[int, float], None] | None = None,
    start_step: int = 0,
    optimizer: torch.optim.Optimizer | None = None,
) -> tuple[list[tuple[int, float]], int, torch.optim.Optimizer]:
    """Run steps [start_step, s.steps); returns the logged losses and the tokens trained on."""
    optimizer = optimizer or _optimizer(model, s)
    model.train()
    curve, tokens = [], 0
    for step in range(start_step, s.steps):
        ids, tgt = make_batch(list(islice(data, s.batch_size)), tokenizer)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, s)
        logits = model(ids)  # (B, T, vocab)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), ignore_index=IGNORE)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        tokens += int((ids != tokenizer.pad_id).sum())
        if step % s.log_every == 0 or step == s.steps - 1:
            curve.append((step, round(loss.item(), 5)))
            if on_log:
                on_log(step, loss.item())
    model.eval()
    return curve, tokens, optimizer


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
    tokenizer = CharTokenizer(DEFAULT_VOCAB)
    config = config or TinyConfig(vocab_size=len(tokenizer))
    model = TinyLlama(config)
    data = task.training_stream(settings.seed)

    if minutes is not None:
        # Time a few steps on a throwaway copy, then fix the step count: the run
        # itself is then deterministic and reproducible with --steps.
        probe = TinyLlama(config)
        probe_steps = 5
        t0 = time.perf_counter()
        train_steps(probe, task.training_stream(settings.seed + 1), tokenizer,
                    TrainSettings(**{**asdict(settings), "steps": probe_steps, "log_every": 10**9}))
        per_step = (time.perf_counter() - t0) / probe_steps
        settings = TrainSettings(**{**asdict(settings), "steps": max(1, int(minutes * 60 / per_step))})

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=settings.steps, desc=f"train {task.name}", unit="step")

    def on_log(step: int, loss: float) -> None:
        if bar is not None:
            bar.n = step + 1
            bar.set_postfix(loss=f"{loss:.4f}")
            bar.refresh()

    t0 = time.perf_counter()
    curve, tokens, _ = train_steps(model, data, tokenizer, settings, on_log=on_log)
    elapsed = time.perf_counter() - t0
    if bar is not None:
        bar.n = settings.steps
        bar.close()
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
                     f"--batch-size {settings.batch_size} --lr {settings.lr}",
    }
    checkpoint.save(model, tokenizer, out, summary)
    return summary
