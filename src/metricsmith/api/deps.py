"""What the routers share: the app state (query service, pools, key verifier) and the auth
dependencies (``caller``, ``require_user``, ``marts_reader``)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

import psycopg
from fastapi import Depends, Request
from psycopg_pool import ConnectionPool

from metricsmith import db
from metricsmith.api.config import ApiSettings
from metricsmith.api.errors import Unauthorized
from metricsmith.api.keys import KeyVerifier
from metricsmith.config import Settings
from metricsmith.custom_metrics.service import CustomMetricsService
from metricsmith.query import MetricsQueryService
from metricsmith.realtime.service import RealtimeMetricsService

T = TypeVar("T")

#: pooled PostgreSQL connections per process (key checks, visibility, job runs, readiness)
POOL_SIZE = 8


@dataclass
class ApiState:
    settings: Settings
    api: ApiSettings
    query: MetricsQueryService
    verifier: KeyVerifier = field(default_factory=KeyVerifier)
    _pool: ConnectionPool[Any] | None = None
    _realtime: RealtimeMetricsService | None = None
    _custom: CustomMetricsService | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def schema(self) -> str:
        return self.query.schema

    def _once(self, attr: str, make: Callable[[], T]) -> T:
        """The object kept in ``attr``, made on first use (once, whichever thread asks first)."""
        with self._lock:
            if getattr(self, attr) is None:
                setattr(self, attr, make())
            made: T = getattr(self, attr)
            return made

    def _open_pool(self) -> ConnectionPool[Any]:
        pool: ConnectionPool[Any] = ConnectionPool(
            db.database_url(self.settings), min_size=1, max_size=POOL_SIZE, open=False,
            kwargs={"autocommit": True, "connect_timeout": 5})
        pool.open(wait=True, timeout=10)
        return pool

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled autocommit connection (keys, job runs, readiness)."""
        with self._once("_pool", self._open_pool).connection() as conn:
            yield conn

    @property
    def realtime(self) -> RealtimeMetricsService:
        return self._once("_realtime", lambda: RealtimeMetricsService(self.settings))

    @property
    def custom(self) -> CustomMetricsService:
        return self._once("_custom", lambda: CustomMetricsService(self.settings))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self._realtime is not None:
            self._realtime.close()
            self._realtime = None
        self.query.close()


# the dependencies that do no I/O are async: FastAPI runs a sync one in the thread pool, a hop each

async def get_state(request: Request) -> ApiState:
    state: ApiState = request.app.state.api
    return state


State = Annotated[ApiState, Depends(get_state)]


def caller(request: Request, state: State) -> str | None:
    """The user of the request's API key; None without one; 401 for a bad, expired or revoked key."""
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized("the Authorization header must be 'Bearer <API key>'")
    with state.connection() as conn:
        user = state.verifier.principal(conn, key.strip())
    if user is None:
        raise Unauthorized("the API key is unknown, expired or revoked; create one with `metricsmith api-key create`")
    return user


Caller = Annotated[str | None, Depends(caller)]


async def require_user(user: Caller) -> str:
    if user is None:
        raise Unauthorized("an API key is required: send 'Authorization: Bearer <key>' "
                           "(create one with `metricsmith api-key create --as USER`)")
    return user


async def marts_reader(user: Caller, state: State) -> str | None:
    """Core marts: any valid key, or nobody at all in public-read mode."""
    if user is None and not state.api.public_read:
        return await require_user(user)
    return user


User = Annotated[str, Depends(require_user)]
MartsReader = Annotated[str | None, Depends(marts_reader)]
