"""The circuit breaker of Redis: any Redis error opens it for ``retry_after`` seconds."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class Circuit:
    """Open (Redis down) until ``retry_after`` seconds after the last error.

    ``on_trip`` callbacks run on every error (e.g. empty L1, forget the fence lease, count it);
    the warning is logged once per outage, until :meth:`recovered` says Redis answers again.
    """

    def __init__(self, retry_after: float, on_trip: Callable[[], None]) -> None:
        self._retry_after = retry_after
        self._on_trip = on_trip
        self._down_until = 0.0
        self._warned = False
        self.last_error: str | None = None

    @property
    def closed(self) -> bool:
        """True while Redis may be used."""
        return time.monotonic() >= self._down_until

    def trip(self, exc: BaseException) -> None:
        first = self.closed
        self._down_until = time.monotonic() + self._retry_after
        self.last_error = f"{type(exc).__name__}: {exc}"
        self._on_trip()
        if first and not self._warned:  # once per outage, not once per probe
            self._warned = True
            log.warning("cache: Redis unreachable (%s); serving from PostgreSQL (degraded)", self.last_error)

    def recovered(self) -> None:
        self._warned = False
