"""``/v1/metrics/{grain}`` and ``/v1/metrics/{grain}/summary`` for every grain declared in
``dbt_project.yml`` (:mod:`metricsmith.grains`), read through the query service's cache.

Every row carries its completeness (``is_complete``; for the day grain: the day is over), the
like-for-like basis of each comparison's growth (the mart's ``<cmp>_basis`` - ``full``,
``to_date``, ``partial_baseline``, ``none`` - and ``<cmp>_basis_days``, sent with any growth
column of that comparison) and its baseline (``growth_baseline``: for each comparison, the start
of the period it compares with). Closed ranges answer with the closed cache tier's ``max-age``, open ones at most 300 s;
both with a strong ETag (``If-None-Match`` -> 304).
"""

from __future__ import annotations

import dataclasses
from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request
from starlette.responses import Response

from metricsmith import grains
from metricsmith.api import http, params
from metricsmith.api.deps import ApiState, MartsReader, State
from metricsmith.api.errors import BadParameter
from metricsmith.api.serialization import JSONResponse, csv_text, dumps
from metricsmith.cache.config import load_cache_config
from metricsmith.cache.periods import Tier, ttl_for
from metricsmith.grains import Grain, GrainError

router = APIRouter(prefix="/v1/metrics", tags=["metrics"])
#: default range: this many periods back from ``end``
DEFAULT_PERIODS = 12
DATE_HELP = "YYYY-MM-DD"
DATE = {"format": "date"}


def _grain_path() -> Any:
    return Path(description="a declared grain", json_schema_extra={"enum": list(grains.names())})


def grain_param(grain: str) -> Grain:
    try:
        return grains.get(grain)
    except GrainError:
        raise BadParameter("grain", f"grain: unknown grain {grain!r}; declared: {', '.join(grains.names())}") from None


def _range(state: ApiState, g: Grain, start: str | None, end: str | None) -> tuple[date, date]:
    today = state.query.today()
    default_days = 30 if g.unit == "day" else g.days_in(g.start_of(today)) * DEFAULT_PERIODS
    return params.parse_range(start, end, today=today, default_days=default_days, max_days=state.api.max_range_days)


def _max_age(state: ApiState, g: Grain, end: date) -> int:
    tier = state.query.tier_for_range(g.end_of(end))
    config = state.query.cache.config if state.query.cache is not None else load_cache_config()
    seconds = ttl_for(tier, config)
    return int(seconds if tier is Tier.CLOSED else min(seconds, http.MAX_OPEN_AGE))


def carried(g: Grain, row: dict[str, Any], today: date) -> dict[str, Any]:
    """The row plus its completeness (a day without the mart's column: the day is over) and the
    start of the period each comparison's growth compares with."""
    start: date = row[g.start_column]
    extra: dict[str, Any] = {}
    if "is_complete" not in row:
        extra["is_complete"] = g.end_of(start) < today
    extra["growth_baseline"] = {c.suffix: c.baseline(start) for c in g.comparisons}
    return {**row, **extra}


def with_basis(g: Grain, chosen: list[str], columns: list[str]) -> list[str]:
    """``chosen`` plus the basis columns of every comparison a chosen growth column belongs to
    (a growth figure never travels without its basis), in mart order."""
    wanted = set(chosen)
    for c in g.comparisons:
        if any(f.endswith(f"_{c.suffix}_pct") for f in chosen):
            wanted.update(col for col in columns if col in (f"{c.suffix}_basis", f"{c.suffix}_basis_days"))
    return [col for col in columns if col in wanted]


def _csv_columns(g: Grain, fields: list[str]) -> list[str]:
    tail = [] if "is_complete" in fields else ["is_complete"]
    return [*fields, *tail, *(f"growth_baseline_{c.suffix}" for c in g.comparisons)]


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    baseline = row.pop("growth_baseline", {})
    return {**row, **{f"growth_baseline_{k}": v for k, v in baseline.items()}}


NOT_MODIFIED: dict[int | str, dict[str, Any]] = {304: {"description": "the client's If-None-Match holds the current ETag"},
                200: {"content": {"application/json": {}, "text/csv": {}}}}


@router.get("/{grain}", summary="The mart rows of a grain (day, week, month, quarter ...) overlapping start..end",
            response_class=Response, responses=NOT_MODIFIED)
def metrics(request: Request, grain: Annotated[str, _grain_path()], state: State, user: MartsReader,
            start: str | None = Query(None, description=f"first day ({DATE_HELP}); default: 12 periods before end",
                                        json_schema_extra=DATE),
            end: str | None = Query(None, description=f"last day ({DATE_HELP}); default: today", json_schema_extra=DATE),
            fields: str | None = Query(None, max_length=2000, description="comma-separated columns (default: all)"),
            format: str | None = Query(None, description="json (default) or csv; Accept: text/csv works too"),
            accept: Annotated[str | None, Header(include_in_schema=False)] = None) -> Response:
    g = grain_param(grain)
    lo, hi = _range(state, g, start, end)
    columns = state.query.period_columns(g.name)
    chosen = with_basis(g, params.parse_fields(fields, columns, keep=[g.start_column]), columns)
    kind = params.parse_format(format, accept)
    today = state.query.today()
    # the mart's is_complete (all days present) travels with every row, chosen or not
    kept = [*chosen, *(["is_complete"] if "is_complete" in columns and "is_complete" not in chosen else [])]
    rows = [carried(g, {c: r[c] for c in kept}, today) for r in state.query.get_period_metrics(g.name, lo, hi)]
    if kind == "csv":
        body = csv_text([_flat(dict(r)) for r in rows], _csv_columns(g, chosen)).encode()
        return http.cached(request, body, "text/csv; charset=utf-8", _max_age(state, g, hi))
    payload = {"grain": g.name, "start": lo, "end": hi, "fields": chosen, "rows": rows}
    return http.cached(request, dumps(payload), "application/json", _max_age(state, g, hi))


@router.get("/{grain}/summary", summary="Totals, averages per day and growth of a grain over start..end",
            response_class=Response, responses={304: NOT_MODIFIED[304], 200: {"content": {"application/json": {}}}})
def summary(request: Request, grain: Annotated[str, _grain_path()], state: State, user: MartsReader,
            start: str | None = Query(None, description=f"first day ({DATE_HELP})", json_schema_extra=DATE),
            end: str | None = Query(None, description=f"last day ({DATE_HELP}); default: today",
                                    json_schema_extra=DATE)) -> Response:
    g = grain_param(grain)
    lo, hi = _range(state, g, start, end)
    result = dataclasses.asdict(state.query.get_period_summary(g.name, lo, hi))
    today = state.query.today()
    result["periods"] = [carried(g, row, today) for row in result["periods"]]
    return http.cached(request, dumps(result), "application/json", _max_age(state, g, hi))


@router.get("", summary="The declared grains and their columns")
def grain_list(state: State, user: MartsReader) -> JSONResponse:
    return JSONResponse({"grains": [{"name": g.name, "adjective": g.adjective, "start_column": g.start_column,
                        "end_column": g.end_column, "comparisons": [c.suffix for c in g.comparisons],
                        "columns": state.query.period_columns(g.name)} for g in grains.load()]})
