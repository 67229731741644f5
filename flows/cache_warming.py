"""Prefect flow: after a dbt run, invalidate the periods it changed and warm the dashboard queries.

Thin on purpose: the logic is :func:`metricsmith.cache.invalidation.refresh_after_run`.
The rollup flows call it with the changed days of their run (the cache expands them to the
periods of every grain); scheduled alone it just warms.
"""

from __future__ import annotations

from datetime import date

from prefect import flow, get_run_logger

from metricsmith.cache.invalidation import refresh_after_run


@flow(name="cache-warming", log_prints=True)
def cache_warming(
    days: list[date] | None = None,
    slugs: list[str] | None = None,
    warm: bool = True,
) -> str:
    report = refresh_after_run(days or [], slugs=slugs or [], warm=warm)
    logger = get_run_logger()
    for line in report.render().splitlines():
        (logger.info if report.ok else logger.warning)(line)
    return report.render()


if __name__ == "__main__":
    cache_warming()
