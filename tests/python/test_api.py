"""The HTTP API against real PostgreSQL and Redis through an ASGI client: every endpoint's values
equal the marts (an independent SQL query or a plain-Python computation), the visibility matrix,
401 / 404 / 422 with their JSON bodies, ETag / 304, CSV, Redis down -> still correct and
/readyz degraded. One app and one data set for the whole module."""

from __future__ import annotations

import csv
import dataclasses
import io
import secrets
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.types.json import Jsonb
from rollups_reference import like_for_like_days

from metricsmith import grains
from metricsmith.api import keys
from metricsmith.api.app import create_app
from metricsmith.api.config import ApiSettings
from metricsmith.cache import TwoTierCache, load_cache_config
from metricsmith.config import load_settings
from metricsmith.custom_metrics import access
from metricsmith.grains import Grain
from metricsmith.query import ADDITIVE, MetricsQueryService, breakdown_keys, period_columns

FIRST, TODAY = date(2023, 1, 1), date(2024, 12, 20)
MEASURES = ("total_events", "active_users", "new_users", "active_organizations", "sessions", "signups",
            "purchases", "revenue_cents")
USERS = {  # user -> (organization, admin, teams)
    "api_owner": ("api_org_a", False, ("api_team",)),
    "api_teammate": ("api_org_a", False, ("api_team",)),
    "api_colleague": ("api_org_a", False, ()),
    "api_admin": ("api_org_a", True, ()),
    "api_outsider": ("api_org_b", False, ()),
}
METRICS = {"api_private": "PRIVATE", "api_team": "TEAM", "api_org": "ORGANIZATION", "api_public": "PUBLIC"}
#: who may read which metric (the custom metrics' rules, written out)
CAN_READ = {
    "api_owner": {"api_private", "api_team", "api_org", "api_public"},
    "api_teammate": {"api_team", "api_org", "api_public"},
    "api_colleague": {"api_org", "api_public"},
    "api_admin": {"api_private", "api_team", "api_org", "api_public"},
    "api_outsider": {"api_public"},
}
COUNTRIES = ("de", "fr", "us")


def pct(current: Any, previous: Any) -> Decimal | None:
    if current is None or previous is None or previous == 0:
        return None
    return (100 * (Decimal(current) - Decimal(previous)) / Decimal(previous)).quantize(Decimal("0.0001"), ROUND_HALF_UP)


def _sql_type(column: str, g: Grain) -> str:
    if column in (g.start_column, g.end_column):
        return "date"
    if column == "is_complete":
        return "boolean"
    if column == "days_with_data":
        return "integer"
    if column in MEASURES:
        return "bigint"
    if column == g.breakdown_column:
        return "jsonb"
    if column.endswith("_basis_days"):
        return "integer"
    if column.endswith("_basis"):
        return "text"
    return "numeric"


