"""`metricsmith query ...` (read metrics through the cache) and `metricsmith cache ...` (operate it)."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import sys
from collections.abc import Sequence
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from metricsmith.errors import UserFacingError

#: Columns shown by ``--format table`` (json and csv always carry every column).
TABLE_COLUMNS = {
    "daily": ["metric_date", "total_events", "active_users", "new_users", "sessions", "purchases", "revenue_cents"],
    "weekly": ["week_start", "days_with_data", "total_events", "active_users", "new_users", "revenue_cents",
               "total_events_wow_pct", "revenue_cents_wow_pct"],
    "monthly": ["month_start", "days_with_data", "total_events", "active_users", "revenue_cents",
                "revenue_cents_mom_pct", "total_events_yoy_pct", "revenue_cents_yoy_pct"],
    "custom": ["period_start", "dimensions", "value", "previous_value", "growth_pct"],
}


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def _month(text: str) -> date:
    try:
        return date.fromisoformat(text + "-01" if len(text) == 7 else text).replace(day=1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a month (YYYY-MM)") from None


def register(sub: argparse._SubParsersAction) -> None:
    q = sub.add_parser("query", help="read daily / weekly / monthly / custom metrics (through the cache)")
    qsub = q.add_subparsers(dest="query_kind", metavar="KIND")
    qsub.required = True

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--format", choices=["table", "json", "csv"], default="table")
        p.add_argument("--columns", help="comma-separated columns for --format table (default: a compact set)")
        p.add_argument("--no-cache", action="store_true", help="read PostgreSQL directly")
        p.add_argument("--schema", default="analytics", help="schema of the dbt marts (default: analytics)")
        p.add_argument("--currency", action="store_true",
                       help="revenue in currency units (revenue_cents / 100, columns named revenue*) instead of "
                            "cents (the marts' unit, the default)")

    p = qsub.add_parser("daily", help="one row per day")
    p.add_argument("--start", type=_date, help="first day (default: 29 days before --end)")
    p.add_argument("--end", type=_date, help="last day (default: today in the reporting time zone)")
    common(p)
    p.set_defaults(handler=cmd_query_daily)

    p = qsub.add_parser("weekly", help="ISO weeks overlapping a range, with week-over-week growth and totals")
    p.add_argument("--start", type=_date, help="default: the Monday 11 weeks before --end's week")
    p.add_argument("--end", type=_date, help="default: today")
    common(p)
    p.set_defaults(handler=cmd_query_weekly)

    p = qsub.add_parser("monthly", help="the months of a year with month-over-month and year-over-year growth")
    p.add_argument("--year", type=int, help="default: this year")
    common(p)
    p.set_defaults(handler=cmd_query_monthly)

    p = qsub.add_parser("custom", help="values of a custom metric (visibility enforced)")
    p.add_argument("slug")
    p.add_argument("--as", dest="user", required=True, help="the user asking (access is checked for them)")
    p.add_argument("--start", type=_date)
    p.add_argument("--end", type=_date)
    p.add_argument("--version", type=int, help="a version of the metric (default: its current one)")
    common(p)
    p.set_defaults(handler=cmd_query_custom)

    c = sub.add_parser("cache", help="cache statistics, invalidation and warming")
    csub = c.add_subparsers(dest="cache_command", metavar="ACTION")
    csub.required = True
    p = csub.add_parser("stats", help="hits, misses, hit rate, latency percentiles (all processes) and health")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--prometheus", action="store_true", help="Prometheus text exposition")
    p.add_argument("--reset", action="store_true", help="zero the statistics after printing them")
    p.set_defaults(handler=cmd_cache_stats)

    p = csub.add_parser("invalidate", help="drop cached values by period, metric slug or key pattern")
    p.add_argument("--day", type=_date, action="append", default=[], help="a changed day (repeatable)")
    p.add_argument("--week", type=_date, action="append", default=[], help="any day of a changed ISO week")
    p.add_argument("--month", type=_month, action="append", default=[], help="a changed month (YYYY-MM)")
    p.add_argument("--slug", action="append", default=[], help="a custom metric slug")
    p.add_argument("--pattern", action="append", default=[], help="key glob, e.g. 'daily:*' or 'monthly:2024-*'")
    p.add_argument("--all", action="store_true", help="drop everything")
    p.set_defaults(handler=cmd_cache_invalidate)

    p = csub.add_parser("warm", help="pre-compute the predictable dashboard queries")
    p.add_argument("--today", type=_date, help="pretend today is this day (default: today)")
    p.set_defaults(handler=cmd_cache_warm)


# ---------------------------------------------------------------- output
def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(round(value, 4)) if value == value else None
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


#: the marts keep money in cents (integers); ``--currency`` shows it in currency units
_CENTS = "revenue_cents"
_CENT = Decimal("0.01")


def _currency_name(name: str) -> str:
    return name.replace(_CENTS, "revenue")


def _in_currency(value: Any, name: str) -> Any:
    """``value`` of column ``name`` with cents turned into currency units (growth % unchanged)."""
    if isinstance(value, dict):
        if name.endswith("_pct"):  # e.g. a summary's yoy_pct: percentages keyed by measure
            return {_currency_name(k): v for k, v in value.items()}
        return {_currency_name(k): _in_currency(v, k) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_in_currency(v, name) for v in value]
    if name.endswith(_CENTS) and isinstance(value, (int, Decimal)) and not isinstance(value, bool):
        return (Decimal(value) / 100).quantize(_CENT)
    return value


def _is_money(column: str, currency: bool) -> bool:
    return currency and column.startswith(("revenue", "avg_daily_revenue")) and not column.endswith("_pct")


def _cell(value: Any, money: bool = False) -> str:
    if value is None:
        return ""
    if money and isinstance(value, Decimal):
        return f"{value:,.2f}"
    if isinstance(value, Decimal):
        return f"{value:.2f}"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(_plain(value), separators=(",", ":"))
    return str(value)


def render_rows(rows: Sequence[Any], kind: str, fmt: str, columns: str | None = None,
                footer: list[str] | None = None, *, currency: bool = False) -> str:
    """Rows as a table, JSON or CSV. Money is in cents (``revenue_cents``), or with ``currency``
    in currency units (``revenue``, two decimals) - in every format alike."""
    dicts = [dataclasses.asdict(r) for r in rows]
    all_columns = [f.name for f in dataclasses.fields(rows[0])] if rows else TABLE_COLUMNS[kind]
    if currency and kind != "custom":  # custom metric values carry their own unit
        dicts = [_in_currency(d, "") for d in dicts]
        all_columns = [_currency_name(c) for c in all_columns]
    if fmt == "json":
        return json.dumps(_plain(dicts), indent=2)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(all_columns)
        for d in dicts:
            writer.writerow(["" if d[c] is None else (json.dumps(_plain(d[c])) if isinstance(d[c], (list, tuple, dict))
                                                    else d[c]) for c in all_columns])
        return out.getvalue().rstrip("\n")
    wanted = [c.strip() for c in columns.split(",")] if columns else TABLE_COLUMNS[kind]
    if currency and kind != "custom":
        wanted = [_currency_name(c) for c in wanted]
    unknown = [c for c in wanted if c not in all_columns]
    if unknown:
        raise UserFacingError(f"unknown column(s) {', '.join(unknown)}; available: {', '.join(all_columns)}")
    money = {c: _is_money(c, currency and kind != "custom") for c in wanted}
    table = [wanted] + [[_cell(d[c], money[c]) for c in wanted] for d in dicts]
    widths = [max(len(row[i]) for row in table) for i in range(len(wanted))]
    lines = ["  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(row, widths, strict=True)))
             for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if not rows:
        lines.append("(no rows)")
    return "\n".join(lines + (footer or []))


def _service(args: argparse.Namespace) -> Any:
    from metricsmith.query import MetricsQueryService

    return MetricsQueryService(use_cache=not args.no_cache, schema=args.schema)


def _total(measure: str, value: int, currency: bool) -> str:
    if currency and measure == _CENTS:
        return f"{_currency_name(measure)}={value / 100:,.2f}"
    return f"{measure}={value:,}"


# ---------------------------------------------------------------- query handlers
def cmd_query_daily(args: argparse.Namespace) -> int:
    with _service(args) as svc:
        end = args.end or svc.today()
        start = args.start or end - timedelta(days=29)
        rows = svc.get_daily_metrics(start, end)
    print(render_rows(rows, "daily", args.format, args.columns, currency=args.currency))
    return 0


def cmd_query_weekly(args: argparse.Namespace) -> int:
    from metricsmith.query import recent_range

    with _service(args) as svc:
        end = args.end or svc.today()
        start = args.start or recent_range("week", end)[0]
        summary = svc.get_weekly_metrics_summary(start, end)
    footer = [f"{len(summary.weeks)} week(s), {summary.complete_weeks} complete; totals: "
              + ", ".join(_total(k, v, args.currency) for k, v in summary.totals.items())]
    print(render_rows(summary.weeks, "weekly", args.format, args.columns,
                      footer if args.format == "table" else None, currency=args.currency))
    return 0


def cmd_query_monthly(args: argparse.Namespace) -> int:
    with _service(args) as svc:
        year = args.year or svc.today().year
        summary = svc.get_monthly_metrics_summary(year)
    if args.format == "json":
        data = dataclasses.asdict(summary)
        print(json.dumps(_plain(_in_currency(data, "") if args.currency else data), indent=2))
        return 0
    footer = [f"{year} ({len(summary.months)} month(s)) vs the same months of {year - 1}:"]
    for measure, total in summary.totals.items():
        yoy = summary.yoy_pct[measure]
        name, now, before = measure, f"{total:>16,}", f"{summary.previous_year_totals[measure]:>16,}"
        if args.currency and measure == _CENTS:
            name = _currency_name(measure)
            now, before = f"{total / 100:>16,.2f}", f"{summary.previous_year_totals[measure] / 100:>16,.2f}"
        footer.append(f"  {name:<14} {now}  vs {before}  YoY {'n/a' if yoy is None else f'{yoy:+.2f}%'}")
    print(render_rows(summary.months, "monthly", args.format, args.columns,
                      footer if args.format == "table" else None, currency=args.currency))
    return 0


def cmd_query_custom(args: argparse.Namespace) -> int:
    with _service(args) as svc:
        rows = svc.get_custom_metric_values(args.slug, user=args.user, start=args.start, end=args.end,
                                            version=args.version)
    print(render_rows(rows, "custom", args.format, args.columns))
    return 0


# ---------------------------------------------------------------- cache handlers
def _fmt_seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1e6:.1f} µs" if value < 1e-3 else f"{value * 1e3:.2f} ms"


def _fmt_rate(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f} %"


def cmd_cache_stats(args: argparse.Namespace) -> int:
    from metricsmith.cache import get_cache, prometheus_families, render_prometheus

    cache = get_cache()
    health = cache.health()
    snap = cache.fleet_stats()
    if args.prometheus:
        sys.stdout.write(render_prometheus(prometheus_families(snap)))
    elif args.json:
        print(json.dumps({"health": health, "stats": snap.as_dict(),
                          "config": dataclasses.asdict(cache.config)}, indent=2))
    else:
        c = snap.counters
        print(f"cache status     {health['status']}  ({health['detail']})")
        print(f"scope            {snap.scope}; keys in Redis: {snap.extra.get('l2_keys', '-')}")
        print(f"L1 hits/misses   {c['l1_hits']:,} / {c['l1_misses']:,}   hit rate {_fmt_rate(snap.hit_rate('l1'))}")
        print(f"L2 hits/misses   {c['l2_hits']:,} / {c['l2_misses']:,}   hit rate {_fmt_rate(snap.hit_rate('l2'))}")
        print(f"overall hit rate {_fmt_rate(snap.overall_hit_rate)}  (reads answered without PostgreSQL)")
        print(f"computations     {c['computations']:,}   stampedes avoided {c['stampedes_avoided']:,}"
              f"   early refreshes {c['early_refreshes']:,}")
        print(f"invalidations    {c['invalidations']:,} ({c['keys_invalidated']:,} keys)"
              f"   stale writes refused {c['stale_writes_refused']:,}")
        print(f"errors           {c['errors']:,} (Redis {c['redis_errors']:,})")
        print("latency          p50        p95        p99        count")
        for tier, label in (("l1", "L1 hit"), ("l2", "L2 hit"), ("db", "computed")):
            print(f"  {label:<14} {_fmt_seconds(snap.percentile(tier, 0.5)):<10} "
                  f"{_fmt_seconds(snap.percentile(tier, 0.95)):<10} {_fmt_seconds(snap.percentile(tier, 0.99)):<10} "
                  f"{sum(snap.latency[tier]):,}")
        cfg = cache.config
        print(f"TTL              realtime {cfg.ttl_realtime:g}s, open periods {cfg.ttl_open:g}s, "
              f"closed periods {cfg.ttl_closed:g}s; L1 max {cfg.l1_maxsize:,} entries")
    if args.reset:
        cache.reset_stats()
    return 1 if health["status"] != "ok" else 0


def cmd_cache_invalidate(args: argparse.Namespace) -> int:
    from metricsmith.cache import get_cache
    from metricsmith.cache.invalidation import invalidate_periods

    if not (args.all or args.day or args.week or args.month or args.slug or args.pattern):
        raise UserFacingError("say what to invalidate: --day, --week, --month, --slug, --pattern or --all")
    patterns = ["*"] if args.all else args.pattern
    result = invalidate_periods(args.day, changed={"week": args.week, "month": args.month}, slugs=args.slug,
                                patterns=patterns, cache=get_cache())
    print(result.render())
    return 0 if result.ok else 1


def cmd_cache_warm(args: argparse.Namespace) -> int:
    from metricsmith.cache.invalidation import warm_cache

    result = warm_cache(today=args.today)
    print(result.render())
    return 0 if result.warmed else 1
