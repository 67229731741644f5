"""Job flows end to end on generated data (real Postgres, one Prefect test server per session),
and fault injection: database unreachable, broken model, killed run, concurrent run."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections import defaultdict
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from metricsmith import generator
from metricsmith.config import project_root
from metricsmith.core import dbt as core_dbt
from metricsmith.core import pglock
from metricsmith.orchestration import joblog, jobs, runner
from metricsmith.orchestration.jobs import JobFailed, run_job
from metricsmith.orchestration.retry import RetryPolicy
from metricsmith.orchestration.schedules import DEPLOYMENTS, load_flow

START = date(2025, 12, 1)
DAYS = 42
FAST = RetryPolicy(attempts=3, base_seconds=0.05, max_seconds=0.2)


def _flow(job: str) -> Any:
    return load_flow(next(d.entrypoint for d in DEPLOYMENTS if d.job == job))


def _expected_daily(conn: psycopg.Connection[Any]) -> dict[date, tuple[int, int]]:
    """Plain Python: valid events per UTC day -> (events, revenue_cents)."""
    out: dict[date, list[int]] = defaultdict(lambda: [0, 0])
    for occurred, received, etype, revenue in conn.execute(
            "select occurred_at, received_at, event_type, revenue_cents from raw.events"):
        if occurred is None or occurred > received + timedelta(days=1) or not (etype or "").strip():
            continue
        if revenue is not None and revenue < 0:
            continue
        day = occurred.astimezone(__import__("datetime").UTC).date()
        out[day][0] += 1
        out[day][1] += revenue or 0
    return {d: (v[0], v[1]) for d, v in out.items()}


def _daily(conn: psycopg.Connection[Any]) -> dict[date, tuple[int, int]]:
    rows = conn.execute("select metric_date, total_events, revenue_cents from analytics.daily_metrics").fetchall()
    return {r[0]: (int(r[1]), int(r[2])) for r in rows if r[1]}


def _log(conn: psycopg.Connection[Any], row_id: int | None) -> dict[str, Any]:
    cur = conn.execute("select * from metricsmith.metrics_aggregation_jobs_log where id = %s", (row_id,))
    names = [d.name for d in cur.description or []]
    row = cur.fetchone()
    assert row is not None
    return dict(zip(names, row, strict=True))


@pytest.fixture(scope="module")
def events(test_database: str) -> None:
    with psycopg.connect(test_database, autocommit=True) as conn:
        conn.execute("truncate raw.events, raw.events_quarantine")
        conn.execute("truncate metricsmith.metrics_aggregation_jobs_log")
        # start from no rollups at all: earlier tests in the session may have left a watermark
        conn.execute("drop schema if exists analytics cascade")
        # the daily flow also runs every active custom metric, compiled into the real project:
        # metrics other test modules defined in this session database are not for this one
        conn.execute("update metricsmith.custom_metric_definitions set status = 'archived'")
    generator.generate_to_db(days=DAYS, events_per_day=150, seed=41, start=START)


def _add_late_events(conn: psycopg.Connection[Any], day: date, n: int, tag: str) -> None:
    conn.execute(
        """insert into raw.events (event_id, occurred_at, received_at, event_type, user_id, revenue_cents)
           select gen_random_uuid(), %s::timestamptz + make_interval(mins => g), now(), 'purchase',
                  %s || g, 250 from generate_series(1, %s) g""",
        (f"{day} 12:00:00+00", f"late-{tag}-", n),
    )


def test_flows_end_to_end(events: None, prefect_harness: None, conn: psycopg.Connection[Any]) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    # daily: first run builds everything; marts equal the plain-Python numbers
    out = _flow("daily-metrics")(refresh_cache=False)
    assert out["status"] == "COMPLETED" and out["attempts"] == 1 and out["days"] == DAYS
    assert _daily(conn) == _expected_daily(conn)
    row = _log(conn, out["log_id"])
    assert row["status"] == "COMPLETED" and row["finished_at"] and row["duration_ms"] > 0
    assert row["rows_affected"] == out["rows_affected"] > DAYS and row["models_failed"] == 0
    assert row["period_start"] == START and row["period_end"] == START + timedelta(days=DAYS - 1)
    assert row["prefect_flow_run_id"] is not None and "week" in row["details"]["latest_growth"]
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["daily-metrics-run"])))
    assert arts and "days touched | 42" in str(arts[0].data) and "Latest weeks" in str(arts[0].data)

    # late events on an old day: the next daily run touches just that day (and its week/month)
    late_day = START + timedelta(days=10)
    before = _daily(conn)[late_day]
    _add_late_events(conn, late_day, 7, "a")
    out = _flow("daily-metrics")(refresh_cache=False)
    after = _daily(conn)
    assert after[late_day] == (before[0] + 7, before[1] + 7 * 250)
    # the late day, plus whatever the safety lag re-reads: rows inserted within the lag of the
    # watermark (here the whole generated load of a moment ago) are read again - exact either way
    assert after == _expected_daily(conn) and 1 <= out["days"] <= DAYS
    row = _log(conn, out["log_id"])
    assert row["period_start"] <= late_day <= row["period_end"]
    week_start = late_day - timedelta(days=late_day.weekday())
    weekly = conn.execute("select total_events from analytics.weekly_metrics where week_start = %s",
                          (week_start,)).fetchone()
    assert weekly is not None and weekly[0] == sum(v[0] for d, v in after.items() if 0 <= (d - week_start).days < 7)

    # weekly and monthly flows pick up new late events in their marts
    _add_late_events(conn, late_day, 3, "b")
    out = _flow("weekly-rollup")(refresh_cache=False)
    assert out["status"] == "COMPLETED" and out["weeks"] >= 1
    weekly2 = conn.execute("select total_events from analytics.weekly_metrics where week_start = %s",
                           (week_start,)).fetchone()
    assert weekly2 is not None and weekly2[0] == weekly[0] + 3
    _add_late_events(conn, late_day, 2, "c")
    month = late_day.replace(day=1)
    m_before = conn.execute("select total_events from analytics.monthly_metrics where month_start = %s",
                            (month,)).fetchone()
    out = _flow("monthly-rollup")(refresh_cache=False)
    m_after = conn.execute("select total_events from analytics.monthly_metrics where month_start = %s",
                           (month,)).fetchone()
    expected_month = sum(v[0] for d, v in _expected_daily(conn).items() if d.replace(day=1) == month)
    # the weekly run does not close the rollup ledger, so the monthly run also sees batch "b"
    assert out["status"] == "COMPLETED" and m_before and m_after and m_after[0] == m_before[0] + 3 + 2 == expected_month

    # backfill a range after changing rows in place (no new arrival: only a backfill sees it)
    conn.execute("update raw.events set revenue_cents = revenue_cents + 1 where occurred_at >= %s and occurred_at < %s "
                 "and revenue_cents is not null", (f"{START + timedelta(days=3)} 00:00+00", f"{START + timedelta(days=5)} 00:00+00"))
    assert _daily(conn) != _expected_daily(conn)
    out = _flow("backfill")(start=START + timedelta(days=3), end=START + timedelta(days=4), refresh_cache=False)
    assert out["status"] == "COMPLETED" and _daily(conn) == _expected_daily(conn)
    row = _log(conn, out["log_id"])
    assert (row["period_start"], row["period_end"]) == (START + timedelta(days=3), START + timedelta(days=4))


def test_unreachable_twice_then_succeeds(events: None, prefect_harness: None, conn: psycopg.Connection[Any],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    real = jobs.dbt_environment

    def flaky(settings: Any, attempt: int) -> dict[str, str]:
        env = real(settings, attempt)
        if attempt <= 2:
            os.environ["METRICSMITH_PGPORT"] = "1"  # nothing listens there: connection refused
        return env

    monkeypatch.setattr(jobs, "dbt_environment", flaky)
    _add_late_events(conn, START + timedelta(days=20), 4, "d")
    result = run_job("daily-metrics", policy=FAST)
    assert result.status == "COMPLETED" and result.attempts == 3
    row = _log(conn, result.log_id)
    assert row["status"] == "COMPLETED" and row["attempt"] == 3 and row["error_message"] is None
    tries = row["details"]["attempts"]
    assert [t["attempt"] for t in tries] == [1, 2] and all(t["transient"] for t in tries)
    assert all("connection" in t["error"].lower() for t in tries)
    assert _daily(conn) == _expected_daily(conn)


def test_unreachable_always_fails_with_the_error(events: None, prefect_harness: None, conn: psycopg.Connection[Any],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    real = jobs.dbt_environment

    def down(settings: Any, attempt: int) -> dict[str, str]:
        env = real(settings, attempt)
        os.environ["METRICSMITH_PGPORT"] = "1"
        return env

    monkeypatch.setattr(jobs, "dbt_environment", down)
    result = run_job("daily-metrics", policy=FAST)
    assert result.status == "FAILED" and result.attempts == 3
    row = _log(conn, result.log_id)
    assert row["status"] == "FAILED" and row["attempt"] == 3 and row["finished_at"] is not None
    assert "connection" in row["error_message"].lower() and "refused" in row["error_message"].lower()
    assert len(row["details"]["attempts"]) == 3
    monkeypatch.undo()
    core_dbt.prepare_environment()


def test_broken_model_is_partial_without_retry(events: None, prefect_harness: None, conn: psycopg.Connection[Any],
                                               monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # a copy of the project with one broken model: never a broken file in the shared models/
    src = project_root()
    copy = tmp_path / "project"
    copy.mkdir()
    for name in ("dbt_project.yml", "models", "macros", "tests", "profiles", "seeds", "analyses", "snapshots"):
        path = src / name
        if path.is_dir():
            shutil.copytree(path, copy / name, ignore=shutil.ignore_patterns("python", "__pycache__"))
        elif path.exists():
            shutil.copy2(path, copy / name)
    (copy / "models" / "marts" / "zz_broken.sql").write_text(
        "{{ config(materialized='table', contract={'enforced': false}) }}\n"
        "select count(*) / 0 as boom from {{ ref('daily_metrics') }}\n")
    flow = _flow("daily-metrics")
    monkeypatch.chdir(copy)
    monkeypatch.setenv("DBT_TARGET_PATH", str(tmp_path / "target"))
    spec = jobs.JOBS["daily-metrics"]
    monkeypatch.setitem(jobs.JOBS, "daily-metrics", jobs.JobSpec(spec.name, spec.description,
                                                                 (*spec.select, "zz_broken"), spec.marts,
                                                                 grain=spec.grain))
    with pytest.raises(JobFailed) as info:
        flow(refresh_cache=False)
    result = info.value.result
    assert result.status == "PARTIAL" and result.attempts == 1
    row = _log(conn, result.log_id)
    assert row["status"] == "PARTIAL" and row["attempt"] == 1 and row["models_failed"] == 1 and row["models_ok"] > 5
    assert "zz_broken" in row["error_message"] and "division by zero" in row["error_message"]
    assert [t["transient"] for t in row["details"]["attempts"]] == [False]


def test_killed_run_is_marked_failed_by_the_next(events: None, conn: psycopg.Connection[Any]) -> None:
    script = textwrap.dedent("""
        import sys, time
        from metricsmith import db
        from metricsmith.core import pglock
        from metricsmith.orchestration import joblog
        conn = db.connect(autocommit=True)
        assert pglock.job_lock("weekly-rollup").acquire(conn, 5)
        row = joblog.start(conn, "weekly-rollup", attempt=1, timeout_seconds=7200)
        print(row, flush=True)
        time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        assert proc.stdout is not None
        killed_id = int(proc.stdout.readline())
        assert _log(conn, killed_id)["status"] == "RUNNING"
        # while it lives, a second run waits a bounded time and refuses: nothing done, logged
        ledger_before = conn.execute("select count(*) from analytics.int_rollup_ledger").fetchone()
        refused = run_job("weekly-rollup", policy=FAST, lock_wait_seconds=1)
        assert refused.skipped and refused.status == "FAILED" and "another run of weekly-rollup" in (refused.error_message or "")
        assert conn.execute("select count(*) from analytics.int_rollup_ledger").fetchone() == ledger_before
        assert _log(conn, refused.log_id)["details"]["skipped"] is True
        assert _log(conn, killed_id)["status"] == "RUNNING"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    result = run_job("weekly-rollup", policy=FAST, lock_wait_seconds=30)
    assert result.status == "COMPLETED" and killed_id in result.stale_marked
    killed = _log(conn, killed_id)
    assert killed["status"] == "FAILED" and "killed" in killed["error_message"] and killed["finished_at"] is not None
    statuses = [r["status"] for r in joblog.recent(conn, "weekly-rollup", limit=50)]
    assert "RUNNING" not in statuses


