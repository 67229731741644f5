"""``/v1/custom-metrics``: the metrics visible to the key's user, one metric's definition and
versions, and its values (``start``, ``end``, ``version``, ``dim.<name>`` filters, ``order``,
``limit`` / ``cursor`` paging). Visibility follows the custom metrics' rules on every request;
a metric the user may not see answers 404 exactly like one that does not exist."""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request

from metricsmith.api import params
from metricsmith.api.deps import ApiState, State, User
from metricsmith.api.errors import BadParameter, NotFound
from metricsmith.api.serialization import JSONResponse
from metricsmith.custom_metrics.errors import AccessDenied, MetricNotFound
from metricsmith.query import CustomMetricValue

router = APIRouter(prefix="/v1/custom-metrics", tags=["custom metrics"])
SLUG = Path(pattern=r"^[a-z][a-z0-9_]{0,49}$", description="the metric's slug")
ORDERS = ("period_start", "value")


def _definition(state: ApiState, user: str, slug: str, version: int | None = None) -> dict[str, Any]:
    try:
        return state.custom.show(user, slug, version).as_dict()
    except MetricNotFound:
        if version is not None:
            raise NotFound(f"no version {version} of metric {slug!r} visible to {user}") from None
        raise NotFound(f"no metric {slug!r} visible to {user}") from None


def _dimensions(state: ApiState, slug: str, version: int | None) -> tuple[int, list[str]] | None:
    """``(current version, dimensions of the asked version)``, None when that version does not
    exist. Call it only after the query service's visibility check passed for the user."""
    with state.connection() as conn:
        row = conn.execute(
            "select d.current_version, v.spec->'dimensions' from metricsmith.custom_metric_definitions d"
            " left join metricsmith.custom_metric_versions v"
            " on v.metric_id = d.metric_id and v.version = coalesce(%s, d.current_version) where d.slug = %s",
            (version, slug)).fetchone()
    if row is None or (row[1] is None and version is not None):
        return None
    return int(row[0]), [str(d) for d in (row[1] or [])]


@router.get("", summary="The custom metrics visible to the key's user")
def list_metrics(state: State, user: User) -> JSONResponse:
    return JSONResponse({"metrics": [d.as_dict() for d in state.custom.list_metrics(user)]})


@router.get("/{slug}", summary="A metric's definition and its versions")
def show(slug: Annotated[str, SLUG], state: State, user: User) -> JSONResponse:
    definition = _definition(state, user, slug)
    versions = [dict(row) for row in state.custom.versions(user, slug)]
    return JSONResponse({**definition, "versions": versions})


def _sort_key(column: str) -> Any:
    if column == "value":
        return lambda v: (v.value is None, v.value if v.value is not None else Decimal(0), v.period_start,
                          str(sorted(v.dimensions.items())))
    return lambda v: (v.period_start, str(sorted(v.dimensions.items())))


_FIELDS = [f.name for f in dataclasses.fields(CustomMetricValue)]


def _as_dict(value: CustomMetricValue) -> dict[str, Any]:
    return {name: getattr(value, name) for name in _FIELDS}


def _matches(value: CustomMetricValue, filters: dict[str, str]) -> bool:
    return all(name in value.dimensions and _text(value.dimensions[name]) == wanted for name, wanted in filters.items())


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@router.get("/{slug}/values", summary="A metric's values, filtered by dim.<name>=value, ordered and paged")
def values(request: Request, slug: Annotated[str, SLUG], state: State, user: User,
           start: str | None = Query(None, description="first period_start (YYYY-MM-DD)",
                                                 json_schema_extra={"format": "date"}),
           end: str | None = Query(None, description="last period_start (YYYY-MM-DD)",
                                               json_schema_extra={"format": "date"}),
           version: Annotated[int | None, Query(ge=1, le=100000)] = None,
           order: str | None = Query(None, description="period_start (default), -period_start, value or -value"),
           limit: Annotated[int, Query(ge=1, le=1000)] = 100,
           cursor: Annotated[str | None, Query(max_length=params.MAX_CURSOR_LENGTH)] = None) -> JSONResponse:
    lo, hi = params.parse_date("start", start), params.parse_date("end", end)
    if lo is not None and hi is not None and hi < lo:
        raise BadParameter("end", f"end {hi} is before start {lo}")
    column, descending = params.parse_order(order, ORDERS, "period_start")
    try:  # the query service checks the user may read the metric (on every call, never cached)
        rows = state.query.get_custom_metric_values(slug, user=user, start=lo, end=hi, version=version)
    except (MetricNotFound, AccessDenied):
        raise NotFound(f"no metric {slug!r} visible to {user}") from None
    found = _dimensions(state, slug, version)
    if found is None:
        raise NotFound(f"no version {version} of metric {slug!r} visible to {user}")
    current, dimensions = found
    filters = params.parse_dimension_filters(request.query_params.multi_items(), dimensions)
    query = params.fingerprint(slug, version, lo, hi, column, descending, sorted(filters.items()))
    offset = params.decode_cursor(cursor, query)
    chosen = sorted((r for r in rows if _matches(r, filters)), key=_sort_key(column), reverse=descending)
    page = chosen[offset:offset + limit]
    more = offset + limit < len(chosen)
    return JSONResponse({"metric": slug, "version": version or current, "dimensions": filters,
            "order": ("-" if descending else "") + column, "total": len(chosen),
            "values": [_as_dict(v) for v in page],
            "next_cursor": params.encode_cursor(offset + limit, query) if more else None})
