"""Rollups: run the incremental dbt marts of every declared grain (``daily_metrics``,
``weekly_metrics``, ``monthly_metrics``, ``quarterly_metrics``: :mod:`metricsmith.grains`) and
what they need, backfill a date range, and read what changed.

Every run goes through dbt (in-process, :func:`metricsmith.core.dbt.invoke`). Change tracking
lives in dbt-owned tables in the marts' schema (:func:`metricsmith.core.schema.marts_schema`):
``int_rollup_batch`` (this
run's window of ``raw.events.inserted_at``, the server's insertion time, whatever the client's
``received_at`` says), ``int_changed_days`` (days recomputed) and the append-only
``int_rollup_ledger`` (one row per finished run; the newest ``high_watermark`` is where the
next run starts). See docs/rollups.md.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from psycopg import sql

from metricsmith import db, grains
from metricsmith.config import Settings, load_settings
from metricsmith.core import pglock
from metricsmith.core.dbt import DbtOutcome, invoke
from metricsmith.core.schema import marts_schema
from metricsmith.errors import UserFacingError
from metricsmith.grains import Comparison, Grain

#: every model the rollups need, up to the ledger that closes a run, and the rejected rows
ROLLUP_SELECTORS = ("+int_rollup_ledger", "stg_events_rejected")
#: the models that change with the time zone (all of them are rebuilt by --full-refresh)
MART_MODELS = tuple(g.model for g in grains.load())

#: the measures of every mart row, in contract order
MEASURES = (
    "total_events", "active_users", "new_users", "active_organizations", "sessions",
    "signups", "purchases", "revenue_cents",
)
#: the measures with growth columns (``<measure>_<suffix>_pct`` per comparison of a grain)
GROWTH_MEASURES = ("total_events", "active_users", "new_users", "revenue_cents")
#: the per-day averages of the marts longer than a day
AVERAGES = ("avg_daily_events", "avg_daily_active_users", "avg_daily_revenue_cents")
#: what each element of a ``<finer adjective>_breakdown`` column holds besides its start and day count
BREAKDOWN_MEASURES = ("total_events", "active_users", "revenue_cents")


def basis_columns(comparison: Comparison) -> list[str]:
    """``<cmp>_basis_days`` and ``<cmp>_basis`` of one comparison (the marts' flag columns:
    how many aligned days its growth compares, and on which basis)."""
    return [f"{comparison.suffix}_basis_days", f"{comparison.suffix}_basis"]


def mart_columns(g: Grain) -> list[str]:
    """Every column of ``g``'s mart, in contract order: the period, the measures, the averages,
    for each comparison its growth columns then its basis columns, the breakdown."""
    if g.end_column is None:
        return [g.start_column, *MEASURES]
    growth = [col for c in g.comparisons for col in (*(f"{m}_{c.suffix}_pct" for m in GROWTH_MEASURES),
                                                     *basis_columns(c))]
    tail = [] if g.breakdown_column is None else [g.breakdown_column]
    return [g.start_column, g.end_column, "days_with_data", "is_complete", *MEASURES, *AVERAGES, *growth, *tail]


def breakdown_keys(g: Grain) -> list[str]:
    """The keys of one element of ``g``'s breakdown column, in order ([] without one);
    ``is_complete`` (all days of that part present) last."""
    if g.breakdown is None:
        return []
    return [grains.get(g.breakdown).start_column, f"days_in_{g.name}", *BREAKDOWN_MEASURES, "is_complete"]


def aligns_by_day_of_month(g: Grain, months: int) -> bool:
    """Whether ``g``'s periods compared with those ``months`` earlier align by day of month even
    when both are complete (a month against the month a year earlier: 29 February has no
    partner); the marts' macro period_metrics applies the same rule."""
    return g.unit == "month" and g.count == 1 and months > 0 and months % 12 == 0


