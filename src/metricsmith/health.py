"""Job health: ``get_metrics_aggregation_health()`` and ``metricsmith health [--json]``.

Per scheduled job that keeps a grain's mart fresh (the daily job and one rollup per period
grain of :mod:`metricsmith.grains`): last success, last failure, consecutive failures, whether
it is overdue against its cron, and data freshness (the newest period start of its mart vs the
period the schedule promises).

Overdue-ness and freshness are judged from the data, not from one job's own runs: a job's
mart counts as built by the last successful run of *any* path that builds it - the job
itself, every other job whose dbt selection includes that mart (the daily job builds every
mart; :data:`metricsmith.orchestration.jobs.JOBS` ``marts`` says which), and
``metricsmith rollups run`` / ``backfill`` (a row in the rollup ledger ``int_rollup_ledger``,
which dbt writes only after every mart was built). A job is overdue when nothing built
its mart since its last scheduled time + grace.

Job state: ``failing`` = 2+ consecutive failures of the job, or its last run failed and it is
overdue; ``degraded`` = one failure, overdue, never built by any path, stale data, or a run
RUNNING past its timeout; else ``healthy``. Overall = the worst job; exit status 0 / 1 / 2.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from cronsim import CronSim
from psycopg import sql

from metricsmith import db, grains
from metricsmith.config import Settings, load_settings
from metricsmith.core.schema import marts_schema
from metricsmith.core.status import JobStatus
from metricsmith.orchestration.joblog import TABLE
from metricsmith.orchestration.jobs import JOBS
from metricsmith.orchestration.schedules import SCHEDULES

#: a run may finish this long after its scheduled time before the job counts as overdue
GRACE = timedelta(hours=2)
STATES = ("healthy", "degraded", "failing")
EXIT_STATUS = {"healthy": 0, "degraded": 1, "failing": 2}

#: the path name of a rollup-ledger row (``metricsmith rollups run`` / ``backfill`` / any flow)
LEDGER_PATH = "rollups ledger"


def freshness() -> dict[str, tuple[str, str]]:
    """Scheduled job -> (mart, period start column) it keeps fresh, from its grain."""
    out = {}
    for job in SCHEDULES:
        grain = JOBS[job].grain if job in JOBS else None
        if grain is not None:
            g = grains.get(grain)
            out[job] = (g.model, g.start_column)
    return out


#: scheduled job -> (mart, period start column), as :func:`freshness` reads it at import
FRESHNESS: dict[str, tuple[str, str]] = freshness()


def promised_period(job: str, scheduled: datetime) -> date:
    """The newest period the mart must hold after the run scheduled at ``scheduled``: the
    period of the job's grain that ended before it (yesterday, the last complete ISO week,
    month, quarter...)."""
    grain = JOBS[job].grain
    if grain is None:
        raise ValueError(f"job {job} keeps no grain fresh")
    g = grains.get(grain)
    return g.start_of(g.start_of(scheduled.date()) - timedelta(days=1))


@dataclass
class JobHealth:
    job_name: str
    schedule: str
    state: str
    last_run_status: str | None
    last_run_started_at: datetime | None
    last_success_at: datetime | None
    #: the last successful build of this job's mart by any path, and which path it was
    last_built_at: datetime | None
    last_built_by: str | None
    last_failure_at: datetime | None
    last_error: str | None
    consecutive_failures: int
    previous_scheduled_at: datetime
    next_scheduled_at: datetime
    overdue: bool
    running: bool
    latest_period: date | None
    promised_period: date
    data_fresh: bool
    reasons: list[str] = field(default_factory=list)


@dataclass
class AggregationHealth:
    status: str
    checked_at: datetime
    jobs: list[JobHealth]

    @property
    def exit_status(self) -> int:
        return EXIT_STATUS[self.status]

    def to_dict(self) -> dict[str, Any]:
        def conv(v: Any) -> Any:
            if isinstance(v, datetime | date):
                return v.isoformat()
            if isinstance(v, dict):
                return {k: conv(x) for k, x in v.items()}
            if isinstance(v, list):
                return [conv(x) for x in v]
            return v

        return conv({"status": self.status, "checked_at": self.checked_at,
                     "jobs": [asdict(j) for j in self.jobs]})

    def render(self) -> str:
        def ts(v: datetime | None) -> str:
            return "never" if v is None else f"{v.astimezone(UTC):%Y-%m-%d %H:%M}"

        width = max([15, *(len(j.job_name) for j in self.jobs)])
        lines = [f"metrics aggregation: {self.status.upper()}  (checked {ts(self.checked_at)} UTC)"]
        lines.append(f"{'job':<{width}} {'state':<9} {'last built (by)':<33} {'last failure':<17} {'fails':>5}  "
                     f"{'latest data':<11} {'promised':<11} next run (UTC)")
        for j in self.jobs:
            built = ts(j.last_built_at) + (f" {j.last_built_by}" if j.last_built_by else "")
            lines.append(f"{j.job_name:<{width}} {j.state:<9} {built:<33} {ts(j.last_failure_at):<17} "
                         f"{j.consecutive_failures:>5}  {str(j.latest_period or '-'):<11} {str(j.promised_period):<11} "
                         f"{ts(j.next_scheduled_at)}")
            for reason in j.reasons:
                lines.append(f"  - {' '.join(reason.split())}")
        return "\n".join(lines)


def _exists(conn: Any, schema: str, table: str) -> bool:
    row = conn.execute("select to_regclass(%s) is not null", (f'"{schema}"."{table}"',)).fetchone()
    return bool(row and row[0])


def _latest_period(conn: Any, schema: str, mart: str, column: str) -> date | None:
    if not _exists(conn, schema, mart):
        return None
    value = conn.execute(sql.SQL("select max({}) from {}").format(
        sql.Identifier(column), sql.Identifier(schema, mart))).fetchone()
    return value[0] if value else None


def builders(mart: str) -> list[str]:
    """Every job whose run builds ``mart`` (from the jobs' own declarations)."""
    return [name for name, spec in JOBS.items() if mart in spec.marts]


def _last_built(conn: Any, mart: str, now: datetime, schema: str) -> tuple[datetime | None, str | None]:
    """The newest successful build of ``mart`` before ``now`` by any path: a COMPLETED run of a
    job that builds it, or a row of the rollup ledger (written only once all marts are built)."""
    best: tuple[datetime | None, str | None] = (None, None)
    row = conn.execute(
        f"""select finished_at, job_name from {TABLE}
            where status = 'COMPLETED' and job_name = any(%s) and finished_at <= %s
            order by finished_at desc limit 1""",
        (builders(mart), now),
    ).fetchone()
    if row:
        best = (row[0], str(row[1]))
    if _exists(conn, schema, "int_rollup_ledger"):
        ledger = conn.execute(sql.SQL("select max(finished_at) from {} where finished_at <= %s").format(
            sql.Identifier(schema, "int_rollup_ledger")), (now,)).fetchone()
        if ledger and ledger[0] is not None and (best[0] is None or ledger[0] > best[0]):
            best = (ledger[0], LEDGER_PATH)
    return best


@dataclass(frozen=True)
class _Runs:
    """A job's own runs, newest first (runs refused by the lock did no work: not counted)."""

    rows: list[tuple[Any, ...]]

    @property
    def final(self) -> list[tuple[Any, ...]]:
        return [r for r in self.rows if JobStatus(r[0]).final]

    @property
    def last_success(self) -> tuple[Any, ...] | None:
        return next((r for r in self.final if JobStatus(r[0]).ok), None)

    @property
    def last_failure(self) -> tuple[Any, ...] | None:
        return next((r for r in self.final if JobStatus(r[0]).failed), None)

    @property
    def consecutive_failures(self) -> int:
        count = 0
        for r in self.final:
            if JobStatus(r[0]).ok:
                break
            count += 1
        return count

    @property
    def running(self) -> list[tuple[Any, ...]]:
        return [r for r in self.rows if r[0] == JobStatus.RUNNING]

    @property
    def stuck(self) -> list[tuple[Any, ...]]:
        return [r for r in self.running if r[5]]


def _runs(conn: Any, job: str, now: datetime) -> _Runs:
    rows = conn.execute(
        f"""select status::text, started_at, finished_at, error_message, coalesce((details->>'skipped')::boolean, false),
                   started_at + make_interval(secs => coalesce((details->>'timeout_seconds')::int, 21600)) < %s
            from {TABLE} where job_name = %s order by started_at desc, id desc limit 200""",
        (now, job),
    ).fetchall()
    return _Runs([r for r in rows if not r[4]])


def _failure_reasons(runs: _Runs, overdue: bool) -> tuple[str, list[str]]:
    consecutive, failure = runs.consecutive_failures, runs.last_failure
    if consecutive >= 2 or (consecutive >= 1 and overdue):
        error = (failure[3] or "")[:300] if failure else ""
        return "failing", [f"{consecutive} consecutive failure(s); last error: {error}"]
    if consecutive == 1:
        last = runs.final[0]
        return "degraded", [f"last run {last[0]}: {(last[3] or '')[:300]}"]
    return "healthy", []


def _judge(h: JobHealth, runs: _Runs, mart: str, column: str) -> None:
    """Set ``h.state`` and ``h.reasons`` from its runs, builds and data."""
    state, reasons = _failure_reasons(runs, h.overdue)
    degraded = []
    if h.last_built_at is None and not h.running:
        degraded.append(f"never ran: no run of {', '.join(builders(mart))} (nor rollups run) has built {mart}")
    elif h.overdue:
        built = ("never built" if h.last_built_at is None
                 else f"last built {h.last_built_at:%Y-%m-%d %H:%M} UTC by {h.last_built_by}")
        degraded.append(f"overdue: {mart} not built since the scheduled time {h.previous_scheduled_at:%Y-%m-%d %H:%M}"
                        f" UTC (+{GRACE}); {built}")
    if runs.stuck:
        degraded.append(f"a run started {runs.stuck[0][1]:%Y-%m-%d %H:%M} is RUNNING past its timeout")
    if not h.data_fresh:
        degraded.append(f"stale data: latest {column} {h.latest_period or 'none'} < promised {h.promised_period}")
    h.state = _worse(state, "degraded") if degraded else state
    h.reasons = reasons + degraded


def _job_health(conn: Any, job: str, cron: str, now: datetime, schema: str) -> JobHealth:
    prev, nxt = next(CronSim(cron, now, reverse=True)), next(CronSim(cron, now))
    runs = _runs(conn, job, now)
    mart, column = FRESHNESS[job]
    built_at, built_by = _last_built(conn, mart, now, schema)
    latest = _latest_period(conn, schema, mart, column)
    promised = promised_period(job, prev if now >= prev + GRACE else next(CronSim(cron, prev, reverse=True)))
    success, failure = runs.last_success, runs.last_failure
    h = JobHealth(
        job_name=job, schedule=f"{cron} UTC", state="healthy",
        last_run_status=runs.rows[0][0] if runs.rows else None,
        last_run_started_at=runs.rows[0][1] if runs.rows else None,
        last_success_at=success[2] if success else None, last_built_at=built_at, last_built_by=built_by,
        last_failure_at=failure[2] if failure else None, last_error=failure[3] if failure else None,
        consecutive_failures=runs.consecutive_failures, previous_scheduled_at=prev, next_scheduled_at=nxt,
        overdue=now >= prev + GRACE and (built_at is None or built_at < prev), running=bool(runs.running),
        latest_period=latest, promised_period=promised, data_fresh=latest is not None and latest >= promised,
    )
    _judge(h, runs, mart, column)
    return h


def _worse(a: str, b: str) -> str:
    return a if STATES.index(a) >= STATES.index(b) else b


def get_metrics_aggregation_health(*, now: datetime | None = None, settings: Settings | None = None,
                                   schema: str | None = None) -> AggregationHealth:
    """Health of every scheduled job that keeps a grain's mart fresh; ``schema`` holds the marts
    whose freshness is checked (default: :func:`metricsmith.core.schema.marts_schema`)."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    schema = schema or marts_schema()
    with db.connect(settings or load_settings(), autocommit=True) as conn:
        jobs = [_job_health(conn, job, cron, now, schema) for job, cron in SCHEDULES.items() if job in FRESHNESS]
    status = "healthy"
    for j in jobs:
        status = _worse(status, j.state)
    return AggregationHealth(status=status, checked_at=now, jobs=jobs)
