"""Fuzzing the loader and the stream consumer: no input can make them raise, and every input line
(stream entry) ends in exactly one place - loaded, duplicate, quarantined or blank.

Inputs: arbitrary bytes, and valid events mutated (fields replaced by arbitrary JSON values or by
calendar-shaped strings such as 2024-02-30 or +25:00, fields dropped, unknown or repeated keys,
bytes flipped, inserted or cut). CI runs a bounded number of examples; ``METRICSMITH_DEEP=1``
(``make test-deep``) runs many more.

The check is independent of the loader's own counts: for each line it looks where the line is
(its text in ``raw.events_quarantine``, its event_id in ``raw.events``, or blank) and compares
the tally with the summary.
"""

from __future__ import annotations

import gzip
import json
import os
import uuid
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from _realtime_events import private_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metricsmith import ingest
from metricsmith.ingest import load_events, load_files
from metricsmith.realtime import StreamConsumer, track_many

DEEP = os.environ.get("METRICSMITH_DEEP") == "1"
FUZZ = settings(max_examples=1_500 if DEEP else 30, deadline=None, derandomize=not DEEP,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])

# ---------------------------------------------------------------------------- strategies

_digits = st.text("0123456789", min_size=1, max_size=4)
calendar_like = st.builds(
    lambda y, mo, d, sep, h, mi, s, frac, zone: f"{y}-{mo}-{d}{sep}{h}:{mi}:{s}{frac}{zone}",
    st.sampled_from(["2024", "0000", "9999", "1999", "2000", "2199", "1969"]) | _digits,
    st.sampled_from(["01", "02", "12", "13", "00"]) | _digits,
    st.sampled_from(["01", "28", "29", "30", "31", "40"]) | _digits,
    st.sampled_from(["T", " ", "t", "x"]),
    st.sampled_from(["00", "23", "24", "99"]) | _digits,
    st.sampled_from(["00", "59", "60"]),
    st.sampled_from(["00", "59", "60", "61"]),
    st.sampled_from(["", ".5", ".123456", ".1234567"]),
    st.sampled_from(["Z", "z", "", "+00:00", "-00:00", "+05:30", "+14:59", "+15:59", "+16:00", "+23:59",
                     "+24:00", "+25:00", "-12:00", "+01:60", "+0100"]),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats(allow_nan=False)
    | st.text(max_size=40) | calendar_like,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
FIELDS = list(ingest.EVENT_COLUMNS)


def base_event(event_id: str) -> dict[str, Any]:
    return {"event_id": event_id, "occurred_at": "2024-03-01T10:00:00Z", "received_at": "2024-03-01T10:00:05Z",
            "event_type": "purchase", "user_id": "u1", "organization_id": "o1", "session_id": "s1",
            "revenue_cents": 1299, "properties": {"plan": "team"}}


@st.composite
def mutated_event(draw: st.DrawFn) -> bytes:
    event = base_event(str(uuid.UUID(int=draw(st.integers(0, 2**128 - 1)))))
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["replace", "drop", "unknown", "time"]))
        name = draw(st.sampled_from(FIELDS))
        if kind == "replace":
            event[name] = draw(json_values)
        elif kind == "drop":
            event.pop(name, None)
        elif kind == "unknown":
            event[draw(st.text(max_size=10))] = draw(json_values)
        else:
            event[draw(st.sampled_from(["occurred_at", "received_at"]))] = draw(calendar_like)
    text = json.dumps(event, ensure_ascii=draw(st.booleans()))
    if draw(st.booleans()):  # repeat a key textually (last one wins in most parsers)
        key = draw(st.sampled_from(FIELDS))
        text = text[:-1] + f', "{key}": {json.dumps(draw(json_values))}}}'
    data = bytearray(text.encode("utf-8", "surrogatepass"))
    for _ in range(draw(st.integers(0, 2))):  # byte-level damage
        where = draw(st.integers(0, len(data)))
        how = draw(st.sampled_from(["flip", "insert", "cut"]))
        if how == "flip" and where < len(data):
            data[where] ^= draw(st.integers(1, 255))
        elif how == "insert":
            data[where:where] = draw(st.binary(min_size=1, max_size=4))
        else:
            del data[where:where + draw(st.integers(1, 8))]
    return bytes(data).replace(b"\n", b" ")


