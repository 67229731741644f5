"""Test helper for the cache/query tests: the four marts' tables (their dbt contract) in a
private schema, filled with deterministic rows, plus the plain-Python expectations."""

from __future__ import annotations

import random
import secrets
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

MEASURES = ("total_events", "active_users", "new_users", "active_organizations", "sessions",
            "signups", "purchases", "revenue_cents")

DDL = """
create table {s}.daily_metrics (metric_date date primary key, total_events bigint, active_users bigint,
  new_users bigint, active_organizations bigint, sessions bigint, signups bigint, purchases bigint,
  revenue_cents bigint);
create table {s}.weekly_metrics (week_start date primary key, week_end date, days_with_data int,
  is_complete boolean, total_events bigint, active_users bigint, new_users bigint, active_organizations bigint,
  sessions bigint, signups bigint, purchases bigint, revenue_cents bigint, avg_daily_events numeric,
  avg_daily_active_users numeric, avg_daily_revenue_cents numeric, total_events_wow_pct numeric,
  active_users_wow_pct numeric, new_users_wow_pct numeric, revenue_cents_wow_pct numeric,
  wow_basis_days integer, wow_basis text);
create table {s}.monthly_metrics (month_start date primary key, month_end date, days_with_data int,
  is_complete boolean, total_events bigint, active_users bigint, new_users bigint, active_organizations bigint,
  sessions bigint, signups bigint, purchases bigint, revenue_cents bigint, avg_daily_events numeric,
  avg_daily_active_users numeric, avg_daily_revenue_cents numeric, total_events_mom_pct numeric,
  active_users_mom_pct numeric, new_users_mom_pct numeric, revenue_cents_mom_pct numeric,
  mom_basis_days integer, mom_basis text,
  total_events_yoy_pct numeric, active_users_yoy_pct numeric, new_users_yoy_pct numeric,
  revenue_cents_yoy_pct numeric, yoy_basis_days integer, yoy_basis text, weekly_breakdown jsonb);
create table {s}.quarterly_metrics (quarter_start date primary key, quarter_end date, days_with_data int,
  is_complete boolean, total_events bigint, active_users bigint, new_users bigint, active_organizations bigint,
  sessions bigint, signups bigint, purchases bigint, revenue_cents numeric(38,0), avg_daily_events numeric,
  avg_daily_active_users numeric, avg_daily_revenue_cents numeric, total_events_qoq_pct numeric,
  active_users_qoq_pct numeric, new_users_qoq_pct numeric, revenue_cents_qoq_pct numeric,
  qoq_basis_days integer, qoq_basis text,
  total_events_yoy_pct numeric, active_users_yoy_pct numeric, new_users_yoy_pct numeric,
  revenue_cents_yoy_pct numeric, yoy_basis_days integer, yoy_basis text, monthly_breakdown jsonb);
"""


def pct(cur: Any, prev: Any) -> Decimal | None:
    if prev is None or prev == 0:
        return None
    return (Decimal(cur) - Decimal(prev)) * 100 / Decimal(prev)


