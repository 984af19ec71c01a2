"""Arithmetic: reduce an integer expression one operation per line.

Prompt:   `(3+5)*(7-2)=\n`
Solution: `8*(7-2)\n8*5\n40\n` -- each line is the previous expression with one
innermost operation (both operands plain numbers) replaced by its value; the
last line is the answer. Where two operations are ready, either may go first,
so a problem has several valid orders of solution. Difficulty is the number of
operations. Values stay in 0..99 so that every step is a small fact.
"""

from __future__ import annotations

import random
import re
from typing import Callable, Union

from thinkscale.tasks.base import Example, Task, Verdict

Tree = Union[int, tuple[str, "Tree", "Tree"]]
PRECEDENCE = {"+": 1, "-": 1, "*": 2}
MAX_VALUE = 99


def evaluate(tree: Tree) -> int:
    if isinstance(tree, int):
        return tree
    op, left, right = tree
    a, b = evaluate(left), evaluate(right)
    return a + b if op == "+" else a - b if op == "-" else a * b


def render(tree: Tree) -> str:
    """Shortest text that parses back to the same tree (left-associative)."""
    if isinstance(tree, int):
        return str(tree)
    op, left, right = tree
    left_text, right_text = render(left), render(right)
    if not isinstance(left, int) and PRECEDENCE[left[0]] < PRECEDENCE[op]:
        left_text = f"({left_text})"
    if not isinstance(right, int) and PRECEDENCE[right[0]] <= PRECEDENCE[op]:
        right_text = f"({right_text})"
    return f"{left_text}{op}{right_text}"


_TOKEN = re.compile(r"\d+|[-+*()]")


def parse(text: str) -> Tree:
    """Parse an expression of non-negative integers; ValueError if it is not one."""
    if not text or _TOKEN.sub("", text):
        raise ValueError(f"not an expression: {text!r}")
    tokens = _TOKEN.findall(text)
    pos = 0

    def peek() -> str | None:
        return tokens[pos] if pos < len(tokens) else None

    def take() -> str:
        nonlocal pos
        if pos >= len(tokens):
            raise ValueError(f"unexpected end of {text!r}")
        pos += 1
        return tokens[pos - 1]

    def atom() -> Tree:
        tok = take()
        if tok == "(":
            tree = expr()
            if take() != ")":
                raise ValueError(f"unbalanced parentheses in {text!r}")
            return tree
        if tok.isdigit() and (tok == "0" or not tok.startswith("0")):
            return int(tok)
        raise ValueError(f"unexpected {tok!r} in {text!r}")

    def term() -> Tree:
        tree = atom()
        while peek() == "*":
            take()
            tree = ("*", tree, atom())
        return tree

    def expr() -> Tree:
        tree = term()
        while peek() in ("+", "-"):
            tree = (take(), tree, term())
        return tree

    tree = expr()
    if pos != len(tokens):
        raise ValueError(f"trailing {tokens[pos]!r} in {text!r}")
    return tree


def successors(tree: Tree) -> list[Tree]:
    """Every tree reachable by evaluating one operation whose operands are numbers."""
    if isinstance(tree, int):
        return []
    op, left, right = tree
    if isinstance(left, int) and isinstance(right, int):
        return [evaluate(tree)]
    return [(op, s, right) for s in successors(left)] + [(op, left, s) for s in successors(right)]


def values_in_range(tree: Tree, max_value: int = MAX_VALUE) -> bool:
    """Whether every value in `tree` (each operation's result) lies in 0..max_value."""
    if isinstance(tree, int):
        return True
    _, left, right = tree
    return values_in_range(left, max_value) and values_in_range(right, max_value) and 0 <= evaluate(tree) <= max_value


def first_invalid_step(prompt_expr: str, steps: list[str],
                       side_step: Callable[[str], bool | None] | None = None) -> int | None:
    """Index of the first step that is not one valid reduction of the line before it.

    `side_step(step)` may claim a step that is not a reduction (a tool call's
    line): True if it is valid, False if not, None if it is not one of its own.
    """
    current = parse(prompt_expr)
    for i, step in enumerate(steps):
        claimed = side_step(step) if side_step is not None else None
        if claimed is not None:
            if not claimed:
                return i
            continue
        try:
            nxt = parse(step)
        except ValueError:
            return i
        if nxt not in successors(current):
            return i
        current = nxt
    return None


class ArithmeticTask(Task):
    name = "arithmetic"
    difficulties = (2, 3, 4, 5, 6, 7)

    def _random_tree(self, rng: random.Random, ops: int) -> Tree:
        if ops == 0:
            return rng.randint(1, 9)
        left_ops = rng.randint(0, ops - 1)
        return (rng.choice("+-*"), self._random_tree(rng, left_ops), self._random_tree(rng, ops - 1 - left_ops))

    def generate(self, rng: random.Random, difficulty: int) -> tuple[str, int, str]:
        while True:
            tree = self._random_tree(rng, difficulty)
            if values_in_range(tree):
                break
        lines = []
        current = tree
        while not isinstance(current, int):
            current = rng.choice(successors(current))
            lines.append(render(current))
        return f"{render(tree)}=\n", evaluate(tree), "\n".join(lines) + "\n"

    def extract_answer(self, completion: str) -> str | None:
        lines = self.split_steps(completion)
        if not lines or not re.fullmatch(r"\d+", lines[-1].strip()):
            return None
        return str(int(lines[-1].strip()))

    def answer_is_correct(self, example: Example, answer: str) -> bool:
        return answer is not None and answer == str(example.reference)

    def verify(self, example: Example, completion: str) -> Verdict:
        answer = self.extract_answer(completion)
        if answer is None:
            return Verdict(False, "no final number")
        if not self.answer_is_correct(example, answer):
            return Verdict(False, f"answer {answer} != {example.reference}")
        return Verdict(True)

    def first_invalid_step(self, example: Example, completion: str) -> int | None:
        """Step-level check: where the reduction first goes wrong (None: every step valid)."""
        return first_invalid_step(example.problem.prompt.rstrip("=\n"), self.split_steps(completion))
