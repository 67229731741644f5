"""HTTP API: cached dashboard reads vs a trivial /healthz, 32 concurrent clients on loopback.

    python bench/api.py [--clients 32 --seconds 15 --workers 1]

In a fresh database on the configured server: synthetic marts of every declared grain in the
marts' schema (two closed years), a PUBLIC custom metric with values, a user and an API key.
Then ``metricsmith api`` runs in its own process(es) and one asyncio/httpx client drives, in one run:
  healthz -- GET /healthz (no auth, no data): the server's floor
  cached  -- a mix of dashboard reads with the key, warm cache: a weekly range
             (/v1/metrics/week), a monthly summary (/v1/metrics/month/summary), custom
             metric values (/v1/custom-metrics/{slug}/values)
Each phase runs ``--seconds`` with ``--clients`` concurrent connections after a warm-up.
Targets: cached req/s >= 0.5x healthz req/s, cached p99 <= 25 ms, 0 errors.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg.types.json import Jsonb

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import bench_database, server_label  # noqa: E402

os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
# a private Redis prefix per run: the cache's keys do not name the database
PREFIX = f"{os.environ.get('METRICSMITH_REDIS_PREFIX', 'metricsmith:')}apibench{os.getpid()}:"
os.environ["METRICSMITH_REDIS_PREFIX"] = PREFIX

from metricsmith import db, grains  # noqa: E402
from metricsmith.api import keys  # noqa: E402
from metricsmith.core.schema import marts_schema  # noqa: E402
from metricsmith.custom_metrics import access  # noqa: E402
from metricsmith.query import MEASURES, period_columns  # noqa: E402

FIRST, LAST = date(2024, 1, 1), date(2025, 12, 31)
SLUG = "bench_revenue"


def _type(column: str, g: grains.Grain) -> str:
    if column in (g.start_column, g.end_column):
        return "date"
    if column == "is_complete":
        return "boolean"
    if column == "days_with_data":
        return "integer"
    if column in MEASURES:
        return "bigint"
    return "jsonb" if column == g.breakdown_column else "numeric"


def _value(column: str, g: grains.Grain, start: date, rng: random.Random) -> Any:
    if column == g.start_column:
        return start
    if column == g.end_column:
        return g.end_of(start)
    if column == "days_with_data":
        return g.days_in(start)
    if column == "is_complete":
        return True
    if column in MEASURES:
        return rng.randint(1, 10_000) * g.days_in(start)
    if column == g.breakdown_column:
        return Jsonb([])
    return Decimal(rng.randint(-5000, 5000)) / 100


def build(conn: psycopg.Connection[Any]) -> str:
    """Marts, a public custom metric with values, a user; returns an API key."""
    schema = marts_schema()
    rng = random.Random(7)
    conn.execute(f"create schema if not exists {schema}")
    for g in grains.load():
        columns = period_columns(g)
        conn.execute(f"create table {schema}.{g.model} ({', '.join(f'{c} {_type(c, g)}' for c in columns)})")
        rows = [[_value(c, g, s, rng) for c in columns] for s in g.periods_between(FIRST, LAST)]
        with conn.cursor() as cur:
            cur.executemany(f"insert into {schema}.{g.model} values ({', '.join(['%s'] * len(columns))})", rows)
    access.add_user(conn, "bench_user", "bench_org")
    row = conn.execute("insert into metricsmith.custom_metric_definitions (slug, name, owner_id, organization_id,"
                       " visibility) values (%s, 'Bench revenue', 'bench_user', 'bench_org', 'PUBLIC')"
                       " returning metric_id", (SLUG,)).fetchone()
    assert row is not None
    spec = {"name": "Bench revenue", "type": "SUM", "source": "events", "grain": "week",
            "expression": "revenue_cents", "dimensions": ["country"]}
    conn.execute("insert into metricsmith.custom_metric_versions (metric_id, version, spec, compiled_sql, created_by)"
                 " values (%s, 1, %s, 'select 1', 'bench_user')", (row[0], Jsonb(spec)))
    conn.execute(f"create table {schema}.custom_metric_values (metric_slug text, metric_version int, grain text,"
                 " period_start date, dimensions jsonb, value numeric, previous_value numeric, growth_pct numeric,"
                 " computed_at timestamptz)")
    week = grains.get("week")
    with conn.cursor() as cur:
        cur.executemany(f"insert into {schema}.custom_metric_values values (%s, 1, 'week', %s, %s, %s, null, null, %s)",
                        [(SLUG, s, Jsonb({"country": c}), Decimal(rng.randint(1, 10**6)), datetime.now(UTC))
                         for s in week.periods_between(FIRST, LAST) for c in ("de", "fr", "us")])
    key, _ = keys.create(conn, "bench_user", name="bench")
    return key


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(port: int, workers: int) -> subprocess.Popen[bytes]:
    exe = Path(sys.executable).with_name("metricsmith")
    proc = subprocess.Popen([str(exe), "api", "--port", str(port), "--workers", str(workers), "--log-level", "warning"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
        if proc.poll() is not None:
            raise SystemExit(f"metricsmith api exited: {proc.stderr.read().decode() if proc.stderr else ''}")
    raise SystemExit("metricsmith api did not answer /healthz within 60 s")


def cached_paths(rng: random.Random) -> list[str]:
    paths = []
    for _ in range(200):
        s = FIRST + timedelta(days=rng.randrange(0, 600))
        paths.append(f"/v1/metrics/week?start={s}&end={s + timedelta(weeks=12)}")
        paths.append(f"/v1/metrics/month/summary?start={s.replace(day=1)}&end={s.replace(day=1) + timedelta(days=150)}")
        paths.append(f"/v1/custom-metrics/{SLUG}/values?start={s}&end={s + timedelta(weeks=26)}&dim.country=de")
    return paths


class Connection:
    """A minimal keep-alive HTTP/1.1 client on asyncio streams (so the client costs little next
    to the server it measures); each request checks the status and reads the whole body."""

    def __init__(self, host: str, port: int, headers: dict[str, str]) -> None:
        self.host, self.port = host, port
        self.extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, path: str) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n{self.extra}\r\n".encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        await self.reader.readexactly(length)
        return status

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def phase(port: int, paths: list[str], headers: dict[str, str], clients: int, seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    stop = time.monotonic() + seconds

    async def worker(i: int) -> None:
        nonlocal errors
        conn, n = Connection("127.0.0.1", port, headers), i
        try:
            while time.monotonic() < stop:
                path = paths[n % len(paths)]
                n += clients
                t0 = time.perf_counter()
                try:
                    ok = await conn.get(path) == 200
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    ok, conn = False, Connection("127.0.0.1", port, headers)
                latencies.append(time.perf_counter() - t0)
                errors += 0 if ok else 1
        finally:
            await conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(clients)))
    elapsed = time.perf_counter() - t0
    ordered = sorted(latencies)
    return {"requests": len(ordered), "rps": len(ordered) / elapsed, "errors": errors,
            "p50_ms": ordered[len(ordered) // 2] * 1000, "p99_ms": ordered[int(len(ordered) * 0.99)] * 1000}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    with bench_database("apibench") as url:
        with psycopg.connect(url, autocommit=True) as conn:
            key = build(conn)
        port = _free_port()
        server = start_server(port, args.workers)
        try:
            base = f"http://127.0.0.1:{port}"
            headers = {"Authorization": f"Bearer {key}"}
            paths = cached_paths(random.Random(11))
            with httpx.Client(base_url=base, headers=headers, timeout=60) as warm:  # fill the cache
                for path in paths:
                    warm.get(path).raise_for_status()
            asyncio.run(phase(port, paths, headers, args.clients, 3))  # warm-up of every worker's L1
            health = asyncio.run(phase(port, ["/healthz"], {}, args.clients, args.seconds))
            cached = asyncio.run(phase(port, paths, headers, args.clients, args.seconds))
        finally:
            server.terminate()
            server.wait(30)
            client = db.redis_client()
            for name in client.scan_iter(match=f"{PREFIX}*", count=1000):
                client.delete(name)
    print(f"server: {server_label()} PostgreSQL, {args.workers} uvicorn worker(s), {args.clients} clients, "
          f"{args.seconds:.0f} s per phase, load {os.getloadavg()[0]:.1f}")
    print(f"{'phase':<8} {'requests':>9} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for name, r in (("healthz", health), ("cached", cached)):
        print(f"{name:<8} {r['requests']:>9} {r['rps']:>9.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['errors']:>7}")
    ratio = cached["rps"] / health["rps"]
    print(f"cached / healthz req/s: {ratio:.2f} (target >= 0.5: {'met' if ratio >= 0.5 else 'missed'}); "
          f"cached p99 {cached['p99_ms']:.1f} ms (target <= 25: {'met' if cached['p99_ms'] <= 25 else 'missed'}); "
          f"errors {health['errors'] + cached['errors']} (target 0)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
