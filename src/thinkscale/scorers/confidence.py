"""The confidence scorer: the policy's own probability of each step. No training.

A step's score is the geometric mean of the probabilities the model gives its
tokens (exp of their mean log-probability), read by teacher forcing the
prompt and the solution through a tiny-core checkpoint. The solutions of one
problem are scored together in one batch, so a solution's score depends only
on its problem's samples, never on what else ran at the time.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from thinkscale.scorers.base import Scorer, Scores, split_steps
from thinkscale.tiny import checkpoint, worker


class ConfidenceScorer(Scorer):
    name = "confidence"

    def __init__(self, checkpoint_name: str = "arithmetic") -> None:
        self.checkpoint = worker.call(checkpoint.load, checkpoint_name)
        self.tokenizer = self.checkpoint.tokenizer
        config = self.checkpoint.model.config
        self._flops_per_token = 2.0 * (config.num_parameters() - config.vocab_size * config.hidden_size)

    async def score(self, prompt: str, solutions: list[str], step_delimiter: str) -> Scores:
        return await worker.run(self._score, prompt, solutions, step_delimiter)

    @torch.inference_mode()
    def _score(self, prompt: str, solutions: list[str], step_delimiter: str) -> Scores:
        if not solutions:
            return Scores([], 0)
        tok = self.tokenizer
        prompt_ids = tok.encode(prompt)
        rows, spans = [], []
        for solution in solutions:
            ids, bounds = list(prompt_ids), []
            for step in split_steps(solution, step_delimiter):
                start = len(ids)
                ids += tok.encode(step, add_bos=False)
                bounds.append((start, len(ids)))
            rows.append(ids)
            spans.append(bounds)
        width = max(map(len, rows))
        batch = torch.full((len(rows), width), tok.pad_id, dtype=torch.long)
        for i, ids in enumerate(rows):
            batch[i, : len(ids)] = torch.tensor(ids)
        logprobs = F.log_softmax(self.checkpoint.model(batch).float(), dim=-1)  # (B, T, vocab)
        # token t is predicted at position t - 1
        token_lp = logprobs[:, :-1].gather(-1, batch[:, 1:, None])[..., 0]  # (B, T-1)
        per_step = []
        for i, bounds in enumerate(spans):
            per_step.append([math.exp(float(token_lp[i, a - 1:b - 1].mean())) for a, b in bounds])
        scored = sum(map(len, rows))
        return Scores(per_step, scored, self._flops_per_token * scored)
