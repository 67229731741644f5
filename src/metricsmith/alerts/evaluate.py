"""One evaluation of the rules: observe, move incidents, queue notifications, then deliver.

One evaluation at a time per database: the observe-and-apply part holds the advisory lock
``metricsmith.alerts.evaluate`` (:mod:`metricsmith.core.pglock`); a second evaluator waits for
it (``lock_wait_seconds``) and then sees the incidents the first one wrote, so two evaluators at
once notify once. Delivery happens after the lock is released. A rule whose source fails (a
mart not built, Redis down) is reported and its incidents are left as they are.

Entry points: :func:`evaluate` (CLI ``metricsmith alerts evaluate``, the ``alerts-evaluate``
flow), :func:`after_job_run` (called by the job runner with the finished run, never raises),
:func:`list_incidents` (plain dicts, for the HTTP API).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
import redis
from psycopg.rows import dict_row

from metricsmith import db
from metricsmith.alerts import conditions, delivery, incidents
from metricsmith.alerts.errors import AlertRuleError
from metricsmith.alerts.rules import Rule, RuleSet, default_path, load_file
from metricsmith.config import Settings, load_settings
from metricsmith.core.pglock import AdvisoryLock
from metricsmith.core.schema import marts_schema
from metricsmith.errors import UserFacingError, one_line

LOCK = AdvisoryLock("metricsmith.alerts.evaluate", purpose="alert evaluation")
#: rule kinds that depend on the clock only: the every-minute deployment's concern
TIME_KINDS = ("job_overdue", "data_stale", "realtime_threshold")
log = logging.getLogger("metricsmith.alerts")


@dataclass
class EvaluationResult:
    evaluated_at: datetime
    rules: int = 0
    changes: list[incidents.Change] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    skipped: str | None = None
    delivery: delivery.DeliveryReport | None = None

    def render(self) -> str:
        if self.skipped:
            return f"alerts: skipped ({self.skipped})"
        lines = [f"alerts: {self.rules} rule(s) evaluated at {self.evaluated_at:%Y-%m-%d %H:%M:%S} UTC"]
        for c in self.changes:
            note = " (notified)" if c.notified else ""
            lines.append(f"  {c.event.upper():<8} {c.rule} {_labels(c.labels)}{note}: {c.summary}")
        for rule, error in self.errors.items():
            lines.append(f"  ERROR    {rule}: {error}")
        if self.delivery is not None:
            lines.append(f"  delivery: {self.delivery.render()}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"evaluated_at": self.evaluated_at.isoformat(), "rules": self.rules, "skipped": self.skipped,
                "changes": [c.__dict__ for c in self.changes], "errors": self.errors,
                "delivered": len(self.delivery.delivered) if self.delivery else 0}


def _labels(labels: dict[str, str]) -> str:
    return "{" + ", ".join(f"{k}={v}" for k, v in labels.items()) + "}"


def _observe(rule: Rule, ctx: conditions.Context) -> list[conditions.Observation]:
    try:
        return conditions.observe(rule, ctx)
    except (psycopg.Error, redis.RedisError, UserFacingError, OSError, ValueError) as exc:
        raise _RuleFailed(one_line(f"{type(exc).__name__}: {exc}")) from exc


class _RuleFailed(Exception):
    pass


def _evaluate_rules(conn: psycopg.Connection[Any], ruleset: RuleSet, result: EvaluationResult,
                    ctx: conditions.Context, kinds: tuple[str, ...] | None) -> None:
    for rule in ruleset.rules:
        if kinds is not None and rule.kind not in kinds:
            continue
        result.rules += 1
        try:
            observations = _observe(rule, ctx)
        except _RuleFailed as exc:
            result.errors[rule.name] = str(exc)
            continue
        result.changes += incidents.apply(conn, rule, observations, ctx.now)


def evaluate(ruleset: RuleSet | None = None, *, settings: Settings | None = None, now: datetime | None = None,
             schema: str | None = None, kinds: tuple[str, ...] | None = None, deliver: bool = True,
             lock_wait_seconds: float = 60.0, drain_seconds: float = 0.0,
             connect_timeout: int = 10) -> EvaluationResult:
    """Evaluate ``ruleset`` (default: the rule file) as of ``now``; ``kinds`` limits the rule kinds."""
    ruleset = ruleset if ruleset is not None else load_file()
    settings = settings or load_settings()
    now = (now or datetime.now(UTC)).astimezone(UTC)
    result = EvaluationResult(evaluated_at=now)
    with db.connect(settings, autocommit=True, connect_timeout=connect_timeout) as conn:
        if not LOCK.acquire(conn, lock_wait_seconds):
            result.skipped = f"another alert evaluation held the lock for {lock_wait_seconds:.0f} s"
            return result
        ctx = conditions.Context(conn, now, schema or marts_schema(), settings)
        try:
            _evaluate_rules(conn, ruleset, result, ctx, kinds)
        finally:
            LOCK.release(conn)
            if ctx.realtime is not None:
                ctx.realtime.close()
        if deliver:
            result.delivery = delivery.deliver_due(conn, ruleset.channels, drain_seconds=drain_seconds,
                                                  settings=settings)
    return result


def after_job_run(result: Any, *, settings: Settings | None = None) -> EvaluationResult | None:
    """Evaluate the rules after a job run whose job-log row is final (``result``: the runner's
    JobResult). Never raises: a bad rule file, an unreachable database or channel must not fail
    the job (nor hold it up long: a 3 s connect timeout). No rule file (``METRICSMITH_ALERTS_FILE``
    naming a missing file, or no ``alerts.yml``) means no alerting."""
    job = getattr(result, "job_name", "?")
    path = default_path()
    if not path.is_file():
        return None
    try:
        outcome = evaluate(load_file(path), settings=settings, connect_timeout=3)
    except AlertRuleError as exc:
        log.error("alerts not evaluated after %s: %s", job, exc)
        return None
    except Exception as exc:  # noqa: BLE001 - alerting is a side effect of the job, never its failure
        log.error("alerts not evaluated after %s: %s", job, one_line(f"{type(exc).__name__}: {exc}"))
        return None
    log.info("alerts after %s: %s", job, outcome.render())
    return outcome


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def list_incidents(conn: psycopg.Connection[Any], state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """Incidents newest first (``state``: PENDING, FIRING or RESOLVED), as JSON-ready dicts,
    each with ``silenced_until`` (the end of a silence of its rule in force now, or None)."""
    if state is not None and state.upper() not in ("PENDING", "FIRING", "RESOLVED"):
        raise UserFacingError(f"unknown incident state {state!r}: use PENDING, FIRING or RESOLVED")
    cur = conn.cursor(row_factory=dict_row)
    rows = cur.execute(
        f"""select i.id, i.rule, i.fingerprint, i.labels, i.severity, i.state, i.first_seen, i.last_seen,
                   i.fired_at, i.value, i.summary, i.notified_at, i.resolved_at,
                   (select max(s.ends_at) from {incidents.SILENCES} s
                     where s.rule = i.rule and s.starts_at <= now() and s.ends_at > now()) as silenced_until
            from {incidents.INCIDENTS} i where %(state)s::text is null or i.state = %(state)s::text
            order by coalesce(i.resolved_at, i.last_seen) desc, i.id desc limit %(limit)s""",
        {"state": state.upper() if state else None, "limit": limit}).fetchall()
    return [{k: _plain(v) for k, v in row.items()} for row in rows]
