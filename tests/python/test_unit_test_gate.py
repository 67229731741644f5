"""The unit-test gate of the dbt jobs (issue 17, P5; metricsmith.orchestration.unit_tests):
``jobs run daily-metrics`` runs dbt's unit tests only when the project's code changed since the
job's last run that ran them and saw them pass; the data tests run every time.

The job runs as ``metricsmith jobs run`` in a fresh process with no Prefect server (a driver
that copies dbt's ``run_results.json`` after every dbt invocation, so each build's nodes are
read from dbt's own record). "Changed" is proved on a copy of the project (the source tree is
never modified), "failed" with a real failing unit test run by dbt on that copy, each against
real job log rows.
"""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
import textwrap
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from _cli_env import cli_env as _env
from rollups_reference import Event, insert_events

from metricsmith.config import load_settings, project_root
from metricsmith.core import dbt as core_dbt
from metricsmith.core.status import JobStatus
from metricsmith.custom_metrics.project import copy_project
from metricsmith.orchestration import joblog
from metricsmith.orchestration import unit_tests as gate

START = date(2026, 3, 2)
DAYS = 21
UNIT_TESTS = {"weekly_growth_like_for_like_each_basis", "monthly_growth_like_for_like_partial_months"}

#: runs ``main(argv)``; after every dbt invocation copies run_results.json to $RESULTS_DIR/<n>.json
DRIVER = textwrap.dedent("""
    import json, os, shutil, sys
    from pathlib import Path
    from metricsmith.core import dbt as core_dbt
    out, real, n = Path(os.environ["RESULTS_DIR"]), core_dbt.invoke, []

    def recorded(args, **kwargs):
        outcome = real(args, **kwargs)
        n.append(1)
        src = core_dbt.target_path(kwargs.get("project_dir")) / "run_results.json"
        if src.is_file():
            shutil.copy(src, out / f"{len(n)}.json")
        (out / f"{len(n)}.args.json").write_text(json.dumps(list(args)))
        return outcome

    core_dbt.invoke = recorded
    from metricsmith.cli.main import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.fixture(scope="module")
def events(test_database: str) -> list[Event]:
    rng = random.Random(23)
    evs = []
    for n in range(DAYS * 30):
        day = START + timedelta(days=n % DAYS)
        at = datetime(day.year, day.month, day.day, rng.randrange(24), rng.randrange(60), tzinfo=UTC)
        kind = rng.choice(["page_view", "page_view", "signup", "purchase"])
        evs.append(Event(at, at + timedelta(seconds=5), kind, user_id=f"u{rng.randrange(40)}",
                         organization_id=f"o{rng.randrange(4)}", session_id=f"s{rng.randrange(100)}",
                         revenue_cents=rng.randrange(100, 5000) if kind == "purchase" else 0))
    with psycopg.connect(test_database, autocommit=True) as conn:
        conn.execute("truncate raw.events, raw.events_quarantine")
        conn.execute("truncate metricsmith.metrics_aggregation_jobs_log")
        # other modules' marts and ledger are not this one's: the daily job builds them from these events
        conn.execute("drop schema if exists analytics cascade")
        conn.execute("update metricsmith.custom_metric_definitions set status = 'archived'")
        insert_events(conn, evs)
    return evs


def _jobs_run(tmp_path: Path, name: str, *argv: str, **env: str) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    """``metricsmith jobs run <argv>`` in a fresh process; returns it and every dbt invocation's
    args and run results (in order)."""
    results = tmp_path / name
    results.mkdir()
    done = subprocess.run([sys.executable, "-c", DRIVER, "jobs", "run", *argv], capture_output=True, text=True,
                          timeout=900, env=_env(tmp_path, RESULTS_DIR=str(results), **env))
    runs = []
    for n in range(1, 1 + len(list(results.glob("*.args.json")))):
        rr = results / f"{n}.json"
        runs.append({"args": json.loads((results / f"{n}.args.json").read_text()),
                     "results": json.loads(rr.read_text())["results"] if rr.is_file() else []})
    return done, runs


def _daily_build(runs: list[dict[str, Any]]) -> dict[str, Any]:
    builds = [r for r in runs if r["args"][:1] == ["build"] and "+int_rollup_ledger" in r["args"]]
    assert len(builds) == 1, [r["args"] for r in runs]
    return builds[0]


def _nodes(build: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    """The nodes of ``kind`` (dbt's unique_id prefix: model., test., unit_test.) in a build's run results."""
    return [r for r in build["results"] if r["unique_id"].startswith(f"{kind}.")]


def _row(conn: psycopg.Connection[Any], job: str = "daily-metrics") -> dict[str, Any]:
    rows = joblog.recent(conn, job, limit=1)
    assert rows, f"no job log row for {job}"
    return rows[0]


def _count(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("select count(*) from metricsmith.metrics_aggregation_jobs_log").fetchone()
    assert row is not None
    return int(row[0])


def _fingerprint(project: Path | None = None) -> str:
    return gate.fingerprint(project, timezone=load_settings().timezone)


def test_daily_job_runs_unit_tests_only_when_the_project_changed(events: list[Event], tmp_path: Path,
                                                                 conn: psycopg.Connection[Any]) -> None:
    # 1. no earlier run: the unit tests run (dbt's run results list them) and pass
    done, runs = _jobs_run(tmp_path, "first", "daily-metrics", "--no-cache-refresh")
    assert done.returncode == 0, done.stdout + done.stderr
    first = _daily_build(runs)
    assert "unit_test" not in first["args"]
    units = _nodes(first, "unit_test")
    assert {u["unique_id"].rsplit(".", 1)[-1] for u in units} == UNIT_TESTS
    assert {u["status"] for u in units} == {"pass"}
    data_tests = _nodes(first, "test")
    assert len(data_tests) >= 30 and {t["status"] for t in data_tests} == {"pass"}  # 39 today
    row1 = _row(conn)
    assert row1["status"] == JobStatus.COMPLETED
    assert row1["details"]["unit_tests"] == {"ran": True, "fingerprint": _fingerprint(), "passed": True, "count": 2,
                                             "reason": "no earlier run of this job ran them"}
    assert "unit tests: 2 ran and passed" in done.stdout

    # 2. the same code: unit tests excluded, every data test and model still run
    done, runs = _jobs_run(tmp_path, "second", "daily-metrics", "--no-cache-refresh")
    assert done.returncode == 0, done.stdout + done.stderr
    second = _daily_build(runs)
    assert second["args"][-2:] == ["--exclude-resource-type", "unit_test"]
    assert _nodes(second, "unit_test") == []
    assert sorted(t["unique_id"] for t in _nodes(second, "test")) == sorted(t["unique_id"] for t in data_tests)
    assert {t["status"] for t in _nodes(second, "test")} == {"pass"}
    assert {m["unique_id"] for m in _nodes(second, "model")} == {m["unique_id"] for m in _nodes(first, "model")}
    row2 = _row(conn)
    assert row2["status"] == JobStatus.COMPLETED and row2["id"] > row1["id"]
    reason = f"the project is unchanged since run {row1['id']}, where they passed"
    assert row2["details"]["unit_tests"] == {"ran": False, "fingerprint": _fingerprint(),
                                             "passed_in_run": row1["id"], "reason": reason}
    assert row2["details"]["dbt_args"][-2:] == ["--exclude-resource-type", "unit_test"]
    assert f"unit tests: not run - {reason}" in done.stdout

    # 3. --unit-tests forces them; 4. so does METRICSMITH_ALWAYS_UNIT_TEST=1 (CI)
    for name, argv, env in (("forced", ("--unit-tests",), {}), ("always", (), {gate.ENV_ALWAYS: "1"})):
        done, runs = _jobs_run(tmp_path, name, "daily-metrics", "--no-cache-refresh", *argv, **env)
        assert done.returncode == 0, done.stdout + done.stderr
        build = _daily_build(runs)
        assert {u["unique_id"].rsplit(".", 1)[-1] for u in _nodes(build, "unit_test")} == UNIT_TESTS
        assert len(_nodes(build, "test")) == len(data_tests)
        unit = _row(conn)["details"]["unit_tests"]
        assert unit["ran"] is True and unit["passed"] is True and unit["count"] == 2
        assert unit["reason"] == f"forced (--unit-tests or {gate.ENV_ALWAYS}=1)", name
        assert "unit tests: 2 ran and passed - forced" in done.stdout

    # changed code (a macro, in a copy of the project): the newest run's fingerprint differs -> they run
    copy = copy_project(tmp_path / "project")
    assert _fingerprint(copy) == _fingerprint()
    macro = next(p for p in sorted((copy / "macros").rglob("*.sql")))
    macro.write_text(macro.read_text() + "\n-- changed\n")
    changed = _fingerprint(copy)
    assert changed != _fingerprint()
    newest = _row(conn)["id"]
    decision = gate.decide(conn, "daily-metrics", changed)
    assert decision.run and decision.reason == f"the project changed since run {newest}"
    assert not gate.decide(conn, "daily-metrics", _fingerprint()).run  # unchanged: skipped
    assert gate.decide(conn, "weekly-rollup", _fingerprint()).run  # per job: the weekly job never ran them


def test_fingerprint_reads_models_macros_and_dbt_project_only(tmp_path: Path) -> None:
    copy = copy_project(tmp_path / "project")
    base = _fingerprint(copy)
    # an independent reading of what it covers: every file under models/ and macros/, and dbt_project.yml
    expected = sorted([p.relative_to(copy).as_posix() for d in ("models", "macros") for p in (copy / d).rglob("*")
                       if p.is_file()] + ["dbt_project.yml"])
    assert [p.as_posix() for p in gate.code_files(copy)] == expected
    assert "models/marts/_marts__unit_tests.yml" in expected
    # not code: target/, profiles/, the generated custom-metric models, logs
    for other in ("target/run_results.json", "profiles/extra.yml", ".metricsmith/generated/embedded/m.sql", "logs/x"):
        (copy / other).parent.mkdir(parents=True, exist_ok=True)
        (copy / other).write_text("select 1")
    assert _fingerprint(copy) == base
    # each kind of code changes it: the unit test yml, a model, dbt_project.yml, a new macro file, a rename
    for rel, change in (("models/marts/_marts__unit_tests.yml", "\n# c\n"), ("dbt_project.yml", "\n# c\n")):
        before = (copy / rel).read_text()
        (copy / rel).write_text(before + change)
        assert _fingerprint(copy) != base, rel
        (copy / rel).write_text(before)
        assert _fingerprint(copy) == base, rel
    (copy / "macros" / "new_macro.sql").write_text("{% macro m() %}1{% endmacro %}")
    added = _fingerprint(copy)
    assert added != base
    (copy / "macros" / "new_macro.sql").rename(copy / "macros" / "other_macro.sql")
    assert _fingerprint(copy) not in (base, added)  # same contents, another path
    (copy / "macros" / "other_macro.sql").unlink()
    assert _fingerprint(copy) == base
    # the time zone the SQL is compiled with
    assert gate.fingerprint(copy, timezone="Europe/Berlin") != gate.fingerprint(copy, timezone="UTC")
    # sha256 of its input: 64 hex digits, the same for the source tree and an identical copy
    assert len(base) == 64 and int(base, 16) >= 0 and base == _fingerprint(project_root())
    assert base != hashlib.sha256(b"").hexdigest()


def _finished(conn: psycopg.Connection[Any], job: str, unit: dict[str, Any], status: JobStatus) -> int:
    row_id = joblog.start(conn, job, attempt=1, timeout_seconds=60, details={"unit_tests": unit})
    joblog.finish(conn, row_id, joblog.Final(status=status), {})
    return row_id


def test_a_run_whose_unit_tests_failed_is_never_the_reference(events: list[Event], tmp_path: Path,
                                                              conn: psycopg.Connection[Any]) -> None:
    job = "quarterly-rollup"  # rows of its own: the daily job's history is the other test's
    current = _fingerprint()
    # a real failing unit test: dbt on a copy whose expected row for weekly growth is wrong
    copy = copy_project(tmp_path / "project")
    yml = copy / "models" / "marts" / "_marts__unit_tests.yml"
    text = yml.read_text()
    expected = "- {week_start: 2024-01-01, days_with_data: 4,"
    assert text.count(expected) == 1
    yml.write_text(text.replace(expected, "- {week_start: 2024-01-01, days_with_data: 5,"))
    assert gate.fingerprint(copy, timezone=load_settings().timezone) != current
    build = core_dbt.invoke(["build", "--select", "+weekly_metrics", "--indirect-selection", "cautious"],
                            project_dir=copy)
    units = gate.unit_test_nodes(build)
    assert [(u.name, u.status) for u in units] == [("weekly_growth_like_for_like_each_basis", "fail")]
    assert not gate.passed(build)
    assert any(n.resource_type == "test" and n.status == "pass" for n in build.nodes)  # data tests ran
    failed = gate.ran_details(gate.Gate(True, current, "test"), build)
    assert failed["passed"] is False and failed["not_passed"] == ["weekly_growth_like_for_like_each_basis"]

    # a passed run, then the failed one (same fingerprint): the failed run is the newest that ran them
    good = _finished(conn, job, {"ran": True, "fingerprint": current, "passed": True}, JobStatus.COMPLETED)
    assert not gate.decide(conn, job, current).run
    bad = _finished(conn, job, failed, JobStatus.FAILED)
    decision = gate.decide(conn, job, current)
    assert decision.run and decision.reason == f"they did not pass in run {bad}"
    # a run that skipped them, or one still RUNNING, is not a run that ran them
    _finished(conn, job, {"ran": False, "fingerprint": current, "passed_in_run": good}, JobStatus.COMPLETED)
    running = joblog.start(conn, job, attempt=1, timeout_seconds=60, details={"unit_tests": {
        "ran": True, "fingerprint": current, "passed": True}})
    assert gate.decide(conn, job, current).reason == f"they did not pass in run {bad}"
    joblog.finish(conn, running, joblog.Final(status=JobStatus.FAILED, error_message="test row"),
                  {"unit_tests": {"ran": True, "fingerprint": current, "passed": False}})
    # passed again: the reference again; an interrupted run (recorded passed = false) is not
    assert gate.decide(conn, job, current).reason == f"they did not pass in run {running}"
    again = _finished(conn, job, {"ran": True, "fingerprint": current, "passed": True}, JobStatus.PARTIAL)
    assert gate.decide(conn, job, current) == gate.Gate(False, current, f"the project is unchanged since run {again}, "
                                                        "where they passed", again)
    interrupted = _finished(conn, job, gate.Gate(True, current, "x").details(), JobStatus.FAILED)
    assert gate.decide(conn, job, current).reason == f"they did not pass in run {interrupted}"
    assert gate.decide(conn, job, current, force=True).run


def test_bad_input_is_one_line_and_runs_nothing(tmp_path: Path, conn: psycopg.Connection[Any]) -> None:
    before = _count(conn)
    for name, argv, env, message in (
        ("env", ("daily-metrics",), {gate.ENV_ALWAYS: "maybe"},
         f"{gate.ENV_ALWAYS}='maybe': use 1 or 0 (true or false, yes or no, on or off)"),
        ("custom", ("custom-metrics", "--unit-tests"), {}, "custom-metrics takes no --unit-tests"),
    ):
        done, runs = _jobs_run(tmp_path, name, *argv, **env)
        assert done.returncode != 0 and runs == [], name
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert any(message in line for line in lines), done.stderr
        assert "Traceback" not in done.stderr
    assert _count(conn) == before  # no job log row: nothing ran
