"""Invalidation after dbt runs and warming of the predictable dashboard queries.

The orchestration flows call, after each dbt run::

    from metricsmith.cache.invalidation import invalidate_periods, warm_cache
    invalidate_periods(days=changed_days)        # or weeks=..., months=..., slugs=...
    invalidate_changes(rollup_result.changed)    # the same, from metricsmith.rollups.run_rollups()
    warm_cache()

``invalidate_periods`` expands a changed day to its week and month (their totals and the
growth of the following periods change with it), drops exactly the cached values that
contain those periods from Redis and from the L1 of every running process, and returns
when every process confirmed.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from metricsmith.cache import periods
from metricsmith.cache.core import InvalidationResult, TwoTierCache, get_cache

if TYPE_CHECKING:
    from metricsmith.query import MetricsQueryService


def _as_dates(values: Iterable[date | str], what: str) -> list[date]:
    out = []
    for value in values:
        if isinstance(value, datetime):
            out.append(value.date())
        elif isinstance(value, date):
            out.append(value)
        else:
            try:
                out.append(date.fromisoformat(str(value)))
            except ValueError:
                raise ValueError(f"{what}: {value!r} is not a date (YYYY-MM-DD)") from None
    return out


def invalidate_periods(
    days: Iterable[date | str] = (),
    weeks: Iterable[date | str] = (),
    months: Iterable[date | str] = (),
    slugs: Iterable[str] = (),
    *,
    patterns: Iterable[str] = (),
    cache: TwoTierCache | None = None,
) -> InvalidationResult:
    """Drop every cached value that contains one of these periods (or custom metric slugs).

    ``weeks`` are any day of the week (normally its Monday), ``months`` any day of the month;
    ``patterns`` are key globs such as ``daily:*``. Never raises on a Redis outage: the result
    has ``ok=False`` and the reason.
    """
    tags = periods.expand_changes(_as_dates(days, "days"), _as_dates(weeks, "weeks"), _as_dates(months, "months"))
    tags.update(periods.slug_tag(s) for s in slugs)
    patterns = list(patterns)
    if not tags and not patterns:
        return InvalidationResult()
    return (cache or get_cache()).invalidate(tags=tags, patterns=patterns)


def invalidate_changes(changed: Any, *, cache: TwoTierCache | None = None) -> InvalidationResult:
    """Invalidate what one rollup run recomputed: ``changed`` has ``days``, ``weeks``, ``months``
    (e.g. :attr:`metricsmith.rollups.RollupRunResult.changed`) and optionally ``slugs``."""
    return invalidate_periods(
        getattr(changed, "days", ()), getattr(changed, "weeks", ()), getattr(changed, "months", ()),
        getattr(changed, "slugs", ()), cache=cache,
    )


def changed_days_since(received_since: datetime, *, timezone: str | None = None) -> list[date]:
    """Reporting days of the valid-looking events received at or after ``received_since``.

    What a flow passes to :func:`invalidate_periods` after an incremental run that loaded
    those events (late events land on old days, so this is not just "today").
    """
    from metricsmith import db
    from metricsmith.config import load_settings

    tz = timezone or load_settings().timezone
    with db.connect(autocommit=True) as conn:
        rows = conn.execute(
            "select distinct (occurred_at at time zone %s)::date from raw.events "
            "where received_at >= %s and occurred_at is not null order by 1",
            (tz, received_since),
        ).fetchall()
    return [r[0] for r in rows]


@dataclass
class WarmResult:
    """What :func:`warm_cache` read (each through the cache) and how long it took."""

    warmed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def render(self) -> str:
        lines = [f"warmed {len(self.warmed)} quer{'y' if len(self.warmed) == 1 else 'ies'} in {self.seconds:.2f}s"]
        lines += [f"  + {w}" for w in self.warmed]
        lines += [f"  - skipped: {s}" for s in self.skipped]
        return "\n".join(lines)


def warm_cache(
    service: MetricsQueryService | None = None,
    *,
    today: date | None = None,
) -> WarmResult:
    """Read the predictable dashboard queries through the cache so the first visitor gets a hit.

    Last 30 days, last 12 ISO weeks, last 13 months, this year's monthly summary, and the
    public custom metrics (when the custom metrics capability is installed).
    """
    from metricsmith.query import MetricsQueryService, NotAvailable

    own = service is None
    svc = service or MetricsQueryService()
    result = WarmResult()
    started = time.perf_counter()
    today = today or svc.today()
    try:
        jobs: list[tuple[str, Any]] = [
            (f"daily {today - timedelta(days=29)} .. {today}",
             lambda: svc.get_daily_metrics(today - timedelta(days=29), today)),
            (f"weekly {periods.week_start(today) - timedelta(weeks=11)} .. {today}",
             lambda: svc.get_weekly_metrics_summary(periods.week_start(today) - timedelta(weeks=11), today)),
            (f"monthly {_months_back(today, 12)} .. {today}",
             lambda: svc.get_monthly_metrics(_months_back(today, 12), today)),
            (f"monthly summary {today.year}", lambda: svc.get_monthly_metrics_summary(today.year)),
        ]
        for label, job in jobs:
            try:
                job()
                result.warmed.append(label)
            except NotAvailable as exc:
                result.skipped.append(f"{label}: {exc}")
        try:
            for slug, version in svc.public_custom_metric_slugs():
                try:
                    count = svc.warm_custom_metric(slug, version)
                    result.warmed.append(f"custom {slug} v{version} ({count} values)")
                except NotAvailable as exc:
                    result.skipped.append(f"custom {slug}: {exc}")
                    break
        except NotAvailable as exc:
            result.skipped.append(f"custom metrics: {exc}")
    finally:
        if own:
            svc.close()
    result.seconds = time.perf_counter() - started
    return result


@dataclass
class RefreshReport:
    """What :func:`refresh_after_run` did: the invalidation, then the warming."""

    invalidation: InvalidationResult
    warming: WarmResult | None

    @property
    def ok(self) -> bool:
        return self.invalidation.ok

    def render(self) -> str:
        lines = [self.invalidation.render()]
        if self.warming is not None:
            lines.append(self.warming.render())
        return "\n".join(lines)


def refresh_after_run(
    days: Iterable[date | str] = (),
    weeks: Iterable[date | str] = (),
    months: Iterable[date | str] = (),
    slugs: Iterable[str] = (),
    *,
    warm: bool = True,
    today: date | None = None,
) -> RefreshReport:
    """What a flow runs after a dbt run: invalidate exactly the changed periods, then warm.

    Warming runs even when nothing changed (a cold Redis after a restart is warmed too)."""
    invalidation = invalidate_periods(days, weeks, months, slugs)
    warming = warm_cache(today=today) if warm else None
    return RefreshReport(invalidation, warming)


def _months_back(day: date, count: int) -> date:
    month = periods.month_start(day)
    index = month.year * 12 + month.month - 1 - count
    return date(index // 12, index % 12 + 1, 1)
