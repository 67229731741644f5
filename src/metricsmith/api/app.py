"""The application factory: ``create_app()`` (uvicorn: ``metricsmith.api.app:create_app --factory``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from metricsmith.api import errors
from metricsmith.api.config import ApiSettings, load_api_settings
from metricsmith.api.deps import ApiState
from metricsmith.api.routers import alerts, custom_metrics, dashboard, jobs, metrics, ops, realtime
from metricsmith.api.serialization import JSONResponse
from metricsmith.config import Settings, load_settings
from metricsmith.core.schema import marts_schema
from metricsmith.query import MetricsQueryService

DESCRIPTION = """Product metrics over HTTP: the marts of every declared grain, custom metrics (with their
visibility rules), realtime metrics (and a Server-Sent Events stream), job health, and a Prometheus
exposition. Authenticate with `Authorization: Bearer <API key>` (`metricsmith api-key create`)."""


def create_app(settings: Settings | None = None, *, api_settings: ApiSettings | None = None,
               query: MetricsQueryService | None = None) -> FastAPI:
    """The API and dashboard app; ``query`` defaults to a service on the configured marts' schema."""
    settings = settings or load_settings()
    state = ApiState(settings=settings, api=api_settings or load_api_settings(),
                     query=query or MetricsQueryService(settings, schema=marts_schema()))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        state.close()

    app = FastAPI(title="metricsmith", version="1", description=DESCRIPTION, default_response_class=JSONResponse,
                  lifespan=lifespan)
    app.state.api = state
    errors.install(app)
    for module in (metrics, custom_metrics, realtime, jobs, alerts, ops):
        app.include_router(module.router, responses=errors.RESPONSES)
    app.include_router(dashboard.router)
    return app
