"""Keys and values of token sequences already computed, so that the engine starts from them instead of rereading.

A step search asks for the next step of a path whose every token the policy
has already computed (the prompt, and each step as it was generated), and
asks the reward model to score a path whose parent it scored a moment ago.
The engine keeps the keys and values of such sequences here, keyed by their
tokens, and a new sequence starts from its longest cached prefix: only the
tokens after it are computed.

Exact, whatever is cached. The engine computes each position row by row
(engine.py), so the keys, values and logits at position t are a function of
tokens 0..t alone, to the bit, whether they came from a prefill, a decode
step, or an extension of a cached prefix. So a hit changes what is computed,
never a result: a search draws the same samples and scores whether its
prefixes were cached, evicted, or cached by another problem that happens to
share them. Bounded in bytes; the least recently used sequence goes first.

Scoped. Each entry belongs to a scope (a search passes its own), and a
lookup sees only its scope's entries. Results never depend on it (above),
but what a search is charged for does: a search computes what it has not
computed itself, whichever searches ran before it on the same model, so its
FLOPs are the same on a warm process as on a fresh one.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Entry:
    """What is known of one token sequence of length L."""

    kv: torch.Tensor  # (layers, 2, chunks, heads, CHUNK * head_dim): positions 0..L-1 (the last chunk's rest unused)
    logits: torch.Tensor | None  # (k, vocab): the logits of the last k positions (k may be 0), or None

    @property
    def nbytes(self) -> int:
        return self.kv.nbytes + (self.logits.nbytes if self.logits is not None else 0)

    def logits_from(self, length: int, position: int) -> torch.Tensor | None:
        """Logits of positions `position`..L-1 of this sequence of `length` tokens, if it kept them."""
        if self.logits is None or length - self.logits.shape[0] > position:
            return None
        return self.logits[self.logits.shape[0] - (length - position):]


class PrefixCache:
    """Entries by their token sequence; lookups by the longest cached prefix of a sequence."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"a prefix cache needs max_bytes >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._entries: OrderedDict[tuple, Entry] = OrderedDict()  # (scope, *tokens) -> entry
        self._lengths: Counter[int] = Counter()  # how many entries have each length: only those are looked up
        self._scopes: dict[object, set[tuple]] = {}  # scope -> its entries' keys
        self._released: deque = deque()  # scopes whose searches ended, dropped at the next use

    def __len__(self) -> int:
        return len(self._entries)

    def longest(self, tokens: tuple[int, ...], scope: object = None) -> tuple[int, Entry | None]:
        """(length, entry) of the longest prefix of `tokens` cached in `scope`; (0, None) if none."""
        self.tidy()
        for length in sorted((n for n in self._lengths if n <= len(tokens)), reverse=True):
            key = (scope, *tokens[:length])
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                return length, entry
        return 0, None

    def put(self, tokens: tuple[int, ...], entry: Entry, scope: object = None) -> None:
        """Keep `entry` for `tokens` in `scope` (replacing any), then evict the least recently used past the bound."""
        self.tidy()
        if not tokens or entry.nbytes > self.max_bytes:
            return
        key = (scope, *tokens)
        old = self._entries.pop(key, None)
        if old is not None:
            self.nbytes -= old.nbytes
            self._lengths[len(tokens)] -= 1
        self._entries[key] = entry
        self._lengths[len(tokens)] += 1
        self._scopes.setdefault(scope, set()).add(key)
        self.nbytes += entry.nbytes
        while self.nbytes > self.max_bytes:
            self._remove(next(iter(self._entries)))

    def release(self, scope: object) -> None:
        """`scope`'s search has ended: its entries go at the next use. Safe from any thread, at any moment
        (a garbage collector's finalizer calls it): it only appends to a queue, taking no lock."""
        self._released.append(scope)

    def tidy(self) -> None:
        """Drop the entries of every released scope (on the thread that uses the cache)."""
        while self._released:
            for key in self._scopes.pop(self._released.popleft(), ()):
                self._remove(key)

    def _remove(self, key: tuple) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        self.nbytes -= entry.nbytes
        length = len(key) - 1
        self._lengths[length] -= 1
        if not self._lengths[length]:
            del self._lengths[length]
        keys = self._scopes.get(key[0])
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._scopes[key[0]]
