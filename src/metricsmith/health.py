"""Job health: ``get_metrics_aggregation_health()`` and ``metricsmith health [--json]``.

Per scheduled job: last success, last failure, consecutive failures, whether it is overdue
against its cron, and data freshness (latest metric_date / week_start / month_start vs what
the schedule promises).

Overdue-ness and freshness are judged from the data, not from one job's own runs: a job's
mart counts as built by the last successful run of *any* path that builds it - the job
itself, every other job whose dbt selection includes that mart (the daily job builds all
three marts; :data:`metricsmith.orchestration.jobs.JOBS` ``marts`` says which), and
``metricsmith rollups run`` / ``backfill`` (a row in the rollup ledger ``int_rollup_ledger``,
which dbt writes only after all three marts were built). A job is overdue when nothing built
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

from metricsmith import db
from metricsmith.config import Settings, load_settings
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
#: job -> (mart, key column, promised period for a run at scheduled time t)
FRESHNESS: dict[str, tuple[str, str]] = {
    "daily-metrics": ("daily_metrics", "metric_date"),
    "weekly-rollup": ("weekly_metrics", "week_start"),
    "monthly-rollup": ("monthly_metrics", "month_start"),
}


def promised_period(job: str, scheduled: datetime) -> date:
    """The newest period the mart must hold after the run scheduled at ``scheduled``."""
    day = scheduled.date()
    if job == "daily-metrics":
        return day - timedelta(days=1)  # yesterday is complete
    if job == "weekly-rollup":
        monday = day - timedelta(days=day.weekday())
        return monday - timedelta(days=7)  # the week that just ended
    first = day.replace(day=1)
    return (first - timedelta(days=1)).replace(day=1)  # the month that just ended


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

        lines = [f"metrics aggregation: {self.status.upper()}  (checked {ts(self.checked_at)} UTC)"]
        lines.append(f"{'job':<15} {'state':<9} {'last built (by)':<33} {'last failure':<17} {'fails':>5}  "
                     f"{'latest data':<11} {'promised':<11} next run (UTC)")
        for j in self.jobs:
            built = ts(j.last_built_at) + (f" {j.last_built_by}" if j.last_built_by else "")
            lines.append(f"{j.job_name:<15} {j.state:<9} {built:<33} {ts(j.last_failure_at):<17} "
                         f"{j.consecutive_failures:>5}  {str(j.latest_period or '-'):<11} {str(j.promised_period):<11} "
                         f"{ts(j.next_scheduled_at)}")
            for reason in j.reasons:
                lines.append(f"  - {' '.join(reason.split())}")
        return "\n".join(lines)


def _latest_period(conn: Any, schema: str, mart: str, column: str) -> date | None:
    row = conn.execute("select to_regclass(%s) is not null", (f"{schema}.{mart}",)).fetchone()
    if not row or not row[0]:
        return None
    value = conn.execute(f"select max({column}) from {schema}.{mart}").fetchone()
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
    exists = conn.execute("select to_regclass(%s) is not null", (f"{schema}.int_rollup_ledger",)).fetchone()
    if exists and exists[0]:
        ledger = conn.execute(f"select max(finished_at) from {schema}.int_rollup_ledger where finished_at <= %s",
                              (now,)).fetchone()
        if ledger and ledger[0] is not None and (best[0] is None or ledger[0] > best[0]):
            best = (ledger[0], LEDGER_PATH)
    return best


def _job_health(conn: Any, job: str, cron: str, now: datetime, schema: str) -> JobHealth:
    prev = next(CronSim(cron, now, reverse=True))
    nxt = next(CronSim(cron, now))
    rows = conn.execute(
        f"""select status::text, started_at, finished_at, error_message, coalesce((details->>'skipped')::boolean, false),
                   started_at + make_interval(secs => coalesce((details->>'timeout_seconds')::int, 21600)) < %s
            from {TABLE} where job_name = %s order by started_at desc, id desc limit 200""",
        (now, job),
    ).fetchall()
    runs = [r for r in rows if not r[4]]  # runs refused by the lock did no work: not counted
    final = [r for r in runs if JobStatus(r[0]).final]
    last_success = next((r for r in final if JobStatus(r[0]).ok), None)
    last_failure = next((r for r in final if JobStatus(r[0]).failed), None)
    consecutive = 0
    for r in final:
        if JobStatus(r[0]).ok:
            break
        consecutive += 1
    running = [r for r in runs if r[0] == JobStatus.RUNNING]
    stuck = [r for r in running if r[5]]
    last_ok_time = last_success[2] if last_success else None
    mart, column = FRESHNESS[job]
    built_at, built_by = _last_built(conn, mart, now, schema)
    overdue = now >= prev + GRACE and (built_at is None or built_at < prev)
    latest = _latest_period(conn, schema, mart, column)
    promised = promised_period(job, prev if now >= prev + GRACE else next(CronSim(cron, prev, reverse=True)))
    fresh = latest is not None and latest >= promised

    reasons: list[str] = []
    state = "healthy"
    if consecutive >= 2 or (consecutive >= 1 and overdue):
        state = "failing"
        reasons.append(f"{consecutive} consecutive failure(s); last error: {(last_failure[3] or '')[:300] if last_failure else ''}")
    elif consecutive == 1:
        state = "degraded"
        reasons.append(f"last run {final[0][0]}: {(final[0][3] or '')[:300]}")
    if built_at is None and not running:
        state = _worse(state, "degraded")
        reasons.append(f"never ran: no run of {', '.join(builders(mart))} (nor rollups run) has built {mart}")
    elif overdue:
        state = _worse(state, "degraded")
        reasons.append(f"overdue: {mart} not built since the scheduled time {prev:%Y-%m-%d %H:%M} UTC (+{GRACE}); "
                       f"last built {built_at:%Y-%m-%d %H:%M} UTC by {built_by}")
    if stuck:
        state = _worse(state, "degraded")
        reasons.append(f"a run started {stuck[0][1]:%Y-%m-%d %H:%M} is RUNNING past its timeout")
    if not fresh:
        state = _worse(state, "degraded")
        reasons.append(f"stale data: latest {column} {latest or 'none'} < promised {promised}")
    return JobHealth(
        job_name=job, schedule=f"{cron} UTC", state=state,
        last_run_status=runs[0][0] if runs else None, last_run_started_at=runs[0][1] if runs else None,
        last_success_at=last_ok_time, last_built_at=built_at, last_built_by=built_by, last_failure_at=last_failure[2] if last_failure else None,
        last_error=last_failure[3] if last_failure else None, consecutive_failures=consecutive,
        previous_scheduled_at=prev, next_scheduled_at=nxt, overdue=overdue, running=bool(running),
        latest_period=latest, promised_period=promised, data_fresh=fresh, reasons=reasons,
    )


def _worse(a: str, b: str) -> str:
    return a if STATES.index(a) >= STATES.index(b) else b


def get_metrics_aggregation_health(*, now: datetime | None = None, settings: Settings | None = None,
                                   schema: str = "analytics") -> AggregationHealth:
    """Health of every scheduled job (seed parity: ``getMetricsAggregationHealth()``); ``schema``
    holds the marts whose freshness is checked."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    with db.connect(settings or load_settings(), autocommit=True) as conn:
        jobs = [_job_health(conn, job, cron, now, schema) for job, cron in SCHEDULES.items()]
    status = "healthy"
    for j in jobs:
        status = _worse(status, j.state)
    return AggregationHealth(status=status, checked_at=now, jobs=jobs)