def test_concurrent_second_run_waits_for_the_first(events: None, conn: psycopg.Connection[Any]) -> None:
    lock = pglock.job_lock("monthly-rollup")
    with psycopg.connect(conn.info.dsn, autocommit=True) as holder:
        assert lock.acquire(holder, 1)
        started = time.monotonic()
        import threading

        threading.Timer(2.0, lambda: lock.release(holder)).start()
        result = run_job("monthly-rollup", policy=FAST, lock_wait_seconds=30)
        assert time.monotonic() - started >= 2.0
    assert result.status == "COMPLETED" and not result.skipped
    rows = joblog.recent(conn, "monthly-rollup", limit=5)
    assert rows[0]["id"] == result.log_id and rows[0]["status"] == "COMPLETED"


def _terminate_when_dbt_blocks(dsn: str, keep: set[int], ready: Any, done: list[int], timeout: float = 300.0) -> None:
    """Hold an exclusive lock on daily_metrics until dbt's query on it waits for the lock (so the
    kill always lands mid-run), then terminate every backend connected to the database
    (except ``keep``): what clients see when PostgreSQL restarts."""
    with psycopg.connect(dsn) as locker, psycopg.connect(dsn, autocommit=True) as admin:
        # two connections: pg_stat_activity is a snapshot per transaction, so poll outside the lock's
        me = [r[0] for c in (locker, admin) for r in c.execute("select pg_backend_pid()").fetchall()]
        locker.execute("lock table analytics.daily_metrics in access exclusive mode")
        ready.set()
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                row = admin.execute(
                    "select count(*) from pg_stat_activity where datname = current_database() "
                    "and wait_event_type = 'Lock' and pid <> all(%s)", (me,)).fetchone()
                if row and row[0]:
                    victims = [int(r[0]) for r in admin.execute(
                        "select pid from pg_stat_activity where datname = current_database() and pid <> all(%s)",
                        ([*me, *keep],)).fetchall()]
                    for pid in victims:  # one by one: SQL would not promise to filter before terminating
                        admin.execute("select pg_terminate_backend(%s)", (pid,))
                    done.extend(victims)
                    return
                time.sleep(0.05)
        finally:
            locker.rollback()


