"""The CLI's one error boundary, with real subprocesses: a Redis on a closed port, a
PostgreSQL on a closed port or whose backends are terminated mid-command, stdout closed by
``head``, bad arguments. Each ends in one ``metricsmith:`` line and a documented exit status."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import date

import psycopg
import pytest
import redis
from _cache_marts import Marts

from metricsmith.cli import build_parser
from metricsmith.errors import (
    EXIT_BROKEN_PIPE,
    EXIT_INTERNAL,
    EXIT_STATUSES,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    UserFacingError,
    classify,
)

CLI = [sys.executable, "-m", "metricsmith.cli"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the block ends: nothing listens


def run(*args: str, env: dict[str, str] | None = None, stdin: str = "", timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], env={**os.environ, **(env or {})}, input=stdin, capture_output=True,
                          text=True, timeout=timeout)


def assert_one_line(proc: subprocess.CompletedProcess[str], status: int, starts: str) -> None:
    assert "Traceback" not in proc.stderr, proc.stderr
    ours = [line for line in proc.stderr.splitlines() if line.startswith("metricsmith:")]
    assert len(ours) == 1, proc.stderr
    assert ours[0].startswith(starts), ours[0]
    assert proc.returncode == status, (proc.returncode, proc.stderr)


@pytest.mark.parametrize("args", [
    ["realtime", "consume", "--until-idle"],
    ["realtime", "snapshot"],
    ["realtime", "export"],
    ["realtime", "reconcile"],
])
def test_redis_on_a_closed_port(args: list[str]) -> None:
    proc = run(*args, env={"METRICSMITH_REDIS_URL": f"redis://127.0.0.1:{_closed_port()}/0"})
    assert_one_line(proc, EXIT_UNAVAILABLE, "metricsmith: Redis unavailable: ")
    assert "Connection refused" in proc.stderr


@pytest.mark.parametrize("args", [
    ["query", "daily", "--start", "2024-01-01", "--end", "2024-01-07"],
    ["query", "daily", "--no-cache"],
    ["rollups", "run", "--full-refresh"],
    ["rollups", "status"],
    ["db", "status"],
    ["load", "-"],
    ["realtime", "snapshot"],
    ["health"],
])
def test_postgres_on_a_closed_port(args: list[str]) -> None:
    started = time.monotonic()
    proc = run(*args, env={"METRICSMITH_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{_closed_port()}/x"},
               stdin='{"event_id": "e1"}\n')
    assert_one_line(proc, EXIT_UNAVAILABLE, "metricsmith: PostgreSQL unavailable: ")
    assert time.monotonic() - started < 60  # no 30 s connection-pool wait


def test_postgres_backends_terminated_during_a_full_refresh(test_database: str) -> None:
    """What a PostgreSQL restart does to a running `rollups run --full-refresh`."""
    dbname = test_database.rsplit("/", 1)[1]
    proc = subprocess.Popen([*CLI, "rollups", "run", "--full-refresh"], env=os.environ.copy(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    admin = test_database.rsplit("/", 1)[0] + "/postgres"
    terminated = 0
    try:
        with psycopg.connect(admin, autocommit=True) as conn:
            deadline = time.monotonic() + 150
            while proc.poll() is None and time.monotonic() < deadline:
                row = conn.execute("select count(*) from pg_stat_activity where datname = %s and application_name = 'dbt'",
                                   (dbname,)).fetchone()
                if row and row[0]:
                    break
                time.sleep(0.1)
            end = time.monotonic() + 3
            while proc.poll() is None and time.monotonic() < end:  # the "restart": every backend goes
                row = conn.execute("select count(pg_terminate_backend(pid)) from pg_stat_activity "
                                   "where datname = %s and pid <> pg_backend_pid()", (dbname,)).fetchone()
                terminated += int(row[0]) if row else 0
                time.sleep(0.2)
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert terminated >= 1
    result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    assert_one_line(result, EXIT_UNAVAILABLE, "metricsmith: ")
    # which words PostgreSQL's goodbye reaches dbt with depends on timing
    assert any(text in err for text in ("terminating connection", "closed the connection", "PostgreSQL unavailable"))


@pytest.fixture(scope="module")
def marts(test_database: str) -> Iterator[Marts]:
    with psycopg.connect(test_database, autocommit=True) as conn:
        m = Marts(conn, date(2023, 1, 1), date(2024, 12, 31), seed=5)
        yield m
        m.drop()


@pytest.mark.parametrize("cache", ["--no-cache", None])
def test_stdout_closed_by_the_reader_is_quiet(marts: Marts, cache: str | None) -> None:
    args = [*CLI, "query", "daily", "--start", "2023-01-01", "--end", "2024-12-31", "--format", "json",
            "--schema", marts.schema, *([cache] if cache else [])]
    # as `metricsmith ... | head -1` does: read one line, then close the pipe
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ.copy())
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().strip() == b"["
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert err == "" and proc.returncode == EXIT_BROKEN_PIPE, (proc.returncode, err)


def test_pipe_into_head_in_a_shell(marts: Marts) -> None:
    cmd = (f"{sys.executable} -m metricsmith.cli query daily --start 2023-01-01 --end 2024-12-31 --format json "
           f"--schema {marts.schema} | head -1; echo \"status ${{PIPESTATUS[0]}}\" >&2")
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env=os.environ.copy(), timeout=120)
    assert proc.stdout == "[\n"  # ~180 KB of JSON: more than a pipe holds, so the write fails
    assert proc.stderr.strip() == f"status {EXIT_BROKEN_PIPE}", proc.stderr


@pytest.mark.parametrize("args", [
    ["realtime", "consume", "--batch-size", "0"],
    ["realtime", "consume", "--block-ms", "-1"],
    ["realtime", "serve", "--port", "99999"],
    ["realtime", "snapshot", "--keep-days", "0"],
    ["realtime", "reconcile", "--days", "-3"],
    ["realtime", "reconcile", "--day", "2024-02-30"],
    ["query", "daily", "--start", "yesterday"],
    ["query", "weekly", "--end", "2024-13-01"],
    ["cache", "invalidate", "--month", "2024-13"],
    ["cache", "invalidate", "--quarter", "2024-04-31"],
    ["query", "monthly", "--year", "99999"],
    ["query", "quarterly", "--year", "2024", "--start", "2024-01-01"],
    ["backfill", "--start", "2024-02-30", "--end", "2024-03-01"],
    ["generate", "--start", "2024-13-01"],
    ["jobs", "run", "nope"],
    ["jobs", "log", "--limit", "-1"],
    ["ui", "--port", "99999"],
    ["rollups", "status", "--runs", "0"],
    ["nope"],
])
def test_bad_arguments_are_usage_errors(args: list[str]) -> None:
    proc = run(*args, timeout=60)
    assert proc.returncode == EXIT_USAGE, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("metricsmith")  # argparse: usage, then one error line


@pytest.mark.parametrize("args, message", [
    (["query", "daily", "--start", "2024-02-01", "--end", "2024-01-01"], "metricsmith: start 2024-02-01 is after end"),
    (["cache", "invalidate"], "metricsmith: say what to invalidate"),
    (["backfill", "--start", "2024-02-01", "--end", "2024-01-01"], "metricsmith: backfill start 2024-02-01 is after end"),
    (["load", "/nonexistent/events.jsonl"], "metricsmith: /nonexistent/events.jsonl"),
])
def test_bad_values_are_one_line(args: list[str], message: str) -> None:
    assert_one_line(run(*args, timeout=60), EXIT_USAGE, message)


def test_rollups_run_test_on_spark_is_refused_in_one_line() -> None:
    """`rollups run` follows METRICSMITH_ENGINE; `--test` (dbt's tests) is PostgreSQL's only: refused
    before anything starts."""
    assert_one_line(run("rollups", "run", "--test", env={"METRICSMITH_ENGINE": "spark"}, timeout=60), EXIT_USAGE,
                    "metricsmith: rollups run --test runs dbt's tests on PostgreSQL only")


def test_classify_real_driver_errors() -> None:
    with pytest.raises(psycopg.OperationalError) as pg:
        psycopg.connect(f"postgresql://postgres@127.0.0.1:{_closed_port()}/x", connect_timeout=3)
    assert classify(pg.value)[0] == EXIT_UNAVAILABLE
    with pytest.raises(redis.ConnectionError) as rd:
        redis.Redis(port=_closed_port(), socket_connect_timeout=1).ping()
    assert classify(rd.value)[0] == EXIT_UNAVAILABLE
    # a command's own message, raised while handling the driver's error, is what is printed
    try:
        try:
            raise rd.value
        except redis.ConnectionError:
            raise UserFacingError("the realtime service needs Redis") from None
    except UserFacingError as exc:
        assert classify(exc) == (EXIT_UNAVAILABLE, "the realtime service needs Redis")
    code, line = classify(ZeroDivisionError("division by zero"))
    assert code == EXIT_INTERNAL and line is not None and "\n" not in line
    assert classify(BrokenPipeError())[0] == EXIT_BROKEN_PIPE


def test_exit_statuses_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(["--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    for code, meaning in EXIT_STATUSES:
        assert f"{code:<4} {meaning}" in out


def test_status_names_each_server_that_does_not_answer(test_database: str) -> None:
    """`metricsmith status`: a line per server, exit 1 when one does not answer (not an error line)."""
    up = run("status")
    assert up.returncode == 0, up.stdout + up.stderr
    assert "postgres: external" in up.stdout or "postgres: embedded" in up.stdout
    assert "answers (PostgreSQL " in up.stdout and "answers (Redis " in up.stdout
    port = _closed_port()
    down = run("status", env={"METRICSMITH_REDIS_URL": f"redis://127.0.0.1:{port}/0"})
    assert down.returncode == 1 and "metricsmith:" not in down.stderr
    assert "answers (PostgreSQL " in down.stdout
    assert f"redis:    external redis://127.0.0.1:{port}/0  DOES NOT ANSWER: " in down.stdout
    down = run("status", env={"METRICSMITH_DATABASE_URL": f"postgresql://postgres:secret@127.0.0.1:{port}/x"})
    assert down.returncode == 1
    assert f"postgres: external postgresql://postgres:***@127.0.0.1:{port}/x  DOES NOT ANSWER: " in down.stdout
    assert "secret" not in down.stdout
