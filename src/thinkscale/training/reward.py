"""Train a tiny-core reward model (PRM or ORM) on labels made from the policy's own solutions.

    thinkscale train prm --task arithmetic --problems 1500 --steps 600

A reward model is a standard Llama checkpoint of the tiny family, so it loads
in transformers like the policy does; `reward_model.json` beside it says which
kind it is, which task it was trained for and how it scores. Two heads:

- "verdict" (Math-Shepherd's): after each step's last token the model predicts
  one of two label tokens, `+` (the solution can still succeed) or `-`; the
  step's score is P(+) over the two. It learns the step targets (hard labels
  up to the first error, or the soft Monte-Carlo values).
- "likelihood" (a generative verifier): the model keeps its language-model
  head; a step's score is the lowest probability it gives any token of the
  step, so one wrong digit sinks the step. It learns verified solutions by
  likelihood, and pushes down the failed steps' tokens: each failed step's
  weakest one (`unlearn="weakest"`), or every one (`unlearn="every"`).

An outcome reward model (ORM) is the same training on records whose one
"step" is the whole solution, valued by its verdict (`kind="orm"`).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F

from thinkscale import torch_thread
from thinkscale.scorers.reward_head import BAD, GOOD, HEADS, REWARD_META, step_probabilities
from thinkscale.tiny import checkpoint
from thinkscale.tiny.model import TinyLlama
from thinkscale.tiny.tokenizer import CharTokenizer
from thinkscale.training.policy import IGNORE, Batch, StepProgress, TrainSettings, epochs, train_steps
from thinkscale.training.step_labels import StepLabels


def step_targets(record: StepLabels, target: str) -> list[float | None]:
    """What the PRM learns after each step; None where a step does not count.

    "soft": the Monte-Carlo value itself (Math-Shepherd's soft estimation).
    "hard": 1 while some continuation still verifies, 0 at the first step from
    which none did, and nothing after it (the first error ends the labels, as in
    PRM800K). This holds for verified solutions too: one that reaches the right
    number through a wrong step is luck, and a completer that reasons correctly
    from the wrong step finds it out. Soft values mostly teach how much work is
    left, which ranks a wrong shortcut above an honest step; hard labels up to
    the first error teach whether the step was valid.
    """
    if target == "soft":
        return list(record.values)
    if target != "hard":
        raise ValueError(f"unknown PRM target {target!r}; valid: soft, hard")
    out: list[float | None] = []
    for v in record.values:
        out.append(1.0 if v > 0 else 0.0)
        if v <= 0:
            break
    return out + [None] * (len(record.values) - len(out))


def prm_batch(records: list[StepLabels], tokenizer: CharTokenizer, target: str = "hard") -> Batch:
    """Verdict head: input ids (B, T), where a labelled step ends (B, T) bool, and its target there (B, T)."""
    encoded = [tokenizer.encode_steps(r.prompt, r.steps) for r in records]
    batch = tokenizer.pad([ids for ids, _ in encoded])
    at_end = torch.zeros(batch.shape, dtype=torch.bool)
    targets = torch.zeros(batch.shape)
    for i, ((_, spans), r) in enumerate(zip(encoded, records)):
        for (_, end), t in zip(spans, step_targets(r, target)):
            if t is not None:  # the step's last token: the verdict comes next
                at_end[i, end - 1] = True
                targets[i, end - 1] = t
    return batch, at_end, targets


def likelihood_batch(records: list[StepLabels], tokenizer: CharTokenizer, target: str = "hard") -> Batch:
    """Likelihood head: ids (B, T); next-token targets (B, T), IGNORE outside verified solutions'
    steps; and (B, T) marks on the positions that predict the tokens of each failed step: k on the k-th
    failed step of its row, 0 elsewhere (hard targets mark only the first failed step; soft ones every step
    whose value is below 1/2)."""
    encoded = [tokenizer.encode_steps(r.prompt, r.steps) for r in records]
    batch = tokenizer.pad([ids for ids, _ in encoded])
    goal = torch.full(batch.shape, IGNORE, dtype=torch.long)
    failed = torch.zeros(batch.shape, dtype=torch.long)
    for i, ((ids, spans), r) in enumerate(zip(encoded, records)):
        targets = step_targets(r, target)
        verified = r.values[-1] >= 1.0 and all(t is not None and t >= 0.5 for t in targets)
        k = 0
        for (start, end), t in zip(spans, targets):
            if verified:  # token t is predicted at position t - 1
                goal[i, start - 1:end - 1] = torch.tensor(ids[start:end])
            elif t is not None and t < 0.5:
                k += 1
                failed[i, start - 1:end - 1] = k
    return batch, goal, failed


UNLEARN = ("weakest", "every")


def likelihood_loss(model: TinyLlama, batch: Batch, unlearn: str = "weakest") -> torch.Tensor:
    """Learn verified solutions by likelihood; push the tokens of failed steps down.

    "weakest": a step scores the lowest probability of its tokens, so a failed
    step is taught through that token alone (-log(1 - p_min)), each failed
    step of a row through its own. That is the wrong digit where the model
    already doubts it, and never the many tokens of the step that were right.

    "every": -log(1 - p) on every token of every failed step, their mean added
    to the mean loss of the verified tokens (so the two weigh alike however
    few verified solutions a batch holds). Where the model is sure of a wrong
    token, its weakest is elsewhere and "weakest" never reaches it: countdown's
    policy writes the target as its last line's result, true or not, with
    probability ~1, and only "every" teaches a reward model to doubt it. The
    tokens a failed step shares with verified ones are pushed both ways and
    settle where the two meet.
    """
    if unlearn not in UNLEARN:
        raise ValueError(f"unknown unlearning {unlearn!r}; valid: {', '.join(UNLEARN)}")
    ids, goal, failed = batch
    logits = model(ids).float()
    learn = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), goal.reshape(-1), ignore_index=IGNORE,
                            reduction="sum")
    count = (goal != IGNORE).sum()
    token_lp = F.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None])[..., 0]  # (B, T-1)
    step = failed[:, :-1]
    if unlearn == "every":
        doubted = token_lp[step > 0].clamp(max=-1e-6)
        pushed = -torch.log(-torch.expm1(doubted)).mean() if doubted.numel() else token_lp.new_zeros(())
        return learn / count.clamp(min=1) + pushed
    if step.any():
        slots = int(step.max()) + 1  # a row's failed steps 1..max, and 0 for every other position
        index = (torch.arange(step.shape[0])[:, None] * slots + step).reshape(-1)
        lowest = token_lp.new_zeros(step.shape[0] * slots).scatter_reduce(0, index, token_lp.reshape(-1), "amin",
                                                                           include_self=False)
        marked = torch.zeros(step.shape[0] * slots, dtype=torch.bool).index_fill_(0, index[step.reshape(-1) > 0],
                                                                                  True)
        weakest = lowest[marked].clamp(max=-1e-6)
        pushed = -torch.log(-torch.expm1(weakest))  # -log(1 - p_min), one a failed step
        return (learn + pushed.sum()) / (count + marked.sum())
    return learn / count.clamp(min=1)


def prm_loss_for(good: int, bad: int):
    def prm_loss(model: TinyLlama, batch: Batch) -> torch.Tensor:
        ids, at_end, target = batch
        logp = step_probabilities(model, ids, good, bad)  # (B, T, 2)
        loss = -(target * logp[..., 0] + (1 - target) * logp[..., 1])  # cross-entropy with a soft target
        return loss[at_end].mean()

    return prm_loss


def _batches(records: list[StepLabels], tokenizer: CharTokenizer, batch_size: int, seed: int,
             target: str, head: str) -> Iterator[Batch]:
    make = likelihood_batch if head == "likelihood" else prm_batch
    return (make(rows, tokenizer, target) for rows in epochs(records, batch_size, seed))


@torch_thread.on_torch_thread
def train_prm(task_name: str, records: list[StepLabels], out: str | Path, settings: TrainSettings,
              init: str, label_info: dict, progress: bool = True, kind: str = "prm", target: str = "hard",
              head: str = "likelihood", unlearn: str = "weakest") -> dict:
    """Fine-tune the checkpoint `init` into a reward model; writes the checkpoint and reward_model.json.
    `unlearn` (the likelihood head's): which tokens of a failed step are pushed down (`likelihood_loss`)."""
    if head not in HEADS:
        raise ValueError(f"unknown reward-model head {head!r}; valid: {', '.join(HEADS)}")
    if unlearn not in UNLEARN:
        raise ValueError(f"unknown unlearning {unlearn!r}; valid: {', '.join(UNLEARN)}")
    if head == "verdict" and unlearn != "weakest":
        raise ValueError(f"unlearn={unlearn!r} is the likelihood head's; a verdict head learns its labels")
    if len(records) < settings.batch_size:
        raise ValueError(f"{len(records)} step-label records are fewer than one batch of {settings.batch_size}")
    torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    start = checkpoint.load(init)
    model, tokenizer = start.model, start.tokenizer
    good, bad = tokenizer.ids[GOOD], tokenizer.ids[BAD]
    if head == "verdict":
        with torch.no_grad():  # the two label rows become a fresh value head: P(+) starts at 1/2 everywhere,
            model.lm_head.weight[[good, bad]] = 0.0  # free of what "+" and "-" meant to the language model
    loss = partial(likelihood_loss, unlearn=unlearn) if head == "likelihood" else prm_loss_for(good, bad)
    on_log = StepProgress(settings.steps, f"train {kind} {task_name}", enabled=progress)
    t0 = time.perf_counter()
    step_targets(records[0], target)  # an unknown target fails before any work
    curve, tokens = train_steps(model, _batches(records, tokenizer, settings.batch_size, settings.seed, target, head),
                                loss, tokenizer.pad_id, settings, on_log=on_log)
    elapsed = time.perf_counter() - t0
    on_log.close()
    summary = {
        "task": task_name, "kind": kind, "target": target, "head": head,
        **({"unlearn": unlearn} if head == "likelihood" else {}), "init": str(start.path.name),
        "settings": asdict(settings),
        "records": len(records), "steps": settings.steps, "train_seconds": round(elapsed, 1), "tokens": tokens,
        "tokens_per_s": round(tokens / elapsed, 1) if tokens else 0.0,
        "final_loss": curve[-1][1] if curve else None, "loss_curve": curve,
        "labels": label_info, "torch": torch.__version__,
    }
    out = checkpoint.save(model, tokenizer, out, summary)
    meta = {"kind": kind, "task": task_name, "head": head, "label_tokens": [GOOD, BAD]}
    (Path(out) / REWARD_META).write_text(json.dumps(meta, indent=1))
    return summary
