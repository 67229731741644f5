"""``metricsmith jobs run`` with no Prefect server: the flow's body runs directly in the CLI
process (issue 17, P5) - no temporary Prefect server, not even Prefect's server or flow modules
loaded, Prefect's ephemeral mode switched off - and still the job log row, the retries of the one
RetryPolicy, the marts (checked against the plain-Python reference) and the alert hook. Also the
custom-metrics job (issue 15): ``jobs run custom-metrics``, and its skip when there is nothing to
run, decided from its one compile (counted, and seen on disk and in dbt's run results).

Each run is a fresh ``python`` process (a driver calling ``metricsmith.cli.main.main``) with no
``PREFECT_*`` setting and an empty ``METRICSMITH_HOME``, so no server is configured or recorded;
the driver reports which modules the run loaded. Faults are real: the first attempts' dbt
profile points at a port nothing listens on (connection refused), as in test_orchestration.py.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from _cli_env import cli_env as _env
from rollups_reference import Event, diff_tables, fetch_tables, insert_events, reference

START = date(2026, 2, 2)
DAYS = 24

#: runs ``main(argv)``; the first ``fail_attempts`` attempts' dbt connects to port 1 (refused).
#: It counts (and calls through to) the custom metrics' compile and every dbt invocation.
DRIVER = textwrap.dedent("""
    import json, os, sys
    from metricsmith.core import dbt as core_dbt
    from metricsmith.custom_metrics.service import CustomMetricsService
    from metricsmith.orchestration import jobs
    fail_attempts = int(sys.argv[1])
    real = jobs.dbt_environment
    compiles, dbt_runs = [], []

    def flaky(settings, attempt):
        env = real(settings, attempt)
        if attempt <= fail_attempts:
            os.environ["METRICSMITH_PGPORT"] = "1"  # nothing listens there: connection refused
        return env

    real_compile, real_invoke = CustomMetricsService.compile, core_dbt.invoke

    def counted_compile(self):
        compiles.append(1)
        return real_compile(self)

    def counted_invoke(args, **kwargs):
        dbt_runs.append(list(args))
        return real_invoke(args, **kwargs)

    jobs.dbt_environment = flaky
    CustomMetricsService.compile = counted_compile
    core_dbt.invoke = counted_invoke
    from metricsmith.cli.main import main
    code = main(sys.argv[2:])
    loaded = sorted(m for m in sys.modules if m.startswith("prefect"))
    print("DRIVER " + json.dumps({
        "code": code,
        "prefect_server_modules": [m for m in loaded if m.startswith("prefect.server")],
        "prefect_flow_modules": [m for m in loaded if m in ("prefect.flows", "prefect.task_engine", "prefect.flow_engine")],
        "ephemeral": os.environ.get("PREFECT_SERVER_EPHEMERAL_ENABLED"),
        "api_url": os.environ.get("PREFECT_API_URL"),
        "compiles": len(compiles),
        "dbt": dbt_runs,
    }))
