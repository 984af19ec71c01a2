"""What one request may take of the server: a bounded body, a place among the searches in flight, tokens.

The gate counts searches in flight, over all keys and per key; a request that
would pass either limit is refused at once with 429 and `Retry-After`, rather
than queued, so a client learns to back off and the server's memory stays flat.
The token window counts what each key's requests spent in the last minute.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from starlette.requests import Request

from thinkscale.serve.errors import APIError, bad_request


class Gate:
    def __init__(self, total: int, per_key: int, retry_after_s: int) -> None:
        self.total, self.per_key, self.retry_after_s = total, per_key, retry_after_s
        self._by_key: Counter[str] = Counter()

    @property
    def in_flight(self) -> int:
        return sum(self._by_key.values())

    def enter(self, key: str) -> None:
        """Take a place for `key`'s request, or raise a 429."""
        if self.in_flight >= self.total:
            why = f"the server is running {self.total} searches, its most at once"
        elif self._by_key[key] >= self.per_key:
            why = f"this key has {self.per_key} requests in flight, its most at once"
        else:
            self._by_key[key] += 1
            return
        raise APIError(429, f"too many concurrent requests: {why}; retry after {self.retry_after_s} s", None,
                       "too_many_concurrent_requests", {"Retry-After": str(self.retry_after_s)})

    def leave(self, key: str) -> None:
        self._by_key[key] -= 1
        if self._by_key[key] <= 0:
            del self._by_key[key]


class TokenWindow:
    """Tokens each key spent in the last `window_s` seconds; `check` refuses a key at or over its limit."""

    def __init__(self, per_window: int, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_window, self.window_s, self.clock = per_window, window_s, clock
        self._spent: dict[str, deque[tuple[float, int]]] = {}
        self._totals: Counter[str] = Counter()

    def _forget(self, key: str, now: float) -> None:
        spent = self._spent.get(key)
        while spent and spent[0][0] <= now - self.window_s:
            self._totals[key] -= spent.popleft()[1]
        if spent is not None and not spent:
            del self._spent[key], self._totals[key]

    def spent(self, key: str) -> int:
        self._forget(key, self.clock())
        return self._totals[key]

    def charge(self, key: str, tokens: int) -> None:
        if tokens > 0:
            self._spent.setdefault(key, deque()).append((self.clock(), tokens))
            self._totals[key] += tokens

    def check(self, key: str) -> None:
        """Nothing if `key` is under its limit; a 429 saying when it will be, otherwise."""
        now = self.clock()
        self._forget(key, now)
        if self._totals[key] < self.per_window:
            return
        over, wait = self._totals[key] - self.per_window, 0.0
        for at, tokens in self._spent[key]:  # the wait until enough of the oldest spending leaves the window
            wait = at + self.window_s - now
            over -= tokens
            if over < 0:
                break
        retry = max(1, math.ceil(wait))
        raise APIError(429, f"this key spent {self._totals[key]} tokens in the last {self.window_s:g} s, its most "
                            f"is {self.per_window}; retry after {retry} s", None, "rate_limit_exceeded",
                       {"Retry-After": str(retry)})


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    """The request's JSON object, read up to `limit` bytes (413 past it, 400 if it is not a JSON object)."""
    too_large = APIError(413, f"request body over the server's limit of {limit} bytes", None, "request_too_large")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise too_large
    try:
        body = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise bad_request(f"the body is not valid JSON: {e}", None, "invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request("the body must be a JSON object", None, "invalid_json")
    return body
