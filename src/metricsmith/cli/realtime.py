"""``metricsmith realtime consume|export|serve|snapshot|reconcile|restore``."""

from __future__ import annotations

import argparse
import sys
from datetime import date, datetime, timedelta

from metricsmith.config import load_settings
from metricsmith.errors import UserFacingError, int_at_least, port_number


def _shards(args: argparse.Namespace) -> list[int]:
    from metricsmith.realtime.shards import parse_shards

    count = load_settings().stream_shards
    if args.shards is None:
        return list(range(count))
    try:
        return parse_shards(args.shards, count)
    except ValueError as exc:
        raise BadShards(f"--shards {exc}") from None


class BadShards(UserFacingError):
    """--shards names shards that do not exist or is not a list/range of numbers."""


def _consume(args: argparse.Namespace) -> int:
    from metricsmith.realtime.consumers import ShardedConsumer
    from metricsmith.realtime.stream import install_signal_handlers

    consumer = ShardedConsumer(shards=_shards(args), name=args.consumer, batch_size=args.batch_size,
                               block_ms=args.block_ms, claim_idle_ms=args.claim_idle_ms,
                               lock_ttl_ms=args.lock_ttl_ms, retention_days=args.retention_days)
    install_signal_handlers(consumer)
    print(f"consumer {consumer.name} in group {consumer.group} on {', '.join(consumer.streams)}"
          + (" (until the stream is drained)" if args.until_idle else " (Ctrl-C / SIGTERM to stop)"),
          file=sys.stderr)

    def progress(stats: object) -> None:
        if args.progress:
            print(f"\r{stats.render()}", end="", file=sys.stderr)  # type: ignore[attr-defined]

    try:
        stats = consumer.run(until_idle=args.until_idle, max_entries=args.max_entries, progress=progress)
    finally:
        consumer.close()
    if args.progress:
        print(file=sys.stderr)
    print(stats.render())
    from metricsmith.ingest import quarantine_exit_status

    return quarantine_exit_status(stats.quarantined, allow=args.allow_quarantine, command="realtime consume")


def _export(args: argparse.Namespace) -> int:
    from metricsmith.realtime.exposition import export_text

    sys.stdout.write(export_text(extra=not args.no_extra))
    return 0


def _serve(args: argparse.Namespace) -> int:
    from metricsmith.realtime.exposition import make_server

    server = make_server(args.host, args.port, extra=not args.no_extra)
    print(f"serving Prometheus metrics at http://{args.host}:{server.server_address[1]}/metrics (Ctrl-C to stop)",
          file=sys.stderr)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def _snapshot(args: argparse.Namespace) -> int:
    from metricsmith.realtime.persistence import snapshot

    print(snapshot(retention_days=args.retention_days, keep_days=args.keep_days).render())
    return 0


def _days(args: argparse.Namespace) -> list[date]:
    if args.day:
        return list(args.day)
    today = datetime.now(load_settings().tz).date()
    return [today - timedelta(days=n) for n in range(args.days)]


def _day_arg(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def _reconcile(args: argparse.Namespace) -> int:
    from metricsmith.realtime.reconcile import reconcile

    report = reconcile(_days(args), retention_days=args.retention_days)
    print(report.render())
    return 1 if report.corrections and args.fail_on_drift else 0


def _restore(args: argparse.Namespace) -> int:
    from metricsmith.realtime.persistence import restore

    print(restore(force=args.force, retention_days=args.retention_days).render())
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("realtime", help="realtime metrics: stream consumer, Prometheus export, snapshots")
    rt = parser.add_subparsers(dest="realtime_command", metavar="ACTION")
    rt.required = True

    def retention(p: argparse.ArgumentParser) -> None:
        p.add_argument("--retention-days", type=int_at_least(1), default=3,
                       help="days of per-day series (and de-duplication sets) kept in Redis (default 3)")

    p = rt.add_parser("consume", help="run a stream consumer (Redis metrics + raw.events, exactly-once effect)")
    p.add_argument("--consumer", help="consumer name (default host-pid; reuse it to resume its own pending entries)")
    p.add_argument("--shards", help="stream shards to consume, e.g. 0-3 or 0,2 (default: all of "
                                    "METRICSMITH_STREAM_SHARDS); one consumer thread per shard")
    p.add_argument("--batch-size", type=int_at_least(1), default=5000)
    p.add_argument("--block-ms", type=int_at_least(0), default=1000, help="how long one read waits for new entries")
    p.add_argument("--claim-idle-ms", type=int_at_least(0), default=30_000,
                   help="claim other consumers' entries pending longer than this (XAUTOCLAIM)")
    p.add_argument("--lock-ttl-ms", type=int_at_least(1), default=10_000, help="expiry of the apply lock if a consumer dies")
    p.add_argument("--until-idle", action="store_true", help="stop when the stream is drained")
    p.add_argument("--max-entries", type=int_at_least(1), help="stop after about this many entries")
    p.add_argument("--progress", action="store_true", help="print running totals")
    p.add_argument("--allow-quarantine", action="store_true",
                   help="exit 0 even when some entries were quarantined (as `metricsmith load`)")
    retention(p)
    p.set_defaults(handler=_consume)

    p = rt.add_parser("export", help="print the realtime metrics in Prometheus text format")
    p.add_argument("--no-extra", action="store_true", help="only realtime metrics (no cache statistics etc.)")
    p.set_defaults(handler=_export)

    p = rt.add_parser("serve", help="serve GET /metrics over HTTP for Prometheus")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=port_number, default=9464)
    p.add_argument("--no-extra", action="store_true")
    p.set_defaults(handler=_serve)

    p = rt.add_parser("snapshot", help="write the Redis values to metricsmith.realtime_metrics_cache")
    p.add_argument("--keep-days", type=int_at_least(1), default=7, help="delete snapshots older than this")
    retention(p)
    p.set_defaults(handler=_snapshot)

    p = rt.add_parser("reconcile", help="recompute event metrics from raw.events, correct Redis, record drift")
    p.add_argument("--days", type=int_at_least(1), default=1, help="today and the N-1 days before (default 1: today)")
    p.add_argument("--day", action="append", type=_day_arg, help="a specific day YYYY-MM-DD (repeatable)")
    p.add_argument("--fail-on-drift", action="store_true", help="exit status 1 when anything was corrected")
    retention(p)
    p.set_defaults(handler=_reconcile)

    p = rt.add_parser("restore", help="refill an emptied Redis from the latest snapshot plus raw.events")
    p.add_argument("--force", action="store_true", help="restore even though Redis still holds data")
    retention(p)
    p.set_defaults(handler=_restore)