def year_comparison(g: Grain) -> Comparison | None:
    """``g``'s comparison with the same period a year before (``yoy``), if it has one."""
    return next((c for c in g.comparisons if c.months == 12), None)


class ChangedPeriods:
    """The periods whose rows were recomputed by the last run (for cache invalidation).

    ``days`` are the recomputed days; ``by_grain`` maps every grain longer than a day
    (:func:`metricsmith.grains.periods`) to the starts of its recomputed periods: those holding
    a recomputed day and those whose growth columns compare with one (the next period, the same
    period a year later ...). ``ChangedPeriods(days, starts_1, starts_2, ...)`` takes the starts
    positionally, one tuple per grain in declaration order; ``changed.<grain>s`` (e.g.
    ``changed.quarters``) reads one grain's starts.
    """

    __slots__ = ("days", "by_grain")

    def __init__(self, days: Iterable[date] = (), *starts: Iterable[date],
                 by_grain: Mapping[str, Iterable[date]] | None = None) -> None:
        declared = grains.periods()
        if len(starts) > len(declared):
            raise TypeError(f"ChangedPeriods takes one tuple of starts per grain ({len(declared)}), got {len(starts)}")
        merged: dict[str, set[date]] = {g.name: set() for g in declared}
        for g, values in zip(declared, starts, strict=False):
            merged[g.name].update(values)
        for name, values in (by_grain or {}).items():
            merged[grains.get(name).name].update(values)
        self.days: tuple[date, ...] = tuple(sorted(set(days)))
        self.by_grain: dict[str, tuple[date, ...]] = {n: tuple(sorted(v)) for n, v in merged.items()}

    @classmethod
    def from_days(cls, days: Iterable[date]) -> ChangedPeriods:
        days = sorted(set(days))
        by_grain: dict[str, set[date]] = {}
        for g in grains.periods():
            touched = {g.start_of(d) for d in days}
            # growth columns of the periods comparing with a touched one change too
            grown = {start for p in touched for start in _compared_with(g, p)}
            by_grain[g.name] = touched | grown
        return cls(days, by_grain=by_grain)

    def of(self, grain: str) -> tuple[date, ...]:
        """Starts of the recomputed periods of ``grain`` (``days`` for the day grain)."""
        g = grains.get(grain)
        return self.days if g.end_column is None else self.by_grain.get(g.name, ())

    def __getattr__(self, name: str) -> tuple[date, ...]:
        if name.endswith("s") and not name.startswith("_"):
            try:
                return self.of(name[:-1])
            except grains.GrainError:
                pass
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, ChangedPeriods) and self.days == other.days
                and self.by_grain == other.by_grain)

    def __hash__(self) -> int:
        return hash((self.days, tuple(sorted(self.by_grain.items()))))

    def __repr__(self) -> str:
        return f"ChangedPeriods(days={len(self.days)}, " + ", ".join(
            f"{name}={len(v)}" for name, v in self.by_grain.items()) + ")"


def _compared_with(g: grains.Grain, period_start: date) -> set[date]:
    """Starts of the periods of ``g`` whose growth compares with the one at ``period_start``."""
    out = set()
    for c in g.comparisons:
        # the period whose baseline is period_start: walk forward until baselines pass it
        candidate = period_start
        while c.baseline(candidate) < period_start:
            candidate = g.next_start(candidate)
        if c.baseline(candidate) == period_start:
            out.add(candidate)
    return out


@dataclass
class RollupRunResult:
    mode: str  # incremental | full-refresh | backfill
    timezone: str
    seconds: float
    dbt_seconds: dict[str, float] = field(default_factory=dict)
    changed: ChangedPeriods = field(default_factory=ChangedPeriods)
    ledger: dict[str, Any] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)
    #: from the first model's start to the last model's end (dbt start-up and parse excluded)
    models_seconds: float = 0.0


def _timing(run: DbtOutcome) -> dict[str, float]:
    out: dict[str, float] = {}
    for r in run.results:
        node = getattr(r, "node", None)
        if node is not None:
            out[str(node.name)] = float(getattr(r, "execution_time", 0.0) or 0.0)
    return out


