"""The code sandbox's server: runs the tests, while a zygote forks a confined process per sample.

`thinkscale.verify.sandbox` starts it as `python -I -S _sandbox_server.py BASE_DIR LAYERS`
with a minimal environment. It imports only the standard library and never
thinkscale. Protocol: the first line on stdout is a JSON report of the
isolation it achieved; then for every JSON job read from stdin (`program`,
`tests`, `entry_point` and limits) one JSON verdict line (`passed`, `reason`,
`seconds`).

Three kinds of process, so that only trusted code can report a pass and no
sample can see a test:

    server (runs the dataset's tests)  --  zygote (forks)  --  sample (runs the model's program)

The server execs the tests with `entry_point` bound to a proxy; each call
crosses a pipe to the sample's process, which answers with `repr(value)`; the
server reads the answer back with `ast.literal_eval`, so only plain data
(numbers, strings, bytes, None, and lists, tuples, dicts and sets of them)
ever reaches the tests, and the verdict is the server's own. Whatever the
sample does (exit with status 0 at load or inside the function, define its own
`check`, patch builtins, print what a grader looks for, return an object that
equals everything, write to every descriptor it has) it can only answer
calls: a pass needs the right answers. The zygote is forked before the server
reads any job and only ever receives limits and pipe ends, so a sample's
memory, a copy of the zygote's, holds no test and no other sample's code.

A sample's process is confined before it reads its program: a fresh working
directory (emptied after each sample); rlimits on CPU time, address space,
file size, open files and (where it can be scoped to the sandbox) processes;
stdin/stdout/stderr on /dev/null; no capabilities (root drops to nobody where
nobody can read the standard library); a seccomp filter where the
architecture is known (x86_64, aarch64): no new processes (threads only), no
exec, no sockets, no ptrace or reading other processes' memory, no signals or
rlimit changes to other processes, no mount/namespace/kernel-admin calls;
Landlock where the kernel has it: files readable only in the standard library
(its site-packages excluded) and the system library directories, writable only
in the working directory, and (ABI 4+) no TCP, (ABI 6+) no signals leaving the
process. The server and zygote run in new network, ipc and uts namespaces (and
a user namespace when not root) and the zygote is pid 1 of a new pid
namespace, where the kernel allows: no network interface but a down loopback,
no view of the host's processes, and `kill(-1)` from the zygote ends every
process a sample left. Without a pid namespace the zygote is a subreaper and
kills what comes back to it.
"""

from __future__ import annotations

import ast
import builtins
import ctypes
import gc
import json
import marshal
import math
import os
import resource
import signal
import socket
import stat
import struct
import sys
import time

LINUX = sys.platform.startswith("linux")
LIBC = ctypes.CDLL(None, use_errno=True)
if LINUX:  # looked up once here: a lookup in every sample's process costs more than the call
    _SYSCALL, _PRCTL, _CAPSET, _UNSHARE = LIBC.syscall, LIBC.prctl, LIBC.capset, LIBC.unshare
    _SYSCALL.restype = ctypes.c_long
# Modules that programs and tests commonly import, loaded once before the zygote forks.
PRELOAD = ("typing", "math", "re", "collections", "itertools", "functools", "string", "heapq", "bisect",
           "hashlib", "random", "copy", "fractions")

MAX_REPLY = 16 << 20  # bytes of one answer from the sample
REASON_CHARS = 400

# -- small system calls ---------------------------------------------------------

PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_SECCOMP, PR_SET_NO_NEW_PRIVS, PR_SET_CHILD_SUBREAPER = 1, 4, 22, 38, 36


def _ok(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def _prctl(option: int, value: int = 0) -> None:
    _ok(_PRCTL(ctypes.c_int(option), ctypes.c_ulong(value), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)),
        f"prctl({option})")


def _die_with_parent(parent: int) -> None:
    """SIGKILL this process when the one that forked it goes, however it goes."""
    if LINUX:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getpid() != 1 and os.getppid() != parent:  # it went before the line above (pid 1 sees no parent)
            os._exit(1)


def _drop_capabilities() -> None:
    header = ctypes.create_string_buffer(struct.pack("Ii", 0x20080522, 0))  # _LINUX_CAPABILITY_VERSION_3, self
    data = ctypes.create_string_buffer(24)  # two zeroed __user_cap_data_struct: no capability at all
    _ok(_CAPSET(header, data), "capset")


