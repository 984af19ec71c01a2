"""API keys: where they come from, how a request's key is checked, and the id a key is known by.

Keys come from a file (`--api-key-file`: one key a line, `#` comments) and/or
the environment (`THINKSCALE_API_KEYS`, comma-separated). A request sends one
as `Authorization: Bearer KEY` (what the openai client does). Each candidate is
compared with `hmac.compare_digest`, so the time taken does not say how much of
a key was right. A key is never logged, stored or reported: limits and metrics
know it by its id, `key-` and the first 8 hex digits of its SHA-256. With no key
configured the server is open, and then it binds to the loopback interface only.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

ENV = "THINKSCALE_API_KEYS"
LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def load_keys(path: str | Path | None = None, environ: dict[str, str] | None = None) -> list[str]:
    """Keys from the file at `path` and from $THINKSCALE_API_KEYS; empty if neither gives any."""
    environ = os.environ if environ is None else environ
    keys = [k.strip() for k in environ.get(ENV, "").split(",") if k.strip()]
    if path is not None:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise ValueError(f"{path}: cannot read the API key file: {e.strerror}") from None
        keys += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not keys:
            raise ValueError(f"{path}: the API key file holds no key (one key a line)")
    return keys


def key_id(key: str) -> str:
    """What a key is known by in limits and metrics: never the key itself."""
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:8]


class Keys:
    """The configured keys; `check` says which one a request's Authorization header holds."""

    def __init__(self, keys: list[str]) -> None:
        self._keys = [k.encode() for k in keys]

    @property
    def open(self) -> bool:
        return not self._keys

    def check(self, authorization: str | None) -> str | None:
        """The key's id if `authorization` is "Bearer <a configured key>"; "open" if no key is configured."""
        if self.open:
            return "open"
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            return None
        found = None
        for key in self._keys:  # every key is compared, whichever matches
            if hmac.compare_digest(key, given.strip().encode()):
                found = key
        return key_id(found.decode()) if found is not None else None


def check_exposure(host: str, keys: Keys) -> None:
    """Refuse to serve without keys on anything but the loopback interface."""
    if keys.open and host not in LOOPBACK:
        raise ValueError(f"refusing to serve on {host} without API keys: anyone who can reach it could spend its "
                         f"compute. Give --api-key-file or ${ENV}, or bind to 127.0.0.1")