@dataclass
class World:
    """The marts of every declared grain (rows kept in Python too), users, keys, custom metrics."""

    conn: psycopg.Connection[Any]
    schema: str = field(default_factory=lambda: f"apitest_{secrets.token_hex(3)}")
    rows: dict[str, dict[date, dict[str, Any]]] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    values: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def build(self) -> World:
        self.conn.execute(f"create schema {self.schema}")
        daily = self._daily()
        for g in grains.load():
            self.rows[g.name] = daily if g.unit == "day" else self._periods(g, daily)
            self._write(g)
        self._principals()
        self._custom_metrics()
        return self

    def _daily(self) -> dict[date, dict[str, Any]]:
        out, day, n = {}, FIRST, 0
        while day <= TODAY:
            ev = 100 + (n * 37) % 400
            out[day] = {"metric_date": day, "total_events": ev, "active_users": ev // 3, "new_users": ev // 10,
                        "active_organizations": ev // 50, "sessions": ev // 2, "signups": ev // 10,
                        "purchases": ev // 20, "revenue_cents": ev * 137}
            day, n = day + timedelta(days=1), n + 1
        return out

    def _periods(self, g: Grain, daily: dict[date, dict[str, Any]]) -> dict[date, dict[str, Any]]:
        out: dict[date, dict[str, Any]] = {}
        for start in g.periods_between(FIRST, TODAY):
            days = [d for d in daily if g.start_of(d) == start]
            row: dict[str, Any] = {g.start_column: start, g.end_column: g.end_of(start), "days_with_data": len(days),
                                   "is_complete": len(days) == g.days_in(start)}
            for m in MEASURES:
                row[m] = sum(daily[d][m] for d in days)
            for name, m in (("avg_daily_events", "total_events"), ("avg_daily_active_users", "active_users"),
                            ("avg_daily_revenue_cents", "revenue_cents")):
                row[name] = (Decimal(row[m]) / len(days)).quantize(Decimal("0.0001"), ROUND_HALF_UP)
            out[start] = row
        for start, row in out.items():
            for c in g.comparisons:
                prev = out.get(c.baseline(start))
                for m in ("total_events", "active_users", "new_users", "revenue_cents"):
                    row[f"{m}_{c.suffix}_pct"] = pct(row[m], prev[m] if prev else None)
                # this world's data is whole periods but the last (no aligned-days arithmetic needed here:
                # the API passes the flags through; test_query checks them against a like-for-like reference)
                row[f"{c.suffix}_basis_days"] = None if prev is None else min(row["days_with_data"], prev["days_with_data"])
                row[f"{c.suffix}_basis"] = ("none" if prev is None else "partial_baseline" if not prev["is_complete"]
                                            else "full" if row["is_complete"] else "to_date")
            if g.breakdown_column:
                finer = grains.get(g.breakdown or "day")
                bkeys = breakdown_keys(g)
                row[g.breakdown_column] = [
                    dict(zip(bkeys, [s.isoformat(), n, 0, 0, 0,
                                     n == sum(1 for k in range(finer.days_in(s))
                                              if g.start_of(s + timedelta(days=k)) == start)], strict=True))
                    for s in finer.periods_between(start, g.end_of(start))
                    for n in [sum(1 for d in daily if finer.start_of(d) == s and g.start_of(d) == start)]]
        return out

    def _write(self, g: Grain) -> None:
        columns = period_columns(g)
        ddl = ", ".join(f"{c} {_sql_type(c, g)}" for c in columns)
        self.conn.execute(f"create table {self.schema}.{g.model} ({ddl})")
        with self.conn.cursor() as cur:
            cur.executemany(
                f"insert into {self.schema}.{g.model} ({', '.join(columns)}) values ({', '.join(['%s'] * len(columns))})",
                [[Jsonb(r[c]) if c == g.breakdown_column else r.get(c) for c in columns]
                 for r in self.rows[g.name].values()])

    def _principals(self) -> None:
        for user, (org, admin, teams) in USERS.items():
            access.add_user(self.conn, user, org, is_org_admin=admin, teams=teams)
            self.keys[user], _ = keys.create(self.conn, user, name="test")

    def _custom_metrics(self) -> None:
        self.conn.execute(f"create table {self.schema}.custom_metric_values (metric_slug text, metric_version int,"
                          " grain text, period_start date, dimensions jsonb, value numeric, previous_value numeric,"
                          " growth_pct numeric, computed_at timestamptz, growth_basis text, growth_basis_days integer)")
        for slug, visibility in METRICS.items():
            row = self.conn.execute(
                "insert into metricsmith.custom_metric_definitions (slug, name, owner_id, team_id, organization_id,"
                " visibility, current_version) values (%s, %s, 'api_owner', %s, 'api_org_a', %s, 2)"
                " on conflict (slug) do nothing returning metric_id",
                (slug, slug.replace("_", " "), "api_team" if visibility == "TEAM" else None, visibility)).fetchone()
            # versions are immutable: a module that ran earlier in the session left the same definitions
            for version in (1, 2) if row is not None else ():
                spec = {"name": slug, "type": "SUM", "source": "events", "grain": "week", "expression": "revenue_cents",
                        "dimensions": ["country"], "visibility": visibility}
                self.conn.execute("insert into metricsmith.custom_metric_versions (metric_id, version, spec, compiled_sql,"
                                  " created_by) values (%s, %s, %s, 'select 1', 'api_owner')", (row[0], version, Jsonb(spec)))
            self.values[slug] = []
            for version in (1, 2):
                for week in range(6):
                    for i, country in enumerate(COUNTRIES):
                        value = {"metric_slug": slug, "metric_version": version, "grain": "week",
                                 "period_start": date(2024, 1, 1) + timedelta(weeks=week),
                                 "dimensions": {"country": country}, "value": Decimal(1000 * version + 10 * week + i),
                                 "previous_value": None, "growth_pct": None,
                                 "computed_at": datetime(2024, 3, 1, tzinfo=UTC),
                                 "growth_basis": "none" if week == 0 else "full",
                                 "growth_basis_days": None if week == 0 else 7}
                        self.conn.execute(f"insert into {self.schema}.custom_metric_values values"
                                          " (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                                          (*list(value.values())[:4], Jsonb(value["dimensions"]),
                                           *list(value.values())[5:]))
                        if version == 2:
                            self.values[slug].append(value)

    def drop(self) -> None:
        self.conn.execute(f"drop schema {self.schema} cascade")


