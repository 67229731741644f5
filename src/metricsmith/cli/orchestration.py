"""CLI: ``metricsmith jobs run|log``, ``health``, ``serve``, ``ui``, ``schedules``.

``ui`` records where its Prefect server listens (``$METRICSMITH_HOME/prefect-server.json``);
``serve`` and ``jobs run`` use that server (or ``PREFECT_API_URL``). With none, ``serve``
refuses (every flow run would start its own temporary server) and ``jobs run`` runs the
flow's logic without Prefect (job log, lock and retries, no flow run in the UI)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC
from types import FrameType
from typing import Any

from metricsmith import db
from metricsmith.cli.args import day
from metricsmith.core.status import JobStatus
from metricsmith.errors import UserFacingError, int_at_least, port_number

OFFLINE_ENV = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
               "DBT_SEND_ANONYMOUS_USAGE_STATS": "false", "PREFECT_UI_ENABLED": "true"}


def register(sub: argparse._SubParsersAction) -> None:
    from metricsmith.orchestration.jobs import RUNNABLE_JOBS

    p = sub.add_parser("jobs", help="run a Prefect job flow now, or read the job log")
    jsub = p.add_subparsers(dest="jobs_command", metavar="ACTION")
    jsub.required = True
    run = jsub.add_parser("run", help="run one job's flow now (retries, job log, artifact)")
    run.add_argument("job", choices=list(RUNNABLE_JOBS))
    run.add_argument("--start", type=day, help="backfill: first day YYYY-MM-DD")
    run.add_argument("--end", type=day, help="backfill: last day YYYY-MM-DD (inclusive)")
    run.add_argument("--no-cache-refresh", action="store_true", help="do not invalidate/warm the metric cache")
    run.add_argument("--full-refresh", action="store_true",
                     help="custom-metrics: rebuild every custom metric's values from scratch")
    run.add_argument("--unit-tests", action="store_true",
                     help="dbt jobs: run dbt's unit tests even when the project is unchanged since the job's last "
                          "run whose unit tests passed (as METRICSMITH_ALWAYS_UNIT_TEST=1 does; the data tests run always)")
    run.add_argument("--json", action="store_true", help="print the flow's result as JSON")
    run.add_argument("-v", "--verbose", action="store_true", help="show dbt's and Prefect's log")
    run.set_defaults(handler=cmd_run)
    log = jsub.add_parser("log", help="the newest rows of metricsmith.metrics_aggregation_jobs_log")
    log.add_argument("--job", choices=list(RUNNABLE_JOBS))
    log.add_argument("--status", choices=[s.value for s in JobStatus])
    log.add_argument("--limit", type=int_at_least(1), default=10)
    log.add_argument("--json", action="store_true")
    log.set_defaults(handler=cmd_log)
    jsched = jsub.add_parser("schedules", help="the job schedules (UTC): the same as `metricsmith schedules`")
    jsched.add_argument("--prefect-yaml", action="store_true", help="print the prefect.yaml generated from them")
    jsched.set_defaults(handler=cmd_schedules)

    h = sub.add_parser("health", help="job health: healthy / degraded / failing (exit 0 / 1 / 2)")
    h.add_argument("--json", action="store_true", help="machine-readable output for monitors")
    h.set_defaults(handler=cmd_health)

    s = sub.add_parser("serve", help="serve all job deployments with their schedules from this process "
                                      "(against the server `metricsmith ui` started, or PREFECT_API_URL)")
    s.add_argument("-v", "--verbose", action="store_true", help="show dbt's log in each flow run")
    s.set_defaults(handler=cmd_serve)

    u = sub.add_parser("ui", help="start the local Prefect server and its UI (offline, analytics off); "
                                   "records its address for `serve` and `jobs run`")
    u.add_argument("--host", default="127.0.0.1")
    u.add_argument("--port", type=port_number, default=4200)
    u.set_defaults(handler=cmd_ui)

    sc = sub.add_parser("schedules", help="list the job schedules (UTC) or print prefect.yaml")
    sc.add_argument("--prefect-yaml", action="store_true", help="print the prefect.yaml generated from them")
    sc.set_defaults(handler=cmd_schedules)


def _offline_env() -> None:
    os.environ.update({k: v for k, v in OFFLINE_ENV.items() if k not in os.environ})


def _find_server() -> tuple[str | None, str]:
    from metricsmith.orchestration import server

    try:
        return server.find_api_url()
    except server.NoServer as exc:
        raise UserFacingError(str(exc)) from None


def _flow_params(args: argparse.Namespace) -> dict[str, Any]:
    """The flow's parameters for ``jobs run <job>``; refuses the options the job does not take."""
    from metricsmith.orchestration.jobs import CUSTOM_METRICS_JOB, JOBS

    if args.job == CUSTOM_METRICS_JOB:
        if args.start is not None or args.end is not None:
            raise UserFacingError(f"{args.job} takes no --start/--end: it runs every active custom metric "
                                  "(`metricsmith metrics backfill SLUG --start --end` recomputes one metric's range)")
        if args.no_cache_refresh:
            raise UserFacingError(f"{args.job} takes no --no-cache-refresh: it always drops the cached values of "
                                  "the metrics it recomputes")
        if args.unit_tests:
            raise UserFacingError(f"{args.job} takes no --unit-tests: it has no dbt unit tests (the dbt jobs do: "
                                  "daily-metrics, the rollups, backfill)")
        return {"full_refresh": args.full_refresh}
    if args.full_refresh:
        raise UserFacingError(f"--full-refresh is for {CUSTOM_METRICS_JOB} only ({args.job} is incremental; "
                              "`metricsmith jobs run backfill --start --end` recomputes a date range)")
    from metricsmith.orchestration.unit_tests import always

    always()  # a bad METRICSMITH_ALWAYS_UNIT_TEST ends here, in one line, before anything runs
    spec = JOBS[args.job]
    if spec.needs_period and (args.start is None or args.end is None):
        raise UserFacingError(f"{args.job} needs --start and --end")
    params: dict[str, Any] = {"refresh_cache": not args.no_cache_refresh}
    if spec.needs_period:
        params.update(start=args.start, end=args.end)
    return params


