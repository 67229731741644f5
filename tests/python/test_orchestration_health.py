"""Health from hand-made job-log rows, schedules of the deployments, the retry policy."""

from __future__ import annotations

import json
import random
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from metricsmith import cli
from metricsmith.health import get_metrics_aggregation_health, promised_period
from metricsmith.orchestration import schedules
from metricsmith.orchestration.retry import RetryPolicy, is_transient, is_transient_message

NOW = datetime(2026, 3, 11, 12, 0, tzinfo=UTC)  # a Wednesday
MARTS = "health_test_marts"  # hand-made marts: freshness alone never decides these tests


def _row(conn: psycopg.Connection[Any], job: str, status: str, started: datetime, minutes: int = 5,
         error: str | None = None, **details: Any) -> None:
    finished = None if status == "RUNNING" else started + timedelta(minutes=minutes)
    conn.execute(
        "insert into metricsmith.metrics_aggregation_jobs_log (job_name, status, attempt, started_at, finished_at,"
        " duration_ms, error_message, details) values (%s, %s, 1, %s, %s, %s, %s, %s)",
        (job, status, started, finished, None if finished is None else minutes * 60_000, error,
         json.dumps({"timeout_seconds": 7200, **details})),
    )


@pytest.fixture()
def job_log(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    conn.execute("truncate metricsmith.metrics_aggregation_jobs_log")
    # marts with the promised periods, so freshness alone never decides these tests
    conn.execute(f"drop schema if exists {MARTS} cascade")
    conn.execute(f"create schema {MARTS}")
    for table, col, value in (("daily_metrics", "metric_date", date(2026, 3, 10)),
                              ("weekly_metrics", "week_start", date(2026, 3, 2)),
                              ("monthly_metrics", "month_start", date(2026, 2, 1))):
        conn.execute(f"create table {MARTS}.{table} ({col} date)")
        conn.execute(f"insert into {MARTS}.{table} values (%s)", (value,))
    yield conn
    conn.execute(f"drop schema if exists {MARTS} cascade")
    conn.execute("truncate metricsmith.metrics_aggregation_jobs_log")


def _healthy_history(conn: psycopg.Connection[Any]) -> None:
    _row(conn, "daily-metrics", "COMPLETED", datetime(2026, 3, 11, 2, 0, tzinfo=UTC))
    _row(conn, "weekly-rollup", "COMPLETED", datetime(2026, 3, 9, 4, 0, tzinfo=UTC))
    _row(conn, "monthly-rollup", "COMPLETED", datetime(2026, 3, 2, 5, 0, tzinfo=UTC))


def test_healthy(job_log: psycopg.Connection[Any]) -> None:
    _healthy_history(job_log)
    health = get_metrics_aggregation_health(schema=MARTS, now=NOW)
    assert health.status == "healthy" and health.exit_status == 0
    daily = health.jobs[0]
    assert daily.job_name == "daily-metrics" and daily.consecutive_failures == 0 and not daily.overdue
    assert daily.last_success_at == datetime(2026, 3, 11, 2, 5, tzinfo=UTC)
    assert daily.next_scheduled_at == datetime(2026, 3, 12, 2, 0, tzinfo=UTC)
    assert daily.latest_period == daily.promised_period == date(2026, 3, 10) and daily.data_fresh


def test_overdue_is_degraded(job_log: psycopg.Connection[Any]) -> None:
    _healthy_history(job_log)
    job_log.execute("delete from metricsmith.metrics_aggregation_jobs_log where job_name = 'daily-metrics'")
    _row(job_log, "daily-metrics", "COMPLETED", datetime(2026, 3, 10, 2, 0, tzinfo=UTC))  # yesterday's only
    health = get_metrics_aggregation_health(schema=MARTS, now=NOW)
    daily = health.jobs[0]
    assert daily.overdue and daily.state == "degraded" and health.status == "degraded" and health.exit_status == 1
    assert any("overdue" in r for r in daily.reasons)
    # within the grace period after 02:00 the same history is not overdue yet
    early = get_metrics_aggregation_health(schema=MARTS, now=datetime(2026, 3, 11, 3, 0, tzinfo=UTC))
    assert not early.jobs[0].overdue


def test_failing_after_consecutive_failures(job_log: psycopg.Connection[Any]) -> None:
    _healthy_history(job_log)
    _row(job_log, "weekly-rollup", "FAILED", datetime(2026, 3, 10, 4, 0, tzinfo=UTC), error="boom 1")
    _row(job_log, "weekly-rollup", "PARTIAL", datetime(2026, 3, 11, 4, 0, tzinfo=UTC), error="boom 2")
    # a run refused by the lock did no work: it does not count
    _row(job_log, "weekly-rollup", "FAILED", datetime(2026, 3, 11, 5, 0, tzinfo=UTC), error="skipped", skipped=True)
    health = get_metrics_aggregation_health(schema=MARTS, now=NOW)
    weekly = health.jobs[1]
    assert weekly.consecutive_failures == 2 and weekly.state == "failing"
    assert weekly.last_error == "boom 2" and weekly.last_success_at == datetime(2026, 3, 9, 4, 5, tzinfo=UTC)
    assert health.status == "failing" and health.exit_status == 2
    # one failure only: degraded
    job_log.execute("delete from metricsmith.metrics_aggregation_jobs_log where error_message = 'boom 2'")
    assert get_metrics_aggregation_health(schema=MARTS, now=NOW).jobs[1].state == "degraded"


def _ledger(conn: psycopg.Connection[Any], finished: datetime) -> None:
    """A row of the rollup ledger, as `metricsmith rollups run` writes it (all marts built)."""
    conn.execute(f"create table if not exists {MARTS}.int_rollup_ledger (finished_at timestamptz)")
    conn.execute(f"insert into {MARTS}.int_rollup_ledger values (%s)", (finished,))


def test_marts_built_by_the_daily_job_make_weekly_and_monthly_healthy(job_log: psycopg.Connection[Any]) -> None:
    # right after `make demo`: only the daily job ran (it builds every mart), data is fresh
    _row(job_log, "daily-metrics", "COMPLETED", datetime(2026, 3, 11, 2, 0, tzinfo=UTC))
    health = get_metrics_aggregation_health(schema=MARTS, now=NOW)
    assert health.status == "healthy" and health.exit_status == 0, health.render()
    for j in health.jobs:
        assert j.state == "healthy" and not j.overdue and j.reasons == []
        assert j.last_built_at == datetime(2026, 3, 11, 2, 5, tzinfo=UTC) and j.last_built_by == "daily-metrics"
    weekly = health.jobs[1]
    assert weekly.last_success_at is None and weekly.last_run_status is None  # its own runs: none
    assert "2026-03-11 02:05 daily-metrics" in health.render()


def test_marts_built_by_rollups_run_count(job_log: psycopg.Connection[Any]) -> None:
    # no job ever ran, but `metricsmith rollups run` wrote the ledger an hour ago
    _ledger(job_log, NOW - timedelta(hours=1))
    health = get_metrics_aggregation_health(schema=MARTS, now=NOW)
    assert health.status == "healthy", health.render()
    assert {j.last_built_by for j in health.jobs} == {"rollups ledger"}
    # a ledger row older than the weekly schedule (Monday 04:00 UTC) does not satisfy it
    job_log.execute(f"update {MARTS}.int_rollup_ledger set finished_at = %s", (datetime(2026, 3, 8, 12, tzinfo=UTC),))
    health = get_metrics_aggregation_health(schema=MARTS, now=NOW)
    daily, weekly, monthly = health.jobs
    assert daily.overdue and weekly.overdue and not monthly.overdue and health.status == "degraded"
    assert any("last built 2026-03-08 12:00 UTC by rollups ledger" in r for r in weekly.reasons)
    assert monthly.state == "healthy"


def test_never_built_by_any_path_is_degraded(job_log: psycopg.Connection[Any]) -> None:
    # a failed weekly run and a refused one do not build anything
    _row(job_log, "weekly-rollup", "FAILED", datetime(2026, 3, 9, 4, 0, tzinfo=UTC), error="boom")
    health = get_metrics_aggregation_health(schema=MARTS, now=NOW)
    assert health.status == "failing"  # weekly: its one run failed and it is overdue
    monthly = health.jobs[2]
    assert monthly.state == "degraded" and monthly.last_built_at is None
    assert any(r.startswith("never ran") and "monthly_metrics" in r for r in monthly.reasons)


def test_stale_data_and_stuck_run(job_log: psycopg.Connection[Any]) -> None:
    _healthy_history(job_log)
    job_log.execute(f"update {MARTS}.daily_metrics set metric_date = '2026-03-08'")
    _row(job_log, "monthly-rollup", "RUNNING", datetime(2026, 3, 11, 5, 0, tzinfo=UTC))  # 7 h > 2 h timeout
    health = get_metrics_aggregation_health(schema=MARTS, now=NOW)
    daily, _, monthly = health.jobs
    assert not daily.data_fresh and daily.state == "degraded" and any("stale data" in r for r in daily.reasons)
    assert monthly.running and any("RUNNING past its timeout" in r for r in monthly.reasons)


def test_health_cli_exit_status_and_json(job_log: psycopg.Connection[Any], capsys: pytest.CaptureFixture[str]) -> None:
    _row(job_log, "daily-metrics", "FAILED", datetime.now(UTC) - timedelta(hours=1), error="x")
    _row(job_log, "daily-metrics", "FAILED", datetime.now(UTC) - timedelta(minutes=30), error="connection refused")
    assert cli.main(["health", "--json"]) == 2
    doc = json.loads(capsys.readouterr().out)
    assert doc["status"] == "failing"
    daily = next(j for j in doc["jobs"] if j["job_name"] == "daily-metrics")
    assert daily["consecutive_failures"] == 2 and daily["last_error"] == "connection refused"
    assert cli.main(["health"]) == 2
    assert "daily-metrics   failing" in capsys.readouterr().out


def test_promised_periods() -> None:
    assert promised_period("daily-metrics", datetime(2026, 3, 11, 2, tzinfo=UTC)) == date(2026, 3, 10)
    assert promised_period("weekly-rollup", datetime(2026, 3, 9, 4, tzinfo=UTC)) == date(2026, 3, 2)
    assert promised_period("monthly-rollup", datetime(2026, 3, 2, 5, tzinfo=UTC)) == date(2026, 2, 1)
    assert promised_period("monthly-rollup", datetime(2026, 1, 2, 5, tzinfo=UTC)) == date(2025, 12, 1)


EXPECTED_CRONS = {"daily-metrics": "0 2 * * *", "weekly-rollup": "0 4 * * 1", "monthly-rollup": "0 5 2 * *",
                  # the realtime flows
                  "realtime-snapshot": "*/10 * * * *", "realtime-reconciliation": "*/15 * * * *"}


def test_prefect_yaml_carries_exactly_the_three_crons_in_utc() -> None:
    path = Path(__file__).resolve().parents[2] / "prefect.yaml"
    text = path.read_text()
    assert text == schedules.prefect_yaml(), "prefect.yaml is out of date: metricsmith schedules --prefect-yaml > prefect.yaml"
    doc = yaml.safe_load(text)
    crons = {d["name"]: [(s["cron"], s["timezone"]) for s in d["schedules"]] for d in doc["deployments"]}
    assert crons == {**{k: [(v, "UTC")] for k, v in EXPECTED_CRONS.items()}, "backfill": [], "custom-metrics": []}
    assert {d["work_pool"]["name"] for d in doc["deployments"]} == {schedules.WORK_POOL}
    for d in doc["deployments"]:
        assert (path.parent / d["entrypoint"].split(":")[0]).is_file()


def test_served_deployments_carry_exactly_the_three_crons_in_utc() -> None:
    deployments = schedules.runner_deployments()
    found = {}
    for d in deployments:
        found[d.name] = [(s.schedule.cron, s.schedule.timezone) for s in d.schedules or []]
    assert found == {**{k: [(v, "UTC")] for k, v in EXPECTED_CRONS.items()}, "backfill": [], "custom-metrics": []}
    assert {d.name: d.flow_name for d in deployments} == {n: n for n in found}


def test_retry_policy_backoff_and_classification() -> None:
    policy = RetryPolicy(attempts=3, base_seconds=10, max_seconds=300)
    rng = random.Random(1)
    delays = [[policy.delay(a, rng) for _ in range(200)] for a in (1, 2, 3)]
    for attempt, ds in zip((1, 2, 3), delays, strict=True):
        full = 10 * 2 ** (attempt - 1)
        assert all(full / 2 <= d <= full for d in ds) and len({round(d, 6) for d in ds}) > 150  # jitter
    assert RetryPolicy(base_seconds=100, max_seconds=150).delay(5) <= 150
    for msg in ("connection to server at \"127.0.0.1\", port 1 failed: Connection refused",
                "canceling statement due to lock timeout", "could not serialize access due to concurrent update",
                "deadlock detected", "the database system is starting up"):
        assert is_transient_message(msg), msg
    for msg in ("column \"nope\" does not exist", "division by zero", "Got 3 results, configured to fail if != 0"):
        assert not is_transient_message(msg), msg
    assert is_transient(psycopg.errors.SerializationFailure("x"))
    assert is_transient(psycopg.errors.LockNotAvailable("x"))
    assert not is_transient(psycopg.errors.UndefinedColumn("x"))
