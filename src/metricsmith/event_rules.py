"""The limits of a valid event, declared once in ``dbt_project.yml`` (``vars: event_rules``).

The loader (:mod:`metricsmith.ingest`), the stream consumer (which validates with the loader)
and the SQL rule of ``stg_events`` (``macros/rollups/events.sql``, through ``var('event_rules')``)
all read this one declaration, so the three can never disagree.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from metricsmith.core.project import project_var


class EventRulesError(RuntimeError):
    """``vars: event_rules`` in dbt_project.yml is missing or malformed."""


@dataclass(frozen=True, slots=True)
class EventRules:
    max_revenue_cents: int
    min_occurred_at: datetime  # aware, UTC midnight of the configured date
    max_future: timedelta

    @property
    def max_future_seconds(self) -> int:
        return int(self.max_future.total_seconds())


def parse(declared: Any) -> EventRules:
    """Check a ``vars: event_rules`` mapping (as YAML gives it)."""
    if not isinstance(declared, dict):
        raise EventRulesError("dbt_project.yml: vars: event_rules must be a mapping")
    missing = {"max_revenue_cents", "min_occurred_at", "max_future_seconds"} - set(declared)
    if missing:
        raise EventRulesError(f"dbt_project.yml: vars: event_rules lacks {', '.join(sorted(missing))}")
    revenue, minimum, future = declared["max_revenue_cents"], declared["min_occurred_at"], \
        declared["max_future_seconds"]
    if type(revenue) is not int or not 0 < revenue < 2**63:
        raise EventRulesError(f"event_rules.max_revenue_cents={revenue!r}: a positive bigint is required")
    if type(future) is not int or not 0 <= future <= 10 * 365 * 86_400:
        raise EventRulesError(f"event_rules.max_future_seconds={future!r}: whole seconds, 0 .. 10 years")
    try:
        day = minimum if isinstance(minimum, date) else date.fromisoformat(str(minimum))
    except ValueError:
        raise EventRulesError(f"event_rules.min_occurred_at={minimum!r}: a date YYYY-MM-DD is required") from None
    return EventRules(revenue, datetime(day.year, day.month, day.day, tzinfo=UTC), timedelta(seconds=future))


@functools.cache
def load() -> EventRules:
    """The project's rules (read once per process)."""
    return parse(project_var("event_rules"))
