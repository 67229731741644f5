"""Read every kind of metric through the two-tier cache, as typed rows.

>>> from datetime import date
>>> from metricsmith.query import MetricsQueryService
>>> svc = MetricsQueryService()
>>> rows = svc.get_period_metrics("quarter", date(2024, 1, 1), date(2024, 12, 31))  # list[dict]
>>> days = svc.get_daily_metrics(date(2024, 1, 1), date(2024, 1, 31))              # list[DailyMetrics]
>>> summary = svc.get_monthly_metrics_summary(2024)                                 # months + YoY

One generic path serves every grain declared in ``dbt_project.yml`` (:mod:`metricsmith.grains`):
:meth:`MetricsQueryService.get_period_metrics` returns the rows of the grain's mart, every
column in mart order (:func:`period_columns`), and :meth:`MetricsQueryService.get_period_summary`
their totals and growth. The typed methods (``get_daily_metrics``, ``get_weekly_metrics``, ...)
are views over it. Reads go L1 (this process) -> L2 (Redis) -> PostgreSQL (the dbt marts in
:func:`metricsmith.core.schema.marts_schema`). The TTL follows the data's age (see
:mod:`metricsmith.cache.periods`); rebuilt periods are invalidated by
:func:`metricsmith.cache.invalidation.invalidate_periods` after each dbt run. Growth percentages
are read from the marts or computed by the database's ``metricsmith.growth_pct``, never here.
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool

from metricsmith import db, grains, rollups
from metricsmith.cache import periods
from metricsmith.cache.core import TwoTierCache, get_cache
from metricsmith.cache.periods import Tier, ttl_for
from metricsmith.config import Settings, load_settings
from metricsmith.core.schema import marts_schema
from metricsmith.custom_metrics import access
from metricsmith.custom_metrics.errors import MetricNotFound
from metricsmith.errors import UserFacingError
from metricsmith.grains import Comparison, Grain, GrainError
from metricsmith.realtime.service import RealtimeMetricsService
from metricsmith.rollups import AVERAGES, GROWTH_MEASURES, MEASURES  # re-exported: the marts' measures

#: Measures that add up across periods (distinct counts do not).
ADDITIVE = ("total_events", "new_users", "signups", "purchases", "revenue_cents")


class QueryError(UserFacingError):
    """A query the service cannot answer as asked (bad range, unknown grain or metric ...)."""


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
class _Measures:
    """What every period mart row holds between its start/end and its growth: the days present,
    the measures and the daily averages (each grain's typed row puts its start and end first)."""

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


@dataclass(frozen=True)
class WeekBreakdown:
    """One week (the part inside the month) of a month's ``weekly_breakdown``."""

    week_start: date
    days_in_month: int
    total_events: int
    active_users: int
    revenue_cents: int
    is_complete: bool | None = None


@dataclass(frozen=True)
class _WeekKey:
    week_start: date
    week_end: date


@dataclass(frozen=True)
class WeeklyMetrics(_Measures, _WeekKey):
    total_events_wow_pct: Decimal | None
    active_users_wow_pct: Decimal | None
    new_users_wow_pct: Decimal | None
    revenue_cents_wow_pct: Decimal | None
    wow_basis_days: int | None = None
    wow_basis: str | None = None


@dataclass(frozen=True)
class _YearOverYear:
    """The same period a year earlier (months and quarters): growth and basis."""

    total_events_yoy_pct: Decimal | None = None
    active_users_yoy_pct: Decimal | None = None
    new_users_yoy_pct: Decimal | None = None
    revenue_cents_yoy_pct: Decimal | None = None
    yoy_basis_days: int | None = None
    yoy_basis: str | None = None


@dataclass(frozen=True)
class _MonthKey:
    month_start: date
    month_end: date


@dataclass(frozen=True)
class MonthlyMetrics(_YearOverYear, _Measures, _MonthKey):
    total_events_mom_pct: Decimal | None = None
    active_users_mom_pct: Decimal | None = None
    new_users_mom_pct: Decimal | None = None
    revenue_cents_mom_pct: Decimal | None = None
    weekly_breakdown: tuple[WeekBreakdown, ...] = ()
    mom_basis_days: int | None = None
    mom_basis: str | None = None


@dataclass(frozen=True)
class MonthBreakdown:
    """One month of a quarter's ``monthly_breakdown``."""

    month_start: date
    days_in_quarter: int
    total_events: int
    active_users: int
    revenue_cents: int
    is_complete: bool | None = None


@dataclass(frozen=True)
class _QuarterKey:
    quarter_start: date
    quarter_end: date


@dataclass(frozen=True)
class QuarterlyMetrics(_YearOverYear, _Measures, _QuarterKey):
    monthly_breakdown: tuple[MonthBreakdown, ...] = ()
    total_events_qoq_pct: Decimal | None = None
    active_users_qoq_pct: Decimal | None = None
    new_users_qoq_pct: Decimal | None = None
    revenue_cents_qoq_pct: Decimal | None = None
    qoq_basis_days: int | None = None
    qoq_basis: str | None = None


@dataclass(frozen=True)
class PeriodSummary:
    """The periods of one grain overlapping ``start .. end``, their totals and their growth.

    ``totals`` sums the additive measures over every period of the range, ``avg_daily`` divides
    them by ``days_with_data``. Growth compares like with like: each period of the range is paired
    with the period as many periods earlier as the range has (a year of months: the same month a
    year before; six weeks: the six weeks before), like for like, as the marts' growth columns: the
    whole periods when both are complete, else only the days both periods have in the day-level
    mart, aligned by their offset in the period; a month against the month a year before always
    aligns by day of month (29 February has no partner in a non-leap year and is left out of both
    sides). A one-period range's growth is thus its mart row's (``*_wow_pct``, ``*_mom_pct`` ...).
    ``compared_periods`` counts the pairs with an aligned day, ``compared_days`` the aligned days,
    ``compared_starts`` lists the range's compared periods. ``compared_totals`` sums this range's
    aligned days, ``previous_totals`` their partners, and ``growth_pct`` is the database's
    ``metricsmith.growth_pct`` of the two (None when there is nothing to compare or the previous
    value is 0). ``growth_basis`` is ``full`` (every compared period complete on both sides),
    ``to_date`` (a compared period of the range is partial), ``partial_baseline`` (a compared
    previous period is partial) or ``none``; ``alignment`` says what was compared, e.g.
    "Jan–Nov vs Jan–Nov" or "Dec vs Dec, 3 aligned days".
    """

    grain: str
    start: date
    end: date
    periods: list[dict[str, Any]]
    totals: dict[str, int]
    days_with_data: int
    avg_daily: dict[str, Decimal | None]
    complete_periods: int
    previous_start: date
    previous_end: date
    compared_periods: int
    compared_totals: dict[str, int]
    previous_totals: dict[str, int]
    growth_pct: dict[str, Decimal | None]
    compared_days: int = 0
    growth_basis: str = "none"
    compared_starts: list[date] = field(default_factory=list)
    alignment: str = ""


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

    ``previous_year_totals`` sums the days of the previous year's months whose month and day
    this year has too (``compared_months`` months, ``compared_days`` days), so a year in progress
    or a first year starting mid-month compares like with like; ``yoy_pct`` is the growth of this
    year's aligned days over those (``metricsmith.growth_pct``: None when the previous value is 0
    or missing); ``growth_basis`` and ``alignment`` as in :class:`PeriodSummary`.
    """

    year: int
    months: list[MonthlyMetrics]
    totals: dict[str, int]
    previous_year_totals: dict[str, int]
    yoy_pct: dict[str, Decimal | None]
    compared_months: int = 0
    compared_days: int = 0
    growth_basis: str = "none"
    alignment: str = ""


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
    growth_basis: str | None = None
    growth_basis_days: int | None = None


@dataclass(frozen=True)
class RealtimeValue:
    metric: str
    labels: dict[str, str]
    value: Any
    as_of: datetime | None = None


_CUSTOM_COLUMNS = [f.name for f in CustomMetricValue.__dataclass_fields__.values()]
#: integer columns of the marts (whatever SQL type a contract gives them, e.g. numeric(38,0) sums)
_COUNTS = frozenset({*MEASURES, "days_with_data", *(f"{c.suffix}_basis_days" for g in grains.load()
                                                     for c in g.comparisons)})


# ---------------------------------------------------------------- grains and their columns
def grain_of(name: str | Grain) -> Grain:
    """The declared grain ``name`` (``quarter`` or ``quarterly``); a QueryError listing them otherwise."""
    if isinstance(name, Grain):
        return name
    if not isinstance(name, str):
        raise QueryError(f"grain must be a name, got {type(name).__name__}: use {', '.join(grains.names())}")
    try:
        return grains.get(name)
    except GrainError as exc:
        raise QueryError(str(exc)) from None


#: the basis of a growth figure (``<cmp>_basis`` of the marts, ``growth_basis`` of custom metrics)
BASES = ("full", "to_date", "partial_baseline", "none")
#: the marker a growth figure on each basis carries wherever a person reads it (none on ``full``)
BASIS_MARKS = {"full": "", "to_date": "ᵗᵈ", "partial_baseline": "ᵖᵇ", "none": "ⁿ"}
#: the line explaining the markers, printed under every output that shows one
BASIS_LEGEND = ("ᵗᵈ period to date vs the same days of the previous period; ᵖᵇ only the days the partial "
                "previous period has; ⁿ nothing to compare")


def basis_mark(basis: str | None) -> str:
    """The marker of a growth figure on ``basis`` ('' for ``full`` and for no basis given)."""
    return BASIS_MARKS.get(basis or "full", "?")


def plural(n: int, name: str) -> str:
    """``1 day``, ``7 days``: a count with its noun."""
    return f"{n} {name}{'' if n == 1 else 's'}"


#: ``<cmp>_basis_days`` and ``<cmp>_basis`` of one comparison (the marts' flag columns)
basis_columns = rollups.basis_columns


def breakdown_keys(grain: str | Grain) -> list[str]:
    """The keys of one element of ``grain``'s breakdown column, in order ([] without one);
    ``is_complete`` (all days of that part present) last."""
    return rollups.breakdown_keys(grain_of(grain))


def period_columns(grain: str | Grain) -> list[str]:
    """Every column of ``grain``'s mart, in mart order (the dbt contract): each comparison's growth
    columns followed by its basis columns (:func:`basis_columns`)."""
    return rollups.mart_columns(grain_of(grain))


def _num(value: Any) -> Any:
    """Numerics as Decimal (floats from a model that returns double precision included)."""
    if isinstance(value, float):
        return Decimal(repr(value))
    return value


def _count(value: Any) -> int | None:
    return None if value is None else int(value)


def _part(value: Any) -> Any:
    if value is None or isinstance(value, bool):
        return value
    return int(Decimal(str(value)))


def _breakdown(keys: list[str], elements: Any) -> list[list[Any]]:
    """A jsonb breakdown as stored in the cache: [start (date), days, measures (int)...,
    is_complete (bool)] per element."""
    return [[date.fromisoformat(str(e[keys[0]])), *(_part(e.get(k)) for k in keys[1:])]
            for e in (elements or [])]


def _stored_row(columns: list[str], keys: list[str], row: Any) -> list[Any]:
    """One mart row as stored in the cache: counts as int, other numerics as Decimal, the
    breakdown as lists."""
    out: list[Any] = []
    for column, value in zip(columns, row, strict=True):
        if keys and column == columns[-1]:
            out.append(_breakdown(keys, value))
        elif column in _COUNTS:
            out.append(_count(value))
        else:
            out.append(_num(value))
    return out


class _Rows:
    """The immutable form L1 keeps: one grain's rows as tuples, plus memoized typed views."""

    __slots__ = ("columns", "keys", "rows", "_views", "_lock")

    def __init__(self, columns: list[str], keys: list[str], stored: list[list[Any]]) -> None:
        self.columns = tuple(columns)
        self.keys = tuple(keys)
        if keys:
            stored = [[*r[:-1], tuple(tuple(b) for b in r[-1])] for r in stored]
        self.rows: tuple[tuple[Any, ...], ...] = tuple(tuple(r) for r in stored)
        self._views: dict[type, tuple[Any, ...]] = {}
        self._lock = threading.Lock()

    def dicts(self) -> list[dict[str, Any]]:
        """Fresh dicts (callers may change them), the breakdown as a list of dicts."""
        if not self.keys:
            return [dict(zip(self.columns, r, strict=True)) for r in self.rows]
        out = []
        for r in self.rows:
            d = dict(zip(self.columns, r, strict=True))
            d[self.columns[-1]] = [dict(zip(self.keys, b, strict=True)) for b in r[-1]]
            out.append(d)
        return out

    def typed(self, cls: type, part: type | None = None) -> tuple[Any, ...]:
        """The rows as ``cls`` instances (breakdown elements as ``part``), built once per entry;
        fields are filled by column name, so the mart's column order does not matter."""
        view = self._views.get(cls)
        if view is None:
            fields = [f.name for f in dataclasses.fields(cls) if f.name in self.columns]
            at = [self.columns.index(f) for f in fields]
            bd = self.columns[-1] if self.keys else None
            view = tuple(cls(**{f: (self._parts(part, r[i]) if f == bd and part is not None else r[i])
                                for f, i in zip(fields, at, strict=True)}) for r in self.rows)
            with self._lock:
                self._views[cls] = view
        return view


    def _parts(self, part: type, elements: tuple[Any, ...]) -> tuple[Any, ...]:
        wanted = {f.name for f in dataclasses.fields(part)}
        names = [k for k in self.keys if k in wanted]
        at = [self.keys.index(k) for k in names]
        return tuple(part(**{k: b[i] for k, i in zip(names, at, strict=True)}) for b in elements)


