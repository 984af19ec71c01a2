"""The one thread that runs all torch work of a process (policies, scorers, trainers).

Torch work split between two threads runs two OpenMP thread teams that fight
over the cores (measured 1.5x slower on 2 cores), so the tiny policy and the
tiny-family scorers load their models and compute on this single thread,
while the event loop stays free to gather requests. The trainers run here too
(`on_torch_thread`): `improve` trains right after its search and evaluation
ran here, and its GRPO on the main thread measured 1.9x slower on 2 threads.

A caller interrupted while it waits (Ctrl-C) leaves its call running on this
thread; a training loop asks `check_interrupt()` each step and stops there.
At exit the process waits for the thread to be idle: leaving while it is
inside torch code aborts the process ("terminate called without an active
exception").
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import queue
import threading
from concurrent.futures import Executor, Future
from typing import Any, Callable


class Interrupted(Exception):
    """A call on the torch thread stopped because its caller stopped waiting or the process is exiting."""


class _OneThreadExecutor(Executor):
    """One thread that runs the calls submitted to it, in order."""

    def __init__(self) -> None:
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._state = threading.Lock()  # guards _running and _stop_running
        self._running: Future | None = None
        self._stop_running = False  # its caller stopped waiting
        self._exiting = False
        self.thread = threading.Thread(target=self._work, name="thinkscale-torch", daemon=True)
        self.thread.start()
        atexit.register(self._finish)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        self._calls.put((future, fn, args, kwargs))
        return future

    def abandon(self, future: Future) -> None:
        """The caller stopped waiting: a call not started never runs, one running stops at its next check."""
        with self._state:
            if self._running is future:
                self._stop_running = True
            else:
                future.cancel()  # a no-op once it is done

    def interrupted(self) -> bool:
        return self._exiting or self._stop_running

    def _finish(self) -> None:
        """At exit: stop the running call at its next check, and wait until the thread is idle."""
        self._exiting = True
        self.submit(lambda: None).result()

    def _work(self) -> None:
        while True:
            future, fn, args, kwargs = self._calls.get()
            with self._state:
                run = future.set_running_or_notify_cancel()
                self._running, self._stop_running = (future if run else None), False
            if run:
                try:
                    future.set_result(fn(*args, **kwargs))
                except BaseException as error:  # handed to the caller, as ThreadPoolExecutor does
                    future.set_exception(error)
                    del error  # no cycle through the traceback to this frame
                finally:
                    with self._state:
                        self._running = None
            del future, fn, args, kwargs  # the last call's arguments are not kept alive while the thread waits


_executor: _OneThreadExecutor | None = None
_lock = threading.Lock()


def _get() -> _OneThreadExecutor:
    global _executor
    with _lock:
        if _executor is None:
            _executor = _OneThreadExecutor()
    return _executor


def check_interrupt() -> None:
    """Raise `Interrupted` where the call running on the torch thread should stop (a training loop, each step)."""
    executor = _executor
    if executor is not None and threading.current_thread() is executor.thread and executor.interrupted():
        raise Interrupted("interrupted: the caller stopped waiting, or the process is exiting")


def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run `fn(*args, **kwargs)` on the torch thread and wait for it (at once when already on it)."""
    executor = _get()
    if threading.current_thread() is executor.thread:
        return fn(*args, **kwargs)
    future = executor.submit(fn, *args, **kwargs)
    try:
        return future.result()
    except BaseException:
        executor.abandon(future)
        raise


def on_torch_thread(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a function whose calls run on the torch thread (a training loop)."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return call(fn, *args, **kwargs)
    return wrapper


async def run(fn: Callable[..., Any], *args: Any) -> Any:
    """Run `fn(*args)` on the torch thread without blocking the event loop."""
    return await asyncio.get_running_loop().run_in_executor(_get(), fn, *args)
