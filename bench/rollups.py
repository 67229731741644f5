"""Rollups bench: P1 full rebuild vs the scan floor, P2 incremental cost vs history.

    python bench/rollups.py [--events-per-day 13700] [--days 365]

Creates and drops its own databases on the configured server (embedded by default):

* history: ``--days`` days + one new day from the generator (~5 M events for the defaults);
* scan floor: ``select day, count(*), sum(revenue_cents) ... group by day`` over the same
  events in the same database (best of 3);
* P1: ``--full-refresh`` of every rollup model, from the first model's start to the last
  model's end (dbt's start-up and parse printed on their own line, not counted) / floor;
* P2: the new day arrives (received now) on top of 30 vs ``--days`` days of history, one
  incremental run each (median of 3 runs, model time): ratio target <= 1.3.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import date, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import bench_database, server_label  # noqa: E402
from metricsmith import db, generator, rollups  # noqa: E402

TZ = "UTC"


def _floor(conn: object) -> float:
    times = []
    for _ in range(3):
        started = time.perf_counter()
        conn.execute(  # type: ignore[attr-defined]
            f"select (occurred_at at time zone '{TZ}')::date as day, count(*), sum(revenue_cents) "
            "from raw.events group by 1").fetchall()
        times.append(time.perf_counter() - started)
    return min(times)


def _model_seconds(result: rollups.RollupRunResult) -> float:
    return result.models_seconds


def _hold_back_day(conn: object, day: date) -> None:
    """Move the new day's events aside (they 'arrive' later)."""
    conn.execute("create table if not exists public.new_day (like raw.events)")  # type: ignore[attr-defined]
    conn.execute("truncate public.new_day")  # type: ignore[attr-defined]
    conn.execute(  # type: ignore[attr-defined]
        "with moved as (delete from raw.events where occurred_at >= %s returning *) "
        "insert into public.new_day select * from moved", (day,))


def _arrive(conn: object) -> int:
    cur = conn.execute(  # type: ignore[attr-defined]
        "insert into raw.events select event_id, occurred_at, now(), event_type, user_id, organization_id, "
        "session_id, revenue_cents, properties from public.new_day")
    return int(cur.rowcount)


def _incremental(conn: object, new_day: date) -> tuple[float, float, int]:
    _hold_back_day(conn, new_day)
    conn.execute("vacuum analyze raw.events")  # type: ignore[attr-defined]
    rollups.run_rollups(full_refresh=True, timezone=TZ, quiet=True)
    arrived = _arrive(conn)
    conn.execute("analyze raw.events")  # type: ignore[attr-defined]
    model, wall = [], []
    for _ in range(3):
        result = rollups.run_rollups(timezone=TZ, quiet=True)
        model.append(_model_seconds(result))
        wall.append(result.seconds)
    return statistics.median(model), statistics.median(wall), arrived


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--events-per-day", type=int, default=13_700)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    start = date(2025, 1, 1)
    new_day = start + timedelta(days=args.days)
    print(f"server: {server_label()}; {args.days} days + 1 new day from {start}, ~{args.events_per_day:,} events/day")

    with bench_database("bench_rollups_long") as _url, db.connect(autocommit=True) as conn:
        gen = generator.generate_to_db(days=args.days + 1, events_per_day=args.events_per_day, seed=args.seed,
                                       start=start, progress=True)
        print(gen.render())
        conn.execute("vacuum analyze raw.events")
        users = conn.execute("select count(distinct user_id) from raw.events where occurred_at < %s",
                             (new_day,)).fetchone()
        print(f"distinct users in the first {args.days} days: {users[0] if users else 0:,}")
        floor = _floor(conn)
        print(f"scan floor (group by day, best of 3):            {floor:6.2f} s")
        # models only: from the first model's start to the last model's end (dbt's timing);
        # the rest of the invocation is dbt's start-up, parse and result handling
        p1 = rollups.run_rollups(full_refresh=True, timezone=TZ, quiet=True)
        p1_model = p1.models_seconds
        startup = p1.seconds - p1_model
        print(f"P1 full rebuild of all rollup models:            {p1_model:6.2f} s   "
              f"({', '.join(f'{k} {v:.1f}' for k, v in sorted(p1.dbt_seconds.items(), key=lambda kv: -kv[1])[:4])})")
        print(f"   dbt start-up (not counted):                    {startup:6.2f} s")
        print(f"P1 ratio full rebuild / scan floor:              {p1_model / floor:6.1f}x   (target <= 10x)")
        long_model, long_wall, arrived = _incremental(conn, new_day)

    with bench_database("bench_rollups_short") as _url, db.connect(autocommit=True) as conn:
        generator.generate_to_db(days=args.days + 1, events_per_day=args.events_per_day, seed=args.seed, start=start)
        conn.execute("delete from raw.events where occurred_at < %s", (new_day - timedelta(days=30),))
        short_model, short_wall, _ = _incremental(conn, new_day)

    print(f"P2 new day ({arrived:,} events) on 30 days of history:   {short_model:6.2f} s models, {short_wall:6.2f} s wall")
    print(f"P2 new day on {args.days} days of history:                   {long_model:6.2f} s models, {long_wall:6.2f} s wall")
    print(f"P2 ratio {args.days} / 30 days of history:                  {long_model / short_model:6.2f}    "
          f"(wall {long_wall / short_wall:.2f}; target <= 1.3)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
