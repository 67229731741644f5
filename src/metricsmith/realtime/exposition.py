"""Prometheus text exposition (format 0.0.4) of the realtime metrics, plus extra collectors.

Other capabilities add their own families with :func:`register_collector` (a callable returning
families as ``{"name", "help", "type", "samples": [(sample_name, labels, value), ...]}``); the
metric cache's statistics (:func:`metricsmith.cache.cache_metric_families`, shipped in the same
wheel) are registered by default. A collector that raises is reported as
``metricsmith_realtime_collector_errors_total`` instead of breaking the scrape.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from metricsmith.cache import cache_metric_families
from metricsmith.realtime.registry import MetricType
from metricsmith.realtime.service import HistogramValue, RealtimeMetricsService

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
Family = Mapping[str, Any]
Collector = Callable[[], Iterable[Family]]

_collectors: dict[str, Collector] = {
    "cache": cache_metric_families,
}
_lock = threading.Lock()


def register_collector(name: str, collector: Collector) -> None:
    """Add (or replace) an extra collector (a callable returning families)."""
    with _lock:
        _collectors[name] = collector


def unregister_collector(name: str) -> None:
    with _lock:
        _collectors.pop(name, None)


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def escape_help(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def fmt(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _sample(name: str, labels: Mapping[str, Any], value: float) -> str:
    if labels:
        text = ",".join(f'{k}="{escape_label(str(v))}"' for k, v in labels.items())
        return f"{name}{{{text}}} {fmt(value)}"
    return f"{name} {fmt(value)}"


def realtime_families(service: RealtimeMetricsService) -> list[dict[str, Any]]:
    """Every declared realtime metric as a metric family (histograms cumulative with +Inf)."""
    families: list[dict[str, Any]] = []
    for spec in service.specs():
        samples: list[tuple[str, dict[str, Any], float]] = []
        kind = str(spec.type)
        for labels, value in service.series(spec):
            if spec.type is MetricType.HISTOGRAM:
                assert isinstance(value, HistogramValue)
                bounds = [*spec.buckets, math.inf]
                for bound, count in zip(bounds, value.cumulative, strict=True):
                    samples.append((f"{spec.name}_bucket", {**labels, "le": fmt(bound)}, count))
                samples.append((f"{spec.name}_sum", labels, value.sum))
                samples.append((f"{spec.name}_count", labels, value.count))
            elif spec.type is MetricType.RATE:
                for window, rate in value.items():
                    samples.append((spec.name, {**labels, "window": f"{window}s"}, rate))
            else:
                samples.append((spec.name, labels, value))
        if spec.type is MetricType.RATE:
            kind = "gauge"  # a windowed per-second rate is a gauge to Prometheus
        families.append({"name": spec.name, "help": spec.help or spec.name, "type": kind, "samples": samples})
    return families


def collect(service: RealtimeMetricsService, *, extra: bool = True) -> list[Family]:
    families: list[Family] = list(realtime_families(service))
    if not extra:
        return families
    errors: list[tuple[str, dict[str, Any], float]] = []
    with _lock:
        collectors = dict(_collectors)
    for name, collector in sorted(collectors.items()):
        try:
            families.extend(collector())
        except Exception:  # noqa: BLE001 - one broken collector must not break the scrape
            errors.append(("metricsmith_realtime_collector_errors_total", {"collector": name}, 1))
    if errors:
        families.append({"name": "metricsmith_realtime_collector_errors_total",
                         "help": "Extra collectors that failed during this scrape", "type": "counter",
                         "samples": errors})
    return families


def render(families: Iterable[Family]) -> str:
    lines: list[str] = []
    for family in families:
        lines.append(f"# HELP {family['name']} {escape_help(str(family['help']))}")
        lines.append(f"# TYPE {family['name']} {family['type']}")
        for name, labels, value in family["samples"]:
            lines.append(_sample(name, labels, float(value)))
    return "\n".join(lines) + "\n"


def export_text(service: RealtimeMetricsService | None = None, *, extra: bool = True) -> str:
    """The whole exposition as text (what ``metricsmith realtime export`` prints and /metrics serves)."""
    return render(collect(service or RealtimeMetricsService(), extra=extra))


def make_server(host: str = "127.0.0.1", port: int = 9464, service: RealtimeMetricsService | None = None,
                *, extra: bool = True) -> ThreadingHTTPServer:
    """An HTTP server answering ``GET /metrics`` (and ``/healthz``); call ``serve_forever()``."""
    svc = service or RealtimeMetricsService()
    svc_lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server API
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                try:
                    with svc_lock:
                        body = export_text(svc, extra=extra).encode()
                    self._send(200, body, CONTENT_TYPE)
                except Exception as exc:  # noqa: BLE001 - report, keep serving
                    self._send(503, f"realtime metrics unavailable: {exc}\n".encode(), "text/plain")
            elif path == "/healthz":
                self._send(200, b"ok\n", "text/plain")
            else:
                self._send(404, b"not found; metrics are at /metrics\n", "text/plain")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    return ThreadingHTTPServer((host, port), Handler)
