"""Realtime metric types on a real Redis: semantics, labels, clear errors, rate windows, exposition."""

from __future__ import annotations

import math
import random
from bisect import bisect_left

import pytest
from _realtime_events import private_settings

from metricsmith.realtime import MetricType, RealtimeMetricError, RealtimeMetricsService
from metricsmith.realtime.exposition import export_text, register_collector, unregister_collector


class Clock:
    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def clock() -> Clock:
    return Clock()


@pytest.fixture()
def svc(clock: Clock) -> RealtimeMetricsService:
    return RealtimeMetricsService(private_settings(), clock=clock)


def test_seed_parity_counter_and_gauge(svc: RealtimeMetricsService) -> None:
    svc.declare_counter("api:calls", "API calls")
    svc.declare_gauge("users:active", "active users")
    assert svc.get_counter("api:calls") == 0
    assert svc.increment_counter("api:calls", 1) == 1
    svc.increment_counter("api:calls", 2)
    svc.increment_counter("api:calls", 0.5)
    assert svc.get_counter("api:calls") == 3.5
    assert svc.get_gauge("users:active") is None
    svc.set_gauge("users:active", 150)
    assert svc.get_gauge("users:active") == 150
    assert svc.inc_gauge("users:active", 10) == 160
    assert svc.dec_gauge("users:active", 20) == 140
    svc.set_gauge("users:active", -3.25)  # a gauge may go anywhere
    assert svc.get_gauge("users:active") == -3.25
    # the dedicated read connection is dropped by the server: the next read reconnects
    assert svc._reader is not None
    read_id = svc._reader.execute("CLIENT", "ID")
    assert svc.redis.execute_command("CLIENT", "KILL", "ID", read_id) == 1
    assert svc.get_counter("api:calls") == 3.5
    svc.close()
    assert svc.get_counter("api:calls") == 3.5


def test_labels_are_separate_series(svc: RealtimeMetricsService) -> None:
    svc.declare_counter("http_requests_total", "requests", labels=("method", "code"))
    expected: dict[tuple[str, str], int] = {}
    rng = random.Random(3)
    for _ in range(300):
        key = (rng.choice(["GET", "POST"]), rng.choice(["200", "404", "500"]))
        n = rng.randint(1, 5)
        expected[key] = expected.get(key, 0) + n
        svc.increment_counter("http_requests_total", n, {"method": key[0], "code": key[1]})
    for (method, code), total in expected.items():
        assert svc.get_counter("http_requests_total", {"code": code, "method": method}) == total
    series = dict(((labels["method"], labels["code"]), value)
                  for labels, value in svc.series(svc.spec("http_requests_total")))  # type: ignore[arg-type]
    assert series == expected


def test_clear_errors_for_misuse(svc: RealtimeMetricsService) -> None:
    svc.declare_counter("jobs_total", "jobs", labels=("queue",))
    svc.declare_gauge("temperature", "t")
    with pytest.raises(RealtimeMetricError, match="not declared.*declare_counter"):
        svc.increment_counter("nope_total", 1)
    with pytest.raises(RealtimeMetricError, match="set_gauge.*needs a gauge.*declared as counter"):
        svc.set_gauge("jobs_total", 3, {"queue": "a"})
    with pytest.raises(RealtimeMetricError, match="get_counter.*needs a counter.*gauge"):
        svc.get_counter("temperature")
    with pytest.raises(RealtimeMetricError, match="monotonic"):
        svc.increment_counter("jobs_total", -1, {"queue": "a"})
    with pytest.raises(RealtimeMetricError, match="missing \\['queue'\\]"):
        svc.increment_counter("jobs_total", 1)
    with pytest.raises(RealtimeMetricError, match="undeclared \\['host'\\]"):
        svc.increment_counter("jobs_total", 1, {"queue": "a", "host": "h"})
    with pytest.raises(RealtimeMetricError, match="must be a number"):
        svc.increment_counter("jobs_total", "3", {"queue": "a"})  # type: ignore[arg-type]
    with pytest.raises(RealtimeMetricError, match="finite"):
        svc.set_gauge("temperature", math.nan)
    with pytest.raises(RealtimeMetricError, match="already declared as a counter"):
        svc.declare_gauge("jobs_total", "clash")
    with pytest.raises(RealtimeMetricError, match="not a Prometheus name"):
        svc.declare_counter("bad-name", "x")
    with pytest.raises(RealtimeMetricError, match="not a Prometheus label name"):
        svc.declare_counter("ok_total", "x", labels=("__reserved",))
    with pytest.raises(RealtimeMetricError, match="ascending"):
        svc.declare_histogram("h_seconds", "x", buckets=(1, 0.5))
    # nothing written by the failed calls
    assert list(svc.series(svc.spec("jobs_total"))) == []  # type: ignore[arg-type]
    assert svc.get_gauge("temperature") is None


