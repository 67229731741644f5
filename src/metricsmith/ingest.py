"""Loading events into ``raw.events``: validation, quarantine, de-duplication, COPY.

Every input row ends in exactly one place: ``raw.events`` (loaded), skipped as a duplicate
of an ``event_id`` already stored or seen earlier in the same load (counted), or
``raw.events_quarantine`` with its original text and a reason. Nothing is dropped silently:
``LoadSummary.total == loaded + duplicates + quarantined`` always holds.

Rows travel in batches: each batch is COPY'd into a temporary table, then moved into
``raw.events`` with ``on conflict do nothing`` (so concurrent loaders and re-loads are safe),
and its rejects are COPY'd into the quarantine, all in one transaction.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import orjson
import psycopg

from metricsmith.config import Settings
from metricsmith.db import connect
from metricsmith.progress import progress_bar

#: Columns of raw.events, in COPY order.
EVENT_COLUMNS = (
    "event_id", "occurred_at", "received_at", "event_type", "user_id",
    "organization_id", "session_id", "revenue_cents", "properties",
)
REQUIRED = ("event_id", "occurred_at", "event_type")
OPTIONAL_TEXT = ("user_id", "organization_id", "session_id")
MAX_PROPERTIES_BYTES = 64 * 1024
MAX_TEXT_LENGTH = 512
MAX_FUTURE = timedelta(days=1)
MIN_TIME = datetime(1970, 1, 1, tzinfo=UTC)
MAX_TIME = datetime(2200, 1, 1, tzinfo=UTC)
DEFAULT_BATCH = 50_000

#: Every reason a row can be quarantined with, and what it means.
REASONS: dict[str, str] = {
    "invalid_json": "the line is not valid JSON",
    "not_an_object": "the JSON value is not an object",
    "malformed_csv": "the CSV row has a different number of fields than the header",
    "missing_field": "a required field (event_id, occurred_at, event_type) is missing or null",
    "unknown_field": "a field that raw.events does not have (typo?)",
    "bad_uuid": "event_id is not a UUID",
    "bad_timestamp": "occurred_at / received_at is not an ISO 8601 timestamp",
    "timestamp_out_of_range": "a timestamp is before 1970 or after 2200",
    "occurred_in_future": "occurred_at is more than one day after received_at",
    "empty_event_type": "event_type is empty or blank",
    "wrong_type": "a field has the wrong JSON type (e.g. an object where text belongs)",
    "value_too_long": f"a text field is longer than {MAX_TEXT_LENGTH} characters",
    "invalid_characters": "a text field contains a NUL character",
    "negative_revenue": "revenue_cents is below zero",
    "non_integer_revenue": "revenue_cents is not a whole number",
    "bad_properties": "properties is not a JSON object",
    "oversize_properties": f"properties is larger than {MAX_PROPERTIES_BYTES // 1024} KiB as JSON",
}


class IngestError(ValueError):
    """A whole input could not be read (missing file, unknown format)."""


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: str
    detail: str

    def __post_init__(self) -> None:
        assert self.reason in REASONS, self.reason


@dataclass(frozen=True, slots=True)
class ValidEvent:
    event_id: str
    occurred_at: datetime
    received_at: datetime | None
    event_type: str
    user_id: str | None
    organization_id: str | None
    session_id: str | None
    revenue_cents: int
    properties: str  # JSON text

    def row(self, default_received: datetime) -> tuple[Any, ...]:
        return (
            self.event_id, self.occurred_at, self.received_at or default_received, self.event_type,
            self.user_id, self.organization_id, self.session_id, self.revenue_cents, self.properties,
        )


def _parse_time(name: str, value: Any) -> datetime | Rejection:
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            return Rejection("bad_timestamp", f"{name}={value!r} is not ISO 8601")
    else:
        return Rejection("bad_timestamp", f"{name} must be an ISO 8601 string, got {type(value).__name__}")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)  # naive timestamps are UTC (documented)
    if not MIN_TIME <= parsed < MAX_TIME:
        return Rejection("timestamp_out_of_range", f"{name}={value!r} is outside 1970..2200")
    return parsed


def _text(name: str, value: Any, *, required: bool) -> str | None | Rejection:
    if value is None:
        return Rejection("missing_field", f"{name} is required") if required else None
    if isinstance(value, bool) or not isinstance(value, str | int):
        return Rejection("wrong_type", f"{name} must be text, got {type(value).__name__}")
    text = str(value)
    if len(text) > MAX_TEXT_LENGTH:
        return Rejection("value_too_long", f"{name} has {len(text)} characters (max {MAX_TEXT_LENGTH})")
    if "\x00" in text:
        return Rejection("invalid_characters", f"{name} contains a NUL character")
    if not required and text == "":
        return None  # empty optional ids are treated as absent
    return text


def _revenue(value: Any) -> int | Rejection:
    if value is None or value == "":
        return 0
    if isinstance(value, bool):
        return Rejection("wrong_type", "revenue_cents must be a number, got bool")
    if isinstance(value, int):
        number = value
    elif isinstance(value, float):
        if not value.is_integer():
            return Rejection("non_integer_revenue", f"revenue_cents={value!r} is not a whole number of cents")
        number = int(value)
    elif isinstance(value, str):
        try:
            number = int(value.strip())
        except ValueError:
            try:
                as_float = float(value)
            except ValueError:
                return Rejection("wrong_type", f"revenue_cents={value!r} is not a number")
            return Rejection("non_integer_revenue", f"revenue_cents={value!r} is not a whole number of cents") \
                if as_float == as_float else Rejection("wrong_type", "revenue_cents is NaN")
    else:
        return Rejection("wrong_type", f"revenue_cents must be a number, got {type(value).__name__}")
    if number < 0:
        return Rejection("negative_revenue", f"revenue_cents={number} is negative")
    if number > 2**63 - 1:
        return Rejection("wrong_type", "revenue_cents does not fit in bigint")
    return number


def _properties(value: Any) -> str | Rejection:
    if value is None or value == "":
        return "{}"
    if isinstance(value, str):  # CSV cells carry JSON text
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            return Rejection("bad_properties", "properties is not valid JSON")
    if not isinstance(value, dict):
        return Rejection("bad_properties", f"properties must be a JSON object, got {type(value).__name__}")
    try:
        text = orjson.dumps(value).decode()
    except TypeError as exc:
        return Rejection("bad_properties", f"properties cannot be stored as JSON: {exc}")
    if len(text) > MAX_PROPERTIES_BYTES:
        return Rejection("oversize_properties", f"properties is {len(text)} bytes (max {MAX_PROPERTIES_BYTES})")
    if "\\u0000" in text:
        return Rejection("invalid_characters", "properties contains a NUL character")
    return text


_ALLOWED = frozenset(EVENT_COLUMNS)


def validate_record(record: Mapping[str, Any] | str | bytes, *, now: datetime | None = None) -> ValidEvent | Rejection:
    """Check one event (a mapping, or one JSON text) against the raw.events contract."""
    if isinstance(record, str | bytes):
        try:
            record = orjson.loads(record)
        except orjson.JSONDecodeError as exc:
            return Rejection("invalid_json", str(exc).split(":", 1)[0])
        if not isinstance(record, dict):
            return Rejection("not_an_object", f"expected a JSON object, got {type(record).__name__}")
    unknown = [key for key in record if key not in _ALLOWED]
    if unknown:
        return Rejection("unknown_field", f"unknown field(s): {', '.join(sorted(map(str, unknown)))}")
    for name in REQUIRED:
        if record.get(name) is None:
            return Rejection("missing_field", f"{name} is required")

    raw_id = record["event_id"]
    if not isinstance(raw_id, str | uuid.UUID):
        return Rejection("bad_uuid", f"event_id must be a UUID string, got {type(raw_id).__name__}")
    try:
        event_id = str(raw_id if isinstance(raw_id, uuid.UUID) else uuid.UUID(raw_id))
    except ValueError:
        return Rejection("bad_uuid", f"event_id={raw_id!r} is not a UUID")

    occurred = _parse_time("occurred_at", record["occurred_at"])
    if isinstance(occurred, Rejection):
        return occurred
    received: datetime | None = None
    if record.get("received_at") not in (None, ""):
        parsed = _parse_time("received_at", record["received_at"])
        if isinstance(parsed, Rejection):
            return parsed
        received = parsed
    reference = received or now or datetime.now(UTC)
    if occurred - reference > MAX_FUTURE:
        return Rejection("occurred_in_future", f"occurred_at {occurred.isoformat()} is more than a day after "
                                               f"received_at {reference.isoformat()}")

    event_type = record["event_type"]
    if not isinstance(event_type, str):
        return Rejection("wrong_type", f"event_type must be text, got {type(event_type).__name__}")
    if not event_type.strip():
        return Rejection("empty_event_type", "event_type is empty")
    checked_type = _text("event_type", event_type, required=True)
    if isinstance(checked_type, Rejection):
        return checked_type

    texts: dict[str, str | None] = {}
    for name in OPTIONAL_TEXT:
        value = _text(name, record.get(name), required=False)
        if isinstance(value, Rejection):
            return value
        texts[name] = value

    revenue = _revenue(record.get("revenue_cents"))
    if isinstance(revenue, Rejection):
        return revenue
    props = _properties(record.get("properties"))
    if isinstance(props, Rejection):
        return props
    return ValidEvent(event_id, occurred, received, event_type, texts["user_id"], texts["organization_id"],
                      texts["session_id"], revenue, props)


_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
#: ISO 8601 extended form with an explicit offset: PostgreSQL reads these exactly as Python does
_STRICT_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?(?:Z|[+-]\d{2}:\d{2})")
_fromiso = datetime.fromisoformat
_NULL = "\\N"


def _copy_escape(text: str) -> str:
    """Escape a value for PostgreSQL's COPY text format."""
    if "\\" in text or "\t" in text or "\n" in text or "\r" in text:
        return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return text


