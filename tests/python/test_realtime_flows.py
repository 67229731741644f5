"""The realtime Prefect flows run for real (session-wide prefect_test_harness from conftest)."""

from __future__ import annotations

import importlib.util
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
import pytest
from _realtime_events import make_events, private_settings

from metricsmith.config import load_settings
from metricsmith.realtime import RealtimeMetricsService, StreamConsumer, track_many
from metricsmith.realtime.registry import EVENTS_TOTAL, LABEL_SEP

FLOWS = Path(__file__).resolve().parents[2] / "flows"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_flows_{name}", FLOWS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_snapshot_and_reconciliation_flows(prefect_harness: None, empty_events: psycopg.Connection[Any],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # a prefix of its own, as the flows see it (load_settings): no counters of earlier tests of today
    monkeypatch.setenv("METRICSMITH_REDIS_PREFIX", private_settings().redis_prefix)
    settings = load_settings()
    track_many(make_events(500, seed=31), settings=settings)
    consumer = StreamConsumer(settings, log=lambda _: None)
    consumer.run(until_idle=True)
    consumer.close()

    text = _load("realtime_snapshot").realtime_snapshot()
    assert "series -> metricsmith.realtime_metrics_cache" in text
    rows = empty_events.execute("select count(*) from metricsmith.realtime_metrics_cache "
                                "where metric = 'metricsmith_events_total'").fetchone()
    assert rows is not None and rows[0] > 0

    svc = RealtimeMetricsService(settings)
    today = datetime.now(settings.tz).date().isoformat()
    svc.redis.hincrbyfloat(svc.keys.counter(EVENTS_TOTAL.name), f"{today}{LABEL_SEP}page_view", 4)
    report = _load("realtime_reconciliation").realtime_reconciliation(days=2)
    assert "drift -4" in report
    recorded = empty_events.execute("select drift from metricsmith.realtime_corrections "
                                    "where labels->>'day' = %s and labels->>'event_type' = 'page_view' "
                                    "order by correction_id desc limit 1", (today,)).fetchone()
    assert recorded == (-4.0,)