def test_connections_terminated_mid_job_still_completes_its_own_row(
        events: None, conn: psycopg.Connection[Any]) -> None:
    """A PostgreSQL restart mid-job (every backend of the database terminated while dbt runs):
    the run reconnects, keeps its own RUNNING row (never marks it stale) and ends COMPLETED
    with the failed attempt recorded; health counts it a success."""
    import threading

    from metricsmith.health import get_metrics_aggregation_health

    _add_late_events(conn, START + timedelta(days=30), 5, "restart")
    mine = conn.execute("select pg_backend_pid()").fetchone()
    assert mine is not None
    killed: list[int] = []
    ready = threading.Event()
    errors: list[BaseException] = []

    def kill() -> None:
        try:
            _terminate_when_dbt_blocks(conn.info.dsn, {mine[0]}, ready, killed)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
            ready.set()

    killer = threading.Thread(target=kill)
    killer.start()
    assert ready.wait(60)
    try:
        result = run_job("daily-metrics", policy=FAST, lock_wait_seconds=30)
    finally:
        killer.join()
    assert not errors, errors
    assert killed, f"dbt never waited for daily_metrics: nothing was terminated ({result.render()})"
    assert result.status == "COMPLETED" and result.attempts >= 2 and result.stale_marked == []
    row = _log(conn, result.log_id)
    assert row["status"] == "COMPLETED" and row["attempt"] == result.attempts and row["error_message"] is None
    assert "stale" not in row["details"]
    tries = row["details"]["attempts"]
    assert [t["attempt"] for t in tries] == list(range(1, result.attempts)) and all(t["transient"] for t in tries)
    assert row["details"]["owner"]["pid"] == os.getpid()
    assert _daily(conn) == _expected_daily(conn)
    statuses = [r["status"] for r in joblog.recent(conn, "daily-metrics", limit=50)]
    assert "RUNNING" not in statuses
    daily = next(j for j in get_metrics_aggregation_health().jobs if j.job_name == "daily-metrics")
    assert daily.last_run_status == "COMPLETED" and daily.consecutive_failures == 0