def copy_line(row: tuple[Any, ...]) -> str:
    """A raw.events row (as from :meth:`ValidEvent.row`) as one COPY text line."""
    fields = []
    for value in row:
        if value is None:
            fields.append(_NULL)
        elif isinstance(value, datetime):
            fields.append(value.isoformat())
        else:
            fields.append(_copy_escape(str(value)))
    return "\t".join(fields) + "\n"


def fast_line(record: Any, now: datetime, now_text: str) -> tuple[str, str] | None:
    """``(event_id, COPY text line)`` for a record that is clean in the common way, else None.

    A strictly narrower check than :func:`validate_record` (which gives the reason for anything
    this returns None for); it exists only for speed and must agree with it on every record it
    accepts (tests compare the two).
    """
    if isinstance(record, str | bytes):
        try:
            record = orjson.loads(record)
        except orjson.JSONDecodeError:
            return None
    if type(record) is not dict or not record.keys() <= _ALLOWED:
        return None
    get = record.get
    event_id = get("event_id")
    if type(event_id) is not str or len(event_id) != 36:
        return None
    event_id = event_id.lower()
    if not _UUID_RE.fullmatch(event_id):
        return None
    occurred_text = get("occurred_at")
    if type(occurred_text) is not str or not _STRICT_TIME.fullmatch(occurred_text):
        return None
    occurred = _fromiso(occurred_text)
    received_text = get("received_at")
    if received_text is None:
        received, received_text = now, now_text
    else:
        if type(received_text) is not str or not _STRICT_TIME.fullmatch(received_text):
            return None
        received = _fromiso(received_text)
        if not MIN_TIME <= received < MAX_TIME:
            return None
    if not MIN_TIME <= occurred < MAX_TIME or occurred - received > MAX_FUTURE:
        return None
    event_type = get("event_type")
    if type(event_type) is not str or not 0 < len(event_type) <= MAX_TEXT_LENGTH or not event_type.strip() \
            or "\x00" in event_type:
        return None
    user_id = get("user_id")
    org_id = get("organization_id")
    session_id = get("session_id")
    for value in (user_id, org_id, session_id):
        if value is not None and (type(value) is not str or not 0 < len(value) <= MAX_TEXT_LENGTH
                                  or "\x00" in value):
            return None
    revenue = get("revenue_cents")
    if revenue is None:
        revenue = 0
    elif type(revenue) is not int or not 0 <= revenue < 2**63:
        return None
    properties = get("properties")
    if properties is None:
        props = "{}"
    elif type(properties) is dict:
        try:
            props = orjson.dumps(properties).decode()
        except TypeError:
            return None
        if len(props) > MAX_PROPERTIES_BYTES or "\\u0000" in props:
            return None
        if "\\" in props:
            props = props.replace("\\", "\\\\")
    else:
        return None
    line = "\t".join((
        event_id, occurred_text, received_text, _copy_escape(event_type),
        _NULL if user_id is None else _copy_escape(user_id),
        _NULL if org_id is None else _copy_escape(org_id),
        _NULL if session_id is None else _copy_escape(session_id),
        str(revenue), props,
    )) + "\n"
    return event_id, line


