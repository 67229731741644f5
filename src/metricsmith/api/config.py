"""The API's settings: one ``METRICSMITH_API_*`` environment variable each."""

from __future__ import annotations

import os
from dataclasses import dataclass

from metricsmith.config import ConfigError, env_flag

ENV_HOST = "METRICSMITH_API_HOST"
ENV_PORT = "METRICSMITH_API_PORT"
ENV_WORKERS = "METRICSMITH_API_WORKERS"
ENV_PUBLIC_READ = "METRICSMITH_API_PUBLIC_READ"
ENV_MAX_RANGE_DAYS = "METRICSMITH_API_MAX_RANGE_DAYS"
ENV_STREAM_INTERVAL = "METRICSMITH_API_STREAM_INTERVAL"

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8750


@dataclass(frozen=True)
class ApiSettings:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    workers: int = 1
    #: core marts readable without a key (a read-only dashboard screen)
    public_read: bool = False
    #: the longest ``start .. end`` range a metrics request may ask for
    max_range_days: int = 3660
    #: seconds between two Server-Sent Events of /v1/realtime/stream (at least 1)
    stream_interval: float = 1.0


def _int(source: dict[str, str] | os._Environ[str], name: str, default: int, low: int, high: int) -> int:
    text = source.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{name}={text!r} is not a whole number") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}={value} must be within {low}..{high}")
    return value


def load_api_settings(env: dict[str, str] | None = None) -> ApiSettings:
    """Resolve the API settings from ``env`` (default ``os.environ``); empty values count as unset."""
    source = os.environ if env is None else env
    interval_text = source.get(ENV_STREAM_INTERVAL, "").strip() or "1"
    try:
        interval = float(interval_text)
    except ValueError:
        raise ConfigError(f"{ENV_STREAM_INTERVAL}={interval_text!r} is not a number of seconds") from None
    if not 1 <= interval <= 3600:
        raise ConfigError(f"{ENV_STREAM_INTERVAL}={interval} must be within 1..3600 seconds (at most one event a second)")
    return ApiSettings(
        host=source.get(ENV_HOST, "").strip() or DEFAULT_HOST,
        port=_int(source, ENV_PORT, DEFAULT_PORT, 0, 65535),
        workers=_int(source, ENV_WORKERS, 1, 1, 64),
        public_read=env_flag(ENV_PUBLIC_READ, source.get(ENV_PUBLIC_READ)),
        max_range_days=_int(source, ENV_MAX_RANGE_DAYS, 3660, 1, 366 * 20),
        stream_interval=interval,
    )
