"""Loading events into ``raw.events``: validation, quarantine, de-duplication, COPY.

Every input line ends in exactly one place: ``raw.events`` (loaded), skipped as a duplicate
of an ``event_id`` already stored or seen earlier in the same load (counted), a blank line
(counted), or ``raw.events_quarantine`` with its original text and a reason. Nothing is dropped
silently: ``LoadSummary.total == loaded + duplicates + quarantined + blank`` always holds, and no
input line can make the loader raise (a line the validator cannot judge is quarantined too).
The quarantine keeps one row per (source, line content): re-loading a file does not record its
bad lines again.

The limits of a valid event (revenue, the occurred_at window) come from ``dbt_project.yml``
``vars: event_rules`` through :mod:`metricsmith.event_rules`; ``stg_events`` applies the same.

Rows travel in batches: each batch is COPY'd into a temporary table, then moved into
``raw.events`` with ``on conflict do nothing`` (so concurrent loaders and re-loads are safe),
and its rejects are COPY'd into the quarantine, all in one transaction.
"""

from __future__ import annotations

import csv
import json
import operator
import re
import sys
import uuid
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, cast

import orjson
import psycopg

from metricsmith import event_rules
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
RULES = event_rules.load()
#: documented maximum of revenue_cents per event (vars.event_rules.max_revenue_cents)
MAX_REVENUE_CENTS = RULES.max_revenue_cents
#: occurred_at / received_at may not be before this (vars.event_rules.min_occurred_at)
MIN_TIME = RULES.min_occurred_at
#: occurred_at may be this much after received_at and after now (vars.event_rules.max_future_seconds)
MAX_FUTURE = RULES.max_future
DEFAULT_BATCH = 50_000
_FUTURE_TEXT = f"{RULES.max_future_seconds:,} s"

