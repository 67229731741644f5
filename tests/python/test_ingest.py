"""Loader: every bad-input kind is quarantined with its reason; duplicates counted; nothing lost."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from metricsmith import ingest
from metricsmith.ingest import REASONS, load_events, load_files, validate_record

ROOT = Path(__file__).resolve().parents[2]


def ev(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "occurred_at": "2024-03-01T10:00:00Z",
        "event_type": "page_view",
        "user_id": "u1",
        "organization_id": "o1",
        "session_id": "s1",
        "revenue_cents": 0,
        "properties": {"path": "/"},
    }
    base.update(over)
    return base


#: one line per bad-input kind: (reason, raw JSON line)
BAD_LINES: list[tuple[str, str]] = [
    ("invalid_json", '{"event_id": "x", '),
    ("not_an_object", "[1, 2, 3]"),
    ("missing_field", json.dumps({k: v for k, v in ev().items() if k != "occurred_at"})),
    ("unknown_field", json.dumps(ev(usr="typo"))),
    ("bad_uuid", json.dumps(ev(event_id="not-a-uuid"))),
    ("bad_timestamp", json.dumps(ev(occurred_at="yesterday at noon"))),
    ("timestamp_out_of_range", json.dumps(ev(occurred_at="1950-01-01T00:00:00Z"))),
    ("occurred_in_future", json.dumps(ev(occurred_at="2024-03-05T00:00:00Z", received_at="2024-03-01T00:00:00Z"))),
    ("empty_event_type", json.dumps(ev(event_type="   "))),
    ("wrong_type", json.dumps(ev(user_id={"id": 1}))),
    ("value_too_long", json.dumps(ev(session_id="s" * 600))),
    ("invalid_characters", json.dumps(ev(user_id="bad\u0000id"))),
    ("negative_revenue", json.dumps(ev(event_type="purchase", revenue_cents=-100))),
    ("non_integer_revenue", json.dumps(ev(event_type="purchase", revenue_cents=12.5))),
    ("bad_properties", json.dumps(ev(properties=[1, 2]))),
    ("oversize_properties", json.dumps(ev(properties={"blob": "x" * 70_000}))),
]


def test_every_reason_has_a_test_line() -> None:
    assert {reason for reason, _ in BAD_LINES} | {"malformed_csv"} == set(REASONS)


@pytest.mark.parametrize(("reason", "line"), BAD_LINES, ids=[r for r, _ in BAD_LINES])
def test_validate_names_the_reason(reason: str, line: str) -> None:
    result = validate_record(line, now=datetime(2024, 3, 2, tzinfo=UTC))
    assert isinstance(result, ingest.Rejection)
    assert result.reason == reason
    assert result.detail  # a human-readable explanation


def _counts(conn: psycopg.Connection[Any]) -> tuple[int, int]:
    row = conn.execute("select (select count(*) from raw.events), (select count(*) from raw.events_quarantine)").fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def test_file_with_every_bad_kind_adds_up_and_keeps_originals(empty_events: psycopg.Connection[Any], tmp_path: Path) -> None:
    conn = empty_events
    good = [ev() for _ in range(25)]
    lines = [json.dumps(e) for e in good]
    lines += [line for _, line in BAD_LINES]
    lines.append(json.dumps(good[0]))  # duplicate inside the file
    lines.append("")  # blank lines are not rows
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")

    summary = load_files([str(path)])
    assert summary.total == 25 + len(BAD_LINES) + 1
    assert summary.loaded == 25
    assert summary.duplicates == 1
    assert dict(summary.quarantined_by_reason) == {reason: 1 for reason, _ in BAD_LINES}
    assert summary.total == summary.loaded + summary.duplicates + summary.quarantined
    assert _counts(conn) == (25, len(BAD_LINES))
    stored = {str(r[0]) for r in conn.execute("select event_id from raw.events")}
    assert stored == {e["event_id"] for e in good}
    quarantined = conn.execute(
        "select reason, raw_text, source, line_number from raw.events_quarantine order by line_number").fetchall()
    by_reason = {r[0]: r for r in quarantined}
    for number, (reason, line) in enumerate(BAD_LINES, start=26):
        row = by_reason[reason]
        assert row[2] == "events.jsonl" and row[3] == number
        if reason != "invalid_characters":  # NUL cannot be stored in text; it is kept escaped
            assert row[1] == line

    # loading the same file again: everything valid is a duplicate now, rejects quarantined again
    again = load_files([str(path)])
    assert again.loaded == 0 and again.duplicates == 26 and again.quarantined == len(BAD_LINES)
    assert _counts(conn) == (25, 2 * len(BAD_LINES))


def test_values_are_stored_exactly(empty_events: psycopg.Connection[Any]) -> None:
    e = ev(event_type="purchase", revenue_cents="1299", occurred_at="2024-03-01T12:30:00+02:00",
           received_at="2024-03-01T10:31:00Z", user_id=None, organization_id="", properties={"plan": "team"})
    summary = load_events([e])
    assert summary.loaded == 1
    row = empty_events.execute("select occurred_at, received_at, event_type, user_id, organization_id, session_id, "
                               "revenue_cents, properties from raw.events").fetchone()
    assert row == (datetime(2024, 3, 1, 10, 30, tzinfo=UTC), datetime(2024, 3, 1, 10, 31, tzinfo=UTC), "purchase",
                   None, None, "s1", 1299, {"plan": "team"})


def test_missing_received_at_defaults_to_load_time(empty_events: psycopg.Connection[Any]) -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    load_events([ev()])
    received = empty_events.execute("select received_at from raw.events").fetchone()
    assert received is not None and received[0] >= before


def test_csv_with_bad_rows(empty_events: psycopg.Connection[Any], tmp_path: Path) -> None:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["event_id", "occurred_at", "event_type", "user_id", "revenue_cents", "properties"])
    good_ids = [str(uuid.uuid4()) for _ in range(3)]
    for i, event_id in enumerate(good_ids):
        writer.writerow([event_id, "2024-01-01 10:00:00+00", "purchase", f"u{i}", "500", '{"plan": "a"}'])
    writer.writerow([str(uuid.uuid4()), "2024-01-01T10:00:00Z", "purchase", "u9", "-5", ""])
    writer.writerow([str(uuid.uuid4()), "2024-01-01T10:00:00Z", "x"])  # too few fields
    writer.writerow([good_ids[0], "2024-01-01 10:00:00+00", "purchase", "u0", "500", ""])
    path = tmp_path / "events.csv"
    path.write_text(out.getvalue())
    summary = load_files([str(path)])
    assert (summary.loaded, summary.duplicates) == (3, 1)
    assert dict(summary.quarantined_by_reason) == {"negative_revenue": 1, "malformed_csv": 1}
    assert _counts(empty_events) == (3, 2)
    assert empty_events.execute("select sum(revenue_cents) from raw.events").fetchone() == (1500,)


def test_cli_stdin_exit_status_and_allow_quarantine(empty_events: psycopg.Connection[Any]) -> None:
    data = "\n".join([json.dumps(ev()), json.dumps(ev()), BAD_LINES[0][1]]) + "\n"
    cmd = [sys.executable, "-m", "metricsmith.cli", "load", "-"]
    first = subprocess.run(cmd, input=data, capture_output=True, text=True, cwd=ROOT)
    assert first.returncode == 1
    assert "loaded                 2" in first.stdout and "invalid_json" in first.stdout
    assert "--allow-quarantine" in first.stderr
    ok = subprocess.run([*cmd, "--allow-quarantine"], input=json.dumps(ev()) + "\n" + BAD_LINES[1][1] + "\n",
                        capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    assert _counts(empty_events) == (3, 2)


def test_unknown_format_and_missing_file_fail_before_loading(empty_events: psycopg.Connection[Any], tmp_path: Path) -> None:
    good = tmp_path / "a.jsonl"
    good.write_text(json.dumps(ev()) + "\n")
    with pytest.raises(ingest.IngestError, match="cannot tell the format"):
        load_files([str(good), str(tmp_path / "b.txt")])
    with pytest.raises(ingest.IngestError, match="no such file"):
        load_files([str(tmp_path / "missing.jsonl")])
    assert _counts(empty_events) == (0, 0)


def test_large_input_in_many_batches_adds_up(empty_events: psycopg.Connection[Any]) -> None:
    events = [ev() for _ in range(2_500)]
    records: list[Any] = [*events, *events[:100], *(line for _, line in BAD_LINES[:5])]
    summary = load_events(records, batch_size=300)
    assert (summary.total, summary.loaded, summary.duplicates, summary.quarantined) == (2_605, 2_500, 100, 5)
    assert _counts(empty_events) == (2_500, 5)


TRICKY = [
    ev(user_id="tab\there", session_id="new\nline", organization_id="back\\slash"),
    ev(properties={"q": 'quote " and \\ backslash', "t": "tab\t", "u": "ünïcödé ✓"}),
    ev(event_id=str(uuid.uuid4()).upper()),
    ev(occurred_at="2024-03-01T10:00:00.123456+05:30", received_at="2024-03-01T05:00:00Z"),
    ev(occurred_at="2024-03-01 10:00:00Z"),
    ev(occurred_at="2024-03-01T10:00:00"),  # naive: UTC (slow path)
    ev(event_id=uuid.uuid4().hex),  # no hyphens (slow path)
    ev(revenue_cents="250"),  # numeric text (slow path)
    ev(revenue_cents=300.0),  # whole float (slow path)
    ev(user_id=12345),  # number id (slow path)
    ev(user_id="", organization_id=None),  # empty optional id means absent
]


def test_fast_path_agrees_with_full_validation(empty_events: psycopg.Connection[Any]) -> None:
    now = datetime.now(UTC)
    for record in TRICKY:
        fast = ingest.fast_line(dict(record), now, now.isoformat())
        slow = validate_record(dict(record), now=now)
        assert isinstance(slow, ingest.ValidEvent)
        if fast is not None:
            assert fast[0] == slow.event_id
    summary = load_events([dict(r) for r in TRICKY])
    assert summary.loaded == len(TRICKY)
    rows = empty_events.execute(
        "select event_id::text, occurred_at, event_type, user_id, organization_id, session_id, revenue_cents, "
        "properties from raw.events").fetchall()
    got = {r[0]: r[1:] for r in rows}
    for record in TRICKY:
        expected = validate_record(dict(record), now=now)
        assert isinstance(expected, ingest.ValidEvent)
        props = json.loads(expected.properties)
        assert got[expected.event_id] == (expected.occurred_at, expected.event_type, expected.user_id,
                                          expected.organization_id, expected.session_id, expected.revenue_cents,
                                          props)


from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_BAD = [line for _, line in BAD_LINES]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n_good=st.integers(0, 40),
    bad=st.lists(st.sampled_from(_BAD), max_size=12),
    dup_picks=st.lists(st.integers(0, 1_000), max_size=15),
    batch_size=st.integers(1, 25),
)
def test_every_row_is_accounted_for(empty_events: psycopg.Connection[Any], n_good: int, bad: list[str],
                                    dup_picks: list[int], batch_size: int) -> None:
    empty_events.execute("truncate raw.events, raw.events_quarantine")
    good = [json.dumps(ev()) for _ in range(n_good)]
    dups = [good[i % n_good] for i in dup_picks] if n_good else []
    records = good + bad + dups
    summary = load_events(records, batch_size=batch_size)
    assert summary.total == len(records)
    assert (summary.loaded, summary.duplicates, summary.quarantined) == (n_good, len(dups), len(bad))
    assert _counts(empty_events) == (n_good, len(bad))
