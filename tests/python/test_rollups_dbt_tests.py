"""The singular dbt data tests in tests/dbt/ (dbt_project.yml `test-paths`) exist, pass on
correct rollups, and each catches the corruption it is written for."""

from __future__ import annotations

from datetime import date
from typing import Any

import psycopg
import yaml
from rollups_reference import insert_events
from test_rollups import edge_case_events

from metricsmith import rollups
from metricsmith.config import project_root
from metricsmith.core.dbt import invoke

SINGULAR = {"daily_new_users_equal_first_seen", "daily_metrics_recount_valid_events",
            "period_totals_equal_daily_totals"}


def _singular(vars_: dict[str, Any] | None = None) -> dict[str, str]:
    run = invoke(["test", "--select", "test_type:singular"], vars={"metrics_timezone": "UTC", **(vars_ or {})})
    return {uid.rsplit(".", 1)[1]: status for uid, status in run.node_status.items()}


def test_test_paths_hold_the_singular_tests() -> None:
    root = project_root()
    paths = yaml.safe_load((root / "dbt_project.yml").read_text())["test-paths"]
    found = {p.stem for path in paths for p in (root / path).glob("*.sql")}
    assert found >= SINGULAR


def test_singular_tests_pass_and_catch_corruption(empty_events: psycopg.Connection[Any]) -> None:
    conn = empty_events
    first, late = edge_case_events(seed=23)
    insert_events(conn, first + late)
    rollups.run_rollups(full_refresh=True, timezone="UTC", quiet=True)
    assert _singular() == dict.fromkeys(SINGULAR, "pass")

    # a day that kept a stale new-user count (the symptom of a missed first-seen move)
    day = conn.execute("select metric_date from analytics.daily_metrics where new_users > 0 "
                       "order by metric_date limit 1").fetchone()
    assert day is not None
    conn.execute("update analytics.daily_metrics set new_users = new_users - 1 where metric_date = %s", day)
    status = _singular()
    assert status["daily_new_users_equal_first_seen"] == "fail"
    assert status["period_totals_equal_daily_totals"] == "fail"  # weeks no longer add up to days
    assert status["daily_metrics_recount_valid_events"] == "pass"

    # a day whose events were not recomputed
    rollups.run_rollups(full_refresh=True, timezone="UTC", quiet=True)
    conn.execute("update analytics.daily_metrics set revenue_cents = revenue_cents + 1, total_events = total_events "
                 "+ 1 where metric_date = %s", (date(2024, 3, 1),))
    status = _singular()
    assert status["daily_metrics_recount_valid_events"] == "fail"
    assert status["daily_new_users_equal_first_seen"] == "pass"

    # a missing week
    rollups.run_rollups(full_refresh=True, timezone="UTC", quiet=True)
    conn.execute("delete from analytics.weekly_metrics where week_start = (select min(week_start) "
                 "from analytics.weekly_metrics)")
    assert _singular() == {**dict.fromkeys(SINGULAR, "pass"), "period_totals_equal_daily_totals": "fail"}