# -- namespaces -------------------------------------------------------------------

CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = (
    0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000)
NAMESPACES = (("net", CLONE_NEWNET), ("pid", CLONE_NEWPID), ("ipc", CLONE_NEWIPC), ("uts", CLONE_NEWUTS))


def _unshare(flags: int, uid: int, gid: int) -> None:
    _ok(_UNSHARE(ctypes.c_int(flags)), "unshare")
    if flags & CLONE_NEWUSER:  # keep the same ids inside, so files look the same
        if uid != 0:
            with open("/proc/self/setgroups", "w") as f:
                f.write("deny")
        for name, ident in (("uid_map", uid), ("gid_map", gid)):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(f"{ident} {ident} 1\n")


def _namespaces_work(flags: int, uid: int, gid: int) -> bool:
    """Try `flags` in a throwaway child first: a half-made user namespace cannot be undone."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            _unshare(flags, uid, gid)
            child = os.fork()
            if child == 0:
                os._exit(0 if os.getpid() == 1 else 1)
            code = 0 if os.waitpid(child, 0)[1] == 0 else 1
        finally:
            os._exit(code)
    return os.waitpid(pid, 0)[1] == 0


def namespace_flags() -> tuple[int, list[str]]:
    """The namespaces this kernel lets us make (tried in throwaway children), and their names."""
    if not LINUX:
        return 0, []
    uid, gid = os.geteuid(), os.getegid()
    core = 0
    for _, flag in NAMESPACES:
        core |= flag
    for flags in ([core] if uid == 0 else []) + [core | CLONE_NEWUSER]:
        if _namespaces_work(flags, uid, gid):
            return flags, [name for name, flag in NAMESPACES if flags & flag] + (["user"] if flags & CLONE_NEWUSER
                                                                                else [])
    return 0, []


# -- seccomp ------------------------------------------------------------------------

_X86_64 = dict(
    arch=0xC000003E, clone=56, clone3=435, deny=(
        57, 58, 59, 322, 41, 53, 101, 310, 311, 165, 166, 155, 161, 272, 308, 321, 298, 250, 248, 249, 246, 320,
        169, 175, 313, 176, 167, 168, 163, 164, 227, 305, 159, 323, 425, 426, 427, 112, 109, 103, 179, 303, 304,
        434, 424, 438, 141, 251, 312, 135, 442, 428, 429, 430, 431, 432, 433, 134, 172, 173, 212, 153, 300, 440,
        448),
    # kill, tkill, tgkill, rt_sigqueueinfo, rt_tgsigqueueinfo: only at itself
    self_only=(62, 200, 234, 129, 297),
    # prlimit64, sched_setaffinity/scheduler/param/attr, migrate_pages, move_pages: 0 or itself
    self_or_zero=(302, 203, 144, 142, 314, 256, 279),
)
_AARCH64 = dict(
    arch=0xC00000B7, clone=220, clone3=435, deny=(
        221, 281, 198, 199, 117, 270, 271, 40, 39, 41, 51, 97, 268, 280, 241, 219, 217, 218, 104, 294, 142, 105,
        273, 106, 224, 225, 89, 170, 112, 266, 171, 282, 425, 426, 427, 157, 154, 116, 60, 264, 265, 434, 424, 438,
        140, 30, 272, 92, 442, 428, 429, 430, 431, 432, 433, 18, 58, 262, 440, 448),
    self_only=(129, 130, 131, 138, 240),
    self_or_zero=(261, 122, 119, 118, 274, 238, 239),
)
SECCOMP_TABLES = {"x86_64": _X86_64, "aarch64": _AARCH64}
_LD, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
_ALLOW, _KILL, _ERRNO = 0x7FFF0000, 0x80000000, 0x00050000
EPERM, ENOSYS = 1, 38
CLONE_THREAD = 0x00010000


def seccomp_program(table: dict, own_pid: int) -> bytes:
    """A classic-BPF filter (struct sock_filter[]) for `table`, letting signals go only to `own_pid`.

    The system-call number is looked up in a binary tree, not a list: the
    kernel evaluates the filter once per system call at install time (to
    cache the always-allowed ones), so its length is paid for in every sample.
    """
    action = {nr: "deny" for nr in table["deny"]}
    action.update({table["clone"]: "clone", table["clone3"]: "enosys"})
    action.update({nr: "self" for nr in table["self_only"]})
    action.update({nr: "self_or_zero" for nr in table["self_or_zero"]})
    code: list[tuple[int, int, int | str, int | str]] = []  # (op, k, jump if true, jump if false)
    labels: dict[str, int] = {}
    code += [(_LD, 4, 0, 0), (_JEQ, table["arch"], 1, 0), (_RET, _KILL, 0, 0), (_LD, 0, 0, 0)]
    if table is _X86_64:
        code.append((_JGE, 0x40000000, "deny", 0))  # the x32 ABI's numbers

    def tree(numbers: list[int]) -> None:
        if len(numbers) <= 4:
            code.extend((_JEQ, nr, action[nr], 0) for nr in numbers)
            code.append((_RET, _ALLOW, 0, 0))  # any other call is allowed
            return
        middle, upper = len(numbers) // 2, f"upper{len(code)}"
        code.append((_JGE, numbers[middle], upper, 0))
        tree(numbers[:middle])
        labels[upper] = len(code)
        tree(numbers[middle:])

    tree(sorted(action))
    # BPF jumps only forward: the checks on arguments come after the tree
    tail = [("clone", (_LD, 16, 0, 0)), (None, (_JSET, CLONE_THREAD, "allow", "deny")),  # threads, not processes
            ("self_or_zero", (_LD, 16, 0, 0)), (None, (_JEQ, 0, "allow", 0)), (None, (_JEQ, own_pid, "allow", "deny")),
            ("self", (_LD, 16, 0, 0)), (None, (_JEQ, own_pid, "allow", "deny")),
            ("allow", (_RET, _ALLOW, 0, 0)), ("deny", (_RET, _ERRNO | EPERM, 0, 0)),
            ("enosys", (_RET, _ERRNO | ENOSYS, 0, 0))]
    for label, instruction in tail:
        if label:
            labels[label] = len(code)
        code.append(instruction)
    out = bytearray()
    for i, (op, k, jt, jf) in enumerate(code):
        jt = labels[jt] - i - 1 if isinstance(jt, str) else jt
        jf = labels[jf] - i - 1 if isinstance(jf, str) else jf
        out += struct.pack("HBBI", op, jt, jf, k & 0xFFFFFFFF)
    return bytes(out)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _install_seccomp(table: dict) -> None:
    program = ctypes.create_string_buffer(seccomp_program(table, os.getpid()))
    fprog = _SockFprog(len(program.raw) // 8, ctypes.addressof(program))
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    _ok(_PRCTL(ctypes.c_int(PR_SET_SECCOMP), ctypes.c_ulong(2), ctypes.byref(fprog),
                   ctypes.c_ulong(0), ctypes.c_ulong(0)), "seccomp")


# -- Landlock -------------------------------------------------------------------------

_LL_CREATE, _LL_ADD, _LL_RESTRICT = 444, 445, 446
_FS_EXECUTE, _FS_WRITE, _FS_READ_FILE, _FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_FS_REMOVE_DIR, _FS_REMOVE_FILE, _FS_MAKE_DIR, _FS_MAKE_REG = 1 << 4, 1 << 5, 1 << 7, 1 << 8
_FS_REFER, _FS_TRUNCATE, _FS_IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
_FILE_RIGHTS = _FS_EXECUTE | _FS_WRITE | _FS_READ_FILE | _FS_TRUNCATE | _FS_IOCTL_DEV
_SYSTEM_LIBRARIES = ("/lib", "/lib64", "/usr/lib", "/usr/lib64", "/usr/local/lib", "/etc/ld.so.cache")


def readable_paths() -> list[str]:
    """What a sample may read: the standard library without its site-packages, and shared libraries."""
    paths: list[str] = []
    for entry in sys.path:  # -I -S: the stdlib zip, the stdlib and lib-dynload
        if os.path.isfile(entry):
            paths.append(entry)
        elif os.path.isdir(entry):
            paths += [os.path.join(entry, name) for name in os.listdir(entry)
                      if name not in ("site-packages", "dist-packages")]
    libdir = os.path.join(sys.base_prefix, "lib")  # libpython of a shared build (pyenv, uv)
    if os.path.isdir(libdir):
        paths += [os.path.join(libdir, n) for n in os.listdir(libdir) if n.startswith("libpython")]
    return paths + list(_SYSTEM_LIBRARIES) + ["/dev/urandom", "/dev/random", "/dev/zero"]


def landlock_ruleset(work: str) -> tuple[int | None, int]:
    """(ruleset fd, ABI version) confining files to reading `readable_paths` and writing in `work`."""
    if not LINUX or os.uname().machine not in SECCOMP_TABLES:  # syscall numbers known there only
        return None, 0
    abi = _SYSCALL(ctypes.c_long(_LL_CREATE), None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    if abi < 1:
        return None, 0
    handled = (1 << 13) - 1 | (_FS_REFER if abi >= 2 else 0) | (_FS_TRUNCATE if abi >= 3 else 0)
    handled |= _FS_IOCTL_DEV if abi >= 5 else 0
    fields = [handled] + ([3] if abi >= 4 else []) + ([3] if abi >= 6 else [])  # all of TCP; signals, abstract sockets
    attr = ctypes.create_string_buffer(struct.pack(f"{len(fields)}Q", *fields))
    fd = _ok(_SYSCALL(ctypes.c_long(_LL_CREATE), attr, ctypes.c_size_t(len(attr.raw)), ctypes.c_uint32(0)),
             "landlock_create_ruleset")
    read = _FS_READ_FILE | _FS_READ_DIR
    write = read | _FS_WRITE | _FS_REMOVE_DIR | _FS_REMOVE_FILE | _FS_MAKE_DIR | _FS_MAKE_REG
    write |= handled & (_FS_REFER | _FS_TRUNCATE)
    rules = [(p, read) for p in readable_paths()] + [(os.path.dirname(os.__file__), _FS_READ_DIR),
                                                     (os.devnull, _FS_READ_FILE | _FS_WRITE), (work, write)]
    for path, access in rules:
        try:
            target = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue  # not on this system
        if not stat.S_ISDIR(os.fstat(target).st_mode):
            access &= _FILE_RIGHTS
        rule = ctypes.create_string_buffer(struct.pack("=Qi", access & handled, target))
        try:
            _ok(_SYSCALL(ctypes.c_long(_LL_ADD), ctypes.c_int(fd), ctypes.c_int(1), rule, ctypes.c_uint32(0)),
                f"landlock_add_rule({path})")
        finally:
            os.close(target)
    return fd, abi


def _landlock_restrict(fd: int) -> None:
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    _ok(_SYSCALL(ctypes.c_long(_LL_RESTRICT), ctypes.c_int(fd), ctypes.c_uint32(0)), "landlock_restrict_self")


# -- the sample's process ---------------------------------------------------------------


def _message(error: BaseException) -> str:
    try:
        return str(error)[:REASON_CHARS]
    except BaseException:  # a hostile __str__
        return "?"


def _describe(error: BaseException) -> str:
    text = _message(error)
    return f"{type(error).__name__}: {text}"[:REASON_CHARS] if text else type(error).__name__


def _read_exactly(stream, size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise EOFError("the server closed the channel")
    return data


def _serve_sample(entry_point: str, calls_fd: int, replies_fd: int) -> None:
    """Read the program, run it, then answer calls: one `repr` per line.

    What comes in (the program, then each call's arguments) is a length and a
    `marshal` frame: it comes from the server, so the fast decoder is safe
    here. What goes out is `repr` text, which the server reads back with
    `ast.literal_eval`: only plain data gets through.
    """
    out = os.fdopen(replies_fd, "wb")
    calls = os.fdopen(calls_fd, "rb")

    def send(*message: object) -> None:
        out.write(repr(message).encode("utf-8", "backslashreplace") + b"\n")
        out.flush()

    def receive() -> object:
        return marshal.loads(_read_exactly(calls, struct.unpack("<Q", _read_exactly(calls, 8))[0]))

    program = receive()
    namespace: dict = {"__name__": "__sample__"}
    try:
        exec(compile(program, "<sample>", "exec"), namespace)
    except BaseException as e:
        send("error", _describe(e))
        return
    function = namespace.get(entry_point)
    if not callable(function):
        send("error", f"the program defines no function {entry_point!r}")
        return
    send("ready")
    while True:
        try:
            args, kwargs = receive()
        except EOFError:
            return
        try:
            text = repr(function(*args, **kwargs))
        except BaseException as e:
            send("raised", type(e).__name__, _message(e))
            continue
        out.write(b"('value', " + text.encode("utf-8", "backslashreplace") + b")\n")
        out.flush()


# -- the zygote: forks sample processes, and has never seen a test or another sample -------------


def _zygote(server: Server, control: socket.socket) -> None:
    """Serve fork requests until the server goes: fork a sample, and on "end" kill it and all it left.

    A request is the job's limits and entry point with the sample's two pipe
    ends; the program itself goes from the server straight to the sample. The
    zygote answers only "end", with the sample's wait status. The sample stays
    its unreaped child until then, so its pid and process group cannot be
    reused by anything else while they are killed.
    """
    for name in PRELOAD:
        __import__(name)
    gc.freeze()  # the collector in a sample then leaves these objects (and their pages) alone
    if LINUX and os.getpid() != 1:
        _prctl(PR_SET_CHILD_SUBREAPER, 1)  # what a sample leaves behind comes back here to be killed
    zygote = os.getpid()
    while True:
        message, fds, _, _ = socket.recv_fds(control, 65536, 2)
        if not message:
            os._exit(0)
        request = json.loads(message)
        sample = os.fork()
        if sample == 0:
            try:
                control.close()
                _die_with_parent(zygote)
                server.confine(request, keep=tuple(fds))
                _serve_sample(request["entry_point"], *fds)
            finally:
                os._exit(0)
        for fd in fds:
            os.close(fd)
        try:
            os.setpgid(sample, sample)  # also done by the sample; whichever runs first
        except OSError:
            pass
        server_gone = not control.recv(64)  # "end"
        status, cpu = _end_sample(sample)
        if server_gone:
            os._exit(0)
        control.sendall(json.dumps({"status": status, "cpu_s": cpu}).encode())


def _end_sample(sample: int) -> tuple[int, float]:
    """Kill the sample and every process it left, reap them; the sample's wait status and CPU seconds."""
    _kill_all_but_zygote(sample)
    _, status, usage = os.wait4(sample, 0)
    give_up = time.monotonic() + 2.0
    while time.monotonic() < give_up:  # what it left (only without seccomp) is ours now, or dying
        _kill_all_but_zygote(sample)
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                time.sleep(0.0005)
        except ChildProcessError:
            break
    return status, usage.ru_utime + usage.ru_stime


def _kill_all_but_zygote(sample: int) -> None:
    targets = [-1] if os.getpid() == 1 else [-sample, sample, *_children()]  # pid 1: all of its namespace
    for target in targets:
        try:
            os.kill(target, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _children() -> list[int]:
    """This process's children (an orphan comes back to a subreaper as its child)."""
    pid = os.getpid()
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(child) for child in f.read().split()]
    except OSError:
        return []


# -- the harness: the server runs the dataset's tests, the entry point a proxy to the sample ----------


class SampleBroke(BaseException):
    """The sample stopped answering or answered with something that is not plain data.

    A BaseException, so that tests which catch Exception cannot swallow it; a
    job in which it was ever raised fails.
    """


class SampleRaised(Exception):
    """The sample's function raised an exception that is not a built-in one."""


class _Deadline(BaseException):
    pass


_ARMED = [False]  # whether SIGALRM may interrupt: never while the server talks to the zygote


def _on_alarm(signum: int, frame: object) -> None:
    if _ARMED[0]:
        raise _Deadline


def _arm(seconds: float) -> None:
    _ARMED[0] = True
    signal.setitimer(signal.ITIMER_REAL, seconds)


def _disarm() -> None:
    _ARMED[0] = False
    signal.setitimer(signal.ITIMER_REAL, 0)


class _Channel:
    def __init__(self, calls_fd: int, replies_fd: int, sample_status) -> None:
        self.calls = os.fdopen(calls_fd, "wb")
        self.replies = os.fdopen(replies_fd, "rb")
        self.sample_status = sample_status
        self.broken: str | None = None

    def send(self, value: object) -> None:
        data = marshal.dumps(value)  # ValueError for what is not plain data: the tests' own fault
        try:
            self.calls.write(struct.pack("<Q", len(data)) + data)
            self.calls.flush()
        except BrokenPipeError:
            self.fail(self._ended())

    def receive(self) -> tuple:
        line = self.replies.readline(MAX_REPLY + 1)
        if not line.endswith(b"\n"):
            self.fail(self._ended() if len(line) <= MAX_REPLY else f"the sample's answer is over {MAX_REPLY} bytes")
        try:
            message = ast.literal_eval(line.decode("utf-8"))
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError, UnicodeDecodeError):
            self.fail("the sample answered with a value that is not plain data: "
                      + line[:120].decode("utf-8", "replace").strip())
        if not isinstance(message, tuple) or not message or not isinstance(message[0], str):
            self.fail("the sample answered out of protocol")
        return message

    def call(self, *args: object, **kwargs: object) -> object:
        if self.broken:
            raise SampleBroke(self.broken)
        self.send((args, kwargs))
        message = self.receive()
        if message[0] == "value" and len(message) == 2:
            return message[1]
        if message[0] == "raised" and len(message) == 3:
            name, text = str(message[1]), str(message[2])
            kind = getattr(builtins, name, None)
            if not (isinstance(kind, type) and issubclass(kind, BaseException)):
                kind = SampleRaised
            elif not issubclass(kind, Exception):  # SystemExit, KeyboardInterrupt: no answer at all
                self.fail(f"the sample raised {name}" + (f": {text}" if text else ""))
            try:
                error = kind(text)  # a built-in type, so that a test may expect a ValueError
            except Exception:  # one that needs other arguments (UnicodeDecodeError)
                error = SampleRaised(text)
            error.sample_raised = name
            raise error
        self.fail("the sample answered out of protocol")

    def fail(self, reason: str) -> None:
        self.broken = self.broken or reason
        raise SampleBroke(self.broken)

    def close(self) -> None:
        for stream in (self.calls, self.replies):
            try:
                stream.close()
            except OSError:  # unflushed data to a sample that is gone
                pass

    def _ended(self) -> str:
        return f"the sample's process ended before answering ({_status_text(self.sample_status())})"


