"""The rule file: every bad-input kind gives a clear error naming its line; arbitrary input never
crashes the YAML loader, the rule checker or the expression parser with anything else."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metricsmith.alerts import templates
from metricsmith.alerts.errors import AlertRuleError, ExpressionError
from metricsmith.alerts.expr import parse_duration, parse_expr, parse_periods
from metricsmith.alerts.rules import load_file, parse_text
from metricsmith.cli import alerts as cli
from metricsmith.config import project_root
from metricsmith.errors import EXIT_USAGE, classify

GOOD = """channels:
  hook: {type: webhook, url: "http://127.0.0.1:9/hook"}
rules:
  - name: revenue-drop
    kind: metric_threshold
    grain: week
    expr: revenue_cents_wow_pct < -20
    channels: [hook]
"""


def _error(text: str) -> AlertRuleError:
    with pytest.raises(AlertRuleError) as caught:
        parse_text(text, "bad.yml")
    return caught.value


def _replace(line: str, new: str) -> str:
    return GOOD.replace(line, new)


@pytest.mark.parametrize(("text", "line", "words"), [
    (_replace("revenue_cents_wow_pct < -20", "revenue_cents_mom_pct < -20"), 7,
     "unknown column 'revenue_cents_mom_pct' of weekly_metrics"),
    (_replace("revenue_cents_wow_pct < -20", "revenue_cents_wow_pct =< -20"), 7, "unknown operator '=<': use < <= > >= == !="),
    (_replace("revenue_cents_wow_pct < -20", "revenue_cents_wow_pct ~ -20"), 7, "unknown operator '~'"),
    (_replace("revenue_cents_wow_pct < -20", "revenue_cents_wow_pct < lots"), 7, "expected a number after the operator"),
    (GOOD + "    message: '{{ settings.database_url }}'\n", 9, "message template uses settings"),
    (GOOD + "    message: '{{ rule.__class__.__mro__ }}'\n", 9, "unsafe"),
    (GOOD + "    message: '{{ rule '\n", 9, "message template line 1"),
    (_replace("channels: [hook]", "channels: [pager]"), 8, "unknown channel 'pager'"),
    (GOOD + "    basis: to_date\n", 9, "basis 'to_date' (like-for-like growth up to the same day of the period) is not "
                                      "available yet in this version"),
    (_replace('url: "http://127.0.0.1:9/hook"', 'url: "http://127.0.0.1:9/hook", secret: hunter2'), 2,
     "'secret' must not be written in the file"),
    (_replace("kind: metric_threshold", "kind: metric_threshhold"), 5, "unknown kind 'metric_threshhold'"),
    (_replace("grain: week", "grain: fortnight"), 6, "unknown grain 'fortnight'"),
    (GOOD + "    for: 2 weeks\n", 9, "expected a number of periods"),
    (GOOD + "    severity: urgent\n", 9, "severity 'urgent'"),
    (GOOD + "    colour: red\n", 9, "unknown key 'colour'"),
    (GOOD + "  - {name: revenue-drop, kind: job_failed}\n", 9, "duplicate rule name 'revenue-drop'"),
    (GOOD + "  - {name: late, kind: job_overdue, job: backfill}\n", 9, "has no schedule"),
    (GOOD + "  - {name: rt, kind: realtime_threshold, expr: 'active_users < 3'}\n", 9, "compares a series"),
    (GOOD + "  - {name: rt, kind: realtime_threshold, expr: 'rate(events) < 3'}\n", 9, "needs a window"),
    (GOOD.replace("rules:", "rules: [\n"), 5, "not valid YAML"),
    (GOOD + "alerting: true\n", 9, "unknown top-level key 'alerting'"),
])
def test_bad_rule_files_name_the_line(text: str, line: int, words: str) -> None:
    error = _error(text)
    assert f"bad.yml:{line}: " in str(error), str(error)
    assert words in str(error)


def test_every_problem_of_a_file_is_listed_and_the_cli_exits_2(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "alerts.yml"
    bad.write_text(_replace("channels: [hook]", "channels: [pager]").replace("grain: week", "grain: fortnight")
                   + "  - {name: x, kind: job_failed, severity: loud}\n")
    args = argparse.Namespace(file=str(bad), json=False)
    with pytest.raises(AlertRuleError) as caught:
        cli.cmd_validate(args)
    assert len(caught.value.problems) == 3
    assert [p.split(": ")[0] for p in caught.value.problems] == [f"{bad}:6", f"{bad}:8", f"{bad}:9"]
    assert "(and 2 more problem(s))" in str(caught.value)
    assert capsys.readouterr().err.count(str(bad)) == 2
    code, line = classify(caught.value)
    assert code == EXIT_USAGE and line is not None and line.startswith(f"{bad}:6: ")


def test_the_example_rule_file_is_valid() -> None:
    ruleset = load_file(project_root() / "alerts.yml")
    assert {r.kind for r in ruleset.rules} == {"job_failed", "job_overdue", "data_stale", "metric_threshold",
                                               "realtime_threshold"}
    assert ruleset.rule("daily-events-low").channels == ("demo-file",)


def test_expressions_and_durations() -> None:
    e = parse_expr("rate(metricsmith_events_per_second, 60s) < 1")
    assert (e.operand.function, e.operand.name, e.operand.window, e.op, e.threshold) == \
        ("rate", "metricsmith_events_per_second", 60, "<", 1.0)
    assert parse_expr("active_users<1000").holds(999) and not parse_expr("active_users<1000").holds(1000)
    assert parse_expr("x >= -2.5e1").threshold == -25.0
    assert parse_duration("1h30m") == 5400 and parse_duration("0s") == 0
    assert parse_periods("2 periods") == 2 and parse_periods(1) == 1
    for bad in ("", "x <", "< 3", "x < 3 4", "rate(x, 0s) < 1", "gauge(x, 5s) < 1", "x < nan", "X < 1"):
        with pytest.raises(ExpressionError):
            parse_expr(bad)
    for bad_duration in ("5", "5 minutes", "-1m", "1y", True):
        with pytest.raises(ExpressionError):
            parse_duration(bad_duration)


def test_templates_see_only_the_alert() -> None:
    fields = {**templates.SAMPLE, "labels": {"job": "daily-metrics"}, "value": 3.0}
    assert templates.render("{{ labels.job }} {{ value | round(1) }} {{ value * 2 }}", fields) == "daily-metrics 3.0 6.0"
    for source in ("{{ cycler.__init__.__globals__ }}", "{{ lipsum }}", "{{ range(10) | list }}",
                   "{{ rule.__class__ }}", "{% include 'x' %}", "{{ rule * 100000000 }}", "{{ 9 ** 9 ** 9 }}"):
        with pytest.raises(ExpressionError):
            templates.check(source)


_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                     st.text(max_size=30), st.sampled_from(["metric_threshold", "job_failed", "week", "day", "hook",
                                                            "rate(x, 60s) < 1", "active_users < 3", "2 periods"]))
_keys = st.sampled_from(["name", "kind", "grain", "expr", "channels", "for", "basis", "message", "labels", "type",
                         "url", "rules", "defaults", "job", "within", "dimensions", "custom_metric", "retries"])
_docs = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(_keys, inner, max_size=5)), max_leaves=20)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=300))
def test_arbitrary_text_never_crashes_the_loader(text: str) -> None:
    try:
        parse_text(text, "fuzz.yml")
    except AlertRuleError as exc:
        assert str(exc).startswith("fuzz.yml")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_keys, _docs, max_size=4), st.lists(st.dictionaries(_keys, _docs, max_size=7), max_size=3))
def test_arbitrary_rule_shapes_never_crash_the_checker(top: dict[str, Any], rule_items: list[dict[str, Any]]) -> None:
    doc = {**top, "rules": rule_items}
    try:
        text = yaml.safe_dump(doc)
    except yaml.YAMLError:
        return
    try:
        parse_text(text, "fuzz.yml")
    except AlertRuleError as exc:
        assert str(exc).startswith("fuzz.yml")


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=80), st.text(alphabet="rategu(), 0123456789smhd<>=!.-+eE_x", max_size=40)))
def test_arbitrary_expressions_raise_only_the_clear_error(text: str) -> None:
    with contextlib.suppress(ExpressionError):
        parse_expr(text)
    with contextlib.suppress(ExpressionError):
        parse_duration(text)
