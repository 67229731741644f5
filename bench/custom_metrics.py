"""Bench: each custom metric type's generated model vs hand-written SQL for the same result.

Usage: .venv/bin/python bench/custom_metrics.py [--days 120] [--events-per-day 8000]

Creates its own database ``cm_bench_<pid>`` on the configured server (dropped at the end),
generates events, builds stg_events, defines one metric per type (weekly, by organization,
filtered) in a private copy of the dbt project, runs them once through dbt, then times the
SQL dbt compiled for each generated model against a hand-written query, both as
``create temp table ... as`` in the same connection, alternating, best of N. Prints one ratio
per type (generated / hand-written; goal <= 1.2).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg

HAND: dict[str, str] = {
    "COUNT": "count(*)",
    "SUM": "sum(revenue_cents)",
    "AVERAGE": "avg(revenue_cents)",
    "DISTINCT_COUNT": "count(distinct user_id)",
    "PERCENTILE": "percentile_cont(0.9) within group (order by revenue_cents)",
    "RATIO": "sum(case when event_type = 'purchase' then revenue_cents else 0 end)::numeric"
             " / nullif(count(distinct user_id), 0)",
    "MAX": "max(revenue_cents)",
    "MIN": "min(revenue_cents)",
}


def spec(kind: str) -> dict[str, Any]:
    s: dict[str, Any] = {"name": f"bench {kind}", "slug": f"bench_{kind.lower()}", "type": kind, "source": "events",
                         "grain": "week", "dimensions": ["organization_id"], "filter": "event_type <> 'logout'",
                         "visibility": "PUBLIC"}
    if kind == "RATIO":
        s["numerator"] = {"type": "SUM", "expression": "revenue_cents", "filter": "event_type = 'purchase'"}
        s["denominator"] = {"type": "DISTINCT_COUNT", "expression": "user_id"}
    elif kind == "DISTINCT_COUNT":
        s["expression"] = "user_id"
    elif kind != "COUNT":
        s["expression"] = "revenue_cents"
    if kind == "PERCENTILE":
        s["percentile"] = 0.9
    return s


def hand_sql(kind: str) -> str:
    return (f"select date_trunc('week', event_date)::date as period_start, organization_id, {HAND[kind]} as value"
            " from analytics.stg_events where event_type <> 'logout' group by 1, 2")


def timed(conn: psycopg.Connection[Any], sql: str) -> float:
    conn.execute("drop table if exists bench_out")
    t0 = time.perf_counter()
    conn.execute("create temp table bench_out as " + sql)  # noqa: S608 - bench SQL
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--days", type=int, default=120)
    ap.add_argument("--events-per-day", type=int, default=8000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    for k, v in {"DBT_SEND_ANONYMOUS_USAGE_STATS": "false", "DO_NOT_TRACK": "1"}.items():
        os.environ.setdefault(k, v)
    from metricsmith import db, generator, migrate

    server = db.database_url()
    name = f"cm_bench_{os.getpid()}"
    admin = urlunsplit(urlsplit(server)._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'create database "{name}"')
    url = urlunsplit(urlsplit(server)._replace(path=f"/{name}"))
    os.environ["METRICSMITH_DATABASE_URL"] = url
    tmp = Path(tempfile.mkdtemp(prefix="cm_bench_"))
    os.environ["DBT_TARGET_PATH"] = str(tmp / "target")
    os.environ["DBT_LOG_PATH"] = str(tmp / "logs")
    try:
        from metricsmith.custom_metrics import CustomMetricsService
        from metricsmith.custom_metrics.project import copy_project

        migrate.upgrade()
        t0 = time.perf_counter()
        res = generator.generate_to_db(days=args.days, events_per_day=args.events_per_day, seed=5,
                                       start=date(2025, 1, 6))
        print(f"data: {res.render()} ({time.perf_counter() - t0:.1f} s)")
        svc = CustomMetricsService(project_dir=copy_project(tmp / "project"), cost_budget=1e12)
        svc.run_dbt(["run", "--select", "stg_events"])
        svc.add_user("bench", "bench_org")
        for kind in HAND:
            svc.create("bench", spec(kind))
        run = svc.run(full_refresh=True)
        node_times = {r.node.name: r.execution_time for r in run.results}
        compiled_dir = svc.target_path / "compiled" / "metricsmith" / svc.generated_dir.relative_to(svc.project_dir)
        print(f"{'type':<16} {'generated s':>12} {'hand s':>9} {'ratio':>7} {'dbt node s':>11}")
        worst = 0.0
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("analyze raw.events")
            for kind in HAND:
                model = f"cm_bench_{kind.lower()}__v1"
                generated = (compiled_dir / f"{model}.sql").read_text()
                g = h = float("inf")
                for _ in range(args.repeat):
                    g = min(g, timed(conn, generated))
                    h = min(h, timed(conn, hand_sql(kind)))
                ratio = g / h
                worst = max(worst, ratio)
                print(f"{kind:<16} {g:>12.3f} {h:>9.3f} {ratio:>7.2f} {node_times.get(model, 0.0):>11.3f}")
        print(f"worst ratio {worst:.2f} (goal <= 1.2)")
        return 0
    finally:
        with psycopg.connect(admin, autocommit=True) as c:
            c.execute(f'drop database if exists "{name}" with (force)')


if __name__ == "__main__":
    sys.exit(main())
