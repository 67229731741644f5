"""The Spark rollup job: dbt on Spark, then the publish to PostgreSQL, through the one job
runner (lock, job log row, retries, final status). The job log row's details record both: the
Spark application (id, master), the dbt run and the publish (rows per mart, seconds)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any

from metricsmith import db, grains
from metricsmith.config import Settings, load_settings
from metricsmith.core import pglock
from metricsmith.errors import UserFacingError
from metricsmith.orchestration import runner
from metricsmith.orchestration.jobs import changed_periods, latest_rows
from metricsmith.orchestration.retry import RetryPolicy
from metricsmith.spark import publish, rollups

JOB_NAME = "spark-rollups"


@dataclass
class SparkRollupJob:
    """One rollup run on Spark and its publish (a :class:`runner.Work`)."""

    settings: Settings
    job_name: str = JOB_NAME
    full_refresh: bool = False
    timezone: str | None = None
    period_start: date | None = None
    period_end: date | None = None
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.job_name

    @property
    def timeout_seconds(self) -> int:
        return 3600

    def details(self) -> dict[str, Any]:
        # the runner copies this dict at the start; the nested record fills in as the run goes
        return {"engine": "spark", "full_refresh": self.full_refresh, "spark_job": self.record}

    def attempt(self, ctx: runner.Attempt) -> runner.Outcome:
        with pglock.ROLLUPS.held(ctx.conn, ctx.lock_wait_seconds):
            run = rollups.run_rollups(full_refresh=self.full_refresh, timezone=self.timezone,
                                      settings=ctx.settings, in_flow=True)
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


def run_job(*, name: str = JOB_NAME, full_refresh: bool = False, timezone: str | None = None,
            settings: Settings | None = None, policy: RetryPolicy | None = None,
            lock_wait_seconds: float = 60.0) -> runner.JobResult:
    """Run the Spark rollups and the publish once, logged as job ``name`` (the Prefect rollup flows
    pass their own job name, so health and the job log read them as usual)."""
    settings = settings or load_settings()
    work = SparkRollupJob(settings, job_name=name, full_refresh=full_refresh, timezone=timezone)
    return runner.run(work, settings=settings, policy=policy, lock_wait_seconds=lock_wait_seconds)


def run_spark_rollup_flow_job(name: str, *, start: date | None = None, end: date | None = None) -> runner.JobResult:
    """What a Prefect rollup flow (daily-metrics, weekly-rollup, ...) runs on METRICSMITH_ENGINE=spark:
    one Spark run of every rollup model (incremental), then the publish, logged under the flow's job."""
    if start is not None or end is not None:
        raise UserFacingError("backfill on the Spark engine: run `metricsmith spark run --full-refresh` "
                              "(a day range is not supported on Spark yet)")
    return run_job(name=name)