def norm(value: Any) -> Any:
    """JSON-comparable form: dates as ISO text, every number as float."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, int | float | Decimal):
        return float(value)
    if isinstance(value, dict):
        return {k: norm(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [norm(v) for v in value]
    raise TypeError(type(value))


def norm_api(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, dict):
        return {k: norm_api(v) for k, v in value.items()}
    if isinstance(value, list):
        return [norm_api(v) for v in value]
    raise TypeError(type(value))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def world(test_database: str) -> Iterator[World]:
    with psycopg.connect(test_database, autocommit=True) as conn:
        w = World(conn).build()
        yield w
        w.drop()


@pytest.fixture(scope="module")
def cache(world: World) -> Iterator[TwoTierCache]:
    c = TwoTierCache(config=load_cache_config())
    assert c.wait_until_listening()
    c.clear()
    yield c
    c.close()


@pytest.fixture(scope="module")
def client(world: World, cache: TwoTierCache) -> Iterator[TestClient]:
    svc = MetricsQueryService(cache=cache, schema=world.schema, today=TODAY)
    app = create_app(query=svc, api_settings=ApiSettings(max_range_days=800))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def auth(world: World, user: str = "api_owner") -> dict[str, str]:
    return {"Authorization": f"Bearer {world.keys[user]}"}


def assert_error(response: Any, status: int, param: str | None = None, words: str = "") -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["status"] == status and error["message"]
    if param is not None:
        assert error["param"] == param, error
    assert words.lower() in error["message"].lower(), error
    assert "Traceback" not in response.text
    return dict(error)


# ---------------------------------------------------------------- marts
@pytest.mark.parametrize("grain", grains.names())
def test_every_grain_equals_the_mart(client: TestClient, world: World, grain: str) -> None:
    g = grains.get(grain)
    start, end = date(2024, 2, 10), date(2024, 11, 5)
    response = client.get(f"/v1/metrics/{grain}", params={"start": str(start), "end": str(end)}, headers=auth(world))
    assert response.status_code == 200, response.text
    body = response.json()
    columns = period_columns(g)
    sql_rows = world.conn.execute(
        f"select {', '.join(columns)} from {world.schema}.{g.model} where {g.start_column} between %s and %s"
        f" order by {g.start_column}", (g.start_of(start), g.start_of(end))).fetchall()
    assert len(body["rows"]) == len(sql_rows) == len(list(g.periods_between(start, end)))
    for got, want in zip(body["rows"], sql_rows, strict=True):
        expected = dict(zip(columns, want, strict=True))
        if g.breakdown_column:  # the service gives the breakdown with dates and counts typed
            expected[g.breakdown_column] = [dict(e) for e in expected[g.breakdown_column]]
        assert norm_api({c: got[c] for c in columns}) == norm(expected)
        period_start = expected[g.start_column]
        assert got["is_complete"] == expected.get("is_complete", period_start < TODAY)
        assert got["growth_baseline"] == {c.suffix: c.baseline(period_start).isoformat() for c in g.comparisons}


def test_fields_subset_and_csv(client: TestClient, world: World) -> None:
    params = {"start": "2024-01-01", "end": "2024-03-31", "fields": "revenue_cents,total_events"}
    body = client.get("/v1/metrics/week", params=params, headers=auth(world)).json()
    assert body["fields"] == ["week_start", "total_events", "revenue_cents"]
    assert all(set(r) == {"week_start", "total_events", "revenue_cents", "is_complete", "growth_baseline"}
               for r in body["rows"])
    as_csv = client.get("/v1/metrics/week", params={**params, "format": "csv"}, headers=auth(world))
    by_accept = client.get("/v1/metrics/week", params=params, headers={**auth(world), "Accept": "text/csv"})
    assert as_csv.headers["content-type"].startswith("text/csv") and as_csv.text == by_accept.text
    table = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert [r["week_start"] for r in table] == [r["week_start"] for r in body["rows"]]
    assert [int(r["revenue_cents"]) for r in table] == [r["revenue_cents"] for r in body["rows"]]
    assert table[0]["growth_baseline_wow"] == body["rows"][0]["growth_baseline"]["wow"]


def test_growth_travels_with_its_basis(client: TestClient, world: World) -> None:
    params = {"start": "2024-09-01", "end": str(TODAY), "fields": "revenue_cents_mom_pct"}
    body = client.get("/v1/metrics/month", params=params, headers=auth(world)).json()
    assert body["fields"] == ["month_start", "revenue_cents_mom_pct", "mom_basis_days", "mom_basis"]
    for row in body["rows"]:
        want = world.rows["month"][date.fromisoformat(row["month_start"])]
        assert (row["mom_basis"], row["mom_basis_days"]) == (want["mom_basis"], want["mom_basis_days"])
        assert row["is_complete"] == want["is_complete"]  # the mart's, though not a chosen field
    assert body["rows"][-1]["mom_basis"] == "to_date"  # the month in progress
    as_csv = list(csv.DictReader(io.StringIO(
        client.get("/v1/metrics/month", params={**params, "format": "csv"}, headers=auth(world)).text)))
    assert [r["mom_basis"] for r in as_csv] == [r["mom_basis"] for r in body["rows"]]
    # every column by default, the basis columns included; the dashboard marks a non-full basis
    full = client.get("/v1/metrics/quarter", params={"start": "2024-01-01", "end": str(TODAY)},
                      headers=auth(world)).json()
    assert {"qoq_basis", "qoq_basis_days", "yoy_basis", "yoy_basis_days"} <= set(full["fields"])
    script = client.get("/static/dashboard.js").text
    assert 'basisMark(basis)' in script and 'to_date: "ᵗᵈ"' in script and "summary.alignment" in script


@pytest.mark.parametrize("grain", grains.names())
def test_summary_equals_plain_python(client: TestClient, world: World, grain: str) -> None:
    g = grains.get(grain)
    start, end = date(2024, 4, 1), date(2024, 9, 30)
    response = client.get(f"/v1/metrics/{grain}/summary", params={"start": str(start), "end": str(end)},
                          headers=auth(world))
    assert response.status_code == 200, response.text
    body = response.json()
    current = list(g.periods_between(start, end))
    rows = [world.rows[grain][p] for p in current]
    assert body["totals"] == {m: sum(r[m] for r in rows) for m in ADDITIVE}
    assert body["complete_periods"] == sum(1 for r in rows if r.get("is_complete", True))
    previous, p = [], current[0]
    for _ in current:
        p = g.start_of(p - timedelta(days=1))
        previous.insert(0, p)
    # like for like (the marts' rule): whole periods when both are complete, else the days both
    # periods of a pair have, matched by their offset in the period
    daily = world.rows["day"]
    complete = {} if g.end_column is None else {s: bool(r["is_complete"]) for s, r in world.rows[grain].items()}
    cur_days, prev_days, pairs = like_for_like_days(g, daily, complete, list(zip(current, previous, strict=True)),
                                                    by_day=False)
    assert body["compared_periods"] == len(pairs)
    assert body["compared_days"] == len(cur_days) and body["growth_basis"] in ("full", "to_date")
    for m in ADDITIVE:
        cur = sum(daily[d][m] for d in cur_days)
        prev = sum(daily[b][m] for b in prev_days)
        want = pct(cur, prev)
        assert (body["growth_pct"][m] is None) == (want is None)
        if want is not None:
            assert body["growth_pct"][m] == pytest.approx(float(want))


def test_partial_periods_are_marked(client: TestClient, world: World) -> None:
    body = client.get("/v1/metrics/month", params={"start": "2024-10-01", "end": str(TODAY)}, headers=auth(world)).json()
    assert [r["is_complete"] for r in body["rows"]] == [True, True, False]
    days = client.get("/v1/metrics/day", params={"start": str(TODAY - timedelta(days=1)), "end": str(TODAY)},
                      headers=auth(world)).json()
    assert [r["is_complete"] for r in days["rows"]] == [True, False]


def test_grain_list_names_every_declared_grain(client: TestClient, world: World) -> None:
    body = client.get("/v1/metrics", headers=auth(world)).json()
    assert [g["name"] for g in body["grains"]] == list(grains.names())
    assert [g["columns"] for g in body["grains"]] == [period_columns(g) for g in grains.load()]


# ---------------------------------------------------------------- HTTP caching
def test_closed_range_etag_and_304(client: TestClient, world: World) -> None:
    params = {"start": "2024-01-01", "end": "2024-03-31"}
    first = client.get("/v1/metrics/week", params=params, headers=auth(world))
    tag = first.headers["etag"]
    assert tag.startswith('"') and not tag.startswith('W/')
    assert first.headers["cache-control"] == f"max-age={int(load_cache_config().ttl_closed)}"
    again = client.get("/v1/metrics/week", params=params, headers={**auth(world), "If-None-Match": tag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == tag
    other = client.get("/v1/metrics/week", params={**params, "fields": "total_events"},
                       headers={**auth(world), "If-None-Match": tag})
    assert other.status_code == 200 and other.headers["etag"] != tag


def test_open_range_max_age_at_most_300(client: TestClient, world: World) -> None:
    response = client.get("/v1/metrics/day", params={"start": "2024-12-01", "end": str(TODAY)}, headers=auth(world))
    age = int(response.headers["cache-control"].removeprefix("max-age="))
    assert 0 < age <= 300
    summary = client.get("/v1/metrics/month/summary", params={"start": "2024-12-01", "end": str(TODAY)},
                         headers=auth(world))
    assert int(summary.headers["cache-control"].removeprefix("max-age=")) <= 300


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(("path", "params", "param", "words"), [
    ("/v1/metrics/week", {"start": "2024-13-01"}, "start", "not a calendar date"),
    ("/v1/metrics/week", {"start": "yesterday"}, "start", "not a date"),
    ("/v1/metrics/week", {"start": "2024-05-01", "end": "2024-04-01"}, "end", "before start"),
    ("/v1/metrics/week", {"start": "2020-01-01", "end": "2024-04-01"}, "end", "at most 800"),
    ("/v1/metrics/fortnight", {}, "grain", "unknown grain"),
    ("/v1/metrics/fortnight/summary", {}, "grain", "unknown grain"),
    ("/v1/metrics/week", {"fields": "total_events,secret_column"}, "fields", "unknown field"),
    ("/v1/metrics/week", {"format": "xml"}, "format", "not one of"),
    ("/v1/metrics/week/summary", {"end": "2024-02-30"}, "end", "not a calendar date"),
    ("/v1/metrics/month", {"start": "0001-01-01", "end": "2024-01-02"}, "start", "outside"),
    ("/v1/metrics/quarter", {"end": "9999-12-31"}, "end", "outside"),
    ("/v1/custom-metrics/api_public/values", {"dim.planet": "mars"}, "dim.planet", "unknown dimension"),
    ("/v1/custom-metrics/api_public/values", {"limit": "0"}, "limit", "greater than or equal"),
    ("/v1/custom-metrics/api_public/values", {"limit": "100000"}, "limit", "less than or equal"),
    ("/v1/custom-metrics/api_public/values", {"cursor": "not-a-cursor"}, "cursor", "not a cursor"),
    ("/v1/custom-metrics/api_public/values", {"order": "dimensions"}, "order", "not one of"),
    ("/v1/custom-metrics/api_public/values", {"start": "2024-02-01", "end": "2024-01-01"}, "end", "before start"),
    ("/v1/custom-metrics/api_public/values", {"version": "zero"}, "version", "integer"),
    ("/v1/custom-metrics/Not-A-Slug", {}, "slug", "match"),
    ("/v1/jobs/daily-metrics/runs", {"limit": "-1"}, "limit", "greater than or equal"),
    ("/v1/jobs/daily-metrics/runs", {"cursor": "c1.eyJ4IjoxfQ"}, "cursor", "not a cursor"),
])
def test_bad_input_is_422_naming_the_parameter(client: TestClient, world: World, path: str, params: dict[str, str],
                                              param: str, words: str) -> None:
    assert_error(client.get(path, params=params, headers=auth(world)), 422, param, words)


def test_a_cursor_of_another_query_is_refused(client: TestClient, world: World) -> None:
    page = client.get("/v1/custom-metrics/api_public/values", params={"limit": 2}, headers=auth(world)).json()
    assert page["next_cursor"]
    other = client.get("/v1/custom-metrics/api_public/values", params={"limit": 2, "dim.country": "de",
                                                                       "cursor": page["next_cursor"]}, headers=auth(world))
    assert_error(other, 422, "cursor", "not a cursor")


def test_unknown_paths_and_resources_are_404_json(client: TestClient, world: World) -> None:
    assert_error(client.get("/v2/nothing"), 404, words="no such path")
    assert_error(client.get("/v1/custom-metrics/api_nothing", headers=auth(world)), 404, words="no metric")
    assert_error(client.get("/v1/jobs/no-such-job/runs", headers=auth(world)), 404, words="no job")
    assert_error(client.get("/static/../pyproject.toml"), 404)


# ---------------------------------------------------------------- auth
def test_missing_bad_expired_and_revoked_keys_are_401(client: TestClient, world: World) -> None:
    assert_error(client.get("/v1/metrics/week"), 401, words="API key is required")
    assert_error(client.get("/v1/realtime"), 401)
    assert_error(client.get("/v1/custom-metrics"), 401)
    assert_error(client.get("/v1/metrics/week", headers={"Authorization": "Bearer msk_nope"}), 401, words="unknown")
    assert_error(client.get("/v1/metrics/week", headers={"Authorization": "Basic abc"}), 401, words="Bearer")
    forged = world.keys["api_owner"][:-4] + "AAAA"
    assert_error(client.get("/v1/metrics/week", headers={"Authorization": f"Bearer {forged}"}), 401)
    expiring, record = keys.create(world.conn, "api_colleague", expires_days=1)
    ok = client.get("/v1/metrics/week", headers={"Authorization": f"Bearer {expiring}"})
    assert ok.status_code == 200
    world.conn.execute("update metricsmith.api_keys set expires_at = now() - interval '1 second' where key_id = %s",
                       (record.key_id,))
    assert_error(client.get("/v1/metrics/week", headers={"Authorization": f"Bearer {expiring}"}), 401)
    revoked, record = keys.create(world.conn, "api_colleague")
    assert client.get("/v1/metrics/week", headers={"Authorization": f"Bearer {revoked}"}).status_code == 200
    keys.revoke(world.conn, f"msk_{record.key_id}")
    assert_error(client.get("/v1/metrics/week", headers={"Authorization": f"Bearer {revoked}"}), 401)
    stored = world.conn.execute("select key_hash, last_used_at from metricsmith.api_keys where key_id = %s",
                                (record.key_id,)).fetchone()
    assert stored is not None and revoked.encode() not in bytes(stored[0]) and stored[1] is not None


def test_public_read_opens_the_marts_only(client: TestClient, world: World) -> None:
    state = client.app.state.api  # type: ignore[attr-defined]
    state.api = dataclasses.replace(state.api, public_read=True)
    try:
        assert client.get("/v1/metrics/month", params={"start": "2024-01-01", "end": "2024-02-01"}).status_code == 200
        assert client.get("/v1/metrics/month/summary").status_code == 200
        assert_error(client.get("/v1/custom-metrics"), 401)
        assert_error(client.get("/v1/realtime"), 401)
        assert_error(client.get("/v1/jobs"), 401)
    finally:
        state.api = dataclasses.replace(state.api, public_read=False)


# ---------------------------------------------------------------- custom metrics
def test_visibility_matrix(client: TestClient, world: World) -> None:
    for user, visible in CAN_READ.items():
        listed = client.get("/v1/custom-metrics", headers=auth(world, user)).json()
        assert {m["slug"] for m in listed["metrics"]} & set(METRICS) == visible, user
        for slug in METRICS:
            show = client.get(f"/v1/custom-metrics/{slug}", headers=auth(world, user))
            values = client.get(f"/v1/custom-metrics/{slug}/values", headers=auth(world, user))
            if slug in visible:
                assert show.status_code == 200 and values.status_code == 200, (user, slug)
            else:  # never 403: another user's metric looks exactly like a missing one
                for response in (show, values):
                    assert_error(response, 404, words="no metric")
    for slug in METRICS:
        assert_error(client.get(f"/v1/custom-metrics/{slug}"), 401)
        assert_error(client.get(f"/v1/custom-metrics/{slug}/values"), 401)


def test_show_has_definition_and_versions(client: TestClient, world: World) -> None:
    body = client.get("/v1/custom-metrics/api_team", headers=auth(world)).json()
    assert body["slug"] == "api_team" and body["visibility"] == "TEAM" and body["current_version"] == 2
    assert [v["version"] for v in body["versions"]] == [1, 2]
    assert body["spec"]["dimensions"] == ["country"]


def test_values_filter_order_and_pages(client: TestClient, world: World) -> None:
    expected = sorted((v for v in world.values["api_org"] if v["dimensions"]["country"] == "fr"),
                      key=lambda v: v["value"], reverse=True)
    got: list[dict[str, Any]] = []
    params: dict[str, Any] = {"dim.country": "fr", "order": "-value", "limit": 4}
    while True:
        page = client.get("/v1/custom-metrics/api_org/values", params=params, headers=auth(world, "api_colleague")).json()
        assert page["total"] == len(expected) and len(page["values"]) <= 4
        got.extend(page["values"])
        if not page["next_cursor"]:
            break
        params["cursor"] = page["next_cursor"]
    assert norm_api(got) == norm(expected)
    v1 = client.get("/v1/custom-metrics/api_org/values", params={"version": 1, "start": "2024-01-08", "end": "2024-01-15"},
                    headers=auth(world)).json()
    assert v1["version"] == 1 and len(v1["values"]) == 2 * len(COUNTRIES)
    assert {v["value"] for v in v1["values"]} == {1000 + 10 * w + i for w in (1, 2) for i in range(len(COUNTRIES))}
    assert_error(client.get("/v1/custom-metrics/api_org/values", params={"version": 9}, headers=auth(world)), 404)


# ---------------------------------------------------------------- realtime, jobs, operations
def test_realtime_snapshot_and_stream(client: TestClient, world: World) -> None:
    svc = client.app.state.api.realtime  # type: ignore[attr-defined]
    svc.declare_counter("api_test_calls_total", "calls seen by the API test")
    svc.declare_histogram("api_test_latency_ms", "latency", buckets=(10, 100, 1000))
    svc.increment_counter("api_test_calls_total", 3)
    for v in (5, 50, 500):
        svc.observe_histogram("api_test_latency_ms", v)
    body = client.get("/v1/realtime", headers=auth(world)).json()
    metrics = {m["name"]: m for m in body["metrics"]}
    assert metrics["api_test_calls_total"]["series"] == [{"labels": {}, "value": svc.get_counter("api_test_calls_total")}]
    hist = metrics["api_test_latency_ms"]["series"][0]["value"]
    assert hist["count"] == 3 and hist["sum"] == 555
    assert hist["quantiles"]["p50"] == pytest.approx(svc.get_histogram("api_test_latency_ms").quantile(0.5))
    with client.stream("GET", "/v1/realtime/stream", params={"max_events": 1}, headers=auth(world)) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        text = "".join(response.iter_text())
    event = [b for b in text.split("\n\n") if b.startswith("event: snapshot")][0]
    import json

    data = json.loads(event.split("data: ", 1)[1])
    assert {m["name"]: m for m in data["metrics"]}["api_test_calls_total"]["series"][0]["value"] == 3


def _job_rows(world: World) -> None:
    world.conn.execute("delete from metricsmith.metrics_aggregation_jobs_log where job_name in "
                       "('daily-metrics', 'weekly-rollup')")
    now = datetime.now(UTC)
    world.conn.execute("insert into metricsmith.metrics_aggregation_jobs_log (job_name, status, started_at, finished_at,"
                       " duration_ms) values ('daily-metrics', 'COMPLETED', %s, %s, 1000)",
                       (now - timedelta(hours=2), now - timedelta(hours=2) + timedelta(seconds=1)))
    for i in range(3):
        world.conn.execute(
            "insert into metricsmith.metrics_aggregation_jobs_log (job_name, status, started_at, finished_at, duration_ms,"
            " error_message) values ('weekly-rollup', 'FAILED', %s, %s, 10, %s)",
            (now - timedelta(hours=3 - i), now - timedelta(hours=3 - i) + timedelta(seconds=1), f"boom {i}"))


def test_jobs_health_and_runs(client: TestClient, world: World) -> None:
    _job_rows(world)
    body = client.get("/v1/jobs", headers=auth(world)).json()
    jobs = {j["job_name"]: j for j in body["jobs"]}
    assert jobs["weekly-rollup"]["consecutive_failures"] == 3 and jobs["weekly-rollup"]["last_error"] == "boom 2"
    assert jobs["weekly-rollup"]["state"] == "failing" and body["status"] == "failing"
    assert jobs["daily-metrics"]["last_run_status"] == "COMPLETED"
    want = world.conn.execute("select id, status::text, error_message from metricsmith.metrics_aggregation_jobs_log"
                              " where job_name = 'weekly-rollup' order by id desc").fetchall()
    got, params = [], {"limit": 2}
    while True:
        page = client.get("/v1/jobs/weekly-rollup/runs", params=params, headers=auth(world)).json()
        got.extend(page["runs"])
        if not page["next_cursor"]:
            break
        params["cursor"] = page["next_cursor"]
    assert [(r["id"], r["status"], r["error_message"]) for r in got] == [tuple(w) for w in want]


def test_prometheus_exposition_has_realtime_cache_and_job_health(client: TestClient, world: World) -> None:
    _job_rows(world)
    client.app.state.api.realtime.increment_counter("api_test_calls_total", 0)  # type: ignore[attr-defined]
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain; version=0.0.4")
    lines = response.text.splitlines()
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in lines if line and not line.startswith("#")}
    assert samples["api_test_calls_total"] >= 3
    assert any(name.startswith("metricsmith_cache_") for name in samples)
    assert samples['metricsmith_job_consecutive_failures{job="weekly-rollup"}'] == 3
    success = world.conn.execute("select max(finished_at) from metricsmith.metrics_aggregation_jobs_log"
                                 " where job_name = 'daily-metrics' and status = 'COMPLETED'").fetchone()
    assert success is not None
    assert samples['metricsmith_job_last_success_timestamp_seconds{job="daily-metrics"}'] == pytest.approx(
        success[0].timestamp())
    lag = samples['metricsmith_job_data_freshness_lag_seconds{job="daily-metrics"}']
    newest_end = datetime.combine(TODAY + timedelta(days=1), datetime.min.time(), UTC)
    assert lag == pytest.approx((datetime.now(UTC) - newest_end).total_seconds(), abs=120)
    assert samples['metricsmith_job_state{job="weekly-rollup",state="failing"}'] == 1


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


def test_openapi_and_docs(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert schema["openapi"].startswith("3.1")
    for path in ("/v1/metrics/{grain}", "/v1/metrics/{grain}/summary", "/v1/custom-metrics",
                 "/v1/custom-metrics/{slug}", "/v1/custom-metrics/{slug}/values", "/v1/realtime",
                 "/v1/realtime/stream", "/v1/jobs", "/v1/jobs/{name}/runs", "/metrics", "/healthz", "/readyz"):
        assert path in schema["paths"], path
    assert client.get("/docs").status_code == 200


def test_dashboard_and_bundled_plotly(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "/static/plotly.min.js" in page.text and "cdn" not in page.text.lower()
    js = client.get("/static/plotly.min.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript") and len(js.content) > 1e6
    assert client.get("/static/dashboard.js").status_code == 200


def test_redis_down_still_correct_and_readyz_degraded(world: World) -> None:
    down = f"redis://127.0.0.1:{_free_port()}/0"
    settings = dataclasses.replace(load_settings(), redis_url=down)
    cache = TwoTierCache(settings, config=load_cache_config(), redis_url=down)
    try:
        svc = MetricsQueryService(settings, cache=cache, schema=world.schema, today=TODAY)
        with TestClient(create_app(settings, query=svc, api_settings=ApiSettings()), raise_server_exceptions=False) as c:
            ready = c.get("/readyz")
            assert ready.status_code == 200 and ready.json()["status"] == "degraded"
            assert ready.json()["redis"].startswith("down")
            body = c.get("/v1/metrics/week", params={"start": "2024-01-01", "end": "2024-02-01"}, headers=auth(world)).json()
            want = [world.rows["week"][w] for w in grains.get("week").periods_between(date(2024, 1, 1), date(2024, 2, 1))]
            assert [r["total_events"] for r in body["rows"]] == [w["total_events"] for w in want]
            assert_error(c.get("/v1/realtime", headers=auth(world)), 503, words="Redis unavailable")
            metrics = c.get("/metrics")
            assert metrics.status_code == 200 and 'metricsmith_api_scrape_errors{source="realtime"} 1' in metrics.text
    finally:
        cache.close()


# ---------------------------------------------------------------- fuzzing the query string of the app
QUERY_VALUE = st.one_of(st.text(max_size=30), st.dates().map(str), st.sampled_from(["", "csv", "json", "-value", "0"]))


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(grains.names() + ("year", "Week", "")),
       st.dictionaries(st.sampled_from(["start", "end", "fields", "format", "x"]), QUERY_VALUE, max_size=4))
def test_fuzzed_metrics_queries_answer_200_or_a_clear_4xx(client: TestClient, world: World, grain: str,
                                                        query: dict[str, str]) -> None:
    response = client.get(f"/v1/metrics/{grain}", params=query, headers=auth(world))
    assert response.status_code in (200, 404, 422), response.text
    if response.status_code != 200:
        assert_error(response, response.status_code)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.dictionaries(st.sampled_from(["start", "end", "version", "order", "limit", "cursor", "dim.country", "dim.x"]),
                       QUERY_VALUE, max_size=5))
def test_fuzzed_custom_metric_queries_answer_200_or_422(client: TestClient, world: World, query: dict[str, str]) -> None:
    response = client.get("/v1/custom-metrics/api_public/values", params=query, headers=auth(world, "api_outsider"))
    assert response.status_code in (200, 404, 422), response.text
    if response.status_code == 200:
        body = response.json()
        assert all(v["dimensions"]["country"] == query["dim.country"] for v in body["values"]) if "dim.country" in query \
            else True
    else:
        assert_error(response, response.status_code)


# ---------------------------------------------------------------- the api-key commands
def test_api_key_commands(client: TestClient, world: World, capsys: pytest.CaptureFixture[str]) -> None:
    from metricsmith.cli.main import main

    assert main(["api-key", "create", "--as", "api_teammate", "--name", "wall screen", "--expires", "30"]) == 0
    out, err = capsys.readouterr()
    key = out.strip()
    assert key.startswith("msk_") and "shown only this once" in err and key not in err
    headers = {"Authorization": f"Bearer {key}"}
    listed = client.get("/v1/custom-metrics", headers=headers).json()
    assert {m["slug"] for m in listed["metrics"]} & set(METRICS) == CAN_READ["api_teammate"]
    assert main(["api-key", "list", "--as", "api_teammate"]) == 0
    table = capsys.readouterr().out
    key_id = key.split("_")[1]
    assert f"msk_{key_id}" in table and "wall screen" in table and "active" in table and key not in table
    assert main(["api-key", "revoke", f"msk_{key_id}"]) == 0
    assert "revoked" in capsys.readouterr().out
    assert_error(client.get("/v1/custom-metrics", headers=headers), 401)
    assert main(["api-key", "create", "--as", "api_nobody"]) == 2
    assert "unknown user 'api_nobody'" in capsys.readouterr().err
    assert main(["api-key", "revoke", "msk_000000000000"]) == 2
    assert "no API key" in capsys.readouterr().err
