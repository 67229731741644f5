"""Orchestration (Prefect 3): the one job runner (job log, one-run-at-a-time locks, stale-row
repair, the retry policy as Prefect task retries), the dbt jobs per grain, artifacts,
schedules. See docs/orchestration.md."""

from metricsmith.orchestration.jobs import JOBS, JobFailed, JobSpec, run_job
from metricsmith.orchestration.retry import RetryPolicy
from metricsmith.orchestration.runner import JobResult

__all__ = ["JOBS", "JobFailed", "JobResult", "JobSpec", "RetryPolicy", "run_job"]