def month_add(d: date, n: int) -> date:
    i = d.year * 12 + d.month - 1 + n
    return date(i // 12, i % 12 + 1, 1)


def quarter_start(d: date) -> date:
    return date(d.year, (d.month - 1) // 3 * 3 + 1, 1)


GROWTH = ("total_events", "active_users", "new_users", "revenue_cents")


def like_for_like(daily: dict[date, dict[str, Any]], cur: tuple[date, date], prev: tuple[date, date] | None,
                  prev_exists: bool) -> dict[str, Any]:
    """Growth of the days both periods have (aligned by offset in the period) and the basis flags,
    for ``cur`` and ``prev`` as (first, last) day."""
    if prev is None or not prev_exists:
        return {"basis_days": None, "basis": "none", **{m: None for m in GROWTH}}
    (cs, ce), (ps, pe) = cur, prev
    offsets = [(d - cs).days for d in daily if cs <= d <= ce]
    pairs = [(cs + timedelta(days=k), ps + timedelta(days=k)) for k in offsets
             if ps + timedelta(days=k) <= pe and ps + timedelta(days=k) in daily]
    cur_full = len(offsets) == (ce - cs).days + 1
    prev_full = len([d for d in daily if ps <= d <= pe]) == (pe - ps).days + 1
    basis = ("none" if not pairs else "partial_baseline" if not prev_full else "full" if cur_full else "to_date")
    return {"basis_days": len(pairs), "basis": basis,
            **{m: pct(sum(daily[c][m] for c, _ in pairs), sum(daily[p][m] for _, p in pairs)) for m in GROWTH}}


def _flags(row: dict[str, Any], suffix: str, lfl: dict[str, Any]) -> None:
    for m in GROWTH:
        row[f"{m}_{suffix}_pct"] = lfl[m]
    row[f"{suffix}_basis_days"] = lfl["basis_days"]
    row[f"{suffix}_basis"] = lfl["basis"]


def month_end(d: date, n: int = 1) -> date:
    return month_add(d, n) - timedelta(days=1)


class Marts:
    """Rows kept in Python (the expectation) and written to Postgres (what the service reads)."""

    def __init__(self, conn: psycopg.Connection[Any], first: date, last: date, seed: int = 3) -> None:
        self.conn = conn
        self.schema = f"cachetest_{secrets.token_hex(3)}"
        conn.execute(f"create schema {self.schema}")
        conn.execute(DDL.format(s=self.schema))
        rng = random.Random(seed)
        self.daily: dict[date, dict[str, Any]] = {}
        day = first
        while day <= last:
            ev = rng.randint(0, 500)
            self.daily[day] = {"metric_date": day, "total_events": ev, "active_users": ev // 3,
                               "new_users": ev // 10, "active_organizations": ev // 50, "sessions": ev // 2,
                               "signups": ev // 10, "purchases": ev // 20, "revenue_cents": ev * 137}
            day += timedelta(days=1)
        self.rebuild()

    def rebuild(self) -> None:
        """Recompute weeks and months from the days (additive sums; good enough for a cache test)."""
        days = sorted(self.daily)
        weeks: dict[date, list[date]] = {}
        months: dict[date, list[date]] = {}
        for d in days:
            weeks.setdefault(d - timedelta(days=d.weekday()), []).append(d)
            months.setdefault(d.replace(day=1), []).append(d)
        self.weekly = {}
        for ws in sorted(weeks):
            row = self._agg(weeks[ws])
            pw = ws - timedelta(days=7)
            row.update(week_start=ws, week_end=ws + timedelta(days=6), days_with_data=len(weeks[ws]),
                       is_complete=len(weeks[ws]) == 7)
            _flags(row, "wow", like_for_like(self.daily, (ws, ws + timedelta(days=6)), (pw, pw + timedelta(days=6)),
                                             pw in self.weekly))
            self.weekly[ws] = row
        self.monthly = {}
        for ms in sorted(months):
            row = self._agg(months[ms])
            ndays = (month_add(ms, 1) - ms).days
            row.update(month_start=ms, month_end=month_add(ms, 1) - timedelta(days=1),
                       days_with_data=len(months[ms]), is_complete=len(months[ms]) == ndays)
            for suffix, back in (("mom", -1), ("yoy", -12)):
                pm = month_add(ms, back)
                _flags(row, suffix, like_for_like(self.daily, (ms, month_end(ms)), (pm, month_end(pm)),
                                                  pm in self.monthly))
            bd = {}
            for d in months[ms]:
                w = d - timedelta(days=d.weekday())
                e = bd.setdefault(w, {"week_start": w.isoformat(), "days_in_month": 0, "total_events": 0,
                                      "active_users": 0, "revenue_cents": 0})
                e["days_in_month"] += 1
                for m in ("total_events", "active_users", "revenue_cents"):
                    e[m] += self.daily[d][m]
            for w, e in bd.items():
                e["is_complete"] = e["days_in_month"] == sum(
                    1 for k in range(7) if (w + timedelta(days=k)).replace(day=1) == ms)
            row["weekly_breakdown"] = [bd[w] for w in sorted(bd)]
            self.monthly[ms] = row
        self.quarterly = {}
        for qs in sorted({quarter_start(m) for m in months}):
            qdays = [d for m in months if quarter_start(m) == qs for d in months[m]]
            row = self._agg(qdays)
            ndays = (month_add(qs, 3) - qs).days
            row.update(quarter_start=qs, quarter_end=month_add(qs, 3) - timedelta(days=1),
                       days_with_data=len(qdays), is_complete=len(qdays) == ndays)
            for suffix, back in (("qoq", -3), ("yoy", -12)):
                pq = month_add(qs, back)
                _flags(row, suffix, like_for_like(self.daily, (qs, month_end(qs, 3)), (pq, month_end(pq, 3)),
                                                  pq in self.quarterly))
            row["monthly_breakdown"] = [
                {"month_start": m.isoformat(), "days_in_quarter": len(months[m]),
                 **{k: sum(self.daily[d][k] for d in months[m]) for k in ("total_events", "active_users", "revenue_cents")},
                 "is_complete": len(months[m]) == (month_add(m, 1) - m).days}
                for m in sorted(months) if quarter_start(m) == qs]
            self.quarterly[qs] = row
        self.write()

    def _agg(self, days: list[date]) -> dict[str, Any]:
        row: dict[str, Any] = {m: sum(self.daily[d][m] for d in days) for m in MEASURES}
        n = Decimal(len(days))
        row["avg_daily_events"] = Decimal(row["total_events"]) / n
        row["avg_daily_active_users"] = Decimal(row["active_users"]) / n
        row["avg_daily_revenue_cents"] = Decimal(row["revenue_cents"]) / n
        return row

    def write(self) -> None:
        s = self.schema
        with self.conn.transaction():
            self.conn.execute(f"truncate {s}.daily_metrics, {s}.weekly_metrics, {s}.monthly_metrics, "
                              f"{s}.quarterly_metrics")
            for table, rows in (("daily_metrics", self.daily), ("weekly_metrics", self.weekly),
                                ("monthly_metrics", self.monthly), ("quarterly_metrics", self.quarterly)):
                cols = list(next(iter(rows.values())).keys())
                with self.conn.cursor().copy(f"copy {s}.{table} ({', '.join(cols)}) from stdin") as cp:
                    for row in rows.values():
                        cp.write_row([Jsonb(v) if isinstance(v, list) else v for v in row.values()])

    def rows(self, grain: str) -> dict[date, dict[str, Any]]:
        """The expected rows of ``grain`` (day, week, month, quarter) by period start."""
        return {"day": self.daily, "week": self.weekly, "month": self.monthly, "quarter": self.quarterly}[grain]

    def set_day(self, day: date, **values: int) -> None:
        self.daily[day].update(values)
        self.rebuild()

    def drop(self) -> None:
        self.conn.execute(f"drop schema if exists {self.schema} cascade")
