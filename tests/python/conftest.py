"""Session fixtures: every test session gets its own database and Redis key prefix.

The servers are whatever the environment names: the embedded default when
``METRICSMITH_DATABASE_URL`` / ``METRICSMITH_REDIS_URL`` are unset, real servers otherwise
(``.ci/run`` runs the suite once for each). A session creates ``mstest_<pid>_<hex>`` on
that server, points ``METRICSMITH_DATABASE_URL`` at it, migrates it, and drops it at the
end; Redis keys live under ``mstest:<db>:`` and are deleted at the end. Sessions running
at the same time on one server therefore never see each other's data.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from metricsmith import db, migrate  # noqa: E402
from metricsmith.config import load_settings  # noqa: E402
from metricsmith.custom_metrics.project import generated_dir  # noqa: E402


def _with_dbname(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{dbname}"))


def _drop_stale_test_databases(conn: psycopg.Connection[Any]) -> None:
    for (name,) in conn.execute("select datname from pg_database where datname like 'mstest\\_%'").fetchall():
        try:
            pid = int(name.split("_")[1])
        except (IndexError, ValueError):
            continue
        try:
            os.kill(pid, 0)
            continue  # its session is still running
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        conn.execute(f'drop database if exists "{name}" with (force)')


@pytest.fixture(scope="session", autouse=True)
def test_database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    base = load_settings()
    server_url = db.database_url(base)
    redis_url = db.redis_url(base)
    name = f"mstest_{os.getpid()}_{secrets.token_hex(3)}"
    admin_url = _with_dbname(server_url, "postgres")
    with psycopg.connect(admin_url, autocommit=True) as conn:
        _drop_stale_test_databases(conn)
        conn.execute(f'create database "{name}"')
    url = _with_dbname(server_url, name)
    dbt_dir: Path = tmp_path_factory.mktemp("dbt")
    os.environ.update(
        {
            "METRICSMITH_DATABASE_URL": url,
            "METRICSMITH_REDIS_URL": redis_url,
            "METRICSMITH_REDIS_PREFIX": f"mstest:{name}:",
            "DBT_TARGET_PATH": str(dbt_dir / "target"),
            "DBT_LOG_PATH": str(dbt_dir / "logs"),
        }
    )
    os.environ.update(db.dbt_env())
    migrate.upgrade()
    try:
        yield url
    finally:
        try:
            client = db.redis_client()
            keys = list(client.scan_iter(match=f"mstest:{name}:*", count=1000))
            for start in range(0, len(keys), 500):
                client.delete(*keys[start : start + 500])
        except Exception:  # noqa: BLE001 - cleanup must not hide test results
            pass
        # the session database's generated custom-metric models (git-ignored, per database)
        shutil.rmtree(generated_dir(load_settings()), ignore_errors=True)
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)')


@pytest.fixture()
def conn(test_database: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(test_database, autocommit=True) as connection:
        yield connection


@pytest.fixture()
def empty_events(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    """raw.events and the quarantine emptied before the test."""
    conn.execute("truncate raw.events, raw.events_quarantine")
    return conn


@pytest.fixture(scope="session")
def prefect_harness(test_database: str) -> Iterator[None]:
    """One temporary Prefect server (``prefect_test_harness``) for the whole session.

    Not autouse: request it only in tests that run flows or deployments (it costs 10-20 s
    to start). Owned by the orchestration tests; other capabilities' flow tests reuse it."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield
