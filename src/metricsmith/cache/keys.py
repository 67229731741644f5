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

from metricsmith.core.redis_names import child, namespace_root

#: the fixed names under the root, and the kind of each per-key name (``<root><kind>:<key>``)
FIXED = ("invalidate", "gen", "fence", "stats")
VALUE, TAG, LOCK, ACK = "v", "tag", "lock", "ack"


class CacheKeys:
    """Names of the cache's Redis keys and channel for one Redis prefix.

    ``channel`` carries the L1 purges; ``gen`` is bumped by every invalidation (the
    compare-and-set of a store); ``fence`` is the highest record of
    ``metricsmith.cache_invalidations`` this Redis applied; ``stats`` is the fleet-wide
    statistics hash. Values, tag sets, compute locks and ack counters are named per key
    (``<root><kind>:<key>``, :func:`metricsmith.core.redis_names.child`).
    """

    __slots__ = ("channel", "fence", "gen", "root", "stats", "tagged")

    def __init__(self, prefix: str, tagged: bool = False) -> None:
        self.tagged = tagged
        self.root = root = namespace_root(prefix, "cache", tagged=tagged)
        self.channel, self.gen, self.fence, self.stats = (root + n for n in FIXED)

    def value(self, key: str) -> str:
        return child(self.root, VALUE, key)

    def tag(self, tag: str) -> str:
        """The set of the value keys that carry ``tag``."""
        return child(self.root, TAG, tag)

    def lock(self, key: str) -> str:
        """The cross-process compute lock of ``key``."""
        return child(self.root, LOCK, key)

    def ack(self, message_id: str) -> str:
        """Counter of the processes that confirmed one invalidation message."""
        return child(self.root, ACK, message_id)
