"""Step labels for a process reward model, from Monte-Carlo rollouts (Math-Shepherd).

For each train problem the policy writes a few solutions. A step's value is
the fraction of K continuations, sampled from the solution up to and including
that step, that reach a verified answer; the last step's value is the verdict
on the whole solution. Each record keeps the soft value and the hard label
(value > 0, as Math-Shepherd's "hard estimation").

    records = asyncio.run(label_steps(task, policy, task.examples("train", 500), samples=4, rollouts=8))
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from thinkscale.policies.base import GenerationRequest, Policy
from thinkscale.scorers.base import split_steps
from thinkscale.seeds import problem_seed
from thinkscale.tasks.base import Example, Task


@dataclass(frozen=True)
class StepLabels:
    problem_id: str
    prompt: str
    steps: list[str]  # each with its delimiter
    values: list[float]  # fraction of rollouts from after this step that verify
    labels: list[int]  # 1 where value > 0

    def to_json(self) -> str:
        return json.dumps(asdict(self))


async def label_example(task: Task, policy: Policy, example: Example, samples: int, rollouts: int,
                        seed: int, max_tokens: int = 160, completer: Policy | None = None) -> list[StepLabels]:
    """Step labels for the finished solutions the policy writes for one problem.

    The rollouts come from `completer` (default: the policy itself). A valid
    step from which a weak policy seldom finishes gets value 0 from a few
    rollouts; a stronger completer tells it from a wrong step more often.
    With `rollouts=0` each step is valued by its own solution's verdict: the
    solution is the one rollout from each of its steps (a flat search tree).
    """
    completer = completer or policy
    prompt = example.problem.prompt
    base_seed = problem_seed(seed, example.problem.id)
    (result,) = await policy.generate([GenerationRequest(prompt, n=samples, max_tokens=max_tokens, seed=base_seed)])
    solutions = [g.text for g in result.generations if g.finish_reason == "stop"]
    out = []
    for s_index, solution in enumerate(solutions):
        steps = split_steps(solution, task.step_delimiter)
        if not steps:
            continue
        final = 1.0 if task.verify(example, solution).correct else 0.0
        if not rollouts:
            out.append(StepLabels(example.problem.id, prompt, steps, [final] * len(steps), [int(final)] * len(steps)))
            continue
        prefixes = ["".join(steps[: i + 1]) for i in range(len(steps) - 1)]
        requests = [GenerationRequest(prompt + prefix, n=rollouts, max_tokens=max_tokens,
                                      seed=(base_seed + 7919 * (s_index + 1) + 104729 * (i + 1)) & 0x7FFFFFFF)
                    for i, prefix in enumerate(prefixes)]
        results = await completer.generate(requests) if requests else []
        values = []
        for prefix, res in zip(prefixes, results):
            ok = sum(1 for g in res.generations
                     if g.finish_reason == "stop" and task.verify(example, prefix + g.text).correct)
            values.append(ok / rollouts)
        values.append(final)
        out.append(StepLabels(example.problem.id, prompt, steps, values, [int(v > 0) for v in values]))
    return out


async def label_steps(task: Task, policy: Policy, examples: list[Example], samples: int = 4, rollouts: int = 8,
                      seed: int = 0, on_done: Callable[[list[StepLabels]], None] | None = None,
                      completer: Policy | None = None, concurrency: int = 128) -> list[StepLabels]:
    """Step labels for many problems; `concurrency` of them at a time share the policy's batches
    (all at once would keep a progress bar at zero until the very end)."""
    gate = asyncio.Semaphore(concurrency)

    async def one(example: Example) -> list[StepLabels]:
        async with gate:
            records = await label_example(task, policy, example, samples, rollouts, seed, completer=completer)
        if on_done:
            on_done(records)
        return records

    groups = await asyncio.gather(*(one(e) for e in examples))
    return [r for g in groups for r in g]


async def label_outcomes(task: Task, policy: Policy, examples: list[Example], samples: int = 8, seed: int = 0,
                         max_tokens: int = 160, on_done: Callable[[list[StepLabels]], None] | None = None,
                         ) -> list[StepLabels]:
    """Outcome labels for an ORM: each finished solution as one step, valued by its verdict."""

    async def one(example: Example) -> list[StepLabels]:
        request = GenerationRequest(example.problem.prompt, n=samples, max_tokens=max_tokens,
                                    seed=problem_seed(seed, example.problem.id))
        (result,) = await policy.generate([request])
        records = []
        for g in result.generations:
            if g.finish_reason == "stop" and g.text.strip():
                value = 1.0 if task.verify(example, g.text).correct else 0.0
                records.append(StepLabels(example.problem.id, example.problem.prompt, [g.text], [value], [int(value)]))
        if on_done:
            on_done(records)
        return records

    groups = await asyncio.gather(*(one(e) for e in examples))
    return [r for g in groups for r in g]


def write_jsonl(records: list[StepLabels], path: str | Path) -> None:
    Path(path).write_text("".join(r.to_json() + "\n" for r in records))


def read_jsonl(path: str | Path) -> list[StepLabels]:
    out = []
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        try:
            out.append(StepLabels(**json.loads(line)))
        except (json.JSONDecodeError, TypeError) as e:
            raise ValueError(f"{path}:{i}: not a step-label record ({e})") from None
    return out
