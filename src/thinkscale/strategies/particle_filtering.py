"""Particle filtering over reasoning steps, the reward model as likelihood (Puri et al., arXiv 2502.01618).

`n` particles (partial solutions) start at the prompt. Each round every open
particle grows one step; the reward model scores each new path, and a
particle's weight is its score raised to 1 / `temperature` (the PRM's score
as a likelihood; a low temperature trusts it more). Then the particles are
resampled in proportion to their weights, so that likely paths are copied
and unlikely ones die out, instead of keeping the top few greedily as beam
search does. With `resample_ess` below 1, resampling happens only when the
effective sample size 1 / sum(w^2) falls below that share of `n`. A finished
particle keeps its weight and stays in the population; the search ends when
every particle has finished, at `max_depth`, or when the budget cannot buy
another round. The answer is chosen among the finished solutions as
`choose` says ("weighted": scores summed per answer).

Resampling draws are seeded from the trace's seed: same seed, same trace.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from thinkscale.budget import Budget
from thinkscale.policies.base import Policy
from thinkscale.scorers.base import Scorer
from thinkscale.seeds import derive_seed
from thinkscale.strategies.base import Search
from thinkscale.strategies.steps import StepSettings, choose, expand, score_paths, settled
from thinkscale.tasks.base import Problem, Task
from thinkscale.trace import Trace


@dataclass(frozen=True)
class ParticleFilteringSettings(StepSettings):
    n: int = 16  # particles
    likelihood_temperature: float = 1.0  # weights are score ** (1 / this)
    resample_ess: float = 1.0  # resample when ESS < this share of n (1: every round, 0: never)
    choose: str = "weighted"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n < 1:
            raise ValueError(f"n must be at least 1, got {self.n}")
        if self.likelihood_temperature <= 0:
            raise ValueError(f"likelihood_temperature must be greater than 0, got {self.likelihood_temperature}")
        if not 0 <= self.resample_ess <= 1:
            raise ValueError(f"resample_ess must be between 0 and 1, got {self.resample_ess}")


def weights(scores: list[float], temperature: float) -> list[float]:
    """Normalised weights score ** (1 / temperature); all equal when every score is 0."""
    logs = [math.log(s) / temperature if s > 0 else -math.inf for s in scores]
    top = max(logs)
    if top == -math.inf:
        return [1.0 / len(scores)] * len(scores)
    raw = [math.exp(x - top) for x in logs]
    total = sum(raw)
    return [r / total for r in raw]


def effective_sample_size(w: list[float]) -> float:
    return 1.0 / sum(x * x for x in w)


def systematic_resample(w: list[float], rng: random.Random) -> list[int]:
    """Indices of len(w) draws in proportion to `w`, with one uniform offset (low variance, deterministic order)."""
    n, start = len(w), rng.random() / len(w)
    out, cumulative, i = [], w[0], 0
    for k in range(n):
        point = start + k / n
        while point > cumulative and i < n - 1:
            i += 1
            cumulative += w[i]
        out.append(i)
    return out


class ParticleFiltering:
    name = "particle_filtering"
    Settings = ParticleFilteringSettings

    def __init__(self, settings: ParticleFilteringSettings | None = None) -> None:
        self.settings = settings or ParticleFilteringSettings()

    async def solve(self, problem: Problem, task: Task, policy: Policy, scorer: Scorer | None,
                    budget: Budget, seed: int) -> Trace:
        s = self.settings
        search = Search.start(self.name, s, problem, task, policy, scorer, budget, seed, needs_scorer=True)
        trace, name = search.trace, scorer.name
        particles = [trace.root.id] * s.n  # node ids; a node may carry several particles
        for depth in range(s.max_depth):
            open_ = [i for i, node_id in enumerate(particles) if not trace.nodes[node_id].terminal]
            if not open_:
                break
            asks = [(particles[i], 1, f"{depth}/{i}") for i in open_]
            grown = await expand(search, asks, s)
            if grown is None:
                break  # the budget cannot buy another round
            for i, children in zip(open_, grown):
                if children:  # else the path was complete: its node became terminal
                    particles[i] = children[0].id
            fresh = [trace.nodes[particles[i]] for i in open_]
            await score_paths(search, [n for n in fresh if name not in n.scores], s)
            if await settled(search, fresh, s):
                break  # a finished solution scores above stop_score
            scores = [trace.nodes[p].scores.get(name, 0.0) if self._alive(trace, p) else 0.0 for p in particles]
            w = weights(scores, s.likelihood_temperature)
            if effective_sample_size(w) < s.resample_ess * s.n or s.resample_ess == 1.0:
                picks = systematic_resample(w, random.Random(derive_seed(seed, "resample", depth)))
                survivors = {particles[i] for i in picks}
                search.emit("pruned", [trace.nodes[p] for p in set(particles) - survivors])
                particles = [particles[i] for i in picks]
        await choose(search, s)
        return trace

    @staticmethod
    def _alive(trace: Trace, node_id: int) -> bool:
        """A particle still worth weight: open, or finished with an answer (a truncated one is dead)."""
        node = trace.nodes[node_id]
        return not node.terminal or (node.finished and node.answer is not None)
