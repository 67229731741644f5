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
    ("received_in_future", json.dumps(ev(occurred_at="2199-03-05T00:00:00Z", received_at="2199-03-05T00:00:00Z"))),
    ("duplicate_field", f'{{"event_id": "{uuid.uuid4()}", "occurred_at": "2024-03-01T10:00:00Z", "event_type": "a", '
                        '"event_type": "b"}'),
    ("revenue_too_large", json.dumps(ev(event_type="purchase", revenue_cents=9223372036854775807))),
    ("empty_event_type", json.dumps(ev(event_type="   "))),
    ("wrong_type", json.dumps(ev(user_id={"id": 1}))),
    ("value_too_long", json.dumps(ev(session_id="s" * 600))),
    ("invalid_characters", json.dumps(ev(user_id="bad\u0000id"))),
    ("negative_revenue", json.dumps(ev(event_type="purchase", revenue_cents=-100))),
    ("non_integer_revenue", json.dumps(ev(event_type="purchase", revenue_cents=12.5))),
    ("bad_properties", json.dumps(ev(properties=[1, 2]))),
    ("oversize_properties", json.dumps(ev(properties={"blob": "x" * 70_000}))),
]


#: reasons that need more than one JSON text line to show (tested below, each by name)
OTHER_REASONS = {"malformed_csv", "invalid_utf8", "truncated_input", "validation_error"}


def test_every_reason_has_a_test_line() -> None:
    assert {reason for reason, _ in BAD_LINES} | OTHER_REASONS == set(REASONS)


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
    assert summary.total == 25 + len(BAD_LINES) + 2  # every line is read, the blank one too
    assert summary.loaded == 25
    assert summary.duplicates == 1
    assert summary.blank == 1
    assert dict(summary.quarantined_by_reason) == {reason: 1 for reason, _ in BAD_LINES}
    assert summary.total == summary.loaded + summary.duplicates + summary.quarantined + summary.blank
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

    # loading the same file again: everything valid is a duplicate now; the bad lines are
    # counted as quarantined (that is where they are) but not recorded a second time
    again = load_files([str(path)])
    assert again.loaded == 0 and again.duplicates == 26 and again.quarantined == len(BAD_LINES)
    assert again.already_quarantined == len(BAD_LINES)
    assert "there already from an earlier load" in again.render()
    assert _counts(conn) == (25, len(BAD_LINES))


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
    assert _counts(empty_events) == (n_good, len(set(bad)))  # one quarantine row per distinct line


# --------------------------------------------------------------------------- impossible calendar values

IMPOSSIBLE_TIMES = ["2024-02-30T10:00:00Z", "2025-13-40T99:00:00Z", "0000-01-01T00:00:00Z",
                    "2024-06-30T23:59:60Z", "2024-03-01T10:00:00+25:00", "2023-02-29T00:00:00Z"]


@pytest.mark.parametrize("value", IMPOSSIBLE_TIMES)
def test_impossible_calendar_values_are_rejected_not_raised(value: str) -> None:
    now = datetime.now(UTC)
    for field_name in ("occurred_at", "received_at"):
        record = ev(**{field_name: value})
        assert ingest.fast_line(dict(record), now, now.isoformat()) is None
        result = ingest.judge(json.dumps(record), now, now.isoformat())
        assert isinstance(result, ingest.Rejection) and result.reason == "bad_timestamp", result
        assert value in result.detail


def test_file_with_impossible_dates_loads_the_rest(empty_events: psycopg.Connection[Any], tmp_path: Path) -> None:
    good = [ev() for _ in range(74)]
    bad = [json.dumps(ev(occurred_at=value)) for value in IMPOSSIBLE_TIMES]
    lines = [json.dumps(e) for e in good[:40]] + bad + [json.dumps(e) for e in good[40:]]
    path = tmp_path / "calendar.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = subprocess.run([sys.executable, "-m", "metricsmith.cli", "load", "--no-progress", str(path)],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "bad_timestamp" in result.stdout
    assert _counts(empty_events) == (74, len(IMPOSSIBLE_TIMES))
    stored = {str(r[0]) for r in empty_events.execute("select event_id from raw.events")}
    assert stored == {e["event_id"] for e in good}
    texts = {r[0] for r in empty_events.execute("select raw_text from raw.events_quarantine")}
    assert texts == set(bad)


