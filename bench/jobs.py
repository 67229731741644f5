"""Jobs bench (issue 17, P5): ``metricsmith jobs run daily-metrics`` with no Prefect server
against ``metricsmith rollups run`` on the same data: target wall ratio <= 1.5.

    python bench/jobs.py [--days 60] [--events-per-day 200] [--rounds 5] [--batch 500] [--rollups-test]

``--rollups-test`` compares against ``metricsmith rollups run --test`` instead: the same dbt work
as the daily job (``dbt build``: the models' data tests and unit tests too), so the ratio shows
what the job itself adds.

Creates and drops its own database on the configured server (embedded by default); both
commands run as fresh processes with an empty ``METRICSMITH_HOME`` and no ``PREFECT_*``
setting, so no Prefect server is configured or recorded (the daily job then runs its flow's
body directly). Both are built once first (every mart, custom_metric_values). Then each
round runs the pair in alternating order (A B, then B A, ...), and before every command the
same number of events of the newest day arrive (received now), so each run does the same
incremental work: that day's islands, the marts of its periods. Printed: each command's
median wall and CPU time (the process and its children), the median of the per-round ratios
A / B (the pairs are next to each other, so a machine whose speed drifts slows both alike) and
the load average before and after.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import bench_database, server_label  # noqa: E402
from metricsmith import db, generator  # noqa: E402

P5_TARGET = 1.5
DAILY = ["jobs", "run", "daily-metrics", "--no-cache-refresh"]
ROLLUPS = ["rollups", "run"]
#: the venv's console script (what a user runs)
CLI = Path(sys.executable).parent / "metricsmith"


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} ({os.cpu_count()} cores)"


def _env(home: Path) -> dict[str, str]:
    """This process's environment without Prefect settings, an empty METRICSMITH_HOME, the bench
    database and the resolved Redis URL (so no embedded server is looked for in the empty home)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(METRICSMITH_HOME=str(home / "home"), PREFECT_HOME=str(home / "prefect"),
               METRICSMITH_REDIS_URL=db.redis_url(), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               DO_NOT_TRACK="1", DBT_SEND_ANONYMOUS_USAGE_STATS="false")
    env.pop("METRICSMITH_VERBOSE", None)
    return env


def _run(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds (user + system of the process and its children) of one CLI run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run([str(CLI), *argv], env=env, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"metricsmith {' '.join(argv)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def _arrive(conn: object, batch: int) -> int:
    """``batch`` events of the newest day arrive again under new ids, received now."""
    cur = conn.execute(  # type: ignore[attr-defined]
        "insert into raw.events (event_id, occurred_at, received_at, event_type, user_id, organization_id, "
        "session_id, revenue_cents, properties) "
        "select gen_random_uuid(), occurred_at, now(), event_type, user_id, organization_id, session_id, "
        "revenue_cents, properties from raw.events "
        "where occurred_at >= (select date_trunc('day', max(occurred_at)) from raw.events) limit %s", (batch,))
    return int(cur.rowcount)


def _rounds(conn: object, env: dict[str, str], rounds: int, batch: int) -> dict[str, list[tuple[float, float]]]:
    runs: dict[str, list[tuple[float, float]]] = {"daily": [], "rollups": []}
    for n in range(rounds):
        order = [("daily", DAILY), ("rollups", ROLLUPS)]
        for name, argv in order if n % 2 == 0 else reversed(order):
            _arrive(conn, batch)
            runs[name].append(_run(argv, env))
        (daily_wall, _), (rollups_wall, _) = runs["daily"][-1], runs["rollups"][-1]
        print(f"round {n + 1}: jobs run daily-metrics {daily_wall:6.2f} s, {' '.join(ROLLUPS)} {rollups_wall:6.2f} s, "
              f"ratio {daily_wall / rollups_wall:.2f}   ({_load()})")
    return runs


def _report(runs: dict[str, list[tuple[float, float]]]) -> None:
    for name, label in (("daily", "jobs run daily-metrics (no server)"), ("rollups", " ".join(ROLLUPS))):
        walls, cpus = [w for w, _ in runs[name]], [c for _, c in runs[name]]
        print(f"{label:<36} median wall {statistics.median(walls):6.2f} s "
              f"(min {min(walls):.2f}, max {max(walls):.2f}), CPU {statistics.median(cpus):6.2f} s")
    wall = statistics.median(d[0] / r[0] for d, r in zip(runs["daily"], runs["rollups"], strict=True))
    cpu = statistics.median(d[1] / r[1] for d, r in zip(runs["daily"], runs["rollups"], strict=True))
    print(f"P5 ratio jobs run daily-metrics / {' '.join(ROLLUPS)} (median of pairs): {wall:.2f} wall, {cpu:.2f} CPU   "
          f"(target <= {P5_TARGET})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--events-per-day", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=500, help="events that arrive before every command")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rollups-test", action="store_true", help="compare against `rollups run --test`")
    args = parser.parse_args()
    if args.rollups_test:
        ROLLUPS.append("--test")
    start = datetime.now(UTC).date() - timedelta(days=args.days)
    print(f"server: {server_label()}; {args.days} days from {start}, ~{args.events_per_day:,} events/day, "
          f"{args.rounds} rounds, {args.batch} events arrive before each command")
    print(f"start: {_load()}")
    home = Path(tempfile.mkdtemp(prefix="bench_jobs_"))
    try:
        with bench_database("bench_jobs") as _url, db.connect(autocommit=True) as conn:
            gen = generator.generate_to_db(days=args.days, events_per_day=args.events_per_day, seed=args.seed,
                                           start=start)
            print(gen.render())
            conn.execute("vacuum analyze raw.events")
            env = _env(home)
            for argv in (["rollups", "run", "--full-refresh"], DAILY):  # build everything once
                wall, _ = _run(argv, env)
                print(f"first build: metricsmith {' '.join(argv)} {wall:.1f} s")
            _report(_rounds(conn, env, args.rounds, args.batch))
    finally:
        shutil.rmtree(home, ignore_errors=True)
    print(f"end: {_load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
