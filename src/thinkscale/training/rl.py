"""Reinforcement learning with a verifiable reward: GRPO on the tiny core (`improve`'s second method).

    summary = train_grpo("arithmetic", task, examples, "ckpt/rl", RLSettings(steps=100))

Each step draws `prompts` problems (cycling through `examples`, the train
split), samples `group` completions of each with the current policy at
temperature 1 on the engine, and rewards each completion:
- `reward: verifier`: 1 if the task's verifier accepts it, else 0;
- `reward: majority` (TTRL, arXiv 2504.16084): 1 if its answer is the most
  common answer of its group, else 0; no verifier and no reference at all.
Rewards are standardized within each group (GRPO's advantage); a group
whose rewards are all equal carries no signal and is left out. One gradient
step then minimizes, over the completions' tokens,

    -A * log pi(token)  +  kl * (exp(r) - r - 1),  r = log pi_ref(token) - log pi(token)

the policy gradient (on-policy: the samples come from the weights being
trained, so the ratio is 1 and needs no clipping) and the k3 estimate of
KL(pi || pi_ref) to the starting policy, kept as a setting.

The engine copies the weights it samples with, so each step reloads them
(`Engine.reload_weights`; no prefix cache: the weights change). With `kl: 0`
the starting policy is not kept and its log-probabilities are not computed.
What it spent is kept in the summary: tokens sampled, tokens trained on and
their FLOPs (sampling: the forward pass; training: 3x, forward and backward).
"""

from __future__ import annotations

import copy
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from thinkscale import torch_thread
from thinkscale.budget import forward_flops_per_token
from thinkscale.seeds import derive_seed
from thinkscale.tasks.base import Example, Task
from thinkscale.tiny import checkpoint
from thinkscale.tiny.engine import Engine, SampleRequest, SamplingParams
from thinkscale.trace import FINISH_STOP
from thinkscale.training.policy import StepProgress

REWARDS = ("verifier", "majority")


@dataclass(frozen=True)
class RLSettings:
    steps: int = 100
    prompts: int = 16  # problems a step
    group: int = 8  # completions a problem
    lr: float = 1e-4
    kl: float = 0.02  # weight of KL(pi || pi_ref) to the starting policy; 0: none
    reward: Literal["verifier", "majority"] = "verifier"
    max_tokens: int = 128
    seed: int = 0
    threads: int = 1

    def __post_init__(self) -> None:
        if self.reward not in REWARDS:
            raise ValueError(f"unknown reward {self.reward!r}; valid: {', '.join(REWARDS)}")
        if self.group < 2:
            raise ValueError(f"group must be at least 2 (advantages compare completions of a problem), got {self.group}")


def rewards(task: Task, example: Example, texts: list[str], finished: list[bool], kind: str) -> list[float]:
    """The reward of each completion of one problem (see the module's docstring)."""
    if kind == "verifier":
        return [float(done and task.verify(example, text).correct) for text, done in zip(texts, finished)]
    answers = [task.extract_answer(text) if done else None for text, done in zip(texts, finished)]
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return [0.0] * len(texts)
    top = votes.most_common(1)[0][0]
    return [float(a == top) for a in answers]


def token_logprobs(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """log p(ids[:, t] | ids[:, :t]) for t >= 1: (B, T - 1)."""
    logits = model(ids[:, :-1]).float()
    return F.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:, None])[..., 0]


@torch_thread.on_torch_thread
def train_grpo(init: str | Path, task: Task, examples: list[Example], out: str | Path, settings: RLSettings,
               progress: bool = True, about: dict | None = None) -> dict:
    """GRPO from the policy checkpoint `init` on `examples`; writes the checkpoint to `out`, returns its summary."""
    if not examples:
        raise ValueError("no problems to learn from")
    torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    start = checkpoint.load(init)
    model, tokenizer = start.model, start.tokenizer
    reference = None  # without a KL term, the starting policy is not needed
    if settings.kl:
        reference = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, betas=(0.9, 0.95), weight_decay=0.0)
    forward = forward_flops_per_token(model.config.num_parameters(), model.config.vocab_size * model.config.hidden_size)
    bar = StepProgress(settings.steps, "grpo", enabled=progress)
    sampled = trained = 0
    curve: list[tuple[int, float, float]] = []
    t0 = time.perf_counter()
    engine = Engine(model, max_rows=settings.prompts * settings.group)
    for step in range(settings.steps):
        torch_thread.check_interrupt()
        batch = [examples[(step * settings.prompts + i) % len(examples)] for i in range(settings.prompts)]
        if step:
            engine.reload_weights()  # the weights the last step trained
        requests = [SampleRequest(prompt_ids=tuple(tokenizer.encode(e.problem.prompt)), n=settings.group,
                                  params=SamplingParams(temperature=1.0, max_tokens=settings.max_tokens,
                                                        seed=derive_seed(settings.seed, "grpo", step, i)))
                    for i, e in enumerate(batch)]
        with torch.no_grad():
            groups = engine.generate(requests)
        rows, advantages, mean_reward = [], [], 0.0
        for example, request, completions in zip(batch, requests, groups):
            sampled += sum(len(c.token_ids) for c in completions)
            texts = [tokenizer.decode([t for t in c.token_ids if t != tokenizer.eos_id]) for c in completions]
            done = [c.finish_reason == FINISH_STOP for c in completions]
            r = torch.tensor(rewards(task, example, texts, done, settings.reward))
            mean_reward += float(r.mean()) / len(batch)
            if float(r.std()) == 0.0:
                continue  # all equal: no signal
            a = (r - r.mean()) / (r.std() + 1e-4)
            for c, adv in zip(completions, a):
                rows.append((len(request.prompt_ids), list(request.prompt_ids) + list(c.token_ids)))
                advantages.append(float(adv))
        kl_value = 0.0
        if rows:
            ids = tokenizer.pad([seq for _, seq in rows])
            mask = torch.zeros(ids.shape[0], ids.shape[1] - 1)
            for i, (prompt_len, seq) in enumerate(rows):
                mask[i, prompt_len - 1:len(seq) - 1] = 1.0  # the positions that predict completion tokens
            model.train()
            logp = token_logprobs(model, ids)
            if reference is not None:
                with torch.no_grad():
                    ref = token_logprobs(reference, ids)
                ratio = ref - logp
                k3 = torch.exp(ratio) - ratio - 1
            else:
                k3 = torch.zeros_like(logp)
            adv = torch.tensor(advantages)[:, None]
            count = mask.sum()
            loss = (-(adv * logp * mask).sum() + settings.kl * (k3 * mask).sum()) / count
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            model.eval()
            trained += int((ids != tokenizer.pad_id).sum())
            kl_value = float((k3.detach() * mask).sum() / count)
        curve.append((step, round(mean_reward, 4), round(kl_value, 5)))
        bar(step, mean_reward)
    bar.close()
    elapsed = time.perf_counter() - t0
    summary = {
        "init": str(start.path), "method": "grpo", "settings": asdict(settings), "problems": len(examples),
        "steps": settings.steps, "train_seconds": round(elapsed, 1), "sampled_tokens": sampled,
        "tokens": trained, "flops": forward * (sampled + 3 * trained),
        "reward_curve": [(s, r) for s, r, _ in curve], "kl_curve": [(s, k) for s, _, k in curve],
        "torch": torch.__version__, **(about or {}),
    }
    checkpoint.save(model, tokenizer, out, summary)
    return summary
