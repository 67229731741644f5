"""Prefect flow ``spark-rollups``: the rollups on Spark (METRICSMITH_SPARK_MASTER: local or a
standalone cluster), then the publish of the marts to PostgreSQL, with the job log (the Spark
application id, the dbt run and the publish in its details), lock and retries of the one job
runner (:mod:`metricsmith.spark.job`)."""

from __future__ import annotations

from typing import Any

from prefect import flow

from metricsmith.spark import job


@flow(name="spark-rollups", log_prints=True)
def spark_rollups(full_refresh: bool = False) -> dict[str, Any]:
    result = job.run_job(full_refresh=full_refresh)
    print(result.render())
    return {"status": str(result.status), "log_id": result.log_id, "rows": result.rows_affected,
            "days": len(result.changed_days)}


if __name__ == "__main__":
    spark_rollups()