line_payloads = st.lists(
    st.one_of(mutated_event(), st.binary(max_size=60).map(lambda b: b.replace(b"\n", b"")), st.just(b""),
              st.just(b"   \r")),
    min_size=1, max_size=25,
)

# ---------------------------------------------------------------------------- the independent check


def _physical_lines(data: bytes) -> list[bytes]:
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    lines = [line[:-1] if line.endswith(b"\r") else line for line in lines]
    if lines and lines[0].startswith(b"\xef\xbb\xbf"):
        lines[0] = lines[0][3:]
    return lines


def _places(conn: psycopg.Connection[Any], source: str) -> tuple[set[str], set[str]]:
    quarantined = {r[0] for r in conn.execute("select raw_text from raw.events_quarantine where source = %s",
                                              (source,))}
    stored = {str(r[0]) for r in conn.execute("select event_id from raw.events")}
    return quarantined, stored


def _where(line: bytes, quarantined: set[str], stored: set[str], csv_header: list[str] | None) -> str:
    if not line.strip():
        return "blank"
    if ingest.raw_text(line) in quarantined:
        return "quarantined"
    if csv_header is None:
        record = orjson.loads(line)
        event_id = str(uuid.UUID(str(record["event_id"])))
    else:
        first = line.decode().split(",")[csv_header.index("event_id")].strip('"')
        event_id = str(uuid.UUID(first))
    assert event_id in stored, line
    return "stored"


def assert_every_line_in_one_place(conn: psycopg.Connection[Any], data: bytes, source: str,
                                   summary: ingest.LoadSummary, *, csv_format: bool = False,
                                   first: ingest.LoadSummary | None = None) -> None:
    """``first``: the summary of the first load of the same data (this one is a re-load)."""
    summary.check()
    lines = _physical_lines(data)
    header = None
    if csv_format and lines:
        header = [h.strip() for h in lines[0].decode("utf-8", "replace").split(",")]
        lines = lines[1:]
    assert summary.total == len(lines)
    quarantined, stored = _places(conn, source)
    places = [_where(line, quarantined, stored, header) for line in lines]
    assert places.count("blank") == summary.blank
    assert places.count("quarantined") == summary.quarantined
    assert places.count("stored") == summary.loaded + summary.duplicates
    origin = first or summary
    assert len(stored) == origin.loaded
    assert len(quarantined) == origin.quarantined - origin.already_quarantined


# ---------------------------------------------------------------------------- the loader


@FUZZ
@given(payloads=line_payloads, crlf=st.booleans(), bom=st.booleans(), batch=st.integers(1, 30))
def test_loader_jsonl_never_raises_and_accounts_for_every_line(empty_events: psycopg.Connection[Any],
                                                               tmp_path: Path, payloads: list[bytes], crlf: bool,
                                                               bom: bool, batch: int) -> None:
    empty_events.execute("truncate raw.events, raw.events_quarantine")
    data = (b"\xef\xbb\xbf" if bom else b"") + b"".join(p + (b"\r\n" if crlf else b"\n") for p in payloads)
    path = tmp_path / "fuzz.jsonl"
    path.write_bytes(data)
    summary = load_files([str(path)], batch_size=batch)
    assert_every_line_in_one_place(empty_events, data, "fuzz.jsonl", summary)
    # loading it again changes nothing in the database, and says so
    again = load_files([str(path)], batch_size=batch)
    assert again.loaded == 0 and again.quarantined == summary.quarantined
    assert again.already_quarantined == again.quarantined
    assert_every_line_in_one_place(empty_events, data, "fuzz.jsonl", again, first=summary)


@FUZZ
@given(payloads=line_payloads)
def test_loader_python_records_never_raise(empty_events: psycopg.Connection[Any], payloads: list[bytes]) -> None:
    empty_events.execute("truncate raw.events, raw.events_quarantine")
    records: list[Any] = []
    for payload in payloads:
        try:
            value = json.loads(payload)
        except ValueError:
            records.append(payload)
            continue
        records.append(value if isinstance(value, dict) else payload.decode("utf-8", "surrogateescape"))
    summary = load_events(records)
    summary.check()
    assert summary.total == len(records) and summary.blank == 0


