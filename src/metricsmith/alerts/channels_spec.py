"""Channel declarations of ``alerts.yml`` (``channels:``): type, target, retry policy.

Secrets never live in the file: a webhook's HMAC secret is ``secret_env`` and an SMTP password
``password_env``, the *names* of environment variables read at delivery time. A key that looks
like a secret (``secret``, ``password``, ``token``) is refused with that advice.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from metricsmith.alerts.errors import ExpressionError
from metricsmith.alerts.expr import parse_duration

TYPES = ("webhook", "alertmanager", "email", "log", "file")
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_ENV = re.compile(r"[A-Z_][A-Z0-9_]{0,127}")
_SECRET_KEYS = ("secret", "password", "token", "api_key")
_COMMON = {"type", "retries", "backoff", "max_backoff", "timeout"}
_KEYS: dict[str, set[str]] = {
    "webhook": {"url", "secret_env"},
    "alertmanager": {"url"},
    "email": {"host", "port", "from", "to", "starttls", "username", "password_env"},
    "log": set(),
    "file": {"path"},
}


@dataclass(frozen=True)
class ChannelSpec:
    name: str
    type: str
    line: int
    url: str | None = None
    secret_env: str | None = None
    host: str | None = None
    port: int = 25
    sender: str | None = None
    to: tuple[str, ...] = ()
    starttls: bool = False
    username: str | None = None
    password_env: str | None = None
    path: str | None = None
    #: attempts in all (the first and the retries)
    attempts: int = 5
    #: seconds before the second attempt; doubled each time up to ``max_backoff``
    backoff: float = 10.0
    max_backoff: float = 600.0
    timeout: float = 10.0
    extra: dict[str, Any] = field(default_factory=dict)

    def delay(self, failed_attempts: int) -> float:
        """Seconds to wait after ``failed_attempts`` failures (exponential, capped)."""
        return float(min(self.max_backoff, self.backoff * (2 ** max(0, failed_attempts - 1))))


def _seconds(value: Any, what: str) -> float:
    if isinstance(value, bool):
        raise ExpressionError(f"{what}: expected seconds or a duration, got {value!r}")
    if isinstance(value, int | float):
        if not 0 <= value <= 86400:
            raise ExpressionError(f"{what}: {value} is not between 0 and 86400 seconds")
        return float(value)
    return float(parse_duration(value))


def _url(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ExpressionError(f"{what}: url is required (http:// or https://)")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ExpressionError(f"{what}: url {value!r} must be http:// or https:// with a host")
    return value


def _env(value: Any, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _ENV.fullmatch(value):
        raise ExpressionError(f"{what}: {value!r} must name an environment variable (A-Z, 0-9, _)")
    return value


def _email(spec: dict[str, Any], what: str) -> dict[str, Any]:
    host, to = spec.get("host"), spec.get("to")
    if not isinstance(host, str) or not host:
        raise ExpressionError(f"{what}: host is required")
    to_list = [to] if isinstance(to, str) else to
    if not isinstance(to_list, list) or not to_list or not all(isinstance(a, str) and "@" in a for a in to_list):
        raise ExpressionError(f"{what}: to must be one or more e-mail addresses")
    port = spec.get("port", 25)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ExpressionError(f"{what}: port {port!r} is not a TCP port")
    sender = spec.get("from", "metricsmith@localhost")
    if not isinstance(sender, str) or "@" not in sender:
        raise ExpressionError(f"{what}: from {sender!r} is not an e-mail address")
    return {"host": host, "port": port, "sender": sender, "to": tuple(to_list),
            "starttls": bool(spec.get("starttls", False)), "username": spec.get("username"),
            "password_env": _env(spec.get("password_env"), f"{what}: password_env")}


def _target(kind: str, spec: dict[str, Any], what: str) -> dict[str, Any]:
    if kind == "webhook":
        return {"url": _url(spec.get("url"), what), "secret_env": _env(spec.get("secret_env"), f"{what}: secret_env")}
    if kind == "alertmanager":
        return {"url": _url(spec.get("url"), what)}
    if kind == "email":
        return _email(spec, what)
    if kind == "file":
        path = spec.get("path")
        if not isinstance(path, str) or not path.strip():
            raise ExpressionError(f"{what}: path is required (a JSON-lines file)")
        return {"path": path}
    return {}


def parse(name: Any, spec: Any, line: int) -> ChannelSpec:
    what = f"channel {name}"
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ExpressionError(f"channel name {name!r} must match {_NAME.pattern}")
    if not isinstance(spec, dict):
        raise ExpressionError(f"{what}: expected a mapping with type: {'|'.join(TYPES)}")
    kind = spec.get("type")
    if kind not in TYPES:
        raise ExpressionError(f"{what}: unknown type {kind!r}: use {', '.join(TYPES)}")
    for key in spec:
        if key in _SECRET_KEYS:
            raise ExpressionError(f"{what}: {key!r} must not be written in the file: put the secret in an "
                                  f"environment variable and name it with {key.split('_')[0]}_env")
    unknown = sorted(set(spec) - _COMMON - _KEYS[kind])
    if unknown:
        raise ExpressionError(f"{what}: unknown key(s) {', '.join(unknown)} for type {kind}")
    attempts = spec.get("retries", 4)
    if isinstance(attempts, bool) or not isinstance(attempts, int) or not 0 <= attempts <= 20:
        raise ExpressionError(f"{what}: retries {attempts!r}: a whole number 0..20")
    return ChannelSpec(
        name=name, type=kind, line=line, attempts=attempts + 1,
        backoff=_seconds(spec.get("backoff", 10), f"{what}: backoff"),
        max_backoff=_seconds(spec.get("max_backoff", 600), f"{what}: max_backoff"),
        timeout=_seconds(spec.get("timeout", 10), f"{what}: timeout") or 10.0,
        **_target(kind, spec, what),
    )
