"""``raw.events`` and ``raw.events_quarantine`` on Spark: Parquet tables, the events partitioned
by received date (``received_date``, the UTC date of ``received_at``), same columns and rules as
the PostgreSQL contract (timestamps in UTC, ``properties`` as JSON text).

Every append keeps the first row of each ``event_id`` not stored yet and stamps one
``inserted_at`` (the rollups' watermark). Two ways in:

* :class:`ArrowAppend` — the loader and the generator, whose rows are in this process anyway.
  The stored ids are read once (pyarrow, from the files of the registered partitions); each
  Arrow batch loses the ids stored or seen earlier, and is written by pyarrow as Parquet files
  into a ``_staging-…`` folder inside the table's folder (Spark skips ``_`` names). At commit
  the new partitions are registered (one metastore call), every file is renamed into its
  partition folder (atomic per file) and the table is refreshed. A crash leaves whole files or
  none, so loading the same input again adds exactly what is missing. On a warehouse that
  pyarrow cannot write (``s3a://…``) the same batches go through Spark's ``insertInto``.
* :func:`append_events` — a Spark DataFrame (``register-files``: another pipeline's files,
  possibly larger than the driver), de-duplicated and appended by Spark.

The loader reads, parses and judges each batch with the PostgreSQL loader's own steps
(:mod:`metricsmith.ingest`: JSON Lines and CSV, ``.gz``, the rule set of
:mod:`metricsmith.event_rules`, the reasons, in-batch duplicates), then reads its COPY text into
Arrow. The embedded Derby metastore admits one process at a time, so appends never race.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from metricsmith import ingest
from metricsmith.config import Settings, load_settings
from metricsmith.errors import UserFacingError
from metricsmith.progress import progress_bar
from metricsmith.spark.session import get_session

if TYPE_CHECKING:
    import pyarrow as pa

    from metricsmith.generator import DayBatch

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
#: rows per Arrow batch that an append de-duplicates and writes at once
BATCH = 1_000_000


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


def arrow_schema(columns: Iterable[tuple[str, str]]) -> pa.Schema:
    """The Arrow schema of Spark columns (timestamps as UTC instants, microseconds)."""
    import pyarrow as pa

    types = {"string": pa.string(), "timestamp": pa.timestamp("us", tz="UTC"), "bigint": pa.int64(),
             "date": pa.date32()}
    return pa.schema([(c, types[t]) for c, t in columns])


# --------------------------------------------------------------------------- the tables' files


def _location(session: Any, table: str) -> str:
    for row in session.sql(f"describe table extended {table}").collect():
        if row[0] == "Location":
            return str(row[1])
    raise SparkLoadError(f"{table}: the catalog gives no location")


def _local_path(location: str) -> Path | None:
    """The folder of a ``file:`` location (pyarrow writes there), else None (Spark writes)."""
    parts = urlsplit(location)
    return Path(unquote(parts.path)) if parts.scheme in ("", "file") else None


def _registered(session: Any) -> set[str]:
    """The received dates raw.events has partitions for (``YYYY-MM-DD``)."""
    return {str(r[0]).split("=", 1)[1] for r in session.sql(f"show partitions {EVENTS}").collect()}


def _data_files(folder: Path) -> list[str]:
    """Parquet data files of one folder (Spark's and Hadoop's ``_``/``.`` names are not data)."""
    if not folder.is_dir():
        return []
    return sorted(str(p) for p in folder.iterdir() if p.is_file() and not p.name.startswith(("_", ".")))


def _stored(session: Any, table: str, root: Path | None, folders: Iterable[str], schema: pa.Schema) -> pa.Table:
    """Columns of the rows stored in ``table``: pyarrow over the files of ``folders`` (relative
    to the local ``root``; ``""`` is the root itself), else Spark's own read."""
    import pyarrow.dataset as ds

    if root is None:
        return session.table(table).select(*schema.names).toArrow().cast(schema)
    files = [f for name in folders for f in _data_files(root / name)]
    return ds.dataset(files, schema=schema, format="parquet").to_table() if files else schema.empty_table()


