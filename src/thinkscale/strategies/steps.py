"""What the step-level searches share: growing a trace one step at a time, and scoring paths.

Beam search, DVTS and MCTS all ask the policy for the next step of a partial
solution (the prompt plus the steps so far, stopping at the task's step
delimiter), score the partial paths with a reward model, and keep the best.
A step that ends at the delimiter keeps it in its text, so a path's text is
the concatenation of its steps. A generation that ends on its own (the end
token) finishes the solution; one cut off by the token limit is truncated and
never counts as an answer. An empty step that ends on its own means the path
before it was already complete: that parent becomes the terminal node.

Every function here works in a `Search` (strategies/base.py), which asks the
Budget before each call: a step the budget cannot buy is not generated.
"""

from __future__ import annotations

from dataclasses import dataclass

from thinkscale.policies.base import GenerationRequest
from thinkscale.scorers.base import aggregate
from thinkscale.seeds import step_seed
from thinkscale.strategies.base import CHOOSERS, Search, answered
from thinkscale.trace import FINISH_LENGTH, FINISH_STOP, Node

__all__ = ["StepSettings", "answered", "choose", "expand", "score_paths", "settled", "step_seed"]


@dataclass(frozen=True)
class StepSettings:
    """Settings every step-level search has."""

    max_depth: int = 12  # steps per solution at most
    max_step_tokens: int = 48  # tokens per step at most
    temperature: float = 1.0
    top_p: float = 1.0
    aggregation: str = "last"  # how a path's step scores become its score
    choose: str = "best"  # "best": the best-scoring solution; "weighted": scores summed per answer
    stop_score: float | None = None  # stop once a finished solution's path scores at least this (off: None)

    def __post_init__(self) -> None:
        aggregate([1.0], self.aggregation)  # an unknown name fails here, naming the valid ones
        if self.choose not in CHOOSERS:
            raise ValueError(f"unknown choose {self.choose!r}; valid: {', '.join(CHOOSERS)}")
        for name in ("max_depth", "max_step_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


def step_requests(search: Search, asks: list[tuple[int, int, object]], max_tokens: int,
                  settings: StepSettings) -> list[GenerationRequest]:
    """One request per (node id, n, salt): the next step of that node's path, `n` times."""
    trace = search.trace
    return [GenerationRequest(prompt=trace.root.text + trace.solution(node_id), reply_start=len(trace.root.text),
                              n=n, max_tokens=max_tokens,
                              temperature=settings.temperature, top_p=settings.top_p,
                              stop=(search.task.step_delimiter,), seed=step_seed(search.seed, node_id, str(salt)))
            for node_id, n, salt in asks]


async def expand(search: Search, asks: list[tuple[int, int, object]], settings: StepSettings,
                 max_tokens: int | None = None) -> list[list[Node]] | None:
    """Sample the next step `n` times for each (node id, n, salt) in `asks`, in one policy call.

    The salt tells apart two draws from the same node (DVTS's groups all start
    at the root). The budget is asked first, with the scoring of every new step
    reserved; None when it affords nothing more (the trace says which limit).
    Returns the new children of each asked node. Terminal children carry their
    finish reason and, when finished, the answer of their whole path. A parent
    whose path was already complete (an empty step that ended on its own)
    becomes terminal itself and gets no empty child.
    """
    requests = step_requests(search, asks, max_tokens or settings.max_step_tokens, settings)
    tokens = search.afford(requests, scored=True)
    if tokens < 1:
        return None
    results = await search.generate(step_requests(search, asks, tokens, settings))
    if results is None:
        return None
    trace = search.trace
    out: list[list[Node]] = []
    for (node_id, _, _), result in zip(asks, results):
        parent, children = trace.nodes[node_id], []
        for g in result.generations:
            if g.ended and not g.text.strip() and parent.parent is not None:
                parent.num_tokens += g.num_tokens  # the end token: spent, and part of the path that it ends
                if not parent.terminal:
                    finish(search, parent)
                continue
            text = g.text + (g.stop_string or "")  # a step keeps the delimiter it ended at
            child = trace.add(node_id, text, num_tokens=g.num_tokens, logprob=g.logprob)
            if g.ended:
                finish(search, child)
            elif g.finish_reason == FINISH_LENGTH:
                child.terminal, child.finish_reason = True, FINISH_LENGTH  # truncated: never an answer
            children.append(child)
        out.append(children)
    search.emit("generated", [c for children in out for c in children])
    return out


def finish(search: Search, node: Node) -> None:
    """Mark `node` as the end of a finished solution, with the answer of its whole path."""
    node.terminal, node.finish_reason = True, FINISH_STOP
    node.answer = search.task.extract_answer(search.trace.solution(node.id))


async def score_paths(search: Search, nodes: list[Node], settings: StepSettings) -> None:
    """Score the path up to each node: `scores[name]` the path's aggregate, `scores[name.step]` the step's own.

    Nodes the budget cannot pay to score stay unscored (no entry in `scores`).
    """
    trace, name = search.trace, search.scorer.name
    scores = await search.score([trace.solution(n.id) for n in nodes], prompt=trace.root.text)
    if scores is None:
        return
    for node, steps in zip(nodes, scores.per_step):
        node.scores[name] = aggregate(steps, settings.aggregation)
        node.scores[f"{name}.step"] = steps[-1] if steps else float("-inf")
    search.emit("scored", nodes[:len(scores.per_step)])


async def settled(search: Search, nodes: list[Node], settings: StepSettings) -> bool:
    """With `stop_score` set: score the finished solutions among `nodes`; True if one reaches it."""
    if settings.stop_score is None:
        return False
    name = search.scorer.name
    finished = [n for n in nodes if n.terminal and n.finished and n.answer is not None]
    await score_paths(search, [n for n in finished if name not in n.scores], settings)
    return any(n.scores.get(name, float("-inf")) >= settings.stop_score for n in finished)


async def choose(search: Search, settings: StepSettings) -> None:
    """Score any unscored finished solution and set the trace's choice among the scored ones."""
    trace, name = search.trace, search.scorer.name
    await score_paths(search, [n for n in answered(trace) if name not in n.scores], settings)
    candidates = [n for n in answered(trace) if name in n.scores]
    if candidates:
        search.choose(CHOOSERS[settings.choose](candidates, name))
