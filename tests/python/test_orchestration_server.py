"""The long-lived Prefect server set-up with real processes: ``metricsmith ui --port P`` records
where it listens and serves a UI configured for P; ``serve`` and ``jobs run`` find it (no
PREFECT_API_URL) or say clearly that none runs; ``serve`` stops on SIGTERM/SIGINT; the
default output of ``rollups run`` / ``jobs run`` is the summary, ``-v`` shows dbt's log.

One ``metricsmith ui`` server for the module (on a free loopback port, PREFECT_HOME in a tmp
dir): starting a Prefect server costs 10-40 s."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from metricsmith import generator
from metricsmith.orchestration import joblog, server

CLI = [sys.executable, "-m", "metricsmith.cli"]
JOB_LOG = joblog.TABLE


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(home: Path, prefect_home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(METRICSMITH_HOME=str(home), PREFECT_HOME=str(prefect_home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               DO_NOT_TRACK="1", DBT_SEND_ANONYMOUS_USAGE_STATS="false", PYTHONUNBUFFERED="1")
    env.pop("METRICSMITH_VERBOSE", None)
    return env


@dataclass
class Ui:
    proc: subprocess.Popen[str]
    port: int
    home: Path
    env: dict[str, str]

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"


@pytest.fixture(scope="module")
def events(test_database: str) -> None:
    with psycopg.connect(test_database, autocommit=True) as conn:
        conn.execute("truncate raw.events, raw.events_quarantine")
        conn.execute("update metricsmith.custom_metric_definitions set status = 'archived'")
        # start from no rollups: marts left by earlier modules hold days these events do not
        # have, which the data tests of `dbt build` (rightly) report
        conn.execute("drop schema if exists analytics cascade")
    generator.generate_to_db(days=21, events_per_day=80, seed=5, start=date(2026, 1, 5))


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory, test_database: str) -> Iterator[Ui]:
    home = tmp_path_factory.mktemp("mshome")
    env = _env(home, tmp_path_factory.mktemp("prefect_home"))
    port = _free_port()
    log = home / "ui.log"  # a file, not a pipe nobody reads (the server would block on a full pipe)
    with log.open("w") as sink:
        proc = subprocess.Popen([*CLI, "ui", "--port", str(port)], env=env, stdout=sink, stderr=subprocess.STDOUT,
                                text=True)
    state = home / server.STATE_FILE
    deadline = time.monotonic() + 240
    while not state.exists():
        assert proc.poll() is None, f"metricsmith ui exited: {log.read_text()}"
        assert time.monotonic() < deadline, "metricsmith ui did not record its server in time"
        time.sleep(0.5)
    handle = Ui(proc, port, home, env)
    try:
        yield handle
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([*CLI, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _run(args: list[str], env: dict[str, str], timeout: float = 600) -> tuple[subprocess.CompletedProcess[str], float]:
    began = time.perf_counter()
    done = subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=timeout)
    return done, time.perf_counter() - began


def _post(api: str, path: str, body: dict[str, Any] | None = None) -> Any:
    response = httpx.post(f"{api}/{path}", json=body or {}, timeout=10)
    response.raise_for_status()
    return response.json()


def test_ui_records_where_it_listens_and_its_ui_talks_to_that_port(ui: Ui) -> None:
    doc = json.loads((ui.home / server.STATE_FILE).read_text())
    assert doc["api_url"] == ui.api and doc["port"] == ui.port and doc["pid"] == ui.proc.pid
    settings = httpx.get(f"http://127.0.0.1:{ui.port}/ui-settings", timeout=10).json()
    assert settings["api_url"] == ui.api  # not the default port 4200
    # a second `metricsmith ui` says one already runs (one line, exit 2)
    done, _ = _run(["ui", "--port", str(_free_port())], ui.env, timeout=60)
    assert done.returncode == 2 and "already runs" in done.stderr and "Traceback" not in done.stderr


def _wait_for_deployments(api: str, proc: subprocess.Popen[str], names: set[str], timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"serve exited: {proc.communicate()}"
        found = {d["name"]: d for d in _post(api, "deployments/filter")}
        if names <= set(found):
            return found
        time.sleep(1)
    raise AssertionError("serve did not register its deployments")


def _stop_serve(proc: subprocess.Popen[str], sig: signal.Signals) -> tuple[str, str, float]:
    """Send ``sig`` to ``serve``: it stops within 10 s, exits 0, says so and prints no traceback.
    Returns its stdout, its stderr and the seconds it took."""
    sent = time.monotonic()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=15)
    elapsed = time.monotonic() - sent
    assert elapsed < 10, f"serve took {elapsed:.1f} s to stop"
    assert proc.returncode == 0 and "serve: stopped" in out, (proc.returncode, out, err)
    assert "Traceback" not in err, err
    return out, err, elapsed


def _kill(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_uses_the_recorded_server_and_stops_on_signal(ui: Ui, sig: signal.Signals, test_database: str) -> None:
    from metricsmith.orchestration.schedules import DEPLOYMENTS

    proc = _spawn(["serve"], ui.env)  # no PREFECT_API_URL: it finds the server `metricsmith ui` recorded
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # printed once the deployments are built, just before serving
        assert first.startswith("serving "), (first, proc.poll())
        found = _wait_for_deployments(ui.api, proc, {d.job for d in DEPLOYMENTS})
        crons = {n: [s["schedule"].get("cron") for s in d.get("schedules", [])] for n, d in found.items()}
        assert crons["realtime-snapshot"] == ["*/10 * * * *"]  # not every minute
        time.sleep(2)  # let the runner start polling
        out, err, _ = _stop_serve(proc, sig)
    finally:
        _kill(proc)
    assert f"on the Prefect server at {ui.api}" in first and "temporary" not in (out + err).lower()


def test_serve_without_a_server_says_so(tmp_path: Path, test_database: str) -> None:
    env = _env(tmp_path / "home", tmp_path / "prefect")
    done, seconds = _run(["serve"], env, timeout=120)
    assert done.returncode == 2 and seconds < 60
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "no Prefect server runs" in lines[0] and "`metricsmith ui`" in lines[0]


def _dbt_log_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "Running with dbt" in line or " of " in line and " OK " in line]


def _summaries(stdout: str) -> list[str]:
    """The output's unindented lines: a job's summary and where its flow ran (its unit tests' line left out)."""
    return [line for line in stdout.splitlines() if line.strip() and not line.startswith(" ")]


def test_jobs_run_without_a_server_runs_no_temporary_server(events: None, tmp_path: Path) -> None:
    env = _env(tmp_path / "home", tmp_path / "prefect")
    # `metricsmith rollups run` first builds every mart (the module starts with none), so the
    # job below does the incremental work a scheduled run does, as `rollups run` would
    rollups, rollups_seconds = _run(["rollups", "run"], env)
    assert rollups.returncode == 0, rollups.stderr
    done, seconds = _run(["jobs", "run", "weekly-rollup", "--no-cache-refresh"], env)
    assert done.returncode == 0, done.stderr
    out = _summaries(done.stdout)
    assert len(out) == 1 and out[0].startswith("weekly-rollup: COMPLETED after 1 attempt(s)"), done.stdout
    assert "no Prefect server runs" in done.stderr
    text = (done.stdout + done.stderr).lower()
    assert "temporary" not in text and "starting server" not in text and not _dbt_log_lines(done.stdout)
    print(f"\nwall time: jobs run weekly-rollup (no server) {seconds:.1f} s; rollups run {rollups_seconds:.1f} s")
    # no server start-up (10-40 s) on top of the dbt work (its data tests come on top); relative
    # to the same machine's `rollups run`, so a loaded machine slows both alike. The proof that no
    # Prefect server code is even loaded is in test_orchestration_direct.py
    assert seconds < 1.5 * rollups_seconds + 20


def test_jobs_run_uses_the_recorded_server(events: None, ui: Ui) -> None:
    done, _ = _run(["jobs", "run", "monthly-rollup", "--no-cache-refresh"], ui.env)
    assert done.returncode == 0, done.stderr
    out = _summaries(done.stdout)
    assert out[0].startswith("monthly-rollup: COMPLETED") and len(out) == 2, done.stdout
    assert f"on the Prefect server at {ui.api}" in out[1]
    flow_run_id = out[1].split()[2]
    run = httpx.get(f"{ui.api}/flow_runs/{flow_run_id}", timeout=10).json()
    assert run["state"]["type"] == "COMPLETED"
    assert len(done.stderr.splitlines()) < 5 and not _dbt_log_lines(done.stdout + done.stderr)
    # --json: the machine-readable result
    done, _ = _run(["jobs", "run", "monthly-rollup", "--no-cache-refresh", "--json"], ui.env)
    doc = json.loads(done.stdout)
    assert doc["status"] == "COMPLETED" and doc["job"] == "monthly-rollup"


def test_rollups_run_prints_the_summary_and_dbt_log_with_verbose(events: None, tmp_path: Path) -> None:
    env = _env(tmp_path / "home", tmp_path / "prefect")
    done, _ = _run(["rollups", "run"], env)
    assert done.returncode == 0, done.stderr
    assert not _dbt_log_lines(done.stdout) and "Running with dbt" not in done.stdout + done.stderr
    assert len(done.stdout.strip().splitlines()) <= 4, done.stdout
    loud, _ = _run(["rollups", "run", "-v"], env)
    assert loud.returncode == 0 and "Running with dbt" in loud.stdout and len(loud.stdout.splitlines()) > 10


def _processes_of_flow_run(flow_run_id: str) -> list[int]:
    """Pids of the processes a runner started for this flow run (they carry its id in their environment)."""
    needle = f"PREFECT__FLOW_RUN_ID={flow_run_id}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
            except OSError:  # ended meanwhile, or not ours to read
                pass
    return pids


def test_serve_stops_cleanly_while_a_flow_run_is_in_progress(events: None, ui: Ui, test_database: str) -> None:
    """Ctrl-C while a flow run is in progress: the flow run's process holds a connection to the
    runner's control channel, whose handler is cancelled at shutdown (which Python 3.11 reported
    as a traceback); serve still stops in time, quietly, and leaves no process of the run behind."""
    proc = _spawn(["serve"], ui.env)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("serving ")
        found = _wait_for_deployments(ui.api, proc, {"backfill"})
        run = _post(ui.api, f"deployments/{found['backfill']['id']}/create_flow_run",
                    {"parameters": {"start": "2026-01-05", "end": "2026-01-25", "refresh_cache": False}})
        deadline = time.monotonic() + 180
        with psycopg.connect(test_database, autocommit=True) as conn:
            # in progress: the flow run's process has started the job (its RUNNING job-log row)
            while (row := conn.execute(f"select id, status from {JOB_LOG} where prefect_flow_run_id = %s::uuid",
                                       (run["id"],)).fetchone()) is None:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "the backfill flow run did not start its job"
                time.sleep(0.2)
        assert row[1] == "RUNNING" and _processes_of_flow_run(run["id"]), (row, "the flow run ended before the signal")
        _, _, elapsed = _stop_serve(proc, signal.SIGINT)
    finally:
        _kill(proc)
    deadline = time.monotonic() + 10
    while (left := _processes_of_flow_run(run["id"])) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"processes of the interrupted flow run are left: {left}"
    # what is left of the run: its job-log row, RUNNING with its process gone, which the job's
    # next run marks FAILED (as here); in Prefect it stays Running (the runner stops without
    # reporting it)
    with psycopg.connect(test_database, autocommit=True) as conn:
        assert joblog.mark_stale(conn, "backfill") == [row[0]]
        ended = conn.execute(f"select status, error_message from {JOB_LOG} where id = %s", (row[0],)).fetchone()
    assert ended is not None and ended[0] == "FAILED" and ended[1].startswith(joblog.KILLED_MESSAGE), ended
    state = httpx.get(f"{ui.api}/flow_runs/{run['id']}", timeout=10).json()["state"]["type"]
    print(f"\nserve stopped in {elapsed:.1f} s during a flow run; its Prefect state: {state}")


def test_ui_stops_on_sigterm_and_removes_its_record(ui: Ui) -> None:
    ui.proc.send_signal(signal.SIGTERM)
    ui.proc.wait(timeout=15)
    assert not (ui.home / server.STATE_FILE).exists()
    assert not server.answers(ui.api, timeout=2)
