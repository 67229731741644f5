"""Errors of the custom-metrics capability (all user-facing: the CLI prints them as one line)."""

from __future__ import annotations

from metricsmith.errors import UserFacingError


class MetricSpecError(UserFacingError):
    """The spec is malformed (missing field, unknown type, bad grain ...)."""


class InvalidIdentifier(MetricSpecError):
    """An id, slug or name is outside its strict character set (or free text too long)."""


class ExpressionError(UserFacingError):
    """An ``expression`` / ``filter`` is refused; the message names the offending token."""

    def __init__(self, field: str, message: str, token: str | None = None) -> None:
        self.field = field
        self.token = token
        where = f" (offending token: {token!r})" if token is not None else ""
        super().__init__(f"{field}: {message}{where}")


class AccessDenied(UserFacingError):
    """The acting user may not see or change this metric."""


class MetricNotFound(UserFacingError):
    """No metric with that slug (or it is not visible to the acting user)."""


class CostBudgetExceeded(UserFacingError):
    """The compiled query's estimated cost is above the configured budget."""

    def __init__(self, cost: float, rows: float, budget: float) -> None:
        self.cost = cost
        self.rows = rows
        self.budget = budget
        super().__init__(
            f"estimated cost {cost:,.0f} (about {rows:,.0f} rows) exceeds the budget {budget:,.0f}; "
            "narrow the filter, coarsen the grain or drop dimensions "
            "(budget: METRICSMITH_CUSTOM_METRIC_COST_BUDGET)"
        )
