"""How every seed in thinkscale is derived: one hash of named parts.

A seed derived from (run seed, problem id) or (trace seed, node id, salt)
depends on what it names, never on an order or a position, so a resumed run,
a rerun of one problem, or a request to the server draws exactly the same
samples as the original run.
"""

from __future__ import annotations

import hashlib


def derive_seed(*parts: object, bits: int = 31) -> int:
    """A reproducible seed in [0, 2**bits) from the parts' text, joined by '/'."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "big") & ((1 << bits) - 1)


def problem_seed(seed: int, problem_id: str) -> int:
    """A distinct, reproducible sampling seed for one problem of a run (by its id, not its position)."""
    return derive_seed(seed, problem_id)


def step_seed(seed: int, node_id: int, salt: str = "") -> int:
    """A reproducible seed for expanding one node of a search tree: same trace, same samples."""
    return derive_seed(seed, node_id, salt)