def _check_range(start: date, end: date) -> None:
    if not isinstance(start, date) or not isinstance(end, date):
        raise QueryError(f"start and end must be dates, got {type(start).__name__} and {type(end).__name__}")
    if start > end:
        raise QueryError(f"start {start} is after end {end}")
    if (end - start).days > 366 * 20:
        raise QueryError(f"range {start} .. {end} is longer than 20 years; narrow it")


def _check_year(year: Any) -> int:
    if not isinstance(year, int) or isinstance(year, bool) or not 1900 <= year <= 9999:
        raise QueryError(f"year must be an integer between 1900 and 9999, got {year!r}")
    return year


#: how many periods ``metricsmith query <grain>`` and the warmer read by default
RECENT_DAYS, RECENT_PERIODS = 30, 12


def recent_range(grain: str | Grain, today: date) -> tuple[date, date]:
    """The default range of a grain: the last 30 days, or the last 12 periods up to ``today``'s."""
    g = grain_of(grain)
    count = RECENT_DAYS if g.end_column is None else RECENT_PERIODS
    first = _periods_before(g, g.start_of(today), count - 1)[0]
    return first, today


def year_range(year: int) -> tuple[date, date]:
    """1 January .. 31 December of ``year``."""
    _check_year(year)
    return date(year, 1, 1), date(year, 12, 31)


