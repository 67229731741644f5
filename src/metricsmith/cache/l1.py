"""L1: this process's bounded LRU of loaded values with a per-entry TTL (cachetools ``TLRUCache``).

Every purge bumps an epoch; a value read before a purge is put back only if the epoch did not
move meanwhile, so a purge that raced with a read cannot be undone by it.
"""

from __future__ import annotations

import fnmatch
import threading
from collections.abc import Iterable

from cachetools import TLRUCache

from metricsmith.cache.entry import Entry, utc_now


class L1:
    def __init__(self, maxsize: int) -> None:
        self._data: TLRUCache[str, Entry] = TLRUCache(
            maxsize=maxsize, ttu=lambda _k, v, _now: v.expires_at, timer=utc_now
        )
        self._lock = threading.Lock()
        self.epoch = 0

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: str) -> Entry | None:
        with self._lock:
            return self._data.get(key)

    def put(self, key: str, entry: Entry, epoch: int) -> None:
        """Store unless a purge happened since ``epoch`` was read."""
        with self._lock:
            if epoch == self.epoch:
                self._data[key] = entry

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self.epoch += 1

    def purge(self, tags: Iterable[str], patterns: Iterable[str], keys: Iterable[str]) -> None:
        """Drop the entries with one of ``keys``, carrying one of ``tags`` or matching a glob."""
        tag_set, pattern_list, key_set = set(tags), list(patterns), set(keys)
        with self._lock:
            self.epoch += 1
            doomed = [
                k for k, entry in list(self._data.items())
                if k in key_set or (entry.tags & tag_set) or any(fnmatch.fnmatchcase(k, p) for p in pattern_list)
            ]
            for k in doomed:
                self._data.pop(k, None)
