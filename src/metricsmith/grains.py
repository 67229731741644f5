"""The reporting grains, declared once in ``dbt_project.yml`` (``vars: grains``).

dbt reads the same list (``macros/rollups/grains.sql``: the marts, the first-activity counts),
so Python and SQL cannot disagree on which grains exist, what their marts and columns are
called, how long a period is and what each growth column compares with. Every Python caller
that knows about periods (change tracking, the cache's TTL tiers and tags, the query service,
health, the Prefect artifacts, the CLI) goes through this module instead of naming "week" or
"month" itself.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from metricsmith.core.project import project_var

_NAME = re.compile(r"[a-z][a-z_]{0,30}")
_UNITS = ("day", "week", "month")


class GrainError(ValueError):
    """An unknown grain name, or a malformed ``vars: grains`` declaration."""


def add_months(day: date, months: int) -> date:
    """``day`` moved by whole months; the day of month is clamped to the target month's length."""
    index = day.year * 12 + day.month - 1 + months
    year, month = divmod(index, 12)
    first = date(year, month + 1, 1)
    last = (add_months_first(first, 1) - timedelta(days=1)).day
    return first.replace(day=min(day.day, last))


def add_months_first(first: date, months: int) -> date:
    """The first day of the month ``months`` after the month of ``first``."""
    index = first.year * 12 + first.month - 1 + months
    year, month = divmod(index, 12)
    return date(year, month + 1, 1)


@dataclass(frozen=True, slots=True)
class Comparison:
    """One growth comparison of a grain: column suffix and how far back its baseline starts."""

    suffix: str  # wow, mom, qoq, yoy
    months: int = 0
    weeks: int = 0

    def baseline(self, period_start: date) -> date:
        """Start of the period that ``period_start``'s growth compares with."""
        if self.months:
            return add_months_first(period_start, -self.months)
        return period_start - timedelta(weeks=self.weeks)


@dataclass(frozen=True, slots=True)
class Grain:
    name: str  # day, week, month, quarter
    adjective: str  # daily, weekly, monthly, quarterly
    model: str  # the mart, e.g. weekly_metrics
    start_column: str  # e.g. week_start (metric_date for the day)
    end_column: str | None  # e.g. week_end (None for the day)
    unit: str  # day, week or month
    count: int  # periods are `count` units long
    comparisons: tuple[Comparison, ...] = ()
    breakdown: str | None = None  # the finer grain listed inside each period

    @property
    def breakdown_column(self) -> str | None:
        """The jsonb column listing the finer periods, e.g. weekly_breakdown."""
        return None if self.breakdown is None else f"{get(self.breakdown).adjective}_breakdown"

    def start_of(self, day: date) -> date:
        """The first day of the period holding ``day``."""
        if self.unit == "day":
            return day
        if self.unit == "week":
            return day - timedelta(days=day.weekday())
        index = (day.year * 12 + day.month - 1) // self.count * self.count
        year, month = divmod(index, 12)
        return date(year, month + 1, 1)

    def next_start(self, period_start: date) -> date:
        """The first day of the period after the one starting at ``period_start``."""
        start = self.start_of(period_start)
        if self.unit == "day":
            return start + timedelta(days=self.count)
        if self.unit == "week":
            return start + timedelta(weeks=self.count)
        return add_months_first(start, self.count)

    def end_of(self, day: date) -> date:
        """The last day of the period holding ``day``."""
        return self.next_start(day) - timedelta(days=1)

    def days_in(self, period_start: date) -> int:
        """How many calendar days the period holding ``period_start`` has."""
        return (self.next_start(period_start) - self.start_of(period_start)).days

    def periods_between(self, first_day: date, last_day: date) -> Iterator[date]:
        """Starts of every period that overlaps ``first_day .. last_day`` (inclusive), in order."""
        start = self.start_of(first_day)
        while start <= last_day:
            yield start
            start = self.next_start(start)

    def tag(self, period_start: date) -> str:
        """A stable label of one period (cache tags, log lines): ``week:2026-11-30``."""
        return f"{self.name}:{self.start_of(period_start).isoformat()}"


