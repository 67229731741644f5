"""Job health as Prometheus families: last success, consecutive failures, data freshness lag.

Freshness lag of a job = seconds from the end of the newest period in its mart (midnight UTC
after the period's last day) until now; no sample when the mart holds no data yet (alert on
``absent()`` or on ``metricsmith_job_state``)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from metricsmith import health
from metricsmith.config import Settings
from metricsmith.grains import Grain, load

#: the health module's job -> mart (key column); the grain whose mart it is
_STATE_VALUES = health.STATES


def _grain_of(mart: str) -> Grain | None:
    return next((g for g in load() if g.model == mart), None)


def _period_end(mart: str, latest: date) -> datetime:
    grain = _grain_of(mart)
    last_day = grain.end_of(latest) if grain is not None else latest
    return datetime.combine(last_day + timedelta(days=1), time(), UTC)


def freshness_lag(job: health.JobHealth, now: datetime) -> float | None:
    if job.latest_period is None:
        return None
    mart, _ = health.FRESHNESS[job.job_name]
    return max(0.0, (now - _period_end(mart, job.latest_period)).total_seconds())


def families(*, schema: str, settings: Settings | None = None, now: datetime | None = None) -> list[dict[str, Any]]:
    report = health.get_metrics_aggregation_health(now=now, settings=settings, schema=schema)
    success: list[Any] = []
    failures: list[Any] = []
    lag: list[Any] = []
    states: list[Any] = []
    for job in report.jobs:
        labels = {"job": job.job_name}
        if job.last_success_at is not None:
            success.append(("metricsmith_job_last_success_timestamp_seconds", labels, job.last_success_at.timestamp()))
        failures.append(("metricsmith_job_consecutive_failures", labels, job.consecutive_failures))
        seconds = freshness_lag(job, report.checked_at)
        if seconds is not None:
            lag.append(("metricsmith_job_data_freshness_lag_seconds", labels, seconds))
        for state in _STATE_VALUES:
            states.append(("metricsmith_job_state", {**labels, "state": state}, 1 if job.state == state else 0))
    return [
        {"name": "metricsmith_job_last_success_timestamp_seconds", "type": "gauge",
         "help": "Unix time of the job's last COMPLETED run", "samples": success},
        {"name": "metricsmith_job_consecutive_failures", "type": "gauge",
         "help": "Final runs of the job that failed since its last success", "samples": failures},
        {"name": "metricsmith_job_data_freshness_lag_seconds", "type": "gauge",
         "help": "Seconds since the end of the newest period in the job's mart", "samples": lag},
        {"name": "metricsmith_job_state", "type": "gauge",
         "help": "1 for the job's health state (healthy, degraded, failing)", "samples": states},
    ]
