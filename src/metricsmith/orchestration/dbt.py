"""dbt through prefect-dbt's ``PrefectDbtRunner``: inside a flow every dbt node becomes a
Prefect task (visible in the UI). Shares :data:`metricsmith.dbt_runner._DBT_LOCK`, so there
are never two dbt invocations at once in one process, whichever API started them."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metricsmith import dbt_runner
from metricsmith.config import Settings, load_settings, project_root
from metricsmith.orchestration.retry import is_transient_message

FAILURE_STATUSES = ("error", "fail", "runtime error")


@dataclass
class NodeResult:
    unique_id: str
    name: str
    resource_type: str
    status: str
    rows_affected: int | None
    message: str


@dataclass
class DbtOutcome:
    """What one dbt invocation did, in the terms the job log needs."""

    args: list[str]
    success: bool
    nodes: list[NodeResult] = field(default_factory=list)
    exception: str | None = None

    @property
    def models_ok(self) -> int:
        return sum(1 for n in self.nodes if n.resource_type == "model" and n.status == "success")

    @property
    def models_failed(self) -> int:
        return sum(1 for n in self.nodes if n.resource_type == "model" and n.status in FAILURE_STATUSES)

    @property
    def failures(self) -> list[NodeResult]:
        return [n for n in self.nodes if n.status in FAILURE_STATUSES]

    @property
    def skipped(self) -> int:
        return sum(1 for n in self.nodes if n.status == "skipped")

    def rows_affected(self, models: tuple[str, ...]) -> int:
        return sum(max(0, n.rows_affected or 0) for n in self.nodes
                   if n.resource_type == "model" and n.name in models and n.status == "success")

    @property
    def transient(self) -> bool:
        """True when every failure is a transient one (database unreachable, lock, serialization)."""
        messages = [n.message for n in self.failures] + ([self.exception] if self.exception else [])
        return bool(messages) and all(is_transient_message(m) for m in messages)

    @property
    def error_message(self) -> str | None:
        if self.success:
            return None
        parts = [f"{n.resource_type} {n.name} {n.status}: {n.message.strip()}" for n in self.failures]
        if self.exception:
            parts.append(self.exception)
        if self.skipped:
            parts.append(f"{self.skipped} node(s) skipped")
        return "; ".join(parts) or "dbt failed (see the flow run logs)"


def _target_path() -> Path:
    return Path(os.environ.get("DBT_TARGET_PATH") or project_root() / "target")


def dbt_environment(settings: Settings, attempt: int) -> dict[str, str]:
    """The environment dbt's profile reads for this attempt (tests replace this to inject faults)."""
    return dbt_runner.prepare_environment(settings)


def invoke(args: list[str], *, vars: dict[str, Any] | None = None, settings: Settings | None = None,
           attempt: int = 1) -> DbtOutcome:
    """Run ``dbt <args>`` and summarise every node's result: with PrefectDbtRunner inside a
    flow run (each node a task in the UI), with plain dbtRunner outside one (no Prefect API needed)."""
    from dbt.cli.main import dbtRunner
    from prefect.context import FlowRunContext
    from prefect_dbt import PrefectDbtRunner, PrefectDbtSettings

    settings = settings or load_settings()
    root = project_root()
    full = list(args)
    if vars:
        full += ["--vars", json.dumps(vars, default=str)]
    with dbt_runner._DBT_LOCK:
        dbt_environment(settings, attempt)
        try:
            if FlowRunContext.get() is not None:
                dbt_settings = PrefectDbtSettings(project_dir=root, profiles_dir=root / "profiles",
                                                  target_path=_target_path())
                runner = PrefectDbtRunner(settings=dbt_settings, raise_on_failure=False, disable_assets=True)
                res = runner.invoke(full)
            else:
                res = dbtRunner().invoke([*full, *dbt_runner.dbt_base_args()])
        except Exception as exc:  # noqa: BLE001 - dbt raises for invocation errors (e.g. compile failure)
            return DbtOutcome(args=full, success=False, exception=f"{type(exc).__name__}: {exc}")
    nodes: list[NodeResult] = []
    for r in list(getattr(res.result, "results", None) or []) if res.result is not None else []:
        node = getattr(r, "node", None)
        if node is None:
            continue
        response = getattr(r, "adapter_response", None) or {}
        rows = response.get("rows_affected") if isinstance(response, dict) else None
        nodes.append(NodeResult(
            unique_id=str(node.unique_id), name=str(node.name), resource_type=str(node.resource_type),
            status=str(r.status), rows_affected=int(rows) if rows is not None else None,
            message=str(r.message or ""),
        ))
    exception = f"{type(res.exception).__name__}: {res.exception}" if res.exception is not None else None
    return DbtOutcome(args=full, success=bool(res.success), nodes=nodes, exception=exception)
