"""schemathesis against /openapi.json: every operation with bounded generated examples (valid and
invalid) answers no 500, only documented status codes and content types, and bodies that match
the schema. The app serves the data set of test_api (one per module)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import checks
from test_api import TODAY, World

from metricsmith.api.app import create_app
from metricsmith.api.config import ApiSettings
from metricsmith.cache import TwoTierCache, load_cache_config
from metricsmith.query import MetricsQueryService


@pytest.fixture(scope="module")
def api_world(test_database: str) -> Iterator[tuple[Any, World]]:
    with psycopg.connect(test_database, autocommit=True) as conn:
        world = World(conn).build()
        cache = TwoTierCache(config=load_cache_config())
        svc = MetricsQueryService(cache=cache, schema=world.schema, today=TODAY)
        app = create_app(query=svc, api_settings=ApiSettings(max_range_days=800, stream_interval=1))
        try:
            yield app, world
        finally:
            app.state.api.close()
            cache.close()
            world.drop()


def operations() -> list[str]:
    """``METHOD path`` of every operation but the never-ending SSE stream (tested in test_api)."""
    app = create_app(api_settings=ApiSettings())
    spec = app.openapi()
    return [f"{method.upper()} {path}" for path, item in spec["paths"].items() for method in item
            if path != "/v1/realtime/stream"]


@pytest.mark.parametrize("operation", operations())
def test_openapi_contract(operation: str, api_world: tuple[Any, World]) -> None:
    """Generated requests (valid and invalid data) for one operation, each checked by schemathesis."""
    app, world = api_world
    method, path = operation.split(" ", 1)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    api_operation = schema[path][method]
    headers = {"Authorization": f"Bearer {world.keys['api_admin']}"}

    @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(case=api_operation.as_strategy())
    def check(case: Any) -> None:
        # schema-valid requests the API refuses by its documented rules (end before start, a range
        # over the maximum) are fine: only that check is left out
        case.call_and_validate(headers=headers, excluded_checks=[checks.positive_data_acceptance])

    check()