# --------------------------------------------------------------------------- summary


@dataclass
class LoadSummary:
    total: int = 0
    loaded: int = 0
    duplicates: int = 0
    quarantined_by_reason: Counter[str] = field(default_factory=Counter)
    sources: list[str] = field(default_factory=list)

    @property
    def quarantined(self) -> int:
        return sum(self.quarantined_by_reason.values())

    def add(self, other: LoadSummary) -> None:
        self.total += other.total
        self.loaded += other.loaded
        self.duplicates += other.duplicates
        self.quarantined_by_reason.update(other.quarantined_by_reason)
        self.sources.extend(other.sources)

    def check(self) -> None:
        if self.total != self.loaded + self.duplicates + self.quarantined:
            raise AssertionError(f"load summary does not add up: {self}")

    def as_dict(self) -> dict[str, Any]:
        return {
            "total": self.total, "loaded": self.loaded, "duplicates": self.duplicates,
            "quarantined": self.quarantined, "quarantined_by_reason": dict(sorted(self.quarantined_by_reason.items())),
        }

    def render(self) -> str:
        lines = [
            f"read        {self.total:>12,}",
            f"loaded      {self.loaded:>12,}",
            f"duplicates  {self.duplicates:>12,}  (event_id already stored or repeated in the input; skipped)",
            f"quarantined {self.quarantined:>12,}" + ("  -> raw.events_quarantine" if self.quarantined else ""),
        ]
        for reason, count in sorted(self.quarantined_by_reason.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"  {reason:<24}{count:>8,}  {REASONS[reason]}")
        return "\n".join(lines)