def cmd_run(args: argparse.Namespace) -> int:
    from metricsmith.core.dbt import set_verbose
    from metricsmith.orchestration.jobs import JobFailed

    _offline_env()
    set_verbose(args.verbose)
    params = _flow_params(args)
    if args.unit_tests:  # read by every dbt job this process runs, on the direct and the flow path alike
        from metricsmith.orchestration.unit_tests import ENV_ALWAYS

        os.environ[ENV_ALWAYS] = "1"
    api_url, where = _find_server()
    try:
        out = _run_flow(args, api_url, params) if api_url is not None else _run_direct(args.job, where, params)
    except JobFailed as exc:
        print(exc.summary, file=sys.stderr)
        _print_unit_tests(exc.result.log_id, sys.stderr)
        return 1
    if args.json:
        print(json.dumps(out, default=str))
        return 0
    print(out.get("summary") or json.dumps(out, default=str))
    _print_unit_tests(out.get("log_id"), sys.stdout)
    custom = out.get("custom_metrics")
    if isinstance(custom, dict):  # the daily flow ran the custom-metrics job after it
        print(custom.get("summary") or json.dumps(custom, default=str))
    if api_url is not None and out.get("flow_run_id"):
        print(f"flow run {out['flow_run_id']} on the Prefect server at {api_url} ({where})")
    return 0


def _print_unit_tests(log_id: Any, stream: Any) -> None:
    """The dbt job's unit-test line (ran and passed, or not run and why) from its job log row."""
    import psycopg

    from metricsmith.orchestration import unit_tests

    if not isinstance(log_id, int):
        return
    try:
        with db.connect(autocommit=True) as conn:
            line = unit_tests.describe(unit_tests.recorded(conn, log_id))
    except psycopg.Error:
        return  # the summary above is the result; this line only explains it
    if line:
        print(f"  {line}", file=stream)


