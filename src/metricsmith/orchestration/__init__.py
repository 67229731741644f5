"""Orchestration (Prefect 3): job log, one-run-at-a-time locks, retries, dbt through
PrefectDbtRunner, artifacts, schedules. See docs/orchestration.md."""

from metricsmith.orchestration.jobs import JOBS, JobFailed, JobResult, JobSpec, run_job
from metricsmith.orchestration.retry import RetryPolicy

__all__ = ["JOBS", "JobFailed", "JobResult", "JobSpec", "RetryPolicy", "run_job"]
