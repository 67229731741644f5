"""Custom metric specs and expressions: hostile input is refused with a clear error, nothing runs.

Validation only needs the data-source registry (from the dbt manifest of a temporary project
copy) and the database catalog; no dbt run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest

from metricsmith.custom_metrics import CustomMetricsService, ExpressionError, MetricSpecError, parse_spec
from metricsmith.custom_metrics.project import copy_project
from metricsmith.custom_metrics.validation import check_expression

COLUMNS = {"event_id": "uuid", "occurred_at": "timestamp", "received_at": "timestamp", "event_date": "date",
           "event_type": "text", "user_id": "text", "organization_id": "text", "session_id": "text",
           "revenue_cents": "numeric", "properties": "json"}

#: (expression, token the error must name)
HOSTILE: list[tuple[str, str]] = [
    ("revenue_cents; drop table raw.events", ";"),
    ("1; select pg_sleep(10)", ";"),
    ("revenue_cents -- comment", "comment"),
    ("revenue_cents /* hidden */ + 1", "hidden"),
    ("(select max(revenue_cents) from raw.events)", "SELECT"),
    ("revenue_cents + (select 1)", "SELECT"),
    ("revenue_cents in (select revenue_cents from raw.events)", "SELECT"),
    ("exists (select 1)", "SELECT"),
    ("pg_sleep(10)", "pg_sleep"),
    ("pg_read_file('/etc/passwd')", "pg_read_file"),
    ("current_user", "current_user"),
    ("version()", "version"),
    ("set_config('work_mem', '1TB', false)", "set_config"),
    ("lo_import('/etc/passwd')", "lo_import"),
    ("dblink('host=x', 'select 1')", "dblink"),
    ("pg_terminate_backend(1)", "pg_terminate_backend"),
    ("txid_current()", "txid_current"),
    ("random()", "rand"),
    ("now()", "current_timestamp"),
    ("nextval('x')", "nextval"),
    ("cast(user_id as regclass)", "REGCLASS"),
    ("user_id::regproc", "REGPROC"),
    ("cast(properties as bytea)", "BYTEA"),
    ("password", "password"),
    ("raw.events.revenue_cents", "raw.events.revenue_cents"),
    ("e.revenue_cents", "e.revenue_cents"),
    ("*", "*"),
    ("revenue_cents + event_type", "event_type"),
    ("sum(revenue_cents)", "sum"),
    ("count(*) over ()", "Window"),
    ("'{{ run_query(\"drop table x\") }}'", "{{"),
    ("revenue_cents'; drop table raw.events; --", ";"),
    ("revenue_cents\x00", "\\x00"),
    ("upper(user_id)", "upper"),  # text where a numeric expression is required
    ("array[1,2]", "Array"),
    ("$$x$$", ""),
]


@pytest.mark.parametrize(("text", "token"), HOSTILE)
def test_hostile_expression_refused(text: str, token: str) -> None:
    with pytest.raises(ExpressionError) as info:
        check_expression(text, COLUMNS, field="expression", want="numeric")
    message = str(info.value)
    assert message.startswith("expression: ")
    if token:
        assert token.lower() in message.lower(), message


def test_corpus_is_large_enough() -> None:
    assert len(HOSTILE) >= 30


@pytest.mark.parametrize(("text", "token"), [
    ("revenue_cents", "revenue_cents"),            # not boolean
    ("event_type = 1", "="),                        # text vs number
    ("user_id like revenue_cents", "revenue_cents"),
    ("event_type = 'a' or 1", "1"),
])
def test_bad_filters_refused(text: str, token: str) -> None:
    with pytest.raises(ExpressionError, match="filter"):
        check_expression(text, COLUMNS, field="filter", want="boolean")


def test_accepted_expressions_are_quoted() -> None:
    got = check_expression("coalesce(revenue_cents, 0) * 2 + abs(-1)", COLUMNS, field="expression", want="numeric")
    assert got.sql == 'COALESCE("revenue_cents", 0) * 2 + ABS(-1)'
    got = check_expression("event_type = 'it''s' and properties->>'plan' in ('pro', 'team')", COLUMNS,
                           field="filter", want="boolean")
    assert "'it''s'" in got.sql and '"event_type"' in got.sql


@pytest.mark.parametrize(("spec", "message"), [
    ({"type": "SUM", "source": "events", "expression": "revenue_cents"}, "name is required"),
    ({"name": "x", "type": "MEDIAN", "source": "events"}, "type must be one of"),
    ({"name": "x", "type": "SUM", "source": "events"}, "needs an expression"),
    ({"name": "x", "type": "SUM", "source": "events", "expression": "revenue_cents", "grain": "hour"}, "grain"),
    ({"name": "x", "type": "PERCENTILE", "source": "events", "expression": "revenue_cents"}, "percentile"),
    ({"name": "x", "type": "PERCENTILE", "source": "events", "expression": "revenue_cents", "percentile": 1.5},
     "between 0.0 and 1.0"),
    ({"name": "x", "type": "RATIO", "source": "events"}, "numerator and denominator"),
    ({"name": "x", "type": "SUM", "source": "events", "expression": "revenue_cents", "visibility": "SECRET"},
     "visibility"),
    ({"name": "x", "type": "SUM", "source": "events", "expression": "revenue_cents", "colour": "red"},
     "unknown spec keys"),
    ({"name": "x", "metric_type": "SUM", "aggregation_method": "avg", "data_source": "events",
      "calculation_formula": "revenue_cents"}, "contradicts"),
])
def test_bad_specs_refused(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(MetricSpecError, match=message):
        parse_spec(spec)


def test_yaml_and_json_give_the_same_spec() -> None:
    yaml_text = """