def year_comparison(grain: str | Grain) -> Comparison | None:
    """``grain``'s comparison with the same period a year before (``yoy``), if it has one."""
    return rollups.year_comparison(grain_of(grain))


class MetricsQueryService:
    """Typed, cached reads of the metrics marts, custom metric values and realtime values."""

    def __init__(self, settings: Settings | None = None, *, cache: TwoTierCache | None = None,
                 schema: str | None = None, use_cache: bool = True, today: date | None = None) -> None:
        self.settings = settings or load_settings()
        default = marts_schema()
        self.schema = schema or default
        self.cache = cache if cache is not None else (get_cache() if use_cache else None)
        self._today = today
        self._pool: ConnectionPool[Any] | None = None
        self._pool_lock = threading.Lock()
        self._realtime_read: Any = None
        # keys of a non-default schema carry it, so two marts never share entries
        self._key_prefix = "" if self.schema == default else f"{self.schema}/"

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

    def _fetch(self, query: sql.Composable, params: Any, table: str) -> list[tuple[Any, ...]]:
        with self._connection_pool().connection() as conn:
            try:
                return conn.execute(query, params).fetchall()
            except psycopg.errors.UndefinedTable:
                hint = ("`metricsmith metrics run`" if table == "custom_metric_values"
                        else "`metricsmith rollups run` (or `metricsmith demo`)")
                raise NotAvailable(f"{self.schema}.{table} does not exist in this database: build it with {hint}") from None
            except psycopg.errors.UndefinedColumn as exc:
                raise NotAvailable(f"{self.schema}.{table} does not have the contracted columns: {exc}") from None
            except psycopg.errors.UndefinedFunction as exc:
                raise NotAvailable(f"{exc} (apply the migrations: `metricsmith db upgrade`)") from None

    def _cached(self, key: str, compute: Any, tier: Tier, tags: Any, load: Any) -> Any:
        """``load(compute())`` through the cache; ``load`` builds immutable typed rows (kept in L1)."""
        if self.cache is None:
            return load(compute())
        return self.cache.get_or_compute(
            self._key_prefix + key, compute, ttl=ttl_for(tier, self.cache.config), tags=tags, load=load
        )

    # ------------------------------------------------------------------ marts: the generic path
    def tier_for_range(self, end: date) -> Tier:
        return periods.tier_for_range(end, self.today())

    def period_columns(self, grain: str) -> list[str]:
        """Every column of ``grain``'s mart, in mart order."""
        return period_columns(grain)

    def _period_rows(self, grain: str | Grain, start: date, end: date) -> _Rows:
        g = grain_of(grain)
        _check_range(start, end)
        first, last = g.start_of(start), g.start_of(end)
        columns, keys = period_columns(g), breakdown_keys(g)
        query = sql.SQL("select {cols} from {tbl} where {key} between %s and %s order by {key}").format(
            cols=sql.SQL(", ").join(sql.Identifier(c) for c in columns),
            tbl=sql.Identifier(self.schema, g.model), key=sql.Identifier(g.start_column))

        def compute() -> list[list[Any]]:
            return [_stored_row(columns, keys, r) for r in self._fetch(query, (first, last), g.model)]

        def load(stored: list[list[Any]]) -> _Rows:
            return _Rows(columns, keys, stored)

        return self._cached(f"{g.adjective}:{first}:{last}", compute, self.tier_for_range(g.end_of(end)),
                            lambda: periods.range_tags(g, first, end), load)

    def get_period_metrics(self, grain: str, start: date, end: date) -> list[dict[str, Any]]:
        """The rows of ``grain``'s mart for every period overlapping ``start .. end`` (inclusive),
        each a dict of every column in mart order (:func:`period_columns`): dates as ``date``, counts
        as ``int``, averages and growth as ``Decimal`` (None where the mart has NULL), ``is_complete``
        as ``bool`` and the breakdown as a list of dicts (:func:`breakdown_keys`). ``grain`` is a
        declared grain (``day``, ``week``, ``month``, ``quarter``, or its adjective)."""
        return self._period_rows(grain, start, end).dicts()

    def get_period_summary(self, grain: str, start: date, end: date) -> PeriodSummary:
        """The periods of ``grain`` overlapping ``start .. end``, their totals, averages per day,
        complete-period count and growth over the same number of periods before (see
        :class:`PeriodSummary`)."""
        g = grain_of(grain)
        rows = self._period_rows(g, start, end)
        current = list(g.periods_between(start, end))
        previous = _periods_before(g, current[0], len(current))
        first, last = current[0], current[-1]

        def compute() -> list[Any]:
            found = self._fetch(_summary_sql(g, self.schema), {
                "first": first, "last": last, "cur": current, "prev": previous,
                "by_day": rollups.aligns_by_day_of_month(g, len(current) * g.count if g.unit == "month" else 0),
                "cur_end": [g.end_of(d) for d in current], "prev_end": [g.end_of(d) for d in previous]}, g.model)
            row = list(found[0])
            row[6] = [d.isoformat() for d in row[6]]
            return [_num(v) for v in row]

        def tags() -> list[str]:
            return [*periods.range_tags(g, previous[0], end)]

        stored = self._cached(f"{g.adjective}-summary-lfl:{first}:{last}", compute, self.tier_for_range(g.end_of(end)),
                              tags, tuple)
        return _summary(g, start, end, rows.dicts(), dict(zip(current, previous, strict=True)), previous, stored)

    # ------------------------------------------------------------------ marts: the typed views
    def get_daily_metrics(self, start: date, end: date) -> list[DailyMetrics]:
        """One row per spine day in ``start .. end`` (inclusive)."""
        return list(self._period_rows(grains.day(), start, end).typed(DailyMetrics))

    def get_weekly_metrics(self, start: date, end: date) -> list[WeeklyMetrics]:
        """ISO weeks (Monday start) overlapping ``start .. end``."""
        return list(self._period_rows("week", start, end).typed(WeeklyMetrics))

    def get_monthly_metrics(self, start: date, end: date) -> list[MonthlyMetrics]:
        """Calendar months overlapping ``start .. end``, with their weekly breakdown."""
        return list(self._period_rows("month", start, end).typed(MonthlyMetrics, WeekBreakdown))

    def get_quarterly_metrics(self, start: date, end: date) -> list[QuarterlyMetrics]:
        """Calendar quarters overlapping ``start .. end``, with their monthly breakdown."""
        return list(self._period_rows("quarter", start, end).typed(QuarterlyMetrics, MonthBreakdown))

    def get_weekly_metrics_summary(self, start: date, end: date) -> WeeklySummary:
        weeks = self.get_weekly_metrics(start, end)
        summary = self.get_period_summary("week", start, end)
        return WeeklySummary(start, end, weeks, summary.totals, summary.complete_periods)

    def get_monthly_metrics_summary(self, year: int) -> MonthlySummary:
        """The months of ``year`` plus year-over-year growth of the months both years have."""
        _check_year(year)
        months = self.get_monthly_metrics(date(year, 1, 1), date(year, 12, 31))
        summary = self.get_period_summary("month", date(year, 1, 1), date(year, 12, 31))
        return MonthlySummary(year, months, summary.totals, summary.previous_totals, summary.growth_pct,
                              summary.compared_periods, summary.compared_days, summary.growth_basis,
                              summary.alignment)

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


