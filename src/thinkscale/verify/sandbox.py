"""Run a model's code against a dataset's tests in a sandbox, many samples at once.

    sandbox = Sandbox()
    sandbox.check("def square(x):\\n    return x * x\\n",
                  tests="def check(f):\\n    assert f(3) == 9\\ncheck(square)\\n", entry_point="square")
    # Verdict(correct=True, reason='passed')
    sandbox.check_many([CodeJob(program, tests, "square"), ...])   # in parallel, one verdict each
    sandbox.isolation.describe()   # what this machine let the sandbox isolate

Each sample runs in a process of its own, forked by a zygote beside a small
server process (`_sandbox_server.py`, started with `python -I -S` and a
minimal environment: no variable of the caller's, HOME and TMPDIR in a scratch
directory). A pool of such servers, one per worker, serves any number of
threads.

Only the tests can report a pass. The server runs the tests with the entry
point bound to a proxy; every call goes over a pipe to the sample's process,
which runs the model's program and answers with `repr(value)`, read back with
`ast.literal_eval`. So the model's code never runs where the tests run or
where the verdict is made, and only plain data crosses: exiting with status 0
(at load or inside the function, `sys.exit` or `os._exit`), defining its own
`check`, patching builtins, printing "passed", returning an object whose
`__eq__` is always true, or signalling its parent all end in a failed verdict
with a reason. The zygote never holds a test, so neither does the memory of a
sample forked from it. What is not protected: a program that answers every
call correctly by other means than solving the problem (a table of the tests'
answers), and values that are not plain data (a function that must return a
generator or a custom class cannot pass, nor can NaN or infinity).

What the operating system isolates (see `Isolation`, and README "Code
sandbox"): limits on wall time, CPU time, memory, file size and open files for
every process, and on process count where it can be scoped; no capabilities;
a seccomp filter (no new processes or exec, no sockets, no ptrace, no signals
to other processes); Landlock (files readable only in the standard library
and system libraries, writable only in the scratch directory; no TCP); new
network, pid, ipc and uts namespaces. Each layer is used where the kernel
allows it and reported where it does not; on a machine without any of them
(not Linux) only the process boundary, the rlimits and the clean environment
remain.
"""

from __future__ import annotations

import atexit
import functools
import json
import keyword
import os
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from thinkscale.verify.verdict import Verdict

_SERVER = Path(__file__).with_name("_sandbox_server.py")
_STARTUP_TIMEOUT_S = 60.0
_GRACE_S = 10.0  # beyond a job's own time limit, before its server counts as hung


@dataclass(frozen=True)
class Limits:
    """What one sample may use. Memory, files and processes are per process (rlimits)."""

    timeout_s: float = 3.0  # wall time for the whole sample: loading the program and every test
    cpu_s: float | None = None  # CPU seconds per process; None: timeout_s
    memory_mb: int = 1024  # address space
    file_size_mb: int = 16  # largest file it may write
    open_files: int = 64
    processes: int = 16  # RLIMIT_NPROC, where the sandbox can scope it (see Isolation.process_limit)

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value is None and name == "cpu_s":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
                raise ValueError(f"sandbox limit {name} must be a positive number, got {value!r}")

    def wire(self) -> dict[str, float]:
        fields = asdict(self)
        fields["cpu_s"] = self.cpu_s or self.timeout_s
        return fields


@dataclass(frozen=True)
class Isolation:
    """What the sandbox could isolate on this machine, as its server reported it."""

    namespaces: tuple[str, ...]  # kernel namespaces of its own: net, pid, ipc, uts (and user when not root)
    seccomp: bool  # system-call filter on the model's process
    landlock: int  # Landlock ABI confining files (and TCP from 4, signals from 6); 0: none
    user: str  # whom the code runs as
    process_limit: bool  # RLIMIT_NPROC applies (it counts a whole user's processes unless scoped)

    def describe(self) -> str:
        parts = [f"namespaces: {', '.join(self.namespaces) or 'none'}",
                 f"seccomp: {'on' if self.seccomp else 'off'}",
                 f"landlock: {f'ABI {self.landlock}' if self.landlock else 'off'}",
                 f"runs as {self.user}", f"process-count limit: {'on' if self.process_limit else 'off'}"]
        return "; ".join(parts)


@dataclass(frozen=True)
class CodeJob:
    """One sample to grade: the model's `program`, and `tests` that call `entry_point` (a proxy to it)."""

    program: str
    tests: str
    entry_point: str

    def __post_init__(self) -> None:
        for name in ("program", "tests", "entry_point"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"CodeJob.{name} must be a string, got {type(getattr(self, name)).__name__}")
        if not self.entry_point.isidentifier() or keyword.iskeyword(self.entry_point):
            raise ValueError(f"entry_point must be a Python function name, got {self.entry_point!r}")