# --------------------------------------------------------------------------- revenue bound


def test_revenue_is_bounded_per_event(empty_events: psycopg.Connection[Any], tmp_path: Path) -> None:
    from metricsmith import event_rules

    limit = event_rules.load().max_revenue_cents
    assert limit == 10**12  # the documented maximum (dbt_project.yml vars.event_rules)
    ok = [ev(event_type="purchase", revenue_cents=limit), ev(event_type="purchase", revenue_cents=str(limit))]
    too_much = [ev(event_type="purchase", revenue_cents=limit + 1),
                ev(event_type="purchase", revenue_cents=2**63 - 1),
                ev(event_type="purchase", revenue_cents=str(2**63 - 1)),
                ev(event_type="purchase", revenue_cents=float(2**70))]
    summary = load_events([json.dumps(e) for e in ok + too_much])
    assert summary.loaded == 2
    assert dict(summary.quarantined_by_reason) == {"revenue_too_large": 4}
    # CSV: the same rule
    path = tmp_path / "big.csv"
    path.write_text("event_id,occurred_at,event_type,revenue_cents\n"
                    f"{uuid.uuid4()},2024-03-01T10:00:00Z,purchase,9223372036854775807\n"
                    f"{uuid.uuid4()},2024-03-01T10:00:00Z,purchase,{limit}\n")
    csv_summary = load_files([str(path)])
    assert (csv_summary.loaded, dict(csv_summary.quarantined_by_reason)) == (1, {"revenue_too_large": 1})
    assert empty_events.execute("select sum(revenue_cents), max(revenue_cents) from raw.events").fetchone() == (
        3 * limit, limit)


# --------------------------------------------------------------------------- occurred_at window


def test_occurred_at_window(empty_events: psycopg.Connection[Any]) -> None:
    now = datetime.now(UTC)
    iso = lambda d: d.isoformat()  # noqa: E731
    cases: list[tuple[dict[str, Any], str | None]] = [
        (ev(occurred_at="2000-01-01T00:00:00Z"), None),
        (ev(occurred_at="1999-12-31T23:59:59Z"), "timestamp_out_of_range"),
        (ev(occurred_at="2000-01-01T00:30:00+01:00"), "timestamp_out_of_range"),  # 1999-12-31 23:30 UTC
        (ev(occurred_at=iso(now + timedelta(hours=23))), None),  # received_at = now
        (ev(occurred_at=iso(now + timedelta(days=2))), "occurred_in_future"),
        (ev(occurred_at="2199-01-01T00:00:00Z", received_at="2199-01-01T00:00:00Z"), "received_in_future"),
        (ev(occurred_at=iso(now), received_at=iso(now + timedelta(hours=2))), None),
        (ev(occurred_at=iso(now), received_at=iso(now + timedelta(days=3))), "received_in_future"),
        (ev(occurred_at="2024-03-02T09:00:00Z", received_at="2024-03-01T10:00:00Z"), None),
        (ev(occurred_at="2024-03-02T10:00:01Z", received_at="2024-03-01T10:00:00Z"), "occurred_in_future"),
    ]
    for record, reason in cases:
        for shape in (dict(record), json.dumps(record)):
            result = ingest.judge(shape, now, now.isoformat())
            got = result.reason if isinstance(result, ingest.Rejection) else None
            assert got == reason, (record, result)
    summary = load_events([record for record, _ in cases])
    assert summary.loaded == sum(1 for _, reason in cases if reason is None)
    assert summary.quarantined == sum(1 for _, reason in cases if reason is not None)