""")


def _events() -> list[Event]:
    rng = random.Random(17)
    out = []
    for n in range(DAYS * 40):
        day = START + timedelta(days=n % DAYS)
        at = datetime(day.year, day.month, day.day, rng.randrange(24), rng.randrange(60), tzinfo=UTC)
        kind = rng.choice(["page_view", "page_view", "signup", "purchase"])
        out.append(Event(at, at + timedelta(seconds=5), kind, user_id=f"u{rng.randrange(60)}",
                         organization_id=f"o{rng.randrange(6)}", session_id=f"s{rng.randrange(200)}",
                         revenue_cents=rng.randrange(100, 5000) if kind == "purchase" else 0))
    return out


@pytest.fixture(scope="module")
def events(test_database: str) -> list[Event]:
    evs = _events()
    with psycopg.connect(test_database, autocommit=True) as conn:
        conn.execute("truncate raw.events, raw.events_quarantine")
        conn.execute("truncate metricsmith.metrics_aggregation_jobs_log")
        conn.execute("drop schema if exists analytics cascade")
        # the daily flow also runs every active custom metric: other modules' are not for this one
        conn.execute("update metricsmith.custom_metric_definitions set status = 'archived'")
        insert_events(conn, evs)
    return evs


def _drive(env: dict[str, str], fail_attempts: int, *argv: str) -> tuple[dict[str, Any], str, str]:
    done = subprocess.run([sys.executable, "-c", DRIVER, str(fail_attempts), *argv], env=env, capture_output=True,
                          text=True, timeout=600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("DRIVER ")]
    assert lines, f"the driver did not finish: {done.stdout}\n{done.stderr}"
    out = done.stdout.replace(lines[-1], "").strip()
    return json.loads(lines[-1].removeprefix("DRIVER ")), out, done.stderr


def _summaries(out: str) -> list[str]:
    """Each job's one summary line (the indented lines under one, such as its unit tests', left out)."""
    return [line for line in out.splitlines() if line and not line.startswith(" ")]


def _last_row(conn: psycopg.Connection[Any], job: str) -> dict[str, Any]:
    cur = conn.execute("select * from metricsmith.metrics_aggregation_jobs_log where job_name = %s "
                       "order by id desc limit 1", (job,))
    names = [d.name for d in cur.description or []]
    row = cur.fetchone()
    assert row is not None, f"no job log row for {job}"
    return dict(zip(names, row, strict=True))


def test_daily_metrics_without_a_server_starts_no_temporary_server(events: list[Event], tmp_path: Path,
                                                                   conn: psycopg.Connection[Any]) -> None:
    report, out, err = _drive(_env(tmp_path), 0, "jobs", "run", "daily-metrics")
    assert report["code"] == 0, err
    # nothing that could start or talk to a Prefect server was even imported, and the ephemeral
    # server is switched off for this process and whatever it starts
    assert report["prefect_server_modules"] == [] and report["prefect_flow_modules"] == []
    assert report["ephemeral"] == "false" and report["api_url"] is None
    text = (out + err).lower()
    assert "temporary server" not in text and "starting server" not in text and "traceback" not in text
    assert "running daily-metrics without prefect" in text
    lines = _summaries(out)
    assert lines[0].startswith("daily-metrics: COMPLETED after 1 attempt(s)"), out
    assert lines[1].startswith("custom-metrics: COMPLETED"), out
    # the job log rows: the daily job's (no flow run) and the custom metrics run after it
    row = _last_row(conn, "daily-metrics")
    assert row["status"] == "COMPLETED" and row["attempt"] == 1 and row["prefect_flow_run_id"] is None
    assert row["rows_affected"] > 0 and f"{row['rows_affected']:,} row(s) written" in lines[0]
    assert row["details"]["changed"]["days"] == DAYS
    assert _last_row(conn, "custom-metrics")["status"] == "COMPLETED"
    # the marts: every grain equals the independent plain-Python computation
    assert diff_tables(reference(events, "UTC"), fetch_tables(conn)) == []


def test_retries_without_a_server_follow_the_retry_policy(events: list[Event], tmp_path: Path,
                                                          conn: psycopg.Connection[Any]) -> None:
    env = _env(tmp_path, METRICSMITH_JOB_ATTEMPTS="3", METRICSMITH_JOB_RETRY_BASE_SECONDS="0.2",
               METRICSMITH_JOB_RETRY_MAX_SECONDS="1")
    report, out, err = _drive(env, 2, "jobs", "run", "weekly-rollup", "--no-cache-refresh")
    assert report["code"] == 0, err
    assert report["prefect_server_modules"] == [] and report["prefect_flow_modules"] == []
    # (dbt itself prints each refused connection; the summary is the last line)
    assert _summaries(out)[-1].startswith("weekly-rollup: COMPLETED after 3 attempt(s)"), out
    # the policy's backoff, logged by the in-process retry (Prefect's console format)
    retries = [line for line in err.splitlines() if "failed with a transient error" in line]
    assert len(retries) == 2 and all(" | WARNING | metricsmith.jobs - " in line for line in retries), err
    assert err.count("retry 1/2 in ") == 1 and err.count("retry 2/2 in ") == 1, err
    row = _last_row(conn, "weekly-rollup")
    assert row["status"] == "COMPLETED" and row["attempt"] == 3 and row["error_message"] is None
    tries = row["details"]["attempts"]
    assert [t["attempt"] for t in tries] == [1, 2] and all(t["transient"] for t in tries)
    assert all("connection" in t["error"].lower() for t in tries)



# -- the custom-metrics job: its skip, ``jobs run custom-metrics`` (issues 15 and 17 P5) -----------

VALUES = "analytics.custom_metric_values"
METRIC = "direct_purchase_revenue"


def _generated_files() -> dict[str, int]:
    """The generated custom-metric files of this database, by name, with their mtime (ns)."""
    from metricsmith.config import load_settings
    from metricsmith.custom_metrics.project import generated_dir

    folder = generated_dir(load_settings())
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.iterdir())} if folder.is_dir() else {}


def _run_results_nodes() -> set[str]:
    """The nodes of dbt's last invocation (its run_results.json in this session's target path)."""
    results = json.loads((Path(os.environ["DBT_TARGET_PATH"]) / "run_results.json").read_text())
    return {r["unique_id"] for r in results["results"]}


def _job_rows(conn: psycopg.Connection[Any]) -> int:
    got = conn.execute("select count(*) from metricsmith.metrics_aggregation_jobs_log").fetchone()
    return int(got[0]) if got else 0


def _custom_metrics_dbt(report: dict[str, Any]) -> list[list[str]]:
    """The custom metrics' dbt invocations among the driver's (``dbt run --select tag:...``)."""
    return [args for args in report["dbt"] if args[0] == "run" and any("tag:" in a for a in args)]


def test_jobs_run_custom_metrics_prints_its_line_and_logs_its_run(events: list[Event], tmp_path: Path,
                                                                  conn: psycopg.Connection[Any]) -> None:
    # a full refresh (never skipped): both dbt invocations, custom_metric_values rebuilt (empty: no active metric)
    report, out, err = _drive(_env(tmp_path), 0, "jobs", "run", "custom-metrics", "--full-refresh")
    assert report["code"] == 0, err
    assert report["prefect_server_modules"] == [] and report["prefect_flow_modules"] == []
    assert "running custom-metrics without prefect" in err.lower() and "traceback" not in err.lower()
    assert report["compiles"] == 1 and len(_custom_metrics_dbt(report)) == 2, report["dbt"]
    assert all("--full-refresh" in args for args in report["dbt"])
    row = _last_row(conn, "custom-metrics")
    assert row["status"] == "COMPLETED" and row["prefect_flow_run_id"] is None and row["rows_affected"] == 0
    assert row["details"]["full_refresh"] is True and "skipped_dbt" not in row["details"]
    (line,) = out.splitlines()
    assert line.startswith("custom-metrics: COMPLETED after 1 attempt(s) in "), out
    assert line.endswith(" s: 0 model(s) ok, 0 failed; 0 value row(s) in custom_metric_values"), out
    assert conn.execute(f"select count(*) from {VALUES}").fetchone() == (0,)

    # again, not a full refresh: nothing to run, so no dbt; the row says so
    report, out, err = _drive(_env(tmp_path), 0, "jobs", "run", "custom-metrics", "--json")
    assert report["code"] == 0, err
    assert report["compiles"] == 1 and report["dbt"] == []
    result = json.loads(out)
    row = _last_row(conn, "custom-metrics")
    assert result["log_id"] == row["id"] and result["status"] == "COMPLETED" and result["skipped_dbt"] is True
    assert row["status"] == "COMPLETED" and row["details"]["skipped_dbt"] is True
    assert row["details"]["full_refresh"] is False and row["rows_affected"] == 0
    assert "dbt not started" in result["summary"]

    # jobs log --job custom-metrics reads them
    report, out, err = _drive(_env(tmp_path), 0, "jobs", "log", "--job", "custom-metrics", "--json", "--limit", "2")
    assert report["code"] == 0, err
    logged = json.loads(out)
    assert len(logged) == 2 and logged[0]["id"] == row["id"] and logged[0]["details"]["skipped_dbt"] is True
    assert {r["job_name"] for r in logged} == {"custom-metrics"} and "skipped_dbt" not in logged[1]["details"]


@pytest.mark.parametrize("argv, message", [
    (["jobs", "run", "weekly-rollup", "--full-refresh"], "metricsmith: --full-refresh is for custom-metrics only"),
    (["jobs", "run", "custom-metrics", "--start", "2026-02-02"], "metricsmith: custom-metrics takes no --start/--end"),
    (["jobs", "run", "custom-metrics", "--no-cache-refresh"], "metricsmith: custom-metrics takes no --no-cache-refresh"),
])
def test_jobs_run_refuses_options_the_job_does_not_take(argv: list[str], message: str, tmp_path: Path,
                                                         conn: psycopg.Connection[Any]) -> None:
    before = _job_rows(conn)
    done = subprocess.run([sys.executable, "-m", "metricsmith.cli", *argv], env=_env(tmp_path), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == "", done
    assert done.stderr.strip().startswith(message) and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert _job_rows(conn) == before  # nothing ran, nothing was logged


@pytest.mark.parametrize("argv", [["jobs", "run", "nope"], ["jobs", "log", "--job", "nope"]])
def test_unknown_job_is_one_usage_error(argv: list[str], tmp_path: Path, conn: psycopg.Connection[Any]) -> None:
    before = _job_rows(conn)
    done = subprocess.run([sys.executable, "-m", "metricsmith.cli", *argv], env=_env(tmp_path), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done
    last = done.stderr.strip().splitlines()[-1]  # argparse: the usage, then one error line
    assert "invalid choice: 'nope'" in last and "'custom-metrics'" in last and "'daily-metrics'" in last, last
    assert _job_rows(conn) == before


def test_idle_daily_run_compiles_once_and_starts_no_custom_metrics_dbt(events: list[Event], tmp_path: Path,
                                                                      conn: psycopg.Connection[Any]) -> None:
    # from any state to idle: no active metric, the files compiled, custom_metric_values built and empty
    report, _, err = _drive(_env(tmp_path), 0, "jobs", "run", "custom-metrics")
    assert report["code"] == 0, err
    assert conn.execute(f"select count(*) from {VALUES}").fetchone() == (0,)
    files = _generated_files()
    assert set(files) == {"custom_metric_values.sql", "_generated__models.yml"}, files

    report, out, err = _drive(_env(tmp_path), 0, "jobs", "run", "daily-metrics", "--no-cache-refresh")
    assert report["code"] == 0, err
    # one compile (the job's own, under its lock) and one dbt invocation: the daily job's build
    assert report["compiles"] == 1, report
    assert [args[0] for args in report["dbt"]] == ["build"], report["dbt"]
    # seen from outside the process: the compile rewrote no file, and dbt's last invocation was the build
    assert _generated_files() == files
    nodes = _run_results_nodes()
    assert "model.metricsmith.daily_metrics" in nodes and "model.metricsmith.custom_metric_values" not in nodes
    lines = _summaries(out)
    assert lines[0].startswith("daily-metrics: COMPLETED after 1 attempt(s)"), out
    assert lines[1].startswith("custom-metrics: COMPLETED after 1 attempt(s) in "), out
    assert lines[1].endswith(": dbt not started (no active custom metric to run; custom_metric_values is built "
                             "and empty)"), out
    row = _last_row(conn, "custom-metrics")
    assert row["status"] == "COMPLETED" and row["details"]["skipped_dbt"] is True and row["rows_affected"] == 0
    assert row["models_ok"] == 0 and row["models_failed"] == 0 and row["error_message"] is None
    assert row["started_at"] >= _last_row(conn, "daily-metrics")["finished_at"]


def _sql_reference(conn: psycopg.Connection[Any], tz: str) -> dict[tuple[date, str], float]:
    """The metric computed straight from raw.events (every event of this module is valid)."""
    rows = conn.execute("select (occurred_at at time zone %s)::date, organization_id, sum(revenue_cents)"
                        " from raw.events where event_type = 'purchase' group by 1, 2", (tz,)).fetchall()
    return {(d, org): float(v) for d, org, v in rows}


def test_one_active_metric_runs_dbt_and_its_values_equal_sql(events: list[Event], tmp_path: Path,
                                                              conn: psycopg.Connection[Any]) -> None:
    from metricsmith.config import load_settings
    from metricsmith.custom_metrics import CustomMetricsService

    if conn.execute("select to_regclass('analytics.stg_events')").fetchone() == (None,):
        _drive(_env(tmp_path), 0, "jobs", "run", "daily-metrics", "--no-cache-refresh")  # run on its own
    svc = CustomMetricsService()
    svc.add_user("direct_owner", "org_direct")
    conn.execute("delete from metricsmith.custom_metric_definitions where slug = %s", (METRIC,))
    svc.create("direct_owner", {"name": "direct purchase revenue", "slug": METRIC, "type": "SUM", "source": "events",
                                "expression": "revenue_cents", "filter": "event_type = 'purchase'", "grain": "day",
                                "dimensions": ["organization_id"], "visibility": "PUBLIC"})
    try:
        report, out, err = _drive(_env(tmp_path), 0, "jobs", "run", "daily-metrics", "--no-cache-refresh")
        assert report["code"] == 0, err
        # one compile; the daily build, then the metric's model and custom_metric_values
        assert report["compiles"] == 1, report
        assert [args[0] for args in report["dbt"]] == ["build", "run", "run"], report["dbt"]
        assert len(_custom_metrics_dbt(report)) == 2
        row = _last_row(conn, "custom-metrics")
        assert row["status"] == "COMPLETED" and "skipped_dbt" not in row["details"] and row["models_ok"] == 1
        got = {(p, d["organization_id"]): float(v) for p, d, v in conn.execute(
            f"select period_start, dimensions, value from {VALUES} where metric_slug = %s and metric_version = 1"
            " and grain = 'day'", (METRIC,)).fetchall()}
        want = _sql_reference(conn, load_settings().timezone)
        assert want and got == want
        assert row["rows_affected"] == len(got)
        assert _summaries(out)[1].endswith(f": 1 model(s) ok, 0 failed; {len(got):,} value row(s) in "
                                            "custom_metric_values"), out
    finally:
        conn.execute("update metricsmith.custom_metric_definitions set status = 'archived' where slug = %s", (METRIC,))