def _first_unknown(rows: pa.Table, keys: pa.Array, known: list[pa.Array]) -> tuple[pa.Table, pa.Array]:
    """The rows whose key is the first of its value in ``rows`` and in none of ``known``; and their keys."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    distinct = pc.unique(keys)
    if len(distinct) < len(keys):
        # unique() lists values in order of first appearance: the first index of each is increasing
        _, first = np.unique(pc.index_in(keys, value_set=distinct).to_numpy(), return_index=True)
        rows, keys = rows.take(pa.array(first)), keys.take(pa.array(first))
    # probed against a hash of the batch's keys: each flush costs the stored ids a probe, not an insert
    hits = [chunk.filter(pc.is_in(chunk, value_set=keys)) for chunk in known] if len(keys) else []
    hits = [h for h in hits if len(h)]
    if hits:
        fresh = pc.invert(pc.is_in(keys, value_set=pa.concat_arrays(hits)))
        rows, keys = rows.filter(fresh), keys.filter(fresh)
    return rows, keys


class _Files:
    """Parquet files written beside a table's data, moved into it by :meth:`publish`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tag = uuid.uuid4().hex
        self.stage = root / f"_staging-{self.tag}"
        self.batches = 0

    def write(self, rows: pa.Table, *, partitioned: bool) -> None:
        import pyarrow as pa
        import pyarrow.dataset as ds
        import pyarrow.parquet as pq

        name = f"part-{self.tag}-{self.batches:05d}"
        self.batches += 1
        if partitioned:
            ds.write_dataset(rows, self.stage, format="parquet", basename_template=f"{name}-{{i}}.parquet",
                             partitioning=ds.partitioning(pa.schema([(PARTITION, pa.date32())]), flavor="hive"),
                             existing_data_behavior="overwrite_or_ignore")
        else:
            self.stage.mkdir(parents=True, exist_ok=True)
            pq.write_table(rows, self.stage / f"{name}.parquet")

    def publish(self) -> None:
        for path in sorted(self.stage.rglob("*.parquet")):
            target = self.root / path.relative_to(self.stage)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
        self.discard()

    def discard(self) -> None:
        shutil.rmtree(self.stage, ignore_errors=True)


# --------------------------------------------------------------------------- appending


@dataclass(frozen=True)
class AppendResult:
    rows: int
    inserted: int
    seconds: float

    @property
    def duplicates(self) -> int:
        return self.rows - self.inserted


class ArrowAppend:
    """One append of Arrow batches (:data:`INPUT_COLUMNS`) to raw.events; see the module doc.

    ``add`` any number of batches, then ``commit`` (nothing is visible before) or ``abort``.
    """

    def __init__(self, session: Any, *, now: datetime | None = None) -> None:
        import pyarrow as pa

        ensure_tables(session)
        self.began = time.perf_counter()
        self.session = session
        self.inserted_at = pa.scalar(now or datetime.now(UTC), pa.timestamp("us", tz="UTC"))
        self.input_schema = arrow_schema((c, t) for c, t in EVENT_SCHEMA if c != "inserted_at")
        self.root = _local_path(_location(session, EVENTS))
        self.files = _Files(self.root) if self.root is not None else None
        self.registered = _registered(session)
        stored = _stored(session, EVENTS, self.root, [f"{PARTITION}={d}" for d in sorted(self.registered)],
                         arrow_schema([("event_id", "string")]))
        self.known: list[pa.Array] = [stored.column(0).combine_chunks()] if stored.num_rows else []
        self.buffer: list[pa.Table] = []
        self.buffered = self.rows = self.inserted = 0
        self.dates: set[str] = set()

    def add(self, rows: pa.Table) -> None:
        self.buffer.append(rows.select(list(INPUT_COLUMNS)).cast(self.input_schema))
        self.buffered += rows.num_rows
        if self.buffered >= BATCH:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc

        if not self.buffered:
            return
        rows = pa.concat_tables(self.buffer)
        self.buffer, self.buffered = [], 0
        self.rows += rows.num_rows
        rows, ids = _first_unknown(rows, rows.column("event_id").combine_chunks(), self.known)
        if not rows.num_rows:
            return
        self.known.append(ids)
        self.inserted += rows.num_rows
        day = pc.cast(pc.cast(rows.column("received_at"), pa.timestamp("us")), pa.date32())
        self.dates.update(d.isoformat() for d in pc.unique(day).to_pylist())
        rows = rows.add_column(3, "inserted_at", pa.repeat(self.inserted_at, rows.num_rows))
        rows = rows.append_column(PARTITION, day)
        if self.files is not None:
            self.files.write(rows, partitioned=True)
        else:
            self.session.createDataFrame(rows).repartition(PARTITION).write.insertInto(EVENTS, overwrite=False)

    def commit(self) -> AppendResult:
        """Make the rows visible: partitions registered first, then the files moved in."""
        self._flush()
        if self.files is not None:
            new = sorted(self.dates - self.registered)
            if new:  # dates formatted by this code, never user text
                specs = " ".join(f"partition ({PARTITION} = '{d}')" for d in new)
                self.session.sql(f"alter table {EVENTS} add if not exists {specs}")
            self.files.publish()
            self.session.catalog.refreshTable(EVENTS)
        return AppendResult(rows=self.rows, inserted=self.inserted, seconds=time.perf_counter() - self.began)

    def abort(self) -> None:
        """Drop the staged files (an abort after a Spark-written batch keeps that batch: a
        re-load skips its ids)."""
        if self.files is not None:
            self.files.discard()


