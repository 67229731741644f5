"""Channels against real local receivers: the webhook (HMAC, retries with backoff recorded per
attempt), Alertmanager's /api/v2/alerts, SMTP (aiosmtpd sink), and a channel that stays down."""

from __future__ import annotations

import argparse
import hashlib
import hmac
from datetime import UTC, datetime
from typing import Any

import _alerts_fixtures as fx
import psycopg
import pytest

from metricsmith.alerts.evaluate import evaluate
from metricsmith.alerts.rules import parse_text
from metricsmith.cli import alerts as cli

receiver = fx.receiver
alerts_db = fx.alerts_db
smtp_sink = fx.smtp_sink
NOW = datetime(2026, 3, 5, tzinfo=UTC)
RULE = "  - {name: low-day, kind: metric_threshold, grain: day, expr: 'total_events < 10', channels: [%s]}"


def _crossing(conn: psycopg.Connection[Any], value: int = 3) -> None:
    conn.execute(f"delete from {fx.SCHEMA}.daily_metrics")
    conn.execute(f"insert into {fx.SCHEMA}.daily_metrics values ('2026-03-01', %s, 1, 0)", (value,))


def _attempts(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in conn.execute(
        """select n.channel, d.attempt, d.ok, d.status_code, d.attempted_at from metricsmith.alert_deliveries d
           join metricsmith.alert_notifications n on n.id = d.notification_id order by d.id""").fetchall()]


