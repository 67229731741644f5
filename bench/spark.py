"""Spark bench: the full rebuild of every rollup model on Spark local[1], local[2] and the
two-worker standalone cluster (`metricsmith spark up`), and on PostgreSQL, in one run, on the
same generated events.

    python bench/spark.py [--events-per-day 13700] [--days 365] [--skip-cluster] [--skip-postgres]

The events are generated once into a Spark home of the bench's own (a temporary folder); each
Spark master runs in a process of its own (a SparkSession's master is fixed per process), one
full refresh each after a warm-up read; PostgreSQL gets the same events in a bench database.
Prints each time (dbt's run only: the Spark start and dbt's parse are printed apart) and the
ratios, local[1] / local[2] first (target >= 1.5: the engine uses both cores).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import bench_database, server_label  # noqa: E402

TZ = "UTC"


def _child(master: str) -> None:
    from metricsmith.spark import rollups
    from metricsmith.spark.session import get_session

    began = time.perf_counter()
    session = get_session()
    session.sql("select count(*) from raw.events").collect()  # warm: JVM, metastore, file listing
    start_s = time.perf_counter() - began
    result = rollups.run_rollups(full_refresh=True, timezone=TZ)
    models = sum(n.seconds for n in result.outcome.nodes)
    print(json.dumps({"master": master, "start_s": start_s, "run_s": result.seconds, "models_s": models,
                      "app": result.application_id}))


def _spark_run(master: str, env: dict[str, str]) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--child", master], env={**env, "METRICSMITH_SPARK_MASTER": master},
                         capture_output=True, text=True, timeout=7200)
    if out.returncode != 0:
        raise SystemExit(f"{master}: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}")
    line = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"spark {master:<26} start {line['start_s']:6.1f} s   full rebuild {line['run_s']:7.1f} s "
          f"(models {line['models_s']:.1f} s, app {line['app']})", flush=True)
    return dict(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events-per-day", type=int, default=13_700)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--skip-cluster", action="store_true")
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child)
        return
    start = date.today() - timedelta(days=args.days + 1)
    print(f"load: {os.getloadavg()[0]:.2f} (1-min average), {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix="metricsmith-spark-bench-") as home:
        env = {**os.environ, "METRICSMITH_SPARK_HOME": home, "METRICSMITH_SPARK_SHUFFLE_PARTITIONS": "4"}
        os.environ.update(env)
        gen = subprocess.run([sys.executable, "-m", "metricsmith", "generate", "--engine", "spark", "--days",
                              str(args.days), "--events-per-day", str(args.events_per_day), "--seed", str(args.seed),
                              "--start", start.isoformat(), "--no-progress"],
                             env={**env, "METRICSMITH_SPARK_MASTER": "local[2]"}, capture_output=True, text=True)
        if gen.returncode != 0:
            raise SystemExit(gen.stderr.strip().splitlines()[-1])
        print(gen.stdout.strip())
        times = {m: _spark_run(m, env)["run_s"] for m in ("local[1]", "local[2]")}
        if not args.skip_cluster:
            from metricsmith.config import load_settings
            from metricsmith.spark.cluster import LocalSparkCluster

            cluster = LocalSparkCluster(load_settings())
            state = cluster.up()
            try:
                times["cluster (2 workers)"] = _spark_run(state.url, env)["run_s"]
            finally:
                cluster.down()
        if not args.skip_postgres:
            times["postgres"] = _postgres(args, start)
    print(f"local[1] / local[2] = {times['local[1]'] / times['local[2]']:.2f}x (target >= 1.5)")
    if "postgres" in times:
        for name, seconds in times.items():
            if name != "postgres":
                print(f"spark {name} / postgres = {seconds / times['postgres']:.2f}x")


def _postgres(args: argparse.Namespace, start: date) -> float:
    from metricsmith import generator, rollups

    with bench_database("spark_bench_pg") as url:
        os.environ["METRICSMITH_DATABASE_URL"] = url
        generator.generate_to_db(days=args.days, events_per_day=args.events_per_day, seed=args.seed, start=start)
        result = rollups.run_rollups(full_refresh=True, timezone=TZ, quiet=True)
    print(f"postgres ({server_label()})   full rebuild {result.seconds:7.1f} s", flush=True)
    return float(result.seconds)


if __name__ == "__main__":
    main()
