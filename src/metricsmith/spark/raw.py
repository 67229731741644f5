"""``raw.events`` and ``raw.events_quarantine`` on Spark: Parquet tables, the events partitioned
by received date (``received_date``, the UTC date of ``received_at``), same columns and rules as
the PostgreSQL contract (timestamps in UTC, ``properties`` as JSON text).

Every writer goes through :func:`append_events`: rows are staged as Parquet (pyarrow), then
Spark keeps the first row of each ``event_id`` not stored yet, stamps ``inserted_at`` (the
rollups' watermark) and appends to the partitions. The loader validates each line with
:func:`metricsmith.ingest.validate_record` — the PostgreSQL loader's rule set, not a copy.
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from metricsmith.config import Settings, load_settings
from metricsmith.errors import UserFacingError
from metricsmith.spark.config import spark_settings
from metricsmith.spark.session import get_session

EVENTS = "raw.events"
QUARANTINE = "raw.events_quarantine"
PARTITION = "received_date"
EVENT_SCHEMA = (("event_id", "string"), ("occurred_at", "timestamp"), ("received_at", "timestamp"),
                ("inserted_at", "timestamp"), ("event_type", "string"), ("user_id", "string"),
                ("organization_id", "string"), ("session_id", "string"), ("revenue_cents", "bigint"),
                ("properties", "string"))
QUARANTINE_SCHEMA = (("quarantined_at", "timestamp"), ("source", "string"), ("line_number", "bigint"),
                     ("reason", "string"), ("detail", "string"), ("raw_text", "string"), ("content_hash", "string"))
#: the columns a writer supplies (inserted_at and received_date are set on append)
INPUT_COLUMNS = tuple(c for c, _ in EVENT_SCHEMA if c != "inserted_at")
BATCH = 200_000


class SparkLoadError(UserFacingError):
    """An input cannot be loaded into the Spark raw tables; the message says why."""


def ensure_tables(session: Any) -> None:
    """Create the raw database and its two Parquet tables when missing."""
    # asked first: the Hive metastore logs an error for `if not exists` on an existing object
    if not session.catalog.databaseExists("raw"):
        session.sql("create database if not exists raw")
    if not session.catalog.tableExists(EVENTS):
        cols = ", ".join(f"{c} {t}" for c, t in EVENT_SCHEMA)
        session.sql(f"create table if not exists {EVENTS} ({cols}, {PARTITION} date) using parquet "
                    f"partitioned by ({PARTITION})")
    if not session.catalog.tableExists(QUARANTINE):
        qcols = ", ".join(f"{c} {t}" for c, t in QUARANTINE_SCHEMA)
        session.sql(f"create table if not exists {QUARANTINE} ({qcols}) using parquet")


def _arrow_events(rows: list[tuple[Any, ...]]) -> Any:
    import pyarrow as pa

    ts = pa.timestamp("us", tz="UTC")
    types = {"string": pa.string(), "timestamp": ts, "bigint": pa.int64()}
    schema = pa.schema([(c, types[t]) for c, t in EVENT_SCHEMA if c != "inserted_at"])
    columns: list[Any] = list(zip(*rows, strict=True)) if rows else [() for _ in INPUT_COLUMNS]
    return pa.table({c: pa.array(list(v), type=schema.field(c).type) for c, v in zip(INPUT_COLUMNS, columns,
                                                                                     strict=True)}, schema=schema)


class _Stage:
    """A folder of Parquet batches that one append reads (removed afterwards)."""

    def __init__(self, settings: Settings) -> None:
        self.path = spark_settings(settings).home / "staging" / uuid.uuid4().hex
        self.path.mkdir(parents=True)
        self.files = 0

    def write(self, table: Any) -> None:
        import pyarrow.parquet as pq

        if table.num_rows:
            pq.write_table(table, self.path / f"part-{self.files:05d}.parquet")
            self.files += 1

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


@dataclass(frozen=True)
class AppendResult:
    rows: int
    inserted: int
    seconds: float

    @property
    def duplicates(self) -> int:
        return self.rows - self.inserted


def append_events(session: Any, frame: Any) -> AppendResult:
    """Append a DataFrame with :data:`INPUT_COLUMNS` to raw.events: the first row of each event_id
    not stored yet, ``inserted_at`` = now (one value per append), partitioned by received date."""
    from pyspark.sql import functions as F

    began = time.perf_counter()
    ensure_tables(session)
    frame = frame.select(*INPUT_COLUMNS).cache()
    rows = frame.count()
    stored = session.table(EVENTS).select("event_id")
    fresh = frame.dropDuplicates(["event_id"]).join(stored, "event_id", "left_anti")
    now = datetime.now(UTC).replace(tzinfo=None)
    out = (fresh.withColumn("inserted_at", F.lit(now).cast("timestamp"))
           .withColumn(PARTITION, F.to_date("received_at"))
           .select(*[c for c, _ in EVENT_SCHEMA], PARTITION).cache())
    inserted = out.count()
    if inserted:
        out.write.insertInto(EVENTS, overwrite=False)
    out.unpersist()
    frame.unpersist()
    return AppendResult(rows=rows, inserted=inserted, seconds=time.perf_counter() - began)


# --------------------------------------------------------------------------- load files


def _lines(name: str) -> Iterator[bytes]:
    if name == "-":
        yield from sys.stdin.buffer
        return
    path = Path(name)
    if not path.is_file():
        raise SparkLoadError(f"{name}: no such file (nothing was loaded from it)")
    opener: Any = gzip.open if name.endswith(".gz") else open
    with opener(path, "rb") as stream:
        yield from stream


def _check_format(name: str, fmt: str) -> None:
    base = name[:-3] if name.endswith(".gz") else name
    csv = fmt == "csv" or (fmt == "auto" and base.endswith(".csv"))
    if csv:
        raise SparkLoadError(f"{name}: the Spark loader reads JSON Lines only (use the postgres engine for CSV, "
                             "or convert it); nothing was loaded")


def _judge_lines(name: str, now: datetime, stage: _Stage, quarantine: list[tuple[Any, ...]],
                 counts: Counter[str]) -> tuple[int, int]:
    """Validate every line of one input; valid rows go to the stage. (lines read, blank lines)."""
    from metricsmith import ingest

    source = "stdin" if name == "-" else Path(name).name
    rows: list[tuple[Any, ...]] = []
    total = blank = 0
    for number, line in enumerate(_lines(name), start=1):
        total += 1
        if not line.strip():
            blank += 1
            continue
        try:
            verdict = ingest.validate_record(line, now=now)
        except Exception as exc:  # noqa: BLE001 - like ingest.judge: quarantine, never raise
            verdict = ingest.Rejection("validation_error", f"{type(exc).__name__}: {exc}"[:500])
        if isinstance(verdict, ingest.Rejection):
            text = ingest.raw_text(line.rstrip(b"\r\n"))
            counts[verdict.reason] += 1
            quarantine.append((now, source, number, verdict.reason, verdict.detail, text,
                               hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()))
            continue
        rows.append(verdict.row(now))
        if len(rows) >= BATCH:
            stage.write(_arrow_events(rows))
            rows = []
    stage.write(_arrow_events(rows))
    return total, blank


def _store_quarantine(session: Any, rows: list[tuple[Any, ...]]) -> int:
    """Append quarantined lines not stored yet for their (source, content_hash); how many were there."""
    if not rows:
        return 0
    names = [c for c, _ in QUARANTINE_SCHEMA]
    frame = session.createDataFrame([tuple(r) for r in rows],
                                    ", ".join(f"{c} {t}" for c, t in QUARANTINE_SCHEMA))
    stored = session.table(QUARANTINE).select("source", "content_hash")
    fresh = frame.dropDuplicates(["source", "content_hash"]).join(stored, ["source", "content_hash"], "left_anti")
    fresh = fresh.select(*names).cache()
    new = fresh.count()
    fresh.write.insertInto(QUARANTINE, overwrite=False)
    fresh.unpersist()
    return len(rows) - new


def load_files(names: Iterable[str], *, fmt: str = "auto", settings: Settings | None = None) -> Any:
    """Load JSON Lines files (``.gz`` too; '-' is stdin) into the Spark raw tables; returns the
    PostgreSQL loader's :class:`metricsmith.ingest.LoadSummary`."""
    from metricsmith import ingest

    settings = settings or load_settings()
    names = list(names) or ["-"]
    for name in names:
        _check_format(name, fmt)
        if name != "-" and not Path(name).is_file():
            raise SparkLoadError(f"{name}: no such file (nothing was loaded from it)")
    session = get_session(settings)
    ensure_tables(session)
    summary = ingest.LoadSummary()
    now = datetime.now(UTC)
    stage = _Stage(settings)
    quarantine: list[tuple[Any, ...]] = []
    try:
        for name in names:
            counts: Counter[str] = Counter()
            total, blank = _judge_lines(name, now, stage, quarantine, counts)
            summary.add(ingest.LoadSummary(total=total, blank=blank, quarantined_by_reason=counts,
                                           sources=["stdin" if name == "-" else Path(name).name]))
        valid = summary.total - summary.blank - summary.quarantined
        if stage.files:
            result = append_events(session, session.read.parquet(str(stage.path)))
            summary.loaded, summary.duplicates = result.inserted, valid - result.inserted
        summary.already_quarantined = _store_quarantine(session, quarantine)
    finally:
        stage.remove()
    summary.check()
    return summary


