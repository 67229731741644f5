"""Prefect flow ``realtime-reconciliation``: recompute today's event metrics from raw.events, correct Redis.

Thin on purpose: the logic is :func:`metricsmith.realtime.reconcile.reconcile`. Corrections are
recorded in ``metricsmith.realtime_corrections`` and the drift is exported as
``metricsmith_realtime_drift``. Schedule: ``*/15 * * * *`` (UTC); ``days=2`` also re-checks
yesterday (late events).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from prefect import flow, get_run_logger

from metricsmith.config import load_settings
from metricsmith.realtime.reconcile import reconcile

SCHEDULE = "*/15 * * * *"


@flow(name="realtime-reconciliation", log_prints=True, retries=2, retry_delay_seconds=10)
def realtime_reconciliation(days: int = 2) -> str:
    today = datetime.now(load_settings().tz).date()
    report = reconcile([today - timedelta(days=n) for n in range(days)])
    logger = get_run_logger()
    for line in report.render().splitlines():
        (logger.warning if report.corrections else logger.info)(line)
    return report.render()


if __name__ == "__main__":
    realtime_reconciliation()
