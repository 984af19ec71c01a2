"""Countdown: reach a target from four numbers with + - * / (exact division only).

Prompt:   `3,7,5,9>24\n`
Solution: `7-5=2\n9+3=12\n12*2=24\n` -- each line combines two numbers still in
the pool into a new one; all four numbers are used exactly once, and the last
result must be the target. Any valid path is accepted, and the verifier checks
every step (a final line that lands on the target by an illegal step fails).
Difficulty is 1 (many solution paths) to 3 (few).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from functools import lru_cache
from itertools import combinations

from thinkscale.tasks.base import Example, Task, Verdict

_STEP = re.compile(r"(\d+)([-+*/])(\d+)=(\d+)")
_PROMPT = re.compile(r"(\d+),(\d+),(\d+),(\d+)>(\d+)\n?")


def apply(a: int, op: str, b: int) -> int | None:
    """a op b, or None where the step is not allowed (negative or inexact)."""
    if op == "+":
        return a + b
    if op == "*":
        return a * b
    if op == "-":
        return a - b if a >= b else None
    if op == "/":
        return a // b if b != 0 and a % b == 0 else None
    raise ValueError(op)


def moves(pool: tuple[int, ...]) -> list[tuple[int, str, int, int]]:
    """Every legal step (a, op, b, result) from a pool of numbers."""
    out = []
    for i, j in combinations(range(len(pool)), 2):
        for a, b in ((pool[i], pool[j]), (pool[j], pool[i])):
            for op in "+-*/":
                if op in "+*" and a > b:
                    continue  # a+b and b+a are the same move; keep one
                c = apply(a, op, b)
                if c is not None:
                    out.append((a, op, b, c))
    return out


def _remove(pool: tuple[int, ...], *values: int) -> tuple[int, ...]:
    rest = list(pool)
    for v in values:
        rest.remove(v)
    return tuple(rest)


def count_solutions(pool: tuple[int, ...], target: int) -> int:
    """Number of distinct step sequences that reach `target` using the whole pool."""
    return _endings(tuple(sorted(pool)))[target]


@lru_cache(maxsize=None)  # all 1,365 pools of four numbers 1-12 and the pools they lead to: 12,328, about 11 MB
def _endings(pool: tuple[int, ...]) -> Counter:
    """How many distinct step sequences through the whole (sorted) pool end at each number. Read only."""
    if len(pool) == 1:
        return Counter(pool)
    out: Counter = Counter()
    for a, _, b, c in moves(pool):
        out.update(_endings(tuple(sorted(_remove(pool, a, b) + (c,)))))
    return out


def check_steps(numbers: list[int], target: int, steps: list[str]) -> Verdict:
    pool = Counter(numbers)
    for i, step in enumerate(steps):
        m = _STEP.fullmatch(step.strip())
        if not m:
            return Verdict(False, f"step {i + 1} is not 'a op b=c': {step!r}")
        a, op, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
        need = Counter([a, b])
        if any(pool[v] < k for v, k in need.items()):
            return Verdict(False, f"step {i + 1} uses a number not in the pool: {step!r}")
        if apply(a, op, b) != c:
            return Verdict(False, f"step {i + 1} is wrong or not allowed: {step!r}")
        pool -= need
        pool[c] += 1
    if sum(pool.values()) != 1:
        return Verdict(False, f"{sum(pool.values())} numbers left; every number must be used")
    if pool[target] != 1:
        return Verdict(False, f"ends at {next(iter(pool))}, not the target {target}")
    return Verdict(True)


class CountdownTask(Task):
    name = "countdown"
    difficulties = (1, 2, 3)
    votable = False  # every valid solution ends at the target: a vote has nothing to choose

    def _difficulty(self, numbers: list[int], target: int) -> int:
        n = count_solutions(tuple(sorted(numbers)), target)
        return 1 if n >= 12 else 2 if n >= 4 else 3

    def _draw(self, rng: random.Random) -> tuple[list[int], int, str]:
        """Four random numbers, a random legal path through them, and where it lands."""
        while True:
            numbers = [rng.randint(1, 12) for _ in range(4)]
            pool, lines = tuple(numbers), []
            while len(pool) > 1:
                a, op, b, c = rng.choice(moves(pool))
                pool = _remove(pool, a, b) + (c,)
                lines.append(f"{a}{op}{b}={c}")
            if 10 <= pool[0] <= 99:
                return numbers, pool[0], "\n".join(lines) + "\n"

    @staticmethod
    def _prompt(numbers: list[int], target: int) -> str:
        return f"{','.join(map(str, numbers))}>{target}\n"

    def generate(self, rng: random.Random, difficulty: int) -> tuple[str, tuple[list[int], int], str]:
        while True:
            numbers, target, solution = self._draw(rng)
            if self._difficulty(numbers, target) == difficulty:
                return self._prompt(numbers, target), (numbers, target), solution

    def generate_for_training(self, rng: random.Random) -> tuple[str, str]:
        numbers, target, solution = self._draw(rng)  # any difficulty: skip the costly count
        return self._prompt(numbers, target), solution

    def extract_answer(self, completion: str) -> str | None:
        lines = self.split_steps(completion)
        m = _STEP.fullmatch(lines[-1].strip()) if lines else None
        return m[4] if m else None

    def answer_is_correct(self, example: Example, answer: str) -> bool:
        raise NotImplementedError("countdown is graded on its steps; a bare answer cannot be checked")

    def verify(self, example: Example, completion: str) -> Verdict:
        numbers, target = example.reference
        return check_steps(numbers, target, self.split_steps(completion))

    @staticmethod
    def parse_prompt(prompt: str) -> tuple[list[int], int]:
        m = _PROMPT.fullmatch(prompt)
        if not m:
            raise ValueError(f"not a countdown prompt: {prompt!r}")
        values = [int(g) for g in m.groups()]
        return values[:4], values[4]
