"""Monte-Carlo tree search over reasoning steps (PUCT, the reward model as value).

Each iteration walks down from the root, at every node taking the child with
the highest PUCT score Q + c * P * sqrt(N_parent) / (1 + N_child), until it
reaches a node not yet expanded; it samples `expansion_width` next steps there
in one call. Each new child is valued by the reward model's score of its
path (aggregated as the settings say), or with `rollouts` > 0 by the mean
score of that many completions sampled from it (they cost tokens; finished
ones join the tree as solutions). The values are backed up to the root. A
finished path is terminal: reaching it again backs up its value once more.
The prior P is the policy's probability of each sibling step where the
backend gives log-probabilities, else uniform. The search stops after
`iterations` (with `iterations: null`, only when the budget is spent: the
way to compare it with other strategies at equal spending; or after a
thousand iterations in a row that only revisit finished paths), when every
path is finished, or when the budget cannot buy the next expansion. If no
path has finished by then, it commits: it follows the child of highest value
from the root, expanding where it must, to the end of one path (within the
budget). The answer is chosen among the finished solutions.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace

from thinkscale.budget import Budget
from thinkscale.policies.base import GenerationRequest, Policy
from thinkscale.scorers.base import Scorer
from thinkscale.seeds import step_seed
from thinkscale.strategies.base import Search, answered
from thinkscale.strategies.steps import StepSettings, choose, expand, score_paths, settled
from thinkscale.tasks.base import Problem, Task
from thinkscale.trace import FINISH_STOP, Node, Trace


IDLE_ITERATIONS = 1000
SPENDING = ("max_generated_tokens", "max_samples", "max_policy_calls", "max_flops", "max_wall_s")  # what ends it


@dataclass(frozen=True)
class MCTSSettings(StepSettings):
    iterations: int | None = 16  # None: until the budget cannot buy the next expansion (a budget is needed)
    expansion_width: int = 4  # next steps sampled at each expansion
    exploration: float = 1.0  # c in PUCT
    rollouts: int = 0  # completions sampled to value a new node (0: the reward model's score of its path)

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.iterations is not None and self.iterations < 1) or self.expansion_width < 1 or self.rollouts < 0 \
                or self.exploration < 0:
            raise ValueError("iterations and expansion_width must be at least 1, rollouts and exploration >= 0")


class _Stats:
    def __init__(self) -> None:
        self.visits: dict[int, int] = {}
        self.value: dict[int, float] = {}  # summed values
        self.prior: dict[int, float] = {}
        self.children: dict[int, list[int]] = {}

    def q(self, node_id: int) -> float:
        n = self.visits.get(node_id, 0)
        return self.value[node_id] / n if n else 0.0

    def backup(self, trace: Trace, node_id: int, value: float, count: int = 1) -> None:
        cur: int | None = node_id
        while cur is not None:
            self.visits[cur] = self.visits.get(cur, 0) + count
            self.value[cur] = self.value.get(cur, 0.0) + value
            cur = trace.nodes[cur].parent


class MCTS:
    name = "mcts"
    Settings = MCTSSettings

    def __init__(self, settings: MCTSSettings | None = None) -> None:
        self.settings = settings or MCTSSettings()

    async def solve(self, problem: Problem, task: Task, policy: Policy, scorer: Scorer | None,
                    budget: Budget, seed: int) -> Trace:
        s = self.settings
        search = Search.start(self.name, s, problem, task, policy, scorer, budget, seed, needs_scorer=True)
        trace, stats = search.trace, _Stats()
        if s.iterations is None and all(getattr(budget, limit) is None for limit in SPENDING):
            raise ValueError("mcts with iterations: null runs until its budget is spent: give it a budget "
                             "(e.g. max_generated_tokens), or a number of iterations")
        idle, done = 0, 0  # iterations in a row that only revisited finished paths (nothing bought); in all
        for iteration in itertools.count() if s.iterations is None else range(s.iterations):
            done = iteration + 1
            leaf = self._select(trace, stats)
            if leaf is None:
                break  # every path is finished or dead
            spent = trace.usage.policy_calls
            if not await self._visit(search, stats, leaf, salt=iteration):
                break
            idle = idle + 1 if trace.usage.policy_calls == spent else 0
            if idle >= IDLE_ITERATIONS:
                break  # the tree keeps choosing paths it has finished: more iterations buy nothing
            if await settled(search, [trace.nodes[c] for c in stats.children.get(leaf, [])] + [trace.nodes[leaf]], s):
                break  # a finished solution scores above stop_score
        if not answered(trace):  # no path finished yet: commit to the best one and follow it to the end
            await self._commit(search, stats, salt=s.iterations or done)
        await choose(search, s)
        return trace

    async def _visit(self, search: Search, stats: _Stats, leaf: int, salt: int) -> bool:
        """Expand `leaf` (or back up its value if it is finished); False when the budget cannot pay for it."""
        s, trace, name = self.settings, search.trace, search.scorer.name
        node = trace.nodes[leaf]
        if node.terminal:
            stats.backup(trace, leaf, node.scores.get(name, 0.0) if node.finished else 0.0)
            return True
        if self._depth(trace, leaf) >= s.max_depth:
            stats.children[leaf] = []  # dead end: too deep to finish
            stats.backup(trace, leaf, 0.0)
            return True
        grown = await expand(search, [(leaf, s.expansion_width, salt)], s)
        if grown is None:
            return False
        (children,) = grown
        stats.children[leaf] = [c.id for c in children]
        self._set_priors(stats, children)
        await score_paths(search, [c for c in children if not c.terminal or c.finished], s)
        for child in children:
            value = await self._value(search, child)
            stats.backup(trace, child.id, value)
        if node.terminal:  # the parent turned out complete: back its own value up too
            stats.backup(trace, leaf, node.scores.get(name, 0.0))
        return True

    async def _commit(self, search: Search, stats: _Stats, salt: int) -> None:
        """Follow the best child by value from the root, expanding where needed, until a path finishes.

        The iterations may end before any path reaches the end (few iterations,
        deep problems); then the search commits to what it values most, as an
        MCTS that plays its best move at every turn, within the budget.
        """
        trace = search.trace
        cur = trace.root.id
        while not trace.nodes[cur].terminal:
            if cur not in stats.children:
                salt += 1
                if not await self._visit(search, stats, cur, salt):
                    return
                continue
            kids = [k for k in stats.children[cur] if self._alive(trace, stats, k)]
            if not kids:
                return
            cur = max(kids, key=lambda k: (stats.q(k), stats.visits.get(k, 0), -k))

    @staticmethod
    def _depth(trace: Trace, node_id: int) -> int:
        return len(trace.path(node_id))

    def _select(self, trace: Trace, stats: _Stats) -> int | None:
        """Walk down by PUCT to a node that is unexpanded or terminal; None if nothing is left to explore."""
        cur = trace.root.id
        while cur in stats.children and not trace.nodes[cur].terminal:
            kids = [k for k in stats.children[cur] if self._alive(trace, stats, k)]
            if not kids:
                return None if cur == trace.root.id else self._mark_dead(trace, stats, cur)
            parent_visits = stats.visits.get(cur, 0)
            c = self.settings.exploration
            cur = max(kids, key=lambda k: (stats.q(k) + c * stats.prior[k] * math.sqrt(parent_visits + 1)
                                           / (1 + stats.visits.get(k, 0)), -k))
        return cur

    def _alive(self, trace: Trace, stats: _Stats, node_id: int) -> bool:
        node = trace.nodes[node_id]
        if node.terminal:
            return node.finished and node.answer is not None
        return stats.children.get(node_id) != []

    def _mark_dead(self, trace: Trace, stats: _Stats, node_id: int) -> int | None:
        stats.children[node_id] = []  # nothing below can finish: stop visiting it and select again
        return self._select(trace, stats)

    @staticmethod
    def _set_priors(stats: _Stats, children: list[Node]) -> None:
        logps = [c.logprob for c in children]
        if children and None not in logps:
            top = max(logps)
            weights = [math.exp(lp - top) for lp in logps]
        else:
            weights = [1.0] * len(children)
        total = sum(weights) or 1.0
        for c, w in zip(children, weights):
            stats.prior[c.id] = w / total

    async def _value(self, search: Search, child: Node) -> float:
        """A new child's value: 0 if truncated or unscored, else its path's score or its rollouts' mean."""
        score = child.scores.get(search.scorer.name)
        if (child.terminal and not child.finished) or score is None:
            return 0.0  # truncated, or the budget could not pay to score it
        if child.terminal or not self.settings.rollouts:
            return score
        return await self._rollout_value(search, child, score)

    async def _rollout_value(self, search: Search, child: Node, score: float) -> float:
        """Mean score of `rollouts` completions from `child`; finished ones join the tree as solutions."""
        s, trace = self.settings, search.trace
        prefix = trace.solution(child.id)
        request = GenerationRequest(prompt=trace.root.text + prefix, reply_start=len(trace.root.text), n=s.rollouts,
                                    max_tokens=s.max_step_tokens * s.max_depth, temperature=s.temperature,
                                    top_p=s.top_p, seed=step_seed(search.seed, child.id, "rollout"))
        tokens = search.afford([request], scored=True)
        results = await search.generate([replace(request, max_tokens=tokens)]) if tokens else None
        if results is None:
            return score  # the budget cannot buy the rollouts: the reward model's value
        (result,) = results
        ends, added = [], []
        for g in result.generations:
            node = trace.add(child.id, g.text, num_tokens=g.num_tokens, logprob=g.logprob, terminal=True,
                             finish_reason=g.finish_reason)
            added.append(node)
            if g.finish_reason == FINISH_STOP:
                node.answer = search.task.extract_answer(prefix + g.text)
                ends.append(node)
        search.emit("generated", added)
        await score_paths(search, ends, s)
        name = search.scorer.name
        values = [n.scores.get(name, 0.0) if n.finished else 0.0 for n in trace.nodes[-len(result.generations):]]
        return sum(values) / len(values)