def test_stale_repair_spares_live_owners(events: None, conn: psycopg.Connection[Any]) -> None:
    """mark_stale never touches the caller's own row nor a row whose owner process is alive on
    this host; a row of a dead process is marked (with the job's lock held)."""
    lock = pglock.job_lock("weekly-rollup")
    with psycopg.connect(conn.info.dsn, autocommit=True) as holder:
        assert lock.acquire(holder, 5)
        own = joblog.new_owner()
        mine = joblog.start(holder, "weekly-rollup", attempt=1, timeout_seconds=7200, owner=own)
        alive = joblog.start(holder, "weekly-rollup", attempt=1, timeout_seconds=7200)  # this process: alive
        dead_proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                                   text=True, check=True)
        dead_owner = {**joblog.new_owner(), "pid": int(dead_proc.stdout), "pid_start": None}
        dead = joblog.start(holder, "weekly-rollup", attempt=1, timeout_seconds=7200, owner=dead_owner)
        legacy = joblog.start(holder, "weekly-rollup", attempt=1, timeout_seconds=7200, owner={})
        assert joblog.mark_stale(holder, "weekly-rollup", own_token=own["token"]) == sorted([dead, legacy])
        assert [_log(conn, i)["status"] for i in (mine, alive, dead, legacy)] == ["RUNNING", "RUNNING", "FAILED", "FAILED"]
        for i in (mine, alive):
            joblog.finish(holder, i, joblog.Final("COMPLETED"))
        lock.release(holder)


