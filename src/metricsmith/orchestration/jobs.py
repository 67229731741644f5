"""The dbt jobs: what each scheduled flow builds. They run through the one job runner
(:func:`metricsmith.orchestration.runner.run`: lock, job log, stale repair, retries, status).

``run_job(name)`` is the whole behaviour of a flow; the files in ``flows/`` only wrap it. The
jobs come from the grains (:mod:`metricsmith.grains`): ``daily-metrics`` (the incremental build
up to the rollup ledger, so the longer periods of changed days are refreshed in the same pass),
one ``<adjective>-rollup`` per period grain (its mart and what it needs, with the data tests),
and ``backfill`` (a date range and every period above it, set-based). Each attempt holds the
rollups' advisory lock (the one ``metricsmith rollups run`` takes), so CLI rollup runs and
other jobs never interleave. Each ``dbt build`` runs the data tests; the unit tests only when the
project's code changed since the job's last run whose unit tests passed
(:mod:`metricsmith.orchestration.unit_tests`, recorded in ``details.unit_tests``). ``custom-metrics`` (:mod:`metricsmith.custom_metrics.job`) runs
through the same runner; :data:`RUNNABLE_JOBS` is every job ``metricsmith jobs run`` runs.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from metricsmith import db, grains, rollups
from metricsmith.config import Settings, load_settings
from metricsmith.core import dbt as core_dbt
from metricsmith.core import pglock
from metricsmith.core.schema import marts_schema
from metricsmith.errors import UserFacingError
from metricsmith.orchestration import runner
from metricsmith.orchestration import unit_tests as unit_gate
from metricsmith.orchestration.context import in_flow_run
from metricsmith.orchestration.retry import RetryPolicy, is_transient_message
from metricsmith.orchestration.runner import Attempt, JobResult, Outcome

#: the dbt selection that ends at the rollup ledger (every mart, and the rejected-events view)
LEDGER_SELECT = ("+int_rollup_ledger", "stg_events_rejected")
DAILY_JOB = "daily-metrics"
BACKFILL_JOB = "backfill"
#: every active custom metric (:mod:`metricsmith.custom_metrics.job`; after each daily job, or on demand)
CUSTOM_METRICS_JOB = "custom-metrics"


@dataclass(frozen=True)
class JobSpec:
    name: str
    description: str
    #: dbt selection (``dbt build --select ...``)
    select: tuple[str, ...]
    #: the mart models whose rows count as "rows changed"
    marts: tuple[str, ...]
    timeout_seconds: int = 2 * 3600
    needs_period: bool = False
    #: the grain whose mart this job is scheduled to keep fresh (None: backfill)
    grain: str | None = None


def rollup_job_name(grain: grains.Grain) -> str:
    """The job (and flow) that builds a period grain's mart: ``weekly-rollup``, ``quarterly-rollup``."""
    return f"{grain.adjective}-rollup"


def _jobs() -> dict[str, JobSpec]:
    every_mart = tuple(g.model for g in grains.load())
    day = grains.day()
    specs = [JobSpec(DAILY_JOB,
                     f"incremental build of {day.model} and what it needs; closes the rollup ledger, so the "
                     "longer periods of changed days are refreshed too (that is what keeps the incremental "
                     "rollups exact)", select=LEDGER_SELECT, marts=every_mart, grain=day.name)]
    specs += [JobSpec(rollup_job_name(g), f"{g.model} and what it needs, with its data tests",
                      select=(f"+{g.model}",), marts=(day.model, g.model), grain=g.name)
              for g in grains.periods()]
    specs.append(JobSpec(BACKFILL_JOB, "recompute a date range and every period above it (set-based)",
                         select=LEDGER_SELECT, marts=every_mart, timeout_seconds=6 * 3600, needs_period=True))
    return {s.name: s for s in specs}