# --------------------------------------------------------------------------- writing


@dataclass(slots=True)
class _Input:
    line_number: int | None
    raw_text: str
    record: Mapping[str, Any] | str | Rejection


_STAGE_DDL = """
create temporary table if not exists _ms_stage (
    event_id uuid, occurred_at timestamptz, received_at timestamptz, event_type text, user_id text,
    organization_id text, session_id text, revenue_cents bigint, properties jsonb
) on commit delete rows
"""


@dataclass
class _Prepared:
    summary: LoadSummary
    lines: list[str]
    rejects: list[tuple[Any, ...]]


def _prepare(batch: list[_Input], source: str, now: datetime) -> _Prepared:
    """Validate a batch (CPU only, no database): COPY lines to store, rejects, in-batch duplicates."""
    summary = LoadSummary(total=len(batch))
    lines: list[str] = []
    rejects: list[tuple[Any, ...]] = []
    seen: set[str] = set()
    now_text = now.isoformat()
    for item in batch:
        record = item.record
        fast = None if isinstance(record, Rejection) else fast_line(record, now, now_text)
        if fast is None:
            result = record if isinstance(record, Rejection) else validate_record(record, now=now)
            if isinstance(result, Rejection):
                summary.quarantined_by_reason[result.reason] += 1
                rejects.append((source, item.line_number, result.reason, result.detail,
                                item.raw_text.replace("\x00", "\\0")))
                continue
            fast = (result.event_id, copy_line(result.row(now)))
        if fast[0] in seen:
            summary.duplicates += 1
        else:
            seen.add(fast[0])
            lines.append(fast[1])
    return _Prepared(summary, lines, rejects)