def _run_tests(tests: str, code, entry_point: str, channel: _Channel) -> dict:
    """Exec the compiled tests with `entry_point` bound to the channel; the verdict."""
    hello = channel.receive()
    if hello[0] == "error":
        reason = hello[1] if len(hello) > 1 and isinstance(hello[1], str) else "?"
        return {"passed": False, "reason": f"the program failed to load: {reason}"}
    if hello != ("ready",):
        return {"passed": False, "reason": "the sample answered out of protocol"}
    namespace = {"__name__": "__tests__", entry_point: channel.call}
    try:
        exec(code, namespace)
    except (_Deadline, SampleBroke):
        raise
    except AssertionError as e:
        return {"passed": False, "reason": f"test failed: {_test_line(tests, e)}" + (f" ({e})" if str(e) else "")}
    except BaseException as e:
        raised = getattr(e, "sample_raised", None)
        what = f"the sample raised {raised}" + (f": {_message(e)}" if _message(e) else "") if raised \
            else f"the tests raised {_describe(e)}"
        return {"passed": False, "reason": channel.broken or f"{what} at {_test_line(tests, e)}"}
    if channel.broken:  # the tests caught SampleBroke as a BaseException
        return {"passed": False, "reason": channel.broken}
    output = namespace.get("output")  # what the tests hand back as text (a tool's run: see Sandbox.run_program)
    return {"passed": True, "reason": "passed", **({"output": output} if isinstance(output, str) else {})}