def test_sql_rule_reads_the_same_limits(empty_events: psycopg.Connection[Any]) -> None:
    """stg_events applies the limits of dbt_project.yml vars.event_rules, like the loader: rows
    written around the loader (COPY, psql) are judged the same way."""
    from metricsmith.core.dbt import invoke

    now = datetime.now(UTC)
    rows = {
        "ok": ("2024-03-01T10:00:00Z", "2024-03-01T10:00:00Z", 10**12, None),
        "early": ("1999-12-31T23:59:59Z", "2024-03-01T10:00:00Z", 0, "occurred_before_minimum"),
        "far-future": ("2199-01-01T00:00:00Z", "2199-01-01T00:00:00Z", 0, "occurred_in_future"),
        "after-received": ("2024-03-03T10:00:00Z", "2024-03-01T10:00:00Z", 0, "occurred_after_received"),
        "rich": ("2024-03-01T10:00:00Z", "2024-03-01T10:00:00Z", 2**63 - 1, "revenue_too_large"),
        "boundary": ("2000-01-01T00:00:00Z", "2000-01-01T00:00:00Z", 0, None),
    }
    with empty_events.cursor() as cur:
        for user, (occurred, received, revenue, _) in rows.items():
            cur.execute("insert into raw.events (event_id, occurred_at, received_at, event_type, user_id, revenue_cents)"
                        " values (%s, %s, %s, 'purchase', %s, %s)", (uuid.uuid4(), occurred, received, user, revenue))
    invoke(["run", "--select", "stg_events", "stg_events_rejected"]).raise_for_status()
    valid = {r[0] for r in empty_events.execute("select user_id from analytics.stg_events")}
    rejected = dict(empty_events.execute("select user_id, reason from analytics.stg_events_rejected").fetchall())
    assert valid == {user for user, row in rows.items() if row[3] is None}
    assert rejected == {user: row[3] for user, row in rows.items() if row[3] is not None}
    # and the Python rule agrees on every row
    for user, (occurred, received, revenue, reason) in rows.items():
        result = validate_record(ev(occurred_at=occurred, received_at=received, revenue_cents=revenue), now=now)
        assert isinstance(result, ingest.Rejection) == (reason is not None), user


# --------------------------------------------------------------------------- loader crashes and miscounts


