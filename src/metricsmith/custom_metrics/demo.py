"""Demo step: define sample custom metrics as a demo user, compile, run, print their latest values."""

from __future__ import annotations

import time
from typing import Any

from metricsmith.custom_metrics.errors import MetricNotFound
from metricsmith.custom_metrics.service import CustomMetricsService
from metricsmith.query import (
    BASIS_LEGEND,
    CustomMetricValue,
    MetricsQueryService,
    NotAvailable,
    basis_mark,
    plural,
)

DEMO_USER = "demo_analyst"
DEMO_METRICS: list[dict[str, Any]] = [
    {"name": "Revenue per active user", "slug": "revenue_per_active_user", "type": "RATIO", "source": "events",
     "grain": "week", "visibility": "PUBLIC",
     "numerator": {"type": "SUM", "expression": "revenue_cents", "filter": "event_type = 'purchase'"},
     "denominator": {"type": "DISTINCT_COUNT", "expression": "user_id"}},
    {"name": "p90 purchase value", "slug": "p90_purchase_value", "type": "PERCENTILE", "percentile": 0.9,
     "source": "events", "expression": "revenue_cents", "filter": "event_type = 'purchase'", "grain": "month",
     "visibility": "ORGANIZATION"},
    # the create_metric_definition entry point
    {"name": "Revenue Per Project", "metric_type": "SUM", "data_source": "daily_metrics",
     "calculation_formula": "revenue_cents", "aggregation_method": "sum"},
]


def _num(v: Any) -> str:
    return "" if v is None else f"{float(v):,.2f}"


def step_custom_metrics() -> None:
    svc = CustomMetricsService()
    svc.add_user(DEMO_USER, "demo_org", teams=("growth",))
    for spec in DEMO_METRICS:
        slug = spec.get("slug") or "revenue_per_project"
        try:
            svc.show(DEMO_USER, slug)
            print(f"metric {slug}: already defined")
        except MetricNotFound:
            d = svc.create(DEMO_USER, spec)
            print(f"metric {d.slug}: created v{d.current_version} ({d.spec['type']}, {d.spec.get('grain', 'day')})")
    t0 = time.perf_counter()
    run = svc.run()
    where = svc.generated_dir
    if where.is_relative_to(svc.project_dir):
        where = where.relative_to(svc.project_dir)
    print(f"compiled {where} and ran {len(run.results)} models "
          f"in {time.perf_counter() - t0:.1f} s")
    marked = False
    with MetricsQueryService(use_cache=False) as reader:
        for d in svc.list_metrics(DEMO_USER):
            if d.owner_id != DEMO_USER:
                continue
            rows = _latest(reader, svc, d.slug)
            print(f"{d.slug} ({d.spec['type']}, {d.spec.get('grain', 'day')}):")
            for r in rows:
                print("  " + value_line(r))
                marked = marked or bool(basis_mark(r.growth_basis)) and r.growth_pct is not None
    if marked:
        print(f"  ({BASIS_LEGEND})")


def _latest(reader: MetricsQueryService, svc: CustomMetricsService, slug: str) -> list[CustomMetricValue]:
    """The metric's last three values with their growth basis (read through the query service);
    a custom_metric_values built before the basis columns gives them without it (shown as such)."""
    try:
        return reader.get_custom_metric_values(slug, user=DEMO_USER)[-3:]
    except NotAvailable:
        return [CustomMetricValue(**r) for r in svc.values(DEMO_USER, slug)[-3:]]


def value_line(r: CustomMetricValue) -> str:
    """One value with its growth, the growth's basis marker (none on ``full``) and its basis."""
    growth = "" if r.growth_pct is None else f"{_num(r.growth_pct)} %{basis_mark(r.growth_basis)}"
    days = "" if r.growth_basis_days is None else f", {plural(r.growth_basis_days, 'day')}"
    return (f"{r.period_start}  value {_num(r.value):>14}  previous {_num(r.previous_value):>14}"
            f"  growth {growth:>10}  ({r.growth_basis or 'basis unknown'}{days})")
