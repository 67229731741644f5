"""Rollups bench: P1 full rebuild vs the scan floor and vs naive SQL, P2 incremental cost vs history.

    python bench/rollups.py [--events-per-day 13700] [--days 365] [--skip-p2]

Creates and drops its own databases on the configured server (embedded by default):

* history: ``--days`` days + one new day from the generator (~5 M events for the defaults);
* scan floor: ``select day, count(*), sum(revenue_cents) ... group by day`` over the same
  events in the same database (best of 3);
* P1: ``--full-refresh`` of every rollup model, from the first model's start to the last
  model's end (dbt's start-up and parse printed on their own line, not counted) / floor;
* P1 floor: the unavoidable part of the rebuild measured alone in the same run: the three
  per-key sorts (user_id, organization_id, session_id ``collate "C"``, then the day) of the
  valid events, each a count over the sorted subquery of ``stg_events`` with the models'
  work_mem, jit off and parallel costs 0 (organizations de-duplicate (day, key) first, like their
  model), the first day per user (``int_user_first_seen``'s aggregate), and the ``stg_events``
  scan alone; as ratios to the scan floor, so the note shows whether <= 10x is reachable. Each
  sort is counted with its own parallel scan: one scan feeding three sorts is a CTE, and CTE
  scans are parallel restricted (the leader only: PostgreSQL manual, "Parallel Safety"), so "one
  shared scan" is printed for orientation only;
* P1b ceiling: naive / P1 floor, the best P1b a rebuild doing only the unavoidable work reaches;
* P1b: the naive reference, one ``count(distinct ...)`` query per grain (day, week, month,
  quarter; and the week parts of months), same work_mem, no JIT, sequential, in the same run:
  target naive / P1 >= 3;
* P2: the new day arrives (received now) on top of 30 vs ``--days`` days of history, one
  incremental run each (the day arrives again before each of 3 runs: median model time), with no
  watermark safety lag (``NIGHTLY``: the history of a nightly run was loaded long before it):
  ratio target <= 1.1.

The load average (``uptime``) is printed before and after: the machine may be shared.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import bench_database, server_label  # noqa: E402
from metricsmith import db, generator, grains, rollups  # noqa: E402
from metricsmith.core.schema import marts_schema  # noqa: E402

TZ = "UTC"
P1_TARGET, P1B_TARGET, P2_TARGET = 10.0, 3.0, 1.1


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} ({os.cpu_count()} cores)"


def _period_sql(g: grains.Grain, day: str) -> str:
    """The first day of the grain's period holding ``day``, written directly (not the macros)."""
    if g.unit == "day":
        return day
    if g.unit == "week":
        return f"date_trunc('week', {day})::date"
    return (f"make_date(extract(year from {day})::int, "
            f"(extract(month from {day})::int - 1) / {g.count} * {g.count} + 1, 1)")


def naive_queries() -> dict[str, str]:
    """The hand-written reference: per grain, every measure with count(distinct) over stg_events."""
    schema = marts_schema()
    out = {}
    for g in grains.load():
        period = _period_sql(g, "event_date")
        out[g.name] = (
            f"select {period} as period_start, count(*), count(distinct user_id), "
            "count(distinct organization_id), count(distinct session_id), sum(revenue_cents), "
            "sum(case when event_type = 'signup' then 1 else 0 end), "
            "sum(case when event_type = 'purchase' then 1 else 0 end) "
            f"from {schema}.stg_events group by 1")
        breakdown = grains.get(g.breakdown) if g.breakdown is not None else None
        if breakdown is not None and breakdown.unit != g.unit:  # weeks straddle months: their parts
            part = _period_sql(breakdown, "event_date")
            out[f"{g.breakdown} parts of {g.name}"] = (
                f"select {period}, greatest({period}, {part}), count(*), count(distinct user_id), "
                f"sum(revenue_cents) from {schema}.stg_events group by 1, 2")
    return out


def _naive(conn: object) -> dict[str, float]:
    conn.execute("set work_mem = '1GB'")  # type: ignore[attr-defined]
    conn.execute("set jit = off")  # type: ignore[attr-defined]
    times = {}
    for name, query in naive_queries().items():
        started = time.perf_counter()
        conn.execute(query).fetchall()  # type: ignore[attr-defined]
        times[name] = time.perf_counter() - started
    conn.execute("reset work_mem")  # type: ignore[attr-defined]
    conn.execute("reset jit")  # type: ignore[attr-defined]
    return times


#: the models' statement settings (macros: rollup_session_tuning, rollup_parallel_tuning)
MODEL_SETTINGS = {"work_mem": "1GB", "jit": "off", "parallel_setup_cost": "0", "parallel_tuple_cost": "0"}
#: key column -> de-duplicate (day, key) before the sort (as the key's day-activity model does)
SORT_KEYS = {"user_id": False, "organization_id": True, "session_id": False}


SCAN, FIRST_DAY = "stg_events scan alone", "first day per user"


