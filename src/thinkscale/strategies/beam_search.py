"""Step-level beam search guided by a reward model.

Each round, every kept partial solution is extended by one step, `n / width`
times, so that `n` candidate steps are alive (the first round draws `n`
first steps). The reward model scores each candidate's path and the best
`width` open paths are kept for the next round. Paths that finish leave the
beam as solutions; the search ends when no open path is left, at `max_depth`,
or when the budget cannot buy another round. A `lookahead` of k rolls each
candidate k more steps forward at temperature 0 and ranks it by the score
there (the rollout costs tokens but is not kept in the trace).

The same loop run as `n / width` independent groups that each keep one path
is DVTS (strategies/dvts.py).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

from thinkscale.budget import Budget
from thinkscale.policies.base import Policy
from thinkscale.scorers.base import Scorer
from thinkscale.strategies.base import Search
from thinkscale.strategies.steps import StepSettings, choose, expand, score_paths, settled
from thinkscale.tasks.base import Problem, Task
from thinkscale.trace import Node, Trace


@dataclass(frozen=True)
class BeamSearchSettings(StepSettings):
    n: int = 16  # candidate steps alive per round
    width: int = 4  # paths kept per round (M); each grows n / width candidates
    lookahead: int = 0  # extra greedy steps before scoring a candidate

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.width < 1 or self.n < self.width or self.n % self.width:
            raise ValueError(f"n ({self.n}) must be a positive multiple of width ({self.width})")
        if self.lookahead < 0:
            raise ValueError(f"lookahead must be >= 0, got {self.lookahead}")


async def grouped_search(search: Search, settings: BeamSearchSettings, groups: int, keep: int, grow: int) -> None:
    """`groups` independent beams that each keep `keep` paths and grow each one `grow` ways per round."""
    root = search.trace.root.id
    frontiers: list[list[int]] = [[root] for _ in range(groups)]
    for _ in range(settings.max_depth):
        asks = [(g, node_id, keep * grow if node_id == root else grow)
                for g, frontier in enumerate(frontiers) for node_id in frontier]
        if not asks:
            break
        grown = await expand(search, [(node_id, n, g) for g, node_id, n in asks], settings)
        if grown is None:
            break  # the budget cannot buy another round
        open_by_group: list[list[Node]] = [[] for _ in range(groups)]
        for (g, _, _), children in zip(asks, grown):
            open_by_group[g].extend(c for c in children if not c.terminal)
        if await settled(search, [c for children in grown for c in children], settings):
            break  # a finished solution scores above stop_score
        candidates = [c for group in open_by_group for c in group]
        rank = await _rank(search, candidates, settings)
        frontiers = [[c.id for c in sorted(group, key=lambda c: (-rank[c.id], c.id))[:keep]]
                     for group in open_by_group]
        kept = {node_id for frontier in frontiers for node_id in frontier}
        search.emit("pruned", [c for c in candidates if c.id not in kept])
    await choose(search, settings)


async def _rank(search: Search, candidates: list[Node], settings: BeamSearchSettings) -> dict[int, float]:
    """Each candidate's ranking score: its path's, or with lookahead the score a few greedy steps on.

    A candidate the budget could not pay to score ranks last.
    """
    name = search.scorer.name
    await score_paths(search, candidates, settings)
    rank = {c.id: c.scores.get(name, float("-inf")) for c in candidates}
    if not settings.lookahead or not candidates:
        return rank
    trace = search.trace
    greedy = replace(settings, temperature=0.0)
    shadow = copy.copy(trace)  # rollouts grow a copy of the tree: they cost tokens but are not kept
    shadow.nodes = [copy.deepcopy(n) for n in trace.nodes]
    shadow.usage = trace.usage  # what they cost is spent all the same
    ahead = replace(search, trace=shadow, listener=None)  # rollouts are not part of the search's tree
    heads = {c.id: c.id for c in candidates}
    for _ in range(settings.lookahead):
        live = sorted({h for h in heads.values() if not shadow.nodes[h].terminal})
        grown = await expand(ahead, [(h, 1, -1) for h in live], greedy) if live else None
        if grown is None:
            break
        moved = {h: kids[0].id for h, kids in zip(live, grown) if kids}
        heads = {c: moved.get(h, h) for c, h in heads.items()}
    ends = [shadow.nodes[h] for h in sorted(set(heads.values())) if h >= len(trace.nodes)]
    await score_paths(ahead, ends, settings)
    for c, h in heads.items():
        if h >= len(trace.nodes) and name in shadow.nodes[h].scores:
            rank[c] = shadow.nodes[h].scores[name]
    search.stop(shadow.stopped_by)
    return rank


class BeamSearch:
    name = "beam_search"
    Settings = BeamSearchSettings

    def __init__(self, settings: BeamSearchSettings | None = None) -> None:
        self.settings = settings or BeamSearchSettings()

    async def solve(self, problem: Problem, task: Task, policy: Policy, scorer: Scorer | None,
                    budget: Budget, seed: int) -> Trace:
        s = self.settings
        search = Search.start(self.name, s, problem, task, policy, scorer, budget, seed, needs_scorer=True)
        groups, keep, grow = self.layout(s)
        await grouped_search(search, s, groups=groups, keep=keep, grow=grow)
        return search.trace

    @staticmethod
    def layout(s: BeamSearchSettings) -> tuple[int, int, int]:
        """(independent groups, paths each keeps, candidates each kept path grows): one beam of width paths."""
        return 1, s.width, s.n // s.width
