"""The engine's fused attention on a CPU (`Engine.cpu_kernel`): cpu_attention.c, built here on first use.

Per layer, one call does what the torch path does in about 14 operations a
chunk plus rope and the cache write: the rotary embedding of q and k, the
keys and values stored where their positions belong, and each row's
attention over its positions 0..pos, in float32, reading each key and value
once and only as far as the row reaches. A row's arithmetic is its own, in
a fixed order, so a position's result does not depend on what shares its
call, and the engine stays exact row by row (the same tests hold it); but it
rounds otherwise than the torch path, so its samples are not the torch
path's to the bit (where two tokens were nearly tied one may differ).

Between the layers' matmuls, the rest of a layer runs here too (`add_rms`:
the residual step and the next RMS norm; `silu_mul`: the MLP's activation),
each into a buffer the engine keeps, so a step allocates nothing but its
logits. With more than one torch thread, each call of 64 rows or more
splits its rows among them by OpenMP. Built by GCC with -fopenmp, the library
binds to the libgomp torch's CPU builds have already loaded: the threads are
torch's own, still spinning from its last matmul, where threads of another
pool would fight them for the cores. Where the process ends up with two
OpenMP runtimes (another compiler's, or a torch on another runtime), calls
run on one thread unless told otherwise (`parallel()`).

The C source is compiled with the machine's C compiler (`$CC`, else `cc`)
for this CPU (`-march=native`) into a cache folder (`$THINKSCALE_CACHE`,
else `~/.cache/thinkscale`), named by a hash of the source, the flags, the
compiler and the CPU, so a folder shared by other machines never hands one
another's build, with OpenMP where the compiler has it (else on one
thread). Where no compiler works, `available()` is False with the reason in
`why_unavailable()`, and the engine uses the torch path.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

CHUNK = 32  # cache positions a chunk (the engine's; cpu_attention.c's)
MAX_DIM = 128  # the largest head size (cpu_attention.c's MAX_DV: its accumulators hold 128 floats)
MAX_HEADS = 128  # the most heads (their queries live on the C side's stack: 64 KB at most)
MAX_SCORES = 1 << 16  # heads x positions a row's scores (on the C side's stack: 256 KB)
SOURCE = Path(__file__).with_name("cpu_attention.c")
FLAGS = ("-O3", "-march=native", "-mprefer-vector-width=512", "-fPIC", "-shared")
_failure: list[str] = []
last_threads = 0  # the threads the last `run` used (its rows split among them)


def _cpu_id() -> str:
    """What the build is for: the CPU's model and flags (Linux), else the platform's name."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "\n".join(sorted({ln for ln in lines if ln.startswith(("model name", "flags"))}))
    except OSError:
        return platform.processor() + platform.machine()


def _cache_dir() -> Path:
    return Path(os.environ.get("THINKSCALE_CACHE") or Path.home() / ".cache" / "thinkscale") / "kernels"


