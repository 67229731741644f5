"""Foundation commands: up, down, status, env, db upgrade/status, load, generate."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable

from metricsmith import db, embedded, migrate
from metricsmith.cli.args import day
from metricsmith.config import Settings, load_settings
from metricsmith.errors import UserFacingError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("up", help="start the embedded servers (if used) and apply migrations")
    p.set_defaults(handler=cmd_up)

    p = sub.add_parser("down", help="stop the embedded PostgreSQL and Redis")
    p.set_defaults(handler=cmd_down)

    p = sub.add_parser("status", help="which servers are in use and whether they answer")
    p.set_defaults(handler=cmd_status)

    p = sub.add_parser("env", help="print shell exports for dbt and psql: eval \"$(metricsmith env)\"")
    p.set_defaults(handler=cmd_env)

    p = sub.add_parser("db", help="schema migrations")
    dbsub = p.add_subparsers(dest="db_command", metavar="ACTION")
    dbsub.required = True
    dbsub.add_parser("upgrade", help="apply pending migrations (idempotent)").set_defaults(handler=cmd_db_upgrade)
    dbsub.add_parser("status", help="list migrations and whether applied").set_defaults(handler=cmd_db_status)

    p = sub.add_parser("load", help="load events from JSON Lines or CSV files (or - for stdin)")
    p.add_argument("files", nargs="*", default=["-"], help="files to load; '-' or none reads stdin")
    p.add_argument("--format", choices=["auto", "jsonl", "csv"], default="auto",
                   help="input format (default: by file extension; stdin defaults to jsonl)")
    p.add_argument("--allow-quarantine", action="store_true",
                   help="exit 0 even when some rows were quarantined")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--engine", choices=["postgres", "spark"], default=None,
                   help="where raw.events lives (default: METRICSMITH_ENGINE, else postgres)")
    p.set_defaults(handler=cmd_load)

    p = sub.add_parser("generate", help="write realistic, deterministic events into raw.events")
    p.add_argument("--days", type=int, default=365)
    p.add_argument("--events-per-day", type=int, default=10_000, help="average events per day")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--start", type=day, default=None,
                   help="first day (YYYY-MM-DD); default: --days before today")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--engine", choices=["postgres", "spark"], default=None,
                   help="where raw.events lives (default: METRICSMITH_ENGINE, else postgres)")
    p.set_defaults(handler=cmd_generate)


def cmd_up(args: argparse.Namespace) -> int:
    settings = load_settings()
    applied = migrate.upgrade(settings)
    print(f"postgres: {_redact(db.database_url(settings))}  ({'embedded' if settings.embedded_postgres else 'external'})")
    print(f"redis:    {db.redis_url(settings)}  ({'embedded' if settings.embedded_redis else 'external'})")
    print(f"migrations applied now: {len(applied)}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    settings = load_settings()
    pg = embedded.stop_postgres(settings)
    rd = embedded.stop_redis(settings)
    print(f"embedded postgres: {'stopped' if pg else 'was not running'}")
    print(f"embedded redis:    {'stopped' if rd else 'was not running'}")
    if not settings.embedded_postgres or not settings.embedded_redis:
        print("external servers named by METRICSMITH_*_URL are never stopped by metricsmith")
    return 0


def _redact(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def _server_url(settings: Settings, server: str, external: str | None) -> tuple[str | None, str]:
    """(URL, or None when the embedded one was never created; "embedded" or "external")."""
    if external is None:
        state = embedded.read_state(settings.home, server)
        return (state.url if state else None), "embedded"
    return external, "external"


def _postgres_version(url: str) -> str:
    import psycopg

    with psycopg.connect(url, connect_timeout=3) as conn:
        version = conn.execute("show server_version").fetchone()
    return f"PostgreSQL {version[0] if version else '?'}"


def _redis_version(url: str) -> str:
    from metricsmith import rediscluster

    client = rediscluster.client(redis_url=url, socket_timeout=3, socket_connect_timeout=3)
    version = client.info("server").get("redis_version")
    if rediscluster.is_cluster(client):
        shape = rediscluster.describe(client)
        return (f"Redis {version}, cluster {shape.get('state')}: {shape.get('masters')} masters, "
                f"{shape.get('replicas')} replicas")
    return f"Redis {version}"


def _report(label: str, url: str | None, kind: str, probe: Callable[[str], str],
            errors: tuple[type[BaseException], ...], first_line: bool) -> bool:
    """Print one server's line; False when it does not answer."""
    if url is None:
        print(f"{label:<9} embedded, not created yet (any command that needs it starts it)")
        return True
    try:
        print(f"{label:<9} {kind} {_redact(url)}  answers ({probe(url)})")
        return True
    except errors as exc:
        reason = str(exc).strip().splitlines()[0] if first_line else str(exc)
        print(f"{label:<9} {kind} {_redact(url)}  DOES NOT ANSWER: {reason}")
        return False


