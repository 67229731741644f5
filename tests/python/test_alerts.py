"""Alerts end to end on real PostgreSQL (and Redis for the realtime rule) with a real local
HTTP receiver: exactly one firing and one resolve notification per incident.

Every expected notification is derived independently in the test (from the data it wrote),
never from the module under test.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import _alerts_fixtures as fx
import psycopg
import pytest

from metricsmith.alerts import silences
from metricsmith.alerts.evaluate import after_job_run, evaluate, list_incidents
from metricsmith.alerts.rules import RuleSet, parse_text
from metricsmith.core.status import JobStatus
from metricsmith.orchestration import joblog, runner
from metricsmith.orchestration.retry import RetryPolicy
from metricsmith.realtime.service import RealtimeMetricsService

receiver = fx.receiver
alerts_db = fx.alerts_db
SCHEMA = fx.SCHEMA
UNREACHABLE = "postgresql://postgres@127.0.0.1:1/postgres"


def rules(url: str, body: str) -> RuleSet:
    return parse_text(f"channels:\n  hook: {{type: webhook, url: '{url}/hook', backoff: 0.05}}\nrules:\n{body}",
                      "test.yml")


def run(ruleset: RuleSet, now: datetime | None = None) -> Any:
    return evaluate(ruleset, now=now, schema=SCHEMA, drain_seconds=5)


def events(rec: fx.Receiver) -> list[tuple[str, str]]:
    return [(r.json["rule"], r.json["status"]) for r in rec.delivered()]


@dataclass
class ConnectJob:
    """A job (the runner's Work) whose every attempt connects to ``url``: unreachable -> transient
    failure, retried by the runner; between attempts it evaluates the alerts as a bystander would."""

    url: str
    ruleset: RuleSet
    receiver: fx.Receiver
    name: str = "daily-metrics"
    timeout_seconds: int = 600
    period_start: date | None = None
    period_end: date | None = None
    seen_during_attempts: list[list[tuple[str, str]]] = field(default_factory=list)

    def details(self) -> dict[str, Any]:
        return {}

    def attempt(self, ctx: runner.Attempt) -> runner.Outcome:
        run(self.ruleset)  # the run's row is RUNNING: nothing may fire yet
        self.seen_during_attempts.append(events(self.receiver))
        psycopg.connect(self.url, connect_timeout=3).close()
        return runner.Outcome(models_ok=1)

    def effects(self, result: runner.JobResult, outcome: runner.Outcome) -> None:
        pass


def test_job_forced_to_fail_notifies_once_after_last_retry_then_resolves_once(
        alerts_db: psycopg.Connection[Any], receiver: fx.Receiver, tmp_path: Any,
        monkeypatch: pytest.MonkeyPatch, test_database: str) -> None:
    hook = f"channels:\n  hook: {{type: webhook, url: '{receiver.url}/hook'}}\nrules:\n" \
           "  - {name: job-failed, kind: job_failed, job: daily-metrics, channels: [hook]," \
           " message: '{{ labels.job }}: {{ summary }}'}\n"
    (tmp_path / "alerts.yml").write_text(hook)
    monkeypatch.setenv("METRICSMITH_ALERTS_FILE", str(tmp_path / "alerts.yml"))
    ruleset = parse_text(hook, "test.yml")
    policy = RetryPolicy(attempts=3, base_seconds=0.01, max_seconds=0.02, jitter=0)

    failing = ConnectJob(UNREACHABLE, ruleset, receiver)
    result = runner.run(failing, policy=policy, lock_wait_seconds=5)
    assert result.status is JobStatus.FAILED and result.attempts == 3
    assert failing.seen_during_attempts == [[], [], []]
    after_job_run(result)  # the runner's hook: the job-log row is final now
    after_job_run(result)  # the condition stays true: no second notification
    assert events(receiver) == [("job-failed", "firing")]
    body = receiver.delivered()[0].json
    assert body["labels"]["job"] == "daily-metrics" and "after 3 attempt(s)" in body["summary"]
    assert result.error_message and result.error_message[:60] in body["summary"]
    assert "127.0.0.1" in body["summary"] and body["message"].startswith("daily-metrics: ")

    healthy = ConnectJob(test_database, ruleset, receiver)
    ok = runner.run(healthy, policy=policy, lock_wait_seconds=5)
    assert ok.status is JobStatus.COMPLETED
    after_job_run(ok)
    after_job_run(ok)
    assert events(receiver) == [("job-failed", "firing"), ("job-failed", "resolved")]
    [incident] = list_incidents(alerts_db)
    assert incident["state"] == "RESOLVED" and incident["notified_at"] and incident["resolved_at"]


def _weeks(conn: psycopg.Connection[Any], first: date, wow: list[float]) -> list[tuple[date, float]]:
    rows = []
    for i, pct in enumerate(wow):
        start = first + timedelta(weeks=i)
        conn.execute(f"insert into {SCHEMA}.weekly_metrics values (%s, %s, true, 1000, 100, %s)",
                     (start, start + timedelta(days=6), pct))
        rows.append((start, pct))
    return rows


def _expected_firing(rows: list[tuple[date, float]], periods: int, threshold: float) -> bool:
    """Independent reference: the newest ``periods`` complete weeks all below the threshold."""
    newest = sorted(rows, reverse=True)[:periods]
    return len(newest) == periods and all(v < threshold for _, v in newest)


def test_threshold_across_runs_respects_for_two_periods(alerts_db: psycopg.Connection[Any],
                                                          receiver: fx.Receiver) -> None:
    ruleset = rules(receiver.url, "  - {name: revenue-drop, kind: metric_threshold, grain: week, "
                                  "expr: 'revenue_cents_wow_pct < -20', basis: full, for: 2 periods, channels: [hook]}")
    now = datetime(2026, 6, 1, tzinfo=UTC)
    data: list[tuple[date, float]] = []
    expected: list[tuple[str, str]] = []
    firing = False
    for batch in ([-5.0, -30.0], [-25.0], [-40.0], [3.0], [-21.0]):
        data += _weeks(alerts_db, date(2026, 1, 5) + timedelta(weeks=len(data)), batch)
        now_firing = _expected_firing(data, 2, -20)
        if now_firing != firing:
            expected.append(("revenue-drop", "firing" if now_firing else "resolved"))
        firing = now_firing
        run(ruleset, now)
        run(ruleset, now)
        assert events(receiver) == expected
    assert expected == [("revenue-drop", "firing"), ("revenue-drop", "resolved")]
    fired = receiver.delivered()[0].json
    assert fired["value"] == -25.0 and fired["labels"] == {"grain": "week", "metric": "revenue_cents_wow_pct"}


def test_incomplete_and_future_periods_are_not_judged(alerts_db: psycopg.Connection[Any], receiver: fx.Receiver) -> None:
    ruleset = rules(receiver.url, "  - {name: low-day, kind: metric_threshold, grain: day, expr: 'total_events < 10',"
                                  " channels: [hook]}")
    alerts_db.execute(f"insert into {SCHEMA}.daily_metrics values ('2026-03-01', 50, 5, 0), ('2026-03-02', 3, 1, 0)")
    run(ruleset, datetime(2026, 3, 2, 12, tzinfo=UTC))  # 2026-03-02 is today: not complete
    assert events(receiver) == []
    run(ruleset, datetime(2026, 3, 3, 0, 5, tzinfo=UTC))
    assert events(receiver) == [("low-day", "firing")]


def test_custom_metric_threshold_with_dimension_filter(alerts_db: psycopg.Connection[Any], receiver: fx.Receiver) -> None:
    ruleset = rules(receiver.url, "  - {name: de-signups, kind: metric_threshold, grain: week, custom_metric: signups,"
                                  " dimensions: {country: DE}, expr: 'value < 10', channels: [hook]}")
    for version, country, value in ((1, "DE", 1), (2, "DE", 4), (2, "DE", 4), (2, "FR", 2)):
        alerts_db.execute(f"""insert into {SCHEMA}.custom_metric_values values ('signups', %s, 'week', '2026-02-02',
                              jsonb_build_object('country', %s::text, 'plan', 'pro'), %s, null, null)""",
                          (version, country, value))
    alerts_db.execute(f"delete from {SCHEMA}.custom_metric_values where ctid in (select ctid from "
                      f"{SCHEMA}.custom_metric_values where value = 4 limit 1)")
    run(ruleset, datetime(2026, 3, 1, tzinfo=UTC))
    [(rule, status)] = events(receiver)
    body = receiver.delivered()[0].json
    assert (rule, status) == ("de-signups", "firing")
    assert body["labels"]["country"] == "DE" and body["labels"]["plan"] == "pro" and body["value"] == 4.0


def test_two_evaluators_at_once_notify_once(alerts_db: psycopg.Connection[Any], receiver: fx.Receiver) -> None:
    ruleset = rules(receiver.url, "  - {name: low-day, kind: metric_threshold, grain: day, expr: 'total_events < 10',"
                                  " channels: [hook]}")
    alerts_db.execute(f"insert into {SCHEMA}.daily_metrics values ('2026-03-01', 3, 1, 0)")
    now = datetime(2026, 3, 5, tzinfo=UTC)
    barrier = threading.Barrier(4)
    results: list[Any] = []

    def evaluator() -> None:
        barrier.wait()
        results.append(run(ruleset, now))

    threads = [threading.Thread(target=evaluator) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and not any(r.skipped for r in results)
    assert events(receiver) == [("low-day", "firing")]
    assert sum(1 for r in results for c in r.changes if c.notified) == 1
    assert fx.notifications(alerts_db) == [("low-day", "firing", "delivered")]


def test_flapping_is_damped_by_resolve_after(alerts_db: psycopg.Connection[Any], receiver: fx.Receiver) -> None:
    ruleset = rules(receiver.url, "  - {name: low-day, kind: metric_threshold, grain: day, expr: 'total_events < 10',"
                                  " resolve_after: 10m, channels: [hook]}")
    alerts_db.execute(f"insert into {SCHEMA}.daily_metrics values ('2026-03-01', 3, 1, 0)")
    t0 = datetime(2026, 3, 5, tzinfo=UTC)
    run(ruleset, t0)
    for minute, value in ((1, 50), (2, 3), (3, 50), (8, 50)):  # flaps, then stays clear for 5 min
        alerts_db.execute(f"update {SCHEMA}.daily_metrics set total_events = %s", (value,))
        run(ruleset, t0 + timedelta(minutes=minute))
    assert events(receiver) == [("low-day", "firing")]
    run(ruleset, t0 + timedelta(minutes=13))  # clear since minute 3: 10 min later it resolves
    assert events(receiver) == [("low-day", "firing"), ("low-day", "resolved")]


def test_silence_holds_the_notification_until_it_ends(alerts_db: psycopg.Connection[Any], receiver: fx.Receiver) -> None:
    ruleset = rules(receiver.url, "  - {name: low-day, kind: metric_threshold, grain: day, expr: 'total_events < 10',"
                                  " channels: [hook]}")
    alerts_db.execute(f"insert into {SCHEMA}.daily_metrics values ('2026-03-01', 3, 1, 0)")
    t0 = datetime.now(UTC).replace(microsecond=0)
    silences.add(alerts_db, "low-day", 7200, "planned maintenance", by="test", now=t0)
    run(ruleset, t0 + timedelta(minutes=1))
    assert events(receiver) == []
    [incident] = list_incidents(alerts_db, state="FIRING")
    assert incident["silenced_until"] == (t0 + timedelta(hours=2)).isoformat()
    assert incident["notified_at"] is None
    run(ruleset, t0 + timedelta(hours=2, minutes=1))  # the silence ended, still firing: notify now
    assert events(receiver) == [("low-day", "firing")]


def test_job_overdue_and_data_stale_follow_the_clock(alerts_db: psycopg.Connection[Any], receiver: fx.Receiver) -> None:
    ruleset = rules(receiver.url, "  - {name: daily-late, kind: job_overdue, job: daily-metrics, within: 3h, channels: [hook]}\n"
                                  "  - {name: stale-week, kind: data_stale, grain: week, grace: 6h, channels: [hook]}")
    alerts_db.execute(f"insert into {SCHEMA}.weekly_metrics values ('2031-01-06', '2031-01-12', true, 1, 1, 0)")
    # 2031-01-14 06:00: the 02:00 run is 4 h late (> 3 h); the newest complete week (01-06) is there
    now = datetime(2031, 1, 14, 6, tzinfo=UTC)
    run(ruleset, now)
    assert events(receiver) == [("daily-late", "firing")]
    alerts_db.execute(f"""insert into {joblog.TABLE} (job_name, status, started_at, finished_at, duration_ms)
                          values ('daily-metrics', 'COMPLETED', %s, %s, 1000)""",
                      (now + timedelta(minutes=1), now + timedelta(minutes=2)))
    run(ruleset, datetime(2031, 1, 14, 6, 5, tzinfo=UTC))
    # the next day within 3 h of 02:00: judged by yesterday's schedule, which completed
    run(ruleset, datetime(2031, 1, 15, 4, 0, tzinfo=UTC))
    assert events(receiver) == [("daily-late", "firing"), ("daily-late", "resolved")]
    # 2031-01-20 03:00: within the 6 h grace the week of 01-06 is still the promised one
    run(ruleset, datetime(2031, 1, 20, 3, 0, tzinfo=UTC))
    assert ("stale-week", "firing") not in events(receiver)
    # 12:00: the week of 01-13 is promised and missing; no daily run since 01-14
    run(ruleset, datetime(2031, 1, 20, 12, 0, tzinfo=UTC))
    assert sorted(events(receiver)[2:]) == [("daily-late", "firing"), ("stale-week", "firing")]


def test_realtime_rate_for_five_minutes(alerts_db: psycopg.Connection[Any], receiver: fx.Receiver) -> None:
    ruleset = rules(receiver.url, "  - {name: events-stopped, kind: realtime_threshold, expr: 'rate(alerts_test_rate, 60s) < 1',"
                                  " for: 5m, channels: [hook]}")
    t0 = datetime(2030, 5, 1, 12, tzinfo=UTC)
    svc = RealtimeMetricsService(clock=lambda: t0.timestamp())
    svc.declare_rate("alerts_test_rate", "test", windows=(60,))
    svc.close()
    for minute in (0, 2, 4):  # rate 0 < 1 but not yet for 5 minutes
        run(ruleset, t0 + timedelta(minutes=minute))
    assert events(receiver) == []
    run(ruleset, t0 + timedelta(minutes=5))
    assert events(receiver) == [("events-stopped", "firing")]
    t6 = t0 + timedelta(minutes=6)
    marker = RealtimeMetricsService(clock=lambda: t6.timestamp())
    marker.mark("alerts_test_rate", 600)  # 10 events per second over the window
    marker.close()
    run(ruleset, t6)
    assert events(receiver) == [("events-stopped", "firing"), ("events-stopped", "resolved")]


def test_after_job_run_never_raises_and_a_bad_file_evaluates_nothing(
        alerts_db: psycopg.Connection[Any], tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "alerts.yml"
    bad.write_text("rules:\n  - {name: low, kind: job_failed, channels: [nowhere]}\n")
    monkeypatch.setenv("METRICSMITH_ALERTS_FILE", str(bad))
    joblog.finish(alerts_db, joblog.start(alerts_db, "daily-metrics", attempt=1, timeout_seconds=60),
                  joblog.Final(JobStatus.FAILED, error_message="boom"))
    assert after_job_run(type("R", (), {"job_name": "daily-metrics"})()) is None
    assert list_incidents(alerts_db) == []
    monkeypatch.setenv("METRICSMITH_ALERTS_FILE", str(tmp_path / "missing.yml"))
    assert after_job_run(object()) is None


def test_demo_step_fires_and_resolves_on_generated_data(alerts_db: psycopg.Connection[Any],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from metricsmith.alerts.demo import demo_step
    from metricsmith.generator import EventGenerator

    start = date(2026, 1, 1)
    plan = EventGenerator(days=365, events_per_day=4000, seed=7, start=start, now=datetime(2027, 1, 1, tzinfo=UTC))
    days = [(start + timedelta(days=i), int(c)) for i, c in enumerate(plan.counts)]
    with alerts_db.cursor() as cur:
        cur.executemany(f"insert into {SCHEMA}.daily_metrics values (%s, %s, 1, 0)", days)
    newest = days[-1][0]
    sunday = newest - timedelta(days=newest.weekday() + 1)
    counts = dict(days)
    assert counts[sunday] < 4500 <= counts[sunday + timedelta(days=1)]  # the demo rule's premise, independently
    demo_step(schema=SCHEMA)
    out = capsys.readouterr().out
    assert f"FIRING daily-events-low: daily_metrics: total_events = {counts[sunday]} for the day of {sunday}" in out
    assert "RESOLVED daily-events-low" in out and out.count("1 notification(s) delivered") == 2


def test_the_alerts_evaluate_flow_function(alerts_db: psycopg.Connection[Any], tmp_path: Any,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from metricsmith.orchestration.schedules import DEPLOYMENTS, load_flow

    alerts_evaluate = load_flow(next(d.entrypoint for d in DEPLOYMENTS if d.job == "alerts-evaluate"))

    rule_file = tmp_path / "alerts.yml"
    rule_file.write_text("rules:\n  - {name: any-job, kind: job_failed}\n"
                         "  - {name: week-stale, kind: data_stale, grain: week}\n")
    monkeypatch.setenv("METRICSMITH_ALERTS_FILE", str(rule_file))
    out = alerts_evaluate.fn()  # the flow's body, without a Prefect server
    assert out["rules"] == 1 and out["errors"] == {}  # time-based rules only: data_stale
    assert {c["rule"] for c in out["changes"]} <= {"week-stale"}  # whatever the session's marts hold


def test_cli_silence_list_test_evaluate(alerts_db: psycopg.Connection[Any], tmp_path: Any, receiver: fx.Receiver,
                                        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from metricsmith.alerts.errors import AlertError
    from metricsmith.cli import alerts as cli

    rule_file = tmp_path / "alerts.yml"
    rule_file.write_text(f"channels:\n  hook: {{type: webhook, url: '{receiver.url}/hook'}}\nrules:\n"
                         "  - {name: etl-failed, kind: job_failed, job: cli-test-job, channels: [hook]}\n")
    monkeypatch.setenv("METRICSMITH_ALERTS_FILE", str(rule_file))
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())

    def cli_run(*argv: str) -> tuple[int, str]:
        args = parser.parse_args(["alerts", *argv])
        code = args.handler(args)
        return code, capsys.readouterr().out

    joblog.finish(alerts_db, joblog.start(alerts_db, "cli-test-job", attempt=2, timeout_seconds=60),
                  joblog.Final(JobStatus.PARTIAL, models_ok=3, models_failed=1, error_message="model x failed"))
    code, out = cli_run("test", "etl-failed", "--json")
    assert code == 0 and "FIRING - cli-test-job run" in out and "ended PARTIAL after 2 attempt(s): model x failed" in out
    assert list_incidents(alerts_db) == [] and receiver.requests == []  # test changes nothing, sends nothing
    code, out = cli_run("silence", "etl-failed", "--for", "1h", "--reason", "known issue", "--by", "tester")
    assert code == 0 and "etl-failed: silenced until" in out and "by tester (known issue)" in out
    code, out = cli_run("evaluate")
    assert code == 0 and "FIRING   etl-failed {job=cli-test-job}: cli-test-job run" in out
    code, out = cli_run("list")
    assert "etl-failed" in out and "FIRING" in out and "tester: known issue" in out
    assert receiver.requests == []  # silenced
    with pytest.raises(AlertError, match="no rule 'nope'"):
        cli_run("silence", "nope", "--for", "1h", "--reason", "x")
    with pytest.raises(SystemExit):
        cli_run("silence", "etl-failed", "--for", "soon", "--reason", "x")


def test_realtime_rules_write_nothing_to_redis(alerts_db: psycopg.Connection[Any], receiver: fx.Receiver) -> None:
    import os

    from metricsmith import db
    from metricsmith.config import load_settings

    prefix = f"{os.environ['METRICSMITH_REDIS_PREFIX']}alerts-readonly:"
    settings = load_settings({**os.environ, "METRICSMITH_REDIS_PREFIX": prefix})
    ruleset = rules(receiver.url, "  - {name: events-stopped, kind: realtime_threshold, "
                                  "expr: 'rate(metricsmith_events_per_second, 60s) < 1', channels: [hook]}")
    result = evaluate(ruleset, settings=settings, schema=SCHEMA)
    assert result.errors == {} and events(receiver) == [("events-stopped", "firing")]  # an empty Redis: rate 0
    client = db.redis_client(settings)
    assert list(client.scan_iter(match=f"{prefix}*")) == []  # no rt:alive marker: a lost Redis stays detectable
