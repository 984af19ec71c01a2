"""Any question/answer file as a task, graded as math.

    task = get_task("jsonl", path="algebra.jsonl", question="problem", answer="solution",
                    template="Problem: {question}\\nAnswer with \\\\boxed{{}}.")

Reads JSON Lines (`.jsonl`), Parquet (`.parquet`, needs pyarrow), and, with
the `datasets` package installed, a Hugging Face dataset saved with
`save_to_disk` (a folder; a DatasetDict gives its splits) or an `.arrow`
file. Columns are named by the caller: the question, the answer (a bare
answer, a solution with a \\boxed{} answer, or a GSM8K-style '#### 42'), and
optionally an id and a difficulty (an int, or a label like 'Level 3'). A file
is one split, `split` ('test' unless told).

`few_shot` is a list of solved examples, each a (question, solution) pair or
a mapping with 'question' and 'solution', prepended to every prompt in the
same template; each solution should end with its answer in \\boxed{}.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from thinkscale.tasks.dataset import DatasetTask, Row, column, level_of, read_jsonl, reference_answer
from thinkscale.verify.math import extract_boxed, last_number

FewShot = Sequence[tuple[str, str] | Mapping[str, str]]


class JsonlTask(DatasetTask):
    name = "jsonl"
    template = "{question}\n\nSolve it step by step, with a blank line between steps, and put the final answer in \\boxed{}."
    shot_separator = "\n\n"  # between solved examples, and between the last one and the problem
    fallback_to_last_number = False  # True: a completion without \boxed{} answers with its last number

    def __init__(self, path: str | Path, question: str = "question", answer: str = "answer",
                 id: str | None = None, difficulty: str | None = None,  # noqa: A002 - column names
                 template: str | None = None, few_shot: FewShot | None = None, split: str = "test") -> None:
        super().__init__(template)
        self.path = Path(path)
        self.columns = {"question": question, "answer": answer, "id": id, "difficulty": difficulty}
        self.shots = [self._shot(s, i) for i, s in enumerate(few_shot or [])]
        if not self.path.exists():
            raise ValueError(f"no such file: {self.path}")
        self.splits = self._hf_splits() if self._is_hf() else (split,)
        levels = set()
        for s in self.splits:  # read once now so that a bad file fails here, not mid-run
            rows = self.rows(s)
            if not rows:
                raise ValueError(f"{self.path}: no rows" + (f" in split {s!r}" if self._is_hf() else ""))
            levels |= {row.difficulty for row in rows}
        self.difficulties = tuple(sorted(levels))

    @staticmethod
    def _shot(shot: Any, i: int) -> tuple[str, str]:
        if isinstance(shot, Mapping):
            if "question" not in shot or "solution" not in shot:
                raise ValueError(f"few-shot example {i} needs 'question' and 'solution', has {sorted(shot)}")
            return str(shot["question"]), str(shot["solution"])
        question, solution = shot
        return str(question), str(solution)

    def prompt(self, question: str) -> str:
        parts = [f"{DatasetTask.prompt(self, q)}{self.shot_separator}{s}" for q, s in self.shots]
        return self.shot_separator.join([*parts, DatasetTask.prompt(self, question)])

    # -- reading -------------------------------------------------------------
    def _is_hf(self) -> bool:
        return self.path.is_dir() or self.path.suffix == ".arrow"

    def _hf_dataset(self) -> Any:
        try:
            import datasets
        except ImportError:
            raise ValueError(f"{self.path}: reading a Hugging Face dataset needs the datasets package") from None
        if self.path.suffix == ".arrow":
            return datasets.Dataset.from_file(str(self.path))
        try:
            return datasets.load_from_disk(str(self.path))
        except FileNotFoundError as e:
            raise ValueError(f"{self.path}: not a dataset saved with save_to_disk ({e})") from None

    def _hf_splits(self) -> tuple[str, ...]:
        import datasets

        data = self._hf_dataset()
        return tuple(data) if isinstance(data, datasets.DatasetDict) else ("test",)

    def _records(self, split: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """(where, row) for every row, `where` naming the file and line or row."""
        if self._is_hf():
            import datasets

            data = self._hf_dataset()
            if isinstance(data, datasets.DatasetDict):
                data = data[split]
            for i, row in enumerate(data):
                yield f"{self.path} [{split}] row {i}", row
        elif self.path.suffix == ".parquet":
            try:
                import pyarrow.parquet as pq
            except ImportError:
                raise ValueError(f"{self.path}: reading Parquet needs pyarrow") from None
            for i, row in enumerate(pq.read_table(self.path).to_pylist()):
                yield f"{self.path} row {i}", row
        else:
            for lineno, row in read_jsonl(self.path):
                yield f"{self.path}:{lineno}", row

    def rows(self, split: str) -> list[Row]:
        cols = self.columns
        rows = []
        for i, (where, raw) in enumerate(self._records(split)):
            question = column(raw, cols["question"], where)
            answer = column(raw, cols["answer"], where)
            if question is None or answer is None:
                raise ValueError(f"{where}: empty question or answer")
            row_id = str(column(raw, cols["id"], where)) if cols["id"] else str(i)
            level = level_of(column(raw, cols["difficulty"], where), where) if cols["difficulty"] else 0
            rows.append(Row(f"{self.path.stem}/{row_id}", str(question), reference_answer(answer), level))
        return rows

    # -- grading ---------------------------------------------------------------
    def extract_answer(self, completion: str) -> str | None:
        boxed = extract_boxed(completion)
        if boxed is None and self.fallback_to_last_number:
            return last_number(completion)
        return boxed
