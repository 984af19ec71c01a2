"""What tasks over a fixed set of problems share: rows, splits, prompts, grading.

A real benchmark has no generator: its problems are rows of a file. A
`DatasetTask` reads the file each time `examples` is called and keeps nothing
of it, so the task object a strategy holds carries no reference answers.

Order: file order for seed 0; any other seed shuffles the rows (the same way
for the same seed) before the first `n` are taken.

A `PromptFormat` says how problems are put to a model: as text it continues
(a base model), or as a chat (the prompt is the user's message, with the
task's answer-format instructions, and `task.messages(problem)` adds the system
prompt). Tasks that take no `format=` get one with `task.with_format(...)`.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import importlib.util
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from thinkscale.tasks.base import Example, Problem, Task, Verdict
from thinkscale.verify.math import extract_boxed, math_equal


@dataclass(frozen=True)
class Row:
    """One problem of a dataset, its reference answer included."""

    id: str
    question: str
    answer: Any  # the reference: a bare answer, or what a task's verifier needs (tests, for code)
    difficulty: int = 0


@dataclass(frozen=True)
class PromptFormat:
    """How a problem is put to a model.

    kind: 'completion' (the prompt is text the model continues) or 'chat' (the
        prompt is the user's message; the backend applies its chat template).
    system: the system prompt of a chat ('' for none).
    template: the prompt, with '{question}' and the answer-format instructions,
        in place of the task's own for this kind.
    step_delimiter: what ends a step, in place of the task's own; a blank line
        for chat unless given.
    """

    kind: str = "completion"
    system: str = ""
    template: str | None = None
    step_delimiter: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("completion", "chat"):
            raise ValueError(f"prompt format kind must be 'completion' or 'chat', got {self.kind!r}")
        if self.system and self.kind != "chat":
            raise ValueError("a system prompt needs kind='chat' (a completion prompt has no system message)")
        if self.template is not None and "{question}" not in self.template:
            raise ValueError(f"the prompt template has no '{{question}}': {self.template!r}")
        if self.step_delimiter == "":
            raise ValueError("the step delimiter must not be empty")


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line; ValueError naming file and line otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no such file: {path}")
    opened = gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")
    with opened as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            yield lineno, row


def package_file(package: str, relative: str, missing: str) -> Path:
    """A data file inside an installed package, found without importing it; ValueError(`missing`) if not there."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(missing)
    return Path(next(iter(spec.submodule_search_locations))) / relative


def column(row: dict[str, Any], name: str, where: str) -> Any:
    """row[name], or a ValueError that names the column, the place and the columns there are."""
    if name not in row:
        raise ValueError(f"{where}: no column {name!r} (columns: {', '.join(map(repr, row)) or 'none'})")
    return row[name]


def level_of(value: Any, where: str) -> int:
    """A difficulty level from an int or a label like 'Level 3'."""
    if isinstance(value, bool):
        raise ValueError(f"{where}: difficulty {value!r} is not a level")
    if isinstance(value, int):
        return value
    m = re.search(r"-?\d+", str(value))
    if m is None:
        raise ValueError(f"{where}: difficulty {value!r} is not a level")
    return int(m.group(0))


def reference_answer(text: Any) -> str:
    """The final answer inside a reference: after '####' (GSM8K), else in \\boxed{} (MATH), else all of it."""
    text = str(text)
    if "####" in text:
        return text.rsplit("####", 1)[1].strip().replace(",", "")
    return extract_boxed(text) or text.strip()


class DatasetTask(Task):
    """A task whose problems are the rows of a dataset; subclasses implement `rows`."""

    name = "dataset"
    splits: tuple[str, ...] = ("test",)
    difficulties: tuple[int, ...] = (0,)
    step_delimiter = "\n\n"  # chat models separate steps with a blank line
    template = "{question}"
    chat_template: str | None = None  # the user's message for chat models, if not `template`

    def __init__(self, template: str | None = None, format: PromptFormat | None = None) -> None:  # noqa: A002
        self._completion_template = self.template if template is None else template
        self._apply(format or PromptFormat())

    def _apply(self, format: PromptFormat) -> None:  # noqa: A002
        if not isinstance(format, PromptFormat):
            raise TypeError(f"{self.name}: format must be a PromptFormat, got {type(format).__name__}")
        self.format = format
        self.template = format.template or (self.chat_template if format.kind == "chat" else None) \
            or self._completion_template
        self.step_delimiter = format.step_delimiter or ("\n\n" if format.kind == "chat" else type(self).step_delimiter)
        if "{question}" not in self.template:
            raise ValueError(f"{self.name}: the prompt template has no '{{question}}': {self.template!r}")

    def with_format(self, format: PromptFormat) -> DatasetTask:  # noqa: A002
        """A copy of this task that puts its problems to a model in `format`."""
        task = copy.copy(self)
        task._apply(format)
        return task

    def messages(self, problem: Problem) -> list[dict[str, str]]:
        """The chat messages for `problem`: the system prompt, if any, and the user's message."""
        if self.format.kind != "chat":
            raise ValueError(f"{self.name} renders completion prompts; give it format=PromptFormat('chat') "
                             f"(or use with_format) to get chat messages")
        system = [{"role": "system", "content": self.format.system}] if self.format.system else []
        return [*system, {"role": "user", "content": problem.prompt}]

    # -- subclasses implement ------------------------------------------------
    def rows(self, split: str) -> list[Row]:
        """Every row of `split`, read afresh (the task keeps no references)."""
        raise NotImplementedError

    def check(self, answer: str, reference: str) -> Verdict:
        """Whether a bare answer matches the reference; math equivalence unless a task says otherwise."""
        return math_equal(answer, reference)

    # -- shared --------------------------------------------------------------
    def prompt(self, question: str) -> str:
        # str.replace, not str.format: templates hold LaTeX braces such as \boxed{}.
        return self.template.replace("{question}", question)

    def examples(self, split: str, n: int | None = None, seed: int = 0) -> list[Example]:
        """The first `n` problems of `split` (all of them if n is None or larger), shuffled if seed != 0."""
        if split not in self.splits:
            raise ValueError(f"{self.name} has no split {split!r}; splits: {', '.join(self.splits)}")
        rows = self.rows(split)
        if seed != 0:
            random.Random(f"{self.name}/{split}/{seed}").shuffle(rows)
        if n is not None:
            rows = rows[:n]
        return [Example(Problem(id=f"{self.name}/{row.id}", prompt=self.prompt(row.question),
                                difficulty=row.difficulty), row.answer) for row in rows]

    def held_out(self, prompt: str) -> bool:
        """Whether `prompt`'s text is one of the prompts of a split other than "train" (by content hash)."""
        if self._held_out_hashes is None:
            self._held_out_hashes = {hashlib.sha256(e.problem.prompt.encode()).digest()
                                     for split in self.splits if split != "train" for e in self.examples(split)}
        return hashlib.sha256(prompt.encode()).digest() in self._held_out_hashes

    _held_out_hashes: set[bytes] | None = None

    def generate(self, rng: random.Random, difficulty: int) -> tuple[str, Any, str]:
        raise ValueError(f"{self.name} is a fixed dataset with no generator: it gives problems by examples(), "
                         f"and has no reference solutions to train a policy on")

    def answer_is_correct(self, example: Example, answer: str) -> bool:
        return answer is not None and self.check(answer, example.reference).correct

    def verify(self, example: Example, completion: str) -> Verdict:
        answer = self.extract_answer(completion)
        if answer is None:
            return Verdict(False, "no final answer")
        verdict = self.check(answer, example.reference)
        return Verdict(verdict.correct, f"{answer!r} vs {example.reference!r}: {verdict.reason}")