def sort_floor_queries() -> dict[str, str]:
    """What each output of the rebuild needs, alone: per key, the sort its day-activity model
    cannot avoid (a count over the sorted (key collate "C", day) rows of stg_events); the first
    day per user (int_user_first_seen's aggregate: one row per user, new_users); and the
    stg_events scan that feeds them."""
    schema = marts_schema()
    out = {SCAN: f"select count(*), max(event_date) from {schema}.stg_events"}
    for key, dedupe in SORT_KEYS.items():
        rows = (f"select distinct event_date, {key} from {schema}.stg_events where {key} is not null" if dedupe
                else f"select event_date, {key} from {schema}.stg_events where {key} is not null")
        out[key] = (f"select count(*) from (select {key} collate \"C\" as k, event_date from ({rows}) as r "
                    "order by 1, 2 offset 0) as sorted")
    out[FIRST_DAY] = (f"select count(*) from (select user_id, min(occurred_at) from {schema}.stg_events "
                      "where user_id is not null group by user_id) as firsts")
    return out


def _node(plan: dict[str, Any]) -> str:
    name = {"Hashed": "HashAggregate", "Sorted": "GroupAggregate"}.get(plan.get("Strategy", ""), plan["Node Type"])
    mode = plan.get("Partial Mode", "Simple")
    parallel = "Parallel " if plan.get("Parallel Aware") else ""
    workers = f" ({plan['Workers Planned']} workers)" if "Workers Planned" in plan else ""
    return f"{'' if mode == 'Simple' else mode + ' '}{parallel}{name}{workers}"


def _plan_shape(conn: object, query: str) -> str:
    """The plan's node types, outermost first (plain EXPLAIN: nothing runs)."""
    plan = conn.execute(f"explain (format json) {query}").fetchone()[0][0]["Plan"]  # type: ignore[attr-defined]
    nodes = []
    while plan is not None:
        if plan["Node Type"] not in ("Limit", "Subquery Scan"):
            nodes.append(_node(plan))
        children = plan.get("Plans") or []
        plan = children[0] if children else None
    return " > ".join(nodes)


def _sort_floor(conn: object) -> dict[str, float]:
    """Each query of sort_floor_queries, best of 2, with the models' settings for this transaction."""
    times = {}
    for name, query in sort_floor_queries().items():
        best = float("inf")
        for _ in range(2):
            with conn.transaction():  # type: ignore[attr-defined]
                for setting, value in MODEL_SETTINGS.items():
                    conn.execute("select set_config(%s, %s, true)", (setting, value))  # type: ignore[attr-defined]
                if best == float("inf"):
                    print(f"   {name:<24} plan: {_plan_shape(conn, query)}")
                started = time.perf_counter()
                conn.execute(query).fetchall()  # type: ignore[attr-defined]
                best = min(best, time.perf_counter() - started)
        times[name] = best
    return times


def _print_sort_floor(conn: object, floor: float, p1: float) -> float:
    """Print the P1 floor and return it (seconds): the three sorts, each on its own parallel scan,
    and the first day per user, one after another."""
    print("P1 floor: what each output needs, alone (models' work_mem, jit off, parallel costs 0, collate \"C\", "
          "best of 2)")
    times = _sort_floor(conn)
    scan, first_day = times.pop(SCAN), times.pop(FIRST_DAY)
    print(f"   stg_events scan alone (validity filter, day): {scan:6.2f} s   ({scan / floor:.1f}x scan floor)")
    for key, seconds in times.items():
        print(f"   sort by {key:<16} (scan included):    {seconds:6.2f} s   ({seconds / floor:.1f}x scan floor)")
    print(f"   first day per user       (scan included):    {first_day:6.2f} s   ({first_day / floor:.1f}x scan floor)")
    sorts = sum(times.values())
    shared = scan + sum(max(t - scan, 0.0) for t in times.values())
    print(f"   the three sorts on one shared scan:           {shared:6.2f} s   = {shared / floor:5.1f}x scan floor "
          "(not a plan PostgreSQL runs in parallel: one scan read by three sorts is a CTE, and CTE scans run in the "
          "leader only)")
    total = sorts + first_day
    print(f"P1 floor, each sort on its own parallel scan, then the first day per user: {total:6.2f} s   = "
          f"{total / floor:5.1f}x scan floor (P1 is {p1 / total:.2f}x this)")
    verdict = "within" if total / floor <= P1_TARGET else "beyond"
    print(f"P1 floor verdict: the unavoidable work alone is {verdict} the {P1_TARGET:.0f}x target "
          f"({total / floor:.1f}x; the rest of P1 is {(p1 - total) / floor:.1f}x)")
    return total


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


#: P2 is the nightly run: the history was loaded long before it. The bench loads it minutes
#: before, inside the watermark's safety lag (rollups_safety_lag_seconds, 600 s: rows inserted
#: that recently are read again by the next run, for loads still open when a run starts), so
#: with the default every P2 run would re-read the whole freshly generated history. No lag here.
NIGHTLY = {"rollups_safety_lag_seconds": 0}


