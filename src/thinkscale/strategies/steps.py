"""What the step-level searches share: growing a trace one step at a time, and scoring paths.

Beam search, DVTS and MCTS all ask the policy for the next step of a partial
solution (the prompt plus the steps so far, stopping at the task's step
delimiter), score the partial paths with a reward model, and keep the best.
A step that ends at the delimiter keeps it in its text, so a path's text is
the concatenation of its steps. A generation that ends on its own (the end
token) finishes the solution; one cut off by the token limit is truncated and
never counts as an answer. An empty step that ends on its own means the path
before it was already complete: that parent becomes the terminal node.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

from thinkscale.budget import Budget, BudgetExceeded
from thinkscale.policies.base import GenerationRequest, Policy
from thinkscale.scorers.base import Scorer, aggregate
from thinkscale.strategies.base import CHOOSERS, account, account_scorer
from thinkscale.tasks.base import Problem, Task
from thinkscale.trace import FINISH_LENGTH, FINISH_STOP, Node, Trace


@dataclass(frozen=True)
class StepSettings:
    """Settings every step-level search has."""

    max_depth: int = 12  # steps per solution at most
    max_step_tokens: int = 48  # tokens per step at most
    temperature: float = 1.0
    top_p: float = 1.0
    aggregation: str = "last"  # how a path's step scores become its score
    choose: str = "best"  # "best": the best-scoring solution; "weighted": scores summed per answer

    def __post_init__(self) -> None:
        aggregate([1.0], self.aggregation)  # an unknown name fails here, naming the valid ones
        if self.choose not in CHOOSERS:
            raise ValueError(f"unknown choose {self.choose!r}; valid: {', '.join(CHOOSERS)}")
        for name in ("max_depth", "max_step_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


def step_seed(seed: int, node_id: int, salt: str = "") -> int:
    """A reproducible seed for expanding one node: same trace, same samples."""
    digest = hashlib.sha256(f"{seed}/{node_id}/{salt}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def start_trace(problem: Problem, name: str, settings: dict, seed: int, scorer: Scorer | None, task: Task) -> Trace:
    if scorer is None:
        raise ValueError(f"{name} needs a scorer (one of the reward models); none was given")
    scorer.check_task(task.name)
    trace = Trace(problem_id=problem.id, strategy=name, settings=settings, seed=seed, difficulty=problem.difficulty)
    trace.add(None, problem.prompt)
    return trace


def step_tokens(budget: Budget, trace: Trace, samples: int, want: int, calls: int = 1) -> int:
    """Tokens (up to `want`) each of `samples` generations, asked in `calls` requests, may use within the budget.

    The budget holds even if every generation runs to that many tokens.
    0 means the budget cannot buy this round. Before any step was bought that
    is an error naming the smallest budget that works.
    """
    left = budget.remaining_tokens(trace.usage)
    tokens = want if left is None else min(want, left // samples)
    left_samples = budget.remaining_samples(trace.usage)
    if left_samples is not None and left_samples < samples:
        tokens = 0
    if budget.max_policy_calls is not None and trace.usage.policy_calls + calls > budget.max_policy_calls:
        tokens = 0
    if tokens < 1 and len(trace.nodes) == 1:
        raise BudgetExceeded(f"the budget ({_limits(budget)}) cannot buy the first {samples} steps; the smallest "
                             f"budget that works is {samples} generated tokens, {samples} samples and {calls} policy calls")
    return tokens


def _limits(budget: Budget) -> str:
    return ", ".join(f"{k} {v}" for k, v in budget.to_dict().items() if v is not None) or "unlimited"


async def expand(trace: Trace, task: Task, policy: Policy, asks: list[tuple[int, int, int]], max_tokens: int,
                 settings: StepSettings, seed: int) -> list[list[Node]]:
    """Sample the next step `n` times for each (node id, n, salt) in `asks`, in one policy call.

    The salt tells apart two draws from the same node (DVTS's groups all start at the root).
    Returns the new children of each asked node. Terminal children carry their
    finish reason and, when finished, the answer of their whole path. A parent
    whose path was already complete (an empty step that ended on its own)
    becomes terminal itself and gets no empty child.
    """
    delimiter = task.step_delimiter
    requests = [GenerationRequest(prompt=trace.root.text + trace.solution(node_id), n=n, max_tokens=max_tokens,
                                  temperature=settings.temperature, top_p=settings.top_p, stop=(delimiter,),
                                  seed=step_seed(seed, node_id, str(salt)))
                for node_id, n, salt in asks]
    started = time.perf_counter()
    results = await policy.generate(requests)
    for result in results:
        account(trace.usage, policy, result, started)
        started = time.perf_counter()
    out: list[list[Node]] = []
    for (node_id, _, _), result in zip(asks, results):
        parent, children = trace.nodes[node_id], []
        for g in result.generations:
            if g.ended and not g.text.strip() and parent.parent is not None:
                parent.num_tokens += g.num_tokens  # the end token: spent, and part of the path that it ends
                if not parent.terminal:
                    _finish(trace, task, parent, FINISH_STOP)
                continue
            text = g.text + (g.stop_string or "")  # a step keeps the delimiter it ended at
            child = trace.add(node_id, text, num_tokens=g.num_tokens, logprob=g.logprob)
            if g.ended:
                _finish(trace, task, child, FINISH_STOP)
            elif g.finish_reason == FINISH_LENGTH:
                child.terminal, child.finish_reason = True, FINISH_LENGTH  # truncated: never an answer
            children.append(child)
        out.append(children)
    return out


def _finish(trace: Trace, task: Task, node: Node, reason: str) -> None:
    node.terminal, node.finish_reason = True, reason
    node.answer = task.extract_answer(trace.solution(node.id))


async def score_paths(trace: Trace, task: Task, scorer: Scorer, nodes: list[Node], settings: StepSettings) -> None:
    """Score the path up to each node: `scores[name]` the path's aggregate, `scores[name.step]` the step's own."""
    if not nodes:
        return
    started = time.perf_counter()
    scores = await scorer.score(trace.root.text, [trace.solution(n.id) for n in nodes], task.step_delimiter)
    account_scorer(trace.usage, scores, started)
    for node, steps in zip(nodes, scores.per_step):
        node.scores[scorer.name] = aggregate(steps, settings.aggregation)
        node.scores[f"{scorer.name}.step"] = steps[-1] if steps else float("-inf")


def answered(trace: Trace) -> list[Node]:
    """Finished terminal nodes with an answer: the solutions a strategy may choose from."""
    return [n for n in trace.terminals() if n.finished and n.answer is not None]


async def choose(trace: Trace, task: Task, scorer: Scorer, settings: StepSettings) -> None:
    """Score any unscored finished solution and set the trace's choice."""
    candidates = answered(trace)
    await score_paths(trace, task, scorer, [n for n in candidates if scorer.name not in n.scores], settings)
    if candidates:
        best = CHOOSERS[settings.choose](candidates, scorer.name)
        trace.chosen_answer, trace.chosen_node = best.answer, best.id
