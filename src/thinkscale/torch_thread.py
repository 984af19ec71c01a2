"""The one thread that runs all torch work of a process (tiny policy, transformers policy, scorers).

Torch work split between two threads runs two OpenMP thread teams that fight
over the cores (measured 1.5x slower on 2 cores), so the tiny policy and the
tiny-family scorers load their models and compute on this single thread,
while the event loop stays free to gather requests. Training runs here too
(`on_torch_thread`): `improve` trains right after its search and evaluation
ran here, and a training loop on the main thread measured 1.9x slower on 2
threads for it.

The thread is a daemon: an interrupted process exits at once instead of
waiting for a long call (a training run) to finish.
"""

from __future__ import annotations

import asyncio
import functools
import queue
import threading
from concurrent.futures import Executor, Future
from typing import Any, Callable


class _DaemonThread(Executor):
    """One daemon thread that runs the calls submitted to it, in order."""

    def __init__(self) -> None:
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._work, name="thinkscale-torch", daemon=True)
        self.thread.start()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        self._calls.put((future, fn, args, kwargs))
        return future

    def _work(self) -> None:
        while True:
            future, fn, args, kwargs = self._calls.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as error:  # handed to the caller, as ThreadPoolExecutor does
                future.set_exception(error)


_executor: _DaemonThread | None = None
_lock = threading.Lock()


def _get() -> _DaemonThread:
    global _executor
    with _lock:
        if _executor is None:
            _executor = _DaemonThread()
    return _executor


def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run `fn(*args, **kwargs)` on the torch thread and wait for it (at once when already on it)."""
    executor = _get()
    if threading.current_thread() is executor.thread:
        return fn(*args, **kwargs)
    return executor.submit(fn, *args, **kwargs).result()


def on_torch_thread(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a function whose calls run on the torch thread (a training loop)."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return call(fn, *args, **kwargs)
    return wrapper


async def run(fn: Callable[..., Any], *args: Any) -> Any:
    """Run `fn(*args)` on the torch thread without blocking the event loop."""
    return await asyncio.get_running_loop().run_in_executor(_get(), fn, *args)
