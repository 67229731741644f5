"""``metricsmith spark up|down|status|run|register-files``: the Spark engine's own commands."""

from __future__ import annotations

import argparse
from datetime import date

from metricsmith.cli.args import day
from metricsmith.config import load_settings
from metricsmith.errors import UserFacingError, port_number


def _up(args: argparse.Namespace) -> int:
    from metricsmith.spark.cluster import LocalSparkCluster

    state = LocalSparkCluster(load_settings(), worker_memory=args.worker_memory).up(args.port, args.ui_port)
    workers = [p for p in state.processes if p.role == "worker"]
    print(f"Spark standalone cluster up: master {state.url}, {len(workers)} workers "
          f"(1 core each) on 127.0.0.1:{', '.join(str(w.port) for w in workers)}")
    print(f"web UI:  {state.ui_url}")
    print(f"use it:  export METRICSMITH_ENGINE=spark METRICSMITH_SPARK_MASTER={state.url}")
    return 0


def _down(_args: argparse.Namespace) -> int:
    from metricsmith.spark.cluster import LocalSparkCluster

    stopped = LocalSparkCluster(load_settings()).down()
    print(f"stopped {stopped} Spark process(es)" if stopped else "no local Spark cluster running")
    return 0


def _status(_args: argparse.Namespace) -> int:
    from metricsmith.spark.cluster import LocalSparkCluster

    cluster = LocalSparkCluster(load_settings())
    state = cluster.read_state()
    if state is None:
        print("no local Spark cluster (start one with `metricsmith spark up`)")
        return 1
    alive = cluster.alive_workers(state.ui_port)
    print(f"master {state.url}  web UI {state.ui_url}  workers registered: {alive}")
    for p in state.processes:
        print(f"  {p.role:<7} 127.0.0.1:{p.port:<6} pid {p.pid:<8} {'running' if p.alive else 'NOT RUNNING'}")
    return 0 if alive == len(state.processes) - 1 and all(p.alive for p in state.processes) else 1


def _register(args: argparse.Namespace) -> int:
    from metricsmith.spark import raw

    result = raw.register_files(args.path)
    print(result.render())
    return 0


def run_on_spark(*, full_refresh: bool = False, timezone: str | None = None,
                 backfill: tuple[date, date] | None = None) -> int:
    """``spark run`` (and ``metricsmith backfill`` on METRICSMITH_ENGINE=spark): the Spark rollup
    job and the publish, then the cache entries of the periods it recomputed are dropped (as after
    ``rollups run`` / ``backfill`` on PostgreSQL). A bad range is refused before anything runs."""
    from metricsmith import migrate
    from metricsmith.cache.invalidation import invalidate_periods
    from metricsmith.rollups import backfill_vars
    from metricsmith.spark import job

    if backfill is not None:
        backfill_vars(*backfill)
    migrate.upgrade()  # the serving database: job log, marts schema
    result = job.run_job(full_refresh=full_refresh, timezone=timezone, backfill=backfill)
    print(result.render())
    if result.changed_days:
        invalidated = invalidate_periods(result.changed_days, changed=result.changed)
        if not invalidated.ok:
            print(f"warning: {invalidated.render()}")
    return 0 if result.ok else 1


def _run(args: argparse.Namespace) -> int:
    if (args.start is None) != (args.end is None):
        raise UserFacingError("spark run: give both --start and --end (the days to backfill) or neither")
    backfill = None if args.start is None else (args.start, args.end)
    return run_on_spark(full_refresh=args.full_refresh, timezone=args.timezone, backfill=backfill)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("spark", help="the Spark engine: a local standalone cluster, Parquet raw events")
    sp = parser.add_subparsers(dest="spark_command", metavar="ACTION")
    sp.required = True
    p = sp.add_parser("up", help="start a standalone cluster on loopback (1 master, 2 workers) or report it")
    p.add_argument("--port", type=port_number, default=7077, help="master port (default 7077; next free if taken)")
    p.add_argument("--ui-port", type=port_number, default=8080, help="master web UI port (default 8080)")
    p.add_argument("--worker-memory", default="1g",
                   help="memory of each worker (default 1g; an application's executors, "
                        "METRICSMITH_SPARK_EXECUTOR_MEMORY (default 512m), must fit in it: "
                        "e.g. 5g with 4g executors for a year of 5 M events)")
    p.set_defaults(handler=_up)
    sp.add_parser("down", help="stop the local cluster; no process is left").set_defaults(handler=_down)
    sp.add_parser("status", help="the master, its workers and their pids; exit 1 unless all run") \
        .set_defaults(handler=_status)
    p = sp.add_parser("run", help="the rollups on Spark, then publish the marts to PostgreSQL (one job-log row)")
    p.add_argument("--full-refresh", action="store_true", help="rebuild every table")
    p.add_argument("--timezone", default=None, help="reporting time zone (default METRICSMITH_TIMEZONE)")
    p.add_argument("--start", type=day, default=None,
                   help="backfill: first day YYYY-MM-DD (with --end: recompute those days and every period above them)")
    p.add_argument("--end", type=day, default=None, help="backfill: last day YYYY-MM-DD (inclusive)")
    p.set_defaults(handler=_run)
    p = sp.add_parser("register-files", help="add Parquet files already in the raw.events layout "
                                             "(received_date=YYYY-MM-DD/ folders) to raw.events")
    p.add_argument("path", help="a folder (local or any Hadoop-compatible URL) holding received_date=... folders")
    p.set_defaults(handler=_register)