@dataclass(frozen=True)
class ProgramRun:
    """What a program run by `Sandbox.run_program` printed, or why it failed, and what it cost."""

    output: str | None  # everything it printed; None if it failed
    error: str | None  # why it failed (raised, printed too much, ran out of time): None if it did not
    cpu_s: float
    wall_s: float
    partial: str = ""  # what it printed before it failed


# A tool's program: the code runs as `__main__` with its printing captured and capped; an error ends the
# text after a mark, so the reply is one plain string. The capped writer raises at the cap, which stops a
# program that prints without end long before any time limit.
_ERROR_MARK = "\x00error\x00"
_RUN_PROGRAM = """
import io as _io, sys as _sys

class _Capped(_io.StringIO):
    def write(self, text):
        if self.tell() + len(text) > {cap}:
            super().write(text[:{cap} - self.tell()])
            raise OverflowError("output too long: more than {cap} characters")
        return super().write(text)

_CODE = {code!r}

def run_program():
    out = _Capped()
    _sys.stdout = _sys.stderr = out
    try:
        exec(compile(_CODE, "<tool>", "exec"), {{"__name__": "__main__"}})
    except SystemExit as e:
        if e.code not in (None, 0):
            out.seek(0, 2)
            return out.getvalue() + "\\x00error\\x00" + "exit status " + str(e.code)
    except BaseException as e:
        return out.getvalue() + "\\x00error\\x00" + type(e).__name__ + ": " + str(e)[:300]
    finally:
        _sys.stdout, _sys.stderr = _sys.__stdout__, _sys.__stderr__
    return out.getvalue()
"""
_RUN_TESTS = "output = run_program()\n"


class _ServerDied(RuntimeError):
    pass


