"""One cached value as a tier holds it, and the XFetch rule that refreshes it early."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable
from typing import Any

TagSource = Iterable[str] | Callable[[], Iterable[str]]


def resolve_tags(tags: TagSource) -> frozenset[str]:
    return frozenset(tags() if callable(tags) else tags)


def utc_now() -> float:
    return time.time()


class Entry:
    """A loaded value, how long it took to compute (``delta``) and when it expires (epoch s)."""

    __slots__ = ("_tags", "delta", "expires_at", "payload")

    def __init__(self, payload: Any, delta: float, expires_at: float, tags: TagSource) -> None:
        self.payload = payload
        self.delta = delta
        self.expires_at = expires_at
        self._tags = tags  # resolved only when an invalidation needs them

    @property
    def tags(self) -> frozenset[str]:
        if not isinstance(self._tags, frozenset):
            self._tags = resolve_tags(self._tags)
        return self._tags

    def refresh_due(self, beta: float) -> bool:
        """XFetch (Vattani et al.): recompute early with a probability that rises as the expiry
        nears, weighted by how long the value took to compute; ``beta <= 0`` disables it."""
        if beta <= 0 or self.delta <= 0:
            return False
        draw = random.random() or 1e-12
        return utc_now() - self.delta * beta * math.log(draw) >= self.expires_at
