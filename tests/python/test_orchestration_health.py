"""Health from hand-made job-log rows, schedules of the deployments, the retry policy."""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from metricsmith import cli, grains, health
from metricsmith.errors import UserFacingError
from metricsmith.health import get_metrics_aggregation_health, promised_period
from metricsmith.orchestration import jobs, schedules
from metricsmith.orchestration.retry import AttemptFailed, RetryPolicy, is_transient, is_transient_message

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
    for g in grains.load():  # the period that ended before NOW, per grain (every declared grain)
        conn.execute(f"create table {MARTS}.{g.model} ({g.start_column} date)")
        conn.execute(f"insert into {MARTS}.{g.model} values (%s)", (g.start_of(g.start_of(NOW.date()) - timedelta(1)),))
    yield conn
    conn.execute(f"drop schema if exists {MARTS} cascade")
    conn.execute("truncate metricsmith.metrics_aggregation_jobs_log")


def _healthy_history(conn: psycopg.Connection[Any]) -> None:
    _row(conn, "daily-metrics", "COMPLETED", datetime(2026, 3, 11, 2, 0, tzinfo=UTC))
    _row(conn, "weekly-rollup", "COMPLETED", datetime(2026, 3, 9, 4, 0, tzinfo=UTC))
    _row(conn, "monthly-rollup", "COMPLETED", datetime(2026, 3, 2, 5, 0, tzinfo=UTC))
    _row(conn, "quarterly-rollup", "COMPLETED", datetime(2026, 1, 3, 6, 0, tzinfo=UTC))


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
    daily, weekly, monthly, quarterly = health.jobs
    assert daily.overdue and weekly.overdue and not monthly.overdue and health.status == "degraded"
    assert not quarterly.overdue and quarterly.state == "healthy"
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
    daily, _, monthly, _ = health.jobs
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
    assert re.search(r"^daily-metrics +failing ", capsys.readouterr().out, re.MULTILINE)


def test_promised_periods() -> None:
    assert promised_period("daily-metrics", datetime(2026, 3, 11, 2, tzinfo=UTC)) == date(2026, 3, 10)
    assert promised_period("weekly-rollup", datetime(2026, 3, 9, 4, tzinfo=UTC)) == date(2026, 3, 2)
    assert promised_period("monthly-rollup", datetime(2026, 3, 2, 5, tzinfo=UTC)) == date(2026, 2, 1)
    assert promised_period("monthly-rollup", datetime(2026, 1, 2, 5, tzinfo=UTC)) == date(2025, 12, 1)
    assert promised_period("quarterly-rollup", datetime(2026, 1, 3, 6, tzinfo=UTC)) == date(2025, 10, 1)
    assert promised_period("quarterly-rollup", datetime(2026, 4, 3, 6, tzinfo=UTC)) == date(2026, 1, 1)


def test_every_period_grain_has_its_job_flow_schedule_and_health() -> None:
    """Adding a grain to dbt_project.yml is enough: its rollup job, deployment (cron staggered
    after the finer ones), flow file and health entry all come from metricsmith.grains."""
    root = Path(__file__).resolve().parents[2]
    crons = {d.job: d for d in schedules.DEPLOYMENTS}
    for g in grains.periods():
        job = f"{g.adjective}-rollup"
        assert jobs.JOBS[job].grain == g.name and jobs.JOBS[job].select == (f"+{g.model}",)
        assert crons[job].cron == schedules.SCHEDULES[job]
        assert (root / crons[job].entrypoint.split(":")[0]).is_file()
        assert health.FRESHNESS[job] == (g.model, g.start_column)
    assert crons["quarterly-rollup"].cron == "0 6 3 1,4,7,10 *"
    assert set(jobs.JOBS["daily-metrics"].marts) == {g.model for g in grains.load()}


EXPECTED_CRONS = {"daily-metrics": "0 2 * * *", "weekly-rollup": "0 4 * * 1", "monthly-rollup": "0 5 2 * *",
                  "quarterly-rollup": "0 6 3 1,4,7,10 *",
                  # the realtime flows
                  "realtime-snapshot": "*/10 * * * *", "realtime-reconciliation": "*/15 * * * *",
                  # the clock-based alert rules
                  "alerts-evaluate": "* * * * *"}


