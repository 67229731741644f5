"""Spark bench: the full rebuild of every rollup model on Spark local[1], local[2] and the
two-worker standalone cluster (`metricsmith spark up`), and on PostgreSQL, in one run, on the
same events (bench/rollups.py's: seed 1 from 2025-01-01, 13,700 a day, ~5 M in 365 days).

    python bench/spark.py [--events-per-day 13700] [--days 365] [--skip-cluster] [--skip-postgres]

The events are generated once into a Spark home of the bench's own (a temporary folder,
`metricsmith generate --engine spark`, its rate printed); PostgreSQL gets the same deterministic
events from the same generator in a bench database (bench/_common.py), its rate printed too.
Each Spark master runs in a process of its own (a SparkSession's master is fixed per process):
a warm-up read (JVM, metastore, file listing; printed apart), then one full refresh. Printed per
engine: the models' span (first model's start to last model's end, as bench/rollups.py's P1;
dbt's start-up and parse excluded), dbt's wall time and the cores the driver JVM kept busy on
average (its CPU seconds over the rebuild / the rebuild's wall time, from /proc; in local mode
the executors run in it, on the cluster they do not); then the ratios and a projection for 100x
the events.

local[1] runs twice. `local[1] on one core` is pinned to one CPU (its affinity, which the JVM
inherits, so the JVM also sizes its GC and JIT threads for one core): the one-core baseline, and
`local[1] on one core / local[2]` is the target (>= 1.5). Spark's fixed per-model work (planning,
JIT, scheduling) also spreads over two cores, so the ratio is 1.6 even on a few hundred events:
compare with a tiny run (--days 3 --events-per-day 50) to see what the data work adds. Plain
`local[1]` runs one task at a time but its JVM still uses the second core for the JIT compilers,
the garbage collector and the driver's planning (it kept ~1.5 of the 2 cores busy), so on a
2-core machine plain local[1] / local[2] cannot show what a second core adds; it is printed too.

Memory (2 cores, 24 GiB): local masters get a 6 GiB driver (the executors run in it); the
cluster's two workers 5 GiB each with one 4 GiB executor apiece, its driver 2 GiB. The cluster
is stopped at the end, and the bench checks that none of its processes is left.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import bench_database, server_label  # noqa: E402
from _cpu import proc_cpu  # noqa: E402

TZ = "UTC"
START = date(2025, 1, 1)  # bench/rollups.py's
LOCAL_DRIVER_MEMORY = "6g"
CLUSTER_DRIVER_MEMORY = "2g"
WORKER_MEMORY, EXECUTOR_MEMORY = "5g", "4g"
RATIO_TARGET = 1.5
ONE_CORE = "local[1] on one core"


@dataclass(frozen=True)
class Timing:
    models_s: float  # first model's start to last model's end
    wall_s: float  # dbt's invocation (parse included)


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} ({os.cpu_count()} cores)"


def _child(master: str) -> None:
    from metricsmith.rollups import _models_span
    from metricsmith.spark import rollups
    from metricsmith.spark.session import get_session

    began = time.perf_counter()
    session = get_session()
    session.sql("select count(*) from raw.events").collect()  # warm: JVM, metastore, file listing
    start_s = time.perf_counter() - began
    jvm = session.sparkContext._gateway.proc.pid  # the JVM pyspark launched for this process
    cpu_before, wall_before = proc_cpu(jvm), time.perf_counter()
    result = rollups.run_rollups(full_refresh=True, timezone=TZ)
    cores = (proc_cpu(jvm) - cpu_before) / (time.perf_counter() - wall_before)
    print(json.dumps({"master": master, "start_s": start_s, "wall_s": result.seconds,
                      "models_s": _models_span(result.outcome), "models": result.outcome.models_ok,
                      "app": result.application_id, "cores": cores}))


def _run(args: list[str], env: dict[str, str], cpus: set[int] | None = None) -> subprocess.CompletedProcess[str]:
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=7200, preexec_fn=pin)
    if out.returncode != 0:
        tail = "\n".join(out.stderr.strip().splitlines()[-8:]) or f"exit {out.returncode}"
        raise SystemExit(f"{' '.join(args[1:4])}... failed:\n{tail}")
    return out


def _spark_run(label: str, master: str, env: dict[str, str], driver_memory: str,
               cpus: set[int] | None = None) -> Timing:
    env = {**env, "METRICSMITH_SPARK_MASTER": master, "PYSPARK_SUBMIT_ARGS": f"--driver-memory {driver_memory} "
                                                                             "pyspark-shell"}
    out = _run([sys.executable, __file__, "--child", master], env, cpus)
    line = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"spark {label:<20} full rebuild {line['models_s']:7.1f} s models ({line['wall_s']:6.1f} s dbt wall, "
          f"{line['models']} models; driver JVM busy {line['cores']:.2f} cores; start + warm-up read {line['start_s']:.1f} s "
          f"apart; app {line['app']})", flush=True)
    return Timing(models_s=float(line["models_s"]), wall_s=float(line["wall_s"]))


def _cluster_run(env: dict[str, str]) -> Timing:
    from metricsmith.config import load_settings
    from metricsmith.spark.cluster import LocalSparkCluster

    cluster = LocalSparkCluster(load_settings(), worker_memory=WORKER_MEMORY)
    state = cluster.up()
    print(f"cluster up: {state.url}, 2 workers (1 core, {WORKER_MEMORY} each), executors {EXECUTOR_MEMORY}; "
          f"web UI {state.ui_url}", flush=True)
    try:
        return _spark_run("cluster (2 workers)", state.url, {**env, "METRICSMITH_SPARK_EXECUTOR_MEMORY": EXECUTOR_MEMORY},
                          CLUSTER_DRIVER_MEMORY)
    finally:
        stopped = cluster.down()
        left = [p.pid for p in state.processes if p.alive]
        print(f"cluster down: {stopped} process(es) stopped, {len(left)} left" + (f" (pids {left})" if left else ""),
              flush=True)


def _postgres(args: argparse.Namespace) -> Timing:
    from metricsmith import generator, rollups

    with bench_database("spark_bench_pg"):
        gen = generator.generate_to_db(days=args.days, events_per_day=args.events_per_day, seed=args.seed,
                                       start=START)
        print(f"postgres: {gen.render()}", flush=True)
        result = rollups.run_rollups(full_refresh=True, timezone=TZ, quiet=True)
    print(f"postgres ({server_label()})        full rebuild {result.models_seconds:7.1f} s models "
          f"({result.seconds:6.1f} s wall)", flush=True)
    return Timing(models_s=result.models_seconds, wall_s=result.seconds)


def _report(times: dict[str, Timing], events: int, cores: int) -> None:
    one, two = times[ONE_CORE].models_s, times["local[2]"].models_s
    ratio = one / two
    verdict = "met" if ratio >= RATIO_TARGET else "missed"
    print(f"local[1] on one core / local[2]  {ratio:5.2f}x  (target >= {RATIO_TARGET}: {verdict})")
    print(f"local[1] / local[2]              {times['local[1]'].models_s / two:5.2f}x  (local[1] unpinned: its JVM "
          "uses the second core too)")
    if "postgres" in times:
        pg = times["postgres"].models_s
        for name, t in times.items():
            if name != "postgres":
                print(f"spark {name:<22} / postgres  {t.models_s / pg:5.2f}x  (> 1: Spark slower on this machine)")
    # projection: the rebuild is scan/shuffle work linear in the events; Spark spreads it over
    # the cluster's cores with the parallel efficiency measured here (local[1] -> local[2])
    efficiency = min(1.0, ratio / 2)
    spark_s = one * 100 / (cores * efficiency)  # one core's seconds for 100x the events, spread
    line = (f"projection, 100x the events ({events * 100:,}): Spark on a {cores}-core cluster ~{spark_s / 60:,.1f} min "
            f"(local[1] on one core's time x 100 / ({cores} cores x {efficiency:.2f}, the parallel efficiency measured "
            "one core -> local[2])")
    if "postgres" in times:
        line += f"; one PostgreSQL ~{times['postgres'].models_s * 100 / 60:,.1f} min (its time x 100, one server)"
    print(line + ". Assumes the work linear in the events, that efficiency kept at scale, storage and network "
                 "keeping up; an upper bound for Spark (its fixed per-model costs are multiplied too)"
                 + ("; here local[2] was not faster: fixed costs dominate this input, project from the full one"
                    if ratio < 1 else "") + ".")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events-per-day", type=int, default=13_700)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--skip-cluster", action="store_true")
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--project-cores", type=int, default=64, help="cluster cores of the 100x projection")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child)
        return
    print(f"start: {_load()}; {args.days} days from {START}, ~{args.events_per_day:,} events/day, seed {args.seed}")
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="metricsmith-spark-bench-") as home:
        env = {**os.environ, "METRICSMITH_SPARK_HOME": home, "METRICSMITH_SPARK_SHUFFLE_PARTITIONS": "4"}
        for name in ("METRICSMITH_SPARK_WAREHOUSE", "METRICSMITH_SPARK_SMALL_DATA"):  # Spark's defaults: big data
            env.pop(name, None)
            os.environ.pop(name, None)
        os.environ.update(env)
        gen = _run([sys.executable, "-m", "metricsmith.cli", "generate", "--engine", "spark", "--days",
                    str(args.days), "--events-per-day", str(args.events_per_day), "--seed", str(args.seed),
                    "--start", START.isoformat(), "--no-progress"],
                   {**env, "METRICSMITH_SPARK_MASTER": "local[2]",
                    "PYSPARK_SUBMIT_ARGS": f"--driver-memory {LOCAL_DRIVER_MEMORY} pyspark-shell"})
        print(f"spark: {gen.stdout.strip().splitlines()[-1]}", flush=True)
        events = int(gen.stdout.split("generated ", 1)[1].split(" ", 1)[0].replace(",", ""))
        times = {ONE_CORE: _spark_run(ONE_CORE, "local[1]", env, LOCAL_DRIVER_MEMORY, {min(os.sched_getaffinity(0))})}
        times.update({m: _spark_run(m, m, env, LOCAL_DRIVER_MEMORY) for m in ("local[1]", "local[2]")})
        if not args.skip_cluster:
            times["cluster (2 workers)"] = _cluster_run(env)
    if not args.skip_postgres:
        times["postgres"] = _postgres(args)
    _report(times, events, args.project_cores)
    print(f"end: {_load()}; the bench took {(time.perf_counter() - began) / 60:.1f} min")


if __name__ == "__main__":
    main()
