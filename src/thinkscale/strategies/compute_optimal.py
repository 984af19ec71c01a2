"""Compute-optimal allocation: a cheap probe guesses how hard a problem is, a table says what it deserves.

    strategies:
      - name: compute_optimal
        settings:
          probe: 4                  # samples drawn first, scored by the reward model
          edges: [0.55, 0.8]        # probe confidence edges: 3 bins, hardest first
          table:                    # one entry per bin: the strategy and its settings
            - {strategy: beam_search, settings: {n: 16, width: 4, aggregation: min, choose: weighted}}
            - {strategy: weighted_best_of_n, settings: {n: 16}}
            - {strategy: weighted_best_of_n, settings: {n: 4}}
        scorer: {name: prm}

After Snell et al. (arXiv 2408.03314): the probe's samples are scored, and
their agreement (the share of the most common answer among the probe's
samples) and mean score (a sample without an answer scores 0) give the
probe's confidence, their mean, in [0, 1]. `edges` cut that confidence into
bins, the least confident first; the bin's table entry is then run in the
same Search, so the probe and the bin's strategy spend one Budget and one
Usage. The table is data: `analysis/allocation.py` learns one on dev
problems for an average budget (`benchmarks/compute_optimal.py`).

Where the bin's strategy draws whole samples the way the probe did
(best-of-N, weighted best-of-N, majority vote, with the probe's sampling
settings and, for a reward-model strategy, its aggregation), the probe is its
first wave: it draws n minus the probe's samples more and chooses among all
of them, so `weighted_best_of_n` with n equal to the probe answers from the
probe alone. Any other strategy runs on its own after the probe, and its
nodes join the trace under the same root. `trace.settings["chosen"]` records
the probe's agreement, mean score and confidence, the bin, and the strategy
with its settings.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from thinkscale.budget import Budget, BudgetExceeded
from thinkscale.policies.base import Policy
from thinkscale.scorers.base import Scorer, aggregate
from thinkscale.seeds import derive_seed
from thinkscale.strategies.base import SEARCH_EVENTS, SamplingSettings, Search, answered, sample_whole
from thinkscale.tasks.base import Problem, Task
from thinkscale.trace import Node, Trace

WHOLE_SAMPLE = ("best_of_n", "weighted_best_of_n", "majority_vote")  # strategies the probe can be the first wave of


def default_table() -> list[dict[str, Any]]:
    return [{"strategy": "beam_search", "settings": {"n": 16, "width": 4, "aggregation": "min", "choose": "weighted"}},
            {"strategy": "weighted_best_of_n", "settings": {"n": 16}},
            {"strategy": "weighted_best_of_n", "settings": {"n": 8}}]


@dataclass(frozen=True)
class ComputeOptimalSettings:
    probe: int = 4  # samples in the probe
    temperature: float = 1.0  # the probe's sampling settings
    top_p: float = 1.0
    max_tokens: int = 160
    aggregation: str = "min"  # how a probe sample's step scores become its score
    edges: list[float] = field(default_factory=lambda: [0.55, 0.8])  # confidence edges, ascending
    table: list[dict[str, Any]] = field(default_factory=default_table)  # per bin: {strategy, settings}

    def __post_init__(self) -> None:
        if self.probe < 1:
            raise ValueError(f"probe must be at least 1 sample, got {self.probe}")
        aggregate([1.0], self.aggregation)  # an unknown name fails here, naming the valid ones
        edges = list(self.edges)
        if edges != sorted(edges) or any(not 0 <= e <= 1 for e in edges):
            raise ValueError(f"edges must be ascending confidences in [0, 1], got {edges}")
        if len(self.table) != len(edges) + 1:
            raise ValueError(f"the table needs one entry per bin: {len(edges)} edges make {len(edges) + 1} bins, "
                             f"and the table has {len(self.table)}")
        for i, entry in enumerate(self.table):
            bin_strategy(entry, i)  # a bad entry fails here, naming its bin

    @property
    def sampling(self) -> SamplingSettings:
        return SamplingSettings(n=self.probe, temperature=self.temperature, top_p=self.top_p,
                                max_tokens=self.max_tokens)


def bin_strategy(entry: dict[str, Any], index: int) -> Any:
    """The strategy a table entry ({strategy: NAME, settings: {...}}) describes; errors name the bin."""
    from thinkscale.strategies import get_strategy

    if not isinstance(entry, dict) or "strategy" not in entry or set(entry) - {"strategy", "settings"}:
        raise ValueError(f"table[{index}] must be a mapping {{strategy: NAME, settings: {{...}}}}, got {entry!r}")
    if entry["strategy"] == "compute_optimal":
        raise ValueError(f"table[{index}]: compute_optimal cannot run itself in a bin")
    try:
        return get_strategy(entry["strategy"], **entry.get("settings", {}))
    except (TypeError, ValueError) as e:
        raise ValueError(f"table[{index}] ({entry['strategy']}): {e}") from None


def probe_confidence(answers: list[str | None], scores: list[float]) -> tuple[float, float, float]:
    """(agreement, mean score, confidence) of the probe's samples; an answerless sample agrees with none."""
    counts = Counter(a for a in answers if a is not None)
    agreement = max(counts.values()) / len(answers) if counts else 0.0
    mean_score = sum(scores) / len(answers) if answers else 0.0
    return agreement, mean_score, (agreement + mean_score) / 2


