"""CLI: ``metricsmith rollups run|status`` and ``metricsmith backfill --start --end``."""

from __future__ import annotations

import argparse
from datetime import date

from metricsmith import db, rollups
from metricsmith.dbt_runner import DbtError, set_verbose
from metricsmith.errors import UserFacingError, int_at_least


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rollups", help="daily / weekly / monthly metrics (incremental dbt models)")
    rsub = p.add_subparsers(dest="rollups_command", metavar="ACTION")
    rsub.required = True
    run = rsub.add_parser("run", help="process what arrived since the last run (or rebuild with --full-refresh)")
    run.add_argument("--full-refresh", action="store_true",
                     help="rebuild every rollup table from raw.events (needed after changing METRICSMITH_TIMEZONE)")
    run.add_argument("--test", action="store_true", help="dbt build: also run the data tests and unit tests")
    run.add_argument("--show", action="store_true", help="print the latest weeks and months afterwards")
    run.add_argument("-v", "--verbose", action="store_true", help="show dbt's log (default: the summary only)")
    run.set_defaults(handler=cmd_run)
    status = rsub.add_parser("status", help="the last runs from the ledger and the latest periods")
    status.add_argument("--runs", type=int_at_least(1), default=5, help="ledger rows to show (default 5)")
    status.set_defaults(handler=cmd_status)

    b = sub.add_parser("backfill", help="recompute a date range of the rollups and the weeks/months above it")
    b.add_argument("--start", required=True, type=_day, help="first day, YYYY-MM-DD")
    b.add_argument("--end", required=True, type=_day, help="last day, YYYY-MM-DD (inclusive)")
    b.add_argument("-v", "--verbose", action="store_true", help="show dbt's log (default: the summary only)")
    b.set_defaults(handler=cmd_backfill)


def _day(text: str) -> date:
    try:
        return rollups.parse_day(text)
    except UserFacingError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _run(**kwargs: object) -> rollups.RollupRunResult:
    try:
        result = rollups.run_rollups(**kwargs)  # type: ignore[arg-type]
    except DbtError as exc:
        raise UserFacingError(str(exc)) from None
    # the periods this run recomputed must not be served from the cache any more
    from metricsmith.cache.invalidation import invalidate_changes

    invalidated = invalidate_changes(result.changed)
    if not invalidated.ok:
        print(f"warning: {invalidated.render()}")
    return result


def cmd_run(args: argparse.Namespace) -> int:
    set_verbose(args.verbose)
    result = _run(full_refresh=args.full_refresh, test=args.test)
    print(result.render())
    if args.show:
        _show()
    return 0


def cmd_backfill(args: argparse.Namespace) -> int:
    if args.start > args.end:
        raise UserFacingError(f"--start {args.start} is after --end {args.end}")
    set_verbose(args.verbose)
    result = _run(backfill=(args.start, args.end))
    print(result.render())
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    with db.connect(autocommit=True) as conn:
        runs = rollups.ledger(conn, args.runs)
        if not runs:
            print("no rollup run yet: metricsmith rollups run")
            return 0
        print("finished_at                 mode          tz               changed days  high watermark")
        for r in runs:
            mode = "full-rebuild" if r["is_full_rebuild"] else ("backfill" if r["backfill_start"] else "incremental")
            span = f"{r['changed_days']:>5} ({r['first_changed_day']} .. {r['last_changed_day']})" if r["changed_days"] else "    0"
            print(f"{r['finished_at']:%Y-%m-%d %H:%M:%S%z}  {mode:<12}  {r['metrics_timezone']:<15}  {span:<32} {r['high_watermark']}")
        print()
        print(rollups.render_periods(rollups.latest_weeks(conn), rollups.latest_months(conn)))
    return 0


def _show() -> None:
    with db.connect(autocommit=True) as conn:
        print(rollups.render_periods(rollups.latest_weeks(conn), rollups.latest_months(conn)))
