"""Period arithmetic for the cache: which TTL tier a value gets and which tags it carries.

A value's TTL follows the age of the data it holds: realtime values are short-lived, a value
that includes the current (still open) period of any grain may still change with tonight's
run, and a value made only of closed periods changes only when a rebuild says so (and then it
is invalidated explicitly). The grains and their calendars come from :mod:`metricsmith.grains`;
a tag names one period of one grain (:meth:`metricsmith.grains.Grain.tag`, e.g. ``day:2024-05-02``
or ``quarter:2024-04-01``).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from datetime import date

from metricsmith import grains
from metricsmith.cache.config import CacheConfig
from metricsmith.grains import Grain


class Tier(enum.StrEnum):
    REALTIME = "realtime"
    OPEN = "open"
    CLOSED = "closed"


def ttl_for(tier: Tier, config: CacheConfig) -> float:
    return {Tier.REALTIME: config.ttl_realtime, Tier.OPEN: config.ttl_open, Tier.CLOSED: config.ttl_closed}[tier]


def _grain(grain: str | Grain) -> Grain:
    return grain if isinstance(grain, Grain) else grains.get(grain)


def tier_for_range(last_day: date, today: date) -> Tier:
    """OPEN when the range reaches today or later (today's period is still being written), else CLOSED."""
    return Tier.OPEN if last_day >= today else Tier.CLOSED


def tier_for_period(grain: str | Grain, period_start: date, today: date) -> Tier:
    """Tier of the period of ``grain`` (a declared grain: day, week, ...) holding ``period_start``."""
    return tier_for_range(_grain(grain).end_of(period_start), today)


def days_between(start: date, end: date) -> Iterable[date]:
    return grains.day().periods_between(start, end)


def range_tags(grain: str | Grain, first: date, end: date) -> list[str]:
    """Tags of a value holding ``grain``'s periods from ``first`` to ``end``: those periods, and
    the earlier ones their growth columns compare with (the previous period, a year before ...)."""
    g = _grain(grain)
    earliest = min([g.start_of(first), *(c.baseline(g.start_of(first)) for c in g.comparisons)])
    return [g.tag(p) for p in g.periods_between(earliest, end)]


def day_tags(day: date) -> set[str]:
    """The tags a changed day invalidates: the day's own and its period's in every grain."""
    return {g.tag(day) for g in grains.load()}


def slug_tag(slug: str) -> str:
    return f"slug:{slug}"


def expand_changes(days: Iterable[date] = (), changed: Mapping[str, Iterable[date]] | None = None) -> set[str]:
    """Tags to drop when these periods changed.

    A changed day changes its period of every grain too (their totals, distinct counts and the
    growth of the following periods), so a day expands to the tag of each period holding it;
    a changed period of a grain (``changed``: grain name -> any day of each changed period)
    expands to every day inside it as well.
    """
    tags: set[str] = set()
    for day in days:
        tags |= day_tags(day)
    for name, starts in (changed or {}).items():
        g = _grain(name)
        for start in starts:
            for day in days_between(g.start_of(start), g.end_of(start)):
                tags |= day_tags(day)
    return tags
