"""Prefect flow ``alerts-evaluate``: every minute, the time-based rules (and delivery retries).

Job-based rules are evaluated right after each job run (:func:`metricsmith.alerts.evaluate.after_job_run`);
this flow catches what only the clock can tell: overdue jobs, stale data, realtime series.
Thin on purpose: the logic is :func:`metricsmith.alerts.evaluate.evaluate`. Schedule ``* * * * *`` (UTC).
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from metricsmith.alerts.evaluate import TIME_KINDS, evaluate


@flow(name="alerts-evaluate", log_prints=True)
def alerts_evaluate(all_rules: bool = False) -> dict[str, Any]:
    result = evaluate(kinds=None if all_rules else TIME_KINDS)
    print(result.render())
    return result.to_dict()


if __name__ == "__main__":
    alerts_evaluate()