def test_prefect_yaml_carries_exactly_the_crons_in_utc() -> None:
    path = Path(__file__).resolve().parents[2] / "prefect.yaml"
    text = path.read_text()
    assert text == schedules.prefect_yaml(), "prefect.yaml is out of date: metricsmith schedules --prefect-yaml > prefect.yaml"
    doc = yaml.safe_load(text)
    crons = {d["name"]: [(s["cron"], s["timezone"]) for s in d["schedules"]] for d in doc["deployments"]}
    assert crons == {**{k: [(v, "UTC")] for k, v in EXPECTED_CRONS.items()}, "backfill": [], "custom-metrics": []}
    assert {d["work_pool"]["name"] for d in doc["deployments"]} == {schedules.WORK_POOL}
    for d in doc["deployments"]:
        assert (path.parent / d["entrypoint"].split(":")[0]).is_file()


def test_served_deployments_carry_exactly_the_crons_in_utc() -> None:
    deployments = schedules.runner_deployments()
    found = {}
    for d in deployments:
        found[d.name] = [(s.schedule.cron, s.schedule.timezone) for s in d.schedules or []]
    assert found == {**{k: [(v, "UTC")] for k, v in EXPECTED_CRONS.items()}, "backfill": [], "custom-metrics": []}
    assert {d.name: d.flow_name for d in deployments} == {n: n for n in found}


def test_retry_policy_backoff_and_classification() -> None:
    from prefect.states import Completed, Failed

    policy = RetryPolicy(attempts=4, base_seconds=10, max_seconds=300)
    assert policy.delays() == [10, 20, 40] and RetryPolicy(base_seconds=100, max_seconds=150, attempts=5).delays()[-1] == 150
    options = policy.task_options()
    assert options["retries"] == 3 and options["retry_delay_seconds"] == [10, 20, 40]
    assert options["retry_jitter_factor"] == 0.5 and options["retry_condition_fn"] == policy.retry_condition
    for retry, full in ((1, 10), (2, 20), (3, 40)):
        ds = [policy.delay(retry) for _ in range(300)]
        # Prefect's clamped Poisson jitter: at most 1.5x, the mean stays near the delay
        assert all(0 <= d <= full * 1.5 for d in ds) and len({round(d, 6) for d in ds}) > 250
        assert full * 0.8 <= sum(ds) / len(ds) <= full * 1.2
    assert RetryPolicy(attempts=1).delays() == [] and RetryPolicy(attempts=1).task_options()["retries"] == 0
    for msg in ("connection to server at \"127.0.0.1\", port 1 failed: Connection refused",
                "canceling statement due to lock timeout", "could not serialize access due to concurrent update",
                "deadlock detected", "the database system is starting up"):
        assert is_transient_message(msg), msg
    for msg in ("column \"nope\" does not exist", "division by zero", "Got 3 results, configured to fail if != 0",
                "Compilation Error in model weekly_metrics"):
        assert not is_transient_message(msg), msg
    assert is_transient(psycopg.errors.SerializationFailure("x"))
    assert is_transient(psycopg.errors.LockNotAvailable("x"))
    assert not is_transient(psycopg.errors.UndefinedColumn("x"))
    assert not is_transient(UserFacingError("backfill start 2026-02-01 is after end 2026-01-01"))
    assert is_transient(AttemptFailed("dbt: connection refused", transient=True))
    assert not is_transient(AttemptFailed("dbt: division by zero", transient=False))
    # the retry_condition_fn Prefect calls with the failed state
    assert policy.retry_condition(None, None, Failed(data=psycopg.errors.SerializationFailure("x")))
    assert not policy.retry_condition(None, None, Failed(data=psycopg.errors.UndefinedTable("x")))
    assert not policy.retry_condition(None, None, Completed(data=1))


def test_retry_policy_without_a_server_uses_the_same_delays_and_condition() -> None:
    policy = RetryPolicy(attempts=3, base_seconds=1, max_seconds=1.5)
    slept: list[float] = []
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise psycopg.errors.SerializationFailure("could not serialize access")
        return "done"

    assert policy.call(flaky, name="probe", sleep=slept.append) == "done" and len(calls) == 3
    assert len(slept) == 2 and 0 <= slept[0] <= 1.5 and 0 <= slept[1] <= 1.5 * 1.5
    calls.clear()

    def broken() -> str:
        calls.append(1)
        raise psycopg.errors.UndefinedTable("relation does not exist")

    with pytest.raises(psycopg.errors.UndefinedTable):
        policy.call(broken, name="probe", sleep=slept.append)
    assert len(calls) == 1 and len(slept) == 2
