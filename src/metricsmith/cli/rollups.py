"""CLI: ``metricsmith rollups run|status`` and ``metricsmith backfill --start --end``, and the
text the rollups print (a run's result, the latest periods of every grain)."""

from __future__ import annotations

import argparse
from typing import Any

from metricsmith import db, grains, rollups
from metricsmith.cli.args import day
from metricsmith.core.dbt import DbtError, set_verbose
from metricsmith.errors import UserFacingError, int_at_least
from metricsmith.grains import Grain

#: how many of the latest periods of each grain `--show`, `status` and the demo print
LATEST = 3


def register(sub: argparse._SubParsersAction) -> None:
    names = " / ".join(g.adjective for g in grains.load())
    longer = "/".join(f"{g.name}s" for g in grains.periods())
    p = sub.add_parser("rollups", help=f"{names} metrics (incremental dbt models)")
    rsub = p.add_subparsers(dest="rollups_command", metavar="ACTION")
    rsub.required = True
    run = rsub.add_parser("run", help="process what arrived since the last run (or rebuild with --full-refresh)")
    run.add_argument("--full-refresh", action="store_true",
                     help="rebuild every rollup table from raw.events (needed after changing METRICSMITH_TIMEZONE)")
    run.add_argument("--test", action="store_true", help="dbt build: also run the data tests and unit tests")
    run.add_argument("--show", action="store_true", help=f"print the latest {longer} afterwards")
    run.add_argument("-v", "--verbose", action="store_true", help="show dbt's log (default: the summary only)")
    run.set_defaults(handler=cmd_run)
    status = rsub.add_parser("status", help="the last runs from the ledger and the latest periods")
    status.add_argument("--runs", type=int_at_least(1), default=5, help="ledger rows to show (default 5)")
    status.set_defaults(handler=cmd_status)

    b = sub.add_parser("backfill", help=f"recompute a date range of the rollups and the {longer} above it")
    b.add_argument("--start", required=True, type=day, help="first day, YYYY-MM-DD")
    b.add_argument("--end", required=True, type=day, help="last day, YYYY-MM-DD (inclusive)")
    b.add_argument("-v", "--verbose", action="store_true", help="show dbt's log (default: the summary only)")
    b.set_defaults(handler=cmd_backfill)


# ---------------------------------------------------------------- rendering
def render_result(result: rollups.RollupRunResult) -> str:
    """One line: mode, time zone, duration, the days recomputed and the period rows refreshed."""
    c = result.changed
    if not c.days:
        what = "no day changed"
    else:
        why = ", ".join(f"{n} {reason}" for reason, n in sorted(result.reasons.items()))
        rows = ", ".join(f"{len(c.of(g.name))} {g.name} row(s)" for g in grains.periods())
        what = f"{len(c.days)} day(s) recomputed ({c.days[0]} .. {c.days[-1]}; {why}), {rows} refreshed"
    return f"rollups {result.mode} ({result.timezone}) in {result.seconds:.1f} s: {what}"


def growth_label(suffix: str) -> str:
    """How a growth suffix reads in a header: wow -> WoW, qoq -> QoQ, yoy -> YoY."""
    return suffix[0].upper() + suffix[1:-1] + suffix[-1].upper() if len(suffix) == 3 else suffix.upper()


def _pct(value: Any, basis: str | None = None) -> str:
    """A growth figure, 10 wide: ``  +4.2%ᵗᵈ`` (the basis marker; none on ``full``)."""
    from metricsmith.query import basis_mark

    return "    n/a   " if value is None else f"{float(value):+7.1f}%{basis_mark(basis):<2}"


def _period_lines(g: Grain, rows: list[dict[str, Any]]) -> list[str]:
    growth = "  ".join(f"events/users/revenue {growth_label(c.suffix)}" for c in g.comparisons)
    lines = [f"{g.name:<11} days  events     users   new     revenue     {growth}"]
    for r in rows:
        pcts = "  ".join(" ".join(_pct(r.get(f"{m}_{c.suffix}_pct"), r.get(f"{c.suffix}_basis"))
                                  for m in ("total_events", "active_users", "revenue_cents"))
                         for c in g.comparisons)
        lines.append(
            f"{r[g.start_column]}  {r['days_with_data']:>2}{' ' if r['is_complete'] else '*'} "
            f"{r['total_events']:>9,} {r['active_users']:>8,} {r['new_users']:>6,} {r['revenue_cents'] / 100:>11,.2f}   "
            f"{pcts}")
    return lines


