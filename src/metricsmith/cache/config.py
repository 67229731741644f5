"""Cache settings: TTL tiers, L1 size, lock and early-refresh tuning (all from the environment)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from metricsmith.config import ConfigError, env_flag

ENV_PREFIX = "METRICSMITH_CACHE_"


@dataclass(frozen=True)
class CacheConfig:
    """How the two-tier cache behaves. Every field has a ``METRICSMITH_CACHE_<FIELD>`` variable."""

    #: seconds a realtime value lives
    ttl_realtime: float = 60.0
    #: seconds a value that touches the current (open) day / week / month lives
    ttl_open: float = 300.0
    #: seconds a value made only of closed periods lives
    ttl_closed: float = 3600.0
    #: most entries held in each process's L1
    l1_maxsize: int = 4096
    #: milliseconds the cross-process compute lock is held at most
    lock_ms: int = 5000
    #: XFetch beta: > 1 refreshes earlier, 0 disables early refresh
    xfetch_beta: float = 1.0
    #: seconds between two attempts to reach Redis once it failed (circuit breaker)
    retry_after: float = 1.0
    #: seconds a Redis command may take before the cache treats Redis as down
    redis_timeout: float = 0.5
    #: seconds ``invalidate`` waits for every live process to confirm its L1 is purged
    ack_timeout: float = 5.0
    #: seconds between two flushes of this process's statistics into Redis
    stats_flush_every: float = 1.0
    #: seconds a process trusts L1/L2 after checking the invalidation fence in PostgreSQL;
    #: an invalidation that could not reach Redis stops every reader within this time
    fence_lease: float = 1.0
    #: False turns the cache off (every read goes to Postgres)
    enabled: bool = True
    #: False skips L1 (every hit is an L2 hit): for memory-tight processes and for measuring L2
    l1_enabled: bool = True


_FLOATS = ("ttl_realtime", "ttl_open", "ttl_closed", "xfetch_beta", "retry_after", "redis_timeout",
           "ack_timeout", "stats_flush_every", "fence_lease")
_INTS = ("l1_maxsize", "lock_ms")


def load_cache_config(env: dict[str, str] | None = None) -> CacheConfig:
    """Read ``METRICSMITH_CACHE_*`` (e.g. ``METRICSMITH_CACHE_TTL_CLOSED=7200``); clear errors."""
    source = os.environ if env is None else env
    values: dict[str, object] = {}
    for name in (*_FLOATS, *_INTS, "enabled", "l1_enabled"):
        var = ENV_PREFIX + name.upper()
        raw = source.get(var, "").strip()
        if not raw:
            continue
        if name in ("enabled", "l1_enabled"):
            values[name] = env_flag(var, raw)
            continue
        try:
            number: float = int(raw) if name in _INTS else float(raw)
        except ValueError:
            raise ConfigError(f"{var}={raw!r} is not a number") from None
        if number < 0 or (name in ("l1_maxsize", "lock_ms", "ttl_realtime", "ttl_open", "ttl_closed", "fence_lease") and number <= 0):
            raise ConfigError(f"{var}={raw!r} must be positive")
        values[name] = number
    return CacheConfig(**values)  # type: ignore[arg-type]