# --------------------------------------------------------------------------- generate


@dataclass(frozen=True)
class GenerateOutcome:
    events: int
    inserted: int
    days: int
    start: date
    seconds: float

    def render(self) -> str:
        end = self.start + timedelta(days=self.days - 1)
        rate = self.events / self.seconds if self.seconds else 0.0
        return (f"generated {self.events:,} events over {self.days} days ({self.start} .. {end}) into Spark "
                f"{EVENTS} ({self.inserted:,} new), in {self.seconds:.1f} s ({rate:,.0f} events/s)")


def _day_table(batch: Any) -> Any:
    import numpy as np
    import pyarrow as pa

    ts = pa.timestamp("us", tz="UTC")
    ids = [f"{e[:8]}-{e[8:12]}-{e[12:16]}-{e[16:20]}-{e[20:]}" for e in batch.event_id]
    users = [f"u{u}" if u >= 0 else None for u in batch.user_idx.tolist()]
    orgs = [f"org{o}" if o >= 0 else None for o in batch.org_idx.tolist()]
    return pa.table({
        "event_id": pa.array(ids, pa.string()),
        "occurred_at": pa.array(batch.occurred_at.astype("datetime64[us]").astype(np.int64), pa.int64()).cast(ts),
        "received_at": pa.array(batch.received_at.astype("datetime64[us]").astype(np.int64), pa.int64()).cast(ts),
        "event_type": pa.array(batch.event_type.tolist(), pa.string()),
        "user_id": pa.array(users, pa.string()),
        "organization_id": pa.array(orgs, pa.string()),
        "session_id": pa.array(batch.session, pa.string()),
        "revenue_cents": pa.array(batch.revenue_cents.astype(np.int64), pa.int64()),
        "properties": pa.array(batch.properties, pa.string()),
    })


