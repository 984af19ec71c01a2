"""Search traces as training sets (SFT, preference pairs, step labels) that `datasets` loads as they are."""

from __future__ import annotations

import pytest

from thinkscale.config import RunConfig
from thinkscale.export import write_rows
from thinkscale.runner import run_experiment
from thinkscale.store import RunStore
from thinkscale.trace import Trace
from thinkscale.training.sets import HeldOutProblemError, export_training_set, training_rows

PROBLEMS = 12


def config(tmp_path, split: str) -> RunConfig:
    return RunConfig.from_dict({
        "task": "arithmetic", "split": split, "problems": PROBLEMS, "seeds": [0], "output": str(tmp_path / split),
        "policy": {"name": "tiny", "options": {"threads": 1}},
        "strategies": [{"name": "repeated_sampling", "label": "rs", "settings": {"n": 8}},
                       {"name": "beam_search", "label": "beam", "settings": {"n": 4, "width": 2},
                        "scorer": {"name": "prm"}}]})


@pytest.fixture(scope="module")
def train_run(tmp_path_factory, policy, arithmetic):
    tmp_path = tmp_path_factory.mktemp("sets")
    cfg = config(tmp_path, "train")
    with RunStore.open(cfg.output_path, cfg.to_dict()) as store:
        run_experiment(cfg, store, arithmetic, policy)
    return cfg.output_path


def load(path):
    import datasets

    return datasets.load_dataset("json" if path.suffix == ".jsonl" else "parquet", data_files=str(path),
                                 split="train")


def examples_by_id(arithmetic):
    return {e.problem.id: e for e in arithmetic.examples("train", PROBLEMS)}


def test_sft_rows_are_verified_distinct_and_name_their_source(train_run, tmp_path, arithmetic):
    out = tmp_path / "sft.jsonl"
    count = export_training_set(train_run, out, "sft", max_per_problem=3)
    rows = load(out)
    assert len(rows) == count > 0
    assert set(rows.column_names) == {"prompt", "completion", "run", "strategy", "seed", "problem_id"}
    examples = examples_by_id(arithmetic)
    seen = set()
    for row in rows:
        example = examples[row["problem_id"]]
        assert row["prompt"] == example.problem.prompt
        assert arithmetic.verify(example, row["completion"]).correct
        key = (row["strategy"], row["problem_id"], row["completion"])
        assert key not in seen
        seen.add(key)
    per = {}
    for row in rows:
        per[(row["strategy"], row["problem_id"])] = per.get((row["strategy"], row["problem_id"]), 0) + 1
    assert max(per.values()) <= 3 and {s for s, _ in per} == {"rs", "beam"}
    chat = tmp_path / "chat.parquet"
    export_training_set(train_run, chat, "sft", chat=True)
    first = load(chat)[0]["messages"]
    assert [m["role"] for m in first] == ["user", "assistant"]


def test_preference_pairs_put_a_verified_solution_or_step_above_a_failed_one(train_run, tmp_path, arithmetic):
    out = tmp_path / "pref.parquet"
    export_training_set(train_run, out, "preference")
    rows = load(out)
    examples = examples_by_id(arithmetic)
    kinds = set(rows["kind"])
    assert kinds == {"solution", "step"}
    for row in rows:
        example = examples[row["problem_id"]]
        assert row["chosen"] != row["rejected"]
        if row["kind"] == "solution":
            assert arithmetic.verify(example, row["chosen"]).correct
            assert not arithmetic.verify(example, row["rejected"]).correct
        else:  # two siblings, each with the finished solution beneath it: the path before them is the prompt
            assert row["strategy"] == "beam" and row["prompt"].startswith(example.problem.prompt)
            path = row["prompt"][len(example.problem.prompt):]
            assert arithmetic.verify(example, path + row["chosen"]).correct
            assert not arithmetic.verify(example, path + row["rejected"]).correct
            assert arithmetic.extract_answer(path + row["rejected"]) is not None  # finished, not cut off


