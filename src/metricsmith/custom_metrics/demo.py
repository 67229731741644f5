"""Demo step: define sample custom metrics as a demo user, compile, run, print their latest values."""

from __future__ import annotations

import time
from typing import Any

from metricsmith.custom_metrics.errors import MetricNotFound
from metricsmith.custom_metrics.service import CustomMetricsService

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
    for d in svc.list_metrics(DEMO_USER):
        if d.owner_id != DEMO_USER:
            continue
        rows = svc.values(DEMO_USER, d.slug)[-3:]
        print(f"{d.slug} ({d.spec['type']}, {d.spec.get('grain', 'day')}):")
        for r in rows:
            print(f"  {r['period_start']}  value {_num(r['value']):>14}  previous {_num(r['previous_value']):>14}"
                  f"  growth {_num(r['growth_pct']):>7} %")
