"""Custom metrics under hostile input, run-time failures, team boundaries and concurrency.

- No user-supplied text reaches a file that dbt renders: a corpus of hostile values in every
  field is either refused with a one-line error or stored verbatim and never rendered (no table
  created, nothing in manifest.json, `rollups run` / `metrics run` still work).
- Identifiers (user, organization, team ids, slugs) have a strict character set on every path.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import psycopg
import pytest

from metricsmith import generator
from metricsmith.config import load_settings, project_root
from metricsmith.custom_metrics import (
    AccessDenied,
    CustomMetricsService,
    ExpressionError,
    MetricNotFound,
    MetricSpecError,
)
from metricsmith.custom_metrics.errors import InvalidIdentifier
from metricsmith.custom_metrics.project import database_identity, generated_dir

START = date(2026, 3, 2)
MARK = "PWNED"
#: hostile values tried in every field
HOSTILE: list[str] = [
    "{{ env_var('METRICSMITH_DATABASE_URL') }}",
    f"{{{{ log('{MARK}-log', info=true) }}}}",
    '{{ run_query("create table public.pwned_a(x int)") }}',
    'u7 #}{{ run_query("create table public.pwned_b(x int)") }} --',
    "#} {% do run_query('create table public.pwned_c(x int)') %} {#",
    f"*/ select 1 as {MARK} /*",
    f"-- {MARK}",
    f"'; create table public.pwned_d(x int); -- {MARK}",
    f'"{MARK}" \'quoted\'',
    f"line one\nline two {MARK}",
    f"{MARK}" + "A" * 10_000,
    "../../etc/passwd",
    "..",
]
PWNED_TABLES = ("pwned_a", "pwned_b", "pwned_c", "pwned_d")


@pytest.fixture(scope="module")
def world(test_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from metricsmith import rollups

    with psycopg.connect(test_database, autocommit=True) as conn:
        conn.execute("truncate raw.events, raw.events_quarantine")
        generator.generate_to_db(days=12, events_per_day=40, seed=5, start=START)
    rollups.run_rollups(full_refresh=True, quiet=True)
    # the project itself (not a copy): its per-database folder for this test database, as in production
    svc = CustomMetricsService()
    svc.add_user("trust_owner", "trust_org", teams=("trust_team",))
    with psycopg.connect(test_database, autocommit=True) as conn:
        # other modules' metrics are not this module's business
        conn.execute("update metricsmith.custom_metric_definitions set status = 'archived'")
    yield {"svc": svc, "url": test_database}
    shutil.rmtree(svc.generated_dir, ignore_errors=True)  # this test database's generated models


def _good(slug: str, **extra: Any) -> dict[str, Any]:
    return {"name": f"good {slug}", "slug": slug, "type": "SUM", "source": "events", "expression": "revenue_cents",
            "grain": "day", "visibility": "PUBLIC", **extra}


def _pwned(conn: psycopg.Connection[Any]) -> list[str]:
    rows = conn.execute("select relname from pg_class where relname like 'pwned%%'").fetchall()
    return [r[0] for r in rows]


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and text, repr(text)
    return text


# -- 1 and 2: nothing a user types is rendered by dbt ---------------------------------------------------

def test_hostile_principal_ids_refused_on_every_path(world: dict[str, Any], conn: psycopg.Connection[Any]) -> None:
    svc: CustomMetricsService = world["svc"]
    users = conn.execute("select count(*) from metricsmith.users").fetchone()
    for value in HOSTILE:
        with pytest.raises(InvalidIdentifier, match="user id .* is not allowed") as e:
            svc.add_user(value, "trust_org")
        _one_line(e.value)
        with pytest.raises(InvalidIdentifier, match="organization id .* is not allowed"):
            svc.add_user("trust_x", value)
        with pytest.raises(InvalidIdentifier, match="team id .* is not allowed"):
            svc.add_user("trust_x", "trust_org", teams=(value,))
        with pytest.raises(InvalidIdentifier, match="user id"):  # acting as such a user
            svc.create(value, _good("trust_as"))
        with pytest.raises(InvalidIdentifier, match="user id"):  # the create_metric_definition entry point
            svc.create_metric_definition(value, {"name": "x", "metric_type": "COUNT", "data_source": "events"})
        with pytest.raises(InvalidIdentifier, match="team id"):
            svc.create("trust_owner", _good("trust_team_x", visibility="TEAM", team=value))
        with pytest.raises(InvalidIdentifier, match="slug"):
            svc.create("trust_owner", _good(value))
    assert conn.execute("select count(*) from metricsmith.users").fetchone() == users
    # the database refuses them too, whatever path writes
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("insert into metricsmith.users (user_id) values (%s)", (HOSTILE[3],))


def test_cli_refuses_hostile_user_id_in_one_line(world: dict[str, Any]) -> None:
    proc = subprocess.run([sys.executable, "-m", "metricsmith.cli", "metrics", "user", HOSTILE[3], "--org", "o1"],
                          capture_output=True, text=True, env=os.environ.copy(), timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "user id" in lines[0] and "is not allowed" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_hostile_free_text_stored_verbatim_never_rendered(world: dict[str, Any],
                                                          conn: psycopg.Connection[Any]) -> None:
    """Every field of a spec gets every hostile value: refused, or stored verbatim and never rendered."""
    svc: CustomMetricsService = world["svc"]
    stored: dict[str, str] = {}
    refused = 0
    for i, value in enumerate(HOSTILE):
        # name and description: free text, stored verbatim unless too long or holding control characters
        for key in ("name", "description"):
            slug = f"trust_{key}_{i}"
            spec = _good(slug) | {key: value}
            try:
                d = svc.create("trust_owner", spec)
            except InvalidIdentifier as exc:
                _one_line(exc)
                assert "longer than" in str(exc) or "control character" in str(exc)
                refused += 1
                continue
            assert getattr(d, key) == (value.strip() if key == "name" else value)
            stored[slug] = value
        # every other field: refused with a one-line error
        for key in ("expression", "filter", "source", "grain", "type", "visibility", "dimensions", "percentile",
                    "numerator"):
            spec = _good(f"trust_{key}_{i}")
            spec[key] = [value] if key == "dimensions" else ({"type": "SUM", "expression": value}
                                                              if key == "numerator" else value)
            if key == "numerator":
                spec |= {"type": "RATIO", "denominator": {"type": "COUNT"}}
                spec.pop("expression")
            with pytest.raises((MetricSpecError, ExpressionError)) as e:
                svc.create("trust_owner", spec)
            _one_line(e.value)
            refused += 1
    assert stored and refused
    # a legacy definition (stored before this check existed) whose stored model text is hostile
    legacy = conn.execute(
        "insert into metricsmith.custom_metric_definitions (slug, name, description, owner_id, organization_id,"
        " visibility) values ('trust_legacy', %s, %s, 'trust_owner', 'trust_org', 'PUBLIC') returning metric_id",
        (HOSTILE[2], HOSTILE[4])).fetchone()
    assert legacy is not None
    conn.execute("insert into metricsmith.custom_metric_versions (metric_id, version, spec, compiled_sql, created_by)"
                 " values (%s, 1, %s, %s, 'trust_owner')",
                 (legacy[0], json.dumps(_good("trust_legacy")), "{{ run_query('create table public.pwned_a(x int)') }}"))
    run = svc.run()
    assert run.success
    assert _pwned(conn) == []
    texts = [p.read_text() for p in sorted(svc.generated_dir.iterdir()) if p.is_file()]
    assert any("trust_legacy" in t for t in texts)
    manifest = (svc.target_path / "manifest.json").read_text()
    for text in [*texts, manifest]:
        for needle in (MARK, "pwned", world["url"], "etc/passwd"):
            at = text.find(needle)
            assert at < 0, text[max(0, at - 300):at + 100]
    for t in texts:
        assert "run_query" not in t and "env_var" not in t and "log(" not in t
    for t in texts:  # identifiers only: no quote characters but the ones around identifiers
        assert '"' not in t and "\\" not in t
    values = conn.execute("select metric_slug, count(*) from analytics.custom_metric_values group by 1").fetchall()
    published = {s for s, n in values if n > 0}
    assert set(stored) | {"trust_legacy"} <= published
    for slug, value in stored.items():
        d = svc.show("trust_owner", slug)
        assert value in (d.name, d.description)
    # the rollups (every dbt parse of the project sees the generated models) still work
    from metricsmith import rollups

    rollups.run_rollups(quiet=True)
    assert _pwned(conn) == []


# -- 17: generated models outside the source tree, one folder per database ---------------------------

def _dbt(args: list[str], env: dict[str, str], target: Path) -> subprocess.CompletedProcess[str]:
    dbt = Path(sys.executable).parent / "dbt"
    return subprocess.run([str(dbt), *args, "--profiles-dir", "profiles", "--target-path", str(target)],
                          cwd=project_root(), env=env, capture_output=True, text=True, timeout=600)


def _models_in(manifest: Path) -> dict[str, str]:
    nodes = json.loads(manifest.read_text())["nodes"]
    return {n["name"]: n["original_file_path"] for n in nodes.values() if n["resource_type"] == "model"}


def test_generated_models_live_per_database_outside_the_source_tree(world: dict[str, Any], tmp_path: Path) -> None:
    svc: CustomMetricsService = world["svc"]
    svc.create("trust_owner", _good("trust_where"))
    result = svc.compile()
    settings = load_settings()
    root = project_root()
    assert svc.generated_dir == root / ".metricsmith" / "generated" / database_identity(settings) \
        == generated_dir(settings)
    assert (svc.generated_dir / "cm_trust_where__v1.sql").is_file() and "cm_trust_where__v1" in result.models
    assert not (root / "models" / "custom").exists()
    tracked = subprocess.run(["git", "ls-files", "--", str(svc.generated_dir)], cwd=root, capture_output=True,
                             text=True).stdout
    ignored = subprocess.run(["git", "check-ignore", "-q", str(svc.generated_dir / "cm_trust_where__v1.sql")],
                             cwd=root).returncode
    assert tracked == "" and ignored == 0, "generated files must be outside tracked paths"
    # another database's folder (e.g. the demo's) holding a model that does not even parse
    other_url = world["url"].rsplit("/", 1)[0] + "/some_other_database"
    other = generated_dir(load_settings({**os.environ, "METRICSMITH_DATABASE_URL": other_url}))
    assert other != svc.generated_dir
    other.mkdir(parents=True, exist_ok=True)
    (other / "cm_foreign__v1.sql").write_text("{{ this is not jinja")
    try:
        # a plain `dbt parse` / `dbt run` by an analyst, no eval step: the folder of the database it points at
        env = {k: v for k, v in os.environ.items() if k != "DBT_TARGET_PATH"}
        parsed = _dbt(["parse"], env, tmp_path / "t1")
        assert parsed.returncode == 0, parsed.stdout[-2000:]
        models = _models_in(tmp_path / "t1" / "manifest.json")
        assert (root / models["cm_trust_where__v1"]).resolve() == (svc.generated_dir / "cm_trust_where__v1.sql")
        assert "custom_metric_values" in models and "cm_foreign__v1" not in models
        model_text = (svc.generated_dir / "cm_trust_where__v1.sql").read_text()
        ran = _dbt(["run", "--select", "cm_trust_where__v1"], env, tmp_path / "t2")
        assert ran.returncode == 0, ran.stdout[-2000:]
        assert (svc.generated_dir / "cm_trust_where__v1.sql").read_text() == model_text  # compiled SQL elsewhere
        assert list((tmp_path / "t2").rglob("cm_trust_where__v1.sql"))
        assert svc.registry(refresh=True)  # the service's own parse ignores the other folder too
        foreign = _dbt(["parse"], {**env, "METRICSMITH_DATABASE_URL": other_url}, tmp_path / "t3")
        assert foreign.returncode != 0 and "cm_foreign__v1" in foreign.stdout
    finally:
        shutil.rmtree(other)


# -- 8: one metric failing at run time does not block the others ---------------------------------------

RUNTIME_BAD = {
    "trust_div0": ("revenue_cents / (revenue_cents - revenue_cents)", "division by zero"),
    "trust_overflow": ("cast(revenue_cents as bigint) * 9223372036854775807", "out of range"),
    "trust_badcast": ("cast(event_type as int)", "invalid input syntax"),
}


def test_runtime_failure_is_isolated_per_metric(world: dict[str, Any], conn: psycopg.Connection[Any]) -> None:
    from metricsmith.custom_metrics.job import run_custom_metrics_job

    svc: CustomMetricsService = world["svc"]
    svc.create("trust_owner", _good("trust_ok"))
    for slug, (expression, _) in RUNTIME_BAD.items():
        svc.create("trust_owner", _good(slug, expression=expression))  # passes validation and EXPLAIN
    run = svc.run()
    failed = {f.slug: f for f in run.failures}
    assert set(failed) == set(RUNTIME_BAD), run.failures
    for slug, (_, message) in RUNTIME_BAD.items():
        assert message in failed[slug].error and "\n" not in failed[slug].error, failed[slug]
        d = svc.show("trust_owner", slug)
        assert d.run_status == "error" and message in (d.run_error or "")
        assert svc.values("trust_owner", slug) == []
    assert svc.show("trust_owner", "trust_ok").run_status == "success"
    # the good metric is published, and right: an independent sum over the staged events
    want: dict[date, float] = {}
    for occurred, revenue in conn.execute("select occurred_at, revenue_cents from analytics.stg_events").fetchall():
        day = occurred.astimezone(load_settings().tz).date()
        want[day] = want.get(day, 0.0) + float(revenue)
    got = {r["period_start"]: float(r["value"]) for r in svc.values("trust_owner", "trust_ok")}
    assert got == pytest.approx(want) and got
    # the job reports PARTIAL with each failed model's error; the others are counted as published
    result = run_custom_metrics_job(service=svc)
    assert result.status == "PARTIAL", result
    assert result.models_failed == len(RUNTIME_BAD) and result.models_ok >= 1
    assert all(m in (result.message or "") for _, m in RUNTIME_BAD.values())
    row = conn.execute("select count(*) from analytics.custom_metric_values where metric_slug = 'trust_ok'").fetchone()
    assert row is not None and row[0] == len(want)
    for slug in RUNTIME_BAD:
        svc.archive("trust_owner", slug)
    assert svc.run().success


# -- 11: teams belong to one organization; memberships are exact -----------------------------------------

def _readers(svc: CustomMetricsService, slug: str, users: tuple[str, ...]) -> set[str]:
    return {u for u in users if slug in {d.slug for d in svc.list_metrics(u)}}


def test_team_and_organization_boundaries(world: dict[str, Any], conn: psycopg.Connection[Any]) -> None:
    svc: CustomMetricsService = world["svc"]
    svc.add_user("oa_owner", "org_a1", teams=("t_a",))
    svc.add_user("oa_mate", "org_a1", teams=("t_a",))
    svc.add_user("oa_org", "org_a1")
    svc.add_user("ob_user", "org_b1", teams=("t_b",))
    svc.add_user("ob_admin", "org_b1", is_org_admin=True)
    users = ("oa_owner", "oa_mate", "oa_org", "ob_user", "ob_admin")
    # a team of another organization cannot be declared; nothing of the user changes
    with pytest.raises(AccessDenied, match="team t_a belongs to another organization") as e:
        svc.add_user("ob_user", "org_b1", teams=("t_b", "t_a"))
    _one_line(e.value)
    assert conn.execute("select team_id from metricsmith.team_members where user_id = 'ob_user'").fetchall() == [
        ("t_b",)]
    for vis in ("PRIVATE", "TEAM", "ORGANIZATION", "PUBLIC"):
        svc.create("oa_owner", {"name": f"b {vis}", "slug": f"bound_{vis.lower()}", "type": "COUNT",
                                "source": "events", "visibility": vis, **({"team": "t_a"} if vis == "TEAM" else {})})

    def matrix() -> dict[str, set[str]]:
        return {vis: _readers(svc, f"bound_{vis.lower()}", users)
                for vis in ("PRIVATE", "TEAM", "ORGANIZATION", "PUBLIC")}

    assert matrix() == {"PRIVATE": {"oa_owner"}, "TEAM": {"oa_owner", "oa_mate"},
                        "ORGANIZATION": {"oa_owner", "oa_mate", "oa_org"}, "PUBLIC": set(users)}
    # re-declared with another team: the old membership is gone
    svc.add_user("oa_mate", "org_a1", teams=("t_a2",))
    assert matrix()["TEAM"] == {"oa_owner"}
    svc.add_user("oa_mate", "org_a1", teams=("t_a",))
    assert matrix()["TEAM"] == {"oa_owner", "oa_mate"}
    # moved to another organization: no TEAM (nor ORGANIZATION) access left
    svc.add_user("oa_mate", "org_b1")
    assert conn.execute("select count(*) from metricsmith.team_members where user_id = 'oa_mate'").fetchone() == (0,)
    assert matrix() == {"PRIVATE": {"oa_owner"}, "TEAM": {"oa_owner"}, "ORGANIZATION": {"oa_owner", "oa_org"},
                        "PUBLIC": set(users)}
    # a membership left across organizations by older versions grants nothing either
    conn.execute("insert into metricsmith.team_members (team_id, user_id) values ('t_a', 'ob_user')")
    assert "ob_user" not in matrix()["TEAM"]
    with pytest.raises(MetricNotFound):
        svc.show("ob_user", "bound_team")


# -- 13: concurrent updates of one metric ------------------------------------------------------------------

def test_concurrent_updates_get_distinct_versions(world: dict[str, Any], conn: psycopg.Connection[Any]) -> None:
    svc: CustomMetricsService = world["svc"]
    svc.create("trust_owner", _good("trust_concurrent"))
    n = 8
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def update(i: int) -> None:
        barrier.wait()
        try:
            svc.update("trust_owner", "trust_concurrent", _good("trust_concurrent", expression=f"revenue_cents + {i}"))
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=update, args=(i,)) for i in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert errors == []
    versions = conn.execute(
        "select v.version, v.spec->>'expression' from metricsmith.custom_metric_versions v"
        " join metricsmith.custom_metric_definitions d using (metric_id) where d.slug = 'trust_concurrent'"
        " order by 1").fetchall()
    assert [v for v, _ in versions] == list(range(1, n + 2))
    assert sorted(e for _, e in versions[1:]) == sorted(f"revenue_cents + {i}" for i in range(n))
    assert svc.show("trust_owner", "trust_concurrent").current_version == n + 1


# -- 14: constant errors are one-line errors at create time -----------------------------------------------

@pytest.mark.parametrize(("field", "text", "message"), [
    ("expression", "1/0", "division by zero"),
    ("expression", "revenue_cents + cast('x' as int)", "invalid input syntax"),
    ("filter", "revenue_cents > 1/0", "division by zero"),
])
def test_constant_errors_refused_in_one_line(world: dict[str, Any], conn: psycopg.Connection[Any], field: str,
                                            text: str, message: str) -> None:
    svc: CustomMetricsService = world["svc"]
    before = conn.execute("select count(*) from metricsmith.custom_metric_definitions").fetchone()
    spec = _good("trust_constant") | {field: text}
    with pytest.raises(MetricSpecError, match=message) as e:
        svc.create("trust_owner", spec)
    assert "cannot be planned" in _one_line(e.value)
    with pytest.raises(MetricSpecError, match=message):
        svc.estimate("trust_owner", spec)
    assert conn.execute("select count(*) from metricsmith.custom_metric_definitions").fetchone() == before