def bin_of(confidence: float, edges: list[float]) -> int:
    """The bin of a probe confidence: how many edges it reaches (0: the least confident)."""
    return sum(confidence >= e for e in edges)


class ComputeOptimal:
    name = "compute_optimal"
    Settings = ComputeOptimalSettings

    def __init__(self, settings: ComputeOptimalSettings | None = None) -> None:
        self.settings = settings or ComputeOptimalSettings()

    async def solve(self, problem: Problem, task: Task, policy: Policy, scorer: Scorer | None,
                    budget: Budget, seed: int) -> Trace:
        s = self.settings
        if budget.max_samples is not None and budget.max_samples < s.probe:
            raise BudgetExceeded(
                f"compute_optimal's probe draws {s.probe} samples, more than the budget's max_samples "
                f"{budget.max_samples}; the smallest budget that works is max_samples {s.probe}, or set probe to at "
                f"most {budget.max_samples}")
        search = Search.start(self.name, s, problem, task, policy, scorer, budget, seed, needs_scorer=True)
        trace = search.trace
        probe = await self._probe(search)
        answers = [n.answer if n.finished else None for n in probe]
        agreement, mean_score, confidence = probe_confidence(answers, [n.scores.get(scorer.name, 0.0) for n in probe])
        index = bin_of(confidence, s.edges)
        entry = s.table[index]
        trace.settings["chosen"] = {"bin": index, "strategy": entry["strategy"],
                                    "settings": dict(entry.get("settings", {})), "probe_samples": len(probe),
                                    "agreement": agreement, "mean_score": mean_score, "confidence": confidence}
        strategy = bin_strategy(entry, index)
        if self._extends_probe(strategy):
            await self._extend(search, strategy, len(probe), index)
        else:
            await self._run_after(search, strategy, index)
        return trace

    async def _probe(self, search: Search) -> list[Node]:
        """Draw and score the probe; its samples are the root's first children."""
        s, scorer = self.settings, search.scorer
        drawn: list[Node] = []

        async def score(new: list[Node]) -> bool:
            drawn.extend(new)
            candidates = [n for n in new if n.finished and n.answer is not None]
            scores = await search.score([n.text for n in candidates])
            if scores is not None:
                scored = candidates[:len(scores.per_step)]
                for node, steps in zip(scored, scores.per_step):
                    node.scores[scorer.name] = aggregate(steps, s.aggregation)
                search.emit("scored", scored)
            return False

        await sample_whole(search, s.sampling, scored=True, after_wave=score)
        return drawn

    def _extends_probe(self, strategy: Any) -> bool:
        """Whether the bin's strategy samples whole solutions as the probe did, so the probe is its first wave."""
        s, b = self.settings, strategy.settings
        if strategy.name not in WHOLE_SAMPLE or getattr(b, "stopping", None) is not None:
            return False
        same = (b.temperature, b.top_p, b.max_tokens) == (s.temperature, s.top_p, s.max_tokens)
        return same and (strategy.name == "majority_vote" or b.aggregation == s.aggregation)

    async def _extend(self, search: Search, strategy: Any, probed: int, index: int) -> None:
        """Draw the bin's n minus the probe's samples more, then choose among all of them as the strategy does."""
        if strategy.name == "majority_vote" and not search.task.votable:
            raise ValueError(f"table[{index}]: majority vote needs a task whose answers can be compared; "
                             f"{search.task.name} is graded on its steps. Use a reward-model strategy in that bin.")
        more = strategy.settings.n - probed
        if more > 0 and search.trace.stopped_by is None:
            rest = type(strategy)(dataclasses.replace(strategy.settings, n=more))
            await self._run_after(search, rest, index, decide=False)
        if strategy.name == "majority_vote":
            strategy.decide(search)
            return
        name = search.scorer.name
        scored = [n for n in answered(search.trace) if name in n.scores]
        if scored:
            search.choose(strategy.choose(scored, name))

    async def _run_after(self, search: Search, strategy: Any, index: int, decide: bool = True) -> None:
        """Run `strategy` on what the budget has left; its nodes join the trace under the root as they come."""
        trace = search.trace
        if trace.stopped_by is not None:
            return  # the probe already spent the budget
        left = search.budget.left_after(trace.usage)
        if left is None:
            search.stop(search.budget.used_up(trace.usage))
            return
        mirror = _Mirror(search)
        token = SEARCH_EVENTS.set(mirror.on_event)
        try:
            sub = await strategy.solve(search.problem, search.task, search.policy, search.scorer, left,
                                       derive_seed(search.seed, self.name, index))
        except BudgetExceeded as e:  # what is left cannot buy the strategy's first piece of work
            search.stop(e.limit)
            return
        finally:
            SEARCH_EVENTS.reset(token)
        mirror.sync(sub)
        trace.usage += sub.usage
        search.stop(sub.stopped_by)
        if decide:
            if sub.chosen_node is not None:
                search.choose(mirror.nodes[sub.chosen_node])
            elif sub.chosen_answer is not None:
                trace.chosen_answer = sub.chosen_answer
                search.emit("chosen", [n for n in trace.terminals()
                                       if n.finished and n.answer == sub.chosen_answer and n.id in mirror.ids][:1])


