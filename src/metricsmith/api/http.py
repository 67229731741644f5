"""HTTP caching of read responses: a strong ETag over the body, ``Cache-Control: max-age`` from
the cache tier of the data, and ``If-None-Match`` answered with 304."""

from __future__ import annotations

from fastapi import Request
from starlette.responses import Response

from metricsmith.api.serialization import etag

#: open periods (today's data is still arriving) are never cached longer than this by clients
MAX_OPEN_AGE = 300


def _matches(header: str | None, tag: str) -> bool:
    if not header:
        return False
    if header.strip() == "*":
        return True
    return any(part.strip() == tag for part in header.split(","))


def cached(request: Request, body: bytes, media_type: str, max_age: int) -> Response:
    """``body`` with its ETag and max-age, or an empty 304 when the client already holds it."""
    tag = etag(body)
    headers = {"ETag": tag, "Cache-Control": f"max-age={max(0, int(max_age))}", "Vary": "Accept, Authorization"}
    if _matches(request.headers.get("if-none-match"), tag):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=media_type, headers=headers)