def _models_span(run: DbtOutcome) -> float:
    starts, ends = [], []
    for r in run.results:
        for t in getattr(r, "timing", None) or []:
            if getattr(t, "started_at", None) and getattr(t, "completed_at", None):
                starts.append(t.started_at)
                ends.append(t.completed_at)
    return (max(ends) - min(starts)).total_seconds() if starts else 0.0


def run_rollups(
    *,
    full_refresh: bool = False,
    backfill: tuple[date, date] | None = None,
    timezone: str | None = None,
    extra_vars: dict[str, Any] | None = None,
    test: bool = False,
    quiet: bool = False,
    lock_wait_seconds: float = 600.0,
    settings: Settings | None = None,
) -> RollupRunResult:
    """Run the rollups once: incremental by default, ``full_refresh`` rebuilds everything,
    ``backfill=(start, end)`` additionally recomputes those days and everything above them.
    ``test`` runs ``dbt build`` (data tests and unit tests too) instead of ``dbt run``."""
    settings = settings or load_settings()
    tz = timezone or settings.timezone
    vars_: dict[str, Any] = {"metrics_timezone": tz, **(extra_vars or {})}
    mode = "full-refresh" if full_refresh else "incremental"
    if backfill is not None:
        vars_.update(backfill_vars(*backfill))
        mode = "backfill" if not full_refresh else mode
    if not full_refresh and outdated_tables(settings):
        # tables built by an older metricsmith with other column types: an incremental run
        # would stop with "schema changed" (on_schema_change: fail); rebuild them once
        full_refresh = True
        mode = "full rebuild (tables were missing or from an older version)"
    args = ["build" if test else "run", "--select", *ROLLUP_SELECTORS]
    if quiet:
        args.append("--quiet")
    if test:
        # unit tests are checked at build time; data tests run on the fresh tables
        args += ["--resource-type", "model", "--resource-type", "test", "--resource-type", "unit_test"]
    if full_refresh:
        args.append("--full-refresh")
    started = time.perf_counter()
    with _rollup_lock(settings, lock_wait_seconds):
        run = invoke(args, vars=vars_, settings=settings).raise_for_status()
    seconds = time.perf_counter() - started
    result = RollupRunResult(mode=mode, timezone=tz, seconds=seconds, dbt_seconds=_timing(run),
                             models_seconds=_models_span(run))
    changed_days = sql.Identifier(marts_schema(), "int_changed_days")
    with db.connect(settings, autocommit=True) as conn:
        days = [r[0] for r in conn.execute(
            sql.SQL("select metric_date from {} order by 1").format(changed_days)).fetchall()]
        result.reasons = {r[0]: int(r[1]) for r in conn.execute(
            sql.SQL("select reason, count(*) from {} group by reason").format(changed_days)).fetchall()}
        result.changed = ChangedPeriods.from_days(days)
        result.ledger = last_run(conn) or {}
    if result.mode == "incremental" and result.ledger.get("is_full_rebuild"):
        result.mode = "full rebuild (tables were missing or from an older version)"

    return result


#: what dbt builds sums, averages, growth and the basis flags as (older versions built bigint
#: sums, numeric without precision, no basis columns): a table that differs is rebuilt by the next run
SUM_TYPE, AVERAGE_TYPE, GROWTH_TYPE = "numeric(38,0)", "numeric(42,4)", "numeric(46,4)"
BASIS_DAYS_TYPE, BASIS_TYPE = "integer", "text"


def _built_types(g: Grain) -> dict[str, str]:
    types = {"revenue_cents": SUM_TYPE}
    if g.end_column is not None:
        types |= dict.fromkeys(AVERAGES, AVERAGE_TYPE)
        types |= {f"{m}_{c.suffix}_pct": GROWTH_TYPE for c in g.comparisons for m in GROWTH_MEASURES}
        for c in g.comparisons:
            types |= dict(zip(basis_columns(c), (BASIS_DAYS_TYPE, BASIS_TYPE), strict=True))
    return types


