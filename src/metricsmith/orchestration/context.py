"""Whether this code runs inside a Prefect flow run - asked without importing Prefect.

A flow run has loaded ``prefect.context``; a process that has not (the direct path of
``metricsmith jobs run`` with no server, ``run_job`` from Python, ``make demo``) is in none, so
the job runner, the retry policy, dbt and the artifact take their plain path there and the
process pays no Prefect import (1-3 s) and can never start Prefect's temporary server."""

from __future__ import annotations

import sys
from typing import Any


def flow_run_context() -> Any:
    """The current flow run's ``FlowRunContext``, None outside one."""
    module = sys.modules.get("prefect.context")
    return None if module is None else module.FlowRunContext.get()


def in_flow_run() -> bool:
    return flow_run_context() is not None