def test_step_labels_come_from_the_search_tree(train_run, tmp_path, arithmetic):
    out = tmp_path / "steps.jsonl"
    export_training_set(train_run, out, "steps")
    rows = load(out)
    examples = examples_by_id(arithmetic)
    assert any(len(r["completions"]) > 1 for r in rows if r["strategy"] == "beam")
    for row in rows:
        labels = row["labels"]
        assert len(labels) == len(row["completions"]) >= 1
        assert labels == sorted(labels, reverse=True)  # a step whose subtree succeeded has ancestors that did
        correct = arithmetic.verify(examples[row["problem_id"]], "".join(row["completions"])).correct
        if correct:
            assert all(labels)
        elif row["strategy"] == "rs":
            assert labels == [False]  # one sample: its subtree is itself


def test_no_training_set_holds_a_test_problem(tmp_path, policy, arithmetic, train_run):
    cfg = config(tmp_path, "test")
    cfg = RunConfig.from_dict({**cfg.to_dict(), "problems": 2, "strategies": [cfg.to_dict()["strategies"][0]]})
    with RunStore.open(cfg.output_path, cfg.to_dict()) as store:
        run_experiment(cfg, store, arithmetic, policy)
    with pytest.raises(HeldOutProblemError, match="held-out test split"):
        export_training_set(cfg.output_path, tmp_path / "x.jsonl", "sft")
    assert not (tmp_path / "x.jsonl").exists()
    # by content, not by name: a test problem filed under a train id in a train run is refused too
    sneaky = tmp_path / "sneaky"
    test_prompt = arithmetic.examples("test", 1)[0].problem.prompt
    with RunStore.open(train_run, RunStore.read(train_run).config) as source, \
            RunStore.open(sneaky, source.config) as store:
        trace = Trace(problem_id="arithmetic/train/0/0", strategy="repeated_sampling", settings={}, seed=0)
        trace.add(None, test_prompt)
        store.put_trace("rs/0/arithmetic/train/0/0", trace)
        with pytest.raises(HeldOutProblemError):
            list(training_rows(store, arithmetic, "sft"))


@pytest.mark.parametrize("kind", ["sft", "preference", "steps"])
def test_a_training_set_does_not_depend_on_which_search_finished_first(train_run, tmp_path, arithmetic, kind):
    """The searches of a run finish in whatever order the machine allows; the rows, and so what is trained on
    them, come out the same."""
    with RunStore.read(train_run) as store:
        keyed = list(store.iter_keyed())
        config = store.config
        as_run = list(training_rows(store, arithmetic, kind, run="r"))
    with RunStore.open(tmp_path / "reversed", config) as other:  # the same traces, put in the other order
        for key, trace in reversed(keyed):
            other.put_trace(key, trace)
    with RunStore.read(tmp_path / "reversed") as other:
        assert list(training_rows(other, arithmetic, kind, run="r")) == as_run
    assert as_run


def test_write_rows_appears_whole_or_not_at_all(tmp_path):
    def rows():
        yield {"a": 1}
        raise RuntimeError("the run went away")

    with pytest.raises(RuntimeError):
        write_rows(rows(), tmp_path / "x.jsonl", "jsonl")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["arithmetic", "countdown", "gsm8k", "reasoning_gym:basic_arithmetic"])
def test_held_out_is_judged_by_the_problem_text(name):
    from thinkscale.tasks import get_task

    task = get_task(name)
    test = task.examples("test", 3)
    assert all(task.held_out(e.problem.prompt) for e in test)
    if "train" in getattr(task, "splits", ("train",)):  # drawn tasks have a train split; some datasets only a test one
        assert not any(task.held_out(e.problem.prompt) for e in task.examples("train", 3))
    else:
        assert not task.held_out(test[0].problem.prompt.replace("?", "??") + "\nAnother question.")