def append_events(session: Any, frame: Any) -> AppendResult:
    """Append a Spark DataFrame with :data:`INPUT_COLUMNS` to raw.events, by Spark: the first row of
    each event_id not stored yet, ``inserted_at`` = now (one value per append), partitioned by
    received date (one file per partition and write)."""
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
        out.repartition(PARTITION).write.insertInto(EVENTS, overwrite=False)
    out.unpersist()
    frame.unpersist()
    return AppendResult(rows=rows, inserted=inserted, seconds=time.perf_counter() - began)


# --------------------------------------------------------------------------- load files

_ESCAPED = re.compile(r"\\(.)")
_UNESCAPE = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}


def _unescape(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """COPY text's escapes (``\\\\ \\t \\n \\r``, the only ones ingest writes) undone."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not pc.any(pc.match_substring(column, "\\")).as_py():
        return column
    values = [v if v is None or "\\" not in v else _ESCAPED.sub(lambda m: _UNESCAPE[m.group(1)], v)
              for v in column.to_pylist()]
    return pa.chunked_array([pa.array(values, pa.string())])


def _instants(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """ISO 8601 texts (the validated ones: explicit offset) as UTC timestamps."""
    import pyarrow as pa
    import pyarrow.compute as pc

    ts = pa.timestamp("us", tz="UTC")
    try:
        return pc.cast(column, ts)
    except pa.ArrowInvalid:  # a form Arrow's parser does not read: Python's, which the validator used
        return pa.chunked_array([pa.array([datetime.fromisoformat(v) for v in column.to_pylist()], ts)])


def copy_lines_table(lines: list[str]) -> pa.Table:
    """The loader's COPY text lines (:func:`metricsmith.ingest.copy_line` / ``fast_line``) as Arrow rows."""
    import io

    import pyarrow as pa
    import pyarrow.csv as pcsv

    schema = arrow_schema((c, t) for c, t in EVENT_SCHEMA if c != "inserted_at")
    if not lines:
        return schema.empty_table()
    text = pcsv.read_csv(
        io.BytesIO("".join(lines).encode()),
        read_options=pcsv.ReadOptions(column_names=list(INPUT_COLUMNS)),
        parse_options=pcsv.ParseOptions(delimiter="\t", quote_char=False, escape_char=False),
        convert_options=pcsv.ConvertOptions(column_types={c: pa.string() for c in INPUT_COLUMNS},
                                            null_values=["\\N"], strings_can_be_null=True))
    columns = []
    for field in schema:
        column = _unescape(text.column(field.name))
        if pa.types.is_timestamp(field.type):
            column = _instants(column)
        elif field.type != pa.string():
            column = column.cast(field.type)
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=schema)


def _quarantine_rows(rejects: list[tuple[Any, ...]], now: datetime) -> pa.Table:
    import pyarrow as pa

    texts = [ingest.raw_text(r[4]) for r in rejects]
    columns = {
        "quarantined_at": [now] * len(rejects), "source": [r[0] for r in rejects],
        "line_number": [r[1] for r in rejects], "reason": [r[2] for r in rejects],
        "detail": [ingest.raw_text(r[3]) for r in rejects], "raw_text": texts,
        "content_hash": [hashlib.sha256(t.encode("utf-8", "surrogatepass")).hexdigest() for t in texts],
    }
    return pa.table(columns, schema=arrow_schema(QUARANTINE_SCHEMA))


def _store_quarantine(session: Any, rejects: list[tuple[Any, ...]], now: datetime) -> int:
    """Append quarantined lines not stored yet for their (source, content_hash), the first line
    number of a repeated line kept; returns how many were there already."""
    import pyarrow.compute as pc

    if not rejects:
        return 0
    rows = _quarantine_rows(rejects, now)
    root = _local_path(_location(session, QUARANTINE))
    stored = _stored(session, QUARANTINE, root, [""], arrow_schema(
        [("source", "string"), ("content_hash", "string")]))

    def key(table: pa.Table) -> pa.Array:
        return pc.binary_join_element_wise(table.column("source"), table.column("content_hash"), "\x1f") \
            .combine_chunks()

    fresh, _ = _first_unknown(rows, key(rows), [key(stored)] if stored.num_rows else [])
    if fresh.num_rows and root is not None:
        files = _Files(root)
        files.write(fresh, partitioned=False)
        files.publish()
        session.catalog.refreshTable(QUARANTINE)
    elif fresh.num_rows:
        session.createDataFrame(fresh).write.insertInto(QUARANTINE, overwrite=False)
    return len(rejects) - fresh.num_rows


