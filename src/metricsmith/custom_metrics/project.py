"""Where generated models live, and a private copy of the dbt project for tests and benches.

Generated models are per database, in a git-ignored folder of the project:
``.metricsmith/generated/<database identity>/``. ``dbt_project.yml`` names the same folder in
its ``model-paths`` from the same setting the profile reads (``METRICSMITH_DATABASE_URL``), so
a plain ``dbt run --profiles-dir profiles`` builds the custom metrics of the database it points
at, and a compile for one database never changes what ``dbt`` sees for another. The folder is
relative to the project (not under an absolute ``METRICSMITH_HOME``): dbt writes a model's
compiled SQL to ``target/compiled/<package>/<model path>``, which for an absolute model path
would be the model file itself. :func:`database_identity` and that ``model-paths`` entry are the two
spellings of one rule (tests/python/test_custom_metrics_trust.py checks they agree).
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from metricsmith.config import Settings, project_root


def database_identity(settings: Settings) -> str:
    """``embedded``, or ``db-`` + 12 hex digits of the URL's part after its last ``@``.

    The part after ``@`` is host, port, database and options: the same database reached as
    another user shares its folder, and the password is not part of what is hashed.
    """
    if settings.database_url is None:
        return "embedded"
    where = settings.database_url.strip().split("@")[-1]
    return "db-" + hashlib.md5(where.encode()).hexdigest()[:12]  # noqa: S324 - a name, not security


GENERATED_PARENT = Path(".metricsmith") / "generated"


def generated_dir(settings: Settings, project_dir: Path | None = None) -> Path:
    """The folder of the generated models of the database ``settings`` point at."""
    return (project_dir or project_root()) / GENERATED_PARENT / database_identity(settings)


def copy_project(dest: Path) -> Path:
    """Copy dbt_project.yml, macros/, models/ and profiles/ to ``dest`` (no generated models).

    The copy has its own generated folders, target/ and manifest: experiments stay out of
    the project's own."""
    root = project_root()
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("macros", "models", "profiles"):
        shutil.copytree(root / name, dest / name, dirs_exist_ok=True)
    shutil.copy(root / "dbt_project.yml", dest / "dbt_project.yml")
    return dest
