"""Connections to the configured PostgreSQL and Redis (embedded default or real servers)."""

from __future__ import annotations

from typing import Any

import psycopg
import redis

from metricsmith import embedded
from metricsmith.config import PostgresParams, Settings, load_settings


def database_url(settings: Settings | None = None) -> str:
    """The PostgreSQL URL in use, starting the embedded server when no URL is configured."""
    settings = settings or load_settings()
    if settings.database_url is not None:
        return settings.database_url
    return embedded.ensure_postgres(settings).url


def redis_url(settings: Settings | None = None) -> str:
    """The Redis URL in use, starting the embedded server when no URL is configured."""
    settings = settings or load_settings()
    if settings.redis_url is not None:
        return settings.redis_url
    return embedded.ensure_redis(settings).url


def connect(settings: Settings | None = None, *, autocommit: bool = False, **kwargs: Any) -> psycopg.Connection[Any]:
    """A new psycopg 3 connection to the metricsmith database."""
    kwargs.setdefault("connect_timeout", 10)
    return psycopg.connect(database_url(settings), autocommit=autocommit, **kwargs)


def redis_client(settings: Settings | None = None, **kwargs: Any) -> redis.Redis:
    """A redis-py client for the configured Redis (``decode_responses`` off unless asked)."""
    kwargs.setdefault("socket_timeout", 5)
    kwargs.setdefault("socket_connect_timeout", 5)
    return redis.Redis.from_url(redis_url(settings), **kwargs)


def postgres_params(settings: Settings | None = None) -> PostgresParams:
    return PostgresParams.from_url(database_url(settings))


def dbt_env(settings: Settings | None = None) -> dict[str, str]:
    """Environment that ``profiles/profiles.yml`` reads, for the database in use."""
    settings = settings or load_settings()
    params = postgres_params(settings)
    return {
        "METRICSMITH_PGHOST": params.host,
        "METRICSMITH_PGPORT": str(params.port),
        "METRICSMITH_PGUSER": params.user,
        "METRICSMITH_PGPASSWORD": params.password,
        "METRICSMITH_PGDATABASE": params.dbname,
        "METRICSMITH_TIMEZONE": settings.timezone,
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
        "DO_NOT_TRACK": "1",
    }


