"""CLI: ``metricsmith jobs run|log``, ``health``, ``serve``, ``ui``, ``schedules``."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from datetime import UTC, date
from typing import Any

from metricsmith import db
from metricsmith.errors import UserFacingError, int_at_least, port_number

OFFLINE_ENV = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
               "DBT_SEND_ANONYMOUS_USAGE_STATS": "false", "PREFECT_UI_ENABLED": "true"}


def register(sub: argparse._SubParsersAction) -> None:
    from metricsmith.orchestration.jobs import JOBS

    p = sub.add_parser("jobs", help="run a Prefect job flow now, or read the job log")
    jsub = p.add_subparsers(dest="jobs_command", metavar="ACTION")
    jsub.required = True
    run = jsub.add_parser("run", help="run one job's flow now (retries, job log, artifact)")
    run.add_argument("job", choices=list(JOBS))
    run.add_argument("--start", type=_day, help="backfill: first day YYYY-MM-DD")
    run.add_argument("--end", type=_day, help="backfill: last day YYYY-MM-DD (inclusive)")
    run.add_argument("--no-cache-refresh", action="store_true", help="do not invalidate/warm the metric cache")
    run.set_defaults(handler=cmd_run)
    log = jsub.add_parser("log", help="the newest rows of metricsmith.metrics_aggregation_jobs_log")
    log.add_argument("--job", choices=list(JOBS))
    log.add_argument("--status", choices=["RUNNING", "COMPLETED", "FAILED", "PARTIAL"])
    log.add_argument("--limit", type=int_at_least(1), default=10)
    log.add_argument("--json", action="store_true")
    log.set_defaults(handler=cmd_log)

    h = sub.add_parser("health", help="job health: healthy / degraded / failing (exit 0 / 1 / 2)")
    h.add_argument("--json", action="store_true", help="machine-readable output for monitors")
    h.set_defaults(handler=cmd_health)

    s = sub.add_parser("serve", help="serve all job deployments with their schedules from this process")
    s.set_defaults(handler=cmd_serve)

    u = sub.add_parser("ui", help="start the local Prefect server and its UI (offline, analytics off)")
    u.add_argument("--host", default="127.0.0.1")
    u.add_argument("--port", type=port_number, default=4200)
    u.set_defaults(handler=cmd_ui)

    sc = sub.add_parser("schedules", help="list the job schedules (UTC) or print prefect.yaml")
    sc.add_argument("--prefect-yaml", action="store_true", help="print the prefect.yaml generated from them")
    sc.set_defaults(handler=cmd_schedules)


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def cmd_run(args: argparse.Namespace) -> int:
    from metricsmith.orchestration.jobs import JOBS, JobFailed
    from metricsmith.orchestration.schedules import DEPLOYMENTS, load_flow

    # without PREFECT_API_URL Prefect starts a temporary server: give a busy machine time
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.update({k: v for k, v in OFFLINE_ENV.items() if k not in os.environ})
    spec = JOBS[args.job]
    if spec.needs_period and (args.start is None or args.end is None):
        raise UserFacingError(f"{args.job} needs --start and --end")
    entry = next(d.entrypoint for d in DEPLOYMENTS if d.job == args.job)
    flow = load_flow(entry)
    params: dict[str, Any] = {"refresh_cache": not args.no_cache_refresh}
    if spec.needs_period:
        params.update(start=args.start, end=args.end)
    try:
        out = flow(**params)
    except JobFailed as exc:
        print(exc.result.render(), file=sys.stderr)
        return 1
    print(json.dumps(out, default=str))
    return 0


def cmd_log(args: argparse.Namespace) -> int:
    from metricsmith.orchestration import joblog

    with db.connect(autocommit=True) as conn:
        rows = joblog.recent(conn, args.job, limit=args.limit, status=args.status)
    if args.json:
        print(json.dumps(rows, default=str, indent=2))
        return 0
    print(f"{'id':>5} {'job':<15} {'status':<9} {'att':>3} {'started (UTC)':<19} {'ms':>8} {'rows':>8}  error")
    for r in rows:
        started = r["started_at"].astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if r["started_at"] else ""
        print(f"{r['id']:>5} {r['job_name']:<15} {r['status']:<9} {r['attempt']:>3} {started:<19} "
              f"{r['duration_ms'] if r['duration_ms'] is not None else '':>8} "
              f"{r['rows_affected'] if r['rows_affected'] is not None else '':>8}  {' '.join((r['error_message'] or '').split())[:90]}")
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    from metricsmith.health import get_metrics_aggregation_health

    health = get_metrics_aggregation_health()
    print(json.dumps(health.to_dict(), indent=2) if args.json else health.render())
    return health.exit_status


def cmd_serve(args: argparse.Namespace) -> int:
    from prefect import serve

    from metricsmith.orchestration.schedules import runner_deployments

    os.environ.update({k: v for k, v in OFFLINE_ENV.items() if k not in os.environ})
    db.dbt_env()  # fail early on bad configuration
    serve(*runner_deployments())
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    env = {**os.environ, **OFFLINE_ENV}
    print(f"Prefect UI at http://{args.host}:{args.port}  - in another shell: "
          f"export PREFECT_API_URL=http://{args.host}:{args.port}/api; metricsmith serve")
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", args.host, "--port", str(args.port)]
    return subprocess.call(cmd, env=env)


def cmd_schedules(args: argparse.Namespace) -> int:
    from metricsmith.orchestration.schedules import DEPLOYMENTS, TIMEZONE, prefect_yaml

    if args.prefect_yaml:
        sys.stdout.write(prefect_yaml())
        return 0
    for d in DEPLOYMENTS:
        when = f"{d.cron} {TIMEZONE}" if d.cron else "on demand"
        print(f"{d.job:<24} {when:<17} {d.entrypoint}")
    return 0