def _comparison(suffix: Any, spec: Any, where: str) -> Comparison:
    if not isinstance(suffix, str) or not _NAME.fullmatch(suffix):
        raise GrainError(f"{where}: compare key {suffix!r} must be a lowercase column suffix")
    if not isinstance(spec, dict) or len(spec) != 1 or not set(spec) <= {"months", "weeks"}:
        raise GrainError(f"{where}: compare.{suffix} must be {{months: N}} or {{weeks: N}}")
    (unit, n), = spec.items()
    if type(n) is not int or not 0 < n <= 120:
        raise GrainError(f"{where}: compare.{suffix}.{unit}={n!r}: a whole number 1..120 is required")
    return Comparison(suffix, months=n) if unit == "months" else Comparison(suffix, weeks=n)


def _grain(item: Any, index: int) -> Grain:
    where = f"dbt_project.yml vars.grains[{index}]"
    if not isinstance(item, dict):
        raise GrainError(f"{where} must be a mapping")
    missing = {"name", "adjective", "model", "start", "unit", "count"} - set(item)
    if missing:
        raise GrainError(f"{where} lacks {', '.join(sorted(missing))}")
    for field in ("name", "adjective", "model", "start", "end", "breakdown"):
        value = item.get(field)
        if value is not None and (not isinstance(value, str) or not _NAME.fullmatch(value)):
            raise GrainError(f"{where}.{field}={value!r}: a lowercase identifier is required")
    if item["unit"] not in _UNITS:
        raise GrainError(f"{where}.unit={item['unit']!r}: one of {', '.join(_UNITS)}")
    count = item["count"]
    if type(count) is not int or not 0 < count <= 12 or (item["unit"] == "month" and 12 % count):
        raise GrainError(f"{where}.count={count!r}: 1..12 (months: a divisor of 12)")
    if item["unit"] != "day" and item.get("end") is None:
        raise GrainError(f"{where}: a grain longer than a day needs an end column")
    compare = item.get("compare") or {}
    if not isinstance(compare, dict):
        raise GrainError(f"{where}.compare must be a mapping")
    return Grain(
        name=item["name"], adjective=item["adjective"], model=item["model"], start_column=item["start"],
        end_column=item.get("end"), unit=item["unit"], count=count,
        comparisons=tuple(_comparison(k, v, where) for k, v in compare.items()),
        breakdown=item.get("breakdown"),
    )


def parse(declared: Any) -> tuple[Grain, ...]:
    """Check a ``vars: grains`` list (as YAML gives it); the day grain must come first."""
    if not isinstance(declared, list) or not declared:
        raise GrainError("dbt_project.yml: vars: grains must be a non-empty list")
    grains = tuple(_grain(item, i) for i, item in enumerate(declared))
    names = [g.name for g in grains]
    if len(set(names)) != len(names):
        raise GrainError(f"dbt_project.yml vars.grains: duplicate grain names in {names}")
    if grains[0].unit != "day" or grains[0].count != 1:
        raise GrainError("dbt_project.yml vars.grains: the first grain must be the day (unit: day, count: 1)")
    for g in grains:
        if g.breakdown is not None and g.breakdown not in names[: names.index(g.name)]:
            raise GrainError(f"dbt_project.yml vars.grains: {g.name}.breakdown={g.breakdown!r} "
                             "must name a grain declared before it")
    return grains


@functools.cache
def load() -> tuple[Grain, ...]:
    """The project's grains, finest first (read once per process)."""
    return parse(project_var("grains"))


def names() -> tuple[str, ...]:
    return tuple(g.name for g in load())


def get(name: str) -> Grain:
    """The grain called ``name`` (day, week, ...); a clear error listing the declared ones."""
    for grain in load():
        if grain.name == name or grain.adjective == name:
            return grain
    raise GrainError(f"unknown grain {name!r}: use {', '.join(names())}")


def day() -> Grain:
    return load()[0]


def periods() -> tuple[Grain, ...]:
    """The grains longer than a day (the ones with a period mart, completeness and growth)."""
    return load()[1:]
