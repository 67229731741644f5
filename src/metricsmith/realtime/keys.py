"""The realtime Redis key layout: every key name is built here, nowhere else (not in Lua either).

Every key starts with ``base = settings.redis_prefix + "rt:"``. ``{name}`` is a metric name,
``{labels}`` a label key (label values joined by ``\\x1f``; ``""`` when unlabelled), ``{day}``
a reporting-time-zone date ``YYYY-MM-DD``, ``{window}`` a rate window in seconds.

=================================  ======  ================================================  ==================
key                                type    written by                                        TTL
=================================  ======  ================================================  ==================
``{base}registry``                 hash    ``declare`` (field = metric name, value = spec)   none
``{base}alive``                    string  ``declare``, ``restore``                          none
``{base}stream``                   stream  ``track``/``track_many`` (XADD); consumer XDEL    none (trimmed)
``{base}lock``                     string  the apply lock (consumer, reconcile, restore)     lock TTL
``{base}c:{name}``                 hash    ``increment_counter``, ``apply.lua``, reconcile   none
``{base}g:{name}``                 hash    ``set_gauge``/``inc_gauge``, ``apply.lua``,       none
                                           reconcile
``{base}h:{name}:{labels}``        hash    ``observe_histogram``, ``apply.lua``, reconcile   none
``{base}hidx:{name}``              set     ``observe_histogram``, ``apply.lua``, reconcile   none
``{base}r:{name}:{window}:{labels}`` hash  ``mark.lua``, ``apply.lua``                       none (old buckets
                                                                                             dropped on write)
``{base}ridx:{name}``              set     ``mark``, ``apply.lua``                           none
``{base}seen:{day}``               set     ``apply.lua`` (event ids counted that day)        retention days
``{base}users:{day}``              set     ``apply.lua``, reconcile                          retention days
=================================  ======  ================================================  ==================

Keys a script touches together (every one of them is passed in ``KEYS``, see :func:`apply_keys`
and :meth:`Keys.rate`):

- ``apply.lua`` (one stream batch): ``c:metricsmith_events_total``, ``c:metricsmith_revenue_cents_total``,
  ``g:metricsmith_active_users``, ``hidx:metricsmith_purchase_value_cents``,
  ``ridx:metricsmith_events_per_second``, ``r:metricsmith_events_per_second:{window}:`` for every
  window, and for every day in the batch ``seen:{day}``, ``users:{day}``,
  ``h:metricsmith_purchase_value_cents:{day}``.
- ``mark.lua`` (one ``mark()``): ``r:{name}:{window}:{labels}`` for every window of the metric.
- transactions: ``observe_histogram`` (``h:`` + ``hidx:``), reconciliation (every series of a day).

Stream shards (``METRICSMITH_STREAM_SHARDS=N``, :mod:`metricsmith.realtime.shards`): shard ``k``
is its own stream with its own consumer group and its own apply lock. Shard 0 keeps the names
above (``stream``, ``lock``); shard ``k > 0`` is ``{base}stream:{k}`` / ``{base}lock:{k}``.
``{base}shards`` (string) records the shard count the streams were written with.

**Redis Cluster** (``Keys(prefix, tagged=True)``, chosen by ``Settings.redis_cluster``): a
Lua script, a MULTI/EXEC and a multi-key command must touch ONE hash slot, so the names carry
hash tags, and only the part in ``{...}`` decides the slot:

=====================================  =====================================================
names                                  slot (hash tag)
=====================================  =====================================================
every metric key above, ``registry``,  ``{<prefix>rt}`` - one slot: one stream batch updates
``alive``, ``shards``                  counters, gauges, histograms, rates and the per-day
                                       ``seen`` sets in ONE atomic script (that is what makes
                                       the effect exactly-once), and the counters are hashes
                                       spanning days, so they cannot be split by day
``{<prefix>rt:s<k>}:stream``,          ``{<prefix>rt:s<k>}`` - one slot per stream shard, so
``{<prefix>rt:s<k>}:lock``             the shards (XADD, XREADGROUP, XACK) spread over the
                                       masters; every stream command touches one stream
=====================================  =====================================================

So on a cluster the metric state lives on one master (its Lua applies are short; the work that
scales with consumers - parsing, validation, the PostgreSQL COPY - happens outside Redis) and the
streams spread over all of them. Standalone Redis keeps the untagged names above (data written
before the cluster work is found unchanged).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from metricsmith.config import Settings
from metricsmith.core.redis_names import namespace_root

BASE = "rt:"


@dataclass(frozen=True)
class Keys:
    """Redis key names of one realtime namespace (``prefix + "rt:"``; hash-tagged on a cluster)."""

    prefix: str
    tagged: bool = False

    @classmethod
    def of(cls, settings: Settings) -> Keys:
        """The layout of ``settings``: hash-tagged when Redis is a cluster."""
        return cls(settings.redis_prefix, tagged=settings.redis_cluster)

    @property
    def base(self) -> str:
        return namespace_root(self.prefix, BASE.rstrip(":"), tagged=self.tagged)

    def stream_shard(self, shard: int) -> str:
        """The stream of shard ``shard`` (shard 0 of an untagged layout is the historical ``stream``)."""
        if self.tagged:
            return "{" + f"{self.prefix}rt:s{shard}" + "}:stream"
        return self.base + ("stream" if shard == 0 else f"stream:{shard}")

    def shard_lock(self, shard: int) -> str:
        """The apply lock of shard ``shard`` (in the shard's slot on a cluster)."""
        if self.tagged:
            return "{" + f"{self.prefix}rt:s{shard}" + "}:lock"
        return self.base + ("lock" if shard == 0 else f"lock:{shard}")

    @property
    def shards(self) -> str:
        return self.base + "shards"

    @property
    def registry(self) -> str:
        return self.base + "registry"

    @property
    def stream(self) -> str:
        return self.stream_shard(0)

    @property
    def lock(self) -> str:
        return self.shard_lock(0)

    @property
    def alive(self) -> str:
        return self.base + "alive"

    def counter(self, name: str) -> str:
        return f"{self.base}c:{name}"

    def gauge(self, name: str) -> str:
        return f"{self.base}g:{name}"

    def histogram(self, name: str, label_key: str) -> str:
        return f"{self.base}h:{name}:{label_key}"

    def histogram_index(self, name: str) -> str:
        return f"{self.base}hidx:{name}"

    def rate(self, name: str, window: int, label_key: str) -> str:
        return f"{self.base}r:{name}:{window}:{label_key}"

    def rate_index(self, name: str) -> str:
        return f"{self.base}ridx:{name}"

    def seen(self, day: str) -> str:
        return f"{self.base}seen:{day}"

    def users(self, day: str) -> str:
        return f"{self.base}users:{day}"


#: how many fixed keys come before the per-window and per-day keys of :func:`apply_keys`
APPLY_FIXED_KEYS = 5
#: keys per day in :func:`apply_keys`: seen, users, purchase histogram
APPLY_KEYS_PER_DAY = 3


def apply_keys(keys: Keys, *, events_total: str, revenue_total: str, active_users: str, purchase_value: str,
               events_rate: str, windows: Sequence[int], days: Iterable[str]) -> list[str]:
    """``KEYS`` of ``apply.lua``, in the order the script reads them.

    ``KEYS[1..5]``: events counter, revenue counter, active-users gauge, purchase histogram index,
    events-rate index; then one rate hash per window (unlabelled); then per day (in the order of
    the ``days`` ARGV) its ``seen`` set, ``users`` set and purchase histogram.
    """
    out = [keys.counter(events_total), keys.counter(revenue_total), keys.gauge(active_users),
           keys.histogram_index(purchase_value), keys.rate_index(events_rate)]
    out.extend(keys.rate(events_rate, window, "") for window in windows)
    for day in days:
        out.extend((keys.seen(day), keys.users(day), keys.histogram(purchase_value, day)))
    return out
