"""`metricsmith query <grain>` for every declared grain, `metricsmith query custom` (read metrics
through the cache) and `metricsmith cache ...` (operate it)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from datetime import date
from decimal import Decimal
from typing import Any

from metricsmith import grains, rollups
from metricsmith.cli.args import day, day_or_month, year
from metricsmith.cli.rollups import growth_label
from metricsmith.errors import UserFacingError
from metricsmith.grains import Grain

#: Columns shown by ``--format table`` for custom metric values (json and csv carry every column).
CUSTOM_COLUMNS = ["period_start", "dimensions", "value", "previous_value", "growth_pct", "growth_basis"]


def table_columns(g: Grain) -> list[str]:
    """The compact set ``--format table`` shows for a grain (json and csv carry every column)."""
    if g.end_column is None:
        return [g.start_column, "total_events", "active_users", "new_users", "sessions", "purchases", "revenue_cents"]
    growth = [f"{m}_{c.suffix}_pct" for c in g.comparisons for m in ("total_events", "revenue_cents")]
    return [g.start_column, "days_with_data", "total_events", "active_users", "new_users", "revenue_cents", *growth]


def _yearly(g: Grain) -> bool:
    return rollups.year_comparison(g) is not None


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=["table", "json", "csv"], default="table")
    p.add_argument("--columns", help="comma-separated columns for --format table (default: a compact set)")
    p.add_argument("--no-cache", action="store_true", help="read PostgreSQL directly")
    p.add_argument("--schema", help="schema of the dbt marts (default: the dbt target's, e.g. analytics)")
    p.add_argument("--currency", action="store_true",
                   help="revenue in currency units (revenue_cents / 100, columns named revenue*) instead of "
                        "cents (the marts' unit, the default)")


def _register_grain(qsub: argparse._SubParsersAction, g: Grain) -> None:
    if g.end_column is None:
        p = qsub.add_parser(g.adjective, help=f"one row per {g.name}")
        p.add_argument("--start", type=day, help="first day (default: 29 days before --end)")
        p.add_argument("--end", type=day, help="last day (default: today in the reporting time zone)")
    elif _yearly(g):
        p = qsub.add_parser(g.adjective, help=f"the {g.name}s of a year with their growth, and the year "
                                              f"against the same {g.name}s of the year before")
        p.add_argument("--year", type=year, help="default: this year (unless --start / --end)")
        p.add_argument("--start", type=day, help=f"{g.name}s from the one holding this day instead of a year")
        p.add_argument("--end", type=day, help="up to this day (default: today)")
    else:
        p = qsub.add_parser(g.adjective, help=f"{g.name}s overlapping a range, with their growth and totals")
        p.add_argument("--start", type=day, help=f"default: the start of the {g.name} 11 {g.name}s before --end's")
        p.add_argument("--end", type=day, help="default: today")
    _common(p)
    p.set_defaults(handler=cmd_query_grain, grain=g.name)


def register(sub: argparse._SubParsersAction) -> None:
    names = " / ".join(g.adjective for g in grains.load())
    q = sub.add_parser("query", help=f"read {names} / custom metrics (through the cache)")
    qsub = q.add_subparsers(dest="query_kind", metavar="KIND")
    qsub.required = True
    for g in grains.load():
        _register_grain(qsub, g)

    p = qsub.add_parser("custom", help="values of a custom metric (visibility enforced)")
    p.add_argument("slug")
    p.add_argument("--as", dest="user", required=True, help="the user asking (access is checked for them)")
    p.add_argument("--start", type=day)
    p.add_argument("--end", type=day)
    p.add_argument("--version", type=int, help="a version of the metric (default: its current one)")
    _common(p)
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
    p.add_argument("--day", type=day, action="append", default=[], metavar="YYYY-MM-DD",
                   help="a changed day (each option repeatable)")
    for g in grains.periods():
        monthly = g.unit == "month"
        p.add_argument(f"--{g.name}", dest=f"changed_{g.name}", type=day_or_month if monthly else day,
                       action="append", default=[], metavar="YYYY-MM" + ("[-DD]" if monthly else "-DD"),
                       help=f"any day of a changed {g.name}" + ("; YYYY-MM is that month's first day" if monthly else ""))
    p.add_argument("--slug", action="append", default=[], help="a custom metric slug")
    p.add_argument("--pattern", action="append", default=[], help="key glob, e.g. 'daily:*' or 'monthly:2024-*'")
    p.add_argument("--all", action="store_true", help="drop everything")
    p.set_defaults(handler=cmd_cache_invalidate)

    p = csub.add_parser("warm", help="pre-compute the predictable dashboard queries")
    p.add_argument("--today", type=day, help="pretend today is this day (default: today)")
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


def _csv_cell(value: Any) -> Any:
    return json.dumps(_plain(value)) if isinstance(value, (list, tuple, dict)) else value


def _csv(dicts: list[dict[str, Any]], all_columns: list[str]) -> str:
    from metricsmith.csvtext import csv_text

    return csv_text(dicts, all_columns, _csv_cell).rstrip("\n")


def basis_column(column: str, all_columns: Sequence[str]) -> str | None:
    """The basis column of a growth column (``revenue_cents_mom_pct`` -> ``mom_basis``;
    ``growth_pct`` -> ``growth_basis``), if the rows have it."""
    if column == "growth_pct":
        name = "growth_basis"
    elif column.endswith("_pct") and column.count("_") >= 2:
        name = column[:-4].rsplit("_", 1)[1] + "_basis"
    else:
        return None
    return name if name in all_columns else None


def basis_mark(basis: str | None) -> str:
    from metricsmith.query import basis_mark as mark  # the CLI imports the query service lazily

    return mark(basis)


def marked(text: str, basis: str | None) -> str:
    """A growth figure's text with its basis marker (none on ``full``; none on an empty cell)."""
    return text + basis_mark(basis) if text and text != "n/a" else text


