"""profiles/profiles.yml follows METRICSMITH_DATABASE_URL with no `eval` step: plain `dbt` in
a fresh process (no METRICSMITH_PG* variables) builds the database the URL names, with a
password, a non-default port and percent-encoded parts decoded exactly as the CLI decodes
them (urllib, metricsmith.config.PostgresParams). METRICSMITH_DBT_TARGET / --target still work,
and no variable at all still means the embedded default."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from metricsmith import migrate
from metricsmith.config import PostgresParams, load_settings, project_root

ROOT = project_root()
DBT = str(Path(sys.executable).with_name("dbt"))
_PG_OVERRIDES = ("METRICSMITH_PGHOST", "METRICSMITH_PGPORT", "METRICSMITH_PGUSER", "METRICSMITH_PGPASSWORD",
                 "METRICSMITH_PGDATABASE")

#: prints the profile as dbt itself renders it (dbt's ProfileRenderer, the real profiles.yml)
RENDER = """
import json, os, sys
from dbt_common.context import set_invocation_context
from dbt.cli.flags import Flags
from dbt.cli.main import cli
from dbt.flags import set_from_args
from dbt.config.profile import Profile, read_profile
from dbt.config.renderer import ProfileRenderer
set_invocation_context(os.environ)
set_from_args(Flags(cli.make_context("dbt", ["debug"])), {})
target = sys.argv[2] if len(sys.argv) > 2 else None
p = Profile.from_raw_profiles(read_profile(sys.argv[1]), "metricsmith", ProfileRenderer({}), target_override=target)
c = p.credentials
print(json.dumps({"target": p.target_name, "host": c.host, "port": c.port, "user": c.user,
                  "password": c.password, "dbname": c.database}))
"""


def _fresh_env(**extra: str) -> dict[str, str]:
    """This process's environment without the profile's variables (a new user's shell)."""
    env = {k: v for k, v in os.environ.items() if k not in (*_PG_OVERRIDES, "METRICSMITH_DATABASE_URL",
                                                             "METRICSMITH_DBT_TARGET")}
    env.update(extra)
    return env


def _rendered(env: dict[str, str], target: str | None = None) -> dict[str, Any]:
    args = [sys.executable, "-c", RENDER, str(ROOT / "profiles"), *([target] if target else [])]
    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120, check=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


URLS = [
    "postgresql://alice:p%40ss%3Aw%2Frd%C3%A9%25@DB.Example.org:6543/my%20db%C3%BC?sslmode=require",
    "postgresql://postgres@127.0.0.1:5432/postgres",
    "postgres://bob:@h/",
    "postgresql://u%20x:secret@[::1]:7/d%2Fe",
    "postgresql+psycopg://only-host",
]


@pytest.mark.parametrize("url", URLS)
def test_profile_parses_the_url_like_the_cli(url: str) -> None:
    expected = PostgresParams.from_url(url)
    got = _rendered(_fresh_env(METRICSMITH_DATABASE_URL=url))
    assert got == {"target": "default", "host": expected.host, "port": expected.port, "user": expected.user,
                   "password": expected.password, "dbname": expected.dbname}


def test_profile_defaults_overrides_and_targets() -> None:
    embedded = {"host": "127.0.0.1", "port": 54329, "user": "postgres", "password": "", "dbname": "metricsmith"}
    assert _rendered(_fresh_env()) == {"target": "default", **embedded}
    url = "postgresql://alice:pw@db.example:6543/metrics"
    # a METRICSMITH_PG* variable overrides its one part (metricsmith's own dbt runs set them)
    got = _rendered(_fresh_env(METRICSMITH_DATABASE_URL=url, METRICSMITH_PGPORT="1"))
    assert (got["host"], got["port"], got["dbname"]) == ("db.example", 1, "metrics")
    # the target: variable and --target
    assert _rendered(_fresh_env(METRICSMITH_DATABASE_URL=url, METRICSMITH_DBT_TARGET="embedded")) == {
        "target": "embedded", **embedded}
    assert _rendered(_fresh_env(METRICSMITH_DATABASE_URL=url), target="embedded") == {"target": "embedded",
                                                                                      **embedded}
    assert _rendered(_fresh_env(METRICSMITH_DATABASE_URL=url, METRICSMITH_DBT_TARGET="embedded"),
                     target="default")["host"] == "db.example"
    # a URL that is not postgresql:// names itself in the host dbt fails to reach
    assert "not a postgresql:// URL" in _rendered(_fresh_env(METRICSMITH_DATABASE_URL="mysql://x/y"))["host"]


@pytest.fixture()
def other_database(test_database: str) -> Any:
    """A second database on the same server, owned by a new role with a password, both with
    names that need percent-encoding; yields its URL. Dropped afterwards."""
    token = secrets.token_hex(3)
    role = f"ms user@{token}:é"
    password = "p@ss:w/rd%é " + token
    dbname = f"{test_database.rsplit('/', 1)[1]}_url é/{token}"
    admin = urlunsplit(urlsplit(test_database)._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("create role {} login password {}").format(sql.Identifier(role), sql.Literal(password)))
        conn.execute(sql.SQL("create database {} owner {}").format(sql.Identifier(dbname), sql.Identifier(role)))
    parts = urlsplit(test_database)
    netloc = f"{quote(role, safe='')}:{quote(password, safe='')}@{parts.hostname}:{parts.port or 5432}"
    url = urlunsplit(parts._replace(netloc=netloc, path="/" + quote(dbname, safe="")))
    try:
        yield url
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(dbname)))
            conn.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(role)))


def test_plain_dbt_builds_the_database_of_the_url(other_database: str, conn: psycopg.Connection[Any],
                                                  tmp_path: Path) -> None:
    url = other_database
    params = PostgresParams.from_url(url)
    assert "%" in url and params.password and params.port and "é" in params.dbname
    migrate.upgrade(replace(load_settings(), database_url=url))
    with psycopg.connect(url, autocommit=True) as other:
        other.execute(
            "insert into raw.events (event_id, occurred_at, received_at, event_type, user_id, revenue_cents) "
            "select gen_random_uuid(), t, t, 'purchase', 'u' || (i % 3), 100 "
            "from generate_series(1, 30) as i, lateral (select timestamptz '2024-03-01 10:00+00' + i * interval '1 day') as s(t)")
    ledger_before = conn.execute("select to_regclass('analytics.int_rollup_ledger') is not null").fetchone()
    if ledger_before and ledger_before[0]:
        runs_before = conn.execute("select count(*) from analytics.int_rollup_ledger").fetchone()
    env = _fresh_env(METRICSMITH_DATABASE_URL=url, DBT_TARGET_PATH=str(tmp_path / "target"),
                     DBT_LOG_PATH=str(tmp_path / "logs"), METRICSMITH_TIMEZONE="UTC")
    out = subprocess.run([DBT, "run", "--project-dir", str(ROOT), "--profiles-dir", str(ROOT / "profiles"),
                          "--select", "+int_rollup_ledger", "stg_events_rejected"],
                         env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    # the contracts declare every numeric precision: dbt's warning does not appear
    assert "unspecified precision" not in out.stdout
    with psycopg.connect(url, autocommit=True) as other:
        row = other.execute("select count(*), sum(total_events), sum(revenue_cents), sum(new_users) "
                            "from analytics.daily_metrics").fetchone()
        assert row == (30, 30, 3000, 3)
        assert other.execute("select current_user, current_database()").fetchone() == (params.user, params.dbname)
    # the session's own database was not touched
    if ledger_before and ledger_before[0]:
        assert conn.execute("select count(*) from analytics.int_rollup_ledger").fetchone() == runs_before