def generate(*, days: int, events_per_day: int, seed: int, start: date | None = None,
             settings: Settings | None = None) -> GenerateOutcome:
    """The same deterministic events as ``metricsmith generate`` (metricsmith.generator), into Spark."""
    from metricsmith.generator import EventGenerator

    settings = settings or load_settings()
    began = time.perf_counter()
    gen = EventGenerator(days=days, events_per_day=events_per_day, seed=seed, start=start)
    session = get_session(settings)
    stage = _Stage(settings)
    events = 0
    try:
        for batch in gen.days_iter():
            stage.write(_day_table(batch))
            events += len(batch)
        result = append_events(session, session.read.parquet(str(stage.path))) if stage.files else None
    finally:
        stage.remove()
    return GenerateOutcome(events=events, inserted=result.inserted if result else 0, days=days, start=gen.start,
                           seconds=time.perf_counter() - began)


# --------------------------------------------------------------------------- register files


@dataclass(frozen=True)
class RegisterOutcome:
    path: str
    result: AppendResult

    def render(self) -> str:
        r = self.result
        return (f"registered {self.path}: {r.rows:,} row(s) read, {r.inserted:,} appended to {EVENTS}, "
                f"{r.duplicates:,} duplicate(s) skipped (event_id already stored or repeated), in {r.seconds:.1f} s")


def register_files(path: str, settings: Settings | None = None) -> RegisterOutcome:
    """Pick up Parquet files in the raw.events layout (``received_date=YYYY-MM-DD/*.parquet`` under
    ``path``, written by another pipeline): de-duplicated by event_id, stamped, appended. Rows that
    break a validity rule are kept, as in PostgreSQL, and show in stg_events_rejected."""
    settings = settings or load_settings()
    if "://" not in path and not Path(path).exists():
        raise SparkLoadError(f"{path}: no such folder")
    session = get_session(settings)
    try:
        frame = session.read.parquet(path)
    except Exception as exc:  # noqa: BLE001 - Spark's AnalysisException: report one line
        raise SparkLoadError(f"{path}: not readable as Parquet: {str(exc).strip().splitlines()[0]}") from None
    types = dict(frame.dtypes)
    expected = {c: t for c, t in EVENT_SCHEMA if c != "inserted_at"}
    wrong = [f"{c} ({types.get(c, 'missing')}, expected {t})" for c, t in expected.items() if types.get(c) != t]
    if wrong:
        raise SparkLoadError(f"{path}: not in the raw.events layout: {', '.join(wrong)}; nothing was registered")
    return RegisterOutcome(path=path, result=append_events(session, frame))