def _compile(compiler: str, out: Path, flags: tuple[str, ...]) -> str | None:
    """Build the library into `out`; None, or what went wrong."""
    try:
        done = subprocess.run([compiler, *flags, str(SOURCE), "-o", str(out), "-lm"], capture_output=True,
                              text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"{compiler}: {error}"
    return None if done.returncode == 0 else f"{compiler} {' '.join(flags)}: {done.stderr.strip()[-500:]}"


@functools.cache
def _library() -> ctypes.CDLL | None:
    """The built library, or None (why: `_failure`), found out once per process: every engine on a CPU asks."""
    try:
        return _build_and_load()
    except (OSError, RuntimeError) as error:  # the cache folder (read-only, or no home folder), or loading it
        _failure.append(f"the kernel's cache folder {_cache_dir_or_none()}: {error}")
        return None


def _cache_dir_or_none() -> Path | None:
    try:
        return _cache_dir()
    except RuntimeError:  # no home folder
        return None


def _build_and_load() -> ctypes.CDLL | None:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        _failure.append("no C compiler found (set CC)")
        return None
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as error:
        _failure.append(f"{compiler}: {error}")
        return None
    errors = []
    plain = tuple(f for f in FLAGS if f != "-mprefer-vector-width=512")  # not gcc
    for flags in (FLAGS + ("-fopenmp",), FLAGS, plain + ("-fopenmp",), plain):
        digest = hashlib.sha256("\0".join([SOURCE.read_text(), *flags, version, _cpu_id()]).encode()).hexdigest()
        path = _cache_dir() / f"cpu_attention-{digest[:20]}.so"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=path.parent) as tmp:  # built aside, then renamed: atomic
                built = Path(tmp) / path.name
                error = _compile(compiler, built, flags)
                if error:
                    errors.append(error)
                    continue
                os.replace(built, path)
        try:
            library = ctypes.CDLL(str(path))
        except OSError as error:  # built, but its OpenMP runtime does not load (say, clang's libomp): the next
            errors.append(f"{path.name} ({' '.join(flags)}): {error}")
            continue
        f = library.ts_attend
        f.argtypes = [ctypes.c_void_p] * 6 + [ctypes.c_int64] * 5 + [ctypes.c_float] + [ctypes.c_int] * 2 + [
            ctypes.c_void_p] * 2 + [ctypes.c_int]
        f.restype = ctypes.c_int
        library.ts_add_rms.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                                       ctypes.c_float, ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_int64,
                                       ctypes.c_int]
        library.ts_add_rms.restype = None
        library.ts_silu_mul.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int]
        library.ts_silu_mul.restype = None
        library.ts_openmp.argtypes, library.ts_openmp.restype = [], ctypes.c_int
        return library
    _failure.append("; ".join(errors))
    return None


def setting() -> bool | None:
    """$THINKSCALE_CPU_KERNEL: False where it is 0, false, off or no (the kernel never runs, even where asked for);
    True where it is 1, true, on or yes (every engine asks for it); None where unset or empty (the default)."""
    value = os.environ.get("THINKSCALE_CPU_KERNEL", "").strip().lower()
    if value in ("0", "false", "off", "no"):
        return False
    if value in ("1", "true", "on", "yes"):
        return True
    if value:
        warnings.warn(f"THINKSCALE_CPU_KERNEL={value!r} is neither 0 nor 1 (nor off/on, false/true, no/yes): taken "
                      "as unset", RuntimeWarning, stacklevel=3)
    return None


def default() -> bool:
    """Whether an engine uses the kernel when not told: yes, unless $THINKSCALE_CPU_KERNEL is off (`setting`).
    Where it cannot run (no C compiler, a model outside `fits`), an engine that was not told runs the torch path
    without a word; one that was told, or whose process was ($THINKSCALE_CPU_KERNEL=1), warns
    (`Engine._fused`)."""
    return setting() is not False


def available() -> bool:
    """Whether the kernel is built (or can be) and loads; builds it on the first call."""
    if setting() is False:
        return False
    return _library() is not None


def parallel() -> bool:
    """Whether the kernel's calls split their rows among torch's threads by default: built with OpenMP, and
    one OpenMP runtime in the process (torch's, which the build bound to). Where the build brought a runtime
    of its own, its threads would fight torch's spinning ones for the cores, so calls run on one thread
    unless told otherwise (`threads`)."""
    return available() and bool(_library().ts_openmp()) and _one_openmp_runtime()


