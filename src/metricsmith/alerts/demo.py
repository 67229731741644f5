"""The alerts step of ``metricsmith demo``: the demo rule fires and resolves on the sample data.

The rule ``daily-events-low`` of ``alerts.yml`` (``total_events < 4500`` on the day grain) is
evaluated as of two moments of the sample data: the Monday after its newest complete weekend
(the newest complete day is a Sunday: quiet, the rule fires) and the Tuesday (the newest day is
a Monday: busy again, it resolves). The notifications go to the ``file`` channel under
``.metricsmith/`` (git-ignored): no external service is needed.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

from metricsmith import db, grains
from metricsmith.alerts.evaluate import evaluate
from metricsmith.alerts.rules import RuleSet, load_file
from metricsmith.core.schema import marts_schema

DEMO_RULE = "daily-events-low"


def _last_weekend(newest_day: date) -> date:
    """The newest Sunday whose Monday is in the data."""
    monday = newest_day - timedelta(days=newest_day.weekday())
    return monday - timedelta(days=1)


def demo_step(schema: str | None = None) -> None:
    """Print what fired and resolved (``schema``: where the marts are, default the marts' schema)."""
    ruleset = load_file()
    rule = ruleset.rule(DEMO_RULE)
    day = grains.day()
    schema = schema or marts_schema()
    with db.connect(autocommit=True) as conn:
        row = conn.execute(f"select max({day.start_column}) from {schema}.{day.model}").fetchone()
    if row is None or row[0] is None:
        print(f"alerts: {day.model} is empty; nothing to evaluate")
        return
    sunday = _last_weekend(row[0])
    only = RuleSet(ruleset.source, (rule,), ruleset.channels)
    for as_of in (sunday + timedelta(days=1), sunday + timedelta(days=2)):
        moment = datetime.combine(as_of, time(0, 5), tzinfo=UTC)
        result = evaluate(only, now=moment, schema=schema, drain_seconds=5)
        print(f"as of {moment:%a %Y-%m-%d %H:%M} UTC:")
        for change in result.changes:
            print(f"  {change.event.upper()} {change.rule}: {change.summary}")
        if not result.changes:
            print("  no change")
        for rule_name, error in result.errors.items():
            print(f"  ERROR {rule_name}: {error}")
        if result.delivery is not None:
            print(f"  {result.delivery.render()} -> {', '.join(rule.channels)}")
