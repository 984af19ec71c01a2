"""Tasks by name. A Task gives problems by split, renders prompts and verifies."""

from __future__ import annotations

from typing import Any

from thinkscale.registry import Registry
from thinkscale.tasks.base import Example, Problem, Task, Verdict

TASKS: Registry[Task] = Registry("task")


@TASKS.register("arithmetic")
def _arithmetic() -> Task:
    from thinkscale.tasks.arithmetic import ArithmeticTask

    return ArithmeticTask()


@TASKS.register("arithmetic-large")
def _arithmetic_large(**options: Any) -> Task:
    from thinkscale.tasks.arithmetic_large import LargeArithmeticTask

    return LargeArithmeticTask(**options)


@TASKS.register("countdown")
def _countdown() -> Task:
    from thinkscale.tasks.countdown import CountdownTask

    return CountdownTask()


@TASKS.register("gsm8k")
def _gsm8k(**options: Any) -> Task:
    from thinkscale.tasks.gsm8k import GSM8KTask

    return GSM8KTask(**options)


@TASKS.register("math500")
def _math500(**options: Any) -> Task:
    from thinkscale.tasks.math500 import MATH500, MathTask

    options.setdefault("sources", MATH500)
    return MathTask(name="math500", **options)


@TASKS.register("aime")
def _aime(**options: Any) -> Task:
    from thinkscale.tasks.math500 import AIME, MathTask

    options.setdefault("sources", AIME)
    return MathTask(name="aime", **options)


@TASKS.register("humaneval")
def _humaneval(**options: Any) -> Task:
    from thinkscale.tasks.humaneval import HumanEvalTask

    return HumanEvalTask(**options)


@TASKS.register("jsonl")
def _jsonl(**options: Any) -> Task:
    from thinkscale.tasks.jsonl import JsonlTask

    return JsonlTask(**options)


REASONING_GYM_PREFIX = "reasoning_gym:"


def get_task(name: str, **options: Any) -> Task:
    """The task called `name`, built with `options` (e.g. get_task("jsonl", path=...)).

    `reasoning_gym:<dataset>` names any reasoning-gym dataset; its options are
    that dataset's config.
    """
    if name.startswith(REASONING_GYM_PREFIX):
        from thinkscale.tasks.gym import ReasoningGymTask

        return ReasoningGymTask(name[len(REASONING_GYM_PREFIX):], **options)
    return TASKS.get(name)(**options)


__all__ = ["Example", "Problem", "Task", "Verdict", "TASKS", "get_task"]