#: column types this version builds, by table
BUILT_TYPES: dict[str, dict[str, str]] = {
    "int_daily_user_activity": {"revenue_cents": SUM_TYPE}, **{g.model: _built_types(g) for g in grains.load()},
}


def outdated_tables(settings: Settings | None = None) -> list[str]:
    """Rollup tables that exist with column types other than this version builds."""
    with db.connect(settings, autocommit=True) as conn:
        rows = conn.execute(
            "select c.relname, a.attname, format_type(a.atttypid, a.atttypmod) from pg_attribute a "
            "join pg_class c on c.oid = a.attrelid join pg_namespace n on n.oid = c.relnamespace "
            "where n.nspname = %s and c.relname = any(%s) and a.attnum > 0 and not a.attisdropped",
            (marts_schema(), list(BUILT_TYPES))).fetchall()
    found: dict[str, dict[str, str]] = {}
    for table, column, type_ in rows:
        found.setdefault(table, {})[column] = type_
    return sorted(t for t, cols in found.items()
                  if any(cols.get(c) != expected for c, expected in BUILT_TYPES[t].items()))


#: pg advisory lock key held for the duration of a rollup run (:data:`metricsmith.core.pglock.ROLLUPS`)
ROLLUP_LOCK_KEY = pglock.ROLLUPS.key


@contextlib.contextmanager
def _rollup_lock(settings: Settings, wait_seconds: float) -> Iterator[None]:
    """One rollup run at a time per database (CLI, flows and Python callers alike)."""
    with db.connect(settings, autocommit=True) as conn, pglock.ROLLUPS.held(conn, wait_seconds):
        yield


def backfill_vars(start: date, end: date) -> dict[str, str]:
    """The dbt vars of a backfill of the days ``start .. end`` (int_changed_days reads them), on
    either engine: the one check of a backfill's range."""
    if start > end:
        raise UserFacingError(f"backfill start {start} is after end {end}")
    return {"backfill_start": start.isoformat(), "backfill_end": end.isoformat()}


def backfill(start: date, end: date, *, settings: Settings | None = None) -> RollupRunResult:
    """Recompute days ``start .. end`` (inclusive) and the periods of every grain above them, in one
    set-based pass per model (plus whatever arrived since the last run)."""
    return run_rollups(backfill=(start, end), settings=settings)


def last_run(conn: Any) -> dict[str, Any] | None:
    """The newest row of the ledger, or None before the first run."""
    rows = ledger(conn, 1)
    return rows[0] if rows else None


def ledger(conn: Any, limit: int = 10) -> list[dict[str, Any]]:
    """The newest ``limit`` rows of the ledger (newest first); [] before the first run."""
    if not _table_exists(conn, "int_rollup_ledger"):
        return []
    cur = conn.execute(sql.SQL("select * from {} order by finished_at desc limit %s").format(
        sql.Identifier(marts_schema(), "int_rollup_ledger")), (limit,))
    names = [d.name for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def _table_exists(conn: Any, name: str) -> bool:
    row = conn.execute("select to_regclass(format('%%I.%%I', %s::text, %s::text)) is not null",
                       (marts_schema(), name)).fetchone()
    return bool(row and row[0])


def latest_periods(conn: Any, grain: str, n: int = 3) -> list[dict[str, Any]]:
    """The last ``n`` rows of ``grain``'s mart, oldest first ([] before it is built)."""
    g = grains.get(grain)
    if not _table_exists(conn, g.model):
        return []
    cur = conn.execute(sql.SQL("select * from {} order by {} desc limit %s").format(
        sql.Identifier(marts_schema(), g.model), sql.Identifier(g.start_column)), (n,))
    names = [d.name for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in reversed(cur.fetchall())]
