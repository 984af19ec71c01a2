"""Math answer equivalence, under a time limit that works from any thread.

    math_equal("0.5", r"\\frac{1}{2}")          # Verdict(correct=True, reason='equivalent')
    math_equal("(1,2)", "[1,2)")                # Verdict(correct=False, reason='not equivalent')
    extract_boxed(r"... so \\boxed{\\frac{1}{2}}.")  # '\\frac{1}{2}'

The comparison itself is math-verify's (LaTeX and plain answers parsed to
sympy: fractions, decimals, intervals, sets, roots, pi, percent, units in
`\\text{}`). Sympy can run for unbounded time on some inputs (`9^{9^{9^{9}}}`)
and cannot be interrupted from another thread, and math-verify's own limit uses
`signal.alarm`, which only works in the main thread of the main interpreter.

So every check that is not trivially decided here runs in a small persistent
worker process (a plain subprocess reading and writing JSON lines), and the
caller waits for its reply at most `timeout_s`; a worker that overruns is
killed and replaced, and the check counts as not equivalent, reason "timed
out". Why not a ProcessPoolExecutor: it cannot cancel a running task, so one
hung check would mean tearing down the whole pool and every check in flight
from other threads; and a subprocess can be started from any thread, from a
daemonic multiprocessing worker (which may not have multiprocessing children),
and never re-imports the user's `__main__` the way 'spawn' and 'forkserver' do.
"""

from __future__ import annotations

import atexit
import functools
import importlib.util
import json
import os
import queue
import re
import subprocess
import sys
import threading
from fractions import Fraction
from pathlib import Path
from typing import Any

from thinkscale.verify.verdict import Verdict

DEFAULT_TIMEOUT_S = 5.0
_STARTUP_TIMEOUT_S = 120.0  # importing sympy on a loaded machine; not part of any check's limit

# -- extraction ---------------------------------------------------------------

_BOXED = re.compile(r"\\(?:boxed|fbox)\b")
_NUMBER = re.compile(r"[-\u2212]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-\u2212]?\.\d+")