def render_periods(latest: dict[str, list[dict[str, Any]]]) -> str:
    """A compact text table of the latest periods of each grain (name -> rows) with their growth."""
    from metricsmith.query import BASIS_LEGEND

    lines: list[str] = []
    for name, rows in latest.items():
        lines += _period_lines(grains.get(name), rows)
    lines.append("(* = period not complete; revenue in currency units)")
    if any("%" in p and p.rstrip()[-1] != "%" for line in lines for p in line.split()):
        lines.append(f"({BASIS_LEGEND})")
    return "\n".join(lines)


def latest_periods(conn: Any, n: int = LATEST) -> dict[str, list[dict[str, Any]]]:
    """The last ``n`` rows of every grain longer than a day that is built."""
    return {g.name: rows for g in grains.periods() if (rows := rollups.latest_periods(conn, g.name, n))}


# ---------------------------------------------------------------- handlers
def run(**kwargs: Any) -> rollups.RollupRunResult:
    """Run the rollups, then drop the periods they recomputed from the cache."""
    from metricsmith.cache.invalidation import invalidate_changes

    try:
        result = rollups.run_rollups(**kwargs)
    except DbtError as exc:
        raise UserFacingError(str(exc)) from None
    # the periods this run recomputed must not be served from the cache any more
    invalidated = invalidate_changes(result.changed)
    if not invalidated.ok:
        print(f"warning: {invalidated.render()}")
    return result


def cmd_run(args: argparse.Namespace) -> int:
    set_verbose(args.verbose)
    from metricsmith.spark.config import engine

    if engine() == "spark":  # docs/spark.md: the Spark rollup job, then the publish (= `metricsmith spark run`)
        if args.test:
            raise UserFacingError("rollups run --test runs dbt's tests on PostgreSQL only; on METRICSMITH_ENGINE=spark "
                                  "run without --test (the Spark tests: docs/spark.md)")
        from metricsmith.cli.spark import run_on_spark

        status = run_on_spark(full_refresh=args.full_refresh)
        if args.show and status == 0:
            show()
        return status
    result = run(full_refresh=args.full_refresh, test=args.test)
    print(render_result(result))
    if args.show:
        show()
    return 0


def cmd_backfill(args: argparse.Namespace) -> int:
    rollups.backfill_vars(args.start, args.end)  # a bad range: one line, before anything starts
    set_verbose(args.verbose)
    from metricsmith.spark.config import engine

    if engine() == "spark":  # docs/spark.md: the Spark rollup job with the range, then the publish
        from metricsmith.cli.spark import run_on_spark

        return run_on_spark(backfill=(args.start, args.end))
    result = run(backfill=(args.start, args.end))
    print(render_result(result))
    return 0


def _ledger_line(r: dict[str, Any]) -> str:
    mode = "full-rebuild" if r["is_full_rebuild"] else ("backfill" if r["backfill_start"] else "incremental")
    span = (f"{r['changed_days']:>5} ({r['first_changed_day']} .. {r['last_changed_day']})"
            if r["changed_days"] else "    0")
    return (f"{r['finished_at']:%Y-%m-%d %H:%M:%S%z}  {mode:<12}  {r['metrics_timezone']:<15}  {span:<32} "
            f"{r['high_watermark']}")


def cmd_status(args: argparse.Namespace) -> int:
    with db.connect(autocommit=True) as conn:
        runs = rollups.ledger(conn, args.runs)
        if not runs:
            print("no rollup run yet: metricsmith rollups run")
            return 0
        print("finished_at                 mode          tz               changed days  high watermark")
        for r in runs:
            print(_ledger_line(r))
        print()
        print(render_periods(latest_periods(conn)))
    return 0


def show() -> None:
    """Print the latest periods of every grain."""
    with db.connect(autocommit=True) as conn:
        print(render_periods(latest_periods(conn)))
