"""Custom metrics: stored, validated, costed definitions compiled into generated dbt models.

See docs/custom_metrics.md. Entry point: :class:`CustomMetricsService`.
"""

from metricsmith.custom_metrics.errors import (
    AccessDenied,
    CostBudgetExceeded,
    ExpressionError,
    MetricNotFound,
    MetricSpecError,
)
from metricsmith.custom_metrics.service import (
    CostEstimate,
    CustomMetricsService,
    MetricDefinition,
    create_metric_definition,
)
from metricsmith.custom_metrics.spec import MetricSpec, parse_spec

__all__ = [
    "AccessDenied", "CostBudgetExceeded", "CostEstimate", "CustomMetricsService", "ExpressionError",
    "MetricDefinition", "MetricNotFound", "MetricSpec", "MetricSpecError", "create_metric_definition", "parse_spec",
]
