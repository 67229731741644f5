"""The dbt project's own declarations, read once: ``dbt_project.yml`` as Python sees it.

dbt and Python share the rules declared there (``vars: event_rules``, ``vars: grains``,
``vars: production_targets``, the models' ``+schema``); this is the one reader.
"""

from __future__ import annotations

import functools
from typing import Any

import yaml

from metricsmith.config import project_root
from metricsmith.errors import UserFacingError


class ProjectFileError(UserFacingError):
    """dbt_project.yml cannot be read or is not a mapping."""


@functools.cache
def dbt_project() -> dict[str, Any]:
    """The parsed ``dbt_project.yml`` of :func:`metricsmith.config.project_root` (cached)."""
    path = project_root() / "dbt_project.yml"
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ProjectFileError(f"{path}: cannot read it ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ProjectFileError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(loaded, dict):
        raise ProjectFileError(f"{path}: expected a mapping at the top level")
    return loaded


def project_var(name: str, default: Any = None) -> Any:
    """``vars: <name>`` of dbt_project.yml as written there (Jinja in it is not rendered)."""
    return (dbt_project().get("vars") or {}).get(name, default)