_COLS = ", ".join(EVENT_COLUMNS)


def _store(conn: psycopg.Connection[Any], prepared: _Prepared) -> LoadSummary:
    """Write one prepared batch in one transaction; ids already stored count as duplicates."""
    summary, lines = prepared.summary, prepared.lines
    with conn.transaction():
        if lines:
            data = "".join(lines)
            try:
                # common case, new events: straight COPY into raw.events
                with conn.transaction(), conn.cursor().copy(f"copy raw.events ({_COLS}) from stdin") as copy:
                    copy.write(data)
                loaded = len(lines)
            except psycopg.errors.UniqueViolation:
                # some ids are stored already (a re-load, or a concurrent loader): stage, then skip them
                conn.execute(_STAGE_DDL)
                with conn.cursor().copy(f"copy _ms_stage ({_COLS}) from stdin") as copy:
                    copy.write(data)
                cur = conn.execute(f"insert into raw.events ({_COLS}) select {_COLS} from _ms_stage "
                                   "on conflict (event_id) do nothing")
                loaded = cur.rowcount
                conn.execute("truncate _ms_stage")
            summary.loaded = loaded
            summary.duplicates += len(lines) - loaded
        if prepared.rejects:
            with conn.cursor().copy(
                "copy raw.events_quarantine (source, line_number, reason, detail, raw_text) from stdin"
            ) as copy:
                for reject in prepared.rejects:
                    copy.write_row(reject)
    summary.check()
    return summary


def store_lines(conn: psycopg.Connection[Any], lines: list[str], rejects: list[tuple[Any, ...]]) -> LoadSummary:
    """The loader's write step for callers that validated themselves (the realtime stream consumer).

    ``lines`` are COPY lines from :func:`fast_line` / :func:`copy_line` (distinct event_ids),
    ``rejects`` are ``(source, line_number, reason, detail, raw_text)``. Runs in one transaction
    (a savepoint when the caller has one open); ids already stored count as duplicates.
    """
    summary = LoadSummary(total=len(lines) + len(rejects))
    for reject in rejects:
        summary.quarantined_by_reason[reject[2]] += 1
    return _store(conn, _Prepared(summary, lines, rejects))


def _batched(items: Iterable[_Input], size: int) -> Iterator[list[_Input]]:
    batch: list[_Input] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _write_inputs(items: Iterable[_Input], source: str, *, settings: Settings | None, batch_size: int,
                  on_batch: Any = None) -> LoadSummary:
    """Validate on this thread while a writer thread stores the previous batch (2 cores, 2 stages)."""
    from concurrent.futures import Future, ThreadPoolExecutor

    summary = LoadSummary(sources=[source])
    with connect(settings) as conn, ThreadPoolExecutor(max_workers=1, thread_name_prefix="ms-load") as writer:
        conn.execute("set time zone 'UTC'")
        pending: Future[LoadSummary] | None = None
        pending_size = 0
        for batch in _batched(items, batch_size):
            prepared = _prepare(batch, source, datetime.now(UTC))
            if pending is not None:
                summary.add(pending.result())
                if on_batch is not None:
                    on_batch(pending_size)
            pending, pending_size = writer.submit(_store, conn, prepared), len(batch)
        if pending is not None:
            summary.add(pending.result())
            if on_batch is not None:
                on_batch(pending_size)
    summary.sources = [source]
    return summary


