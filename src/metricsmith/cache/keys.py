"""The cache's Redis key layout, built in one place (every name lives under ``<prefix>cache:``)."""

from __future__ import annotations


class CacheKeys:
    """Names of the cache's Redis keys and channel for one Redis prefix.

    ``channel`` carries the L1 purges; ``gen`` is bumped by every invalidation (the
    compare-and-set of a store); ``fence`` is the highest record of
    ``metricsmith.cache_invalidations`` this Redis applied; ``stats`` is the fleet-wide
    statistics hash. Values, tag sets, compute locks and ack counters are named per key.
    """

    __slots__ = ("channel", "fence", "gen", "root", "stats")

    def __init__(self, prefix: str) -> None:
        self.root = root = f"{prefix}cache:"
        self.channel, self.gen, self.fence, self.stats = (root + n for n in ("invalidate", "gen", "fence", "stats"))

    def value(self, key: str) -> str:
        return f"{self.root}v:{key}"

    def tag(self, tag: str) -> str:
        return f"{self.root}tag:{tag}"

    def lock(self, key: str) -> str:
        """The cross-process compute lock of ``key``."""
        return f"{self.root}lock:{key}"

    def ack(self, message_id: str) -> str:
        """Counter of the processes that confirmed one invalidation message."""
        return f"{self.root}ack:{message_id}"
