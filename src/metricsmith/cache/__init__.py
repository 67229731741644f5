"""Two-tier metric cache (L1 in-process, L2 Redis) with invalidation, warming and statistics.

Python callers normally use :class:`metricsmith.query.MetricsQueryService`; this package is
the machinery under it. See ``docs/cache.md``.
"""

from metricsmith.cache.config import CacheConfig, load_cache_config
from metricsmith.cache.core import InvalidationResult, TwoTierCache, cache_metric_families, get_cache
from metricsmith.cache.periods import Tier, expand_changes, tier_for_period, tier_for_range, ttl_for
from metricsmith.cache.stats import (
    StatsSnapshot,
    prometheus_families,
    render_prometheus,
)

__all__ = [
    "CacheConfig",
    "InvalidationResult",
    "StatsSnapshot",
    "Tier",
    "TwoTierCache",
    "cache_metric_families",
    "expand_changes",
    "get_cache",
    "load_cache_config",
    "prometheus_families",
    "render_prometheus",
    "tier_for_period",
    "tier_for_range",
    "ttl_for",
]
