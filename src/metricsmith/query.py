"""Read every kind of metric through the two-tier cache, as typed rows.

>>> from datetime import date
>>> from metricsmith.query import MetricsQueryService
>>> svc = MetricsQueryService()
>>> rows = svc.get_daily_metrics(date(2024, 1, 1), date(2024, 1, 31))   # list[DailyMetrics]
>>> summary = svc.get_monthly_metrics_summary(2024)                      # months + YoY

Reads go L1 (this process) -> L2 (Redis) -> PostgreSQL (the dbt marts in ``analytics``). The
TTL follows the data's age (see :mod:`metricsmith.cache.periods`); rebuilt periods are
invalidated by :func:`metricsmith.cache.invalidation.invalidate_periods` after each dbt run.
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool

from metricsmith import db
from metricsmith.cache import periods
from metricsmith.cache.core import TwoTierCache, get_cache
from metricsmith.cache.periods import Tier, ttl_for
from metricsmith.config import Settings, load_settings
from metricsmith.custom_metrics import access
from metricsmith.custom_metrics.errors import MetricNotFound
from metricsmith.errors import UserFacingError
from metricsmith.realtime.service import RealtimeMetricsService

MEASURES = (
    "total_events", "active_users", "new_users", "active_organizations", "sessions",
    "signups", "purchases", "revenue_cents",
)
#: Measures that add up across periods (distinct counts do not).
ADDITIVE = ("total_events", "new_users", "signups", "purchases", "revenue_cents")
GROWTH_MEASURES = ("total_events", "active_users", "new_users", "revenue_cents")


class QueryError(UserFacingError):
    """A query the service cannot answer as asked (bad range, unknown metric ...)."""


class NotAvailable(QueryError):
    """The data or capability behind a query does not exist (yet) in this database."""


@dataclass(frozen=True)
class DailyMetrics:
    metric_date: date
    total_events: int
    active_users: int
    new_users: int
    active_organizations: int
    sessions: int
    signups: int
    purchases: int
    revenue_cents: int


@dataclass(frozen=True)
class WeeklyMetrics:
    week_start: date
    week_end: date
    days_with_data: int
    is_complete: bool
    total_events: int
    active_users: int
    new_users: int
    active_organizations: int
    sessions: int
    signups: int
    purchases: int
    revenue_cents: int
    avg_daily_events: Decimal | None
    avg_daily_active_users: Decimal | None
    avg_daily_revenue_cents: Decimal | None
    total_events_wow_pct: Decimal | None
    active_users_wow_pct: Decimal | None
    new_users_wow_pct: Decimal | None
    revenue_cents_wow_pct: Decimal | None


@dataclass(frozen=True)
class WeekBreakdown:
    week_start: date
    days_in_month: int
    total_events: int
    active_users: int
    revenue_cents: int


@dataclass(frozen=True)
class MonthlyMetrics:
    month_start: date
    month_end: date
    days_with_data: int
    is_complete: bool
    total_events: int
    active_users: int
    new_users: int
    active_organizations: int
    sessions: int
    signups: int
    purchases: int
    revenue_cents: int
    avg_daily_events: Decimal | None
    avg_daily_active_users: Decimal | None
    avg_daily_revenue_cents: Decimal | None
    total_events_mom_pct: Decimal | None
    active_users_mom_pct: Decimal | None
    new_users_mom_pct: Decimal | None
    revenue_cents_mom_pct: Decimal | None
    total_events_yoy_pct: Decimal | None
    active_users_yoy_pct: Decimal | None
    new_users_yoy_pct: Decimal | None
    revenue_cents_yoy_pct: Decimal | None
    weekly_breakdown: tuple[WeekBreakdown, ...] = ()


@dataclass(frozen=True)
class WeeklySummary:
    """The weeks overlapping ``start .. end`` and their additive totals."""

    start: date
    end: date
    weeks: list[WeeklyMetrics]
    totals: dict[str, int]
    complete_weeks: int


@dataclass(frozen=True)
class MonthlySummary:
    """A year's months, its additive totals and year-over-year growth.

    ``previous_year_totals`` sums the same calendar months of the previous year (so a year
    in progress compares like with like); ``yoy_pct`` is 100 x (this - previous) / previous,
    None when the previous value is 0 or missing (the marts' rule).
    """

    year: int
    months: list[MonthlyMetrics]
    totals: dict[str, int]
    previous_year_totals: dict[str, int]
    yoy_pct: dict[str, Decimal | None]


@dataclass(frozen=True)
class CustomMetricValue:
    metric_slug: str
    metric_version: int
    grain: str
    period_start: date
    dimensions: dict[str, Any]
    value: Decimal | None
    previous_value: Decimal | None
    growth_pct: Decimal | None
    computed_at: datetime | None = None


@dataclass(frozen=True)
class RealtimeValue:
    metric: str
    labels: dict[str, str]
    value: Any
    as_of: datetime | None = None


_DAILY_COLUMNS = [f.name for f in dataclasses.fields(DailyMetrics)]
_WEEKLY_COLUMNS = [f.name for f in dataclasses.fields(WeeklyMetrics)]
_MONTHLY_COLUMNS = [f.name for f in dataclasses.fields(MonthlyMetrics)]
_CUSTOM_COLUMNS = [f.name for f in dataclasses.fields(CustomMetricValue)]

R = TypeVar("R")
#: integer columns of the marts (whatever SQL type a contract gives them, e.g. numeric(38,0) sums)
_COUNTS = frozenset({*MEASURES, "days_with_data"})


def _typed(columns: list[str], row: Any) -> list[Any]:
    """One mart row as stored in the cache: counts as int, other numerics as Decimal."""
    return [int(v) if c in _COUNTS and v is not None else _num(v) for c, v in zip(columns, row, strict=False)]


def _num(value: Any) -> Any:
    """Numerics as Decimal (floats from a model that returns double precision included)."""
    if isinstance(value, float):
        return Decimal(repr(value))
    return value


def growth_pct(current: int | Decimal | None, previous: int | Decimal | None) -> Decimal | None:
    """100 x (current - previous) / previous; None when previous is None or 0 (the marts' rule)."""
    if current is None or previous is None or previous == 0:
        return None
    return (Decimal(current) - Decimal(previous)) * 100 / Decimal(previous)


def _check_range(start: date, end: date) -> None:
    if not isinstance(start, date) or not isinstance(end, date):
        raise QueryError(f"start and end must be dates, got {type(start).__name__} and {type(end).__name__}")
    if start > end:
        raise QueryError(f"start {start} is after end {end}")
    if (end - start).days > 366 * 20:
        raise QueryError(f"range {start} .. {end} is longer than 20 years; narrow it")


class MetricsQueryService:
    """Typed, cached reads of the metrics marts, custom metric values and realtime values."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        cache: TwoTierCache | None = None,
        schema: str = "analytics",
        use_cache: bool = True,
        today: date | None = None,
    ) -> None:
        self.settings = settings or load_settings()
        self.schema = schema
        self.cache = cache if cache is not None else (get_cache() if use_cache else None)
        self._today = today
        self._pool: ConnectionPool[Any] | None = None
        self._pool_lock = threading.Lock()
        self._realtime_read: Any = None
        # keys of a non-default schema carry it, so two marts never share entries
        self._key_prefix = "" if schema == "analytics" else f"{schema}/"

    # ------------------------------------------------------------------ plumbing
    def today(self) -> date:
        """Today in the reporting time zone (the open day)."""
        return self._today or datetime.now(self.settings.tz).date()

    def _connection_pool(self) -> ConnectionPool[Any]:
        if self._pool is None:
            with self._pool_lock:
                if self._pool is None:
                    url = db.database_url(self.settings)
                    # fail fast with the server's own reason (the pool would retry for 30 s, logging each try)
                    psycopg.connect(url, autocommit=True, connect_timeout=10).close()
                    pool: ConnectionPool[Any] = ConnectionPool(
                        url, min_size=1, max_size=4, open=False,
                        kwargs={"autocommit": True, "connect_timeout": 10},
                    )
                    pool.open(wait=True, timeout=30)
                    self._pool = pool
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __enter__(self) -> MetricsQueryService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _fetch(self, query: sql.Composable, params: tuple[Any, ...], table: str) -> list[tuple[Any, ...]]:
        with self._connection_pool().connection() as conn:
            try:
                return conn.execute(query, params).fetchall()
            except psycopg.errors.UndefinedTable:
                hint = ("`metricsmith metrics run`" if table == "custom_metric_values"
                        else "`metricsmith rollups run` (or `metricsmith demo`)")
                raise NotAvailable(f"{self.schema}.{table} does not exist in this database: build it with {hint}") from None
            except psycopg.errors.UndefinedColumn as exc:
                raise NotAvailable(f"{self.schema}.{table} does not have the contracted columns: {exc}") from None

    def _cached(self, key: str, compute: Any, tier: Tier, tags: Any, load: Any) -> Any:
        """``load(compute())`` through the cache; ``load`` builds immutable typed rows (kept in L1)."""
        if self.cache is None:
            return load(compute())
        return self.cache.get_or_compute(
            self._key_prefix + key, compute, ttl=ttl_for(tier, self.cache.config), tags=tags, load=load
        )

    def _select(self, table: str, columns: list[str], where: str, order: str) -> sql.Composed:
        return sql.SQL("select {cols} from {tbl} where {where} order by {order}").format(
            cols=sql.SQL(", ").join(sql.Identifier(c) for c in columns),
            tbl=sql.Identifier(self.schema, table),
            where=sql.SQL(where),  # fixed text in this module only
            order=sql.Identifier(order),
        )

    # ------------------------------------------------------------------ marts
    def tier_for_range(self, end: date) -> Tier:
        return periods.tier_for_range(end, self.today())

    def get_daily_metrics(self, start: date, end: date) -> list[DailyMetrics]:
        """One row per spine day in ``start .. end`` (inclusive)."""
        _check_range(start, end)

        def compute() -> list[list[Any]]:
            rows = self._fetch(self._select("daily_metrics", _DAILY_COLUMNS, "metric_date between %s and %s",
                                            "metric_date"), (start, end), "daily_metrics")
            return [_typed(_DAILY_COLUMNS, r) for r in rows]

        def tags() -> list[str]:
            return [periods.day_tag(d) for d in periods.days_between(start, end)]

        rows = self._cached(f"daily:{start}:{end}", compute, self.tier_for_range(end), tags,
                            lambda raw: tuple(DailyMetrics(*r) for r in raw))
        return list(rows)

    def get_weekly_metrics(self, start: date, end: date) -> list[WeeklyMetrics]:
        """ISO weeks (Monday start) overlapping ``start .. end``."""
        _check_range(start, end)
        first = periods.week_start(start)
        last_end = periods.week_start(end) + timedelta(days=6)

        def compute() -> list[list[Any]]:
            rows = self._fetch(self._select("weekly_metrics", _WEEKLY_COLUMNS, "week_start between %s and %s",
                                            "week_start"), (first, end), "weekly_metrics")
            return [_typed(_WEEKLY_COLUMNS, r) for r in rows]

        # growth of the first week depends on the week before it
        def tags() -> list[str]:
            return [periods.week_tag(w) for w in periods.weeks_between(first - timedelta(days=7), end)]

        rows = self._cached(f"weekly:{first}:{periods.week_start(end)}", compute, self.tier_for_range(last_end), tags,
                            lambda raw: tuple(WeeklyMetrics(*r) for r in raw))
        return list(rows)

    def get_weekly_metrics_summary(self, start: date, end: date) -> WeeklySummary:
        weeks = self.get_weekly_metrics(start, end)
        totals = {m: sum(getattr(w, m) for w in weeks) for m in ADDITIVE}
        return WeeklySummary(start, end, weeks, totals, sum(1 for w in weeks if w.is_complete))

    def get_monthly_metrics(self, start: date, end: date) -> list[MonthlyMetrics]:
        """Calendar months overlapping ``start .. end``, with their weekly breakdown."""
        _check_range(start, end)
        first = periods.month_start(start)

        def compute() -> list[list[Any]]:
            rows = self._fetch(self._select("monthly_metrics", _MONTHLY_COLUMNS, "month_start between %s and %s",
                                            "month_start"), (first, end), "monthly_metrics")
            out = []
            for r in rows:
                values = _typed(_MONTHLY_COLUMNS[:-1], r[:-1])
                breakdown = [[date.fromisoformat(str(b["week_start"])), int(b["days_in_month"]), int(b["total_events"]),
                              int(b["active_users"]), int(b["revenue_cents"])] for b in (r[-1] or [])]
                out.append([*values, breakdown])
            return out

        # month-over-month needs the month before, year-over-year the same month a year earlier
        year_before = first.replace(year=first.year - 1)
        def tags() -> list[str]:
            return [periods.month_tag(m) for m in periods.months_between(year_before, end)]

        last_end = periods.month_end(end)
        def load(raw: list[list[Any]]) -> tuple[MonthlyMetrics, ...]:
            return tuple(dataclasses.replace(MonthlyMetrics(*r[:-1]),
                                             weekly_breakdown=tuple(WeekBreakdown(*b) for b in r[-1]))
                         for r in raw)

        rows = self._cached(f"monthly:{first}:{periods.month_start(end)}", compute, self.tier_for_range(last_end),
                            tags, load)
        return list(rows)

    def get_monthly_metrics_summary(self, year: int) -> MonthlySummary:
        """The months of ``year`` plus year-over-year growth of the year so far."""
        if not isinstance(year, int) or not 1900 <= year <= 9999:
            raise QueryError(f"year must be an integer between 1900 and 9999, got {year!r}")
        months = self.get_monthly_metrics(date(year, 1, 1), date(year, 12, 31))
        previous = {m.month_start.month: m for m in self.get_monthly_metrics(date(year - 1, 1, 1),
                                                                              date(year - 1, 12, 31))}
        totals = {m: sum(getattr(row, m) for row in months) for m in ADDITIVE}
        same_months = [previous[row.month_start.month] for row in months if row.month_start.month in previous]
        prev_totals = {m: sum(getattr(row, m) for row in same_months) for m in ADDITIVE}
        yoy = {m: (growth_pct(totals[m], prev_totals[m]) if same_months else None) for m in ADDITIVE}
        return MonthlySummary(year, months, totals, prev_totals, yoy)

    # ------------------------------------------------------------------ custom metrics
    def get_custom_metric_values(
        self,
        slug: str,
        *,
        user: str,
        start: date | None = None,
        end: date | None = None,
        version: int | None = None,
    ) -> list[CustomMetricValue]:
        """Values of one custom metric (its current version unless ``version``), if ``user`` may see it.

        The visibility check (the custom metrics' rules: owner, team, organization, public, org admins)
        runs on every call against PostgreSQL and is never cached; only the values are, shared
        by every reader who passes the check.
        """
        if start is not None and end is not None:
            _check_range(start, end)
        current = self._check_custom_read(slug, user)
        return self._custom_values(slug, version or current, start, end)

    def _check_custom_read(self, slug: str, user: str) -> int:
        with self._connection_pool().connection() as conn:
            try:
                who = access.principal(conn, user)
                row = conn.execute(
                    "select owner_id, visibility, organization_id, team_id, current_version "
                    "from metricsmith.custom_metric_definitions where slug = %s", (slug,)).fetchone()
            except psycopg.errors.UndefinedTable:
                raise NotAvailable("the custom metrics tables do not exist: run `metricsmith db upgrade`") from None
        if row is None or not access.can_read(who, row[0], row[1], row[2], row[3]):
            raise MetricNotFound(f"no metric {slug!r} visible to {user}")
        return int(row[4])

    def _custom_values(self, slug: str, version: int, start: date | None, end: date | None) -> list[CustomMetricValue]:
        lo, hi = start or date(1, 1, 1), end or date(9999, 12, 31)
        query = sql.SQL(
            "select {cols} from {tbl} where metric_slug = %s and metric_version = %s "
            "and period_start between %s and %s order by period_start, dimensions::text"
        ).format(cols=sql.SQL(", ").join(sql.Identifier(c) for c in _CUSTOM_COLUMNS),
                 tbl=sql.Identifier(self.schema, "custom_metric_values"))

        def compute() -> list[list[Any]]:
            rows = self._fetch(query, (slug, version, lo, hi), "custom_metric_values")
            return [[_num(v) for v in r] for r in rows]

        tier = Tier.OPEN if end is None else self.tier_for_range(end)
        rows = self._cached(f"custom:{slug}:v{version}:{lo}:{hi}", compute, tier, [periods.slug_tag(slug)],
                            lambda raw: tuple(CustomMetricValue(*r) for r in raw))
        return list(rows)

    def public_custom_metric_slugs(self) -> list[tuple[str, int]]:
        """``(slug, current_version)`` of the active PUBLIC custom metrics (what the warmer pre-reads)."""
        with self._connection_pool().connection() as conn:
            try:
                rows = conn.execute(
                    "select slug, current_version from metricsmith.custom_metric_definitions "
                    "where visibility = 'PUBLIC' and status = 'active' order by slug").fetchall()
            except psycopg.errors.UndefinedTable:
                raise NotAvailable("the custom metrics tables do not exist: run `metricsmith db upgrade`") from None
        return [(r[0], int(r[1])) for r in rows]

    def warm_custom_metric(self, slug: str, version: int) -> int:
        """Read a custom metric's values through the cache without an acting user (warming only;
        nothing is returned to anyone). Returns the number of values."""
        return len(self._custom_values(slug, version, None, None))

    # ------------------------------------------------------------------ realtime
    def get_realtime_value(
        self, metric: str, labels: dict[str, str] | None = None, *, window: int = 60
    ) -> RealtimeValue:
        """A realtime metric's current value, read by the realtime service and cached
        for ``ttl_realtime`` (1 min by default). Counters and gauges give a number, rates events
        per second over ``window`` seconds, histograms ``{buckets, cumulative, sum, count}``."""
        labels = {str(k): str(v) for k, v in (labels or {}).items()}
        if self._realtime_read is None:
            self._realtime_read = _realtime_reader(self.settings)
        reader = self._realtime_read

        def compute() -> Any:
            return reader(metric, labels, window)

        key = f"realtime:{metric}:{window}:" + ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        value = self._cached(key, compute, Tier.REALTIME, [f"realtime:{metric}"], lambda raw: raw)
        return RealtimeValue(metric, labels, value, datetime.now(self.settings.tz))


def _realtime_reader(settings: Settings) -> Any:
    """``(metric, labels, window) -> plain value`` over the realtime service (made on first use)."""
    services: list[RealtimeMetricsService] = []

    def read(metric: str, labels: dict[str, str], window: int) -> Any:
        if not services:
            services.append(RealtimeMetricsService(settings))
        service = services[0]
        spec = service.spec(metric)
        if spec is None:
            known = ", ".join(sorted(s.name for s in service.specs())) or "none"
            raise QueryError(f"unknown realtime metric {metric!r}; declared: {known}")
        kind = str(getattr(spec.type, "value", spec.type)).lower()
        if kind == "counter":
            return service.get_counter(metric, labels or None)
        if kind == "gauge":
            return service.get_gauge(metric, labels or None)
        if kind == "rate":
            return service.get_rate(metric, window, labels or None)
        if kind == "histogram":
            return service.get_histogram(metric, labels or None).as_dict()
        raise QueryError(f"realtime metric {metric!r} has an unsupported type {kind!r}")

    return read


__all__ = [
    "CustomMetricValue", "DailyMetrics", "MetricsQueryService", "MonthlyMetrics", "MonthlySummary",
    "NotAvailable", "QueryError", "RealtimeValue", "WeekBreakdown", "WeeklyMetrics", "WeeklySummary",
    "growth_pct",
]
