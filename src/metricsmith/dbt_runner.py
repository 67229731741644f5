"""Compatibility names for :mod:`metricsmith.core.dbt`, the one dbt invocation.

``run_dbt`` is :func:`metricsmith.core.dbt.invoke` raising :class:`DbtError` on failure
(``raise_on_failure``); ``DbtRun`` is :class:`metricsmith.core.dbt.DbtOutcome`.
"""

from __future__ import annotations

from typing import Any

from metricsmith.config import Settings
from metricsmith.core.dbt import (
    ENV_VERBOSE,
    DbtError,
    DbtOutcome,
    invoke,
    prepare_environment,
    set_verbose,
    verbose,
)

DbtRun = DbtOutcome

__all__ = ["ENV_VERBOSE", "DbtError", "DbtRun", "prepare_environment", "run_dbt", "set_verbose", "verbose"]


def run_dbt(
    args: list[str],
    *,
    vars: dict[str, Any] | None = None,
    settings: Settings | None = None,
    raise_on_failure: bool = True,
) -> DbtOutcome:
    """Invoke ``dbt <args>`` in this process (e.g. ``["build", "--select", "daily_metrics+"]``)."""
    outcome = invoke(args, vars=vars, settings=settings)
    return outcome.raise_for_status() if raise_on_failure else outcome
