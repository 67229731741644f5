"""``metricsmith jobs run`` with no Prefect server: the flow's body runs directly in the CLI
process (issue 17, P5) - no temporary Prefect server, not even Prefect's server or flow modules
loaded, Prefect's ephemeral mode switched off - and still the job log row, the retries of the one
RetryPolicy, the marts (checked against the plain-Python reference) and the alert hook.

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
from rollups_reference import Event, diff_tables, fetch_tables, insert_events, reference

START = date(2026, 2, 2)
DAYS = 24

#: runs ``main(argv)``; the first ``fail_attempts`` attempts' dbt connects to port 1 (refused)
DRIVER = textwrap.dedent("""
    import json, os, sys
    from metricsmith.orchestration import jobs
    fail_attempts = int(sys.argv[1])
    real = jobs.dbt_environment

    def flaky(settings, attempt):
        env = real(settings, attempt)
        if attempt <= fail_attempts:
            os.environ["METRICSMITH_PGPORT"] = "1"  # nothing listens there: connection refused
        return env

    jobs.dbt_environment = flaky
    from metricsmith.cli.main import main
    code = main(sys.argv[2:])
    loaded = sorted(m for m in sys.modules if m.startswith("prefect"))
    print("DRIVER " + json.dumps({
        "code": code,
        "prefect_server_modules": [m for m in loaded if m.startswith("prefect.server")],
        "prefect_flow_modules": [m for m in loaded if m in ("prefect.flows", "prefect.task_engine", "prefect.flow_engine")],
        "ephemeral": os.environ.get("PREFECT_SERVER_EPHEMERAL_ENABLED"),
        "api_url": os.environ.get("PREFECT_API_URL"),
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


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(METRICSMITH_HOME=str(tmp_path / "home"), PREFECT_HOME=str(tmp_path / "prefect"),
               PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1", DBT_SEND_ANONYMOUS_USAGE_STATS="false",
               PYTHONUNBUFFERED="1", **extra)
    env.pop("METRICSMITH_VERBOSE", None)
    return env


def _drive(env: dict[str, str], fail_attempts: int, *argv: str) -> tuple[dict[str, Any], str, str]:
    done = subprocess.run([sys.executable, "-c", DRIVER, str(fail_attempts), *argv], env=env, capture_output=True,
                          text=True, timeout=600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("DRIVER ")]
    assert lines, f"the driver did not finish: {done.stdout}\n{done.stderr}"
    out = done.stdout.replace(lines[-1], "").strip()
    return json.loads(lines[-1].removeprefix("DRIVER ")), out, done.stderr


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
    lines = out.splitlines()
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
    assert out.splitlines()[-1].startswith("weekly-rollup: COMPLETED after 3 attempt(s)"), out
    # the policy's backoff, logged by the in-process retry (Prefect's console format)
    retries = [line for line in err.splitlines() if "failed with a transient error" in line]
    assert len(retries) == 2 and all(" | WARNING | metricsmith.jobs - " in line for line in retries), err
    assert err.count("retry 1/2 in ") == 1 and err.count("retry 2/2 in ") == 1, err
    row = _last_row(conn, "weekly-rollup")
    assert row["status"] == "COMPLETED" and row["attempt"] == 3 and row["error_message"] is None
    tries = row["details"]["attempts"]
    assert [t["attempt"] for t in tries] == [1, 2] and all(t["transient"] for t in tries)
    assert all("connection" in t["error"].lower() for t in tries)