def _load_one(name: str, fmt: str, append: ArrowAppend, rejects: list[tuple[Any, ...]]) -> ingest.LoadSummary:
    """Read and judge one input with the PostgreSQL loader's steps; valid rows to ``append``."""
    with ingest.read_input(name, fmt) as (source, items):
        summary = ingest.LoadSummary(sources=[source])
        for _batch, prepared in ingest.prepared_batches(items, source):
            summary.add(prepared.summary)  # read, blank, quarantined, duplicates within the batch
            append.add(copy_lines_table(prepared.lines))
            rejects.extend(prepared.rejects)
    return summary


def load_files(names: Iterable[str], *, fmt: str = "auto", settings: Settings | None = None) -> ingest.LoadSummary:
    """Load JSON Lines or CSV files (``.gz`` too; '-' is stdin) into the Spark raw tables, as the
    PostgreSQL loader does (every input checked before anything is read); returns its summary."""
    names = list(names) or ["-"]
    try:
        formats = ingest.input_formats(names, fmt)
    except ingest.IngestError as exc:
        raise SparkLoadError(f"{exc} (nothing was loaded)") from None
    session = get_session(settings or load_settings())
    append = ArrowAppend(session)
    summary = ingest.LoadSummary()
    rejects: list[tuple[Any, ...]] = []
    try:
        for name in names:
            summary.add(_load_one(name, formats[name], append, rejects))
        result = append.commit()
    except BaseException:
        append.abort()
        raise
    summary.loaded = result.inserted
    summary.duplicates += result.duplicates
    summary.already_quarantined = _store_quarantine(session, rejects, datetime.now(UTC))
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
    #: the SparkSession's and the metastore's start before it, not in ``seconds``
    start_seconds: float = 0.0

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    def render(self) -> str:
        end = self.start + timedelta(days=self.days - 1)
        return (f"generated {self.events:,} events over {self.days} days ({self.start} .. {end}) into Spark "
                f"{EVENTS} ({self.inserted:,} new), in {self.seconds:.1f} s ({self.events_per_second:,.0f} "
                f"events/s; Spark and its metastore started before it in {self.start_seconds:.1f} s)")


def day_table(batch: DayBatch) -> pa.Table:
    """One generated day as Arrow rows (:data:`INPUT_COLUMNS`), the values the PostgreSQL generator
    writes (its COPY text: ids with dashes, ``u<n>`` / ``org<n>``, millisecond instants in UTC)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    hexed = pa.array(batch.event_id, pa.string())
    ids = pc.binary_join_element_wise(*[pc.utf8_slice_codeunits(hexed, a, b)
                                        for a, b in ((0, 8), (8, 12), (12, 16), (16, 20), (20, 32))], "-")

    def named(prefix: str, index: np.ndarray) -> pa.Array:
        text = pc.binary_join_element_wise(prefix, pc.cast(pa.array(index), pa.string()), "")
        return pc.if_else(pa.array(index >= 0), text, pa.scalar(None, pa.string()))

    def instants(values: np.ndarray) -> pa.Array:
        return pa.array(values.astype("datetime64[us]").astype(np.int64)).cast(pa.timestamp("us", tz="UTC"))

    columns = [ids, instants(batch.occurred_at), instants(batch.received_at),
               pa.array(batch.event_type.tolist(), pa.string()), named("u", batch.user_idx),
               named("org", batch.org_idx), pa.array(batch.session, pa.string()),
               pa.array(batch.revenue_cents.astype(np.int64)), pa.array(batch.properties, pa.string())]
    return pa.Table.from_arrays(columns, schema=arrow_schema((c, t) for c, t in EVENT_SCHEMA if c != "inserted_at"))


def generate(*, days: int, events_per_day: int, seed: int, start: date | None = None, progress: bool = False,
             settings: Settings | None = None) -> GenerateOutcome:
    """The same deterministic events as ``metricsmith generate`` (metricsmith.generator), into Spark."""
    from metricsmith.generator import EventGenerator

    gen = EventGenerator(days=days, events_per_day=events_per_day, seed=seed, start=start)
    began = time.perf_counter()
    session = get_session(settings or load_settings())
    ensure_tables(session)  # the metastore's start (its creation, the first time)
    started = time.perf_counter()
    append = ArrowAppend(session)
    events = 0
    try:
        with progress_bar("generating events", gen.total_events, enabled=progress, unit="events") as advance:
            for batch in gen.days_iter():
                append.add(day_table(batch))
                events += len(batch)
                advance(len(batch))
            result = append.commit()
    except BaseException:
        append.abort()
        raise
    return GenerateOutcome(events=events, inserted=result.inserted, days=days, start=gen.start,
                           seconds=time.perf_counter() - started, start_seconds=started - began)


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
