"""The one way metricsmith runs dbt: :func:`invoke`, returning one :class:`DbtOutcome`.

- **One invocation at a time per process**: dbt-core does not support two at once in one
  process, so every invocation (plain ``dbtRunner`` or prefect-dbt's ``PrefectDbtRunner``)
  holds :data:`_DBT_LOCK`.
- **Environment**: the profile in ``profiles/`` reads the variables of
  :func:`metricsmith.db.dbt_env`; ``dbt_project.yml`` reads ``METRICSMITH_DATABASE_URL`` (the
  generated custom-metric folder): :func:`prepare_environment` sets both before each
  invocation, for the settings of that invocation.
- **Paths**: ``--project-dir``/``--profiles-dir`` of the project (the package's, or another
  copy), ``--target-path`` = ``DBT_TARGET_PATH`` for the package's project, else
  ``<project>/target``.
- **Quiet by default**: dbt's console log shows errors only (``DBT_QUIET``); ``-v/--verbose``
  (:func:`set_verbose`, or ``METRICSMITH_VERBOSE=1``) shows it. The log file is written either way.
- **Inside a flow run** (``in_flow=True``) the invocation goes through ``PrefectDbtRunner``, so
  every dbt node becomes a Prefect task in the UI; the outcome is the same type.

:func:`invoke` never raises for a failed build: the outcome's :attr:`DbtOutcome.status` says
SUCCESS, PARTIAL (some models built, others failed) or FAILED; :meth:`DbtOutcome.raise_for_status`
turns a failure into :class:`DbtError` for callers that want an exception.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from metricsmith import db
from metricsmith.config import ENV_DATABASE_URL, Settings, env_flag, load_settings, project_root

_DBT_LOCK = threading.Lock()

ENV_VERBOSE = "METRICSMITH_VERBOSE"
#: dbt node statuses that mean the node failed
FAILURE_STATUSES = ("error", "fail", "runtime error")


class DbtStatus(StrEnum):
    SUCCESS = "SUCCESS"
    #: some models were built, others failed (or dbt stopped after building some)
    PARTIAL = "PARTIAL"
    FAILED = "FAILED"


class DbtError(RuntimeError):
    """A dbt invocation failed; ``failures`` lists the failed nodes."""

    def __init__(self, message: str, failures: list[NodeResult] | None = None) -> None:
        super().__init__(message)
        self.failures = failures or []


@dataclass(frozen=True)
class NodeResult:
    unique_id: str
    name: str
    resource_type: str
    status: str
    rows_affected: int | None
    message: str
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return self.status in FAILURE_STATUSES


@dataclass
class DbtOutcome:
    """What one dbt invocation did: status, per-node results, failures and timing."""

    args: list[str]
    status: DbtStatus
    nodes: list[NodeResult] = field(default_factory=list)
    #: ``"Type: message"`` when dbt itself failed (compile error, bad vars, connection...)
    exception: str | None = None
    seconds: float = 0.0
    #: dbt's own result objects (their ``timing`` and ``node``), for callers that report on them
    results: list[Any] = field(default_factory=list, repr=False)
    error: BaseException | None = field(default=None, repr=False)

    @property
    def success(self) -> bool:
        return self.status is DbtStatus.SUCCESS

    @property
    def node_status(self) -> dict[str, str]:
        return {n.unique_id: n.status for n in self.nodes}

    @property
    def failures(self) -> list[NodeResult]:
        return [n for n in self.nodes if n.failed]

    @property
    def models_ok(self) -> int:
        return sum(1 for n in self.nodes if n.resource_type == "model" and n.status == "success")

    @property
    def models_failed(self) -> int:
        return sum(1 for n in self.nodes if n.resource_type == "model" and n.failed)

    @property
    def skipped(self) -> int:
        return sum(1 for n in self.nodes if n.status == "skipped")

    def rows_affected(self, models: tuple[str, ...]) -> int:
        return sum(max(0, n.rows_affected or 0) for n in self.nodes
                   if n.resource_type == "model" and n.name in models and n.status == "success")

    @property
    def error_message(self) -> str | None:
        """One message for the job log: every failed node, dbt's own error, the skipped count."""
        if self.success:
            return None
        parts = [f"{n.resource_type} {n.name} {n.status}: {n.message.strip()}" for n in self.failures]
        if self.exception:
            parts.append(self.exception)
        if self.skipped:
            parts.append(f"{self.skipped} node(s) skipped")
        return "; ".join(parts) or "dbt failed (see the dbt log)"

    def raise_for_status(self, *, nodes: bool = True) -> DbtOutcome:
        """Raise :class:`DbtError` when dbt itself failed, or (``nodes``) when any node failed."""
        cut = next((i for i, a in enumerate(self.args) if a in ("--vars", "--project-dir")), len(self.args))
        command = " ".join(self.args[:cut])
        if self.error is not None or self.exception is not None:
            raise DbtError(f"dbt {command} failed: {self.error or self.exception}") from self.error
        if nodes and not self.success:
            details = "; ".join(f"{n.unique_id}: {n.message}" for n in self.failures) or "see dbt log"
            raise DbtError(f"dbt {command} failed: {details}", self.failures)
        return self