def _test_line(tests: str, error: BaseException) -> str:
    """The line of the tests that raised `error` (the innermost one)."""
    lineno, tb = None, error.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<tests>":
            lineno = tb.tb_lineno
        tb = tb.tb_next
    lines = tests.splitlines()
    if lineno is None or not 0 < lineno <= len(lines):
        return "?"
    return f"line {lineno}: {lines[lineno - 1].strip()[:200]}"


def _status_text(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        name = signal.Signals(sig).name if sig in signal.Signals.__members__.values() else str(sig)
        why = {signal.SIGXCPU: ": timed out, CPU time limit", signal.SIGXFSZ: ": file size limit",
               signal.SIGSEGV: ": crashed (stack overflow?)", signal.SIGSYS: ": forbidden system call"}.get(sig, "")
        return f"killed by {name}{why}"
    return f"exit status {os.WEXITSTATUS(status)}"


# -- the server ----------------------------------------------------------------------------


def _readable_by_anyone(path: str) -> bool:
    """Whether a process of another, unprivileged user can read `path` (every directory above it searchable)."""
    path = os.path.realpath(path)
    while True:
        try:
            mode = os.stat(path).st_mode
        except OSError:
            return False
        if not mode & stat.S_IXOTH or not mode & stat.S_IROTH:
            return False
        parent = os.path.dirname(path)
        if parent == path:
            return True
        path = parent


class Server:
    def __init__(self, base: str, layers: set[str]) -> None:
        flags, self.namespaces = namespace_flags() if "namespaces" in layers else (0, [])
        self.work = os.path.join(base, "work")
        os.mkdir(self.work, 0o700)
        self.devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        root = os.geteuid() == 0
        user_namespace = bool(flags & CLONE_NEWUSER)
        # nobody must still be able to read the standard library (not so for a pyenv under /root)
        self.nobody = root and not user_namespace and _readable_by_anyone(os.path.dirname(os.__file__))
        if self.nobody:
            os.chown(self.work, 65534, 65534)
            os.chmod(base, 0o711)
        # RLIMIT_NPROC counts every process of a user: only meaningful for nobody or in our own user namespace
        self.count_processes = self.nobody or user_namespace
        if not root and not user_namespace:
            self.user = "the caller's user"
        else:
            self.user = "nobody" if self.nobody else ("root" if root else "the caller's user") + " without capabilities"
        # the probes fork, so they come before the pid namespace (whose first child is its init)
        self.seccomp = SECCOMP_TABLES.get(os.uname().machine) if LINUX and "seccomp" in layers else None
        if self.seccomp and not self._works(lambda: _install_seccomp(self.seccomp), denied=lambda: os.setsid()):
            self.seccomp = None
        try:
            self.landlock, self.landlock_abi = landlock_ruleset(self.work) if "landlock" in layers else (None, 0)
        except OSError:  # a kernel that has Landlock but refuses these rules: reported as off
            self.landlock, self.landlock_abi = None, 0
        if self.landlock is not None and not self._works(lambda: _landlock_restrict(self.landlock),
                                                         denied=lambda: os.listdir("/")):
            os.close(self.landlock)
            self.landlock, self.landlock_abi = None, 0
        self.compiled: dict[str, object] = {}  # tests -> code: many samples share a problem's tests
        # message boundaries kept: a request and the "end" after it never run together
        self.control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET if LINUX else socket.SOCK_STREAM)
        if flags:
            _unshare(flags, os.geteuid(), os.getegid())
        server = os.getpid()
        # Forked before any job is read: its memory (and every sample's) holds no test. With a new pid
        # namespace it is that namespace's pid 1, and the server stays outside, out of samples' sight.
        self.zygote = os.fork()
        if self.zygote == 0:
            try:
                self.control.close()
                os.dup2(self.devnull, 0)  # the pipes to the caller stay the server's alone
                os.dup2(self.devnull, 1)
                _die_with_parent(server)
                _zygote(self, theirs)
            finally:
                os._exit(0)
        theirs.close()
        if self.landlock is not None:
            os.close(self.landlock)  # the zygote holds it
        if LINUX:  # the tests live here: no ptrace, no /proc/<pid>/mem for a process of the same user
            _prctl(PR_SET_DUMPABLE, 0)
        signal.signal(signal.SIGALRM, _on_alarm)

    @staticmethod
    def _works(apply, denied) -> bool:
        """Whether `apply` succeeds in a child and makes `denied` raise PermissionError there."""
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                apply()
                try:
                    denied()
                except PermissionError:
                    code = 0
            finally:
                os._exit(code)
        return os.waitpid(pid, 0)[1] == 0

    def report(self) -> dict:
        return {"ready": True, "namespaces": self.namespaces, "seccomp": self.seccomp is not None,
                "landlock": self.landlock_abi, "user": self.user, "process_limit": self.count_processes,
                "python": sys.version.split()[0]}

    # -- in the sample's process (forked by the zygote) ------------------------------------

    def confine(self, job: dict, keep: tuple[int, ...]) -> None:
        """Everything the sample's process gives up before it reads its program."""
        os.setpgid(0, 0)
        os.dup2(self.devnull, 0)
        os.dup2(self.devnull, 1)
        os.dup2(self.devnull, 2)
        last = 2
        for fd in sorted({*keep, self.landlock} - {None}):  # every other descriptor closed
            os.closerange(last + 1, fd)
            last = fd
        os.closerange(last + 1, 65536)
        os.chdir(self.work)
        cpu = max(1, math.ceil(float(job["cpu_s"])))
        limits = [(resource.RLIMIT_CPU, cpu, cpu + 1), (resource.RLIMIT_CORE, 0, 0),
                  (resource.RLIMIT_AS, int(job["memory_mb"]) << 20, None),
                  (resource.RLIMIT_FSIZE, int(job["file_size_mb"]) << 20, None),
                  (resource.RLIMIT_NOFILE, int(job["open_files"]), None)]
        if self.count_processes:
            limits.append((resource.RLIMIT_NPROC, int(job["processes"]), None))
        for which, soft, hard in limits:
            resource.setrlimit(which, (soft, soft if hard is None else hard))
        if self.nobody:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
        elif LINUX:
            _drop_capabilities()
        if self.landlock is not None:
            _landlock_restrict(self.landlock)
            os.close(self.landlock)
        if self.seccomp is not None:
            _install_seccomp(self.seccomp)

    # -- one job ------------------------------------------------------------------------

    def run(self, job: dict) -> dict:
        started, cpu_started = time.monotonic(), time.process_time()
        timeout = float(job["timeout_s"])
        tests = job["tests"]
        code = self.compiled.get(tests)
        if code is None:
            try:
                code = compile(tests, "<tests>", "exec")
            except SyntaxError as e:
                return {"passed": False, "reason": f"the tests do not compile: {_describe(e)}", "seconds": 0.0}
            if len(self.compiled) >= 1024:
                self.compiled.clear()
            self.compiled[tests] = code
        request = {k: job[k] for k in ("entry_point", "cpu_s", "memory_mb", "file_size_mb", "open_files",
                                        "processes")}
        calls_r, calls_w = os.pipe()
        replies_r, replies_w = os.pipe()
        try:
            socket.send_fds(self.control, [json.dumps(request).encode()], [calls_r, replies_w])
        except OSError as e:
            raise SystemExit(f"the zygote is gone ({e})") from None
        finally:
            os.close(calls_r)
            os.close(replies_w)
        status: list[int] = []
        sample_cpu: list[float] = []

        def sample_status() -> int:  # ends the sample if it has not ended: asked once
            _disarm()  # a deadline must not cut this exchange in half
            if not status:
                try:
                    self.control.send(b"end")
                except OSError as e:
                    raise SystemExit(f"the zygote is gone ({e})") from None
                ended = json.loads(self._from_zygote())
                status.append(ended["status"])
                sample_cpu.append(ended["cpu_s"])
            return status[0]

        channel = _Channel(calls_w, replies_r, sample_status)
        try:
            try:
                _arm(timeout)
                channel.send(job["program"])
                verdict = _run_tests(tests, code, job["entry_point"], channel)
            finally:
                _disarm()
        except SampleBroke as e:
            verdict = {"passed": False, "reason": str(e)}
        except _Deadline:
            verdict = {"passed": False, "reason": f"timed out after {timeout:g} s"}
        finally:
            channel.close()
            sample_status()
            self._empty_work()
        verdict["reason"] = verdict["reason"][:REASON_CHARS]
        verdict["seconds"] = time.monotonic() - started
        verdict["cpu_s"] = sum(sample_cpu) + time.process_time() - cpu_started  # the sample's and this server's
        return verdict

    def _from_zygote(self) -> bytes:
        reply = self.control.recv(4096)
        if not reply:
            raise SystemExit("the zygote is gone")
        return reply

    def _empty_work(self) -> None:
        os.chmod(self.work, 0o700)
        if not os.listdir(self.work):
            return
        import shutil

        def unlock(function, path, _):
            os.chmod(os.path.dirname(path), 0o700)
            function(path)

        for name in os.listdir(self.work):
            path = os.path.join(self.work, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, onerror=unlock)
            else:
                os.unlink(path)


LAYERS = ("namespaces", "seccomp", "landlock")


def main() -> None:
    base, layers = sys.argv[1], set(sys.argv[2].split(",")) if len(sys.argv) > 2 else set(LAYERS)
    server = Server(base, layers)
    stdout = sys.stdout.buffer
    stdout.write(json.dumps(server.report()).encode() + b"\n")
    stdout.flush()
    for line in sys.stdin.buffer:
        try:
            reply = server.run(json.loads(line))
        except Exception as e:  # a bug here must fail the job, not the server
            reply = {"passed": False, "reason": f"sandbox error: {_describe(e)}", "seconds": 0.0}
        stdout.write(json.dumps(reply).encode() + b"\n")
        stdout.flush()
    server.control.close()  # the zygote's end of it reads EOF and exits
    os.waitpid(server.zygote, 0)


if __name__ == "__main__":
    main()
