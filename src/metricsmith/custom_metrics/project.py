"""A private copy of the dbt project, for tests and benches that compile generated models.

Generated models are seen by every ``dbt parse`` of the project they are written into; a copy
keeps experiments out of the shared ``models/custom/generated/``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from metricsmith.config import project_root

VALUES_FILE = "custom_metric_values.sql"


def copy_project(dest: Path) -> Path:
    """Copy dbt_project.yml, macros/, models/ and profiles/ to ``dest`` (generated models left out)."""
    root = project_root()
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("macros", "models", "profiles"):
        shutil.copytree(root / name, dest / name, dirs_exist_ok=True)
    shutil.copy(root / "dbt_project.yml", dest / "dbt_project.yml")
    generated = dest / "models" / "custom" / "generated"
    generated.mkdir(parents=True, exist_ok=True)
    for path in generated.iterdir():
        if path.name != VALUES_FILE:
            path.unlink()
    return dest
