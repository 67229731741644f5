"""The hot read path of :class:`metricsmith.realtime.RealtimeMetricsService` (``get_counter``, ``get_gauge``).

One dedicated connection, opened by redis-py (so AUTH, SELECT, TLS and unix sockets are its
own), then used directly: the HGET of a (key, field) is packed once and kept, written to the
socket in one call, and its reply parsed by hiredis from the socket - no pool checkout, no retry
wrapper, no response callback, one round trip. Any error closes the connection; the caller then
asks once more through the ordinary client (which reconnects), so a read never fails because of
this shortcut.
"""

from __future__ import annotations

from typing import Any

import hiredis
import redis

#: RESP encoding of one command (hiredis' stubs declare a one-element tuple only)
_pack: Any = hiredis.pack_command
#: packed commands kept (one per metric and label set read); the cache starts over beyond it
MAX_PACKED = 10_000


class DirectReader:
    """HGET on one connection of ``pool`` (not thread-safe: the caller holds a lock)."""

    def __init__(self, pool: redis.ConnectionPool) -> None:
        self.pool = pool
        self._conn: Any = None
        self._sock: Any = None
        self._reader = hiredis.Reader()
        self._packed: dict[tuple[str, str], bytes] = {}

    def hget(self, key: str, field: str) -> bytes | None:
        packed = self._packed.get((key, field))
        if packed is None:
            if len(self._packed) >= MAX_PACKED:
                self._packed.clear()
            packed = self._packed[(key, field)] = _pack(("HGET", key, field))
        reply: bytes | None = self._call(packed)
        return reply

    def execute(self, *args: str | bytes | int) -> Any:
        """Any command on this connection (not cached)."""
        return self._call(_pack(args))

    def _call(self, packed: bytes) -> Any:
        try:
            if self._sock is None:
                self._connect()
            self._sock.sendall(packed)
            reply = self._reply()
        except BaseException:
            self.close()
            raise
        if isinstance(reply, hiredis.ReplyError):
            raise redis.ResponseError(str(reply))
        return reply

    def _connect(self) -> None:
        conn: Any = self.pool.make_connection()
        conn.connect()  # the handshake (AUTH, SELECT, HELLO) is redis-py's
        self._conn, self._sock = conn, conn._sock
        self._reader = hiredis.Reader()

    def _reply(self) -> Any:
        reader, sock = self._reader, self._sock
        reply = reader.gets()
        while reply is False:
            data = sock.recv(65536)
            if not data:
                raise redis.ConnectionError("Redis closed the connection")
            reader.feed(data)
            reply = reader.gets()
        return reply

    def close(self) -> None:
        if self._conn is not None:
            self._conn.disconnect()
        self._conn = self._sock = None