class _SqlWork:
    """A job whose attempts run real SQL: the first ``failures`` raise what ``failing_sql``
    makes PostgreSQL raise, then ``select 1``."""

    def __init__(self, name: str, failing_sql: str, failures: int) -> None:
        self.name, self.timeout_seconds, self.period_start, self.period_end = name, 600, None, None
        self.failing_sql, self.failures, self.calls = failing_sql, failures, 0

    def details(self) -> dict[str, Any]:
        return {"probe": True}

    def attempt(self, ctx: runner.Attempt) -> runner.Outcome:
        self.calls += 1
        ctx.conn.execute(self.failing_sql if self.calls <= self.failures else "select 1")
        return runner.Outcome(models_ok=1)

    def effects(self, result: runner.JobResult, outcome: runner.Outcome) -> None:
        result.rows_affected = self.calls


SERIALIZATION = "do $$ begin raise exception 'could not serialize' using errcode = '40001'; end $$"
UNDEFINED = "select * from no_such_table_anywhere"


def _retries_run(in_flow: bool, work: _SqlWork) -> runner.JobResult:
    if not in_flow:
        return runner.run(work, policy=FAST)
    from prefect import flow

    @flow(name=f"probe-{work.name}")
    def probe() -> runner.JobResult:
        return runner.run(work, policy=FAST)

    return probe()


