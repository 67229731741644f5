"""Run dbt in-process against the configured database.

dbt-core does not support two invocations at once in one process, so every invocation
goes through one process-wide lock. The profile in ``profiles/`` reads the environment
that :func:`metricsmith.db.dbt_env` produces; it is set before each invocation.

dbt's console log is off by default (``DBT_QUIET``: errors only; the commands print their own
summary); ``-v/--verbose`` (:func:`set_verbose`, or ``METRICSMITH_VERBOSE=1``) shows it. The
log file (``logs/dbt.log``) is written either way. Every path that runs dbt calls
:func:`prepare_environment`, so this one switch governs all of them.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from typing import Any

from metricsmith import db
from metricsmith.config import Settings, load_settings, project_root

_DBT_LOCK = threading.Lock()

ENV_VERBOSE = "METRICSMITH_VERBOSE"


def set_verbose(on: bool) -> None:
    """Show dbt's log in this process (and the processes it starts) - the commands' ``-v``."""
    if on:
        os.environ[ENV_VERBOSE] = "1"


def verbose() -> bool:
    return os.environ.get(ENV_VERBOSE, "").strip().lower() in ("1", "true", "yes", "on")


class DbtError(RuntimeError):
    """A dbt invocation failed; ``failures`` lists (node, message) for each failed node."""

    def __init__(self, message: str, failures: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.failures = failures or []


@dataclass
class DbtRun:
    args: list[str]
    success: bool
    results: list[Any] = field(default_factory=list)
    raw: Any = None

    @property
    def node_status(self) -> dict[str, str]:
        return {str(r.node.unique_id): str(r.status) for r in self.results if getattr(r, "node", None)}

    @property
    def failures(self) -> list[tuple[str, str]]:
        return [
            (str(r.node.unique_id), str(r.message))
            for r in self.results
            if getattr(r, "node", None) and str(r.status) in ("error", "fail", "runtime error")
        ]


def dbt_base_args() -> list[str]:
    root = project_root()
    return ["--project-dir", str(root), "--profiles-dir", str(root / "profiles")]


def prepare_environment(settings: Settings | None = None) -> dict[str, str]:
    """Export the profile's variables (and dbt's no-tracking flags) into this process, and
    dbt's console verbosity (quiet unless :func:`verbose`)."""
    env = {**db.dbt_env(settings or load_settings()), "DBT_QUIET": "false" if verbose() else "true"}
    os.environ.update(env)
    return env


def run_dbt(
    args: list[str],
    *,
    vars: dict[str, Any] | None = None,
    settings: Settings | None = None,
    raise_on_failure: bool = True,
) -> DbtRun:
    """Invoke ``dbt <args>`` in this process (e.g. ``["build", "--select", "daily_metrics+"]``)."""
    from dbt.cli.main import dbtRunner

    prepare_environment(settings)
    full = [*args, *dbt_base_args()]
    if vars:
        full += ["--vars", json.dumps(vars, default=str)]
    with _DBT_LOCK:
        result = dbtRunner().invoke(full)
    results = list(getattr(result.result, "results", None) or []) if result.result is not None else []
    run = DbtRun(args=full, success=bool(result.success), results=results, raw=result)
    if raise_on_failure and not run.success:
        if result.exception is not None:
            raise DbtError(f"dbt {' '.join(args)} failed: {result.exception}") from result.exception
        details = "; ".join(f"{node}: {msg}" for node, msg in run.failures) or "see dbt log"
        raise DbtError(f"dbt {' '.join(args)} failed: {details}", run.failures)
    return run
