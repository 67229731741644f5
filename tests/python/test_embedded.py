"""The embedded default: started on demand, reused by later processes, stopped by `down`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
import redis

from metricsmith import embedded
from metricsmith.config import load_settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ms-home")
    yield path
    settings = load_settings({"METRICSMITH_HOME": str(path)})
    embedded.stop_postgres(settings)
    embedded.stop_redis(settings)


def _pid(data_dir: Path) -> int:
    return int((data_dir / "postmaster.pid").read_text().splitlines()[0])


SNIPPET = """
import json, sys
from metricsmith import db
from metricsmith.config import load_settings
s = load_settings()
with db.connect(s) as conn:
    pid = conn.execute("select pg_backend_pid()").fetchone()[0]
    port = conn.info.port
r = db.redis_client(s)
print(json.dumps({"port": port, "redis": r.connection_pool.connection_kwargs["port"], "pong": r.ping()}))
"""


def _run_snippet(home: Path) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METRICSMITH_")}
    env["METRICSMITH_HOME"] = str(home)
    out = subprocess.run([sys.executable, "-c", SNIPPET], env=env, capture_output=True, text=True, check=True,
                         timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_start_on_demand_and_reuse_across_processes(home: Path) -> None:
    first = _run_snippet(home)
    state = embedded.read_state(home, "postgres")
    assert state is not None and first["port"] == state.port
    pid = _pid(state.data_dir)
    second = _run_snippet(home)
    assert second == first
    assert _pid(state.data_dir) == pid, "a second process must reuse the running server, not start another"
    rstate = embedded.read_state(home, "redis")
    assert rstate is not None and first["redis"] == rstate.port and first["pong"] is True


def test_concurrent_starts_give_one_server(home: Path) -> None:
    settings = load_settings({"METRICSMITH_HOME": str(home)})
    embedded.stop_postgres(settings)
    embedded.stop_redis(settings)
    env = {k: v for k, v in os.environ.items() if not k.startswith("METRICSMITH_")}
    env["METRICSMITH_HOME"] = str(home)
    procs = [subprocess.Popen([sys.executable, "-c", SNIPPET], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(3)]
    outs = [json.loads(p.communicate(timeout=120)[0].strip().splitlines()[-1]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert len({json.dumps(o, sort_keys=True) for o in outs}) == 1


def test_data_survives_restart_and_down_stops_both(home: Path) -> None:
    settings = load_settings({"METRICSMITH_HOME": str(home)})
    pg = embedded.ensure_postgres(settings)
    rd = embedded.ensure_redis(settings)
    with psycopg.connect(pg.url, autocommit=True) as conn:
        conn.execute("create table if not exists keepme (x int)")
        conn.execute("insert into keepme values (42)")
    redis.Redis(port=rd.port).set("keepme", "yes")
    env = {k: v for k, v in os.environ.items() if not k.startswith("METRICSMITH_")}
    env["METRICSMITH_HOME"] = str(home)
    down = subprocess.run([sys.executable, "-m", "metricsmith.cli", "down"], env=env, capture_output=True,
                          text=True, check=True, cwd=ROOT)
    assert "embedded postgres: stopped" in down.stdout and "embedded redis:    stopped" in down.stdout
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(pg.url, connect_timeout=2)
    # started again on demand, with the data kept
    pg2 = embedded.ensure_postgres(settings)
    rd2 = embedded.ensure_redis(settings)
    assert (pg2.port, rd2.port) == (pg.port, rd.port)
    with psycopg.connect(pg2.url) as conn:
        assert conn.execute("select x from keepme").fetchall() == [(42,)]
    assert redis.Redis(port=rd2.port).get("keepme") == b"yes"


def test_status_reports_servers(home: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METRICSMITH_")}
    env["METRICSMITH_HOME"] = str(home)
    out = subprocess.run([sys.executable, "-m", "metricsmith.cli", "status"], env=env, capture_output=True,
                         text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "postgres: embedded" in out.stdout and "answers (PostgreSQL" in out.stdout
    assert "redis:    embedded" in out.stdout and "answers (Redis" in out.stdout


def test_status_says_when_an_external_server_does_not_answer() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METRICSMITH_")}
    env["METRICSMITH_DATABASE_URL"] = "postgresql://postgres@127.0.0.1:9/none"
    env["METRICSMITH_REDIS_URL"] = "redis://127.0.0.1:9/0"
    out = subprocess.run([sys.executable, "-m", "metricsmith.cli", "status"], env=env, capture_output=True,
                         text=True, cwd=ROOT)
    assert out.returncode == 1
    assert "postgres: external" in out.stdout and "DOES NOT ANSWER" in out.stdout