#: Every reason a row can be quarantined with, and what it means.
REASONS: dict[str, str] = {
    "invalid_utf8": "the line is not valid UTF-8 (raw_text shows the bad bytes as \\xNN)",
    "invalid_json": "the line is not valid JSON",
    "not_an_object": "the JSON value is not an object",
    "duplicate_field": "a field name appears twice in one JSON object or CSV header",
    "malformed_csv": "the line is not one CSV row with as many fields as the header",
    "truncated_input": "the compressed file ends early (truncated or corrupt); the lines before were read",
    "missing_field": "a required field (event_id, occurred_at, event_type) is missing or null",
    "unknown_field": "a field that raw.events does not have (typo?)",
    "bad_uuid": "event_id is not a UUID",
    "bad_timestamp": "occurred_at / received_at is not an ISO 8601 timestamp (or an impossible date/time)",
    "timestamp_out_of_range": f"a timestamp is before event_rules.min_occurred_at ({MIN_TIME.date()})",
    "occurred_in_future": f"occurred_at is more than event_rules.max_future_seconds ({_FUTURE_TEXT}) after "
                          "received_at or after the load time",
    "received_in_future": f"received_at is more than event_rules.max_future_seconds ({_FUTURE_TEXT}) after "
                          "the load time",
    "empty_event_type": "event_type is empty or blank",
    "wrong_type": "a field has the wrong JSON type (e.g. an object where text belongs)",
    "value_too_long": f"a text field is longer than {MAX_TEXT_LENGTH} characters",
    "invalid_characters": "a text field contains a NUL character or a lone surrogate, or event_type a control "
                          "character",
    "negative_revenue": "revenue_cents is below zero",
    "revenue_too_large": f"revenue_cents is above event_rules.max_revenue_cents ({MAX_REVENUE_CENTS:,})",
    "non_integer_revenue": "revenue_cents is not a whole number",
    "bad_properties": "properties is not a JSON object",
    "oversize_properties": f"properties is larger than {MAX_PROPERTIES_BYTES // 1024} KiB as JSON",
    "validation_error": "the validator could not judge this row (a bug: please report it); kept here",
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
    try:  # stored as UTC: PostgreSQL reads offsets only up to 15:59, Python up to 23:59
        parsed = parsed.astimezone(UTC)
    except OverflowError:
        return Rejection("bad_timestamp", f"{name}={value!r} is outside the calendar in UTC")
    if parsed < MIN_TIME:
        return Rejection("timestamp_out_of_range", f"{name}={value!r} is before {MIN_TIME.date()} "
                                                   "(event_rules.min_occurred_at)")
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
    if not text.isascii() and not _encodable(text):
        return Rejection("invalid_characters", f"{name} contains a lone surrogate (not UTF-8 text)")
    if not required and text == "":
        return None  # empty optional ids are treated as absent
    return text


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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
    if number > MAX_REVENUE_CENTS:
        return Rejection("revenue_too_large", f"revenue_cents={number} is above the maximum per event "
                                              f"{MAX_REVENUE_CENTS} (event_rules.max_revenue_cents)")
    return number


def _properties(value: Any) -> str | Rejection:
    if value is None or value == "":
        return "{}"
    if isinstance(value, str):  # CSV cells carry JSON text
        value = loads_strict(value)
        if isinstance(value, Rejection):
            return value if value.reason == "duplicate_field" else \
                Rejection("bad_properties", "properties is not valid JSON")
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
#: event_type is a metric label (Redis field part, Prometheus label): no control characters
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _pairs_without_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        counts = Counter(key for key, _ in pairs)
        raise _RepeatedKey(sorted(key for key, n in counts.items() if n > 1))
    return result


class _RepeatedKey(ValueError):
    def __init__(self, keys: list[str]) -> None:
        super().__init__(keys)
        self.keys = keys


def loads_strict(data: bytes | str) -> Any:
    """Parse JSON text like orjson, but refuse invalid UTF-8 and an object that repeats a key.

    Returns the value or a :class:`Rejection` (``invalid_utf8``, ``invalid_json``,
    ``duplicate_field``). The repeated-key check is exact and cheap: without ``\\u003`` escapes
    the text has exactly as many ``:`` as the compact re-serialisation of the parsed value iff no
    key was dropped (a dropped repeat takes its ``:`` and its value's colons with it); otherwise
    the text is parsed once more with a pairs hook.
    """
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        if isinstance(data, bytes):
            try:
                data.decode("utf-8")
            except UnicodeDecodeError as bad:
                return Rejection("invalid_utf8", f"byte {bad.start}: {bad.reason}")
        return Rejection("invalid_json", str(exc).split(":", 1)[0])
    if type(value) is dict or type(value) is list:
        colon: Any = b":" if isinstance(data, bytes) else ":"
        escape: Any = b"\\u003" if isinstance(data, bytes) else "\\u003"
        if escape in data or data.count(colon) != _colons(value):
            try:
                json.loads(data, object_pairs_hook=_pairs_without_repeats)
            except _RepeatedKey as repeated:
                return Rejection("duplicate_field", f"field(s) repeated in one object: {', '.join(repeated.keys)}")
            except (ValueError, RecursionError):  # orjson accepted it; a disagreement is judged by orjson's reading
                pass
    return value


def _colons(value: Any) -> int:
    """The colons of ``value`` serialised compactly; -1 when orjson cannot write it back (nested
    deeper than it writes: 255 levels), which sends the text to the exact check."""
    try:
        return orjson.dumps(value).count(b":")
    except TypeError:
        return -1


def parse_object(data: bytes | str) -> dict[str, Any] | Rejection:
    """One JSON object (a line of a JSON Lines file, a stream entry), strictly (:func:`loads_strict`)."""
    value = loads_strict(data)
    if isinstance(value, Rejection):
        return value
    if type(value) is not dict:
        return Rejection("not_an_object", f"expected a JSON object, got {type(value).__name__}")
    return value


def _check_shape(record: Mapping[str, Any]) -> Rejection | None:
    unknown = [key for key in record if key not in _ALLOWED]
    if unknown:
        return Rejection("unknown_field", f"unknown field(s): {', '.join(sorted(map(str, unknown)))}")
    for name in REQUIRED:
        if record.get(name) is None:
            return Rejection("missing_field", f"{name} is required")
    return None


def _check_event_id(raw_id: Any) -> str | Rejection:
    if not isinstance(raw_id, str | uuid.UUID):
        return Rejection("bad_uuid", f"event_id must be a UUID string, got {type(raw_id).__name__}")
    try:
        return str(raw_id if isinstance(raw_id, uuid.UUID) else uuid.UUID(raw_id))
    except ValueError:
        return Rejection("bad_uuid", f"event_id={raw_id!r} is not a UUID")


def _check_times(record: Mapping[str, Any], now: datetime) -> tuple[datetime, datetime | None] | Rejection:
    """``(occurred_at, received_at or None)`` within the rules' window around ``now``."""
    occurred = _parse_time("occurred_at", record["occurred_at"])
    if isinstance(occurred, Rejection):
        return occurred
    received: datetime | None = None
    if record.get("received_at") not in (None, ""):
        parsed = _parse_time("received_at", record["received_at"])
        if isinstance(parsed, Rejection):
            return parsed
        received = parsed
    if received is not None and received - now > MAX_FUTURE:
        return Rejection("received_in_future", f"received_at {received.isoformat()} is more than {_FUTURE_TEXT} "
                                               f"after the load time {now.isoformat()}")
    for reference, what in ((received, "received_at"), (now, "the load time")):
        if reference is not None and occurred - reference > MAX_FUTURE:
            return Rejection("occurred_in_future", f"occurred_at {occurred.isoformat()} is more than {_FUTURE_TEXT} "
                                                   f"after {what} {reference.isoformat()}")
    return occurred, received


def _check_event_type(event_type: Any) -> str | Rejection:
    if not isinstance(event_type, str):
        return Rejection("wrong_type", f"event_type must be text, got {type(event_type).__name__}")
    if not event_type.strip():
        return Rejection("empty_event_type", "event_type is empty")
    checked_type = _text("event_type", event_type, required=True)
    if isinstance(checked_type, Rejection):
        return checked_type
    if _CONTROL.search(event_type):
        return Rejection("invalid_characters", f"event_type={event_type!r} contains a control character "
                                               "(it is a metric label)")
    return event_type


def _check_texts(record: Mapping[str, Any]) -> dict[str, str | None] | Rejection:
    texts: dict[str, str | None] = {}
    for name in OPTIONAL_TEXT:
        value = _text(name, record.get(name), required=False)
        if isinstance(value, Rejection):
            return value
        texts[name] = value
    return texts


def validate_record(record: Mapping[str, Any] | str | bytes, *, now: datetime | None = None) -> ValidEvent | Rejection:
    """Check one event (a mapping, or one JSON text) against the raw.events contract."""
    if isinstance(record, str | bytes):
        obj = parse_object(record)
        if isinstance(obj, Rejection):
            return obj
        record = obj
    shape = _check_shape(record)
    if shape is not None:
        return shape
    event_id = _check_event_id(record["event_id"])
    if isinstance(event_id, Rejection):
        return event_id
    times = _check_times(record, now or datetime.now(UTC))
    if isinstance(times, Rejection):
        return times
    event_type = _check_event_type(record["event_type"])
    if isinstance(event_type, Rejection):
        return event_type
    texts = _check_texts(record)
    if isinstance(texts, Rejection):
        return texts
    revenue = _revenue(record.get("revenue_cents"))
    if isinstance(revenue, Rejection):
        return revenue
    props = _properties(record.get("properties"))
    if isinstance(props, Rejection):
        return props
    occurred, received = times
    return ValidEvent(event_id, occurred, received, event_type, texts["user_id"], texts["organization_id"],
                      texts["session_id"], revenue, props)


_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
#: ISO 8601 extended form with an explicit offset of at most 14:59 (PostgreSQL reads offsets up to
#: 15:59 only) and ASCII digits: PostgreSQL reads these exactly as Python does. The pattern still
#: admits impossible values (2024-02-30, 23:59:60): ``datetime.fromisoformat`` refuses those.
_STRICT_TIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?(?:Z|[+-](?:0[0-9]|1[0-4]):[0-5][0-9])")
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


def _fast_id(event_id: Any) -> str | None:
    if type(event_id) is not str or len(event_id) != 36:
        return None
    event_id = event_id.lower()
    return event_id if _UUID_RE.fullmatch(event_id) else None


def _fast_time(text: Any) -> datetime | None:
    if type(text) is not str or not _STRICT_TIME.fullmatch(text):
        return None
    try:  # the pattern admits impossible values (2024-02-30, 23:59:60, +25:00): validate_record names them
        return _fromiso(text)
    except ValueError:
        return None


def _fast_times(occurred_text: Any, received_text: Any, now: datetime, now_text: str) -> str | None:
    """The received_at text to store when both times are clean and inside the rules, else None."""
    occurred = _fast_time(occurred_text)
    if occurred is None:
        return None
    latest = now + MAX_FUTURE
    if received_text is None:
        received, received_text = now, now_text
    else:
        parsed = _fast_time(received_text)
        if parsed is None or not MIN_TIME <= parsed <= latest:
            return None
        received = parsed
    if not MIN_TIME <= occurred <= latest or occurred - received > MAX_FUTURE:
        return None
    return str(received_text)


def _fast_texts(event_type: Any, others: tuple[Any, ...]) -> bool:
    if type(event_type) is not str or not event_type.strip() or _CONTROL.search(event_type):
        return False
    for value in (event_type, *others):
        if value is not None and (type(value) is not str or not 0 < len(value) <= MAX_TEXT_LENGTH
                                  or "\x00" in value or not value.isascii() and not _encodable(value)):
            return False
    return True


def _fast_properties(properties: Any) -> str | None:
    """The COPY text of ``properties`` ({} when absent), or None when it needs the full check."""
    if properties is None:
        return "{}"
    if type(properties) is not dict:
        return None
    try:
        props = orjson.dumps(properties).decode()
    except TypeError:
        return None
    if len(props) > MAX_PROPERTIES_BYTES or "\\u0000" in props:
        return None
    return props.replace("\\", "\\\\") if "\\" in props else props


def fast_line(record: Any, now: datetime, now_text: str) -> tuple[str, str] | None:
    """``(event_id, COPY text line)`` for a record that is clean in the common way, else None.

    A strictly narrower check than :func:`validate_record` (which gives the reason for anything
    this returns None for); it exists only for speed and must agree with it on every record it
    accepts (tests compare the two).
    """
    if isinstance(record, str | bytes):
        record = parse_object(record)
    if type(record) is not dict or not record.keys() <= _ALLOWED:
        return None
    get = record.get
    event_id = _fast_id(get("event_id"))
    if event_id is None:
        return None
    occurred_text = get("occurred_at")
    received_text = _fast_times(occurred_text, get("received_at"), now, now_text)
    if received_text is None:
        return None
    event_type, user_id, org_id, session_id = (get("event_type"), get("user_id"), get("organization_id"),
                                               get("session_id"))
    if not _fast_texts(event_type, (user_id, org_id, session_id)):
        return None
    revenue = get("revenue_cents")
    if revenue is None:
        revenue = 0
    elif type(revenue) is not int or not 0 <= revenue <= MAX_REVENUE_CENTS:
        return None
    props = _fast_properties(get("properties"))
    if props is None:
        return None
    line = "\t".join((
        event_id, cast(str, occurred_text), received_text, _copy_escape(cast(str, event_type)),
        _NULL if user_id is None else _copy_escape(user_id),
        _NULL if org_id is None else _copy_escape(org_id),
        _NULL if session_id is None else _copy_escape(session_id),
        str(revenue), props,
    )) + "\n"
    return event_id, line


def judge(record: Mapping[str, Any] | str | bytes, now: datetime, now_text: str
          ) -> tuple[str, str] | ValidEvent | Rejection:
    """The one validity decision for a record, shared by the loader and the stream consumer.

    ``(event_id, COPY line)`` from the fast path, else the :class:`ValidEvent` or the
    :class:`Rejection` of :func:`validate_record`. Never raises: a record the validator cannot
    judge (a bug) becomes a ``validation_error`` rejection, so one row can never stop a load or
    wedge the stream.
    """
    try:
        fast = fast_line(record, now, now_text)
        if fast is not None:
            return fast
        return validate_record(record, now=now)
    except Exception as exc:  # noqa: BLE001 - the whole point: quarantine, never raise
        return Rejection("validation_error", f"{type(exc).__name__}: {exc}"[:500])


# --------------------------------------------------------------------------- many records at once
# The same decisions as parse_object / fast_line / judge, one batch at a time: the common batch
# (every record clean) costs a few C-level passes over joined columns instead of a dozen Python
# calls per record; anything unusual in a column is decided record by record by the functions
# above. Tests compare the batch answers with the per-record ones.

_UUIDS_RE = re.compile(rf"(?:{_UUID_RE.pattern}\n)*{_UUID_RE.pattern}")
_STRICT_TIMES = re.compile(rf"(?:{_STRICT_TIME.pattern}\n)*{_STRICT_TIME.pattern}")


def parse_objects(raws: Sequence[bytes]) -> list[dict[str, Any] | Rejection]:
    """:func:`parse_object` of each text; the repeated-key check of :func:`loads_strict` once for
    all the texts that are objects (their colons against those of one re-serialisation)."""
    loads = orjson.loads
    values: list[Any] = []
    for raw in raws:
        try:
            values.append(loads(raw))
        except orjson.JSONDecodeError:
            values.append(None)
    objects = [i for i, value in enumerate(values) if type(value) is dict]
    if objects:
        joined = b"".join([raws[i] for i in objects])
        if b"\\u003" in joined or joined.count(b":") != _colons([values[i] for i in objects]):
            objects = []  # a repeated key somewhere (or an escaped colon): decide each text alone
    out: list[dict[str, Any] | Rejection] = [parse_object(raw) for raw in raws] if not objects else values
    if objects and len(objects) < len(raws):
        for i, value in enumerate(values):
            if type(value) is not dict:
                out[i] = parse_object(raws[i])
    return out


def _all_text(values: list[Any], shortest: int, longest: int) -> bool:
    """Every value is a str of ``shortest`` .. ``longest`` characters (C-level passes)."""
    return not values or (set(map(type, values)) == {str} and min(map(len, values)) >= shortest
                          and max(map(len, values)) <= longest)


def _fast_ids(values: list[Any]) -> list[str | None]:
    if values and _all_text(values, 36, 36):
        lowered = "\n".join(values).lower()
        if _UUIDS_RE.fullmatch(lowered):
            return cast(list[str | None], lowered.split("\n"))
    return [_fast_id(v) for v in values]


def _fast_time_column(values: list[Any]) -> list[datetime | None]:
    if values and set(map(type, values)) == {str}:
        joined = "\n".join(values)
        if joined.count("\n") == len(values) - 1 and _STRICT_TIMES.fullmatch(joined):
            try:
                return list(map(_fromiso, values))
            except ValueError:
                pass
    return [_fast_time(v) for v in values]


def _fast_times_column(occurred: list[Any], received: list[Any], now: datetime, now_text: str) -> list[str | None]:
    """:func:`_fast_times` of each pair."""
    occurred_at = _fast_time_column(occurred)
    latest = now + MAX_FUTURE
    absent = received.count(None)
    if occurred_at and None not in occurred_at and absent in (0, len(received)):
        occurred_all = cast(list[datetime], occurred_at)
        if min(occurred_all) >= MIN_TIME and max(occurred_all) <= latest:
            if absent:
                return [now_text] * len(received)
            received_at = _fast_time_column(received)
            if None not in received_at:
                given_at = cast(list[datetime], received_at)
                if min(given_at) >= MIN_TIME and max(given_at) <= latest \
                        and max(map(operator.sub, occurred_all, given_at)) <= MAX_FUTURE:
                    return received
    given = iter(_fast_time_column([v for v in received if v is not None]))
    out: list[str | None] = []
    for when, received_text in zip(occurred_at, received, strict=True):
        received_at_one: datetime | None = now
        if received_text is None:
            received_text = now_text
        else:
            received_at_one = next(given)
            if received_at_one is None or not MIN_TIME <= received_at_one <= latest:
                out.append(None)
                continue
        ok = when is not None and received_at_one is not None and MIN_TIME <= when <= latest \
            and when - received_at_one <= MAX_FUTURE
        out.append(received_text if ok else None)
    return out


def _fast_texts_column(types: list[Any], others: list[Any]) -> tuple[list[bool], bool]:
    """:func:`_fast_texts` of each record (``others``: its user, organization and session ids, in
    three consecutive entries); and whether any text needs COPY escaping."""
    given = list(filter(_not_none, others))
    if _all_text(types, 1, MAX_TEXT_LENGTH) and _all_text(given, 1, MAX_TEXT_LENGTH) and all(map(str.strip, types)):
        labels = "".join(types)
        text = labels + "".join(given)
        if not _CONTROL.search(labels) and "\x00" not in text and (text.isascii() or _encodable(text)):
            return [True] * len(types), any(c in text for c in "\\\t\n\r")
    return [_fast_texts(t, tuple(others[3 * k:3 * k + 3])) for k, t in enumerate(types)], True


def _not_none(value: Any) -> bool:
    return value is not None


def _fast_revenues(values: list[Any]) -> list[int | None]:
    return [0 if v is None else v if type(v) is int and 0 <= v <= MAX_REVENUE_CENTS else None for v in values]


def fast_lines(records: Sequence[Any], now: datetime, now_text: str) -> list[tuple[str, str] | None]:
    """:func:`fast_line` of each record (the same answers), column by column."""
    out: list[tuple[str, str] | None] = [None] * len(records)
    rows = [i for i, record in enumerate(records) if type(record) is dict and record.keys() <= _ALLOWED]
    picked = [records[i] for i in rows]
    ids = _fast_ids([r.get("event_id") for r in picked])
    occurred = [r.get("occurred_at") for r in picked]
    received = _fast_times_column(occurred, [r.get("received_at") for r in picked], now, now_text)
    others = [r.get(name) for r in picked for name in OPTIONAL_TEXT]
    types = [r.get("event_type") for r in picked]
    texts, escape = _fast_texts_column(types, others)
    revenues = _fast_revenues([r.get("revenue_cents") for r in picked])
    props = [_fast_properties(r.get("properties")) if "properties" in r else "{}" for r in picked]
    esc = _copy_escape if escape else str
    for k, i in enumerate(rows):
        event_id, received_text, revenue, prop = ids[k], received[k], revenues[k], props[k]
        if event_id is None or received_text is None or not texts[k] or revenue is None or prop is None:
            continue
        user_id, org_id, session_id = others[3 * k:3 * k + 3]
        out[i] = event_id, "\t".join((
            event_id, occurred[k], received_text, esc(types[k]),
            _NULL if user_id is None else esc(user_id),
            _NULL if org_id is None else esc(org_id),
            _NULL if session_id is None else esc(session_id),
            str(revenue), prop,
        )) + "\n"
    return out


def judge_many(records: Sequence[Mapping[str, Any] | Rejection], now: datetime, now_text: str
               ) -> list[tuple[str, str] | ValidEvent | Rejection]:
    """:func:`judge` of each record (a Rejection stays itself); never raises."""
    try:
        fast: list[tuple[str, str] | None] = fast_lines(records, now, now_text)
    except Exception:  # noqa: BLE001 - judged one by one below (judge never raises)
        fast = [None] * len(records)
    return [record if isinstance(record, Rejection) else line if line is not None else judge(record, now, now_text)
            for record, line in zip(records, fast, strict=True)]


def raw_text(raw: bytes | str) -> str:
    """Text as the quarantine keeps it (PostgreSQL text): the original; invalid UTF-8 bytes as
    ``\\xNN``, lone surrogates as ``\\udNNN``, NUL as ``\\0``. Idempotent."""
    text = raw if isinstance(raw, str) else raw.decode("utf-8", "backslashreplace")
    if not text.isascii() and not _encodable(text):
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text.replace("\x00", "\\0") if "\x00" in text else text


# --------------------------------------------------------------------------- summary


@dataclass
class LoadSummary:
    total: int = 0
    loaded: int = 0
    duplicates: int = 0
    quarantined_by_reason: Counter[str] = field(default_factory=Counter)
    sources: list[str] = field(default_factory=list)
    blank: int = 0  # blank lines of a file (read, not rows)
    already_quarantined: int = 0  # of the quarantined: the same line of the same source was there already

    @property
    def quarantined(self) -> int:
        return sum(self.quarantined_by_reason.values())

    def add(self, other: LoadSummary) -> None:
        self.total += other.total
        self.loaded += other.loaded
        self.duplicates += other.duplicates
        self.quarantined_by_reason.update(other.quarantined_by_reason)
        self.sources.extend(other.sources)
        self.blank += other.blank
        self.already_quarantined += other.already_quarantined

    def check(self) -> None:
        if self.total != self.loaded + self.duplicates + self.quarantined + self.blank:
            raise AssertionError(f"load summary does not add up: {self}")

    def as_dict(self) -> dict[str, Any]:
        return {
            "total": self.total, "loaded": self.loaded, "duplicates": self.duplicates, "blank": self.blank,
            "quarantined": self.quarantined, "already_quarantined": self.already_quarantined,
            "quarantined_by_reason": dict(sorted(self.quarantined_by_reason.items())),
        }

    def render(self) -> str:
        lines = [
            f"read        {self.total:>12,}",
            f"loaded      {self.loaded:>12,}",
            f"duplicates  {self.duplicates:>12,}  (event_id already stored or repeated in the input; skipped)",
        ]
        if self.blank:
            lines.append(f"blank       {self.blank:>12,}  (empty lines; skipped)")
        lines.append(f"quarantined {self.quarantined:>12,}" + ("  -> raw.events_quarantine" if self.quarantined else "")
                     + (f" ({self.already_quarantined:,} of them there already from an earlier load)"
                        if self.already_quarantined else ""))
        for reason, count in sorted(self.quarantined_by_reason.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"  {reason:<24}{count:>8,}  {REASONS[reason]}")
        return "\n".join(lines)


# --------------------------------------------------------------------------- writing


class _Blank:
    """The record of a blank line (counted in ``read`` and ``blank``, not a row)."""


BLANK = _Blank()


@dataclass(slots=True)
class _Input:
    line_number: int | None
    raw: bytes | str  # the original line (without its line break)
    record: Mapping[str, Any] | bytes | str | Rejection | _Blank


_STAGE_DDL = """
create temporary table if not exists _ms_stage (
    event_id uuid, occurred_at timestamptz, received_at timestamptz, event_type text, user_id text,
    organization_id text, session_id text, revenue_cents bigint, properties jsonb
) on commit delete rows
"""
_QUARANTINE_COLS = "source, line_number, reason, detail, raw_text"
_QUARANTINE_STAGE_DDL = """
create temporary table if not exists _ms_quarantine_stage (
    source text, line_number bigint, reason text, detail text, raw_text text
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
    items = [item for item in batch if item.record is not BLANK]
    summary.blank = len(batch) - len(items)
    for item, result in zip(items, judge_many(_records(items), now, now.isoformat()), strict=True):
        if isinstance(result, Rejection):
            summary.quarantined_by_reason[result.reason] += 1
            rejects.append((source, item.line_number, result.reason, result.detail, raw_text(item.raw)))
            continue
        fast = result if isinstance(result, tuple) else (result.event_id, copy_line(result.row(now)))
        if fast[0] in seen:
            summary.duplicates += 1
        else:
            seen.add(fast[0])
            lines.append(fast[1])
    return _Prepared(summary, lines, rejects)


def _records(items: list[_Input]) -> list[Any]:
    """Each item's record, its JSON text parsed (:func:`parse_objects` for the bytes, at once)."""
    records: list[Any] = [item.record for item in items]
    texts = [i for i, record in enumerate(records) if type(record) is bytes]
    for i, parsed in zip(texts, parse_objects([records[i] for i in texts]), strict=True):
        records[i] = parsed
    return [parse_object(record) if isinstance(record, str | bytes) else record for record in records]


_COLS = ", ".join(EVENT_COLUMNS)


def _store(conn: psycopg.Connection[Any], prepared: _Prepared) -> LoadSummary:
    """Write one prepared batch in one transaction; ids already stored count as duplicates.

    Rejects go to the quarantine once per (source, line content): a line already there (an
    earlier load of the same file) is counted in ``already_quarantined`` and not written again.
    """
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
            conn.execute(_QUARANTINE_STAGE_DDL)
            with conn.cursor().copy(f"copy _ms_quarantine_stage ({_QUARANTINE_COLS}) from stdin") as copy:
                for source, line_number, reason, detail, text in prepared.rejects:
                    copy.write_row((raw_text(source), line_number, reason, raw_text(detail), raw_text(text)))
            # one row per (source, line): the first line number of a repeated line is kept
            cur = conn.execute(
                f"insert into raw.events_quarantine ({_QUARANTINE_COLS}) "
                f"select distinct on (source, raw_text) {_QUARANTINE_COLS} from _ms_quarantine_stage "
                "order by source, raw_text, line_number "
                "on conflict (source, content_hash) do nothing")
            summary.already_quarantined += len(prepared.rejects) - cur.rowcount
            conn.execute("truncate _ms_quarantine_stage")
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
        for batch, prepared in prepared_batches(items, source, batch_size):
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
            raw = record if isinstance(record, str | bytes) else _mapping_text(record)
            yield _Input(number, raw, record)

    return _write_inputs(inputs(), source, settings=settings, batch_size=batch_size)


def _mapping_text(record: Mapping[str, Any]) -> str:
    try:
        return json.dumps(record, default=str, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(record)


def quarantine_exit_status(quarantined: int, *, allow: bool, command: str) -> int:
    """The one rule for ``load`` and ``realtime consume``: rows quarantined -> exit 1, unless allowed.

    Prints the one-line explanation on stderr; returns the exit status (0 or 1).
    """
    if quarantined and not allow:
        print(f"metricsmith {command}: {quarantined:,} row(s) quarantined (see raw.events_quarantine); "
              "pass --allow-quarantine to accept", file=sys.stderr)
        return 1
    return 0


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


@dataclass(frozen=True, slots=True)
class _Truncated:
    """The end of a compressed input that could not be read: the partial last line, and why."""

    partial: bytes
    detail: str


_BOM = b"\xef\xbb\xbf"
_CHUNK = 1 << 20


def _plain_lines(stream: Iterable[bytes | _Truncated]) -> Iterator[bytes | _Truncated]:
    """Physical lines (split at \\n only; a \\r before it is dropped), without the line break;
    a UTF-8 byte order mark at the start of the input is dropped."""
    first = True
    for line in stream:
        if type(line) is not bytes:
            yield line
            continue
        if line.endswith(b"\n"):
            line = line[:-2] if line.endswith(b"\r\n") else line[:-1]
        elif line.endswith(b"\r"):
            line = line[:-1]
        if first:
            first = False
            if line.startswith(_BOM):
                line = line[3:]
        yield line


def _gzip_lines(stream: IO[bytes]) -> Iterator[bytes | _Truncated]:
    """Like :func:`_plain_lines` over a gzip file (several members allowed); a truncated or corrupt
    file yields its readable lines, then one :class:`_Truncated` with the partial last line."""

    def chunks() -> Iterator[bytes | _Truncated]:
        decoder = zlib.decompressobj(wbits=31)
        started = False
        while True:
            data = stream.read(_CHUNK)
            if not data:
                break
            while data:
                started = True
                try:
                    out = decoder.decompress(data)
                except zlib.error as exc:
                    yield _Truncated(b"", f"the gzip data is corrupt ({exc})")
                    return
                if out:
                    yield out
                if decoder.eof:
                    data = decoder.unused_data
                    decoder = zlib.decompressobj(wbits=31)
                    started = bool(data)
                else:
                    data = b""
        if started and not decoder.eof:
            try:
                tail = decoder.flush()
            except zlib.error:
                tail = b""
            if tail:
                yield tail
            yield _Truncated(b"", "the gzip file ends before its end marker (truncated)")

    yield from _plain_lines(_split_lines(chunks()))


def _split_lines(chunks: Iterator[bytes | _Truncated]) -> Iterator[bytes | _Truncated]:
    rest = b""
    for chunk in chunks:
        if isinstance(chunk, _Truncated):
            yield _Truncated(rest, chunk.detail)
            return
        parts = (rest + chunk).split(b"\n")
        rest = parts.pop()
        for part in parts:
            yield part + b"\n"
    if rest:
        yield rest


def _line_inputs(lines: Iterator[bytes | _Truncated], csv_format: bool) -> Iterator[_Input]:
    """Number the physical lines and turn each into an input (one line = one input)."""
    numbered = enumerate(lines, start=1)
    if csv_format:
        yield from _csv_inputs(numbered)
        return
    for number, line in numbered:
        if type(line) is bytes:
            yield _Input(number, line, line if line.strip() else BLANK)
        else:
            yield _truncated_input(number, line)  # type: ignore[arg-type]


def _truncated_input(number: int, tail: _Truncated) -> _Input:
    return _Input(number, tail.partial, Rejection("truncated_input", tail.detail))


def _csv_inputs(numbered: Iterator[tuple[int, bytes | _Truncated]]) -> Iterator[_Input]:
    """CSV with a header line; one row per physical line (a line break inside a quoted field is not
    supported: that line is quarantined as ``malformed_csv`` and the next line is read as a row)."""
    header: list[str] | None = None
    header_problem: Rejection | None = None
    for number, line in numbered:
        if type(line) is not bytes:
            yield _truncated_input(number, line)  # type: ignore[arg-type]
            return
        if header is None:
            header_problem = None
            cells = _csv_row(line)
            if isinstance(cells, Rejection):
                header, header_problem = [], Rejection("malformed_csv", f"the header line cannot be read: {cells.detail}")
            else:
                header = [h.strip() for h in cells]
                counts = Counter(header)
                repeated = sorted(name for name, n in counts.items() if n > 1)
                if repeated:
                    header_problem = Rejection("duplicate_field", f"the header repeats {', '.join(repeated)}")
            continue
        if not line.strip():
            yield _Input(number, line, BLANK)
            continue
        if header_problem is not None:
            yield _Input(number, line, header_problem)
            continue
        row = _csv_row(line)
        if isinstance(row, Rejection):
            yield _Input(number, line, row)
        elif len(row) != len(header):
            yield _Input(number, line, Rejection("malformed_csv", f"{len(row)} fields, header has {len(header)}"))
        else:
            yield _Input(number, line, {key: (value if value != "" else None)
                                        for key, value in zip(header, row, strict=True)})


def _csv_row(line: bytes) -> list[str] | Rejection:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejection("invalid_utf8", f"byte {exc.start}: {exc.reason}")
    if '"' not in text and "\r" not in text:
        return text.split(",")
    try:
        rows = list(csv.reader((text,), strict=True))
    except csv.Error as exc:
        return Rejection("malformed_csv", f"not one CSV row: {exc}")
    return rows[0] if rows else [""]


def _open(name: str) -> IO[bytes]:
    if name == "-":
        return sys.stdin.buffer
    path = Path(name)
    if not path.is_file():
        raise IngestError(f"{name}: no such file")
    return open(path, "rb")


def input_formats(names: list[str], fmt: str) -> dict[str, str]:
    """Each input's format (``auto``: by its name); every input is checked before any is read
    (IngestError: unknown format, no such file)."""
    formats = {name: _detect_format(name, fmt) for name in names}
    for name in names:
        if name != "-" and not Path(name).is_file():
            raise IngestError(f"{name}: no such file")
    return formats


@contextmanager
def read_input(name: str, fmt: str) -> Iterator[tuple[str, Iterator[_Input]]]:
    """One input ('-' is stdin, ``.gz`` decompressed) as its source name and its loader inputs,
    read line by line; the file is closed afterwards. The one reading path of every loader."""
    stream = _open(name)
    try:
        lines = _gzip_lines(stream) if name.endswith(".gz") else _plain_lines(stream)
        yield ("stdin" if name == "-" else str(Path(name).name)), _line_inputs(lines, fmt == "csv")
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


def prepared_batches(items: Iterable[_Input], source: str,
                     batch_size: int = DEFAULT_BATCH) -> Iterator[tuple[list[_Input], _Prepared]]:
    """The inputs in batches, each judged by the one rule set (:func:`_prepare`): COPY lines,
    quarantine rows and the batch's summary."""
    for batch in _batched(items, batch_size):
        yield batch, _prepare(batch, source, datetime.now(UTC))


def load_files(
    names: Iterable[str],
    *,
    fmt: str = "auto",
    settings: Settings | None = None,
    progress: bool = False,
    batch_size: int = DEFAULT_BATCH,
) -> LoadSummary:
    """Load JSON Lines / CSV files ('-' is stdin; ``.gz`` files are decompressed). Each file is its
    own source in the quarantine. Never raises for the content of a file (see the module doc)."""
    names = list(names) or ["-"]
    formats = input_formats(names, fmt)  # fail before loading anything
    total = LoadSummary()
    for name in names:
        with read_input(name, formats[name]) as (source, items), \
                progress_bar(f"loading {source}", None, enabled=progress) as advance:
            result = _write_inputs(items, source, settings=settings, batch_size=batch_size, on_batch=advance)
        total.add(result)
    total.check()
    return total
