"""Shared helpers for the benchmarks: a throw-away database on the configured server."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg

from metricsmith import db, migrate
from metricsmith.config import load_settings


@contextlib.contextmanager
def bench_database(prefix: str, *, keep: bool = False) -> Iterator[str]:
    """Create ``<prefix>_<hex>`` on the configured (or embedded) server, migrated; drop it after."""
    server = db.database_url(load_settings())
    name = f"{prefix}_{secrets.token_hex(3)}"
    admin = urlunsplit(urlsplit(server)._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    url = urlunsplit(urlsplit(server)._replace(path=f"/{name}"))
    old = os.environ.get("METRICSMITH_DATABASE_URL")
    os.environ["METRICSMITH_DATABASE_URL"] = url
    try:
        migrate.upgrade()
        yield url
    finally:
        if old is None:
            os.environ.pop("METRICSMITH_DATABASE_URL", None)
        else:
            os.environ["METRICSMITH_DATABASE_URL"] = old
        if not keep:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'drop database if exists "{name}" with (force)')


def server_label() -> str:
    s = load_settings()
    return "embedded" if s.embedded_postgres else "external"