def _run_flow(args: argparse.Namespace, api_url: str, params: dict[str, Any]) -> dict[str, Any]:
    """A flow run on the Prefect server at ``api_url`` (every dbt node a task in its UI)."""
    from metricsmith.orchestration import server
    from metricsmith.orchestration.schedules import DEPLOYMENTS, load_flow

    server.use_api_url(api_url)
    if not args.verbose:  # the flow's log still goes to the server (UI); the console gets warnings
        os.environ["PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"] = "WARNING"
    flow = load_flow(next(d.entrypoint for d in DEPLOYMENTS if d.job == args.job))
    if not args.verbose:
        from prefect.logging.configuration import setup_logging

        setup_logging(incremental=False)
    out: dict[str, Any] = flow(**params)
    return out


#: the console log of the direct path: Prefect's format, warnings and errors (as with a flow run)
DIRECT_LOG_FORMAT = "%(asctime)s.%(msecs)03d | %(levelname)-7s | %(name)s - %(message)s"


def _run_direct(job: str, where: str, params: dict[str, Any]) -> dict[str, Any]:
    """No server: the flow's own body (:func:`flowkit.job_flow`) in this process, without loading
    the flow files; Prefect's ephemeral mode is switched off, so nothing can start its temporary
    server (10-40 s) behind our back - an accidental Prefect API call fails instead."""
    import logging

    from metricsmith.orchestration import flowkit, server

    print(f"{where}: running {job} without Prefect "
          "(job log, lock and retries as usual; no flow run in the UI)", file=sys.stderr)
    server.forbid_ephemeral_server()
    logging.basicConfig(level=logging.WARNING, format=DIRECT_LOG_FORMAT, datefmt="%H:%M:%S")
    return flowkit.job_flow(job, **params)


def cmd_log(args: argparse.Namespace) -> int:
    from metricsmith.orchestration import joblog

    with db.connect(autocommit=True) as conn:
        rows = joblog.recent(conn, args.job, limit=args.limit, status=args.status)
    if args.json:
        print(json.dumps(rows, default=str, indent=2))
        return 0
    print(f"{'id':>5} {'job':<16} {'status':<9} {'att':>3} {'started (UTC)':<19} {'ms':>8} {'rows':>8}  error")
    for r in rows:
        started = r["started_at"].astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if r["started_at"] else ""
        print(f"{r['id']:>5} {r['job_name']:<16} {r['status']:<9} {r['attempt']:>3} {started:<19} "
              f"{r['duration_ms'] if r['duration_ms'] is not None else '':>8} "
              f"{r['rows_affected'] if r['rows_affected'] is not None else '':>8}  {' '.join((r['error_message'] or '').split())[:90]}")
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    from metricsmith.health import get_metrics_aggregation_health

    health = get_metrics_aggregation_health()
    print(json.dumps(health.to_dict(), indent=2) if args.json else health.render())
    return health.exit_status


#: after SIGTERM/SIGINT, ``serve`` (and ``ui``) exit within this many seconds even if a
#: shutdown step hangs (e.g. a websocket that never closes)
STOP_GRACE_SECONDS = 8.0


def _arm_exit_watchdog(code: int) -> None:
    def force() -> None:
        time.sleep(STOP_GRACE_SECONDS)
        print(f"metricsmith: shutdown did not finish within {STOP_GRACE_SECONDS:.0f} s: exiting", file=sys.stderr)
        os._exit(code)

    threading.Thread(target=force, name="exit-watchdog", daemon=True).start()


