"""Versioned SQL migrations for what dbt does not own (raw events, operational tables).

Files ``src/metricsmith/migrations/NNNN_name.sql`` are applied in order, each in its own
transaction, and recorded in ``metricsmith.schema_migrations``. A session advisory lock
makes concurrent runs safe: the second waits, then finds nothing left to do. An applied
file whose text changed is an error, never silently re-applied.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg

from metricsmith.config import Settings
from metricsmith.core import pglock
from metricsmith.db import connect
from metricsmith.errors import UserFacingError

# 64-bit advisory lock key: derived from the name "metricsmith.migrations" (see core.pglock).
MIGRATION_LOCK_KEY = pglock.MIGRATIONS.key
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(UserFacingError):
    pass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def available() -> list[Migration]:
    found: list[Migration] = []
    for entry in resources.files("metricsmith.migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text()))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a version number: {versions}")
    return found


def _applied(conn: psycopg.Connection[Any]) -> dict[int, tuple[str, str]]:
    rows = conn.execute("select version, name, checksum from metricsmith.schema_migrations").fetchall()
    return {int(v): (n, c) for v, n, c in rows}


def upgrade(settings: Settings | None = None, *, verbose: bool = False) -> list[Migration]:
    """Apply pending migrations; return the ones applied by this call."""
    applied_now: list[Migration] = []
    with connect(settings, autocommit=True) as conn, pglock.MIGRATIONS.held(conn, None):
        conn.execute("create schema if not exists metricsmith")
        conn.execute(
            """
            create table if not exists metricsmith.schema_migrations (
                version    int primary key,
                name       text not null,
                checksum   text not null,
                applied_at timestamptz not null default now()
            )
            """
        )
        done = _applied(conn)
        for migration in available():
            if migration.version in done:
                name, checksum = done[migration.version]
                if checksum != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.version:04d}_{name} was applied but its file has changed; "
                        "add a new migration instead of editing an applied one"
                    )
                continue
            with conn.transaction():
                conn.execute(migration.sql)  # noqa: S608
                conn.execute(
                    "insert into metricsmith.schema_migrations (version, name, checksum) values (%s, %s, %s)",
                    (migration.version, migration.name, migration.checksum),
                )
            applied_now.append(migration)
            if verbose:
                print(f"applied {migration.version:04d}_{migration.name}")
    return applied_now


def status(settings: Settings | None = None) -> list[tuple[Migration, bool]]:
    with connect(settings, autocommit=True) as conn:
        exists = conn.execute("select to_regclass('metricsmith.schema_migrations')").fetchone()
        done = _applied(conn) if exists and exists[0] else {}
    return [(m, m.version in done) for m in available()]
