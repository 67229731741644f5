"""In-process single-flight: concurrent callers of one key share one leader's result."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class Flight:
    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None

    def wait(self) -> Any:
        """The leader's result (or its exception, raised here too)."""
        self.done.wait()
        if self.error is not None:
            raise self.error
        return self.result


class SingleFlight:
    def __init__(self) -> None:
        self._flights: dict[str, Flight] = {}
        self._lock = threading.Lock()

    def join(self, key: str) -> tuple[Flight, bool]:
        """The key's flight and whether this caller leads it (and must call :meth:`lead`)."""
        with self._lock:
            flight = self._flights.get(key)
            if flight is not None:
                return flight, False
            flight = self._flights[key] = Flight()
            return flight, True

    def lead(self, key: str, flight: Flight, work: Callable[[], Any]) -> Any:
        """Run ``work`` as the leader and hand its outcome to every follower."""
        try:
            flight.result = work()
            return flight.result
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            with self._lock:
                self._flights.pop(key, None)
            flight.done.set()
