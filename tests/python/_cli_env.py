"""The environment of a `metricsmith` subprocess started by a test (the orchestration tests)."""

from __future__ import annotations

import os
from pathlib import Path

from metricsmith.orchestration.unit_tests import ENV_ALWAYS


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """This session's database and Redis (inherited), a home and a Prefect home of its own, no
    Prefect server settings, analytics off; dbt's log and the unit-test override only when the
    test passes them in ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    for var in ("METRICSMITH_VERBOSE", ENV_ALWAYS):
        env.pop(var, None)
    env.update(METRICSMITH_HOME=str(tmp_path / "home"), PREFECT_HOME=str(tmp_path / "prefect"),
               PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1", DBT_SEND_ANONYMOUS_USAGE_STATS="false",
               PYTHONUNBUFFERED="1", **extra)
    return env