def extract_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` (or `\\fbox{...}`), or None.

    Braces must balance: a last box cut off mid-answer (a truncated
    generation) gives None rather than an earlier box. `\\boxed 5` (no braces)
    gives '5'.
    """
    matches = list(_BOXED.finditer(text))
    if not matches:
        return None
    pos = matches[-1].end()
    while pos < len(text) and text[pos] == " ":
        pos += 1
    if pos < len(text) and text[pos] != "{":
        m = re.match(r"[^\s$]+", text[pos:])
        return m.group(0) if m else None
    depth = 0
    for i in range(pos, len(text)):
        if text[i] == "{" and text[i - 1] != "\\":
            depth += 1
        elif text[i] == "}" and text[i - 1] != "\\":
            depth -= 1
            if depth == 0:
                return text[pos + 1:i].strip()
    return None


def last_number(text: str) -> str | None:
    """The last plain number in `text`, thousands separators dropped ('1,234.5' -> '1234.5')."""
    matches = _NUMBER.findall(text)
    if not matches:
        return None
    return matches[-1].replace(",", "").replace("\u2212", "-")


def number_value(text: str) -> Fraction | None:
    """`text` as a plain number ('$1,000.', '-3', '2.50'), or None if it is anything else."""
    cleaned = text.strip().strip("$").replace("\\$", "").replace("\u2212", "-").rstrip(".").strip()
    if not re.fullmatch(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+", cleaned):
        return None
    return Fraction(cleaned.replace(",", ""))


# -- the check (runs inside a worker process) -----------------------------------

_MATH_DELIMITERS = re.compile(r"^\$+(.*?)\$+$|^\\\((.*)\\\)$|^\\\[(.*)\\\]$", re.DOTALL)
_SCIENTIFIC = re.compile(r"^(-?\d+(?:\.\d+)?)\s*[eE]\s*([-+]?\d+)$")


def _prepare(answer: str) -> str:
    """A bare answer as text math-verify reads reliably: inside \\boxed{}, without $...$."""
    answer = answer.strip()
    m = _MATH_DELIMITERS.match(answer)
    if m:
        answer = next(g for g in m.groups() if g is not None).strip()
    m = _SCIENTIFIC.match(answer)
    if m:  # math-verify reads '1.5e3' as 1.5*e*3
        answer = f"{m[1]}\\times10^{{{int(m[2])}}}"
    return f"\\boxed{{{answer}}}"


def check_in_process(given: str, reference: str) -> tuple[bool, str]:
    """Compare two answers with math-verify in this process, without any time limit.

    This is what a worker runs; call it directly only where a hang is acceptable.
    """
    from math_verify import parse, verify

    gold = parse(_prepare(reference), parsing_timeout=None)
    if not gold:
        return False, "could not read the reference"
    pred = parse(_prepare(given), parsing_timeout=None)
    if not pred:
        return False, "could not read the answer"
    equal = bool(verify(gold, pred, timeout_seconds=None))
    return equal, "equivalent" if equal else "not equivalent"


# -- workers ------------------------------------------------------------------


class _WorkerDied(RuntimeError):
    pass


class _Worker:
    """One checking subprocess, with a thread that queues its replies so a wait can time out."""

    def __init__(self) -> None:
        env = dict(os.environ)
        # The worker must import this package even where it is not installed
        # (a source checkout on sys.path): put its root first.
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        env.setdefault("PYTHONIOENCODING", "utf-8")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "thinkscale.verify._math_worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
            text=True, encoding="utf-8", bufsize=1,
        )
        self._replies: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        threading.Thread(target=self._read, daemon=True, name="math-verify-reader").start()
        try:
            ready = self._reply(_STARTUP_TIMEOUT_S)
        except (TimeoutError, _WorkerDied) as e:
            self.kill()
            raise RuntimeError(f"the math-verify worker did not start ({e}); see its error above") from None
        if not ready.get("ready"):
            self.kill()
            raise RuntimeError(f"the math-verify worker did not start: {ready}")

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._replies.put(line)
        self._replies.put(None)  # end of file: the worker is gone

    def _reply(self, timeout_s: float | None) -> dict[str, Any]:
        try:
            line = self._replies.get(timeout=timeout_s)
        except queue.Empty:
            raise TimeoutError from None
        if line is None:
            raise _WorkerDied(f"worker exited with code {self.process.wait()}")
        return json.loads(line)

    def ask(self, given: str, reference: str, timeout_s: float | None) -> dict[str, Any]:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(json.dumps({"given": given, "reference": reference}) + "\n")
            self.process.stdin.flush()
        except OSError as e:
            raise _WorkerDied(f"worker gone: {e}") from None
        return self._reply(timeout_s)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()
        for pipe in (self.process.stdin, self.process.stdout):
            try:
                if pipe is not None:
                    pipe.close()
            except OSError:
                pass


class MathChecker:
    """A small pool of checking processes, started on demand and safe to share between threads.

    At most `max_workers` checks run at once; a caller beyond that waits for a
    free worker, and that wait is not part of its own time limit.
    """

    def __init__(self, max_workers: int | None = None) -> None:
        self.max_workers = max_workers or min(4, os.cpu_count() or 1)
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._slots = threading.BoundedSemaphore(self.max_workers)
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []

    def check(self, given: str, reference: str, timeout_s: float | None = DEFAULT_TIMEOUT_S) -> Verdict:
        """Whether `given` and `reference` are the same answer; a check past `timeout_s` is not."""
        if os.getpid() != self._pid:  # a forked child must not talk to its parent's workers
            self._reset()
        with self._slots:
            with self._lock:
                worker = self._idle.pop() if self._idle else None
            if worker is not None and worker.process.poll() is not None:
                worker.kill()  # died while idle (killed from outside): not this answer's fault
                worker = None
            if worker is None:
                worker = _Worker()
            try:
                reply = worker.ask(given, reference, timeout_s)
            except TimeoutError:
                worker.kill()
                return Verdict(False, "timed out")
            except _WorkerDied as e:
                worker.kill()
                return Verdict(False, f"checker failed: {e}")
            with self._lock:
                self._idle.append(worker)
        return Verdict(bool(reply["equal"]), reply["reason"])

    def close(self) -> None:
        """Stop every idle worker (busy ones are stopped by the call that holds them)."""
        with self._lock:
            workers, self._idle = self._idle, []
        for worker in workers:
            worker.kill()


_default: MathChecker | None = None
_default_lock = threading.Lock()


def default_checker() -> MathChecker:
    """The process-wide checker that `math_equal` uses, created on first use."""
    global _default
    with _default_lock:
        if _default is None:
            if importlib.util.find_spec("math_verify") is None:
                raise ImportError("math answer checking needs math-verify: pip install 'thinkscale[math]'")
            _default = MathChecker()
            atexit.register(_default.close)
        return _default


@functools.lru_cache(maxsize=65536)
def _math_equal_cached(given: str, reference: str, timeout_s: float | None) -> Verdict:
    # A timed-out check is cached too: an answer that hangs sympy once hangs it
    # again, and majority vote and grading ask about the same answers many times.
    return default_checker().check(given, reference, timeout_s)


def math_equal(given: str | None, reference: str, timeout_s: float | None = DEFAULT_TIMEOUT_S) -> Verdict:
    """Whether the answer `given` is mathematically the same as `reference`.

    Both are bare final answers (LaTeX or plain: '\\frac{1}{2}', '0.5',
    '[1, 2)', '5\\text{ cm}'), not whole solutions: take them out with
    `extract_boxed` or `last_number` first. The comparison is not symmetric
    in every case (math-verify treats `reference` as the gold answer).
    Plain numbers are compared here; anything else in a worker process, so a
    check never takes much longer than `timeout_s` (None: no limit), from
    whatever thread or process it is called.
    """
    if given is None or not given.strip():
        return Verdict(False, "no answer")
    given, reference = given.strip(), reference.strip()
    if given == reference:
        return Verdict(True, "equivalent")
    a, b = number_value(given), number_value(reference)
    if a is not None and b is not None and (a == b or a.denominator == b.denominator == 1):
        # Plain numbers are decided exactly without a round trip, except
        # unequal decimals: math-verify's rounding ('0.3333333' == 1/3) decides those.
        return Verdict(a == b, "equivalent" if a == b else "not equivalent")
    return _math_equal_cached(given, reference, timeout_s)
