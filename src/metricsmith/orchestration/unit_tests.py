"""The unit-test gate of the dbt jobs (issue 17, P5): dbt's unit tests run only when the
project's code changed since the job's last run that ran them and saw them pass.

The data tests check the data and run on every ``dbt build``. The unit tests check the SQL
logic against fixed fixtures (``models/marts/_marts__unit_tests.yml``): with the same code they
prove nothing new (dbt's "slim CI" idea). So each dbt job (:class:`jobs.DbtJob`):

- computes :func:`fingerprint` of the code the unit tests depend on (every file under
  ``models/`` and ``macros/`` - the unit test yml included - and ``dbt_project.yml``, sorted
  paths and contents, plus the dbt-core and adapter versions and the reporting time zone the
  SQL is compiled with; sha256). The generated custom-metric models live outside ``models/``
  (``.metricsmith/generated/``, :mod:`metricsmith.custom_metrics.project`), so they are not in it;
- reads, under its job lock, the newest finished run of the same job that ran the unit tests
  (:func:`last_run`): when that run's unit tests passed and its fingerprint is this one, ``dbt
  build`` gets :data:`EXCLUDE_ARGS` (data tests and models as usual); otherwise they run;
- records the decision in its job log row: ``details.unit_tests`` =
  ``{"ran": true, "fingerprint": ..., "passed": true|false, "count": n, "reason": ...}`` or
  ``{"ran": false, "fingerprint": ..., "passed_in_run": <log id>, "reason": ...}``.

``passed`` is true only when dbt raised nothing and every unit-test node's status is ``pass``
(a failed, errored or skipped unit test, an interrupted run, a dbt error: false), so such a
run is never the reference - and, being the newest run that ran them, it makes the next run
run them again. ``metricsmith jobs run <job> --unit-tests`` or :data:`ENV_ALWAYS` = 1 runs them
whatever the fingerprint (CI).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from metricsmith.config import env_flag, project_root
from metricsmith.core.dbt import DbtOutcome
from metricsmith.orchestration.joblog import TABLE

#: 1: every dbt job runs its unit tests (CI); ``jobs run --unit-tests`` sets it for its process
ENV_ALWAYS = "METRICSMITH_ALWAYS_UNIT_TEST"
#: what ``dbt build`` gets when the unit tests are not needed (dbt-core 1.11 ``build --help``)
EXCLUDE_ARGS = ("--exclude-resource-type", "unit_test")
#: the project's code the unit tests depend on (relative to the project directory)
CODE_DIRS = ("models", "macros")
CODE_FILES = ("dbt_project.yml",)
#: the packages whose version changes what the same code compiles to
DBT_PACKAGES = ("dbt-core", "dbt-postgres")


def always() -> bool:
    """True when :data:`ENV_ALWAYS` asks for the unit tests on every run (a bad value: ConfigError)."""
    return env_flag(ENV_ALWAYS, os.environ.get(ENV_ALWAYS))


def code_files(project_dir: Path | None = None) -> list[Path]:
    """The files :func:`fingerprint` reads, relative to the project, sorted."""
    root = (project_dir or project_root()).resolve()
    found = [p.relative_to(root) for d in CODE_DIRS if (root / d).is_dir() for p in (root / d).rglob("*") if p.is_file()]
    found += [Path(f) for f in CODE_FILES if (root / f).is_file()]
    return sorted(found, key=lambda p: p.as_posix())


def fingerprint(project_dir: Path | None = None, *, timezone: str) -> str:
    """sha256 of the code the unit tests depend on: every file of :func:`code_files` (path and
    contents), the versions of :data:`DBT_PACKAGES` and the reporting ``timezone``."""
    root = (project_dir or project_root()).resolve()
    h = hashlib.sha256()
    for rel in code_files(root):
        data = (root / rel).read_bytes()
        h.update(f"file {rel.as_posix()} {len(data)}\n".encode())
        h.update(data)
    for package in DBT_PACKAGES:
        try:
            version = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            version = "-"
        h.update(f"\npackage {package} {version}".encode())
    h.update(f"\ntimezone {timezone}".encode())
    return h.hexdigest()


def last_run(conn: psycopg.Connection[Any], job_name: str) -> tuple[int, dict[str, Any]] | None:
    """The newest finished run of ``job_name`` that ran the unit tests: (log id, its ``details.unit_tests``)."""
    row = conn.execute(
        f"""select id, details->'unit_tests' from {TABLE}
            where job_name = %s and status <> 'RUNNING' and details->'unit_tests'->>'ran' = 'true'
            order by id desc limit 1""",
        (job_name,),
    ).fetchone()
    if row is None or not isinstance(row[1], dict):
        return None
    return int(row[0]), row[1]


@dataclass(frozen=True)
class Gate:
    """Whether this run runs the unit tests, and why."""

    run: bool
    fingerprint: str
    reason: str
    #: the job log row whose passed unit tests this run relies on (when it skips them)
    passed_in_run: int | None = None

    def details(self) -> dict[str, Any]:
        """``details.unit_tests`` before the outcome is known (a run interrupted now: not passed)."""
        if self.run:
            return {"ran": True, "fingerprint": self.fingerprint, "passed": False, "reason": self.reason}
        return {"ran": False, "fingerprint": self.fingerprint, "passed_in_run": self.passed_in_run,
                "reason": self.reason}


def decide(conn: psycopg.Connection[Any], job_name: str, current: str, *, force: bool = False) -> Gate:
    """Run the unit tests unless the newest run of ``job_name`` that ran them passed with ``current``."""
    if force:
        return Gate(True, current, f"forced (--unit-tests or {ENV_ALWAYS}=1)")
    last = last_run(conn, job_name)
    if last is None:
        return Gate(True, current, "no earlier run of this job ran them")
    log_id, unit = last
    if unit.get("fingerprint") != current:
        return Gate(True, current, f"the project changed since run {log_id}")
    if unit.get("passed") is not True:
        return Gate(True, current, f"they did not pass in run {log_id}")
    return Gate(False, current, f"the project is unchanged since run {log_id}, where they passed", log_id)


def passed(outcome: DbtOutcome) -> bool:
    """True when dbt raised nothing and every unit-test node passed (none failed, errored or was skipped)."""
    return outcome.exception is None and all(n.status == "pass" for n in unit_test_nodes(outcome))


def unit_test_nodes(outcome: DbtOutcome) -> list[Any]:
    return [n for n in outcome.nodes if n.resource_type == "unit_test"]


def ran_details(gate: Gate, outcome: DbtOutcome) -> dict[str, Any]:
    """``details.unit_tests`` of a run that ran them, once dbt returned."""
    nodes = unit_test_nodes(outcome)
    out = {**gate.details(), "passed": passed(outcome), "count": len(nodes)}
    failed = [n.name for n in nodes if n.status != "pass"]
    if failed:
        out["not_passed"] = failed
    return out


def describe(unit: Any) -> str | None:
    """One line for the CLI from a row's ``details.unit_tests`` (None when the row has none)."""
    if not isinstance(unit, dict):
        return None
    if unit.get("ran"):
        state = "passed" if unit.get("passed") else "did NOT pass"
        return f"unit tests: {unit.get('count', '?')} ran and {state} - {unit.get('reason')}"
    return f"unit tests: not run - {unit.get('reason')} (fingerprint {str(unit.get('fingerprint'))[:12]}; --unit-tests runs them)"


def recorded(conn: psycopg.Connection[Any], log_id: int) -> Any:
    """``details.unit_tests`` of job log row ``log_id`` (None when it has none)."""
    row = conn.execute(f"select details->'unit_tests' from {TABLE} where id = %s", (log_id,)).fetchone()
    return row[0] if row else None
