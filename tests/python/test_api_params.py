"""Property tests of every parser of outside input (dates, ranges, fields, format, order,
dim.<name> filters, cursors): whatever text arrives, the answer is a value or a BadParameter
naming the parameter - never another exception."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metricsmith.api import params
from metricsmith.api.errors import BadParameter

TEXT = st.text(max_size=80)
COLUMNS = ["week_start", "week_end", "total_events", "revenue_cents"]
FAST = settings(max_examples=300, deadline=None)


@FAST
@given(TEXT)
def test_parse_date_returns_a_date_or_names_the_parameter(text: str) -> None:
    try:
        value = params.parse_date("start", text)
    except BadParameter as exc:
        assert exc.param == "start" and exc.status == 422 and "start" in exc.message
        return
    assert value is None if text == "" else value == date.fromisoformat(text)


@FAST
@given(st.dates(min_value=date(1, 1, 1), max_value=date(9999, 12, 31)))
def test_every_calendar_date_in_the_window_parses(day: date) -> None:
    if params.MIN_DATE <= day <= params.MAX_DATE:
        assert params.parse_date("end", day.isoformat()) == day
    else:
        with pytest.raises(BadParameter, match="outside"):
            params.parse_date("end", day.isoformat())


@FAST
@given(st.dates(), st.dates(), st.integers(1, 5000))
def test_parse_range(start: date, end: date, max_days: int) -> None:
    try:
        lo, hi = params.parse_range(start.isoformat(), end.isoformat(), today=date(2024, 6, 1), default_days=30,
                                    max_days=max_days)
    except BadParameter as exc:
        assert exc.param in ("start", "end")
        outside = not (params.MIN_DATE <= start <= params.MAX_DATE and params.MIN_DATE <= end <= params.MAX_DATE)
        assert outside or end < start or (end - start).days + 1 > max_days
        return
    assert (lo, hi) == (start, end) and (hi - lo).days + 1 <= max_days


def test_parse_range_defaults() -> None:
    today = date(2024, 6, 1)
    assert params.parse_range(None, None, today=today, default_days=30, max_days=100) == (today - timedelta(30), today)


@FAST
@given(st.lists(st.sampled_from([*COLUMNS, "nope", "", " total_events", "x,y"]), max_size=6))
def test_parse_fields(asked: list[str]) -> None:
    text = ",".join(asked)
    try:
        chosen = params.parse_fields(text, COLUMNS, keep=["week_start"])
    except BadParameter as exc:
        assert exc.param == "fields" and "unknown field" in exc.message
        assert any(a.strip() not in COLUMNS for a in text.split(","))
        return
    if text.strip():
        assert chosen == [c for c in COLUMNS if c in {a.strip() for a in text.split(",")} | {"week_start"}]
    else:
        assert chosen == COLUMNS


@FAST
@given(st.one_of(st.none(), TEXT, st.sampled_from(["json", "csv"])), st.one_of(st.none(), TEXT))
def test_parse_format(text: str | None, accept: str | None) -> None:
    try:
        kind = params.parse_format(text, accept)
    except BadParameter as exc:
        assert exc.param == "format" and text not in (None, "", "json", "csv")
        return
    assert kind in params.FORMATS
    if text:
        assert kind == text


@FAST
@given(st.one_of(st.none(), TEXT, st.sampled_from(["value", "-value", "period_start", "-period_start", "--value"])))
def test_parse_order(text: str | None) -> None:
    try:
        column, descending = params.parse_order(text, ("period_start", "value"), "period_start")
    except BadParameter as exc:
        assert exc.param == "order"
        return
    assert (("-" if descending else "") + column) == (text or "period_start")


@FAST
@given(st.lists(st.tuples(st.one_of(st.sampled_from(["dim.country", "dim.plan", "dim.", "limit", "dim.country.x"]),
                                    TEXT), st.text(max_size=250)), max_size=6))
def test_parse_dimension_filters(items: list[tuple[str, str]]) -> None:
    try:
        filters = params.parse_dimension_filters(items, ["country", "plan"])
    except BadParameter as exc:
        assert exc.param is not None and exc.param.startswith("dim.")
        return
    dims = [(k[4:], v) for k, v in items if k.startswith("dim.")]
    assert filters == dict(dims) and len(filters) == len(dims)
    assert set(filters) <= {"country", "plan"}


@FAST
@given(st.integers(0, 10**12), TEXT)
def test_cursor_round_trip(position: int, query: str) -> None:
    cursor = params.encode_cursor(position, query)
    assert params.decode_cursor(cursor, query) == position
    with pytest.raises(BadParameter):
        params.decode_cursor(cursor, query + "x")


@FAST
@given(st.one_of(TEXT, st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEF0123456789-_=.", max_size=600).map(
    lambda t: "c1." + t)))
def test_garbage_cursors_are_refused(text: str) -> None:
    try:
        position = params.decode_cursor(text, params.fingerprint("q"))
    except BadParameter as exc:
        assert exc.param == "cursor" and "not a cursor" in exc.message
        return
    assert text == "" and position == 0