def _attempt_task_run(flow_run_id: str | None, name: str, final: str) -> Any:
    """The attempt task run of a flow run, once the server recorded its final state (task run
    states reach the server as events: poll until they are in, not a timing assertion)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    assert flow_run_id is not None
    deadline = time.monotonic() + 60
    with get_client(sync_client=True) as client:
        while True:
            runs = [t for t in client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
                    if t.name == name]
            if (runs and runs[0].state_type.value == final) or time.monotonic() > deadline:
                return runs
            time.sleep(0.2)


@pytest.mark.parametrize("in_flow", [False, True], ids=["no-server", "prefect-task-retries"])
def test_transient_failure_is_retried_and_a_permanent_one_is_not(
        in_flow: bool, request: pytest.FixtureRequest, conn: psycopg.Connection[Any]) -> None:
    """The one retry policy, in process and as Prefect task retries: a real serialization
    failure (SQLSTATE 40001) is retried and the run completes; a real undefined table is not."""
    if in_flow:
        request.getfixturevalue("prefect_harness")
    mode = "flow" if in_flow else "local"
    flaky = _SqlWork(f"probe-transient-{mode}", SERIALIZATION, failures=2)
    result = _retries_run(in_flow, flaky)
    assert result.status == "COMPLETED" and result.attempts == 3 == flaky.calls and result.rows_affected == 3
    row = _log(conn, result.log_id)
    assert row["status"] == "COMPLETED" and row["attempt"] == 3 and row["details"]["probe"] is True
    tries = row["details"]["attempts"]
    assert [t["attempt"] for t in tries] == [1, 2] and all(t["transient"] for t in tries)
    assert all("SerializationFailure" in t["error"] for t in tries)

    broken = _SqlWork(f"probe-permanent-{mode}", UNDEFINED, failures=5)
    result = _retries_run(in_flow, broken)
    assert result.status == "FAILED" and result.attempts == 1 == broken.calls
    row = _log(conn, result.log_id)
    assert row["status"] == "FAILED" and row["attempt"] == 1 and "no_such_table_anywhere" in row["error_message"]
    assert [t["transient"] for t in row["details"]["attempts"]] == [False]
    if in_flow:  # each attempt is a task run state in the UI: one task run per job run, retried by Prefect
        for job, runs, final in ((flaky, 3, "COMPLETED"), (broken, 1, "FAILED")):
            log_row = joblog.recent(conn, job.name, limit=1)[0]
            tasks = _attempt_task_run(log_row["prefect_flow_run_id"], f"{job.name} attempt", final)
            assert len(tasks) == 1 and tasks[0].run_count == runs and tasks[0].state_type.value == final, tasks


# ---------------------------------------------------------------- artifact markers (no database)
def _basis_rows() -> dict[str, list[dict[str, Any]]]:
    """Three weeks: a full one, one against a partial baseline, the current one to date; and a
    month with no previous month at all."""
    def week(start: date, pct: Any, basis: str | None, days: int | None) -> dict[str, Any]:
        return {"week_start": start, "total_events": 100, "active_users": 10, "revenue_cents": 1234,
                **{f"{m}_wow_pct": pct for m in runner.GROWTH_MEASURES}, "wow_basis": basis, "wow_basis_days": days}
    month = {"month_start": date(2026, 1, 1), "total_events": 5, "active_users": 2, "revenue_cents": 100,
             **{f"{m}_{s}_pct": None for s in ("mom", "yoy") for m in runner.GROWTH_MEASURES},
             "mom_basis": "none", "mom_basis_days": None, "yoy_basis": "none", "yoy_basis_days": None}
    return {"week": [week(date(2026, 1, 5), "4.25", "partial_baseline", 3), week(date(2026, 1, 12), "1.5", "full", 7),
                     week(date(2026, 1, 19), "-20", "to_date", 2)], "month": [month]}


def test_artifact_marks_every_growth_figure_not_on_the_full_basis() -> None:
    from metricsmith.orchestration import artifacts
    from metricsmith.query import BASIS_LEGEND

    result = runner.JobResult(job_name="daily-metrics", status=runner.JobStatus.COMPLETED, latest=_basis_rows())
    markdown = artifacts.render_markdown(result)
    body = {line.split(" | ")[0].lstrip("| "): line for line in markdown.splitlines() if line.startswith("| 2026")}
    assert body["2026-01-05"].count("+4.2 %ᵖᵇ") == len(runner.GROWTH_MEASURES)
    assert body["2026-01-12"].count("+1.5 % ") == len(runner.GROWTH_MEASURES) and "ᵗᵈ" not in body["2026-01-12"]
    assert body["2026-01-19"].count("-20.0 %ᵗᵈ") == len(runner.GROWTH_MEASURES)
    assert "%ⁿ" not in markdown and body["2026-01-01"].count("n/a") == 2 * len(runner.GROWTH_MEASURES)
    assert markdown.count(BASIS_LEGEND) == 1  # under the weeks (the months show no figure with a marker)
    # all on the full basis: no marker, no legend
    full = {"week": [dict(r, wow_basis="full") for r in _basis_rows()["week"]]}
    plain = artifacts.render_markdown(runner.JobResult(job_name="x", status=runner.JobStatus.COMPLETED, latest=full))
    assert BASIS_LEGEND not in plain and not any(mark in plain for mark in ("ᵗᵈ", "ᵖᵇ", "ⁿ"))


def test_rollups_summary_marks_growth_not_on_the_full_basis() -> None:
    from metricsmith.cli.rollups import render_periods
    from metricsmith.query import BASIS_LEGEND

    rows = _basis_rows()["week"]
    text = render_periods({"week": [dict(r, end_column=None, days_with_data=r["wow_basis_days"] or 7,
                                         is_complete=r["wow_basis"] != "to_date", new_users=1) for r in rows]})
    lines = text.splitlines()
    assert lines[1].count("%ᵖᵇ") == 3 and lines[3].count("%ᵗᵈ") == 3
    assert "ᵗᵈ" not in lines[2] and "ᵖᵇ" not in lines[2]
    assert lines[-1] == f"({BASIS_LEGEND})"
