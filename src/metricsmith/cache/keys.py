"""The cache's Redis key layout, built in one place (every name lives under ``<prefix>cache:``).

On a Redis Cluster (``CacheKeys(prefix, tagged=True)``) the root is the hash tag
``{<prefix>cache}:``, so every cache key - values, tag sets, the generation, the fence, the
stats hash, compute locks, ack counters - and the invalidation channel (sharded pub/sub) share
ONE slot. They must: the store script compares the generation and registers the value in its
tag sets atomically, and an invalidation bumps the generation, deletes the tagged values and
moves the fence in one MULTI/EXEC; both would fail with CROSSSLOT across slots. A standalone
Redis keeps the untagged names.
"""

from __future__ import annotations


class CacheKeys:
    """Names of the cache's Redis keys and channel for one Redis prefix.

    ``channel`` carries the L1 purges; ``gen`` is bumped by every invalidation (the
    compare-and-set of a store); ``fence`` is the highest record of
    ``metricsmith.cache_invalidations`` this Redis applied; ``stats`` is the fleet-wide
    statistics hash. Values, tag sets, compute locks and ack counters are named per key.
    """

    __slots__ = ("channel", "fence", "gen", "root", "stats", "tagged")

    def __init__(self, prefix: str, tagged: bool = False) -> None:
        self.tagged = tagged
        self.root = root = "{" + prefix + "cache}:" if tagged else f"{prefix}cache:"
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