def set_verbose(on: bool) -> None:
    """Show dbt's log in this process (and the processes it starts) - the commands' ``-v``."""
    if on:
        os.environ[ENV_VERBOSE] = "1"


def verbose() -> bool:
    return env_flag(ENV_VERBOSE, os.environ.get(ENV_VERBOSE))


def prepare_environment(settings: Settings | None = None) -> dict[str, str]:
    """Export the profile's variables (and dbt's no-tracking flags), dbt's console verbosity
    (quiet unless :func:`verbose`) and the database URL ``dbt_project.yml`` reads."""
    settings = settings or load_settings()
    env = {**db.dbt_env(settings), "DBT_QUIET": "false" if verbose() else "true"}
    os.environ.update(env)
    if settings.database_url is None:
        os.environ.pop(ENV_DATABASE_URL, None)
    else:
        os.environ[ENV_DATABASE_URL] = settings.database_url
    return env


def target_path(project_dir: Path | None = None) -> Path:
    """Where dbt writes the manifest and run results for ``project_dir`` (default: the package's)."""
    root = project_root().resolve()
    project = (project_dir or root).resolve()
    if project == root and os.environ.get("DBT_TARGET_PATH"):
        return Path(os.environ["DBT_TARGET_PATH"])
    return project / "target"


def base_args(project_dir: Path | None = None) -> list[str]:
    project = (project_dir or project_root()).resolve()
    return ["--project-dir", str(project), "--profiles-dir", str(project / "profiles"),
            "--target-path", str(target_path(project))]


def _node(r: Any) -> NodeResult | None:
    node = getattr(r, "node", None)
    if node is None:
        return None
    response = getattr(r, "adapter_response", None) or {}
    rows = response.get("rows_affected") if isinstance(response, dict) else None
    return NodeResult(unique_id=str(node.unique_id), name=str(node.name), resource_type=str(node.resource_type),
                      status=str(r.status), rows_affected=int(rows) if rows is not None else None,
                      message=str(getattr(r, "message", None) or ""),
                      seconds=float(getattr(r, "execution_time", 0.0) or 0.0))


def _status(success: bool, nodes: list[NodeResult], exception: str | None) -> DbtStatus:
    if success and exception is None:
        return DbtStatus.SUCCESS
    built = any(n.resource_type == "model" and n.status == "success" for n in nodes)
    return DbtStatus.PARTIAL if built else DbtStatus.FAILED


def _run(full: list[str], project: Path, in_flow: bool) -> Any:
    from dbt.cli.main import dbtRunner

    if in_flow:
        from prefect.context import FlowRunContext

        if FlowRunContext.get() is not None:
            from prefect_dbt import PrefectDbtRunner, PrefectDbtSettings

            dbt_settings = PrefectDbtSettings(project_dir=project, profiles_dir=project / "profiles",
                                              target_path=target_path(project))
            runner = PrefectDbtRunner(settings=dbt_settings, raise_on_failure=False, disable_assets=True)
            return runner.invoke(full)
    return dbtRunner().invoke([*full, *base_args(project)])


def invoke(
    args: list[str],
    *,
    vars: dict[str, Any] | None = None,
    settings: Settings | None = None,
    project_dir: Path | None = None,
    in_flow: bool = False,
    environment: Callable[[Settings], object] | None = None,
) -> DbtOutcome:
    """Run ``dbt <args>`` (e.g. ``["build", "--select", "daily_metrics+"]``) in this process.

    ``project_dir``: another copy of the dbt project (default: the package's). ``in_flow``: use
    PrefectDbtRunner when called inside a Prefect flow run. ``environment``: replaces
    :func:`prepare_environment` (tests inject faults there)."""
    settings = settings or load_settings()
    project = (project_dir or project_root()).resolve()
    full = list(args)
    # every invocation passes the same vars (the time zone at least), so dbt's partial parse holds
    # from one invocation to the next instead of re-parsing the project when the vars differ
    full += ["--vars", json.dumps({"metrics_timezone": settings.timezone, **(vars or {})}, default=str)]
    started = time.perf_counter()
    with _DBT_LOCK:
        (environment or prepare_environment)(settings)
        try:
            res = _run(full, project, in_flow)
        except Exception as exc:  # noqa: BLE001 - dbt raises for some invocation errors
            return DbtOutcome(args=full, status=DbtStatus.FAILED, exception=f"{type(exc).__name__}: {exc}",
                              seconds=time.perf_counter() - started, error=exc)
    seconds = time.perf_counter() - started
    results = list(getattr(res.result, "results", None) or []) if res.result is not None else []
    nodes = [n for n in map(_node, results) if n is not None]
    error = res.exception if isinstance(res.exception, BaseException) else None
    exception = f"{type(res.exception).__name__}: {res.exception}" if res.exception is not None else None
    return DbtOutcome(args=full, status=_status(bool(res.success), nodes, exception), nodes=nodes,
                      exception=exception, seconds=seconds, results=results, error=error)
