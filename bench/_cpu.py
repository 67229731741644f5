"""CPU seconds used by each party of a benchmark (Linux ``/proc``; Redis from ``INFO cpu``).

A throughput target on a machine with N cores is out of reach when the CPU that one event costs,
summed over every process that handles it (producer, consumers, Redis, PostgreSQL), exceeds
N / target: :func:`ceiling` turns measured CPU into that bound.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
#: PostgreSQL processes that work for every database (their CPU is counted with the bench's backends)
_PG_SHARED = ("walwriter", "checkpointer", "background writer", "autovacuum launcher", "walsummarizer")


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of one process (0 when it is gone or /proc is absent)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def postgres_cpu(database: str) -> float:
    """CPU seconds of the PostgreSQL backends of ``database`` plus the server's shared writers."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().replace(b"\x00", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if title.startswith("postgres: ") and (f" {database} " in title or any(p in title for p in _PG_SHARED)):
            total += proc_cpu(int(entry.name))
    return total


def redis_cpu(client: Any) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


@dataclass
class CpuMeter:
    """CPU seconds of this process, given child pids, Redis and a PostgreSQL database, over a span."""

    redis: Any
    database: str
    children: list[int] = field(default_factory=list)
    _start: dict[str, float] = field(default_factory=dict)
    used: dict[str, float] = field(default_factory=dict)
    wall: float = 0.0

    def _now(self) -> dict[str, float]:
        return {"producer": time.process_time(), "consumers": sum(proc_cpu(p) for p in self.children),
                "redis": redis_cpu(self.redis), "postgres": postgres_cpu(self.database),
                "wall": time.perf_counter()}

    def start(self) -> None:
        self._start = self._now()

    def stop(self) -> None:
        end = self._now()
        self.used = {k: end[k] - self._start[k] for k in end if k != "wall"}
        self.wall = end["wall"] - self._start["wall"]

    def per_event_us(self, events: int) -> dict[str, float]:
        return {k: v / events * 1e6 for k, v in self.used.items()}


def ceiling(us_per_event: float, cores: int | None = None) -> float:
    """Events/s that ``cores`` (default: this machine's) can sustain at that CPU cost per event."""
    return (cores or os.cpu_count() or 1) / us_per_event * 1e6 if us_per_event > 0 else float("inf")


def render(per_event: dict[str, float]) -> str:
    total = sum(per_event.values())
    parts = ", ".join(f"{k} {v:.1f}" for k, v in per_event.items())
    return f"{total:.1f} CPU-us/event ({parts}) -> ceiling {ceiling(total):,.0f} events/s on {os.cpu_count()} cores"