def _periods_before(g: Grain, first: date, count: int) -> list[date]:
    """The ``count`` period starts of ``g`` just before the period starting at ``first``."""
    starts = [first]
    for _ in range(count):
        starts.append(g.start_of(starts[-1] - timedelta(days=1)))
    return starts[:0:-1]


def _summary_sql(g: Grain, schema: str) -> sql.Composed:
    """Totals of the range, and of its paired periods and their counterparts like for like (the
    marts' rule: the whole periods when both are complete, unless aligned by day of month; else the
    days both have, by their offset in the period, from the day-level mart), with their growth, in
    one statement (growth by the database's ``metricsmith.growth_pct``)."""
    key = sql.Identifier(g.start_column)
    one_day = g.end_column is None  # a day row is one complete day
    days = sql.SQL("1") if one_day else sql.Identifier("days_with_data")
    complete = sql.SQL("true") if one_day else sql.Identifier("is_complete")
    day_key = sql.Identifier(grains.day().start_column)
    ids = {m: sql.Identifier(m) for m in ADDITIVE}
    c_ids = {m: sql.Identifier(f"c_{m}") for m in ADDITIVE}
    p_ids = {m: sql.Identifier(f"p_{m}") for m in ADDITIVE}
    comma = sql.SQL(", ")
    return sql.SQL(
        "with r as (select * from {tbl} where {key} between %(first)s and %(last)s), "
        "t as (select count(*) as n, coalesce(sum({days}), 0) as days, count(*) filter (where {complete}) "
        "as complete, {totals} from r), "
        "x as (select * from unnest(%(cur)s::date[], %(cur_end)s::date[], %(prev)s::date[], %(prev_end)s::date[]) "
        "as x(cur, cur_end, prev, prev_end)), "
        # a pair of complete periods compares the whole periods, unless aligned by day of month
        "w as (select x.*, coalesce({both_complete}, false) and not %(by_day)s as whole "
        "from x left join {tbl} as rc on rc.{key} = x.cur left join {tbl} as pc on pc.{key} = x.prev), "
        "ac as (select w.cur, count(*) as days, {cur_sums} from w join {daily} as c "
        "on c.{dk} between w.cur and w.cur_end where w.whole or exists (select from {daily} as p "
        "where p.{dk} = w.prev + (c.{dk} - w.cur) and p.{dk} <= w.prev_end) group by w.cur), "
        "ap as (select {prev_sums} from w join {daily} as p on p.{dk} between w.prev and w.prev_end "
        "where w.whole or exists (select from {daily} as c where c.{dk} = w.cur + (p.{dk} - w.prev) "
        "and c.{dk} <= w.cur_end)), "
        "m as (select count(*) as compared, coalesce(sum(days), 0) as aligned, "
        "coalesce(array_agg(cur order by cur), '{{}}') as starts, {sums} from ac cross join ap), "
        "k as (select coalesce(bool_and({rc_complete}), true) as cur_complete, "
        "coalesce(bool_and({pc_complete}), true) as prev_complete "
        "from (select cur, prev from w where cur in (select cur from ac)) as d join {tbl} as rc on rc.{key} = d.cur "
        "join {tbl} as pc on pc.{key} = d.prev) "
        "select t.days, t.complete, m.compared, m.aligned, k.cur_complete, k.prev_complete, m.starts, "
        "{out_totals}, {out_avgs}, {out_cur}, {out_prev}, {out_growth} "
        "from t cross join m cross join k"
    ).format(
        tbl=sql.Identifier(schema, g.model), key=key, days=days, complete=complete,
        both_complete=sql.SQL("false") if one_day else sql.SQL("rc.is_complete and pc.is_complete"),
        rc_complete=sql.SQL("true") if one_day else sql.Identifier("rc", "is_complete"),
        pc_complete=sql.SQL("true") if one_day else sql.Identifier("pc", "is_complete"),
        daily=sql.Identifier(schema, grains.day().model), dk=day_key,
        totals=comma.join(sql.SQL("sum({c}) as {c}").format(c=ids[m]) for m in ADDITIVE),
        cur_sums=comma.join(sql.SQL("sum(c.{c}) as {cc}").format(c=ids[m], cc=c_ids[m]) for m in ADDITIVE),
        prev_sums=comma.join(sql.SQL("sum(p.{c}) as {pc}").format(c=ids[m], pc=p_ids[m]) for m in ADDITIVE),
        sums=comma.join(sql.SQL("sum({cc}) as {cc}, max(ap.{pc}) as {pc}").format(cc=c_ids[m], pc=p_ids[m])
                        for m in ADDITIVE),
        out_totals=comma.join(sql.SQL("coalesce(t.{c}, 0)").format(c=ids[m]) for m in ADDITIVE),
        out_avgs=comma.join(sql.SQL("round(t.{c} / nullif(t.days, 0), 4)").format(c=ids[m]) for m in ADDITIVE),
        out_cur=comma.join(sql.SQL("coalesce(m.{c}, 0)").format(c=c_ids[m]) for m in ADDITIVE),
        out_prev=comma.join(sql.SQL("coalesce(m.{c}, 0)").format(c=p_ids[m]) for m in ADDITIVE),
        out_growth=comma.join(sql.SQL("metricsmith.growth_pct(m.{c}, m.{p})").format(c=c_ids[m], p=p_ids[m])
                              for m in ADDITIVE),
    )


