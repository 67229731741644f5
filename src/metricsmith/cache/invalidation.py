"""Invalidation after dbt runs and warming of the predictable dashboard queries.

The orchestration flows call, after each dbt run::

    from metricsmith.cache.invalidation import invalidate_periods, warm_cache
    invalidate_periods(days=changed_days)        # or changed={"quarter": [...]}, slugs=...
    invalidate_changes(rollup_result.changed)    # the same, from metricsmith.rollups.run_rollups()
    warm_cache()

``invalidate_periods`` expands a changed day to its period of every grain (their totals and
the growth of the following periods change with it), drops exactly the cached values that
contain those periods from Redis and from the L1 of every running process, and returns
when every process confirmed.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from metricsmith import grains
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


def _by_grain(changed: Mapping[str, Iterable[date | str]] | None,
              positional: tuple[Iterable[date | str], ...]) -> dict[str, list[date]]:
    """Changed period days by grain name, from ``changed`` and/or one positional iterable per
    grain of :func:`metricsmith.grains.periods` (in declaration order)."""
    declared = grains.periods()
    if len(positional) > len(declared):
        raise ValueError(f"{len(positional)} positional period lists for {len(declared)} grains "
                         f"({', '.join(g.name for g in declared)}); pass slugs=... by keyword")
    if changed is not None and not isinstance(changed, Mapping):
        raise ValueError("changed must map grain names to changed days, e.g. {'quarter': [date(2024, 4, 1)]}")
    out: dict[str, list[date]] = {}
    for g, values in zip(declared, positional, strict=False):
        out.setdefault(g.name, []).extend(_as_dates(values, g.name))
    for name, values in (changed or {}).items():
        g = grains.get(name)
        out.setdefault(g.name, []).extend(_as_dates(values, g.name))
    return out


def invalidate_periods(
    days: Iterable[date | str] = (),
    *period_days: Iterable[date | str],
    slugs: Iterable[str] = (),
    changed: Mapping[str, Iterable[date | str]] | None = None,
    patterns: Iterable[str] = (),
    cache: TwoTierCache | None = None,
) -> InvalidationResult:
    """Drop every cached value that contains one of these periods (or custom metric slugs).

    ``changed`` maps a declared grain (``week``, ``quarter`` ...) to any day of each changed
    period; ``period_days`` gives the same positionally, one iterable per grain of
    :func:`metricsmith.grains.periods` in declaration order. ``patterns`` are key globs such as
    ``daily:*``. Never raises on a Redis outage: the result has ``ok=False`` and the reason.
    """
    tags = periods.expand_changes(_as_dates(days, "days"), _by_grain(changed, period_days))
    tags.update(periods.slug_tag(s) for s in slugs)
    patterns = list(patterns)
    if not tags and not patterns:
        return InvalidationResult()
    return (cache or get_cache()).invalidate(tags=tags, patterns=patterns)


def invalidate_changes(changed: Any, *, cache: TwoTierCache | None = None) -> InvalidationResult:
    """Invalidate what one rollup run recomputed: ``changed`` has ``days`` and ``by_grain``
    (:attr:`metricsmith.rollups.RollupRunResult.changed`), optionally ``slugs``."""
    return invalidate_periods(getattr(changed, "days", ()), slugs=getattr(changed, "slugs", ()),
                              changed=getattr(changed, "by_grain", None), cache=cache)


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


def _warm_jobs(svc: MetricsQueryService, today: date) -> list[tuple[str, Any]]:
    """The dashboard queries: each grain's recent periods (with their summary for the grains
    longer than a day) and this year's summary of the grains compared with a year before."""
    from metricsmith import query

    jobs: list[tuple[str, Any]] = []
    for g in grains.load():
        start, end = query.recent_range(g, today)
        read = svc.get_period_metrics if g.end_column is None else svc.get_period_summary
        jobs.append((f"{g.adjective} {start} .. {end}", functools.partial(read, g.name, start, end)))
    for g in grains.periods():
        if query.year_comparison(g) is not None:
            first, last = query.year_range(today.year)
            jobs.append((f"{g.adjective} summary {today.year}",
                         functools.partial(svc.get_period_summary, g.name, first, last)))
    return jobs


def warm_cache(
    service: MetricsQueryService | None = None,
    *,
    today: date | None = None,
) -> WarmResult:
    """Read the predictable dashboard queries through the cache so the first visitor gets a hit.

    For every declared grain its recent periods (what ``metricsmith query <grain>`` reads by
    default: the last 30 days, the last 12 periods of the longer grains, with their summary),
    this year's summary of the grains with year-over-year growth, and the public custom metrics
    (when the custom metrics capability is installed).
    """
    from metricsmith.query import MetricsQueryService, NotAvailable

    own = service is None
    svc = service or MetricsQueryService()
    result = WarmResult()
    started = time.perf_counter()
    today = today or svc.today()
    try:
        for label, job in _warm_jobs(svc, today):
            try:
                job()
                result.warmed.append(label)
            except NotAvailable as exc:
                result.skipped.append(f"{label}: {exc}")
        _warm_custom(svc, result)
    finally:
        if own:
            svc.close()
    result.seconds = time.perf_counter() - started
    return result


def _warm_custom(svc: MetricsQueryService, result: WarmResult) -> None:
    from metricsmith.query import NotAvailable

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
    *period_days: Iterable[date | str],
    slugs: Iterable[str] = (),
    changed: Mapping[str, Iterable[date | str]] | None = None,
    warm: bool = True,
    today: date | None = None,
) -> RefreshReport:
    """What a flow runs after a dbt run: invalidate exactly the changed periods (arguments as for
    :func:`invalidate_periods`), then warm.

    Warming runs even when nothing changed (a cold Redis after a restart is warmed too)."""
    invalidation = invalidate_periods(days, *period_days, slugs=slugs, changed=changed)
    warming = warm_cache(today=today) if warm else None
    return RefreshReport(invalidation, warming)
