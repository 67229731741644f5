"""What the alerts tests share: a real local HTTP receiver, a real local SMTP sink, a private
marts schema, and a clean slate of alert tables (only the alerts tests write them)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
import pytest
from aiosmtpd.controller import Controller

#: the tests' own marts schema (the dbt marts of other modules are never touched)
SCHEMA = "alerts_test_marts"


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """An HTTP server on 127.0.0.1 recording every POST; the first ``fail_first`` get HTTP 503."""

    fail_first: int = 0
    requests: list[Received] = field(default_factory=list)
    answered: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def delivered(self) -> list[Received]:
        """The requests answered 200."""
        with self.lock:
            return [r for r, code in zip(self.requests, self.answered, strict=True) if code == 200]


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with receiver.lock:
                receiver.requests.append(Received(self.path, dict(self.headers.items()), body))
                code = 503 if len(receiver.requests) <= receiver.fail_first else 200
                receiver.answered.append(code)
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    rec.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(rec))
    thread = threading.Thread(target=rec.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield rec
    finally:
        rec.server.shutdown()
        rec.server.server_close()


class SmtpSink:
    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's name
        self.messages.append((envelope.rcpt_tos, message_from_bytes(envelope.content, policy=policy.default)))
        return "250 OK"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture()
def smtp_sink() -> Iterator[tuple[SmtpSink, int]]:
    sink = SmtpSink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield sink, port
    finally:
        controller.stop()


@pytest.fixture()
def alerts_db(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    """Empty alert tables and an empty private marts schema."""
    conn.execute("truncate metricsmith.alert_deliveries, metricsmith.alert_notifications, "
                 "metricsmith.alert_incidents, metricsmith.alert_silences restart identity cascade")
    conn.execute(f"drop schema if exists {SCHEMA} cascade")
    conn.execute(f"create schema {SCHEMA}")
    conn.execute(f"""create table {SCHEMA}.daily_metrics (metric_date date primary key, total_events bigint,
                     active_users bigint, revenue_cents bigint)""")
    conn.execute(f"""create table {SCHEMA}.weekly_metrics (week_start date primary key, week_end date,
                     is_complete boolean, total_events bigint, revenue_cents bigint, revenue_cents_wow_pct numeric)""")
    conn.execute(f"""create table {SCHEMA}.custom_metric_values (metric_slug text, metric_version int, grain text,
                     period_start date, dimensions jsonb, value numeric, previous_value numeric, growth_pct numeric)""")
    return conn


def notifications(conn: psycopg.Connection[Any]) -> list[tuple[str, str, str]]:
    """(rule, event, status) of every queued notification, oldest first."""
    return [tuple(r) for r in conn.execute(  # type: ignore[misc]
        "select payload->>'rule', event, status from metricsmith.alert_notifications order by id").fetchall()]