def summary_basis(compared: int, cur_complete: bool, prev_complete: bool) -> str:
    """The basis of a summary's growth: ``none`` (nothing compared), ``partial_baseline`` (a
    compared previous period is partial), ``to_date`` (a compared period of the range is
    partial), ``full``."""
    if compared == 0:
        return "none"
    if not prev_complete:
        return "partial_baseline"
    return "full" if cur_complete else "to_date"


def _span_label(g: Grain, starts: list[date]) -> str:
    """The periods as runs: months as "Jan–Nov" (or "Jan, Mar–May"), quarters as "Q1–Q3", other
    grains by their start."""
    def name(d: date) -> str:
        if g.unit == "month" and g.count in (1, 3):
            return f"{d:%b}" if g.count == 1 else f"Q{(d.month - 1) // 3 + 1}"
        return d.isoformat()

    runs: list[list[date]] = []
    for d in starts:
        if runs and g.start_of(runs[-1][-1] + timedelta(days=g.days_in(runs[-1][-1]))) == d:
            runs[-1].append(d)
        else:
            runs.append([d])
    return ", ".join(name(r[0]) if len(r) == 1 else f"{name(r[0])}–{name(r[-1])}" for r in runs)


def alignment_label(g: Grain, starts: list[date], previous: list[date], aligned_days: int, full: bool) -> str:
    """What a summary compares, e.g. "Jan–Nov vs Jan–Nov" (complete periods) or "Dec vs Dec, 3
    aligned days"; ``previous`` maps each start to its counterpart (same order)."""
    if not starts:  # no pair of periods has an aligned day (e.g. 1-27 Nov against 28-30 Nov)
        return "no day both have"
    label = f"{_span_label(g, starts)} vs {_span_label(g, previous)}"
    return label if full else f"{label}, {aligned_days} aligned day{'' if aligned_days == 1 else 's'}"


