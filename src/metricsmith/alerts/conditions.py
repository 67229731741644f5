"""What each rule kind observes: one :class:`Observation` per labels set, true or false now.

The sources: the job log (``job_failed``: the newest *final* row per job, so a run still
retrying never alerts; ``job_overdue``: the schedule of :mod:`metricsmith.orchestration.schedules`);
the marts of :mod:`metricsmith.grains` in the marts' schema (``data_stale``, ``metric_threshold``
over the newest complete periods: ``for: N periods`` means the N newest must all cross);
``custom_metric_values`` (the newest version of the metric, per dimensions set, filtered by the
rule's ``dimensions``); the realtime service on Redis (``realtime_threshold``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import psycopg
from cronsim import CronSim
from psycopg import sql

from metricsmith import grains
from metricsmith.alerts.rules import Rule
from metricsmith.config import Settings
from metricsmith.core.status import JobStatus
from metricsmith.orchestration.joblog import TABLE as JOB_LOG
from metricsmith.orchestration.schedules import SCHEDULES
from metricsmith.realtime.registry import BUILTINS
from metricsmith.realtime.service import RealtimeMetricsService


@dataclass(frozen=True)
class Observation:
    labels: dict[str, str]
    active: bool
    summary: str
    value: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Context:
    conn: psycopg.Connection[Any]
    now: datetime
    schema: str
    settings: Settings
    realtime: Any = None  # a RealtimeMetricsService, made on first use

    def service(self) -> Any:
        """A read-only realtime service: it writes nothing to Redis (declaring would set the
        ``rt:alive`` marker, hiding a Redis that lost its data from the snapshot's restore); the
        built-in series are known locally, the others from the registry in Redis."""
        if self.realtime is None:
            stamp = self.now.timestamp()
            self.realtime = RealtimeMetricsService(self.settings, clock=lambda: stamp, declare_builtins=False)
            for spec in BUILTINS:
                self.realtime.registry.add(spec)
        return self.realtime


def schedule_of(job: str) -> str | None:
    """The cron of a scheduled job, or None."""
    return SCHEDULES.get(job)


def _num(value: Any) -> float | None:
    return None if value is None else float(value)


def job_failed(rule: Rule, ctx: Context) -> list[Observation]:
    rows = ctx.conn.execute(
        f"""select distinct on (job_name) job_name, status::text, attempt, error_message, id
            from {JOB_LOG}
            where status <> 'RUNNING' and not coalesce((details->>'skipped')::boolean, false)
              and (%(job)s::text is null or job_name = %(job)s::text) and finished_at <= %(now)s
            order by job_name, finished_at desc, id desc""",
        {"job": rule.job, "now": ctx.now},
    ).fetchall()
    out = []
    for job, status, attempt, error, row_id in rows:
        failed = JobStatus(status).failed
        summary = (f"{job} run {row_id} ended {status} after {attempt} attempt(s): {error or 'no message'}"
                   if failed else f"{job} run {row_id} completed")
        out.append(Observation({"job": job}, failed, summary, None, {"log_id": row_id, "error": error}))
    if rule.job is not None and not rows:
        out.append(Observation({"job": rule.job}, False, f"{rule.job} has not run yet"))
    return out


def job_overdue(rule: Rule, ctx: Context) -> list[Observation]:
    assert rule.job is not None
    cron = schedule_of(rule.job)
    if cron is None:
        return []
    due = next(CronSim(cron, ctx.now.replace(tzinfo=None), reverse=True))
    if ctx.now.replace(tzinfo=None) < due + timedelta(seconds=rule.within):
        due = next(CronSim(cron, due, reverse=True))
    due = due.replace(tzinfo=ctx.now.tzinfo)
    row = ctx.conn.execute(
        f"""select max(finished_at) from {JOB_LOG} where job_name = %s and status = 'COMPLETED'
              and finished_at >= %s and finished_at <= %s""", (rule.job, due, ctx.now)).fetchone()
    done = row is not None and row[0] is not None
    late = (ctx.now - due).total_seconds() / 60
    summary = (f"{rule.job} completed at {row[0]:%Y-%m-%d %H:%M} UTC after its schedule of {due:%Y-%m-%d %H:%M}"
               if done and row else f"no successful run of {rule.job} since its schedule of "
                                    f"{due:%Y-%m-%d %H:%M} UTC ({late:.0f} min ago, allowed {rule.within // 60} min)")
    return [Observation({"job": rule.job}, not done, summary, round(late, 1))]


def _exists(ctx: Context, table: str) -> bool:
    row = ctx.conn.execute("select to_regclass(%s) is not null", (f"{ctx.schema}.{table}",)).fetchone()
    return bool(row and row[0])


def promised(grain: grains.Grain, now: datetime, grace_seconds: int) -> date:
    """The newest period the grain's mart must hold at ``now``: the last complete one (after grace)."""
    current = grain.start_of((now - timedelta(seconds=grace_seconds)).date())
    return grain.start_of(current - timedelta(days=1))


def data_stale(rule: Rule, ctx: Context) -> list[Observation]:
    out = []
    for grain in [grains.get(rule.grain)] if rule.grain else list(grains.load()):
        want = promised(grain, ctx.now, rule.grace)
        latest = None
        if _exists(ctx, grain.model):
            query = sql.SQL("select max({}) from {}.{}").format(
                sql.Identifier(grain.start_column), sql.Identifier(ctx.schema), sql.Identifier(grain.model))
            row = ctx.conn.execute(query).fetchone()
            latest = row[0] if row else None
        stale = latest is None or latest < want
        summary = f"{grain.model}: latest {grain.start_column} {latest or 'none'}, promised {want}"
        out.append(Observation({"grain": grain.name}, stale, summary, None, {"latest": str(latest), "promised": str(want)}))
    return out


def _crossing(rule: Rule, rows: list[tuple[date, Any]], labels: dict[str, str], what: str) -> Observation:
    assert rule.expr is not None
    column = rule.expr.operand.name
    newest = rows[:rule.for_periods]
    judged = [(p, _num(v)) for p, v in newest]
    crossing = [p for p, v in judged if v is not None and rule.expr.holds(v)]
    active = len(judged) == rule.for_periods and len(crossing) == rule.for_periods
    if not judged:
        return Observation(labels, False, f"{what}: no complete period yet")
    period, value = judged[0]
    summary = (f"{what}: {column} = {value if value is None else f'{value:g}'} for the {rule.grain} of {period} "
               f"({rule.expr}); {len(crossing)} of the newest {rule.for_periods} period(s) cross")
    return Observation(labels, active, summary, value, {"period_start": str(period)})


def _core_threshold(rule: Rule, ctx: Context) -> list[Observation]:
    assert rule.expr is not None and rule.grain is not None
    grain = grains.get(rule.grain)
    labels = {"grain": grain.name, "metric": rule.expr.operand.name}
    if not _exists(ctx, grain.model):
        return [Observation(labels, False, f"{grain.model} is not built yet")]
    # complete periods that had ended by ``now`` (so an evaluation "as of" a past day sees that day's data)
    last_day = sql.Identifier(grain.end_column or grain.start_column)
    complete = (sql.SQL("is_complete and {} < %(today)s") if grain.end_column else sql.SQL("{} < %(today)s")).format(last_day)
    query = sql.SQL("select {start}, {col} from {schema}.{model} where {complete} order by {start} desc limit %(n)s").format(
        start=sql.Identifier(grain.start_column), col=sql.Identifier(rule.expr.operand.name),
        schema=sql.Identifier(ctx.schema), model=sql.Identifier(grain.model), complete=complete)
    rows = ctx.conn.execute(query, {"today": ctx.now.date(), "n": rule.for_periods}).fetchall()
    return [_crossing(rule, [(r[0], r[1]) for r in rows], labels, grain.model)]


def _custom_threshold(rule: Rule, ctx: Context) -> list[Observation]:
    assert rule.expr is not None and rule.grain is not None and rule.custom_metric is not None
    base = {"grain": rule.grain, "custom_metric": rule.custom_metric, "metric": rule.expr.operand.name}
    if not _exists(ctx, "custom_metric_values"):
        return [Observation(base, False, "custom_metric_values is not built yet")]
    query = sql.SQL(
        """select dimensions, period_start, {col} from {schema}.custom_metric_values
           where metric_slug = %(slug)s and grain = %(grain)s and dimensions @> %(dims)s::jsonb
             and metric_version = (select max(metric_version) from {schema}.custom_metric_values
                                   where metric_slug = %(slug)s)
             and period_start < %(current)s
           order by dimensions::text, period_start desc""").format(
        col=sql.Identifier(rule.expr.operand.name), schema=sql.Identifier(ctx.schema))
    current = grains.get(rule.grain).start_of(ctx.now.date())
    rows = ctx.conn.execute(query, {"slug": rule.custom_metric, "grain": rule.grain,
                                    "dims": json.dumps(rule.dimensions), "current": current}).fetchall()
    groups: dict[str, list[tuple[date, Any]]] = {}
    dims_of: dict[str, dict[str, Any]] = {}
    for dims, period, value in rows:
        key = json.dumps(dims, sort_keys=True)
        groups.setdefault(key, []).append((period, value))
        dims_of[key] = dims
    return [_crossing(rule, periods, {**base, **{k: str(v) for k, v in dims_of[key].items()}},
                      f"custom metric {rule.custom_metric} {key}") for key, periods in groups.items()]


def metric_threshold(rule: Rule, ctx: Context) -> list[Observation]:
    return _custom_threshold(rule, ctx) if rule.custom_metric else _core_threshold(rule, ctx)


def realtime_threshold(rule: Rule, ctx: Context) -> list[Observation]:
    assert rule.expr is not None
    operand = rule.expr.operand
    svc = ctx.service()
    if operand.function == "rate":
        value: float | None = svc.get_rate(operand.name, operand.window or 60)
    elif operand.function == "counter":
        value = svc.get_counter(operand.name)
    else:
        value = svc.get_gauge(operand.name)
    labels = {"series": str(operand)}
    if value is None:
        return [Observation(labels, False, f"{operand} has no value yet")]
    value = float(value)
    return [Observation(labels, rule.expr.holds(value), f"{operand} = {value:g} ({rule.expr})", value)]


OBSERVERS: dict[str, Callable[[Rule, Context], list[Observation]]] = {
    "job_failed": job_failed, "job_overdue": job_overdue, "data_stale": data_stale,
    "metric_threshold": metric_threshold, "realtime_threshold": realtime_threshold,
}


def observe(rule: Rule, ctx: Context) -> list[Observation]:
    return OBSERVERS[rule.kind](rule, ctx)
