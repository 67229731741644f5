"""Several stream shards in one process: one :class:`StreamConsumer` per shard, each on its own thread.

``metricsmith realtime consume --shards 0-3`` runs this; every consumer keeps the single-shard
protocol (its shard's consumer group, pending entries, XAUTOCLAIM, its shard's apply lock), so
two processes given overlapping shards share those shards' entries like two consumers of one
stream. Threads share one interpreter: for more CPU, run one process per shard (or per range).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from metricsmith.config import Settings, load_settings
from metricsmith.realtime.stream import ConsumeStats, StreamConsumer


class ShardedConsumer:
    """One consumer per shard in ``shards``; ``name`` is shared (a consumer name per group)."""

    def __init__(self, settings: Settings | None = None, *, shards: list[int], **consumer_args: Any) -> None:
        self.settings = settings or load_settings()
        self.consumers = [StreamConsumer(self.settings, shard=shard, **consumer_args) for shard in shards]
        self.name = self.consumers[0].name
        self.group = self.consumers[0].group
        self.streams = [c.stream for c in self.consumers]

    def stop(self, *_: Any) -> None:
        for consumer in self.consumers:
            consumer.stop()

    def close(self) -> None:
        for consumer in self.consumers:
            consumer.close()

    def run(self, *, until_idle: bool = False, max_entries: int | None = None,
            progress: Callable[[ConsumeStats], None] | None = None, max_retries: int | None = None) -> ConsumeStats:
        """Run every shard's consumer until stopped (or drained with ``until_idle``); the summed stats.

        The first error of any shard stops them all and is raised here."""
        if len(self.consumers) == 1:
            return self.consumers[0].run(until_idle=until_idle, max_entries=max_entries, progress=progress,
                                         max_retries=max_retries)
        results: list[ConsumeStats] = []
        errors: list[BaseException] = []
        lock = threading.Lock()

        def work(consumer: StreamConsumer) -> None:
            try:
                stats = consumer.run(until_idle=until_idle, max_entries=max_entries, max_retries=max_retries)
                with lock:
                    results.append(stats)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller below
                with lock:
                    errors.append(exc)
                self.stop()

        threads = [threading.Thread(target=work, args=(c,), name=f"ms-shard-{c.shard}", daemon=True)
                   for c in self.consumers]
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():
                thread.join(timeout=0.2)
        if errors:
            raise errors[0]
        total = ConsumeStats()
        for stats in results:
            total.add(stats)
        total.seconds = max((s.seconds for s in results), default=0.0)
        if progress is not None:
            progress(total)
        return total
