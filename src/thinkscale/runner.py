"""Solve many problems concurrently, then grade what each strategy chose.

The runner is where references meet traces: each strategy gets only the
problem; once its Trace is back, `grade` marks every finished terminal node
and the chosen answer with the verifier's verdict. Batching lives below:
the runner starts one coroutine per problem and the policy batches whatever
arrives together.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from thinkscale.budget import Budget
from thinkscale.policies.base import Policy
from thinkscale.strategies.base import Strategy
from thinkscale.tasks.base import Example, Task
from thinkscale.trace import Trace


def problem_seed(seed: int, index: int) -> int:
    """A distinct, reproducible sampling seed for problem `index` of a run."""
    return (seed * 1_000_003 + index) & 0x7FFFFFFF


def grade(trace: Trace, task: Task, example: Example) -> Trace:
    """Set `correct` on every terminal node and on the trace's chosen answer."""
    nodes = {n.id: n for n in trace.nodes}
    for node in trace.terminals():
        if not node.finished:
            node.correct = False  # a truncated generation never counts as an answer
            continue
        # A terminal's full solution is the text along its path from the root.
        parts, cur = [], node
        while cur.parent is not None:
            parts.append(cur.text)
            cur = nodes[cur.parent]
        node.correct = task.verify(example, "".join(reversed(parts))).correct
    if trace.chosen_answer is not None:
        if task.votable:
            trace.correct = task.answer_is_correct(example, trace.chosen_answer)
        else:  # answers alone cannot be graded: the chosen node's verdict is the trace's
            trace.correct = any(n.correct for n in trace.terminals() if n.answer == trace.chosen_answer)
    return trace


async def solve_all(
    examples: list[Example], task: Task, strategy: Strategy, policy: Policy, budget: Budget,
    seed: int = 0, scorer: Any = None, concurrency: int = 256,
    on_trace: Callable[[Trace], None] | None = None,
) -> list[Trace]:
    """Solve and grade every example; traces come back in the examples' order."""
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int, example: Example) -> Trace:
        async with gate:
            trace = await strategy.solve(example.problem, task, policy, scorer, budget, problem_seed(seed, i))
        grade(trace, task, example)
        if on_trace:
            on_trace(trace)
        return trace

    return list(await asyncio.gather(*(one(i, ex) for i, ex in enumerate(examples))))


def run(examples: list[Example], task: Task, strategy: Strategy, policy: Policy, budget: Budget,
        **kwargs: Any) -> list[Trace]:
    """Synchronous entry point around `solve_all`."""
    return asyncio.run(solve_all(examples, task, strategy, policy, budget, **kwargs))