class _Mirror:
    """Copies a sub-search's nodes into the outer trace as they are generated, and passes on its events."""

    def __init__(self, search: Search) -> None:
        self.search = search
        self.nodes: dict[int, Node] = {}  # sub-trace node id -> the outer trace's node
        self.ids: set[int] = set()  # outer ids of the mirrored nodes
        self.told: dict[str, set[int]] = {"generated": set(), "scored": set()}  # outer ids the listener heard of

    def _node(self, sub: Trace, node: Node) -> Node:
        if node.parent is None:  # the sub-search's root holds the same prompt as ours
            return self.search.trace.root
        if node.id not in self.nodes:
            parent = self._node(sub, sub.nodes[node.parent])
            self.nodes[node.id] = self.search.trace.add(parent.id, node.text)
            self.ids.add(self.nodes[node.id].id)
        mirrored = self.nodes[node.id]
        for name in ("text", "num_tokens", "logprob", "terminal", "finish_reason", "answer"):
            setattr(mirrored, name, getattr(node, name))
        mirrored.scores = dict(node.scores)
        return mirrored

    def on_event(self, event: str, sub: Trace, nodes: list[Node]) -> None:
        if event == "chosen":
            return  # the outer search chooses, once the sub-search is done
        mirrored = [m for m in (self._node(sub, n) for n in nodes) if m.id in self.ids]
        self.told.setdefault(event, set()).update(m.id for m in mirrored)
        self.search.emit(event, mirrored)

    def sync(self, sub: Trace) -> None:
        """Bring every node of the finished sub-search over, with what changed after its events."""
        for node in sub.nodes:
            self._node(sub, node)
        mirrored = [self.search.trace.nodes[i] for i in sorted(self.ids)]
        self.search.emit("generated", [n for n in mirrored if n.id not in self.told["generated"]])
        self.search.emit("scored", [n for n in mirrored if n.scores and n.id not in self.told["scored"]])


__all__ = ["ComputeOptimal", "ComputeOptimalSettings", "bin_of", "probe_confidence"]
