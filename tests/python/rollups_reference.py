"""An independent plain-Python computation of daily / weekly / monthly / quarterly metrics,
used by tests/python/test_rollups*.py to check the dbt models, plus helpers to load events."""

from __future__ import annotations

import io
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from zoneinfo import ZoneInfo

from metricsmith import event_rules
from metricsmith.event_rules import EventRules

Q = Decimal("0.0001")
MEASURES = ("total_events", "active_users", "new_users", "active_organizations", "sessions",
            "signups", "purchases", "revenue_cents")
GROWTH = ("total_events", "active_users", "new_users", "revenue_cents")


@dataclass
class Event:
    occurred_at: datetime | None
    received_at: datetime
    event_type: str
    user_id: str | None = None
    organization_id: str | None = None
    session_id: str | None = None
    revenue_cents: int = 0
    event_id: str = field(default_factory=lambda: str(uuid.uuid4()))


def is_valid(e: Event, rules: EventRules | None = None) -> bool:
    """The valid-event rule with the project's declared limits (dbt_project.yml event_rules)."""
    rules = rules or event_rules.load()
    return (e.occurred_at is not None and e.occurred_at >= rules.min_occurred_at
            and e.occurred_at <= e.received_at + rules.max_future
            and e.occurred_at <= datetime.now(UTC) + rules.max_future
            and e.event_type.strip() != "" and 0 <= e.revenue_cents <= rules.max_revenue_cents)


def insert_events(conn: Any, events: list[Event]) -> int:
    """COPY events into raw.events, skipping event_ids already there (like the loader)."""
    conn.execute("create temp table if not exists _rollup_batch (like raw.events including defaults)")
    conn.execute("truncate _rollup_batch")
    buf = io.StringIO()
    with conn.cursor() as cur:
        with cur.copy("copy _rollup_batch (event_id, occurred_at, received_at, event_type, user_id, "
                      "organization_id, session_id, revenue_cents) from stdin") as copy:
            for e in events:
                copy.write_row((e.event_id, e.occurred_at, e.received_at, e.event_type, e.user_id,
                                e.organization_id, e.session_id, e.revenue_cents))
        # named columns, like the loaders: inserted_at is assigned by the server
        cur.execute("insert into raw.events (event_id, occurred_at, received_at, event_type, user_id, organization_id, "
                    "session_id, revenue_cents, properties) select event_id, occurred_at, received_at, event_type, "
                    "user_id, organization_id, session_id, revenue_cents, properties from _rollup_batch "
                    "on conflict (event_id) do nothing")
        inserted = cur.rowcount
    del buf
    return int(inserted)


def _q(x: Decimal) -> Decimal:
    return x.quantize(Q, rounding=ROUND_HALF_UP)


def _growth(cur: int, prev_row: dict[str, Any] | None, col: str) -> Decimal | None:
    if prev_row is None or prev_row[col] == 0:
        return None
    prev = prev_row[col]
    return _q(Decimal(100) * (Decimal(cur) - Decimal(prev)) / Decimal(prev))


def _monday(d: date) -> date:
    return d - timedelta(days=d.weekday())


