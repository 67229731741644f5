"""Rollups: run the incremental dbt models ``daily_metrics``, ``weekly_metrics`` and
``monthly_metrics`` (and what they need), backfill a date range, and read what changed.

Every run goes through dbt (in-process, :func:`metricsmith.dbt_runner.run_dbt`). Change
tracking lives in dbt-owned tables in the ``analytics`` schema: ``int_rollup_batch`` (this
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
from datetime import date, datetime
from typing import Any

from metricsmith import db, grains
from metricsmith.config import Settings, load_settings
from metricsmith.core import pglock
from metricsmith.dbt_runner import DbtRun, run_dbt
from metricsmith.errors import UserFacingError

#: every model the rollups need, up to the ledger that closes a run, and the rejected rows
ROLLUP_SELECTORS = ("+int_rollup_ledger", "stg_events_rejected")
#: the models that change with the time zone (all of them are rebuilt by --full-refresh)
MART_MODELS = ("daily_metrics", "weekly_metrics", "monthly_metrics")
SCHEMA = "analytics"


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

    def render(self) -> str:
        c = self.changed
        if not c.days:
            what = "no day changed"
        else:
            why = ", ".join(f"{n} {reason}" for reason, n in sorted(self.reasons.items()))
            what = (f"{len(c.days)} day(s) recomputed ({c.days[0]} .. {c.days[-1]}; {why}), "
                    + ", ".join(f"{len(c.of(g.name))} {g.name} row(s)" for g in grains.periods()) + " refreshed")
        return f"rollups {self.mode} ({self.timezone}) in {self.seconds:.1f} s: {what}"


def _timing(run: DbtRun) -> dict[str, float]:
    out: dict[str, float] = {}
    for r in run.results:
        node = getattr(r, "node", None)
        if node is not None:
            out[str(node.name)] = float(getattr(r, "execution_time", 0.0) or 0.0)
    return out


def _models_span(run: DbtRun) -> float:
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
        start, end = backfill
        if start > end:
            raise UserFacingError(f"backfill start {start} is after end {end}")
        vars_.update({"backfill_start": start.isoformat(), "backfill_end": end.isoformat()})
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
        run = run_dbt(args, vars=vars_, settings=settings)
    seconds = time.perf_counter() - started
    result = RollupRunResult(mode=mode, timezone=tz, seconds=seconds, dbt_seconds=_timing(run),
                             models_seconds=_models_span(run))
    with db.connect(settings, autocommit=True) as conn:
        days = [r[0] for r in conn.execute(f"select metric_date from {SCHEMA}.int_changed_days order by 1").fetchall()]
        result.reasons = {r[0]: int(r[1]) for r in conn.execute(
            f"select reason, count(*) from {SCHEMA}.int_changed_days group by reason").fetchall()}
        result.changed = ChangedPeriods.from_days(days)
        result.ledger = last_run(conn) or {}
    if result.mode == "incremental" and result.ledger.get("is_full_rebuild"):
        result.mode = "full rebuild (tables were missing or from an older version)"

    return result


_PCT = ("total_events", "active_users", "new_users", "revenue_cents")
_AVG = ("avg_daily_events", "avg_daily_active_users", "avg_daily_revenue_cents")
#: column types this version builds where older versions built others (bigint revenue sums,
#: numeric without precision): a table that differs is rebuilt by the next run
BUILT_TYPES: dict[str, dict[str, str]] = {
    "int_daily_user_activity": {"revenue_cents": "numeric(38,0)"},
    "daily_metrics": {"revenue_cents": "numeric(38,0)"},
    "weekly_metrics": {"revenue_cents": "numeric(38,0)", **dict.fromkeys(_AVG, "numeric(42,4)"),
                       **{f"{c}_wow_pct": "numeric(46,4)" for c in _PCT}},
    "monthly_metrics": {"revenue_cents": "numeric(38,0)", **dict.fromkeys(_AVG, "numeric(42,4)"),
                        **{f"{c}_{g}_pct": "numeric(46,4)" for c in _PCT for g in ("mom", "yoy")}},
}


def outdated_tables(settings: Settings | None = None) -> list[str]:
    """Rollup tables that exist with column types other than this version builds."""
    with db.connect(settings, autocommit=True) as conn:
        rows = conn.execute(
            "select c.relname, a.attname, format_type(a.atttypid, a.atttypmod) from pg_attribute a "
            "join pg_class c on c.oid = a.attrelid join pg_namespace n on n.oid = c.relnamespace "
            "where n.nspname = %s and c.relname = any(%s) and a.attnum > 0 and not a.attisdropped",
            (SCHEMA, list(BUILT_TYPES))).fetchall()
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


def backfill(start: date, end: date, *, settings: Settings | None = None) -> RollupRunResult:
    """Recompute days ``start .. end`` (inclusive) and the weeks and months above them, in one
    set-based pass per model (plus whatever arrived since the last run)."""
    return run_rollups(backfill=(start, end), settings=settings)


def last_run(conn: Any) -> dict[str, Any] | None:
    """The newest row of the ledger, or None before the first run."""
    if not _table_exists(conn, "int_rollup_ledger"):
        return None
    cur = conn.execute(f"select * from {SCHEMA}.int_rollup_ledger order by finished_at desc limit 1")
    row = cur.fetchone()
    if row is None:
        return None
    return {d.name: v for d, v in zip(cur.description, row, strict=True)}


def ledger(conn: Any, limit: int = 10) -> list[dict[str, Any]]:
    if not _table_exists(conn, "int_rollup_ledger"):
        return []
    cur = conn.execute(f"select * from {SCHEMA}.int_rollup_ledger order by finished_at desc limit %s", (limit,))
    names = [d.name for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def _table_exists(conn: Any, name: str) -> bool:
    row = conn.execute("select to_regclass(%s) is not null", (f"{SCHEMA}.{name}",)).fetchone()
    return bool(row and row[0])


def latest_weeks(conn: Any, n: int = 4) -> list[dict[str, Any]]:
    return _latest(conn, "weekly_metrics", "week_start", n)


def latest_months(conn: Any, n: int = 3) -> list[dict[str, Any]]:
    return _latest(conn, "monthly_metrics", "month_start", n)


def _latest(conn: Any, table: str, key: str, n: int) -> list[dict[str, Any]]:
    if not _table_exists(conn, table):
        return []
    cur = conn.execute(f"select * from {SCHEMA}.{table} order by {key} desc limit %s", (n,))
    names = [d.name for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in reversed(cur.fetchall())]


def _pct(value: Any) -> str:
    return "    n/a" if value is None else f"{float(value):+7.1f}%"


def render_periods(weeks: list[dict[str, Any]], months: list[dict[str, Any]]) -> str:
    """A compact text table of weeks and months with their growth."""
    lines = ["week        days  events     users   new     revenue     events/users/revenue WoW"]
    for w in weeks:
        lines.append(
            f"{w['week_start']}  {w['days_with_data']}{' ' if w['is_complete'] else '*'}  "
            f"{w['total_events']:>9,} {w['active_users']:>8,} {w['new_users']:>6,} {w['revenue_cents'] / 100:>11,.2f}   "
            f"{_pct(w['total_events_wow_pct'])} {_pct(w['active_users_wow_pct'])} {_pct(w['revenue_cents_wow_pct'])}")
    lines.append("month       days  events     users   new     revenue     events/users MoM  users/revenue YoY")
    for m in months:
        lines.append(
            f"{m['month_start']}  {m['days_with_data']:>2}{' ' if m['is_complete'] else '*'} "
            f"{m['total_events']:>9,} {m['active_users']:>8,} {m['new_users']:>6,} {m['revenue_cents'] / 100:>11,.2f}   "
            f"{_pct(m['total_events_mom_pct'])} {_pct(m['active_users_mom_pct'])}  "
            f"{_pct(m['active_users_yoy_pct'])} {_pct(m['revenue_cents_yoy_pct'])}")
    lines.append("(* = period not complete; revenue in currency units)")
    return "\n".join(lines)


def parse_day(text: str) -> date:
    try:
        return datetime.strptime(text, "%Y-%m-%d").date()
    except ValueError:
        raise UserFacingError(f"not a date (YYYY-MM-DD): {text!r}") from None


def demo_step() -> None:
    """`make demo`: run the rollups incrementally (the first time builds everything; a second
    demo only reads what arrived since) and print the latest weeks and months with growth."""
    result = run_rollups(quiet=True)
    print(result.render())
    with db.connect(autocommit=True) as conn:
        print(render_periods(latest_weeks(conn, 4), latest_months(conn, 3)))
