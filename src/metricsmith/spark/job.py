"""The Spark rollup job: dbt on Spark, then the publish to PostgreSQL, through the one job
runner (lock, job log row, retries, final status). The job log row's details record both: the
Spark application (id, master), the dbt run and the publish (rows per mart, seconds). A backfill
(a day range) is this job with the range: its row holds the range as its period and ``mode``
backfill."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any

from metricsmith import db, grains
from metricsmith.config import Settings, load_settings
from metricsmith.core import pglock
from metricsmith.orchestration import runner
from metricsmith.orchestration.jobs import BACKFILL_JOB, JOBS, changed_periods, dbt_vars, latest_rows
from metricsmith.orchestration.retry import RetryPolicy
from metricsmith.rollups import backfill_vars
from metricsmith.spark import publish, rollups

JOB_NAME = "spark-rollups"


@dataclass
class SparkRollupJob:
    """One rollup run on Spark and its publish (a :class:`runner.Work`)."""

    settings: Settings
    job_name: str = JOB_NAME
    full_refresh: bool = False
    timezone: str | None = None
    #: (start, end): a backfill of those days (the job log row's period)
    backfill: tuple[date, date] | None = None
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def period_start(self) -> date | None:
        return self.backfill[0] if self.backfill else None

    @property
    def period_end(self) -> date | None:
        return self.backfill[1] if self.backfill else None

    @property
    def mode(self) -> str:
        return "full-refresh" if self.full_refresh else ("backfill" if self.backfill else "incremental")

    @property
    def name(self) -> str:
        return self.job_name

    @property
    def timeout_seconds(self) -> int:
        return 3600

    def details(self) -> dict[str, Any]:
        # the runner copies this dict at the start; the nested record fills in as the run goes
        backfill = None if self.backfill is None else {"start": str(self.backfill[0]), "end": str(self.backfill[1])}
        return {"engine": "spark", "mode": self.mode, "full_refresh": self.full_refresh, "backfill": backfill,
                "spark_job": self.record}

    def attempt(self, ctx: runner.Attempt) -> runner.Outcome:
        with pglock.ROLLUPS.held(ctx.conn, ctx.lock_wait_seconds):
            run = rollups.run_rollups(full_refresh=self.full_refresh, backfill=self.backfill,
                                      timezone=self.timezone, settings=ctx.settings, in_flow=True)
            self.record["spark"] = {"application_id": run.application_id, "master": run.master,
                                    "mode": run.mode, "dbt_seconds": round(run.seconds, 3),
                                    "changed_days": len(run.changed_days)}
            published = publish.publish(ctx.settings)
        self.record["publish"] = {"rows": published.rows, "seconds": round(published.seconds, 3)}
        return runner.Outcome(models_ok=run.outcome.models_ok, models_failed=run.outcome.models_failed,
                              payload=(run, published))

    def effects(self, result: runner.JobResult, outcome: runner.Outcome) -> None:
        run, published = outcome.payload
        result.rows_affected = sum(published.rows.values())
        result.changed_days, result.changed = tuple(run.changed_days), changed_periods(run.changed_days)
        if run.changed_days and result.period_start is None:
            result.period_start, result.period_end = run.changed_days[0], run.changed_days[-1]
        with db.connect(self.settings, autocommit=True) as conn:
            result.latest = {g.name: latest_rows(conn, g) for g in grains.periods()}


def run_job(*, name: str = JOB_NAME, full_refresh: bool = False, backfill: tuple[date, date] | None = None,
            timezone: str | None = None, settings: Settings | None = None, policy: RetryPolicy | None = None,
            lock_wait_seconds: float = 60.0) -> runner.JobResult:
    """Run the Spark rollups and the publish once, logged as job ``name`` (the Prefect rollup flows
    pass their own job name, so health and the job log read them as usual); ``backfill=(start,
    end)`` also recomputes those days and every period above them. A bad range is refused before
    the job starts (no job log row, nothing run)."""
    settings = settings or load_settings()
    if backfill is not None:
        backfill_vars(*backfill)
    work = SparkRollupJob(settings, job_name=name, full_refresh=full_refresh, timezone=timezone, backfill=backfill)
    return runner.run(work, settings=settings, policy=policy, lock_wait_seconds=lock_wait_seconds)


def run_spark_rollup_flow_job(name: str, *, start: date | None = None, end: date | None = None) -> runner.JobResult:
    """What a Prefect rollup flow (daily-metrics, weekly-rollup, ..., backfill) runs on
    METRICSMITH_ENGINE=spark: one Spark run of every rollup model (incremental; with ``start`` and
    ``end`` a backfill of those days, as the PostgreSQL backfill job), then the publish, logged
    under the flow's job."""
    if name != BACKFILL_JOB and start is None and end is None:
        return run_job(name=name)
    # the backfill job's own check of its period (both days given, start <= end): one message
    settings = load_settings()
    dbt_vars(JOBS[BACKFILL_JOB], settings, start, end)
    assert start is not None and end is not None
    return run_job(name=name, backfill=(start, end), settings=settings)
