"""Incidents in ``metricsmith.alert_incidents``: one open incident per rule and labels fingerprint.

States: PENDING (the condition holds, ``for:`` not yet satisfied; deleted if it clears) ->
FIRING -> RESOLVED. Notifications are queued in ``metricsmith.alert_notifications`` in the
same transaction as the state change that causes them, one row per (incident, event, channel)
under a unique key, so an incident queues exactly one ``firing`` and at most one ``resolved``
notification however often (and by however many evaluators) it is evaluated:

- FIRING and not yet notified and the rule is not silenced -> queue ``firing``, set ``notified_at``
  (a silence that ends while the condition still holds notifies then);
- FIRING and the condition false -> ``cleared_since``; once it has stayed false for the rule's
  ``resolve_after`` -> RESOLVED, and ``resolved`` is queued if ``firing`` was.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from metricsmith.alerts import templates
from metricsmith.alerts.conditions import Observation
from metricsmith.alerts.errors import ExpressionError
from metricsmith.alerts.rules import Rule

log = logging.getLogger("metricsmith.alerts")
INCIDENTS = "metricsmith.alert_incidents"
NOTIFICATIONS = "metricsmith.alert_notifications"
SILENCES = "metricsmith.alert_silences"


@dataclass(frozen=True)
class Change:
    """What an evaluation did to one incident (``event``: pending, firing, resolved, cleared)."""

    rule: str
    incident_id: int
    event: str
    labels: dict[str, str]
    summary: str
    notified: bool = False


def fingerprint(labels: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(labels, sort_keys=True).encode()).hexdigest()[:20]


def silenced(conn: psycopg.Connection[Any], rule: str, now: datetime) -> bool:
    row = conn.execute(f"select exists (select 1 from {SILENCES} where rule = %s and starts_at <= %s and ends_at > %s)",
                       (rule, now, now)).fetchone()
    return bool(row and row[0])


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def payload(rule: Rule, incident: dict[str, Any], event: str) -> dict[str, Any]:
    """The JSON a channel receives (the webhook body; the others are made from it)."""
    labels = {**rule.labels, **incident["labels"]}
    fields = {"rule": rule.name, "kind": rule.kind, "severity": rule.severity, "status": event,
              "labels": labels, "value": incident["value"],
              "threshold": rule.expr.threshold if rule.expr else None,
              "expr": str(rule.expr) if rule.expr else None, "summary": incident["summary"],
              "started_at": _iso(incident["fired_at"]), "resolved_at": _iso(incident["resolved_at"]),
              "description": rule.description}
    try:
        message = templates.render(rule.message, fields)
    except ExpressionError as exc:
        message = templates.render(templates.DEFAULT_MESSAGE, fields) + f" (message template failed: {exc})"
    return {"version": 1, **fields, "message": message, "text": message,
            "incident_id": incident["id"], "fingerprint": incident["fingerprint"]}


def _queue(conn: psycopg.Connection[Any], rule: Rule, incident: dict[str, Any], event: str) -> None:
    body = Jsonb(payload(rule, incident, event))
    for channel in rule.channels:
        conn.execute(f"""insert into {NOTIFICATIONS} (incident_id, event, channel, payload) values (%s, %s, %s, %s)
                         on conflict (incident_id, event, channel) do nothing""",
                     (incident["id"], event, channel, body))


def _set(conn: psycopg.Connection[Any], incident: dict[str, Any], **changes: Any) -> None:
    incident.update(changes)
    cols = ", ".join(f"{k} = %({k})s" for k in changes)
    conn.execute(f"update {INCIDENTS} set {cols} where id = %(id)s", {**changes, "id": incident["id"]})


def _open(conn: psycopg.Connection[Any], rule: Rule, fp: str, obs: Observation, now: datetime) -> dict[str, Any]:
    cur = conn.cursor(row_factory=dict_row)
    row = cur.execute(
        f"""insert into {INCIDENTS} (rule, fingerprint, labels, severity, state, first_seen, last_seen, value, summary)
            values (%s, %s, %s, %s, 'PENDING', %s, %s, %s, %s) returning *""",
        (rule.name, fp, Jsonb(obs.labels), rule.severity, now, now, obs.value, obs.summary)).fetchone()
    assert row is not None
    return row


def _holds(conn: psycopg.Connection[Any], rule: Rule, inc: dict[str, Any], obs: Observation, now: datetime,
           quiet: bool) -> list[Change]:
    changes: list[Change] = []
    _set(conn, inc, last_seen=now, value=obs.value, summary=obs.summary, cleared_since=None)
    if inc["state"] == "PENDING" and (now - inc["first_seen"]).total_seconds() >= rule.for_seconds:
        _set(conn, inc, state="FIRING", fired_at=now)
        changes.append(Change(rule.name, inc["id"], "firing", obs.labels, obs.summary))
    if inc["state"] == "FIRING" and inc["notified_at"] is None and not quiet:
        _set(conn, inc, notified_at=now)
        _queue(conn, rule, inc, "firing")
        changes = [c for c in changes if c.event != "firing"]
        changes.append(Change(rule.name, inc["id"], "firing", obs.labels, obs.summary, notified=True))
    elif inc["state"] == "PENDING" and not changes:
        changes.append(Change(rule.name, inc["id"], "pending", obs.labels, obs.summary))
    return changes


def _clears(conn: psycopg.Connection[Any], rule: Rule, inc: dict[str, Any], obs: Observation | None,
            now: datetime) -> list[Change]:
    summary = obs.summary if obs is not None else "the condition no longer applies"
    if inc["state"] == "PENDING":
        conn.execute(f"delete from {INCIDENTS} where id = %s", (inc["id"],))
        return []
    cleared = inc["cleared_since"] or now
    if (now - cleared).total_seconds() < rule.resolve_after:
        _set(conn, inc, cleared_since=cleared, summary=summary, value=obs.value if obs else inc["value"])
        return [Change(rule.name, inc["id"], "cleared", inc["labels"], summary)]
    _set(conn, inc, state="RESOLVED", resolved_at=now, cleared_since=cleared, summary=summary,
         value=obs.value if obs else inc["value"])
    notify = inc["notified_at"] is not None
    if notify:
        _queue(conn, rule, inc, "resolved")
    return [Change(rule.name, inc["id"], "resolved", inc["labels"], summary, notified=notify)]


def apply(conn: psycopg.Connection[Any], rule: Rule, observations: list[Observation], now: datetime) -> list[Change]:
    """Move the rule's incidents to match ``observations`` (one transaction); what changed."""
    with conn.transaction():
        cur = conn.cursor(row_factory=dict_row)
        open_rows = {r["fingerprint"]: r for r in cur.execute(
            f"select * from {INCIDENTS} where rule = %s and state <> 'RESOLVED' for update", (rule.name,)).fetchall()}
        quiet = silenced(conn, rule.name, now)
        changes: list[Change] = []
        seen: dict[str, Observation] = {fingerprint(o.labels): o for o in observations}
        for fp, obs in seen.items():
            if obs.active:
                inc = open_rows.get(fp) or _open(conn, rule, fp, obs, now)
                changes += _holds(conn, rule, inc, obs, now, quiet)
        for fp, inc in open_rows.items():
            current = seen.get(fp)
            if current is None or not current.active:
                changes += _clears(conn, rule, inc, current, now)
    return changes