def test_webhook_down_three_times_delivered_on_the_fourth_with_a_valid_signature(
        alerts_db: psycopg.Connection[Any], receiver: fx.Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "s3cret-from-the-environment"
    monkeypatch.setenv("ALERTS_TEST_SECRET", secret)
    receiver.fail_first = 3
    ruleset = parse_text(f"""channels:
  hook: {{type: webhook, url: '{receiver.url}/hook', secret_env: ALERTS_TEST_SECRET, retries: 5, backoff: 0.05}}
rules:
{RULE % 'hook'}
""", "test.yml")
    _crossing(alerts_db)
    evaluate(ruleset, now=NOW, schema=fx.SCHEMA, drain_seconds=10)
    assert receiver.answered == [503, 503, 503, 200]
    attempts = _attempts(alerts_db)
    assert [(a[1], a[2], a[3]) for a in attempts] == [(1, False, 503), (2, False, 503), (3, False, 503), (4, True, 200)]
    gaps = [(b[4] - a[4]).total_seconds() for a, b in zip(attempts, attempts[1:], strict=False)]
    assert all(gap >= 0.05 * 2 ** i for i, gap in enumerate(gaps))  # exponential backoff (lower bounds)
    assert fx.notifications(alerts_db) == [("low-day", "firing", "delivered")]
    for request in receiver.requests:  # every attempt carried the same signed body
        expected = "sha256=" + hmac.new(secret.encode(), request.body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(request.headers["X-Metricsmith-Signature"], expected)
        assert request.json["status"] == "firing" and request.json["text"]


def test_a_channel_that_stays_down_does_not_block_the_others(
        alerts_db: psycopg.Connection[Any], receiver: fx.Receiver, capsys: pytest.CaptureFixture[str]) -> None:
    dead = f"http://127.0.0.1:{fx.free_port()}"
    ruleset = parse_text(f"""channels:
  dead: {{type: webhook, url: '{dead}/hook', retries: 2, backoff: 0.01, timeout: 2}}
  hook: {{type: webhook, url: '{receiver.url}/hook'}}
rules:
{RULE % 'dead, hook'}
""", "test.yml")
    _crossing(alerts_db)
    result = evaluate(ruleset, now=NOW, schema=fx.SCHEMA, drain_seconds=5)
    assert [r.json["rule"] for r in receiver.delivered()] == ["low-day"]
    assert result.delivery is not None and len(result.delivery.given_up) == 1
    failed = [a for a in _attempts(alerts_db) if not a[2]]
    assert [(a[0], a[1]) for a in failed] == [("dead", 1), ("dead", 2), ("dead", 3)]
    args = argparse.Namespace(failed=True, limit=10, json=False, file=None)
    assert cli.cmd_deliveries(args) == 1
    out = capsys.readouterr().out
    assert out.count("-> dead attempt") == 3 and "cannot reach" in out and "[failed]" in out


def test_alertmanager_receives_firing_then_resolved(alerts_db: psycopg.Connection[Any], receiver: fx.Receiver) -> None:
    ruleset = parse_text(f"""channels:
  am: {{type: alertmanager, url: '{receiver.url}/'}}
rules:
  - {{name: low-day, kind: metric_threshold, grain: day, expr: 'total_events < 10', severity: critical,
      labels: {{team: growth}}, channels: [am]}}
""", "test.yml")
    _crossing(alerts_db)
    evaluate(ruleset, now=NOW, schema=fx.SCHEMA)
    _crossing(alerts_db, 50)
    evaluate(ruleset, now=NOW, schema=fx.SCHEMA)
    posts = receiver.delivered()
    assert [p.path for p in posts] == ["/api/v2/alerts", "/api/v2/alerts"]
    [firing], [resolved] = posts[0].json, posts[1].json
    assert firing["labels"] == {"alertname": "low-day", "severity": "critical", "team": "growth", "grain": "day",
                                "metric": "total_events"}
    assert "endsAt" not in firing and firing["startsAt"]
    assert resolved["labels"] == firing["labels"] and resolved["endsAt"] >= resolved["startsAt"]


def test_email_over_smtp(alerts_db: psycopg.Connection[Any], smtp_sink: tuple[fx.SmtpSink, int]) -> None:
    sink, port = smtp_sink
    ruleset = parse_text(f"""channels:
  mail: {{type: email, host: 127.0.0.1, port: {port}, from: alerts@example.com, to: [oncall@example.com]}}
rules:
{RULE % 'mail'}
""", "test.yml")
    _crossing(alerts_db)
    evaluate(ruleset, now=NOW, schema=fx.SCHEMA)
    evaluate(ruleset, now=NOW, schema=fx.SCHEMA)
    _crossing(alerts_db, 50)
    evaluate(ruleset, now=NOW, schema=fx.SCHEMA)
    assert [(to, m["Subject"]) for to, m in sink.messages] == [
        (["oncall@example.com"], "[FIRING] [warning] low-day"), (["oncall@example.com"], "[RESOLVED] [warning] low-day")]
    assert "total_events = 3" in sink.messages[0][1].get_content()


def test_missing_secret_is_a_recorded_failed_attempt(alerts_db: psycopg.Connection[Any], receiver: fx.Receiver,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ALERTS_TEST_SECRET", raising=False)
    ruleset = parse_text(f"""channels:
  hook: {{type: webhook, url: '{receiver.url}/hook', secret_env: ALERTS_TEST_SECRET, retries: 0}}
rules:
{RULE % 'hook'}
""", "test.yml")
    _crossing(alerts_db)
    evaluate(ruleset, now=NOW, schema=fx.SCHEMA)
    assert receiver.requests == []
    [error] = [r[0] for r in alerts_db.execute("select error from metricsmith.alert_deliveries").fetchall()]
    assert error == "environment variable ALERTS_TEST_SECRET is not set"


def test_a_hanging_channel_does_not_hold_up_another_one(alerts_db: psycopg.Connection[Any],
                                                        receiver: fx.Receiver) -> None:
    import socket

    with socket.socket() as hang:  # accepts connections (backlog) and never answers
        hang.bind(("127.0.0.1", 0))
        hang.listen(8)
        port = hang.getsockname()[1]
        ruleset = parse_text(f"""channels:
  a-hanging: {{type: webhook, url: 'http://127.0.0.1:{port}/hook', retries: 0, timeout: 5}}
  b-hook: {{type: webhook, url: '{receiver.url}/hook'}}
rules:
{RULE % 'a-hanging, b-hook'}
""", "test.yml")
        _crossing(alerts_db)
        result = evaluate(ruleset, now=NOW, schema=fx.SCHEMA)
    assert result.delivery is not None and len(result.delivery.delivered) == 1 and len(result.delivery.given_up) == 1
    # recorded in the order the attempts ended: the good channel did not wait for the hanging one
    order = [(a[0], a[2]) for a in _attempts(alerts_db)]
    assert order == [("b-hook", True), ("a-hanging", False)]
