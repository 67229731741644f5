"""Period arithmetic for the cache: which TTL tier a value gets and which tags it carries.

A value's TTL follows the age of the data it holds: realtime values are short-lived, a value
that includes the current (still open) day, ISO week or month may still change with tonight's
run, and a value made only of closed periods changes only when a rebuild says so (and then it
is invalidated explicitly).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from datetime import date, timedelta

from metricsmith.cache.config import CacheConfig


class Tier(enum.StrEnum):
    REALTIME = "realtime"
    OPEN = "open"
    CLOSED = "closed"


def ttl_for(tier: Tier, config: CacheConfig) -> float:
    return {Tier.REALTIME: config.ttl_realtime, Tier.OPEN: config.ttl_open, Tier.CLOSED: config.ttl_closed}[tier]


def week_start(day: date) -> date:
    """The Monday of ``day``'s ISO week."""
    return day - timedelta(days=day.weekday())


def month_start(day: date) -> date:
    return day.replace(day=1)


def next_month(day: date) -> date:
    first = day.replace(day=1)
    return (first.replace(year=first.year + 1, month=1) if first.month == 12
            else first.replace(month=first.month + 1))


def month_end(day: date) -> date:
    return next_month(day) - timedelta(days=1)


def tier_for_range(last_day: date, today: date) -> Tier:
    """OPEN when the range reaches today or later (today's period is still being written), else CLOSED."""
    return Tier.OPEN if last_day >= today else Tier.CLOSED


def tier_for_period(grain: str, period_start: date, today: date) -> Tier:
    """Tier of one period of ``grain`` (day, week, month) starting at ``period_start``."""
    if grain == "day":
        end = period_start
    elif grain == "week":
        end = week_start(period_start) + timedelta(days=6)
    elif grain == "month":
        end = month_end(period_start)
    else:
        raise ValueError(f"unknown grain {grain!r}: use day, week or month")
    return tier_for_range(end, today)


def days_between(start: date, end: date) -> Iterable[date]:
    day = start
    while day <= end:
        yield day
        day += timedelta(days=1)


def weeks_between(start: date, end: date) -> Iterable[date]:
    week = week_start(start)
    while week <= end:
        yield week
        week += timedelta(days=7)


def months_between(start: date, end: date) -> Iterable[date]:
    month = month_start(start)
    while month <= end:
        yield month
        month = next_month(month)


def day_tag(day: date) -> str:
    return f"day:{day.isoformat()}"


def week_tag(week: date) -> str:
    return f"week:{week_start(week).isoformat()}"


def month_tag(month: date) -> str:
    return f"month:{month_start(month).isoformat()[:7]}"


def slug_tag(slug: str) -> str:
    return f"slug:{slug}"


def expand_changes(
    days: Iterable[date] = (),
    weeks: Iterable[date] = (),
    months: Iterable[date] = (),
) -> set[str]:
    """Tags to drop when these periods changed.

    A changed day changes its week and month rows too (their totals, distinct counts and the
    growth of the following periods), so a day expands to its own tag plus its week's and
    month's; a changed week or month expands to every day inside it as well.
    """
    tags: set[str] = set()
    for day in days:
        tags.update((day_tag(day), week_tag(day), month_tag(day)))
    for week in weeks:
        monday = week_start(week)
        for day in days_between(monday, monday + timedelta(days=6)):
            tags.update((day_tag(day), week_tag(day), month_tag(day)))
    for month in months:
        for day in days_between(month_start(month), month_end(month)):
            tags.update((day_tag(day), week_tag(day), month_tag(day)))
    return tags
