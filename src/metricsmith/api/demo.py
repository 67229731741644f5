"""The demo's API step: serve the app on a free loopback port for a moment and read it over HTTP.

The same app ``metricsmith api`` serves (public read of the core marts, as a wall screen would
run it), requested with the standard library's HTTP client, so the demo shows the real wire
format without needing curl or a key.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date

import uvicorn
from psycopg import sql

from metricsmith import db, grains
from metricsmith.api.app import create_app
from metricsmith.api.config import ApiSettings
from metricsmith.core.schema import marts_schema


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serving() -> Iterator[str]:
    """The API on ``http://127.0.0.1:<free port>`` in a background thread, stopped on exit."""
    port = _free_port()
    app = create_app(api_settings=ApiSettings(port=port, public_read=True))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="metricsmith-api-demo", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    if not server.started:
        raise RuntimeError("the API did not start within 30 s")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def _get(base: str, path: str) -> str:
    with urllib.request.urlopen(base + path, timeout=30) as response:
        return str(response.read().decode())


def _latest_day() -> date | None:
    with db.connect() as conn:
        exists = conn.execute("select to_regclass(%s)", (f"{marts_schema()}.daily_metrics",)).fetchone()
        if not exists or exists[0] is None:
            return None
        row = conn.execute(sql.SQL("select max(metric_date) from {}.daily_metrics")
                           .format(sql.Identifier(marts_schema()))).fetchone()
    return None if row is None else row[0]


def step_api() -> None:
    last = _latest_day()
    if last is None:
        print("skipped: the marts are not built yet (run the rollups step first)")
        return
    coarsest = grains.load()[-1]
    first = coarsest.start_of(last.replace(month=1, day=1))
    with serving() as base:
        print(f"GET /readyz -> {_get(base, '/readyz')}")
        path = f"/v1/metrics/{coarsest.name}?start={first}&end={last}&fields=total_events,active_users,revenue_cents"
        body = json.loads(_get(base, path))
        print(f"GET {path}")
        for row in body["rows"]:
            flag = "" if row["is_complete"] else "   (partial)"
            print(f"  {row[coarsest.start_column]}  events {row['total_events']:>10,}  users {row['active_users']:>8,}"
                  f"  revenue_cents {row['revenue_cents']:>13,}{flag}")
        families = [line for line in _get(base, "/metrics").splitlines() if line.startswith("# TYPE")]
        print(f"GET /metrics -> {len(families)} Prometheus metric families (realtime, cache, job health)")
