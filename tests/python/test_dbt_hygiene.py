"""dbt project hygiene: the schema a target writes to (generate_schema_name), every model and
column described, every public macro documented with its arguments.

The default target (and `embedded`) write to `analytics`, the schema the Python side reads;
any other target writes to `analytics_<target>`, so `--target dev` cannot overwrite the
production marts. `dbt parse` renders the schema of every node (and the relation a ref()
compiles to) without a database connection."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from metricsmith.config import project_root

ROOT = project_root()
DBT = str(Path(sys.executable).with_name("dbt"))


def _profiles_with_dev(tmp_path: Path) -> Path:
    """The real profiles.yml plus a `dev` output (a copy of `default`), in a scratch folder."""
    profiles = yaml.safe_load((ROOT / "profiles" / "profiles.yml").read_text())
    outputs = profiles["metricsmith"]["outputs"]
    outputs["dev"] = dict(outputs["default"])
    folder = tmp_path / "profiles"
    folder.mkdir()
    (folder / "profiles.yml").write_text(yaml.safe_dump(profiles, sort_keys=False))
    return folder


def _dbt(tmp_path: Path, target: str | None, *command: str) -> Path:
    """Run ``dbt <command>`` in a fresh process; returns its target path."""
    target_path = tmp_path / f"target-{target or 'none'}"
    env = {k: v for k, v in os.environ.items() if k not in ("METRICSMITH_DBT_TARGET", "DBT_TARGET_PATH")}
    env.update(DBT_SEND_ANONYMOUS_USAGE_STATS="false", DO_NOT_TRACK="1")
    profiles = tmp_path / "profiles"
    if target and not profiles.is_dir():
        _profiles_with_dev(tmp_path)
    args = [DBT, *command, "--project-dir", str(ROOT), "--profiles-dir",
            str(profiles if target else ROOT / "profiles"),
            "--target-path", str(target_path), "--log-path", str(tmp_path / "logs"),
            *(["--target", target] if target else [])]
    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    return target_path


def _parse(tmp_path: Path, target: str | None) -> dict[str, Any]:
    target_path = _dbt(tmp_path, target, "parse", "--no-partial-parse")
    manifest: dict[str, Any] = json.loads((target_path / "manifest.json").read_text())
    return manifest


def _project_models(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n["name"]: n for n in manifest["nodes"].values()
            if n["resource_type"] == "model" and n["package_name"] == "metricsmith"
            and "metricsmith_custom_metric" not in n["tags"] and n["name"] != "custom_metric_values"}


@pytest.fixture(scope="module")
def default_manifest(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _parse(tmp_path_factory.mktemp("default"), None)


@pytest.mark.parametrize("target", [None, "embedded"])
def test_production_targets_write_to_analytics(tmp_path: Path, target: str | None,
                                                default_manifest: dict[str, Any]) -> None:
    manifest = default_manifest if target is None else _parse(tmp_path, target)
    models = _project_models(manifest)
    assert {"stg_events", "daily_metrics", "weekly_metrics", "monthly_metrics", "quarterly_metrics"} <= set(models)
    assert {m["schema"] for m in models.values()} == {"analytics"}
    assert models["daily_metrics"]["relation_name"].endswith('."analytics"."daily_metrics"')


def test_dev_target_writes_to_its_own_schema(tmp_path: Path) -> None:
    models = _project_models(_parse(tmp_path, "dev"))
    assert {m["schema"] for m in models.values()} == {"analytics_dev"}
    # what ref('daily_metrics') compiles to in every model of the dev target
    assert models["daily_metrics"]["relation_name"].endswith('."analytics_dev"."daily_metrics"')


def test_every_model_and_column_is_described(tmp_path: Path, conn: psycopg.Connection[Any],
                                             default_manifest: dict[str, Any]) -> None:
    """Build the project on a `dev` target (schema analytics_dev of the session database: the
    production schema stays untouched), then every column of every relation in the docs
    catalog has a description (from YAML or a doc() block), as have the models and sources."""
    generated = "tag:metricsmith_custom_metric tag:metricsmith_custom_metric_values"
    tables = ("select table_schema, table_name from information_schema.tables"
              " where table_schema in ('analytics', 'analytics_dev') order by 1, 2")
    production_before = [r for r in conn.execute(tables).fetchall() if r[0] == "analytics"]
    try:
        _dbt(tmp_path, "dev", "run", "--exclude", *generated.split())
        target_path = _dbt(tmp_path, "dev", "docs", "generate", "--exclude", *generated.split())
        after = conn.execute(tables).fetchall()
    finally:
        conn.execute("drop schema if exists analytics_dev cascade")
    # --target dev built every model in analytics_dev and left the production schema alone
    assert [r for r in after if r[0] == "analytics"] == production_before
    assert {"daily_metrics", "weekly_metrics", "monthly_metrics", "quarterly_metrics", "int_rollup_ledger",
            "stg_events"} <= {
        name for schema, name in after if schema == "analytics_dev"}
    manifest = json.loads((target_path / "manifest.json").read_text())
    catalog = json.loads((target_path / "catalog.json").read_text())
    undocumented = []
    for kind in ("nodes", "sources"):
        for unique_id, entry in catalog[kind].items():
            node = manifest[kind][unique_id]
            if not node["description"].strip():
                undocumented.append(unique_id)
            undocumented += [f"{unique_id}.{c}" for c in entry["columns"]
                             if not (node["columns"].get(c) or {}).get("description", "").strip()]
    assert len(catalog["nodes"]) >= 14 and len(catalog["sources"]) == 2
    assert undocumented == []
    # doc() blocks are rendered, not left as Jinja
    col = _project_models(default_manifest)["weekly_metrics"]["columns"]["active_users"]
    assert col["description"].startswith("Distinct non-null user_id") and "doc(" not in col["description"]


def test_raw_sources_declared_with_freshness(default_manifest: dict[str, Any]) -> None:
    sources = {s["name"]: s for s in default_manifest["sources"].values() if s["source_name"] == "raw"}
    assert set(sources) >= {"events", "events_quarantine"}
    events = sources["events"]
    assert events["loaded_at_field"] == "received_at"
    assert events["freshness"]["warn_after"] == {"count": 6, "period": "hour"}
    assert events["freshness"]["error_after"] == {"count": 24, "period": "hour"}
    assert {"quarantine_id", "reason", "raw_text"} <= set(sources["events_quarantine"]["columns"])


def test_every_public_macro_is_documented_with_its_arguments(default_manifest: dict[str, Any]) -> None:
    problems = []
    for macro in default_manifest["macros"].values():
        if macro["package_name"] != "metricsmith" or macro["name"].startswith(("default__", "postgres__", "materialization_")):
            continue
        signature = re.search(r"\{%-?\s*(?:macro|test)\s+\w+\((.*?)\)", macro["macro_sql"], re.S)
        assert signature, macro["name"]
        actual = [a.split("=")[0].strip() for a in signature.group(1).split(",") if a.strip()]
        documented = [a["name"] for a in macro["arguments"]]
        if not macro["description"].strip() or actual != documented:
            problems.append((macro["name"], actual, documented))
    assert problems == []


def test_the_new_macros_are_documented(default_manifest: dict[str, Any]) -> None:
    """The grain macros, the period mart macro and the dispatched growth % are in the docs."""
    macros = {m["name"]: m for m in default_manifest["macros"].values() if m["package_name"] == "metricsmith"}
    for name in ("grains", "grain", "period_start", "period_end", "first_activity_windows", "period_metrics",
                 "growth_pct", "test_breakdown_matches_period"):
        assert macros[name]["description"].strip(), name
    assert [a["name"] for a in macros["period_metrics"]["arguments"]] == [
        "grain_name", "activity", "daily", "changed_days", "events"]
    assert {"default__growth_pct", "postgres__growth_pct"} <= set(macros)


def _without_comments(sql: str) -> str:
    return re.sub(r"\{#.*?#\}", "", sql, flags=re.S)


def test_no_relation_is_reached_only_through_a_macro(default_manifest: dict[str, Any]) -> None:
    """No macro calls ref() or source(): the model that reads a relation passes it (its own
    ref()) as an argument, so every dependency is visible in the model's file. Data tests
    (test_*) may ref the marts they check."""
    calls = re.compile(r"\b(ref|source)\(")
    offenders = [m["name"] for m in default_manifest["macros"].values()
                 if m["package_name"] == "metricsmith" and "test_" not in m["name"]
                 and calls.search(_without_comments(m["macro_sql"]))]
    assert offenders == []
    grains = yaml.safe_load((ROOT / "dbt_project.yml").read_text())["vars"]["grains"]
    for name, node in _project_models(default_manifest).items():
        code = _without_comments(node["raw_code"])
        for dependency in node["depends_on"]["nodes"]:
            kind, *_, source_name, target = dependency.split(".")
            if kind == "source":
                assert f"source('{source_name}', '{target}')" in code, f"{name} reads {target} without a visible source()"
                continue
            looped = "ref(g.model)" in code and target in {g["model"] for g in grains}
            assert f"ref('{target}')" in code or looped, f"{name} reads {target} without a visible ref()"


def test_each_period_mart_is_one_line_calling_the_grain_macro() -> None:
    """Every grain longer than a day has its mart: one line calling period_metrics."""
    grains = yaml.safe_load((ROOT / "dbt_project.yml").read_text())["vars"]["grains"]
    for grain in grains[1:]:
        lines = (ROOT / "models" / "marts" / f"{grain['model']}.sql").read_text().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"{{{{ metricsmith.period_metrics('{grain['name']}', "), lines