def test_declarations_are_shared_between_processes(svc: RealtimeMetricsService, clock: Clock) -> None:
    svc.declare_histogram("latency_seconds", "latency", labels=("route",), buckets=(0.1, 1))
    other = RealtimeMetricsService(svc.settings, clock=clock)  # a fresh registry, same Redis
    spec = other.spec("latency_seconds")
    assert spec is not None and spec.type is MetricType.HISTOGRAM and spec.buckets == (0.1, 1.0)
    other.observe_histogram("latency_seconds", 0.05, {"route": "/"})
    assert svc.get_histogram("latency_seconds", {"route": "/"}).count == 1
    with pytest.raises(RealtimeMetricError, match="already declared"):
        other.declare_histogram("latency_seconds", "latency", labels=("route",), buckets=(0.2, 1))


def test_histogram_buckets_and_quantiles(svc: RealtimeMetricsService) -> None:
    buckets = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0)
    svc.declare_histogram("req_seconds", "req", buckets=buckets)
    rng = random.Random(11)
    values = [rng.lognormvariate(-2.5, 1.2) for _ in range(2000)]
    pipe_values = values[:]
    for v in pipe_values:
        svc.observe_histogram("req_seconds", v)
    hist = svc.get_histogram("req_seconds")
    # independent computation: cumulative counts per upper bound
    expected_cumulative = [sum(1 for v in values if v <= b) for b in buckets] + [len(values)]
    assert list(hist.cumulative) == expected_cumulative
    assert hist.count == len(values)
    assert hist.sum == pytest.approx(sum(values), rel=1e-9)
    # the quantile estimate lies inside the bucket that holds the true quantile
    ordered = sorted(values)
    for q in (0.5, 0.9, 0.99):
        true_q = ordered[math.ceil(q * len(ordered)) - 1]
        estimate = hist.quantile(q)
        idx = bisect_left(buckets, true_q)
        low = buckets[idx - 1] if idx > 0 else 0.0
        high = buckets[idx] if idx < len(buckets) else buckets[-1]
        assert low <= estimate <= high, (q, true_q, estimate)
    # hand-checked linear interpolation: 4 values, buckets (1, 2): 3 in <=1, 1 in (1,2]
    svc.declare_histogram("tiny", "t", buckets=(1, 2))
    for v in (0.2, 0.4, 0.6, 1.5):
        svc.observe_histogram("tiny", v)
    tiny = svc.get_histogram("tiny")
    assert tiny.quantile(0.5) == pytest.approx(2 / 3)  # rank 2 of 3 in [0, 1]
    assert tiny.quantile(1.0) == 2.0
    assert math.isnan(svc.get_histogram("req_seconds", None).quantile(0.5)) is False
    with pytest.raises(RealtimeMetricError, match="within 0..1"):
        tiny.quantile(1.5)


