"""Arithmetic with large numbers: the same reduction, with operands of up to four digits.

Prompt:   `347*28+1204=\n`
Solution: `9716+1204\n10920\n` -- as in `arithmetic`, one innermost operation
per line. The tiny core learns single-step facts up to 99 from `arithmetic`;
here a step such as `347*28` -> `9716` is a multiplication it cannot do in one
line by hand, which is what a tool is for.

With `tool_calls=True` the reference solutions call a tool for every hard
operation (an operand or a result above 99) and copy its result:

    [347*28]=9716
    9716+1204
    [9716+1204]=10920
    10920

A call is the tiny core's tag: the model writes `[`, the operation and `]`;
the search stops it at `]`, runs the tool on the operation and appends
`=` and the result (tools/base.py: `TAG`), and the model goes on. The
problems are the same with and without tool calls (the option changes only the
solutions a policy is trained on), so the two checkpoints are graded on the
same draws. Values stay in 0..99999.
"""

from __future__ import annotations

import random

from thinkscale.tasks.arithmetic import (ArithmeticTask, Tree, evaluate, first_invalid_step, parse, render, successors,
                                         values_in_range)

MAX_LARGE_VALUE = 99_999
HAND_LIMIT = 99  # the largest number in the facts the tiny core learns by hand (arithmetic's MAX_VALUE)
MAX_CHARACTERS = 230  # prompt and solution together stay within the tiny core's 256 positions


def _reduced(before: Tree, after: Tree) -> tuple[str, int, int, int]:
    """The one operation that turned `before` into `after`: (op, left, right, value)."""
    if isinstance(before, int):
        raise ValueError("nothing was reduced")
    op, left, right = before
    if isinstance(left, int) and isinstance(right, int):
        return op, left, right, evaluate(before)
    _, after_left, after_right = after
    return _reduced(left, after_left) if after_left != left else _reduced(right, after_right)


def is_hard(left: int, right: int, value: int) -> bool:
    """An operation the tiny core does not know by hand: a number in it is above HAND_LIMIT."""
    return max(left, right, value) > HAND_LIMIT


def needs_tool(prompt: str) -> bool:
    """Whether reducing the problem in `prompt` meets a hard operation (taking the first ready one each time)."""
    tree = parse(prompt.rstrip("=\n"))
    while not isinstance(tree, int):
        following = successors(tree)[0]
        if is_hard(*_reduced(tree, following)[1:]):
            return True
        tree = following
    return False


class LargeArithmeticTask(ArithmeticTask):
    name = "arithmetic-large"
    difficulties = (2, 3, 4)
    extra_characters = "[]"  # the tool tag (a tool's result follows it as `=VALUE`)

    def __init__(self, tool_calls: bool = False) -> None:
        self.tool_calls = tool_calls

    def _leaf(self, rng: random.Random) -> int:
        digits = rng.choice((1, 2, 3, 4))
        return rng.randint(2 if digits == 1 else 10 ** (digits - 1), 10 ** digits - 1)

    def _random_tree(self, rng: random.Random, ops: int) -> Tree:
        if ops == 0:
            return self._leaf(rng)
        left_ops = rng.randint(0, ops - 1)
        return (rng.choice("+-*"), self._random_tree(rng, left_ops), self._random_tree(rng, ops - 1 - left_ops))

    def generate(self, rng: random.Random, difficulty: int) -> tuple[str, int, str]:
        while True:
            tree = self._random_tree(rng, difficulty)
            if not values_in_range(tree, MAX_LARGE_VALUE):
                continue
            lines, current = [], tree
            while not isinstance(current, int):
                following = rng.choice(successors(current))
                op, left, right, value = _reduced(current, following)
                if self.tool_calls and is_hard(left, right, value):
                    lines.append(f"[{left}{op}{right}]={value}")
                current = following
                lines.append(render(current))
            prompt, solution = f"{render(tree)}=\n", "\n".join(lines) + "\n"
            if len(prompt) + len(solution) <= MAX_CHARACTERS:
                return prompt, evaluate(tree), solution

    def first_invalid_step(self, example, completion: str) -> int | None:
        """Where the solution first goes wrong: a reduction line that is not one valid step from the line
        before it, or a tool line whose operation is malformed or whose result is wrong."""
        return first_invalid_step(example.problem.prompt.rstrip("=\n"), self.split_steps(completion), _tool_line)


def _tool_line(step: str) -> bool | None:
    """None for a line that is not a tool call; else whether it is one operation followed by its value."""
    if not step.startswith("["):
        return None
    call, _, result = step[1:].partition("]=")
    try:
        operation = parse(call)
    except ValueError:
        return False
    return isinstance(operation, tuple) and all(isinstance(x, int) for x in operation[1:]) \
        and str(evaluate(operation)) == result
