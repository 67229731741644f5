"""``/healthz`` (the process is up), ``/readyz`` (PostgreSQL and Redis answer) and ``/metrics``
(Prometheus text: realtime metrics, cache statistics and job health)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.responses import Response

from metricsmith.api import jobhealth
from metricsmith.api.deps import ApiState, State
from metricsmith.api.serialization import JSONResponse
from metricsmith.errors import one_line
from metricsmith.realtime import exposition

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="The process is up")
async def healthz() -> JSONResponse:
    return JSONResponse({"status": "ok"})


def _check_postgres(state: ApiState) -> str:
    try:
        with state.connection() as conn:
            conn.execute("select 1")
        return "ok"
    except Exception as exc:  # noqa: BLE001 - readiness reports, never raises
        return f"down: {one_line(str(exc), 200)}"


def _check_redis(state: ApiState) -> str:
    try:
        state.realtime.redis.ping()
        return "ok"
    except Exception as exc:  # noqa: BLE001
        return f"down: {one_line(str(exc), 200)}"


@router.get("/readyz", summary="PostgreSQL and Redis answer (Redis down: degraded, still 200)")
def readyz(state: State) -> Response:
    postgres = _check_postgres(state)
    redis_state = _check_redis(state)
    if postgres != "ok":
        status, code = "unavailable", 503
    elif redis_state != "ok":
        status, code = "degraded", 200
    else:
        status, code = "ready", 200
    body: dict[str, Any] = {"status": status, "postgres": postgres, "redis": redis_state}
    if status == "degraded":
        body["detail"] = "Redis is down: metrics are read from PostgreSQL without the shared cache; realtime is unavailable"
    return JSONResponse(body, status_code=code)


@router.get("/metrics", summary="Prometheus text exposition: realtime metrics, cache stats and job health",
            response_class=Response, responses={200: {"content": {exposition.CONTENT_TYPE: {}}}})
def metrics(state: State) -> Response:
    families: list[Any] = []
    errors: list[tuple[str, dict[str, Any], float]] = []
    try:
        families.extend(exposition.collect(state.realtime))
    except Exception:  # noqa: BLE001 - Redis down must not hide job health
        errors.append(("metricsmith_api_scrape_errors", {"source": "realtime"}, 1))
    try:
        families.extend(jobhealth.families(schema=state.schema, settings=state.settings))
    except Exception:  # noqa: BLE001
        errors.append(("metricsmith_api_scrape_errors", {"source": "jobs"}, 1))
    if errors:
        families.append({"name": "metricsmith_api_scrape_errors", "type": "gauge",
                         "help": "Sources that could not be read during this scrape", "samples": errors})
    return Response(exposition.render(families), media_type=exposition.CONTENT_TYPE)