def test_rate_window_slides_with_the_injected_clock(svc: RealtimeMetricsService, clock: Clock) -> None:
    svc.declare_rate("logins", "logins per second", windows=(60, 300))
    marks: list[float] = []
    rng = random.Random(5)
    for _ in range(3000):  # ~10 events/s over 5 minutes, irregular
        clock.now += rng.expovariate(10)
        n = rng.randint(1, 3)
        svc.mark("logins", n)
        marks.extend([clock.now] * n)
    for window in (60, 300):
        exact = sum(1 for t in marks if clock.now - window < t <= clock.now)
        estimate = svc.get_rate_count("logins", window)
        assert abs(estimate - exact) / exact < 0.01, (window, estimate, exact)
        assert svc.get_rate("logins", window) == pytest.approx(estimate / window)
    # nothing new for 61 s: the 60 s window is empty, the 300 s one still counts the tail
    clock.now += 61
    assert svc.get_rate("logins", 60) == 0
    exact_300 = sum(1 for t in marks if clock.now - 300 < t <= clock.now)
    assert svc.get_rate_count("logins", 300) == pytest.approx(exact_300, rel=0.01)
    clock.now += 300
    assert svc.get_rate("logins", 300) == 0
    # old buckets are pruned, so the hash stays bounded
    svc.mark("logins", 1)
    key = svc.keys.rate("logins", 60, "")
    assert svc.redis.hlen(key) <= 2
    with pytest.raises(RealtimeMetricError, match="windows \\[60, 300\\]"):
        svc.get_rate("logins", 3600)
    with pytest.raises(RealtimeMetricError, match="whole count"):
        svc.mark("logins", -1)


def test_prometheus_exposition(svc: RealtimeMetricsService, clock: Clock) -> None:
    svc.declare_counter("api:calls", "API calls", labels=("path",))
    svc.declare_histogram("size_bytes", "sizes", buckets=(10, 100))
    svc.declare_rate("hits", "hits per second", windows=(60,))
    svc.increment_counter("api:calls", 3, {"path": 'a"b\\c'})
    for v in (5, 50, 500):
        svc.observe_histogram("size_bytes", v)
    svc.mark("hits", 120)
    register_collector("test-extra", lambda: [{"name": "extra_metric", "help": "from a collector", "type": "gauge",
                                               "samples": [("extra_metric", {}, 7)]}])
    register_collector("test-broken", lambda: 1 / 0)  # type: ignore[arg-type, return-value]
    try:
        text = export_text(svc)
    finally:
        unregister_collector("test-extra")
        unregister_collector("test-broken")
    lines = text.splitlines()
    assert "# TYPE api:calls counter" in lines
    assert 'api:calls{path="a\\"b\\\\c"} 3' in lines
    assert 'size_bytes_bucket{le="10"} 1' in lines
    assert 'size_bytes_bucket{le="100"} 2' in lines
    assert 'size_bytes_bucket{le="+Inf"} 3' in lines
    assert "size_bytes_sum 555" in lines and "size_bytes_count 3" in lines
    assert "# TYPE hits gauge" in lines and 'hits{window="60s"} 2' in lines
    assert "extra_metric 7" in lines
    assert 'metricsmith_realtime_collector_errors_total{collector="test-broken"} 1' in lines
    # every sample line parses as name{labels} value
    for line in lines:
        if not line.startswith("#"):
            name_part, value = line.rsplit(" ", 1)
            float(value.replace("+Inf", "inf"))


def test_http_metrics_endpoint(svc: RealtimeMetricsService) -> None:
    import threading
    import urllib.error
    import urllib.request

    from metricsmith.realtime.exposition import CONTENT_TYPE, make_server

    svc.declare_gauge("queue_depth", "depth")
    svc.set_gauge("queue_depth", 42)
    server = make_server("127.0.0.1", 0, svc, extra=False)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            assert response.headers["Content-Type"] == CONTENT_TYPE
            body = response.read().decode()
        assert "queue_depth 42" in body.splitlines()
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=10)
        assert missing.value.code == 404
    finally:
        server.shutdown()
        server.server_close()
