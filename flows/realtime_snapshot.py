"""Prefect flow ``realtime-snapshot``: every 10 minutes, Redis realtime values -> Postgres.

Thin on purpose: the logic is :func:`metricsmith.realtime.persistence.snapshot`. Also restores
Redis first when it came back empty (``restore`` does nothing while Redis holds data).
Schedule: ``*/10 * * * *`` (UTC): a flow run per minute would flood the run history.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from metricsmith.realtime.persistence import restore, snapshot

SCHEDULE = "*/10 * * * *"


@flow(name="realtime-snapshot", log_prints=True, retries=2, retry_delay_seconds=5)
def realtime_snapshot(retention_days: int = 3, keep_days: int = 7) -> str:
    logger = get_run_logger()
    restored = restore(retention_days=retention_days)
    if restored.restored:
        logger.warning(restored.render())
    result = snapshot(retention_days=retention_days, keep_days=keep_days)
    logger.info(result.render())
    return result.render()


if __name__ == "__main__":
    realtime_snapshot()