JOBS: dict[str, JobSpec] = _jobs()
#: the jobs ``metricsmith jobs run`` runs (and whose rows ``jobs log --job`` reads): the dbt jobs, custom-metrics
RUNNABLE_JOBS: tuple[str, ...] = (*JOBS, CUSTOM_METRICS_JOB)


class JobFailed(RuntimeError):
    """Raised by the flows so that Prefect marks the flow run Failed; carries the result and
    its ``summary`` (default :meth:`JobResult.render`)."""

    def __init__(self, result: JobResult, summary: str | None = None) -> None:
        super().__init__(f"{result.job_name} {result.status}: {result.error_message}")
        self.result = result
        self.summary = summary or result.render()


def dbt_args(spec: JobSpec, *, unit_tests: bool = True) -> list[str]:
    """``dbt build`` of the job's selection; ``unit_tests=False``: without the unit tests (the data
    tests still run; :mod:`metricsmith.orchestration.unit_tests` decides)."""
    # cautious: a test that also needs an unselected model (e.g. weekly vs monthly) is left out
    args = ["build", "--select", *spec.select, "--indirect-selection", "cautious"]
    return args if unit_tests else [*args, *unit_gate.EXCLUDE_ARGS]


def dbt_vars(spec: JobSpec, settings: Settings, start: date | None, end: date | None) -> dict[str, Any]:
    vars_: dict[str, Any] = {"metrics_timezone": settings.timezone}
    if spec.needs_period:
        if start is None or end is None:
            raise UserFacingError(f"job {spec.name} needs a start and an end date")
        vars_.update(rollups.backfill_vars(start, end))
    return vars_


def dbt_environment(settings: Settings, attempt: int) -> dict[str, str]:
    """The environment dbt's profile reads for this attempt (tests replace this to inject faults)."""
    return core_dbt.prepare_environment(settings)


def transient(outcome: core_dbt.DbtOutcome) -> bool:
    """True when every failure is a transient one (database unreachable, lock, serialization)."""
    messages = [n.message for n in outcome.failures] + ([outcome.exception] if outcome.exception else [])
    return bool(messages) and all(is_transient_message(m) for m in messages)


def changed_periods(days: list[date]) -> dict[str, tuple[date, ...]]:
    """Per period grain, the periods of ``days`` and the later ones whose growth compares with them."""
    out: dict[str, tuple[date, ...]] = {}
    for g in grains.periods():
        touched = {g.start_of(d) for d in days}
        grown = {_later(p, c) for p in touched for c in g.comparisons}
        out[g.name] = tuple(sorted(touched | grown))
    return out


def _later(period_start: date, comparison: grains.Comparison) -> date:
    """The start of the period whose ``comparison`` baseline is ``period_start``."""
    if comparison.months:
        return grains.add_months_first(period_start, comparison.months)
    return period_start + timedelta(weeks=comparison.weeks)


def latest_rows(conn: psycopg.Connection[Any], grain: grains.Grain, n: int = 2) -> list[dict[str, Any]]:
    """The ``n`` newest rows of ``grain``'s mart, oldest first ([] when it is not built)."""
    schema = marts_schema()
    exists = conn.execute("select to_regclass(%s)", (f'"{schema}"."{grain.model}"',)).fetchone()
    if not exists or exists[0] is None:
        return []
    query = sql.SQL("select * from {} order by {} desc limit %s").format(
        sql.Identifier(schema, grain.model), sql.Identifier(grain.start_column))
    rows = conn.cursor(row_factory=dict_row).execute(query, (n,)).fetchall()
    return list(reversed(rows))


def _changed_days(conn: psycopg.Connection[Any]) -> list[date]:
    schema = marts_schema()
    exists = conn.execute("select to_regclass(%s)", (f'"{schema}"."int_changed_days"',)).fetchone()
    if not exists or exists[0] is None:
        return []
    query = sql.SQL("select metric_date from {} order by 1").format(sql.Identifier(schema, "int_changed_days"))
    return [r[0] for r in conn.execute(query).fetchall()]