def _summary(g: Grain, start: date, end: date, rows: list[dict[str, Any]], pairs: dict[date, date],
             previous: list[date], stored: tuple[Any, ...]) -> PeriodSummary:
    days, complete, compared, aligned = (int(v) for v in stored[:4])
    basis = summary_basis(compared, bool(stored[4]), bool(stored[5]))
    starts = [date.fromisoformat(str(d)) for d in stored[6]]
    n = len(ADDITIVE)
    blocks = [stored[7 + i * n: 7 + (i + 1) * n] for i in range(5)]
    totals, avgs, cur, prev, growth = ({m: v for m, v in zip(ADDITIVE, b, strict=True)} for b in blocks)
    return PeriodSummary(
        grain=g.name, start=start, end=end, periods=rows,
        totals={m: int(v) for m, v in totals.items()}, days_with_data=days, avg_daily=avgs,
        complete_periods=complete, previous_start=previous[0], previous_end=g.end_of(previous[-1]),
        compared_periods=compared, compared_totals={m: int(v) for m, v in cur.items()},
        previous_totals={m: int(v) for m, v in prev.items()}, growth_pct=growth,
        compared_days=aligned, growth_basis=basis, compared_starts=starts,
        alignment=alignment_label(g, starts, [pairs[d] for d in starts], aligned, basis == "full"),
    )


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
    "CustomMetricValue", "DailyMetrics", "MetricsQueryService", "MonthBreakdown", "MonthlyMetrics",
    "MonthlySummary", "NotAvailable", "PeriodSummary", "QuarterlyMetrics", "QueryError", "RealtimeValue",
    "WeekBreakdown", "WeeklyMetrics", "WeeklySummary", "breakdown_keys", "grain_of", "period_columns",
    "recent_range", "year_comparison", "year_range", "BASES", "BASIS_MARKS", "BASIS_LEGEND", "basis_mark",
    "basis_columns", "summary_basis", "alignment_label", "MEASURES", "GROWTH_MEASURES", "AVERAGES", "ADDITIVE",
]
