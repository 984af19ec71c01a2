"""Tasks by name. A Task gives problems by split, renders prompts and verifies."""

from __future__ import annotations

from thinkscale.registry import Registry
from thinkscale.tasks.base import Example, Problem, Task, Verdict

TASKS: Registry[Task] = Registry("task")


@TASKS.register("arithmetic")
def _arithmetic() -> Task:
    from thinkscale.tasks.arithmetic import ArithmeticTask

    return ArithmeticTask()


@TASKS.register("countdown")
def _countdown() -> Task:
    from thinkscale.tasks.countdown import CountdownTask

    return CountdownTask()


def get_task(name: str) -> Task:
    return TASKS.get(name)()


__all__ = ["Example", "Problem", "Task", "Verdict", "TASKS", "get_task"]
