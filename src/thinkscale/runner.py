"""Solve many problems concurrently, then grade what each strategy chose.

The runner is where references meet traces: each strategy gets only the
problem; once its Trace is back, `grade` marks every finished terminal node
and the chosen answer with the verifier's verdict. Batching lives below:
the runner starts one coroutine per problem and the policy batches whatever
arrives together.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from thinkscale.budget import Budget, Prices
from thinkscale.policies.base import Policy
from thinkscale.seeds import problem_seed
from thinkscale.strategies.base import SEARCH_TOOLS, Strategy
from thinkscale.tasks.base import Example, Task
from thinkscale.trace import Trace

if TYPE_CHECKING:
    from thinkscale.config import RunConfig
    from thinkscale.store import RunStore
    from thinkscale.tools import Toolbox


def trace_key(label: str, seed: int, problem_id: str) -> str:
    """The store's key for one (strategy label, seed, problem)."""
    return f"{label}/{seed}/{problem_id}"


def grade(trace: Trace, task: Task, example: Example) -> Trace:
    """Set `correct` on every terminal node and on the trace's chosen answer."""
    nodes = {n.id: n for n in trace.nodes}
    for node in trace.terminals():
        if not node.finished:
            node.correct = False  # a truncated generation never counts as an answer
            continue
        node.correct = task.verify(example, trace.solution(node.id)).correct  # the text along its path
    if trace.chosen_node is not None:  # one solution was chosen: its own verdict is the trace's
        trace.correct = bool(nodes[trace.chosen_node].correct)
    elif trace.chosen_answer is not None:
        if task.votable:
            trace.correct = task.answer_is_correct(example, trace.chosen_answer)
        else:  # answers alone cannot be graded: the chosen node's verdict is the trace's
            trace.correct = any(n.correct for n in trace.terminals() if n.answer == trace.chosen_answer)
    return trace


async def solve_all(
    examples: list[Example], task: Task, strategy: Strategy, policy: Policy, budget: Budget,
    seed: int = 0, scorer: Any = None, concurrency: int = 256,
    on_trace: Callable[[Trace], None] | None = None, tools: "Toolbox | None" = None,
    prices: Prices | None = None,
) -> list[Trace]:
    """Solve and grade every example; traces come back in the examples' order.

    `tools`: what the searches' steps may call (strategies/base.py: SEARCH_TOOLS).
    `prices`: a price table that fills each trace's `usage.dollars`.
    """
    if tools is not None and tools.syntax.native and not policy.capabilities.tool_calls:
        raise ValueError(f"the {tools.syntax.name} tool syntax needs a policy whose API takes tools (the openai "
                         f"policy with api: chat); the {policy.name} policy reads text: use the tag or fenced syntax")
    gate = asyncio.Semaphore(concurrency)

    async def one(example: Example) -> Trace:
        SEARCH_TOOLS.set(tools)  # this task's own context: the search started here sees the tools
        async with gate:
            trace = await strategy.solve(example.problem, task, policy, scorer, budget,
                                         problem_seed(seed, example.problem.id))
        if prices is not None:
            trace.usage.dollars = prices.dollars(trace.usage)
        grade(trace, task, example)
        if on_trace:
            on_trace(trace)
        return trace

    return list(await asyncio.gather(*(one(ex) for ex in examples)))


def run(examples: list[Example], task: Task, strategy: Strategy, policy: Policy, budget: Budget,
        **kwargs: Any) -> list[Trace]:
    """Synchronous entry point around `solve_all`."""
    return asyncio.run(solve_all(examples, task, strategy, policy, budget, **kwargs))


def drawn(config: "RunConfig", task: Task, exclude: frozenset[str] = frozenset()) -> list[Example]:
    """The problems `config` draws from its split, less those whose prompt is in `exclude`."""
    examples = task.examples(config.split, config.problems, seed=config.problem_seed)
    return [e for e in examples if e.problem.prompt not in exclude]


def run_experiment(config: "RunConfig", store: "RunStore", task: Task, policy: Policy,
                   concurrency: int = 1024, on_trace: Callable[[Trace], None] | None = None,
                   exclude: frozenset[str] = frozenset()) -> int:
    """Solve every (strategy, seed, problem) of `config` that the store does not hold yet.

    Each finished trace is committed on its own, so an interrupted run loses
    at most the traces in flight; run again, it skips what is done and draws
    the rest with the same per-problem seeds. Problems whose prompt is in
    `exclude` are left out (a dev set kept apart from training draws).
    Returns the traces written.
    """
    examples = drawn(config, task, exclude)
    done = store.done_keys()
    written = 0

    async def main() -> None:
        prices = config.prices.to_prices() if config.prices is not None else None
        for strategy_config in config.strategies:
            strategy, budget = strategy_config.build(), strategy_config.budget.to_budget()
            scorer = strategy_config.scorer.build(task.name) if strategy_config.scorer else None
            tools = strategy_config.tools.build() if strategy_config.tools else None
            label = strategy_config.effective_label
            for seed in config.seeds:
                todo = [e for e in examples if trace_key(label, seed, e.problem.id) not in done]

                def save(trace: Trace, label: str = label, seed: int = seed) -> None:
                    nonlocal written
                    store.put_trace(trace_key(label, seed, trace.problem_id), trace)
                    written += 1
                    if on_trace:
                        on_trace(trace)

                await solve_all(todo, task, strategy, policy, budget, seed=seed, scorer=scorer,
                                concurrency=concurrency, on_trace=save, tools=tools, prices=prices)
            if tools is not None:
                tools.close()

    asyncio.run(main())
    return written


def execute_run(config: "RunConfig", fresh: bool = False, progress: bool = True,
                exclude: frozenset[str] = frozenset()) -> Path:
    """Run (or resume) an experiment into its store at `config.output`, with a progress bar.

    Problems whose prompt is in `exclude` are left out (see `run_experiment`).
    """
    from tqdm import tqdm

    from thinkscale.store import RunStore
    from thinkscale.tasks import get_task

    task = get_task(config.task)
    policy = config.policy.build(task.name)
    total = len(drawn(config, task, exclude)) * len(config.strategies) * len(config.seeds)
    with RunStore.open(config.output_path, config.to_dict(), fresh=fresh) as store:
        done = len(store.done_keys())
        if done and progress:
            print(f"resuming {config.output_path}: {done} of {total} traces already done")
        samples = 0
        with tqdm(total=total, initial=done, unit="trace", desc=f"{task.name}", dynamic_ncols=True,
                  disable=not progress) as bar:

            def on_samples(count: int) -> None:
                nonlocal samples
                samples += count
                if samples % 256 == 0:
                    bar.set_postfix(samples=samples, refresh=True)

            if hasattr(policy, "on_samples_done"):
                policy.on_samples_done = on_samples
            run_experiment(config, store, task, policy, on_trace=lambda _: bar.update(1), exclude=exclude)
    return config.output_path
