"""Migrations: ordered, recorded, idempotent, safe when run concurrently, never silently re-applied."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from metricsmith import migrate
from metricsmith.config import load_settings


@pytest.fixture()
def fresh_db(test_database: str) -> Iterator[str]:
    name = f"{urlsplit(test_database).path.lstrip('/')}_m{secrets.token_hex(2)}"
    admin = urlunsplit(urlsplit(test_database)._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    yield urlunsplit(urlsplit(test_database)._replace(path=f"/{name}"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'drop database if exists "{name}" with (force)')


def _settings(url: str) -> Any:
    return load_settings({**os.environ, "METRICSMITH_DATABASE_URL": url})


def test_upgrade_applies_all_in_order_then_is_idempotent(fresh_db: str) -> None:
    applied = migrate.upgrade(_settings(fresh_db))
    assert [m.version for m in applied] == [m.version for m in migrate.available()]
    assert migrate.upgrade(_settings(fresh_db)) == []
    with psycopg.connect(fresh_db) as conn:
        versions = [r[0] for r in conn.execute("select version from metricsmith.schema_migrations order by 1")]
        assert versions == [m.version for m in migrate.available()]
        cols = conn.execute(
            "select column_name, data_type, is_nullable from information_schema.columns "
            "where table_schema='raw' and table_name='events' order by ordinal_position"
        ).fetchall()
    assert cols == [
        ("event_id", "uuid", "NO"), ("occurred_at", "timestamp with time zone", "NO"),
        ("received_at", "timestamp with time zone", "NO"), ("event_type", "text", "NO"),
        ("user_id", "text", "YES"), ("organization_id", "text", "YES"), ("session_id", "text", "YES"),
        ("revenue_cents", "bigint", "NO"), ("properties", "jsonb", "NO"),
        ("inserted_at", "timestamp with time zone", "NO"),  # 0020: server-assigned, drives the rollups
    ]


def test_concurrent_upgrades_apply_each_migration_once(fresh_db: str) -> None:
    env = {**os.environ, "METRICSMITH_DATABASE_URL": fresh_db}
    code = "from metricsmith import migrate; print(len(migrate.upgrade()))"
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [r[1] for r in results]
    counts = sorted(int(out.strip()) for out, _ in results)
    assert counts == [0, 0, 0, len(migrate.available())]
    with psycopg.connect(fresh_db) as conn:
        assert conn.execute("select count(*) from metricsmith.schema_migrations").fetchone() == (
            len(migrate.available()),)


def test_changed_applied_migration_is_an_error(fresh_db: str) -> None:
    migrate.upgrade(_settings(fresh_db))
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("update metricsmith.schema_migrations set checksum = 'x' where version = 1")
    with pytest.raises(migrate.MigrationError, match="has changed"):
        migrate.upgrade(_settings(fresh_db))


def test_constraints_of_the_contract(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("insert into raw.events (event_id, occurred_at, event_type, revenue_cents) "
                     "values (gen_random_uuid(), now(), 'x', -1)")
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("insert into raw.events (event_id, occurred_at, event_type) values (gen_random_uuid(), now(), '')")
    row = conn.execute("insert into raw.events (event_id, occurred_at, event_type) values (gen_random_uuid(), now(), 'x') "
                       "returning revenue_cents, properties, received_at is not null").fetchone()
    assert row == (0, {}, True)
    conn.execute("delete from raw.events")
