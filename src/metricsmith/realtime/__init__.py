"""Realtime metrics on Redis: direct API, event stream ingest, persistence, reconciliation, exposition.

Python callers::

    from metricsmith.realtime import RealtimeMetricsService, track, track_many
    svc = RealtimeMetricsService()
    svc.declare_counter("api:calls", "API calls")
    svc.increment_counter("api:calls", 1)
    track({"event_type": "purchase", "occurred_at": "...", "user_id": "u1", "revenue_cents": 1999})

See docs/realtime.md.
"""

from __future__ import annotations

from metricsmith.realtime.registry import MetricSpec, MetricType, RealtimeMetricError
from metricsmith.realtime.service import HistogramValue, RealtimeMetricsService
from metricsmith.realtime.stream import ConsumeStats, StreamConsumer, track, track_many

__all__ = [
    "ConsumeStats",
    "HistogramValue",
    "MetricSpec",
    "MetricType",
    "RealtimeMetricError",
    "RealtimeMetricsService",
    "StreamConsumer",
    "track",
    "track_many",
]
