"""``metricsmith api`` (serve the HTTP API and dashboard) and ``metricsmith api-key create|list|revoke``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from metricsmith import db, migrate
from metricsmith.api.config import DEFAULT_HOST, DEFAULT_PORT, load_api_settings
from metricsmith.errors import int_at_least, port_number


def _serve(args: argparse.Namespace) -> int:
    import uvicorn  # the server only for this command

    settings = load_api_settings()
    host = args.host or settings.host
    port = settings.port if args.port is None else args.port
    workers = args.workers or settings.workers
    migrate.upgrade()  # the key table and everything the endpoints read
    mode = "public read of the core marts" if settings.public_read else "API key required"
    print(f"metricsmith API and dashboard at http://{host}:{port}/ ({workers} worker(s), {mode}; "
          f"API docs at /docs; Ctrl-C to stop)", file=sys.stderr)
    uvicorn.run("metricsmith.api.app:create_app", factory=True, host=host, port=port, workers=workers,
                log_level=args.log_level, access_log=args.access_log)
    return 0


@contextmanager
def _key_store() -> Iterator[Any]:
    """An autocommit connection to a database with the key table (pending migrations applied)."""
    migrate.upgrade()
    with db.connect(autocommit=True) as conn:
        yield conn


def _create(args: argparse.Namespace) -> int:
    from metricsmith.api import keys

    with _key_store() as conn:
        key, record = keys.create(conn, args.user, name=args.name or "", expires_days=args.expires)
    expiry = "never expires" if record.expires_at is None else f"expires {record.expires_at:%Y-%m-%d %H:%M} UTC"
    print(key)
    print(f"API key {keys.PREFIX}{record.key_id} for {record.principal} ({expiry}); it is shown only this once",
          file=sys.stderr)
    return 0


def _list(args: argparse.Namespace) -> int:
    from metricsmith.api import keys

    with _key_store() as conn:
        rows = keys.list_keys(conn, args.user)
    print(f"{'key id':<17} {'user':<16} {'name':<16} {'state':<8} {'created':<17} {'last used':<17} expires")
    for k in rows:
        def ts(v: object) -> str:
            return "-" if v is None else f"{v:%Y-%m-%d %H:%M}"
        print(f"{keys.PREFIX}{k.key_id:<13} {k.principal:<16} {k.name[:16]:<16} {k.state:<8} {ts(k.created_at):<17} "
              f"{ts(k.last_used_at):<17} {ts(k.expires_at)}")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    from metricsmith.api import keys

    with _key_store() as conn:
        record = keys.revoke(conn, args.key_id)
    print(f"revoked {keys.PREFIX}{record.key_id} of {record.principal}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("api", help="serve the HTTP API and the dashboard (uvicorn)")
    p.add_argument("--host", help=f"listen address (METRICSMITH_API_HOST, default {DEFAULT_HOST})")
    p.add_argument("--port", type=port_number, help=f"TCP port (METRICSMITH_API_PORT, default {DEFAULT_PORT})")
    p.add_argument("--workers", type=int_at_least(1), help="worker processes (METRICSMITH_API_WORKERS, default 1)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.set_defaults(handler=_serve)

    keys_parser = sub.add_parser("api-key", help="create, list or revoke API keys")
    actions = keys_parser.add_subparsers(dest="api_key_command", metavar="ACTION")
    actions.required = True
    p = actions.add_parser("create", help="create a key acting as a user; prints it once")
    p.add_argument("--as", dest="user", required=True, help="the user the key acts as (metricsmith metrics user)")
    p.add_argument("--name", help="a label for the key")
    p.add_argument("--expires", type=int_at_least(1), metavar="DAYS", help="expire after DAYS days (default: never)")
    p.set_defaults(handler=_create)
    p = actions.add_parser("list", help="list keys (never the keys themselves)")
    p.add_argument("--as", dest="user", help="only this user's keys")
    p.set_defaults(handler=_list)
    p = actions.add_parser("revoke", help="revoke a key by its id (msk_<id>) or the key itself")
    p.add_argument("key_id")
    p.set_defaults(handler=_revoke)
