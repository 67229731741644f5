"""The schedules, declared once.

``prefect.yaml`` (for ``prefect deploy --all`` with a process work pool) is generated from
this module (``metricsmith schedules --prefect-yaml > prefect.yaml``; a test keeps the two in
sync) and ``metricsmith serve`` builds its deployments from it too.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import yaml

from metricsmith import grains
from metricsmith.config import project_root
from metricsmith.orchestration.jobs import rollup_job_name

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


def rollup_cron(position: int, grain: grains.Grain) -> str:
    """When the rollup of the ``position``-th period grain (1 = the first after the day) runs:
    at ``03:00 + position`` h UTC on day ``position`` of each new period (weekday ``position``
    for weeks), so each runs after the daily job and the finer rollups: weekly Mondays 04:00,
    monthly the 2nd 05:00, quarterly the 3rd of January, April, July and October 06:00."""
    hour = 3 + position
    if grain.unit == "week":
        return f"0 {hour} * * {position % 7}"
    months = "*" if grain.unit == "month" and grain.count == 1 else ",".join(
        str(m) for m in range(1, 13, grain.count if grain.unit == "month" else 1))
    return f"0 {hour} {position} {months} *"


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def _when(cron: str) -> str:
    """``0 4 * * 1`` -> "Mondays 04:00 UTC" (the crons :func:`rollup_cron` writes)."""
    _, hour, dom, months, dow = cron.split()
    at = f"{int(hour):02d}:00 {TIMEZONE}"
    if dow != "*":
        return f"{calendar.day_name[(int(dow) - 1) % 7]}s {at}"
    if months == "*":
        return f"the {_ordinal(int(dom))} of each month {at}"
    names = [calendar.month_name[int(m)] for m in months.split(",")]
    return f"the {_ordinal(int(dom))} of {', '.join(names[:-1])} and {names[-1]} {at}"


def _rollup_deployments() -> list[Deployment]:
    out = []
    for position, g in enumerate(grains.periods(), start=1):
        cron = rollup_cron(position, g)
        out.append(Deployment(rollup_job_name(g), f"flows/{g.adjective}_rollup.py:{g.adjective}_rollup", cron,
                              f"{g.adjective.capitalize()} rollup with its data tests, {_when(cron)}"))
    return out


DEPLOYMENTS: tuple[Deployment, ...] = (
    Deployment("daily-metrics", "flows/daily_metrics.py:daily_metrics", "0 2 * * *",
               "Incremental daily metrics (and every longer period of the changed days), every day 02:00 UTC"),
    *_rollup_deployments(),
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
    Deployment("alerts-evaluate", "flows/alerts_evaluate.py:alerts_evaluate", "* * * * *",
               "Alert rules only the clock can tell (overdue jobs, stale data, realtime series) and delivery "
               "retries, every minute", aggregation_job=False),
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
