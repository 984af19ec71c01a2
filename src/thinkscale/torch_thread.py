"""The one thread that runs all torch work of a process (tiny policy, transformers policy, scorers).

Torch work split between two threads runs two OpenMP thread teams that fight
over the cores (measured 1.5x slower on 2 cores), so the tiny policy and the
tiny-family scorers load their models and compute on this single thread,
while the event loop stays free to gather requests.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

_executor: ThreadPoolExecutor | None = None


def _get() -> ThreadPoolExecutor:
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="thinkscale-torch")
    return _executor


def call(fn: Callable[..., Any], *args: Any) -> Any:
    """Run `fn(*args)` on the torch thread and wait for it."""
    return _get().submit(fn, *args).result()


async def run(fn: Callable[..., Any], *args: Any) -> Any:
    """Run `fn(*args)` on the torch thread without blocking the event loop."""
    return await asyncio.get_running_loop().run_in_executor(_get(), fn, *args)
