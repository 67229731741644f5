"""Connections to the configured PostgreSQL and Redis (embedded default or real servers)."""

from __future__ import annotations

from typing import Any

import psycopg

from metricsmith import embedded
from metricsmith.config import PostgresParams, Settings, load_settings


def database_url(settings: Settings | None = None) -> str:
    """The PostgreSQL URL in use, starting the embedded server when no URL is configured."""
    settings = settings or load_settings()
    if settings.database_url is not None:
        return settings.database_url
    return embedded.ensure_postgres(settings).url


def redis_url(settings: Settings | None = None) -> str:
    """The Redis URL in use: the configured one (``redis://`` or ``redis+cluster://``), the local
    cluster's with ``METRICSMITH_REDIS_CLUSTER=1`` and no URL, else the embedded server's
    (started when needed)."""
    settings = settings or load_settings()
    if settings.redis_url is not None:
        return settings.redis_url
    if settings.redis_cluster:
        from metricsmith.rediscluster.local import LocalCluster

        return LocalCluster(settings).url()
    return embedded.ensure_redis(settings).url


def connect(settings: Settings | None = None, *, autocommit: bool = False, **kwargs: Any) -> psycopg.Connection[Any]:
    """A new psycopg 3 connection to the metricsmith database."""
    kwargs.setdefault("connect_timeout", 10)
    return psycopg.connect(database_url(settings), autocommit=autocommit, **kwargs)


def redis_client(settings: Settings | None = None, **kwargs: Any) -> Any:
    """A redis-py client for the configured Redis: ``redis.Redis``, or ``RedisCluster`` on a
    cluster (:func:`metricsmith.rediscluster.client`, the one factory)."""
    from metricsmith.rediscluster import client

    return client(settings, **kwargs)


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


