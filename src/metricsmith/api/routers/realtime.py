"""``/v1/realtime`` (every realtime metric's current values) and ``/v1/realtime/stream`` (the
same snapshot as Server-Sent Events, at most once a second, only when it changed; a comment
line every 15 s keeps idle connections open)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse

from metricsmith.api.deps import ApiState, State, User
from metricsmith.api.serialization import JSONResponse, dumps
from metricsmith.realtime.registry import MetricType
from metricsmith.realtime.service import HistogramValue, RealtimeMetricsService

router = APIRouter(prefix="/v1/realtime", tags=["realtime"])
QUANTILES = (0.5, 0.9, 0.99)
KEEPALIVE_SECONDS = 15.0


def _number(value: float) -> float | None:
    return None if math.isnan(value) or math.isinf(value) else value


def _value(kind: MetricType, value: Any) -> Any:
    if kind is MetricType.HISTOGRAM:
        assert isinstance(value, HistogramValue)
        return {"count": value.count, "sum": value.sum,
                "quantiles": {f"p{round(q * 100)}": _number(value.quantile(q)) for q in QUANTILES}}
    if kind is MetricType.RATE:
        return {f"{window}s": rate for window, rate in value.items()}
    return value


def snapshot(service: RealtimeMetricsService) -> dict[str, Any]:
    """Every declared metric with each label set's value (rates per second per window)."""
    metrics = []
    for spec in sorted(service.specs(), key=lambda s: s.name):
        series = [{"labels": labels, "value": _value(spec.type, value)} for labels, value in service.series(spec)]
        metrics.append({"name": spec.name, "type": str(spec.type), "help": spec.help, "series": series})
    return {"as_of": datetime.now(UTC), "metrics": metrics}


@router.get("", summary="Current counters, gauges, histogram quantiles and rates")
def realtime(state: State, user: User) -> JSONResponse:
    return JSONResponse(snapshot(state.realtime))


async def _events(request: Request, state: ApiState, interval: float, max_events: int | None) -> AsyncIterator[bytes]:
    sent, last, last_write = 0, b"", time.monotonic()
    yield b"retry: 2000\n\n"
    while max_events is None or sent < max_events:
        if await request.is_disconnected():
            return
        try:
            data = await run_in_threadpool(snapshot, state.realtime)
            payload, event = dumps({k: v for k, v in data.items() if k != "as_of"}), "snapshot"
        except Exception as exc:  # noqa: BLE001 - tell the page, keep the stream
            payload, event = dumps({"error": f"realtime unavailable: {type(exc).__name__}"}), "error"
        if payload != last:
            last = payload
            sent += 1
            last_write = time.monotonic()
            yield b"event: " + event.encode() + b"\ndata: " + payload + b"\n\n"
        elif time.monotonic() - last_write >= KEEPALIVE_SECONDS:
            last_write = time.monotonic()
            yield b": keep-alive\n\n"
        if max_events is not None and sent >= max_events:
            return
        await asyncio.sleep(interval)


@router.get("/stream", summary="Server-Sent Events: the realtime snapshot whenever it changes (at most 1/s)",
            response_class=StreamingResponse, responses={200: {"content": {"text/event-stream": {}}}})
async def stream(request: Request, state: State, user: User,
                 max_events: Annotated[int | None, Query(ge=1, le=100000,
                                                         description="end the stream after this many events")] = None,
                 ) -> StreamingResponse:
    return StreamingResponse(_events(request, state, state.api.stream_interval, max_events),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
