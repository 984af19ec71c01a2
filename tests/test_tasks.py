"""Built-in tasks: seeded generators, disjoint splits, step checks and verdicts."""

from __future__ import annotations

import dataclasses
import random

import pytest

from thinkscale.tasks import get_task
from thinkscale.tasks.arithmetic import parse, render, successors
from thinkscale.tasks.base import Example, Problem, split_of
from thinkscale.tasks.countdown import count_solutions, moves


def all_orders(tree) -> list[list[str]]:
    """Every valid solution of an arithmetic tree, as lists of lines."""
    if isinstance(tree, int):
        return [[]]
    return [[render(s), *rest] for s in successors(tree) for rest in all_orders(s)]


@pytest.mark.parametrize("name", ["arithmetic", "countdown"])
def test_examples_are_seeded_and_splits_disjoint(name):
    task = get_task(name)
    a = task.examples("test", 60, seed=3)
    b = task.examples("test", 60, seed=3)
    assert [e.problem for e in a] == [e.problem for e in b]
    assert [e.problem.prompt for e in task.examples("test", 60, seed=4)] != [e.problem.prompt for e in a]
    test_prompts = {e.problem.prompt for e in task.examples("test", 150)}
    train_prompts = {e.problem.prompt for e in task.examples("train", 300)}
    assert len(test_prompts) == 150  # distinct
    assert not test_prompts & train_prompts
    stream = task.training_stream(0)
    assert not {next(stream)[0] for _ in range(500)} & test_prompts
    assert all(split_of(p) == "test" for p in test_prompts)


@pytest.mark.parametrize("name", ["arithmetic", "countdown"])
def test_every_problem_carries_its_difficulty_and_no_reference(name):
    task = get_task(name)
    examples = task.examples("test", 30)
    assert {e.problem.difficulty for e in examples} == set(task.difficulties)
    # What a strategy sees has no field that could hold the answer.
    assert {f.name for f in dataclasses.fields(Problem)} == {"id", "prompt", "difficulty"}


def test_arithmetic_reference_solutions_verify(arithmetic):
    rng = random.Random(0)
    for difficulty in arithmetic.difficulties:
        for _ in range(20):
            prompt, value, solution = arithmetic.generate(rng, difficulty)
            example = Example(Problem("p", prompt, difficulty), value)
            assert arithmetic.verify(example, solution).correct
            assert arithmetic.first_invalid_step(example, solution) is None
            assert len(arithmetic.split_steps(solution)) == difficulty
            assert parse(prompt.rstrip("=\n")) is not None


def test_arithmetic_accepts_every_valid_order(arithmetic):
    tree = parse("(3+5)*(7-2)-(9-4)")
    orders = all_orders(tree)
    assert len(orders) == 8  # 9-4 may come at any of 4 places; 3+5 and 7-2 in either order
    example = Example(Problem("p", "(3+5)*(7-2)-(9-4)=\n", 5), 35)
    for lines in orders:
        solution = "\n".join(lines) + "\n"
        assert arithmetic.verify(example, solution).correct, solution
        assert arithmetic.first_invalid_step(example, solution) is None


def test_arithmetic_catches_a_wrong_step(arithmetic):
    example = Example(Problem("p", "(3+5)*(7-2)=\n", 3), 40)
    assert arithmetic.first_invalid_step(example, "8*(7-2)\n8*6\n48\n") == 1  # 7-2 is not 6
    assert arithmetic.first_invalid_step(example, "8*5\n40\n") == 0  # two operations at once
    assert arithmetic.first_invalid_step(example, "3+5*(7-2)\n") == 0  # dropped parentheses
    assert arithmetic.first_invalid_step(example, "8*(7-2)\n8*5\n40\n") is None
    verdict = arithmetic.verify(example, "8*(7-2)\n8*6\n48\n")
    assert not verdict.correct and "48" in verdict.reason
    assert not arithmetic.verify(example, "8*(7-2)\n8*5\n").correct  # never reached a number
    assert arithmetic.extract_answer("8*5\n40\n") == "40"
    assert arithmetic.extract_answer("") is None


def test_arithmetic_parser_round_trips_and_rejects_garbage():
    for text in ["1+2+3", "1+(2+3)", "(1+2)*3", "1-(2-3)", "2*3*4", "2*(3*4)", "9-2*3+1"]:
        assert render(parse(text)) == text
    for bad in ["", "1+", "(1+2", "1++2", "1+2)", "01+2", "1=2", "a"]:
        with pytest.raises(ValueError):
            parse(bad)


def test_countdown_accepts_every_valid_path(countdown):
    numbers, target = [3, 7, 5, 9], 24
    example = Example(Problem("p", "3,7,5,9>24\n", 1), (numbers, target))

    def paths(pool):
        if len(pool) == 1:
            return [[]] if pool[0] == target else []
        out = []
        for a, op, b, c in moves(tuple(pool)):
            rest = list(pool)
            rest.remove(a)
            rest.remove(b)
            out += [[f"{a}{op}{b}={c}", *p] for p in paths(rest + [c])]
        return out

    solutions = paths(numbers)
    assert len(solutions) == count_solutions(tuple(sorted(numbers)), target) > 3
    for lines in solutions:
        assert countdown.verify(example, "\n".join(lines) + "\n").correct
    # the swapped order of a commutative step is valid too
    assert countdown.verify(example, "7+5=12\n9-3=6\n12*6=72\n").reason.startswith("ends at 72")
    assert countdown.verify(example, "5+7=12\n9-3=6\n6*12=72\n").reason.startswith("ends at 72")


def test_countdown_checks_every_step(countdown):
    example = Example(Problem("p", "3,7,5,9>24\n", 1), ([3, 7, 5, 9], 24))
    good = "7-5=2\n9+3=12\n12*2=24\n"
    assert countdown.verify(example, good).correct
    cases = {
        "7-5=2\n9+3=12\n0*3=24\n": "not in the pool",  # lands on the target by an illegal step
        "7-5=2\n9+3=12\n12*2=25\n": "wrong",  # bad arithmetic
        "7-5=2\n2*12=24\n": "not in the pool",  # 12 was never made
        "7*3=21\n21+5=26\n": "numbers left",  # 9 unused
        "5-7=2\n": "wrong or not allowed",  # negative intermediate
        "9/5=1\n": "wrong or not allowed",  # inexact division
        "7-5=2\n9+3=12\n12*2=24\n24-0=24\n": "not in the pool",
        "seven\n": "not 'a op b=c'",
        "": "numbers left",
    }
    for completion, reason in cases.items():
        verdict = countdown.verify(example, completion)
        assert not verdict.correct, completion
        assert reason in verdict.reason, (completion, verdict.reason)
    assert countdown.verify(example, "3*7=21\n21+9=30\n30-5=25\n").reason.startswith("ends at 25")


def test_countdown_generated_problems_are_solvable_and_graded(countdown):
    for e in countdown.examples("test", 30):
        numbers, target = e.reference
        assert countdown.parse_prompt(e.problem.prompt) == (numbers, target)
        assert count_solutions(tuple(sorted(numbers)), target) >= 1
    rng = random.Random(1)
    for _ in range(50):
        prompt, reference, solution = countdown.generate(rng, rng.choice(countdown.difficulties))
        assert countdown.verify(Example(Problem("p", prompt, 1), reference), solution).correct


def test_unknown_task_names_the_closest_choice():
    with pytest.raises(ValueError, match="Did you mean 'arithmetic'"):
        get_task("arithmetc")
    with pytest.raises(ValueError, match="unknown split"):
        get_task("countdown").examples("validation", 3)
