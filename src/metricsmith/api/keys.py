"""API keys: ``msk_<id>_<secret>``, stored as a salted scrypt hash with their principal.

The key is printed once by ``metricsmith api-key create``; PostgreSQL keeps only the key id
(for the lookup), the salt and the scrypt hash, the principal (a ``metricsmith.users`` user),
the name, creation, last use, expiry and revocation. Every request reads the key's row (so a
revocation or expiry takes effect at once); the scrypt check itself is remembered per process
for a verified (id, hash) pair, so the hot path costs one indexed lookup, not a key derivation.
``last_used_at`` is written at most once a minute per key.

The table is migration ``0050_api_keys``; ``metricsmith api`` and ``metricsmith api-key`` apply
pending migrations before they start.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from metricsmith.custom_metrics import access
from metricsmith.errors import UserFacingError

TABLE = "metricsmith.api_keys"
PREFIX = "msk_"
_KEY = re.compile(r"msk_([a-z0-9]{12})_([A-Za-z0-9_-]{43})")
_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}
LAST_USED_EVERY = 60.0

class ApiKeyError(UserFacingError):
    """An API key command that cannot be done as asked (unknown user, unknown key ...)."""


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    name: str
    principal: str
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None

    @property
    def state(self) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= datetime.now(UTC):
            return "expired"
        return "active"


def _hash(secret: str, salt: bytes) -> bytes:
    return hashlib.scrypt(secret.encode(), salt=salt, **_SCRYPT)


def create(conn: Any, user: str, *, name: str = "", expires_days: int | None = None) -> tuple[str, ApiKey]:
    """A new key for ``user`` (a declared custom-metrics user): ``(the key, its record)``."""
    access.principal(conn, user)  # unknown user -> AccessDenied with the command that adds it
    if len(name) > 100:
        raise ApiKeyError("--name must be at most 100 characters")
    key_id = "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(12))
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_bytes(16)
    expires = None if expires_days is None else datetime.now(UTC) + timedelta(days=expires_days)
    row = conn.execute(
        f"insert into {TABLE} (key_id, name, principal, salt, key_hash, expires_at) values (%s, %s, %s, %s, %s, %s)"
        " returning key_id, name, principal, created_at, last_used_at, expires_at, revoked_at",
        (key_id, name, user, salt, _hash(secret, salt), expires)).fetchone()
    return f"{PREFIX}{key_id}_{secret}", ApiKey(*row)


def list_keys(conn: Any, user: str | None = None) -> list[ApiKey]:
    rows = conn.execute(
        f"select key_id, name, principal, created_at, last_used_at, expires_at, revoked_at from {TABLE}"
        " where %s::text is null or principal = %s order by created_at, key_id", (user, user)).fetchall()
    return [ApiKey(*r) for r in rows]


def revoke(conn: Any, key_id: str) -> ApiKey:
    """Revoke a key by its id (the ``msk_<id>`` part, or the whole key)."""
    match = _KEY.fullmatch(key_id)
    kid = match.group(1) if match else key_id.removeprefix(PREFIX)
    row = conn.execute(
        f"update {TABLE} set revoked_at = coalesce(revoked_at, now()) where key_id = %s"
        " returning key_id, name, principal, created_at, last_used_at, expires_at, revoked_at", (kid,)).fetchone()
    if row is None:
        raise ApiKeyError(f"no API key {kid!r}; `metricsmith api-key list` shows them")
    return ApiKey(*row)


class KeyVerifier:
    """Checks ``Authorization: Bearer`` keys against the table (one per app)."""

    def __init__(self) -> None:
        self._verified: dict[tuple[str, bytes], bytes] = {}
        self._last_used: dict[str, float] = {}
        self._lock = threading.Lock()

    def principal(self, conn: Any, key: str) -> str | None:
        """The key's user, or None when the key is malformed, unknown, revoked or expired."""
        match = _KEY.fullmatch(key)
        if match is None:
            return None
        key_id, secret = match.groups()
        row = conn.execute(
            f"select principal, salt, key_hash, revoked_at is null and (expires_at is null or expires_at > now())"
            f" from {TABLE} where key_id = %s", (key_id,)).fetchone()
        if row is None or not row[3]:
            return None
        user, salt, stored = row[0], bytes(row[1]), bytes(row[2])
        digest = hashlib.sha256(secret.encode()).digest()
        with self._lock:
            known = self._verified.get((key_id, stored))
        if known is None or not hmac.compare_digest(known, digest):
            if not hmac.compare_digest(_hash(secret, salt), stored):
                return None
            with self._lock:
                self._verified[(key_id, stored)] = digest
        self._touch(conn, key_id)
        return str(user)

    def _touch(self, conn: Any, key_id: str) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last_used.get(key_id, -LAST_USED_EVERY) < LAST_USED_EVERY:
                return
            self._last_used[key_id] = now
        conn.execute(f"update {TABLE} set last_used_at = now() where key_id = %s", (key_id,))
