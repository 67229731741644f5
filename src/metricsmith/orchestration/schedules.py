"""The schedules, declared once.

``prefect.yaml`` (for ``prefect deploy --all`` with a process work pool) is generated from
this module (``metricsmith schedules --prefect-yaml > prefect.yaml``; a test keeps the two in
sync) and ``metricsmith serve`` builds its deployments from it too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import yaml

from metricsmith.config import project_root

if TYPE_CHECKING:
    from prefect.deployments.runner import RunnerDeployment

TIMEZONE = "UTC"
WORK_POOL = "metricsmith"


@dataclass(frozen=True)
class Deployment:
    job: str
    entrypoint: str  # relative to the project root
    cron: str | None
    description: str
    #: writes metrics_aggregation_jobs_log rows, so `metricsmith health` watches it
    aggregation_job: bool = True

    @property
    def flow_name(self) -> str:
        return self.job


DEPLOYMENTS: tuple[Deployment, ...] = (
    Deployment("daily-metrics", "flows/daily_metrics.py:daily_metrics", "0 2 * * *",
               "Incremental daily metrics (and the weeks/months of changed days), every day 02:00 UTC"),
    Deployment("weekly-rollup", "flows/weekly_rollup.py:weekly_rollup", "0 4 * * 1",
               "Weekly rollup with its data tests, Mondays 04:00 UTC"),
    Deployment("monthly-rollup", "flows/monthly_rollup.py:monthly_rollup", "0 5 2 * *",
               "Monthly rollup with its data tests, the 2nd of each month 05:00 UTC"),
    Deployment("backfill", "flows/backfill.py:backfill", None,
               "Recompute a date range (parameters start, end); run on demand"),
    Deployment("custom-metrics", "flows/custom_metrics.py:custom_metrics", None,
               "Compile and run every active custom metric; runs after each daily-metrics run, or on demand"),
    # every 10 minutes, not every minute: each run is a flow run in the history (144 a day, not
    # 1,440); a Redis that loses data is also corrected by the reconciliation from raw.events
    Deployment("realtime-snapshot", "flows/realtime_snapshot.py:realtime_snapshot", "*/10 * * * *",
               "Snapshot the realtime metrics from Redis to Postgres (restores an emptied Redis first), "
               "every 10 minutes",
               aggregation_job=False),
    Deployment("realtime-reconciliation", "flows/realtime_reconciliation.py:realtime_reconciliation",
               "*/15 * * * *", "Recompute today's event counters from raw.events and correct Redis, every 15 minutes",
               aggregation_job=False),
)

#: job name -> cron (UTC) for the scheduled aggregation jobs (the ones health watches)
SCHEDULES: dict[str, str] = {d.job: d.cron for d in DEPLOYMENTS if d.cron and d.aggregation_job}


def load_flow(entrypoint: str) -> Any:
    from prefect.flows import load_flow_from_entrypoint

    path, _, name = entrypoint.partition(":")
    return load_flow_from_entrypoint(f"{project_root() / path}:{name}", use_placeholder_flow=False)


def runner_deployments() -> list[RunnerDeployment]:
    """The deployments ``metricsmith serve`` serves (same names, crons and time zone as prefect.yaml)."""
    from prefect.schedules import Cron

    out = []
    for d in DEPLOYMENTS:
        flow = load_flow(d.entrypoint)
        out.append(flow.to_deployment(
            name=d.job, description=d.description, tags=["metricsmith"],
            schedules=[Cron(d.cron, timezone=TIMEZONE)] if d.cron else None,
        ))
    return out


def prefect_yaml() -> str:
    """The text of ``prefect.yaml``."""
    import prefect

    doc: dict[str, Any] = {
        "name": "metricsmith",
        "prefect-version": prefect.__version__,
        "build": None,
        "push": None,
        # no pull section: `prefect deploy` records the directory it runs from (run it from
        # the repository root), and the process worker runs the flows there
        "deployments": [
            {
                "name": d.job,
                "description": d.description,
                "entrypoint": d.entrypoint,
                "tags": ["metricsmith"],
                "parameters": {},
                "work_pool": {"name": WORK_POOL, "work_queue_name": None, "job_variables": {}},
                "schedules": ([{"cron": d.cron, "timezone": TIMEZONE, "active": True}] if d.cron else []),
            }
            for d in DEPLOYMENTS
        ],
    }
    header = ("# Generated from src/metricsmith/orchestration/schedules.py - do not edit by hand:\n"
              "#   metricsmith schedules --prefect-yaml > prefect.yaml\n"
              f"# Deploy: prefect work-pool create {WORK_POOL} --type process; prefect deploy --all;\n"
              f"#         prefect worker start --pool {WORK_POOL}   (all from the repository root)\n")
    return header + yaml.safe_dump(doc, sort_keys=False)