def legend() -> str:
    from metricsmith.query import BASIS_LEGEND

    return f"({BASIS_LEGEND})"


def _table(dicts: list[dict[str, Any]], wanted: list[str], money: dict[str, bool],
           bases: dict[str, str | None]) -> list[str]:
    table = [wanted] + [[marked(_cell(d[c], money[c]), d.get(b)) if (b := bases[c]) else _cell(d[c], money[c])
                         for c in wanted] for d in dicts]
    widths = [max(len(row[i]) for row in table) for i in range(len(wanted))]
    lines = ["  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(row, widths, strict=True)))
             for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if not dicts:
        lines.append("(no rows)")
    if any(d[c] is not None and basis_mark(d.get(b)) for d in dicts for c, b in bases.items() if b):
        lines.append(legend())
    return lines


def render_rows(rows: Sequence[dict[str, Any]], all_columns: list[str], default_columns: list[str], fmt: str,
                columns: str | None = None, footer: list[str] | None = None, *, currency: bool = False) -> str:
    """Rows (dicts) as a table, JSON or CSV. Money is in cents (``revenue_cents``), or with
    ``currency`` in currency units (``revenue``, two decimals) - in every format alike."""
    dicts = list(rows)
    if currency:
        dicts = [_in_currency(d, "") for d in dicts]
        all_columns = [_currency_name(c) for c in all_columns]
    if fmt == "json":
        return json.dumps(_plain(dicts), indent=2)
    if fmt == "csv":
        return _csv(dicts, all_columns)
    wanted = [c.strip() for c in columns.split(",")] if columns else default_columns
    if currency:
        wanted = [_currency_name(c) for c in wanted]
    unknown = [c for c in wanted if c not in all_columns]
    if unknown:
        raise UserFacingError(f"unknown column(s) {', '.join(unknown)}; available: {', '.join(all_columns)}")
    money = {c: _is_money(c, currency) for c in wanted}
    bases = {c: basis_column(c, all_columns) for c in wanted}
    lines = _table(dicts, wanted, money, bases)
    if footer and legend() in footer and lines[-1] == legend():
        lines.pop()  # the legend once, under everything
    return "\n".join(lines + (footer or []))


def _service(args: argparse.Namespace) -> Any:
    from metricsmith.query import MetricsQueryService

    return MetricsQueryService(use_cache=not args.no_cache, schema=args.schema)


def _total(measure: str, value: int, currency: bool) -> str:
    if currency and measure == _CENTS:
        return f"{_currency_name(measure)}={value / 100:,.2f}"
    return f"{measure}={value:,}"


def _amount(measure: str, value: int, currency: bool) -> str:
    return f"{value / 100:>16,.2f}" if currency and measure == _CENTS else f"{value:>16,}"


def _pct(value: Decimal | None, basis: str | None = None) -> str:
    return "n/a" if value is None else marked(f"{value:+.2f}%", basis)


# ---------------------------------------------------------------- query handlers
def cmd_query_grain(args: argparse.Namespace) -> int:
    """`metricsmith query <grain>`: a range of periods with its summary, or a year."""
    from metricsmith.query import period_columns, recent_range

    g = grains.get(args.grain)
    by_year = _yearly(g) and getattr(args, "year", None) is not None
    if by_year and (args.start or args.end):
        raise UserFacingError("give either --year or --start / --end, not both")
    with _service(args) as svc:
        if _yearly(g) and not (args.start or args.end):
            return _print_year(args, svc, g, args.year or svc.today().year)
        end = args.end or svc.today()
        start = args.start or recent_range(g, end)[0]
        if g.end_column is None:
            rows, footer = svc.get_period_metrics(g.name, start, end), None
        else:
            summary = svc.get_period_summary(g.name, start, end)
            rows, footer = summary.periods, _range_footer(g, summary, args.currency)
    print(render_rows(rows, period_columns(g), table_columns(g), args.format, args.columns,
                      footer if args.format == "table" else None, currency=args.currency))
    return 0


def _range_footer(g: Grain, summary: Any, currency: bool) -> list[str]:
    from metricsmith.query import plural

    n = len(list(g.periods_between(summary.start, summary.end)))
    lines = [f"{plural(len(summary.periods), g.name)}, {summary.complete_periods} complete; totals: "
             + ", ".join(_total(k, v, currency) for k, v in summary.totals.items())]
    growth = ", ".join(f"{_currency_name(k) if currency else k} {_pct(v, summary.growth_basis)}"
                       for k, v in summary.growth_pct.items())
    lines.append(f"vs the previous {plural(n, g.name)} ({summary.previous_start} .. {summary.previous_end}; "
                 f"{summary.compared_periods} compared, each with the {g.name} {n} before, "
                 f"{summary.compared_days} aligned days): {growth}")
    if _marked(summary):
        lines.append(legend())
    return lines


def _marked(summary: Any) -> bool:
    """Whether a summary line shows a marker (a growth figure on a basis other than full)."""
    return bool(basis_mark(summary.growth_basis)) and any(v is not None for v in summary.growth_pct.values())


def _print_year(args: argparse.Namespace, svc: Any, g: Grain, year_: int) -> int:
    from metricsmith.query import period_columns, plural, year_range

    comparison = rollups.year_comparison(g)
    assert comparison is not None  # only called for such grains
    suffix = comparison.suffix
    summary = svc.get_period_summary(g.name, *year_range(year_))
    if args.format == "json":
        data = {"year": year_, f"{g.name}s": summary.periods, "totals": summary.totals,
                "previous_year_totals": summary.previous_totals, f"{suffix}_pct": summary.growth_pct,
                f"compared_{g.name}s": summary.compared_periods, "compared_days": summary.compared_days,
                f"{suffix}_basis": summary.growth_basis, "alignment": summary.alignment}
        print(json.dumps(_plain(_in_currency(data, "") if args.currency else data), indent=2))
        return 0
    what = "" if summary.compared_periods == 0 else f" (the {g.name}s and days both years have)"
    footer = [f"{year_} ({plural(len(summary.periods), g.name)}) vs the same {g.name}s of {year_ - 1}: "
              f"{summary.alignment}{what}"]
    for measure, growth in summary.growth_pct.items():
        name = _currency_name(measure) if args.currency else measure
        now = _amount(measure, summary.compared_totals[measure], args.currency)
        before = _amount(measure, summary.previous_totals[measure], args.currency)
        footer.append(f"  {name:<14} {now}  vs {before}  {growth_label(suffix)} {_pct(growth, summary.growth_basis)}")
    if _marked(summary):
        footer.append(legend())
    print(render_rows(summary.periods, period_columns(g), table_columns(g), args.format, args.columns,
                      footer if args.format == "table" else None, currency=args.currency))
    return 0


def cmd_query_custom(args: argparse.Namespace) -> int:
    from metricsmith.query import CustomMetricValue

    with _service(args) as svc:
        rows = svc.get_custom_metric_values(args.slug, user=args.user, start=args.start, end=args.end,
                                            version=args.version)
    columns = [f.name for f in dataclasses.fields(CustomMetricValue)]
    # custom metric values carry their own unit: never converted to currency
    print(render_rows([dataclasses.asdict(r) for r in rows], columns, CUSTOM_COLUMNS, args.format, args.columns))
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

    changed = {g.name: getattr(args, f"changed_{g.name}") for g in grains.periods()}
    if not (args.all or args.day or any(changed.values()) or args.slug or args.pattern):
        options = ", ".join(f"--{g.name}" for g in grains.load())
        raise UserFacingError(f"say what to invalidate: {options}, --slug, --pattern or --all")
    patterns = ["*"] if args.all else args.pattern
    result = invalidate_periods(args.day, changed=changed, slugs=args.slug, patterns=patterns, cache=get_cache())
    print(result.render())
    return 0 if result.ok else 1


def cmd_cache_warm(args: argparse.Namespace) -> int:
    from metricsmith.cache.invalidation import warm_cache

    result = warm_cache(today=args.today)
    print(result.render())
    return 0 if result.warmed else 1
