"""GET /v1/alerts over real PostgreSQL: the incidents a real evaluation opened, filtered by state,
with the API's errors for a bad state and a missing key."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from test_api import World, assert_error, auth, cache, client, world  # noqa: F401 - module fixtures

from metricsmith.alerts.evaluate import evaluate
from metricsmith.alerts.rules import parse_text

RULES = """
channels:
  quiet: {type: log}
rules:
  - name: api-alerts-always
    kind: metric_threshold
    grain: day
    expr: total_events > -1
    severity: critical
    channels: [quiet]
  - name: api-alerts-never
    kind: metric_threshold
    grain: day
    expr: total_events < -1
    channels: [quiet]
"""


@pytest.fixture(scope="module")
def fired(world: World) -> Iterator[dict[str, Any]]:  # noqa: F811
    result = evaluate(parse_text(RULES), schema=world.schema, deliver=False)
    assert not result.errors, result.errors
    yield result.to_dict()


def test_firing_incidents_are_listed(client: TestClient, world: World, fired: dict[str, Any]) -> None:  # noqa: F811
    body = client.get("/v1/alerts", params={"state": "FIRING"}, headers=auth(world)).json()
    mine = [i for i in body["incidents"] if i["rule"].startswith("api-alerts-")]
    assert [i["rule"] for i in mine] == ["api-alerts-always"]
    assert mine[0]["state"] == "FIRING" and mine[0]["severity"] == "critical" and mine[0]["summary"]
    assert body["state"] == "FIRING" and body["firing"] >= 1
    everything = client.get("/v1/alerts", headers=auth(world)).json()["incidents"]
    assert {i["rule"] for i in everything if i["rule"].startswith("api-alerts-")} == {"api-alerts-always"}


def test_bad_state_and_missing_key(client: TestClient, world: World) -> None:  # noqa: F811
    assert_error(client.get("/v1/alerts", params={"state": "burning"}, headers=auth(world)), 422, "state",
                 "unknown incident state")
    assert_error(client.get("/v1/alerts"), 401)
    assert_error(client.get("/v1/alerts", params={"limit": 0}, headers=auth(world)), 422)