@dataclass
class DbtJob:
    """One dbt job run (a :class:`runner.Work`)."""

    spec: JobSpec
    vars: dict[str, Any]
    settings: Settings
    period_start: date | None = None
    period_end: date | None = None
    #: run the unit tests whatever the fingerprint (``jobs run --unit-tests``; None: :func:`unit_gate.always`)
    always_unit_test: bool | None = None
    #: ``details.unit_tests`` of this run, once an attempt decided (and after dbt returned)
    unit_tests: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def timeout_seconds(self) -> int:
        return self.spec.timeout_seconds

    def details(self) -> dict[str, Any]:
        unit = self.unit_tests
        out = {"dbt_args": dbt_args(self.spec, unit_tests=unit is None or bool(unit["ran"])), "vars": self.vars,
               "flow": self.spec.name}
        return out if unit is None else {**out, "unit_tests": unit}

    def attempt(self, ctx: Attempt) -> Outcome:
        # decided under the job lock, from the job's own log (the runner holds both)
        force = unit_gate.always() if self.always_unit_test is None else self.always_unit_test
        gate = unit_gate.decide(ctx.conn, self.spec.name, unit_gate.fingerprint(timezone=ctx.settings.timezone),
                                force=force)
        self.unit_tests = gate.details()
        # the rollups' own lock (the one ``metricsmith rollups run`` takes), same waiting policy
        with pglock.ROLLUPS.held(ctx.conn, ctx.lock_wait_seconds):
            outcome = core_dbt.invoke(dbt_args(self.spec, unit_tests=gate.run), vars=self.vars, settings=ctx.settings,
                                      in_flow=in_flow_run(),
                                      environment=functools.partial(dbt_environment, attempt=ctx.number))
        if gate.run:
            self.unit_tests = unit_gate.ran_details(gate, outcome)
        return Outcome(models_ok=outcome.models_ok, models_failed=outcome.models_failed,
                       error_message=None if outcome.success else (outcome.error_message or "dbt failed"),
                       transient=transient(outcome), payload=outcome)

    def effects(self, result: JobResult, outcome: Outcome) -> None:
        dbt_outcome: core_dbt.DbtOutcome = outcome.payload
        result.rows_affected = dbt_outcome.rows_affected(self.spec.marts)
        rebuilt = any(n.name == "int_changed_days" and n.status == "success" for n in dbt_outcome.nodes)
        with db.connect(self.settings, autocommit=True) as conn:
            if rebuilt:
                days = _changed_days(conn)
                result.changed_days, result.changed = tuple(days), changed_periods(days)
                if days and result.period_start is None:
                    result.period_start, result.period_end = days[0], days[-1]
            result.latest = {g.name: latest_rows(conn, g) for g in grains.periods()}


def run_job(
    name: str,
    *,
    start: date | None = None,
    end: date | None = None,
    settings: Settings | None = None,
    policy: RetryPolicy | None = None,
    lock_wait_seconds: float = 60.0,
    unit_tests: bool | None = None,
) -> JobResult:
    """Run job ``name`` once (with retries) and return its result; never raises for a job that
    failed in dbt - the status says so. Raises :class:`UserFacingError` for bad parameters.
    ``unit_tests=True`` runs dbt's unit tests whatever the fingerprint (None: only when the project
    changed since the job's last run whose unit tests passed, or ``METRICSMITH_ALWAYS_UNIT_TEST=1``;
    :mod:`metricsmith.orchestration.unit_tests`)."""
    if name not in JOBS:
        raise UserFacingError(f"unknown job {name!r}; jobs: {', '.join(JOBS)}")
    spec = JOBS[name]
    settings = settings or load_settings()
    work = DbtJob(spec, dbt_vars(spec, settings, start, end), settings, start, end,
                  always_unit_test=unit_gate.always() if unit_tests is None else unit_tests)
    return runner.run(work, settings=settings, policy=policy, lock_wait_seconds=lock_wait_seconds)