def _add_months(d: date, n: int) -> date:
    i = d.year * 12 + d.month - 1 + n
    return date(i // 12, i % 12 + 1, 1)


def _month_end(m: date) -> date:
    return _add_months(m, 1) - timedelta(days=1)


def _quarter_start(d: date) -> date:
    return date(d.year, (d.month - 1) // 3 * 3 + 1, 1)


def _quarter_end(q: date) -> date:
    return _add_months(q, 3) - timedelta(days=1)


def _month_len(s: date) -> int:
    return (_month_end(s) - s).days + 1


def _quarter_len(s: date) -> int:
    return (_quarter_end(s) - s).days + 1


def _week_days_in_month(week: date, month: date) -> int:
    """How many days of the week starting ``week`` lie in ``month`` (a breakdown part's full size)."""
    return sum(1 for i in range(7) if (week + timedelta(days=i)).replace(day=1) == month)


def _measures(evs: list[tuple[date, Event]], days: list[date], first_seen: dict[str, date]) -> dict[str, Any]:
    dayset = set(days)
    return {
        "total_events": len(evs),
        "active_users": len({e.user_id for _, e in evs if e.user_id is not None}),
        "new_users": sum(1 for d in first_seen.values() if d in dayset),
        "active_organizations": len({e.organization_id for _, e in evs if e.organization_id is not None}),
        "sessions": len({e.session_id for _, e in evs if e.session_id is not None}),
        "signups": sum(1 for _, e in evs if e.event_type == "signup"),
        "purchases": sum(1 for _, e in evs if e.event_type == "purchase"),
        "revenue_cents": sum(e.revenue_cents for _, e in evs),
    }


@dataclass
class _Days:
    """The spine, its events by day and each user's first day: what a comparison recomputes from."""
    spine: set[date]
    by_day: dict[date, list[tuple[date, Event]]]
    first_seen: dict[str, date]

    def measures(self, days: list[date]) -> dict[str, Any]:
        return _measures([x for d in days for x in self.by_day.get(d, [])], days, self.first_seen)


def _basis(cur_off: set[int], prev_off: set[int], cur_len: int, prev_len: int,
           by_dom: bool) -> tuple[str, list[int] | None]:
    """The basis of one comparison and the aligned day offsets (None: the whole periods)."""
    cur_full, prev_full = len(cur_off) == cur_len, len(prev_off) == prev_len
    if cur_full and prev_full and not by_dom:
        return "full", None
    both = sorted(cur_off & prev_off)
    basis = ("none" if not both else "partial_baseline" if not prev_full
             else "to_date" if not cur_full else "full")
    return basis, both


def _add_growth(rows: list[dict[str, Any]], key: str, length: Any, shift: Any, suffix: str, by_dom: bool,
                days: _Days) -> None:
    """Like-for-like growth and basis of one comparison, straight from the definition: the day
    offsets both periods have on the spine (whole periods when both are complete, unless the
    comparison aligns by day of month), measures recomputed from the events of those days."""
    for r in rows:
        start = r[key]
        prev_start = shift(start)
        cur_days = [start + timedelta(days=i) for i in range(length(start))]
        prev_days = [prev_start + timedelta(days=i) for i in range(length(prev_start))]
        prev_off = {i for i, d in enumerate(prev_days) if d in days.spine}
        if not prev_off:  # no previous period
            for c in GROWTH:
                r[f"{c}_{suffix}_pct"] = None
            r[f"{suffix}_basis_days"], r[f"{suffix}_basis"] = None, "none"
            continue
        basis, both = _basis({i for i, d in enumerate(cur_days) if d in days.spine}, prev_off,
                             len(cur_days), len(prev_days), by_dom)
        cur_sel = cur_days if both is None else [cur_days[i] for i in both]
        prev_sel = prev_days if both is None else [prev_days[i] for i in both]
        cur_m, prev_m = days.measures(cur_sel), days.measures(prev_sel)
        for c in GROWTH:
            r[f"{c}_{suffix}_pct"] = None if basis == "none" else _growth(cur_m[c], prev_m, c)
        r[f"{suffix}_basis_days"], r[f"{suffix}_basis"] = len(cur_sel), basis


def reference(events: list[Event], tz: str, rules: EventRules | None = None) -> dict[str, list[dict[str, Any]]]:
    """daily_metrics, weekly_metrics, monthly_metrics and quarterly_metrics as lists of row dicts, by key."""
    zone = ZoneInfo(tz)
    seen: dict[str, Event] = {}
    for e in events:  # duplicates by event_id are skipped on load: the first one wins
        seen.setdefault(e.event_id, e)
    dated = [(e.occurred_at.astimezone(zone).date(), e) for e in seen.values() if is_valid(e, rules) and e.occurred_at]
    if not dated:
        return {table: [] for table in KEYS}
    by_day: dict[date, list[tuple[date, Event]]] = defaultdict(list)
    first_seen: dict[str, date] = {}
    for d, e in dated:
        by_day[d].append((d, e))
        if e.user_id is not None and (e.user_id not in first_seen or d < first_seen[e.user_id]):
            first_seen[e.user_id] = d
    first, last = min(by_day), max(by_day)
    spine = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    daily = []
    for d in spine:
        daily.append({"metric_date": d, **_measures(by_day.get(d, []), [d], first_seen)})
    daily_by = {r["metric_date"]: r for r in daily}

    def period_rows(key_of: Any, end_of: Any, full_days: Any, prefix: str) -> list[dict[str, Any]]:
        groups: dict[date, list[date]] = defaultdict(list)
        for d in spine:
            groups[key_of(d)].append(d)
        rows = []
        for start, days in sorted(groups.items()):
            evs = [x for d in days for x in by_day.get(d, [])]
            n = len(days)
            row = {prefix + "_start": start, prefix + "_end": end_of(start), "days_with_data": n,
                   "is_complete": n == full_days(start), **_measures(evs, days, first_seen)}
            row["avg_daily_events"] = _q(Decimal(sum(daily_by[d]["total_events"] for d in days)) / n)
            row["avg_daily_active_users"] = _q(Decimal(sum(daily_by[d]["active_users"] for d in days)) / n)
            row["avg_daily_revenue_cents"] = _q(Decimal(sum(daily_by[d]["revenue_cents"] for d in days)) / n)
            rows.append(row)
        return rows

    weekly = period_rows(_monday, lambda s: s + timedelta(days=6), lambda s: 7, "week")
    days = _Days(set(spine), by_day, first_seen)
    _add_growth(weekly, "week_start", lambda s: 7, lambda s: s - timedelta(days=7), "wow", False, days)
    monthly = period_rows(lambda d: d.replace(day=1), _month_end, _month_len, "month")
    _add_growth(monthly, "month_start", _month_len, lambda s: _add_months(s, -1), "mom", False, days)
    _add_growth(monthly, "month_start", _month_len, lambda s: _add_months(s, -12), "yoy", True, days)
    for r in monthly:
        r["weekly_breakdown"] = _breakdown([d for d in spine if d.replace(day=1) == r["month_start"]], by_day,
                                           _monday, "week_start", "days_in_month",
                                           lambda w, m=r["month_start"]: _week_days_in_month(w, m))
    quarterly = period_rows(_quarter_start, _quarter_end, _quarter_len, "quarter")
    _add_growth(quarterly, "quarter_start", _quarter_len, lambda s: _add_months(s, -3), "qoq", False, days)
    _add_growth(quarterly, "quarter_start", _quarter_len, lambda s: _add_months(s, -12), "yoy", False, days)
    for r in quarterly:
        r["monthly_breakdown"] = _breakdown([d for d in spine if _quarter_start(d) == r["quarter_start"]], by_day,
                                            lambda d: d.replace(day=1), "month_start", "days_in_quarter", _month_len)
    return {"daily_metrics": daily, "weekly_metrics": weekly, "monthly_metrics": monthly,
            "quarterly_metrics": quarterly}


def _breakdown(days_in_period: list[date], by_day: dict[date, list[tuple[date, Event]]], part_of: Any,
               start_key: str, days_key: str, part_days: Any) -> list[dict[str, Any]]:
    """The parts of one period (its days grouped by ``part_of``), ordered, as the marts' jsonb."""
    parts: dict[date, list[date]] = defaultdict(list)
    for d in days_in_period:
        parts[part_of(d)].append(d)
    out = []
    for start, days in sorted(parts.items()):
        evs = [x for d in days for x in by_day.get(d, [])]
        out.append({start_key: start.isoformat(), days_key: len(days), "is_complete": len(days) == part_days(start),
                    "total_events": len(evs),
                    "active_users": len({e.user_id for _, e in evs if e.user_id is not None}),
                    "revenue_cents": sum(e.revenue_cents for _, e in evs)})
    return out


def like_for_like_days(g: Any, daily: dict[date, Any], complete: dict[date, bool], pairs: list[tuple[date, date]],
                       *, by_day: bool) -> tuple[list[date], list[date], list[tuple[date, date]]]:
    """The days each side of a summary's ``pairs`` (period start, its counterpart's start) compares,
    like for like: the whole periods when both are complete (``complete``: start -> is_complete),
    unless ``by_day`` (a month against the month a year earlier: by day of month); else the days
    both have on the spine (``daily``'s keys), matched by offset in the period. Also the pairs
    with an aligned day. ``g`` is a :class:`metricsmith.grains.Grain`."""
    cur_days: list[date] = []
    prev_days: list[date] = []
    compared = []
    for c, p in pairs:
        if not by_day and complete.get(c) and complete.get(p):
            now = [d for d in sorted(daily) if c <= d <= g.end_of(c)]
            before = [d for d in sorted(daily) if p <= d <= g.end_of(p)]
        else:
            now = [d for d in sorted(daily) if c <= d <= g.end_of(c) and p + (d - c) <= g.end_of(p)
                   and p + (d - c) in daily]
            before = [p + (d - c) for d in now]
        cur_days += now
        prev_days += before
        if now:
            compared.append((c, p))
    return cur_days, prev_days, compared


KEYS = {"daily_metrics": "metric_date", "weekly_metrics": "week_start", "monthly_metrics": "month_start",
        "quarterly_metrics": "quarter_start"}


def fetch_tables(conn: Any, schema: str = "analytics") -> dict[str, list[dict[str, Any]]]:
    out = {}
    for table, key in KEYS.items():
        cur = conn.execute(f"select * from {schema}.{table} order by {key}")
        names = [d.name for d in cur.description]
        out[table] = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    return out


def diff_tables(expected: dict[str, list[dict[str, Any]]], actual: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Human-readable differences (empty when equal cell for cell)."""
    problems: list[str] = []
    for table, key in KEYS.items():
        exp = {r[key]: r for r in expected[table]}
        act = {r[key]: r for r in actual[table]}
        for k in sorted(set(exp) ^ set(act)):
            problems.append(f"{table} {k}: {'missing' if k in exp else 'unexpected'} row")
        for k in sorted(set(exp) & set(act)):
            for col, value in exp[k].items():
                if act[k].get(col) != value:
                    problems.append(f"{table} {k} {col}: expected {value!r}, got {act[k].get(col)!r}")
            extra = set(act[k]) - set(exp[k])
            if extra:
                problems.append(f"{table} {k}: columns not checked: {sorted(extra)}")
    return problems[:40]