@functools.cache
def _one_openmp_runtime() -> bool:
    """Whether the process has mapped exactly one OpenMP runtime (Linux: /proc/self/maps; elsewhere, unknown:
    False)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return False
    names = ("libgomp", "libiomp", "libomp")
    return len({ln.split()[-1] for ln in maps.splitlines() if any(n in ln.rsplit("/", 1)[-1] for n in names)}) == 1


def _threads(threads: int | None) -> int:
    """A call's threads: as told, else torch's where `parallel()`, else one."""
    if threads is not None:
        return threads
    return torch.get_num_threads() if parallel() else 1


def why_unavailable() -> str:
    if setting() is False:
        return f"THINKSCALE_CPU_KERNEL={os.environ['THINKSCALE_CPU_KERNEL']}"
    return "; ".join(_failure) or "available"


def where(kv: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """(len(rows), 8) int64: per row, the address of its layer-0 keys' chunk 0; the distances (elements) from
    keys to values, chunk to chunk and layer to layer; and, for `prepare` to check, its chunks, layers, elements
    of a chunk (H * CHUNK * D) and bytes an element, in a cache (layers, 2, chunks, [rows,] H, CHUNK * D);
    without `rows` (one sequence's cache), one row. Addresses: `kv` must outlive every use of the table (the
    table keeps it alive, but not what is made from the table: a slice, a copy, a concatenation)."""
    if kv.device.type != "cpu" or kv.dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"the CPU kernel reads float32 or bfloat16 caches on the CPU, got {kv.dtype} on {kv.device}")
    if kv.dim() != (5 if rows is None else 6) or kv.shape[1] != 2 or kv.stride(-1) != 1 \
            or kv.stride(-2) != kv.shape[-1]:
        raise ValueError(f"a cache (layers, 2, chunks, [rows,] H, CHUNK * D) with its last two dimensions "
                         f"contiguous, got shape {tuple(kv.shape)}, strides {kv.stride()}")
    layout = [kv.stride(1), kv.stride(2), kv.stride(0), kv.shape[2], kv.shape[0], kv.shape[-2] * kv.shape[-1],
              kv.element_size()]
    if rows is None:
        table = torch.tensor([[kv.data_ptr(), *layout]], dtype=torch.int64)
    else:
        if len(rows) and not 0 <= int(rows.min()) <= int(rows.max()) < kv.shape[3]:
            raise ValueError(f"rows outside the cache's {kv.shape[3]}: {rows.tolist()}")
        table = torch.empty(len(rows), 8, dtype=torch.int64)
        table[:, 0] = rows.to(torch.int64) * (kv.stride(3) * kv.element_size()) + kv.data_ptr()
        table[:, 1:] = torch.tensor(layout, dtype=torch.int64)
    table.cache = kv  # the cache lives as long as this table (`where(cache.clone())` passed on at once)
    return table


@dataclass(frozen=True)
class Rows:
    """A call's rows, checked once for every layer's call (`prepare`): their positions, caches (`where`'s table)
    and lead caches, and what the checks found, for `run` to hold each layer's qkv to."""
    pos: torch.Tensor  # (A,) int64, contiguous
    table: torch.Tensor  # (A, 8) int64, contiguous
    stores: int
    own: bool
    lead_table: torch.Tensor | None
    lead_counts: torch.Tensor | None
    layers: int  # the fewest layers of any row's cache
    chunk: int  # elements of a chunk (H * CHUNK * D), the same in every cache
    item: int  # bytes an element
    top: int  # the highest position
    keep: tuple = ()  # the tables given (a view keeps its base, and `where`'s table its cache): alive with these


def prepare(pos: torch.Tensor, table: torch.Tensor, stores: int, own: bool = False,
            lead: tuple[torch.Tensor, torch.Tensor] | None = None) -> Rows:
    """Check a call's rows against their caches, once for all the layers' calls (`run`).

    pos (A,): each row's position, within its cache; table: `where`'s, a row per position. `stores`: rows
    0..stores-1 store their keys and values (the rest only read). `own`: no two rows share a cache
    (decode), so each row stores just before it reads, while the lines it wrote are at hand; otherwise (one
    sequence's positions, `extend`) every row stores before any reads. `lead`: (`where`'s table of another
    cache per row, counts (A,)): row r reads its first counts[r] positions (at most its position, so never
    the one it stores) from that cache, and never reads its own cache there (decode: the prompt's cache,
    which the rows of a prompt share and the CPU keeps at hand; the exact loop's rows hold no copy of their
    prompt, static decode's do).
    """
    A = len(pos)
    given = (table,) if lead is None else (table, *lead)
    for t in (pos, *given):
        if t.device.type != "cpu" or t.dtype.is_floating_point or t.is_complex():
            raise ValueError(f"positions, tables and lead counts must be integers on the CPU, got {t.dtype} on "
                             f"{t.device}")
    if len(table) != A or not 0 <= stores <= A:
        raise ValueError(f"{A} positions, {len(table)} cache rows, {stores} to store")
    # copies: what is checked here is what `run` hands the C side, whatever the caller changes later
    pos, table = pos.to(torch.int64, copy=True).contiguous(), table.to(torch.int64, copy=True).contiguous()
    tables = [table]
    counts = lead_table = None
    if lead is not None:
        lead_table, counts = lead[0].to(torch.int64, copy=True).contiguous(), lead[1].to(
            torch.int64, copy=True).contiguous()
        if len(lead_table) != A or len(counts) != A:
            raise ValueError(f"{A} rows, {len(lead_table)} lead caches and {len(counts)} lead counts")
        tables.append(lead_table)
    if any(t.dim() != 2 or t.shape[1] != 8 for t in tables):
        raise ValueError("tables must be `where`'s: (rows, 8)")
    if not A:
        return Rows(pos, table, stores, own, lead_table, counts, 0, 0, 0, -1, given)
    both = torch.cat(tables)
    chunk, item = int(both[0, 6]), int(both[0, 7])
    if not (bool((both[:, 6] == chunk).all()) and bool((both[:, 7] == item).all())):
        raise ValueError("the caches of one call must have chunks of one size and elements of one type")
    if own and len(torch.unique(table[:, 0])) != A:  # rows of one cache, split among threads, would race
        raise ValueError("`own` rows must each have a cache of their own; some share one")
    if int(pos.min()) < 0 or bool((pos // CHUNK >= table[:, 4]).any()):
        raise ValueError(f"a position outside its cache: {pos.tolist()}")
    if counts is not None and (int(counts.min()) < 0 or bool((counts > pos).any())
                               or bool((counts > lead_table[:, 4] * CHUNK).any())):
        raise ValueError(f"lead counts must be within 0..each row's position and its lead cache, got "
                         f"{counts.tolist()} for positions {pos.tolist()}")
    return Rows(pos, table, stores, own, lead_table, counts, int(both[:, 5].min()), chunk, item, int(pos.max()),
                given)


def run(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rows: Rows, layer: int, scale: float,
        out: torch.Tensor | None = None, threads: int | None = None) -> torch.Tensor:
    """One layer: rope q and k, store k and v of the rows that store, and return every row's attention
    (A, H * D), in `out` where given (contiguous, qkv's dtype). qkv (A, 3, H, D) contiguous, float32 or
    bfloat16 as the caches; cos, sin (positions, D) float32, covering every position; `rows`: `prepare`'s.
    The keys live in this kernel's layout, position-major as the values (cpu_attention.c), not the torch
    path's. `threads` (default: torch's where `parallel()`, else one): the rows are split among them,
    at least 32 rows a thread, where the build has OpenMP; each row's result is the same whatever the
    split."""
    A, _, H, D = qkv.shape
    if not fits(H, D) or qkv.dtype not in (torch.float32, torch.bfloat16) or not qkv.is_contiguous():
        raise ValueError(f"qkv must be contiguous float32 or bfloat16 with an even head size of at most {MAX_DIM} "
                         f"and at most {MAX_HEADS} heads, got {qkv.dtype}, shape {tuple(qkv.shape)}, strides "
                         f"{qkv.stride()}")
    if any(t.device.type != "cpu" for t in (qkv, cos, sin)):
        raise ValueError(f"qkv, cos and sin must be on the CPU, got {qkv.device}, {cos.device}, {sin.device}")
    if A != len(rows.pos):
        raise ValueError(f"{A} rows of qkv, {len(rows.pos)} positions")
    for t in (cos, sin):
        if t.dtype != torch.float32 or not t.is_contiguous() or t.dim() != 2 or t.shape[1] != D:
            raise ValueError(f"cos and sin must be contiguous float32 (positions, {D}), got {t.dtype} "
                             f"{tuple(t.shape)}")
    if A and not (rows.chunk == H * CHUNK * D and rows.item == qkv.element_size() and 0 <= layer < rows.layers):
        raise ValueError(f"qkv ({H} heads of {D}, {qkv.dtype}) or layer {layer} does not fit the cache's table")
    if rows.top >= len(cos):
        raise ValueError(f"a position outside the rope tables: {rows.top}")
    if not fits(H, D, rows.top + 1):  # the C side's scores live on its stack
        raise ValueError(f"{H} heads x {rows.top + 1} positions: more than the kernel's bound ({MAX_SCORES:,} "
                         "scores)")
    if out is None:
        out = torch.empty(A, H * D, dtype=qkv.dtype)
    else:
        _check("out", out, (A, H * D), qkv.dtype)
    global last_threads
    last_threads = _library().ts_attend(
        qkv.data_ptr(), rows.pos.data_ptr(), cos.data_ptr(), sin.data_ptr(), rows.table.data_ptr(), out.data_ptr(),
        layer, A, rows.stores, H, D, scale, int(qkv.dtype == torch.bfloat16), int(rows.own),
        None if rows.lead_counts is None else rows.lead_counts.data_ptr(),
        None if rows.lead_table is None else rows.lead_table.data_ptr(), _threads(threads))
    return out


def _check(name: str, t: torch.Tensor, shape: tuple[int, ...], *dtypes: torch.dtype) -> None:
    """`t`, called `name` in the error, must be a contiguous CPU tensor of `shape` and one of `dtypes`."""
    if t.device.type != "cpu" or t.dtype not in dtypes or tuple(t.shape) != shape or not t.is_contiguous():
        raise ValueError(f"{name} must be a contiguous {' or '.join(map(str, dtypes))} {shape} on the CPU, got "
                         f"{t.dtype} {tuple(t.shape)} on {t.device}, strides {t.stride()}")


def add_rms(x: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, eps: float, out: torch.Tensor,
            threads: int | None = None) -> torch.Tensor:
    """The residual step and the next RMS norm of the engine's rows, in one pass: x (A, h) float32 += delta
    (A, h, float32 or bfloat16; None: nothing), in place; then out (A, h) = weight * (x / sqrt(mean(x^2) +
    eps)), float32 or rounded to bfloat16 (out's dtype). Returns out. `threads`: as `run`'s."""
    A, h = x.shape if x.dim() == 2 else (0, 0)
    _check("x", x, (A, h), torch.float32)
    _check("weight", weight, (h,), torch.float32)
    if delta is not None:
        _check("delta", delta, (A, h), torch.float32, torch.bfloat16)
    _check("out", out, (A, h), torch.float32, torch.bfloat16)
    _library().ts_add_rms(x.data_ptr(), None if delta is None else delta.data_ptr(),
                          int(delta is not None and delta.dtype == torch.bfloat16), weight.data_ptr(), eps,
                          out.data_ptr(), int(out.dtype == torch.bfloat16), A, h, _threads(threads))
    return out


def silu_mul(gu: torch.Tensor, out: torch.Tensor, threads: int | None = None) -> torch.Tensor:
    """The MLP's activation: gu (A, 2 * I), gate then up, float32 or bfloat16; out (A, I), gu's dtype, =
    silu(gate) x up, rounded once. Returns out. `threads`: as `run`'s."""
    A, inter = (gu.shape[0], gu.shape[1] // 2) if gu.dim() == 2 else (0, 0)
    _check("gu", gu, (A, 2 * inter), torch.float32, torch.bfloat16)  # gate and up, of as many columns
    _check("out", out, (A, inter), gu.dtype)
    _library().ts_silu_mul(gu.data_ptr(), out.data_ptr(), int(gu.dtype == torch.bfloat16), A, inter,
                           _threads(threads))
    return out


def fits(heads: int, dim: int, positions: int = 0) -> bool:
    """Whether the kernel takes a model of `heads` heads of `dim` and `positions` positions (the bounds of its
    buffers, which live on the C side's stack)."""
    return (dim % 2 == 0 and 0 < dim <= MAX_DIM and 0 < heads <= MAX_HEADS
            and heads * (-(-positions // CHUNK)) * CHUNK <= MAX_SCORES)


def attend(qkv: torch.Tensor, pos: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, table: torch.Tensor,
           layer: int, stores: int, scale: float, own: bool = False,
           lead: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """`run` of one layer on `prepare`'s rows: the two in one call (the engine prepares once a step)."""
    if len(pos) != qkv.shape[0]:
        raise ValueError(f"{qkv.shape[0]} rows of qkv, {len(pos)} positions")
    return run(qkv, cos, sin, prepare(pos, table, stores, own, lead), layer, scale)