@st.composite
def csv_file(draw: st.DrawFn) -> bytes:
    header = ["event_id", "occurred_at", "event_type", "revenue_cents", "properties"]
    rows = []
    for _ in range(draw(st.integers(0, 20))):
        kind = draw(st.sampled_from(["good", "mutated", "bytes", "blank"]))
        if kind == "good":
            cells = [str(uuid.uuid4()), "2024-03-01T10:00:00Z", "click", "0", '"{""a"": 1}"']
        elif kind == "mutated":
            cells = [str(uuid.uuid4()), draw(calendar_like), draw(st.text(max_size=8)),
                     str(draw(st.integers(-(2**64), 2**64))), draw(st.sampled_from(['"{""a"": 1, ""a"": 2}"', "",
                                                                                   '"unterminated', '"x"y']))]
            cells = cells[: draw(st.integers(1, 6))]
        elif kind == "bytes":
            rows.append(draw(st.binary(max_size=40)).replace(b"\n", b""))
            continue
        else:
            cells = [""]
        rows.append(",".join(cells).encode("utf-8", "surrogatepass").replace(b"\n", b" "))
    return (",".join(header) + "\n").encode() + b"".join(r + b"\n" for r in rows)


@FUZZ
@given(data=csv_file(), gz=st.booleans(), cut=st.integers(0, 100))
def test_loader_csv_and_gzip_never_raise(empty_events: psycopg.Connection[Any], tmp_path: Path, data: bytes,
                                          gz: bool, cut: int) -> None:
    empty_events.execute("truncate raw.events, raw.events_quarantine")
    if gz:
        packed = gzip.compress(data)
        packed = packed[: max(1, len(packed) * cut // 100)] if cut < 100 else packed
        path = tmp_path / "fuzz.csv.gz"
        path.write_bytes(packed)
        summary = load_files([str(path)])
        summary.check()  # a cut file: its readable lines, then one truncated_input
        if cut == 100:
            assert_every_line_in_one_place(empty_events, data, "fuzz.csv.gz", summary, csv_format=True)
        return
    path = tmp_path / "fuzz.csv"
    path.write_bytes(data)
    summary = load_files([str(path)])
    assert_every_line_in_one_place(empty_events, data, "fuzz.csv", summary, csv_format=True)


@FUZZ
@given(data=st.binary(max_size=400), name=st.sampled_from(["f.jsonl", "f.csv", "f.jsonl.gz", "f.csv.gz"]))
def test_loader_arbitrary_bytes_any_format(empty_events: psycopg.Connection[Any], tmp_path: Path, data: bytes,
                                           name: str) -> None:
    empty_events.execute("truncate raw.events, raw.events_quarantine")
    path = tmp_path / name
    path.write_bytes(data)
    summary = load_files([str(path)])
    summary.check()
    if not name.endswith(".gz"):
        assert_every_line_in_one_place(empty_events, data, name, summary, csv_format=name.endswith(".csv"))


# ---------------------------------------------------------------------------- the stream consumer


@FUZZ
@given(payloads=line_payloads)
def test_stream_consumer_never_wedges_and_accounts_for_every_entry(empty_events: psycopg.Connection[Any],
                                                                   payloads: list[bytes]) -> None:
    empty_events.execute("truncate raw.events, raw.events_quarantine")
    config = private_settings()
    assert track_many(payloads, settings=config) == len(payloads)
    consumer = StreamConsumer(config, log=lambda _: None, claim_idle_ms=60_000)
    try:
        stats = consumer.run(until_idle=True)
        assert consumer._pending_count() == 0
        assert consumer.redis.xlen(consumer.keys.stream) == 0
    finally:
        consumer.close()
    assert stats.entries == len(payloads)
    quarantined, stored = _places(empty_events, "stream")
    places = [_where(p, quarantined, stored, None) if p.strip() else "quarantined-blank" for p in payloads]
    # a blank entry is not JSON: quarantined like any other bad entry
    assert all(p == "stored" or ingest.raw_text(payloads[i]) in quarantined for i, p in enumerate(places))
    assert places.count("stored") + places.count("quarantined") + places.count("quarantined-blank") == len(payloads)
    assert stats.applied + stats.redis_duplicates + stats.quarantined == stats.entries
    assert len(quarantined) <= stats.quarantined == len(payloads) - places.count("stored")
    assert len(stored) == stats.loaded


@pytest.mark.parametrize("payload", [b"\xff\xfe", b'{"a":1,"a":2}', b"", b"\x00", b"[]",
                                     b'{"event_id":"' + str(uuid.uuid4()).encode() + b'","occurred_at":'
                                     b'"2024-01-01T00:00:00+16:00","event_type":"x"}'])
def test_stream_examples_found_by_fuzzing(empty_events: psycopg.Connection[Any], payload: bytes) -> None:
    config = private_settings()
    track_many([payload], settings=config)
    consumer = StreamConsumer(config, log=lambda _: None)
    try:
        stats = consumer.run(until_idle=True)
    finally:
        consumer.close()
    assert stats.entries == 1 and stats.loaded + stats.quarantined == 1


@settings(max_examples=3_000 if DEEP else 300, deadline=None, derandomize=not DEEP)
@given(payload=mutated_event())
def test_fast_path_never_disagrees_with_the_full_rule(payload: bytes) -> None:
    """The fast path is only a shortcut: whatever it accepts, validate_record accepts the same way."""
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    record = ingest.parse_object(payload)
    if isinstance(record, ingest.Rejection):
        return
    fast = ingest.fast_line(record, now, now.isoformat())
    slow = ingest.validate_record(record, now=now)
    if fast is None:
        return
    assert isinstance(slow, ingest.ValidEvent), (payload, slow)
    fields = fast[1].rstrip("\n").split("\t")
    assert fast[0] == slow.event_id == fields[0]
    assert datetime.fromisoformat(fields[1].replace("Z", "+00:00")) == slow.occurred_at
    assert (fields[3], int(fields[7])) == (ingest._copy_escape(slow.event_type), slow.revenue_cents)


@st.composite
def clean_event(draw: st.DrawFn) -> bytes:
    """A valid event in the common shape (what the batch path decides at C speed), sometimes with
    text that needs COPY escaping or is not ASCII, optional fields dropped, or a time out of range."""
    event: dict[str, Any] = base_event(str(uuid.UUID(int=draw(st.integers(0, 2**128 - 1)))))
    if draw(st.booleans()):
        event["event_id"] = event["event_id"].upper()
    for name in draw(st.lists(st.sampled_from(["received_at", "user_id", "organization_id", "session_id",
                                                "revenue_cents", "properties"]), max_size=3)):
        event.pop(name, None)
    if draw(st.integers(0, 4)) == 0:
        event[draw(st.sampled_from(["user_id", "session_id", "event_type"]))] = draw(
            st.sampled_from(["tab\there", "back\\slash", "new\nline", "caf\u00e9", "\u2603", "x" * 513, "", " "]))
    if draw(st.integers(0, 4)) == 0:
        event[draw(st.sampled_from(["occurred_at", "received_at"]))] = draw(
            st.sampled_from(["2099-01-01T00:00:00Z", "2001-01-01T00:00:00Z", "2024-03-01T10:00:00+14:59",
                             "2024-03-01 10:00:00.123456-03:00"]) | calendar_like)
    return orjson.dumps(event)


@settings(max_examples=600 if DEEP else 60, deadline=None, derandomize=not DEEP)
@given(payloads=st.lists(clean_event() | mutated_event() | st.binary(max_size=30), min_size=1, max_size=40),
       clean=st.lists(clean_event(), min_size=1, max_size=40), year=st.sampled_from([2000, 2024, 2099]))
def test_batch_path_decides_like_the_record_path(payloads: list[bytes], clean: list[bytes], year: int) -> None:
    """parse_objects / fast_lines / judge_many (the consumer's batch path) give, record by record,
    exactly what parse_object / fast_line / judge give - on mixed batches and on clean ones."""
    from datetime import UTC, datetime

    now = datetime(year, 3, 1, 10, 0, 3, tzinfo=UTC)
    now_text = now.isoformat()
    for batch in (payloads, clean, clean + payloads):
        records = ingest.parse_objects(batch)
        assert records == [ingest.parse_object(p) for p in batch]
        assert ingest.fast_lines(records, now, now_text) == [
            None if isinstance(r, ingest.Rejection) else ingest.fast_line(r, now, now_text) for r in records]
        assert ingest.judge_many(records, now, now_text) == [
            r if isinstance(r, ingest.Rejection) else ingest.judge(r, now, now_text) for r in records]
