"""Delivering queued notifications: at least once, one recorded attempt at a time.

:func:`deliver_due` claims one due ``pending`` row of ``metricsmith.alert_notifications`` at a
time (``for update skip locked``: two deliverers never send the same row at once), tries its
channel once, records the attempt in ``metricsmith.alert_deliveries`` (ok, HTTP status, error,
duration) and, in the same transaction, marks the row ``delivered``, schedules the next
attempt after the channel's exponential backoff (``backoff * 2^(n-1)``, capped at
``max_backoff``), or gives up (``failed``) after the channel's attempts. Each attempt is
bounded by the channel's timeout, and each channel with due rows is served by its own thread
and connection, oldest-due first, so a channel that stays down only delays its own rows: it
never blocks evaluation (which only queues) nor the other channels. Rows not yet due wait for
the next call (every evaluation delivers), or for ``drain_seconds`` when the caller asks to wait.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.rows import dict_row

from metricsmith import db
from metricsmith.alerts import channels
from metricsmith.alerts.channels_spec import ChannelSpec
from metricsmith.config import Settings
from metricsmith.errors import one_line

log = logging.getLogger("metricsmith.alerts")

NOTIFICATIONS = "metricsmith.alert_notifications"
DELIVERIES = "metricsmith.alert_deliveries"


@dataclass
class DeliveryReport:
    """What one delivery pass did: notification ids (lists, appended to by one thread per channel)."""

    delivered: list[int] = field(default_factory=list)
    #: one entry per failed attempt
    failed: list[int] = field(default_factory=list)
    given_up: list[int] = field(default_factory=list)

    @property
    def failed_attempts(self) -> int:
        return len(self.failed)

    def render(self) -> str:
        return (f"{len(self.delivered)} notification(s) delivered, {self.failed_attempts} failed attempt(s), "
                f"{len(self.given_up)} given up")


def _claim(conn: psycopg.Connection[Any], channel: str) -> dict[str, Any] | None:
    cur = conn.cursor(row_factory=dict_row)
    return cur.execute(f"""select * from {NOTIFICATIONS}
                           where status = 'pending' and channel = %s and next_attempt_at <= clock_timestamp()
                           order by next_attempt_at, id limit 1 for update skip locked""", (channel,)).fetchone()


def _attempt(conn: psycopg.Connection[Any], row: dict[str, Any], spec: ChannelSpec | None,
             report: DeliveryReport) -> None:
    number = int(row["attempts"]) + 1
    started = time.monotonic()
    status_code: int | None = None
    error: str | None = None
    try:
        if spec is None:
            raise channels.DeliveryError(f"channel {row['channel']!r} is no longer declared in the rule file")
        status_code = channels.send(spec, row["payload"])
    except channels.DeliveryError as exc:
        error, status_code = one_line(str(exc)), exc.status_code
    except Exception as exc:  # noqa: BLE001 - any failure of one attempt is recorded, never raised
        error = one_line(f"{type(exc).__name__}: {exc}")
    ms = int((time.monotonic() - started) * 1000)
    conn.execute(f"""insert into {DELIVERIES} (notification_id, attempt, ok, status_code, error, duration_ms)
                     values (%s, %s, %s, %s, %s, %s)""", (row["id"], number, error is None, status_code, error, ms))
    attempts_allowed = spec.attempts if spec is not None else 1
    if error is None:
        conn.execute(f"update {NOTIFICATIONS} set status = 'delivered', attempts = %s, delivered_at = clock_timestamp() "
                     "where id = %s", (number, row["id"]))
        report.delivered.append(int(row["id"]))
        return
    report.failed.append(int(row["id"]))
    if number >= attempts_allowed:
        conn.execute(f"update {NOTIFICATIONS} set status = 'failed', attempts = %s where id = %s", (number, row["id"]))
        report.given_up.append(int(row["id"]))
        return
    assert spec is not None
    conn.execute(f"""update {NOTIFICATIONS} set attempts = %s,
                         next_attempt_at = clock_timestamp() + make_interval(secs => %s) where id = %s""",
                 (number, spec.delay(number), row["id"]))


def _next_due_in(conn: psycopg.Connection[Any], channel: str) -> float | None:
    row = conn.execute(f"""select extract(epoch from min(next_attempt_at) - clock_timestamp())::float8
                           from {NOTIFICATIONS} where status = 'pending' and channel = %s""", (channel,)).fetchone()
    return None if row is None or row[0] is None else max(0.0, float(row[0]))


def _deliver_channel(conn: psycopg.Connection[Any], channel: str, spec: ChannelSpec | None, deadline: float,
                     limit: int, report: DeliveryReport) -> None:
    for _ in range(limit):
        with conn.transaction():
            row = _claim(conn, channel)
            if row is not None:
                _attempt(conn, row, spec, report)
                continue
        wait = _next_due_in(conn, channel)
        if wait is None or time.monotonic() + wait > deadline:
            return
        time.sleep(min(wait, 1.0) + 0.005)


def _in_thread(settings: Settings | None, channel: str, spec: ChannelSpec | None, deadline: float, limit: int,
               report: DeliveryReport) -> None:
    try:
        with db.connect(settings, autocommit=True) as conn:
            _deliver_channel(conn, channel, spec, deadline, limit, report)
    except psycopg.Error as exc:  # the rows stay pending: the next pass delivers them
        log.error("alerts: delivery to %s stopped: %s", channel, one_line(str(exc)))


def deliver_due(conn: psycopg.Connection[Any], specs: dict[str, ChannelSpec], *, drain_seconds: float = 0.0,
                limit: int = 1000, settings: Settings | None = None) -> DeliveryReport:
    """Attempt every due notification once (``conn``: autocommit), one thread per channel when
    several have due rows; with ``drain_seconds`` also wait for retries falling due in that time."""
    report = DeliveryReport()
    deadline = time.monotonic() + drain_seconds
    pending = [str(r[0]) for r in conn.execute(
        f"select distinct channel from {NOTIFICATIONS} where status = 'pending' order by 1").fetchall()]
    if len(pending) == 1:
        _deliver_channel(conn, pending[0], specs.get(pending[0]), deadline, limit, report)
        return report
    threads = [threading.Thread(target=_in_thread, name=f"alerts-deliver-{c}",
                                args=(settings, c, specs.get(c), deadline, limit, report)) for c in pending]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return report


def recent(conn: psycopg.Connection[Any], *, failed_only: bool = False, limit: int = 50) -> list[dict[str, Any]]:
    """Newest attempts first, with their notification (rule, event, channel, status)."""
    cur = conn.cursor(row_factory=dict_row)
    return cur.execute(
        f"""select d.attempted_at, n.payload->>'rule' as rule, n.event, n.channel, d.attempt, d.ok, d.status_code,
                   d.error, d.duration_ms, n.status as notification_status, n.id as notification_id
            from {DELIVERIES} d join {NOTIFICATIONS} n on n.id = d.notification_id
            where not %s or not d.ok order by d.attempted_at desc, d.id desc limit %s""",
        (failed_only, limit)).fetchall()