name: Revenue per active user
type: RATIO
source: events
grain: week
numerator:   {type: SUM, expression: revenue_cents, filter: "event_type = 'purchase'"}
denominator: {type: DISTINCT_COUNT, expression: user_id}
dimensions: [organization_id]
filter: "organization_id is not null"
visibility: TEAM
"""
    a = parse_spec(yaml_text)
    import json

    b = parse_spec(json.dumps(a.to_dict()))
    assert a == b


@pytest.fixture(scope="module")
def svc(test_database: str, tmp_path_factory: pytest.TempPathFactory) -> CustomMetricsService:
    service = CustomMetricsService(project_dir=copy_project(Path(tmp_path_factory.mktemp("cmval"))))
    service.run_dbt(["run", "--select", "stg_events"])  # the view EXPLAIN reads; parse writes the manifest
    service.add_user("val_user", "org_val")
    return service


def test_service_refuses_and_stores_nothing(svc: CustomMetricsService, conn: psycopg.Connection[Any]) -> None:
    before = conn.execute("select count(*) from metricsmith.custom_metric_definitions").fetchone()
    events = conn.execute("select count(*) from raw.events").fetchone()
    for text, _ in HOSTILE:
        with pytest.raises((ExpressionError, MetricSpecError)):
            svc.create("val_user", {"name": "hostile", "type": "SUM", "source": "events", "expression": text})
        with pytest.raises((ExpressionError, MetricSpecError)):
            svc.create("val_user", {"name": "hostile", "type": "COUNT", "source": "events", "filter": text})
    assert conn.execute("select count(*) from metricsmith.custom_metric_definitions").fetchone() == before
    assert conn.execute("select count(*) from raw.events").fetchone() == events
    assert conn.execute("select to_regclass('raw.events')").fetchone() == ("raw.events",)


def test_service_checks_source_columns_and_dimensions(svc: CustomMetricsService) -> None:
    with pytest.raises(MetricSpecError, match="unknown data source 'nope'"):
        svc.validate("val_user", {"name": "x", "type": "COUNT", "source": "nope"})
    with pytest.raises(ExpressionError, match="offending token: 'signups'"):
        svc.validate("val_user", {"name": "x", "type": "SUM", "source": "events", "expression": "signups"})
    with pytest.raises(ExpressionError, match="not an allowed dimension"):
        svc.validate("val_user", {"name": "x", "type": "SUM", "source": "daily_metrics",
                                  "expression": "signups", "dimensions": ["metric_date"]})
    with pytest.raises(ExpressionError, match="must be numeric"):
        svc.validate("val_user", {"name": "x", "type": "SUM", "source": "events", "expression": "event_type"})
    ok = svc.validate("val_user", {"name": "x", "type": "SUM", "source": "daily_metrics", "expression": "signups"})
    assert ok.expression == '"signups"'