def _quarantine(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute("select line_number, reason, raw_text from raw.events_quarantine order by line_number").fetchall()


def test_csv_field_over_the_csv_module_limit(empty_events: psycopg.Connection[Any], tmp_path: Path) -> None:
    path = tmp_path / "huge.csv"
    good = str(uuid.uuid4())
    huge = '"' + "x" * 200_000 + '"'
    path.write_text(f"event_id,occurred_at,event_type,properties\n{uuid.uuid4()},2024-03-01T10:00:00Z,a,{huge}\n"
                    f"{good},2024-03-01T10:00:00Z,a,\n")
    summary = load_files([str(path)])
    assert (summary.total, summary.loaded, summary.quarantined) == (2, 1, 1)
    assert [r[:2] for r in _quarantine(empty_events)] == [(2, "malformed_csv")]


def test_truncated_gzip_loads_what_is_readable(empty_events: psycopg.Connection[Any], tmp_path: Path) -> None:
    import gzip

    events = [ev() for _ in range(2_000)]
    data = gzip.compress(("\n".join(json.dumps(e) for e in events) + "\n").encode())
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    result = subprocess.run([sys.executable, "-m", "metricsmith.cli", "load", "--no-progress", str(path)],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "truncated_input" in result.stdout
    loaded, quarantined = _counts(empty_events)
    assert 0 < loaded < len(events) and quarantined == 1
    stored = {str(r[0]) for r in empty_events.execute("select event_id from raw.events")}
    assert stored == {e["event_id"] for e in events[:loaded]}  # a prefix, exactly
    (line_number, reason, text), = _quarantine(empty_events)
    assert reason == "truncated_input" and line_number == loaded + 1
    assert json.dumps(events[loaded]).startswith(text)  # the partial last line
    # a whole .gz file (two members) loads completely
    whole = tmp_path / "whole.jsonl.gz"
    more = [ev() for _ in range(3)]
    whole.write_bytes(gzip.compress(json.dumps(more[0]).encode() + b"\n")
                      + gzip.compress(b"\n".join(json.dumps(e).encode() for e in more[1:])))
    assert load_files([str(whole)]).loaded == 3


def test_csv_header_with_a_byte_order_mark(empty_events: psycopg.Connection[Any], tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbfevent_id,occurred_at,event_type\r\n"
                     + f"{uuid.uuid4()},2024-03-01T10:00:00Z,a\r\n{uuid.uuid4()},2024-03-01T10:00:00Z,b\r\n".encode())
    summary = load_files([str(path)])
    assert (summary.loaded, summary.quarantined) == (2, 0)
    jsonl = tmp_path / "bom.jsonl"
    jsonl.write_bytes(b"\xef\xbb\xbf" + json.dumps(ev()).encode() + b"\n")
    assert load_files([str(jsonl)]).loaded == 1


def test_unterminated_quote_does_not_swallow_the_next_rows(empty_events: psycopg.Connection[Any],
                                                           tmp_path: Path) -> None:
    ids = [str(uuid.uuid4()) for _ in range(4)]
    bad_line = f'{ids[0]},2024-03-01T10:00:00Z,"unterminated'
    path = tmp_path / "quote.csv"
    path.write_text("event_id,occurred_at,event_type\n" + bad_line + "\n"
                    + "".join(f"{i},2024-03-01T10:00:00Z,click\n" for i in ids[1:]))
    summary = load_files([str(path)])
    assert (summary.total, summary.loaded, summary.quarantined) == (4, 3, 1)
    assert _quarantine(empty_events) == [(2, "malformed_csv", bad_line)]


def test_duplicate_keys_are_quarantined(empty_events: psycopg.Connection[Any], tmp_path: Path) -> None:
    event_id = str(uuid.uuid4())
    lines = [
        f'{{"event_id": "{event_id}", "occurred_at": "2024-03-01T10:00:00Z", "event_type": "a", "event_type": "b"}}',
        f'{{"event_id": "{uuid.uuid4()}", "occurred_at": "2024-03-01T10:00:00Z", "event_type": "a", '
        '"properties": {"k": 1, "k": 2}}',
        # escaped key spelling is the same key
        f'{{"event_id": "{uuid.uuid4()}", "occurred_at": "2024-03-01T10:00:00Z", "event_type": "a", '
        '"properties": {"a:b": 1, "a\\u003ab": 2}}',
        # colons inside strings are not keys: valid
        f'{{"event_id": "{uuid.uuid4()}", "occurred_at": "2024-03-01T10:00:00+01:00", "event_type": "a:b", '
        '"properties": {"url": "http://x:8080/", "k": {"k": "\\u003a"}}}',
    ]
    path = tmp_path / "dups.jsonl"
    path.write_text("\n".join(lines) + "\n")
    summary = load_files([str(path)])
    assert (summary.loaded, dict(summary.quarantined_by_reason)) == (1, {"duplicate_field": 3})
    assert [r[2] for r in _quarantine(empty_events)] == lines[:3]
    # CSV: a repeated header column, and a properties cell repeating a key
    csv_path = tmp_path / "dups.csv"
    csv_path.write_text(f"event_id,occurred_at,event_type,event_type\n{uuid.uuid4()},2024-03-01T10:00:00Z,a,b\n")
    assert dict(load_files([str(csv_path)]).quarantined_by_reason) == {"duplicate_field": 1}
    assert validate_record(ev(properties='{"a": 1, "a": 2}')) == ingest.Rejection(
        "duplicate_field", "field(s) repeated in one object: a")


def test_invalid_utf8_is_quarantined_with_its_bytes(empty_events: psycopg.Connection[Any], tmp_path: Path) -> None:
    good = ev()
    bad_json = json.dumps(ev(user_id="caf\u00e9"), ensure_ascii=False).encode().replace("caf\u00e9".encode(), b"caf\xe9")
    bad_csv = f"{uuid.uuid4()},2024-03-01T10:00:00Z,caf".encode() + b"\xff\n"
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps(good).encode() + b"\n" + bad_json + b"\n")
    summary = load_files([str(path)])
    assert (summary.loaded, dict(summary.quarantined_by_reason)) == (1, {"invalid_utf8": 1})
    assert _quarantine(empty_events)[0][2] == bad_json.decode("utf-8", "backslashreplace")
    assert "caf\\xe9" in _quarantine(empty_events)[0][2]
    assert empty_events.execute("select count(*) from raw.events where user_id like '%\ufffd%'").fetchone() == (0,)
    csv_path = tmp_path / "latin1.csv"
    csv_path.write_bytes(b"event_id,occurred_at,event_type\n" + bad_csv)
    assert dict(load_files([str(csv_path)]).quarantined_by_reason) == {"invalid_utf8": 1}
    assert load_events([bad_json]).quarantined_by_reason == {"invalid_utf8": 1}


def test_csv_quarantine_keeps_the_original_line(empty_events: psycopg.Connection[Any], tmp_path: Path) -> None:
    lines = [
        f'{uuid.uuid4()}, 2024-03-01T10:00:00Z ,"purchase",-5',  # spaces and quotes as written
        f'{uuid.uuid4()},2024-03-01T10:00:00Z,"a ""quoted"" type",x',
        f"{uuid.uuid4()},2024-03-01T10:00:00Z,a",  # too few fields
    ]
    path = tmp_path / "orig.csv"
    path.write_text("event_id,occurred_at,event_type,revenue_cents\n" + "\n".join(lines) + "\n")
    summary = load_files([str(path)])
    assert summary.quarantined == 3
    assert [r[2] for r in _quarantine(empty_events)] == lines


def test_blank_lines_are_counted_in_read(empty_events: psycopg.Connection[Any], tmp_path: Path) -> None:
    path = tmp_path / "blanks.jsonl"
    path.write_text("\n" + json.dumps(ev()) + "\n   \n\r\n" + json.dumps(ev()) + "\n\n")
    summary = load_files([str(path)])
    assert (summary.total, summary.loaded, summary.blank) == (6, 2, 4)
    assert "blank                  4" in summary.render()
    csv_path = tmp_path / "blanks.csv"
    csv_path.write_text(f"event_id,occurred_at,event_type\n\n{uuid.uuid4()},2024-03-01T10:00:00Z,a\n\n")
    csv_summary = load_files([str(csv_path)])
    assert (csv_summary.total, csv_summary.loaded, csv_summary.blank) == (3, 1, 2)  # the header is not a row


def test_a_validator_bug_quarantines_the_row_instead_of_stopping_the_load(
        empty_events: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(value: Any) -> Any:
        if str(value).startswith("13"):
            raise RuntimeError("unlucky")
        return original(value)

    original = ingest._revenue
    monkeypatch.setattr(ingest, "_revenue", broken)
    records = [ev(revenue_cents="12"), ev(revenue_cents="13"), ev(revenue_cents=13.0), ev()]
    summary = load_events(records)
    assert (summary.loaded, dict(summary.quarantined_by_reason)) == (2, {"validation_error": 2})
    details = [r[0] for r in empty_events.execute("select detail from raw.events_quarantine")]
    assert all("RuntimeError: unlucky" in d for d in details)


def test_quarantine_is_idempotent_per_source_and_line(empty_events: psycopg.Connection[Any], tmp_path: Path) -> None:
    bad = [line for _, line in BAD_LINES]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(bad + bad[:3]) + "\n")  # three lines repeated inside the file too
    first = load_files([str(path)])
    assert first.quarantined == len(bad) + 3 and first.already_quarantined == 3
    assert _counts(empty_events) == (0, len(bad))
    for _ in range(2):
        again = load_files([str(path)])
        assert again.quarantined == len(bad) + 3 and again.already_quarantined == len(bad) + 3
    assert _counts(empty_events) == (0, len(bad))
    # the same lines from another source are that source's record
    other = tmp_path / "other.jsonl"
    other.write_text(bad[0] + "\n")
    assert load_files([str(other)]).already_quarantined == 0
    assert _counts(empty_events) == (0, len(bad) + 1)
    hashes = empty_events.execute("select count(*) from raw.events_quarantine "
                                  "where content_hash = sha256(convert_to(raw_text, 'UTF8'))").fetchone()
    assert hashes == (len(bad) + 1,)


def test_inputs_found_by_fuzzing(empty_events: psycopg.Connection[Any]) -> None:
    """Each of these made the old loader raise (a whole batch refused by PostgreSQL, or a
    traceback); each is now one quarantined or loaded row, and the rest of the batch loads."""
    good = ev()
    records: list[Any] = [
        good,
        json.dumps(ev(occurred_at="2024-03-01T10:00:00+16:00")),  # Python reads it, PostgreSQL refuses
        json.dumps(ev(occurred_at="2024-03-01T10:00:00-23:59")),
        ev(user_id="lone \ud800 surrogate"),  # cannot be sent as UTF-8
        {"event_id": str(uuid.uuid4()), "occurred_at": "2024-03-01T10:00:00Z", "event_type": "a",
         "bad\x00key\udc80": 1},  # unknown field whose name cannot be stored as text
        json.dumps(ev(event_type="label\x1fseparator")),  # would break the realtime label keys
    ]
    summary = load_events(records, batch_size=100)
    assert summary.loaded == 3, summary
    assert dict(summary.quarantined_by_reason) == {"invalid_characters": 2, "unknown_field": 1}
    stored = {r[0] for r in empty_events.execute("select occurred_at from raw.events")}
    assert datetime(2024, 3, 1, 10, 0, tzinfo=UTC) - timedelta(hours=16) in stored
    assert datetime(2024, 3, 1, 10, 0, tzinfo=UTC) + timedelta(hours=23, minutes=59) in stored


def test_json_nested_deeper_than_orjson_writes_is_judged_not_raised(empty_events: psycopg.Connection[Any],
                                                                     tmp_path: Path) -> None:
    """orjson reads 1024 levels but writes only 255: a line nested in between used to make the
    loader raise (TypeError from the repeated-key check); it is judged like any other line now,
    by the loader and by the stream consumer alike."""
    from _realtime_events import private_settings

    from metricsmith.realtime import StreamConsumer, track_many

    deep = "[" * 300 + "]" * 300

    def without_properties() -> str:
        return json.dumps({k: v for k, v in ev().items() if k != "properties"})[:-1]

    lines = [json.dumps(ev()),
             without_properties() + f', "properties": {{"a": {deep}}}}}',  # -> bad_properties
             without_properties() + f', "properties": {{"a": {deep}, "a": 1}}}}']  # -> duplicate_field
    path = tmp_path / "deep.jsonl"
    path.write_text("\n".join(lines) + "\n")
    summary = load_files([str(path)])
    assert summary.loaded == 1
    assert dict(summary.quarantined_by_reason) == {"bad_properties": 1, "duplicate_field": 1}
    settings = private_settings()
    track_many([line.encode() for line in lines[1:]], settings=settings)
    consumer = StreamConsumer(settings, log=lambda _: None)
    try:
        stats = consumer.run(until_idle=True)
    finally:
        consumer.close()
    assert stats.quarantined == 2
    reasons = sorted(r[0] for r in empty_events.execute(
        "select reason from raw.events_quarantine where source = 'stream'"))
    assert reasons == ["bad_properties", "duplicate_field"]