def _stop_on_signals() -> None:
    """SIGTERM and SIGINT both stop the process the way Ctrl-C does (KeyboardInterrupt), with a
    watchdog that ends it after :data:`STOP_GRACE_SECONDS` whatever happens."""
    def handler(signum: int, frame: FrameType | None) -> None:
        _arm_exit_watchdog(128 + signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def cmd_serve(args: argparse.Namespace) -> int:
    _stop_on_signals()  # from the start: a signal while loading the flows stops cleanly too
    try:
        return _serve(args)
    except KeyboardInterrupt:
        print("serve: stopped", flush=True)
        return 0


def _serve(args: argparse.Namespace) -> int:
    from prefect.runner import Runner

    from metricsmith.core.dbt import set_verbose
    from metricsmith.orchestration import server
    from metricsmith.orchestration.schedules import runner_deployments

    _offline_env()
    set_verbose(args.verbose)
    db.dbt_env()  # fail early on bad configuration
    api_url, where = _find_server()
    if api_url is None:
        raise UserFacingError(f"{where}; or set PREFECT_API_URL. serve does not start temporary servers")
    server.use_api_url(api_url)

    class _Runner(Runner):
        def handle_sigterm(self, *_: Any, **__: Any) -> None:  # Prefect's own handler can hang on shutdown
            _arm_exit_watchdog(128 + signal.SIGTERM)
            raise KeyboardInterrupt

    deployments = runner_deployments()
    runner = _Runner(pause_on_shutdown=False)
    for d in deployments:
        runner.add_deployment(d)
    print(f"serving {len(deployments)} deployments on the Prefect server at {api_url} (found via {where}); "
          f"UI: {api_url.removesuffix('/api')}; stop with Ctrl-C or SIGTERM", flush=True)
    _stop_on_signals()  # again: Prefect's set-up may have replaced them
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_run_until_stopped(runner))
    print("serve: stopped", flush=True)
    return 0


async def _run_until_stopped(runner: Any) -> None:  # a prefect Runner (imported only when serving)
    asyncio.get_running_loop().set_exception_handler(_ignore_cancellation)
    await runner.start()


def _ignore_cancellation(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The event loop's error handler while ``serve`` runs: a cancelled task is not an error.
    Python before 3.12 reports a cancelled connection handler as one (python/cpython#113538),
    and a flow run in progress at Ctrl-C holds a connection to the runner's control channel,
    whose handler the shutdown cancels. Everything else goes to asyncio's default handler."""
    if isinstance(context.get("exception"), asyncio.CancelledError):
        return
    loop.default_exception_handler(context)


def cmd_ui(args: argparse.Namespace) -> int:
    from metricsmith.orchestration import server

    api_url, ui_url = server.urls(args.host, args.port)
    existing = server.read_record()
    if existing is not None and server.answers(existing.api_url):
        raise UserFacingError(f"a Prefect server already runs at {existing.ui_url} (pid {existing.pid}, "
                              f"recorded in {server.state_path()})")
    # the server's own settings name this port, so its UI (/ui-settings api_url) talks to it
    env = {**os.environ, **OFFLINE_ENV, "PREFECT_SERVER_API_HOST": args.host, "PREFECT_SERVER_API_PORT": str(args.port),
           "PREFECT_UI_API_URL": api_url, "PREFECT_API_URL": api_url}
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", args.host, "--port", str(args.port)]
    proc = subprocess.Popen(cmd, env=env)
    stopping = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()
        _arm_exit_watchdog(128 + signum)
        proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        deadline = time.monotonic() + 180
        while proc.poll() is None and not stopping.is_set() and time.monotonic() < deadline:
            if server.answers(api_url, timeout=1.0):
                server.record(args.host, args.port, os.getpid())
                print(f"Prefect UI at {ui_url} (API {api_url}); recorded in {server.state_path()}: "
                      "`metricsmith serve` and `metricsmith jobs run` in other shells use this server", flush=True)
                break
            time.sleep(0.5)
        code = proc.wait()
        return 0 if stopping.is_set() else code
    finally:
        server.clear(os.getpid())
        if proc.poll() is None:
            proc.kill()


def cmd_schedules(args: argparse.Namespace) -> int:
    from metricsmith.orchestration.schedules import DEPLOYMENTS, TIMEZONE, prefect_yaml

    if args.prefect_yaml:
        sys.stdout.write(prefect_yaml())
        return 0
    for d in DEPLOYMENTS:
        when = f"{d.cron} {TIMEZONE}" if d.cron else "on demand"
        print(f"{d.job:<24} {when:<22} {d.entrypoint}")
    return 0
