"""Where the marts live: the schema dbt writes them into, resolved as the project declares it.

The configured schema is ``models: metricsmith: +schema`` in ``dbt_project.yml``; the target is
``METRICSMITH_DBT_TARGET`` (default ``default``), the one the CLI's own dbt runs use. On the
targets listed in ``vars: production_targets`` the schema is used as is, on any other target it
is ``<schema>_<target>`` — the rule of ``macros/utils/generate_schema_name.sql``, read from the
same declaration.
"""

from __future__ import annotations

import os

from metricsmith.core.project import dbt_project, project_var
from metricsmith.errors import UserFacingError


class SchemaConfigError(UserFacingError):
    """dbt_project.yml does not say where the marts go."""


def dbt_target() -> str:
    """The dbt target metricsmith runs and reads (``METRICSMITH_DBT_TARGET``, default ``default``)."""
    return os.environ.get("METRICSMITH_DBT_TARGET", "").strip() or "default"


def configured_schema() -> str:
    """``models: metricsmith: +schema`` of dbt_project.yml (``analytics``)."""
    schema = ((dbt_project().get("models") or {}).get("metricsmith") or {}).get("+schema")
    if not isinstance(schema, str) or not schema.strip():
        raise SchemaConfigError("dbt_project.yml: models: metricsmith: +schema is not set")
    return schema.strip()


def production_targets() -> tuple[str, ...]:
    declared = project_var("production_targets", ["default", "embedded"])
    if not isinstance(declared, list) or not all(isinstance(t, str) for t in declared):
        raise SchemaConfigError("dbt_project.yml: vars: production_targets must be a list of target names")
    return tuple(declared)


def marts_schema(target: str | None = None) -> str:
    """The schema holding the marts and ``custom_metric_values`` for ``target`` (default: the
    CLI's target): ``analytics``, or ``analytics_<target>`` on a non-production target."""
    name = dbt_target() if target is None else target
    schema = configured_schema()
    return schema if name in production_targets() else f"{schema}_{name}"