def load_events(
    records: Iterable[Mapping[str, Any] | str | bytes],
    *,
    source: str = "python",
    settings: Settings | None = None,
    batch_size: int = DEFAULT_BATCH,
) -> LoadSummary:
    """Load events (mappings or JSON texts) with the loader's rules; returns the summary."""

    def inputs() -> Iterator[_Input]:
        for number, record in enumerate(records, start=1):
            if isinstance(record, bytes):
                record = record.decode("utf-8", errors="replace")
            raw = record if isinstance(record, str) else _mapping_text(record)
            yield _Input(number, raw, record)

    return _write_inputs(inputs(), source, settings=settings, batch_size=batch_size)


def _mapping_text(record: Mapping[str, Any]) -> str:
    try:
        return json.dumps(record, default=str, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(record)


# --------------------------------------------------------------------------- files


def _detect_format(name: str, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    lower = name.lower()
    if lower.endswith((".csv", ".csv.gz")):
        return "csv"
    if lower.endswith((".jsonl", ".ndjson", ".json", ".jsonl.gz", ".ndjson.gz")) or name == "-":
        return "jsonl"
    raise IngestError(f"{name}: cannot tell the format from the name; pass --format jsonl or --format csv")


def _jsonl_inputs(stream: IO[str]) -> Iterator[_Input]:
    for number, line in enumerate(stream, start=1):
        text = line.rstrip("\r\n")
        if not text.strip():
            continue
        yield _Input(number, text, text)


def _csv_inputs(stream: IO[str]) -> Iterator[_Input]:
    reader = csv.reader(stream)
    try:
        header = next(reader)
    except StopIteration:
        return
    header = [h.strip() for h in header]
    for row in reader:
        if not row or row == [""]:
            continue
        raw = _csv_text(row)
        number = reader.line_num
        if len(row) != len(header):
            yield _Input(number, raw, Rejection("malformed_csv", f"{len(row)} fields, header has {len(header)}"))
            continue
        record = {key: (value if value != "" else None) for key, value in zip(header, row, strict=True)}
        yield _Input(number, raw, record)


def _csv_text(row: list[str]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(row)
    return out.getvalue()


def _open(name: str) -> tuple[IO[str], int | None]:
    if name == "-":
        return sys.stdin, None
    path = Path(name)
    if not path.is_file():
        raise IngestError(f"{name}: no such file")
    if name.endswith(".gz"):
        import gzip

        return gzip.open(path, "rt", encoding="utf-8", errors="replace", newline=""), None
    return open(path, encoding="utf-8", errors="replace", newline=""), path.stat().st_size


def load_files(
    names: Iterable[str],
    *,
    fmt: str = "auto",
    settings: Settings | None = None,
    progress: bool = False,
    batch_size: int = DEFAULT_BATCH,
) -> LoadSummary:
    """Load JSON Lines / CSV files ('-' is stdin). Each file is its own source in the quarantine."""
    names = list(names) or ["-"]
    formats = {name: _detect_format(name, fmt) for name in names}  # fail before loading anything
    total = LoadSummary()
    for name in names:
        stream, size = _open(name)
        try:
            items = _csv_inputs(stream) if formats[name] == "csv" else _jsonl_inputs(stream)
            source = "stdin" if name == "-" else str(Path(name).name)
            with progress_bar(f"loading {source}", None, enabled=progress) as advance:
                result = _write_inputs(items, source, settings=settings, batch_size=batch_size, on_batch=advance)
        finally:
            if stream is not sys.stdin:
                stream.close()
        total.add(result)
    total.check()
    return total