def cmd_status(args: argparse.Namespace) -> int:
    import psycopg
    import redis

    settings = load_settings()
    print(f"home:     {settings.home}")
    print(f"timezone: {settings.timezone}")
    pg = _report("postgres:", *_server_url(settings, "postgres", settings.database_url), _postgres_version,
                 (psycopg.Error,), True)
    redis_where = (db.redis_url(settings), "local cluster") if settings.redis_cluster and not settings.redis_url \
        else _server_url(settings, "redis", settings.redis_url)
    rd = _report("redis:", *redis_where, _redis_version, (redis.RedisError,), False)
    from metricsmith.spark import status as spark_status

    return 0 if pg and rd and spark_status.report(settings) else 1


def cmd_env(args: argparse.Namespace) -> int:
    settings = load_settings()
    # the dbt profile follows METRICSMITH_DATABASE_URL; METRICSMITH_PG* would override it (stale in a shell)
    env = {k: v for k, v in db.dbt_env(settings).items() if not k.startswith("METRICSMITH_PG")}
    env["METRICSMITH_DATABASE_URL"] = db.database_url(settings)
    env["METRICSMITH_REDIS_URL"] = db.redis_url(settings)
    params = db.postgres_params(settings)
    env.update({"PGHOST": params.host, "PGPORT": str(params.port), "PGUSER": params.user,
                "PGDATABASE": params.dbname})
    if params.password:
        env["PGPASSWORD"] = params.password
    for key, value in env.items():
        print(f"export {key}={shlex.quote(value)}")
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    applied = migrate.upgrade(verbose=True)
    print(f"{len(applied)} migration(s) applied; database is up to date")
    return 0


def cmd_db_status(args: argparse.Namespace) -> int:
    for migration, applied in migrate.status():
        print(f"{migration.version:04d}_{migration.name:<40} {'applied' if applied else 'PENDING'}")
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    from metricsmith import ingest
    from metricsmith.spark.config import engine

    if engine(args.engine) == "spark":
        from metricsmith.spark import raw

        summary = raw.load_files(args.files, fmt=args.format)
        print(summary.render().replace("raw.events_quarantine", "raw.events_quarantine (Spark)"))
        return ingest.quarantine_exit_status(summary.quarantined, allow=args.allow_quarantine, command="load")
    migrate.upgrade()
    try:
        summary = ingest.load_files(args.files, fmt=args.format,
                                    progress=not args.no_progress and sys.stderr.isatty())
    except ingest.IngestError as exc:
        raise UserFacingError(f"{exc} (nothing was loaded from it)") from None
    print(summary.render())
    return ingest.quarantine_exit_status(summary.quarantined, allow=args.allow_quarantine, command="load")


def cmd_generate(args: argparse.Namespace) -> int:
    import psycopg

    from metricsmith import generator
    from metricsmith.spark.config import engine

    if engine(args.engine) == "spark":
        from metricsmith.spark import raw

        try:
            print(raw.generate(days=args.days, events_per_day=args.events_per_day, seed=args.seed,
                               start=args.start, progress=not args.no_progress and sys.stderr.isatty()).render())
        except ValueError as exc:
            raise UserFacingError(str(exc)) from None
        return 0
    migrate.upgrade()
    try:
        result = generator.generate_to_db(
            days=args.days, events_per_day=args.events_per_day, seed=args.seed, start=args.start,
            progress=not args.no_progress and sys.stderr.isatty(),
        )
    except ValueError as exc:
        raise UserFacingError(str(exc)) from None
    except psycopg.errors.UniqueViolation:
        raise UserFacingError(
            f"events for --seed {args.seed} in this range are already in raw.events (generated ids are "
            "deterministic); nothing more was written in the failing batch. Use another --seed or --start."
        ) from None
    print(result.render())
    return 0
