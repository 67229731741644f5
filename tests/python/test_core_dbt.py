"""core.dbt: every dbt caller goes through one wrapper and gets one outcome type (real dbt, real PostgreSQL)."""

from __future__ import annotations

from typing import Any

import pytest

from metricsmith.core import dbt as core_dbt
from metricsmith.custom_metrics.service import CustomMetricsService


def test_every_caller_gets_the_one_outcome_under_the_process_lock() -> None:
    held: list[bool] = []

    def environment(settings: Any) -> None:
        held.append(core_dbt._DBT_LOCK.locked())  # noqa: SLF001 - the lock spans the environment and the run
        core_dbt.prepare_environment(settings)

    direct = core_dbt.invoke(["run", "--select", "stg_events"], environment=environment)
    assert held == [True]
    assert isinstance(direct, core_dbt.DbtOutcome) and direct.status is core_dbt.DbtStatus.SUCCESS
    assert [n.name for n in direct.nodes] == ["stg_events"] and direct.nodes[0].status == "success"
    assert direct.seconds > 0 and direct.error_message is None and not direct.failures

    service = CustomMetricsService()
    parsed = service.run_dbt(["parse"])
    assert type(parsed) is core_dbt.DbtOutcome and parsed.status is core_dbt.DbtStatus.SUCCESS
    assert service.target_path == core_dbt.target_path()  # one target-path rule
    assert (service.target_path / "manifest.json").exists()


def test_a_dbt_failure_is_one_failed_outcome_and_one_error() -> None:
    bad = core_dbt.invoke(["no-such-command"])
    assert bad.status is core_dbt.DbtStatus.FAILED and bad.exception and not bad.nodes
    assert bad.error_message is not None and bad.exception in bad.error_message
    with pytest.raises(core_dbt.DbtError, match="dbt no-such-command failed"):
        bad.raise_for_status()
    with pytest.raises(core_dbt.DbtError):
        bad.raise_for_status(nodes=False)  # dbt itself failed: raised even when node failures are not


def _node(name: str, resource_type: str, status: str) -> core_dbt.NodeResult:
    return core_dbt.NodeResult(f"{resource_type}.p.{name}", name, resource_type, status, 1, f"{name} {status}")


def test_status_partial_when_some_models_built() -> None:
    built, broken = _node("a", "model", "success"), _node("b", "model", "error")
    partial = core_dbt.DbtOutcome(["build"], core_dbt._status(False, [built, broken], None), [built, broken])
    assert partial.status is core_dbt.DbtStatus.PARTIAL and partial.status == "PARTIAL"
    assert (partial.models_ok, partial.models_failed) == (1, 1) and partial.failures == [broken]
    assert partial.error_message == "model b error: b error"
    assert core_dbt._status(False, [broken, _node("t", "test", "fail")], None) is core_dbt.DbtStatus.FAILED
    assert core_dbt._status(True, [built], None) is core_dbt.DbtStatus.SUCCESS
    with pytest.raises(core_dbt.DbtError, match="model.p.b: b error") as caught:
        partial.raise_for_status()
    assert caught.value.failures == [broken]
    assert partial.raise_for_status(nodes=False) is partial


def test_job_status_is_one_enum_with_the_database_values(test_database: str) -> None:
    import psycopg

    from metricsmith.core.status import FINAL_STATUSES, JobStatus
    from metricsmith.orchestration import joblog

    with psycopg.connect(test_database) as conn:
        labels = [r[0] for r in conn.execute(
            "select enumlabel from pg_enum where enumtypid = 'metricsmith.job_status'::regtype "
            "order by enumsortorder").fetchall()]
    assert sorted(labels) == sorted(s.value for s in JobStatus)  # the values stored are unchanged
    assert joblog.FINAL_STATUSES == FINAL_STATUSES and "RUNNING" not in FINAL_STATUSES
    assert JobStatus("PARTIAL").failed and not JobStatus.COMPLETED.failed and JobStatus.COMPLETED == "COMPLETED"