def _minimal_environment(scratch: str) -> dict[str, str]:
    """All a sample's processes see of an environment: nothing of the caller's."""
    return {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "TZ": "UTC", "HOME": scratch, "TMPDIR": scratch,
            "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}


LAYERS = ("namespaces", "seccomp", "landlock")


class _Server:
    """One server process and the scratch directory it works in."""

    def __init__(self, layers: Sequence[str] = LAYERS) -> None:
        self.base = tempfile.mkdtemp(prefix="thinkscale-sandbox-")
        work = os.path.join(self.base, "work")
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-I", "-S", str(_SERVER), self.base, ",".join(layers)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                env=_minimal_environment(work), cwd=self.base, close_fds=True)
        except BaseException:
            shutil.rmtree(self.base, ignore_errors=True)
            raise
        self._buffer = b""
        try:
            report = self._reply(time.monotonic() + _STARTUP_TIMEOUT_S)
        except (TimeoutError, _ServerDied) as e:
            self.kill()
            raise RuntimeError(f"the code sandbox's server did not start ({e}); see its error above") from None
        self.isolation = Isolation(tuple(report["namespaces"]), bool(report["seccomp"]), int(report["landlock"]),
                                   str(report["user"]), bool(report["process_limit"]))

    def _reply(self, deadline: float) -> dict:
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer in time")
            if not select.select([fd], [], [], left)[0]:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                raise _ServerDied(f"the server exited with code {self.process.wait()}")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def run(self, job: CodeJob, limits: Limits) -> dict:
        assert self.process.stdin is not None
        message = {"program": job.program, "tests": job.tests, "entry_point": job.entry_point, **limits.wire()}
        try:
            self.process.stdin.write(json.dumps(message).encode() + b"\n")
            self.process.stdin.flush()
        except OSError as e:
            raise _ServerDied(f"the server is gone ({e})") from None
        return self._reply(time.monotonic() + limits.timeout_s + _GRACE_S)

    def close(self) -> None:
        """Let the server finish (it exits when its input ends), or kill it."""
        try:
            if self.process.stdin is not None:
                self.process.stdin.close()
            self.process.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.kill()

    def kill(self) -> None:
        self.process.kill()
        try:
            with self.process:  # closes its pipes and waits for it
                pass
        except OSError:  # unflushed input for a server that is gone
            pass
        shutil.rmtree(self.base, ignore_errors=True)


class Sandbox:
    """A pool of sandbox servers, safe to share between threads; servers start on demand.

    At most `workers` samples run at once (default: the number of CPUs); a
    caller beyond that waits for a free server, and that wait is not part of
    its sample's time limit. `layers` are the kernel's isolation layers to use
    where the machine has them (all by default; fewer only to compare or to
    work around a kernel that misbehaves).
    """

    def __init__(self, workers: int | None = None, limits: Limits | None = None,
                 layers: Sequence[str] = LAYERS) -> None:
        if os.name != "posix":
            raise RuntimeError("the code sandbox needs a POSIX system (it forks and sets rlimits)")
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise ValueError(f"workers must be a positive integer, got {workers!r}")
        if isinstance(layers, str) or not set(layers) <= set(LAYERS):
            raise ValueError(f"unknown isolation layer in {layers!r}; layers: {', '.join(LAYERS)}")
        self.workers = workers or os.cpu_count() or 1
        self.limits = limits or Limits()
        self.layers = tuple(layers)
        self._isolation: Isolation | None = None
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._slots = threading.BoundedSemaphore(self.workers)
        self._lock = threading.Lock()
        self._idle: list[_Server] = []

    @property
    def isolation(self) -> Isolation:
        """What this machine lets the sandbox isolate (starts a server if none has run yet)."""
        if os.getpid() != self._pid:  # a forked child must not talk to its parent's servers
            self._reset()
        if self._isolation is None:
            with self._slots:
                server = self._take()
                self._give_back(server)
        assert self._isolation is not None
        return self._isolation

    def _take(self) -> _Server:
        with self._lock:
            server = self._idle.pop() if self._idle else None
        if server is not None and server.process.poll() is not None:
            server.kill()  # died while idle: not the next sample's fault
            server = None
        if server is None:
            server = _Server(self.layers)
            self._isolation = server.isolation
        return server

    def _give_back(self, server: _Server) -> None:
        with self._lock:
            self._idle.append(server)

    def check(self, program: str, tests: str, entry_point: str, limits: Limits | None = None) -> Verdict:
        """Whether `program` passes `tests`; `tests` call `entry_point` and raise on a failure."""
        return self.check_job(CodeJob(program, tests, entry_point), limits)

    def check_job(self, job: CodeJob, limits: Limits | None = None) -> Verdict:
        if not isinstance(job, CodeJob):
            raise TypeError(f"expected a CodeJob, got {type(job).__name__}")
        reply = self._run(job, limits or self.limits)
        return Verdict(bool(reply["passed"]), str(reply["reason"]))

    def _run(self, job: CodeJob, limits: Limits) -> dict:
        """The server's reply to `job`: passed, reason, seconds, cpu_s (and output, where the tests set one)."""
        if os.getpid() != self._pid:  # a forked child must not talk to its parent's servers
            self._reset()
        with self._slots:
            server = self._take()
            try:
                reply = server.run(job, limits)
            except TimeoutError:
                server.kill()
                return {"passed": False, "reason": f"sandbox error: no verdict within {limits.timeout_s + _GRACE_S:g} s"}
            except _ServerDied as e:
                server.kill()
                return {"passed": False, "reason": f"sandbox error: {e}"}
            self._give_back(server)
        return reply

    def run_program(self, code: str, limits: Limits | None = None, max_output_chars: int = 1000) -> ProgramRun:
        """Run `code` as a script in a sample's process and return what it printed (a tool's run).

        The printed text comes back as plain data, capped: a program that
        prints more than `max_output_chars` is stopped there with an error,
        as is one that raises, runs past its limits or never ends. The CPU time
        is the sample's process and its server's, as the operating system
        counted them, plus this thread's.
        """
        limits = limits or self.limits
        cpu_started, started = time.thread_time(), time.perf_counter()
        job = CodeJob(_RUN_PROGRAM.format(code=code, cap=max_output_chars), _RUN_TESTS, "run_program")
        reply = self._run(job, limits)
        cpu = float(reply.get("cpu_s", 0.0)) + time.thread_time() - cpu_started
        wall = time.perf_counter() - started
        output = reply.get("output") if reply.get("passed") else None
        if not isinstance(output, str):
            return ProgramRun(None, str(reply.get("reason", "no output")), cpu, wall)
        text, _, error = output.partition(_ERROR_MARK)
        return ProgramRun(text if not error else None, error or None, cpu, wall, partial=text if error else "")

    def check_many(self, jobs: Sequence[CodeJob], limits: Limits | None = None) -> list[Verdict]:
        """One verdict per job, in order, `workers` at a time."""
        jobs = list(jobs)
        if len(jobs) <= 1:
            return [self.check_job(job, limits) for job in jobs]
        with ThreadPoolExecutor(min(self.workers, len(jobs)), thread_name_prefix="sandbox") as pool:
            return list(pool.map(lambda job: self.check_job(job, limits), jobs))

    def close(self) -> None:
        """Stop every idle server (busy ones are stopped by the call that holds them)."""
        with self._lock:
            servers, self._idle = self._idle, []
        for server in servers:
            server.close()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@functools.lru_cache(maxsize=None)
def default_sandbox() -> Sandbox:
    """The process-wide sandbox that code tasks use, created on first use (its servers start when used)."""
    sandbox = Sandbox()
    atexit.register(sandbox.close)
    return sandbox
