"""The cache on the real dbt marts: a rollup run that changes a week, then invalidation, and the
next read in another process returns the new value."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
import pytest

from metricsmith.config import project_root

pytestmark = pytest.mark.skipif(
    not (project_root() / "models" / "marts" / "weekly_metrics.sql").is_file(),
    reason="the rollup marts are not in models/marts yet",
)

CHILD = textwrap.dedent(
    """
    import sys
    from datetime import date
    from metricsmith.cache import TwoTierCache
    from metricsmith.query import MetricsQueryService
    cache = TwoTierCache()
    assert cache.wait_until_listening()
    svc = MetricsQueryService(cache=cache, today=date(2030, 1, 1))
    day = date.fromisoformat(sys.argv[1])
    for line in sys.stdin:
        week = svc.get_weekly_metrics(day, day)[0]
        print(week.total_events, week.revenue_cents, flush=True)
    """
)


def test_rollup_run_then_invalidation_reaches_another_process(empty_events: psycopg.Connection[Any]) -> None:
    from metricsmith import generator, rollups
    from metricsmith.cache import get_cache
    from metricsmith.cache.invalidation import invalidate_changes

    conn = empty_events
    generator.generate_to_db(days=21, events_per_day=150, seed=3, start=date(2024, 3, 4))
    rollups.run_rollups(full_refresh=True)
    get_cache().clear()
    day = date(2024, 3, 13)
    week = day - timedelta(days=day.weekday())

    def python_week() -> tuple[int, int]:
        rows = conn.execute(
            "select occurred_at, revenue_cents from raw.events where occurred_at >= %s and occurred_at < %s "
            "and event_type <> '' and revenue_cents >= 0 and occurred_at <= received_at + interval '1 day'",
            (datetime(week.year, week.month, week.day, tzinfo=UTC),
             datetime(week.year, week.month, week.day, tzinfo=UTC) + timedelta(days=7)),
        ).fetchall()
        return len(rows), sum(r[1] for r in rows)

    child = subprocess.Popen([sys.executable, "-c", CHILD, day.isoformat()], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    assert child.stdin is not None and child.stdout is not None

    def ask() -> tuple[int, int]:
        child.stdin.write("read\n")  # type: ignore[union-attr]
        child.stdin.flush()  # type: ignore[union-attr]
        events, revenue = child.stdout.readline().split()  # type: ignore[union-attr]
        return int(events), int(revenue)

    try:
        before = ask()
        assert before == python_week()
        # late events for a day of that week arrive and the incremental rollup runs
        late = [(uuid.uuid4(), datetime(2024, 3, 13, 12, i, tzinfo=UTC), "purchase", f"late-user-{i}", 1000 + i)
                for i in range(25)]
        with conn.cursor() as cur, cur.copy(
            "copy raw.events (event_id, occurred_at, event_type, user_id, revenue_cents) from stdin"
        ) as copy:
            for row in late:
                copy.write_row(row)
        result = rollups.run_rollups()
        assert day in result.changed.days and week in result.changed.weeks
        assert ask() == before  # the other process still serves its cached (now stale) week ...
        inv = invalidate_changes(result.changed)
        assert inv.ok and inv.processes_confirmed >= 2
        after = ask()  # ... and the next read after the invalidation is the new value
        assert after == (before[0] + 25, before[1] + sum(r[4] for r in late))
        assert after == python_week()
    finally:
        child.stdin.close()
        child.wait(timeout=20)
