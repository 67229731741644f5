"""Direct RESP connections for the two hot paths: reads (``get_counter``, ``get_gauge``) and
``track_many``'s XADDs.

A :class:`DirectConnection` is opened by redis-py (so AUTH, SELECT, TLS and unix sockets are its
own; RESP2, so no push message can interleave with a reply), then used directly: commands are
packed by hiredis and written to the socket in one call, replies parsed by hiredis from the
socket - no pool checkout, no retry wrapper, no response callbacks. Any error closes the
connection; callers then go once more through the ordinary client (which reconnects), so nothing
fails because of this shortcut.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import hiredis
import redis

#: RESP encoding of one command (hiredis' stubs declare a one-element tuple only)
pack: Any = hiredis.pack_command
#: packed commands kept by a DirectReader (one per metric and label set read); starts over beyond it
MAX_PACKED = 10_000


class DirectConnection:
    """One connection of ``pool``'s server (not thread-safe: one owner at a time)."""

    def __init__(self, pool: redis.ConnectionPool) -> None:
        self.pool = pool
        self._conn: Any = None
        self._sock: Any = None
        self._reader = hiredis.Reader()

    def execute(self, *args: str | bytes | int) -> Any:
        """One command (packed here, not cached)."""
        return self.call_many([pack(args)])[0]

    def call_many(self, packed: Sequence[bytes]) -> list[Any]:
        """Send packed commands in one write, read their replies; a Redis error reply raises
        ``redis.ResponseError`` (after every reply was read, as a redis-py pipeline does)."""
        try:
            if self._sock is None:
                self._connect()
            self._sock.sendall(b"".join(packed) if len(packed) > 1 else packed[0])
            replies = [self._reply() for _ in range(len(packed))]
        except BaseException:
            self.close()
            raise
        for reply in replies:
            if isinstance(reply, hiredis.ReplyError):
                raise redis.ResponseError(str(reply))
        return replies

    def _connect(self) -> None:
        conn: Any = self.pool.connection_class(**{**self.pool.connection_kwargs, "protocol": 2})
        conn.connect()  # the handshake (AUTH, SELECT) is redis-py's
        self._conn, self._sock = conn, conn._sock
        self._reader = hiredis.Reader()

    def _reply(self) -> Any:
        reader, sock = self._reader, self._sock
        reply = reader.gets()
        while reply is False:
            data = sock.recv(1 << 16)
            if not data:
                raise redis.ConnectionError("Redis closed the connection")
            reader.feed(data)
            reply = reader.gets()
        return reply

    def close(self) -> None:
        if self._conn is not None:
            self._conn.disconnect()
        self._conn = self._sock = None


class DirectReader(DirectConnection):
    """HGET with the packed command of each (key, field) kept."""

    def __init__(self, pool: redis.ConnectionPool) -> None:
        super().__init__(pool)
        self._packed: dict[tuple[str, str], bytes] = {}

    def hget(self, key: str, field: str) -> bytes | None:
        packed = self._packed.get((key, field))
        if packed is None:
            if len(self._packed) >= MAX_PACKED:
                self._packed.clear()
            packed = self._packed[(key, field)] = pack(("HGET", key, field))
        reply: bytes | None = self.call_many([packed])[0]
        return reply