def _incremental(conn: object, new_day: date) -> tuple[float, float, int]:
    _hold_back_day(conn, new_day)
    conn.execute("vacuum analyze raw.events")  # type: ignore[attr-defined]
    rollups.run_rollups(full_refresh=True, timezone=TZ, quiet=True, extra_vars=NIGHTLY)
    arrived = _arrive(conn)
    conn.execute("analyze raw.events")  # type: ignore[attr-defined]
    model, wall = [], []
    for rep in range(3):
        if rep:  # the same day arrives again (new inserted_at): each run recomputes the same days
            conn.execute("delete from raw.events where occurred_at >= %s", (new_day,))  # type: ignore[attr-defined]
            _arrive(conn)
        result = rollups.run_rollups(timezone=TZ, quiet=True, extra_vars=NIGHTLY)
        model.append(_model_seconds(result))
        wall.append(result.seconds)
    return statistics.median(model), statistics.median(wall), arrived


def _p1(before: float, conn: object) -> tuple[float, float]:
    """The full rebuild, models only (from the first model's start to the last one's end),
    against the floor measured just before and just after it (their geometric mean: the
    machine's speed may drift during the rebuild)."""
    p1 = rollups.run_rollups(full_refresh=True, timezone=TZ, quiet=True)
    after = _floor(conn)
    floor = (before * after) ** 0.5
    startup = p1.seconds - p1.models_seconds
    slowest = sorted(p1.dbt_seconds.items(), key=lambda kv: -kv[1])
    print(f"P1 full rebuild of all rollup models:            {p1.models_seconds:6.2f} s   ({_load()})")
    print("   per model: " + ", ".join(f"{k} {v:.1f}" for k, v in slowest if v >= 0.05))
    print(f"   dbt start-up (not counted):                    {startup:6.2f} s")
    print(f"scan floor right after P1 (best of 3):           {after:6.2f} s")
    print(f"P1 ratio full rebuild / scan floor (geo. mean):  {p1.models_seconds / floor:6.1f}x   "
          f"(target <= {P1_TARGET:.0f}x)")
    return p1.models_seconds, _print_sort_floor(conn, after, p1.models_seconds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--events-per-day", type=int, default=13_700)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--skip-p2", action="store_true", help="P1 and P1b only")
    parser.add_argument("--jit-off", action="store_true",
                        help="alter the bench database set jit = off (what the marts' pre-hook would do)")
    args = parser.parse_args()
    start = date(2025, 1, 1)
    new_day = start + timedelta(days=args.days)
    print(f"server: {server_label()}; {args.days} days + 1 new day from {start}, ~{args.events_per_day:,} events/day")
    print(f"start: {_load()}")

    with bench_database("bench_rollups_long") as _url, db.connect(autocommit=True) as conn:
        gen = generator.generate_to_db(days=args.days + 1, events_per_day=args.events_per_day, seed=args.seed,
                                       start=start, progress=True)
        print(gen.render())
        conn.execute("vacuum analyze raw.events")
        users = conn.execute("select count(distinct user_id) from raw.events where occurred_at < %s",
                             (new_day,)).fetchone()
        print(f"distinct users in the first {args.days} days: {users[0] if users else 0:,}")
        if args.jit_off:
            conn.execute(f'alter database "{conn.info.dbname}" set jit = off')
            print("jit = off for every session of the bench database (--jit-off)")
        version = conn.execute("show server_version").fetchone()
        print(f"PostgreSQL {version[0] if version else '?'}")
        before = _floor(conn)
        print(f"scan floor (group by day, best of 3):            {before:6.2f} s")
        p1, p1_floor = _p1(before, conn)
        naive = _naive(conn)
        naive_total = sum(naive.values())
        print(f"P1b naive count(distinct) SQL, all grains:       {naive_total:6.2f} s   "
              f"({', '.join(f'{k} {v:.1f}' for k, v in naive.items())})")
        print(f"P1b ratio naive / full rebuild:                  {naive_total / p1:6.1f}x   "
              f"(target >= {P1B_TARGET:.0f}x)")
        print(f"P1b ceiling naive / P1 floor:                    {naive_total / p1_floor:6.1f}x   "
              "(the best ratio a rebuild doing only the unavoidable work could reach)")
        print(f"scan floor again (best of 3):                    {_floor(conn):6.2f} s   ({_load()})")
        if args.skip_p2:
            return 0
        long_model, long_wall, arrived = _incremental(conn, new_day)

    with bench_database("bench_rollups_short") as _url, db.connect(autocommit=True) as conn:
        generator.generate_to_db(days=args.days + 1, events_per_day=args.events_per_day, seed=args.seed, start=start)
        conn.execute("delete from raw.events where occurred_at < %s", (new_day - timedelta(days=30),))
        short_model, short_wall, _ = _incremental(conn, new_day)

    print(f"P2 new day ({arrived:,} events) on 30 days of history:   {short_model:6.2f} s models, {short_wall:6.2f} s wall")
    print(f"P2 new day on {args.days} days of history:                   {long_model:6.2f} s models, {long_wall:6.2f} s wall")
    print(f"P2 ratio {args.days} / 30 days of history:                  {long_model / short_model:6.2f}    "
          f"(wall {long_wall / short_wall:.2f}; target <= {P2_TARGET})")
    print(f"end: {_load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
