"""Prefect flow ``spark-rollups``: the rollups on Spark (METRICSMITH_SPARK_MASTER: local or a
standalone cluster), then the publish of the marts to PostgreSQL, with the job log (the Spark
application id, the dbt run and the publish in its details), lock and retries of the one job
runner (:mod:`metricsmith.spark.job`); then every active custom metric on Spark on the same fresh
data (job ``custom-metrics``, its values published to PostgreSQL: docs/spark.md)."""

from __future__ import annotations

from typing import Any

from prefect import flow

from metricsmith.core.status import JobStatus
from metricsmith.custom_metrics.job import run_custom_metrics_job
from metricsmith.spark import job


@flow(name="spark-rollups", log_prints=True)
def spark_rollups(full_refresh: bool = False, custom_metrics: bool = True) -> dict[str, Any]:
    result = job.run_job(full_refresh=full_refresh)
    print(result.render())
    summary: dict[str, Any] = {"status": str(result.status), "log_id": result.log_id, "rows": result.rows_affected,
                               "days": len(result.changed_days)}
    if custom_metrics and result.ok:
        metrics = run_custom_metrics_job(full_refresh=full_refresh, engine="spark")
        print(f"custom metrics on Spark {metrics.status}: {metrics.models_ok} model(s) ok, "
              f"{metrics.models_failed} failed, {metrics.rows} value row(s) published")
        summary["custom_metrics"] = metrics.as_dict()
        if metrics.status is not JobStatus.COMPLETED:
            raise RuntimeError(f"custom-metrics {metrics.status}: {metrics.message}")
    return summary


if __name__ == "__main__":
    spark_rollups()
