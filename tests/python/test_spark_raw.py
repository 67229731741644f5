"""raw.events on Spark: `metricsmith load --engine spark` judges with the PostgreSQL loader's rules
(each stored row equal to what `ingest.validate_record` makes of its line, the same reasons),
quarantines refused lines as Parquet (once per file), skips event_ids already stored; the same
through Spark's own writer (a warehouse pyarrow cannot write); `generate --engine spark` writes
the PostgreSQL generator's events cell for cell; `spark register-files` appends files in the
layout; bad inputs end in one-line errors with nothing lost."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from _spark import empty_spark_events, spark_available, spark_fixture  # noqa: F401 - fixture

from metricsmith import ingest
from metricsmith.cli.main import main
from metricsmith.generator import generate_to_db
from metricsmith.spark import raw

pytestmark = [spark_available]

COLUMNS = "event_id, occurred_at, received_at, event_type, user_id, organization_id, session_id, " \
          "revenue_cents, properties"


def _lines() -> list[str]:
    good = [{"event_id": f"0190A1B2-0000-7000-8000-00000000000{i}", "occurred_at": f"2026-11-0{i}T10:00:00Z",
             "received_at": f"2026-11-0{i}T12:00:05.5+02:00", "event_type": "purchase", "user_id": f"u{i}",
             "revenue_cents": 100 * i, "properties": {"plan": "team"}} for i in range(1, 4)]
    # COPY text escapes (tab, backslash, newline, quote) and non-ASCII survive the way in
    good[1].update(user_id="u\t2", session_id="s\\2", properties={"q": "a\\b\t\"c\"\n", "é": "ü"})
    bad = [
        {"event_id": "not-a-uuid", "occurred_at": "2026-11-02T10:00:00Z", "event_type": "purchase"},
        {"event_id": "0190a1b2-0000-7000-8000-0000000000a1", "occurred_at": "2026-11-02T10:00:00Z",
         "event_type": "purchase", "revenue_cents": -5},
        {"event_id": "0190a1b2-0000-7000-8000-0000000000a2", "occurred_at": "1999-12-31T10:00:00Z",
         "event_type": "page_view"},
    ]
    return [json.dumps(r) for r in good] + ["", "{not json"] + [json.dumps(r) for r in bad] + [json.dumps(good[0])]


def _expected(lines: list[str]) -> tuple[list[tuple[Any, ...]], list[str]]:
    """What the PostgreSQL loader's rule set makes of the lines (the independent check): the rows
    of the first line of each event_id, and the reasons."""
    rows: dict[str, tuple[Any, ...]] = {}
    reasons = []
    now = datetime.now(UTC)
    for line in filter(str.strip, lines):
        verdict = ingest.validate_record(line, now=now)
        if isinstance(verdict, ingest.Rejection):
            reasons.append(verdict.reason)
        else:
            row = verdict.row(now)
            rows.setdefault(row[0], row[:8] + (json.loads(row[8]),))
    return sorted(rows.values()), sorted(reasons)


def _stored(spark: Any) -> list[tuple[Any, ...]]:
    """raw.events on Spark, the instants as UTC text (the session time zone) read back as aware."""
    cols = COLUMNS.replace("occurred_at, received_at", "string(occurred_at), string(received_at)")
    out = spark.sql(f"select {cols} from raw.events order by event_id").collect()

    def instant(text: str) -> datetime:
        return datetime.fromisoformat(text).replace(tzinfo=UTC)

    return [(r[0], instant(r[1]), instant(r[2]), *r[3:8], json.loads(r[8])) for r in out]


def _load_and_check(spark: Any, path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = path.read_text().splitlines()
    rows, reasons = _expected(lines)
    assert main(["load", "--engine", "spark", str(path)]) == 1  # quarantined rows -> exit 1
    out = capsys.readouterr()
    assert "loaded                 3" in out.out and "duplicates             1" in out.out
    assert "4 row(s) quarantined" in out.err
    assert _stored(spark) == rows
    partitions = spark.sql("select distinct cast(received_date as string) from raw.events").collect()
    assert sorted(r[0] for r in partitions) == ["2026-11-01", "2026-11-02", "2026-11-03"]
    quarantined = spark.sql("select reason, source, line_number from raw.events_quarantine").collect()
    assert sorted(r[0] for r in quarantined) == reasons
    assert {r[1] for r in quarantined} == {path.name}
    assert sorted(r[2] for r in quarantined) == [5, 6, 7, 8]


def test_load_validates_quarantines_and_dedups(spark: Any, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    empty_spark_events(spark)
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(_lines()) + "\n")
    _load_and_check(spark, path, capsys)

    # the same file again: nothing new, the bad lines are not quarantined twice
    summary = raw.load_files([str(path)])
    assert (summary.loaded, summary.duplicates, summary.already_quarantined) == (0, 4, 4)
    assert spark.sql("select count(*) from raw.events").collect()[0][0] == 3
    assert spark.sql("select count(*) from raw.events_quarantine").collect()[0][0] == 4

    # CSV, as the PostgreSQL loader reads it: new ids loaded, the known one skipped, a bad row quarantined
    csv = tmp_path / "more.csv"
    csv.write_text("event_id,occurred_at,event_type,revenue_cents,received_at\n"
                   "0190a1b2-0000-7000-8000-0000000000c1,2026-11-04T10:00:00Z,purchase,250,2026-11-04T10:00:01Z\n"
                   "0190a1b2-0000-7000-8000-000000000001,2026-11-04T10:00:00Z,purchase,1,2026-11-04T10:00:01Z\n"
                   "0190a1b2-0000-7000-8000-0000000000c2,2026-11-04T10:00:00Z,purchase,-1,\n")
    summary = raw.load_files([str(csv)])
    assert (summary.loaded, summary.duplicates, summary.quarantined_by_reason) == (1, 1, {"negative_revenue": 1})
    assert spark.sql("select revenue_cents from raw.events where received_date = date'2026-11-04'").collect()[0][0] \
        == 250


def test_spark_writer_gives_the_same_rows(spark: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A warehouse pyarrow cannot write (s3a://...): the same batches through Spark's insertInto."""
    empty_spark_events(spark)
    monkeypatch.setattr(raw, "_local_path", lambda _location: None)
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(_lines()) + "\n")
    _load_and_check(spark, path, capsys)


def test_generate_equals_the_postgresql_generator(spark: Any, empty_events: psycopg.Connection[Any],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    empty_spark_events(spark)
    spec = {"days": 3, "events_per_day": 300, "seed": 7, "start": date(2026, 1, 1)}
    assert main(["generate", "--engine", "spark", "--days", "3", "--events-per-day", "300", "--seed", "7",
                 "--start", "2026-01-01"]) == 0
    out = capsys.readouterr().out
    assert "into Spark raw.events" in out and "events/s" in out
    generate_to_db(**spec)  # type: ignore[arg-type]
    expected = empty_events.execute(f"select {COLUMNS.replace('event_id', 'event_id::text')} from raw.events "
                                    "order by 1").fetchall()
    assert len(expected) > 800
    assert _stored(spark) == [(*r[:8], r[8]) for r in expected]  # every cell (properties as JSON values)
    days = spark.sql("select count(distinct received_date), min(inserted_at) = max(inserted_at) from raw.events")
    assert tuple(days.collect()[0]) == (len({r[2].date() for r in expected}), True)

    # the same range again: every id is stored already, nothing added
    again = raw.generate(**spec)  # type: ignore[arg-type]
    assert (again.events, again.inserted) == (len(expected), 0)
    assert spark.sql("select count(*) from raw.events").collect()[0][0] == len(expected)


def test_register_files(spark: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty_spark_events(spark)
    raw.generate(days=2, events_per_day=50, seed=8, start=date(2026, 2, 1))
    stored = spark.sql("select count(*) from raw.events").collect()[0][0]
    # another pipeline's files in the layout: the new ids are appended, the known ones skipped
    layout = tmp_path / "landing"
    frame = spark.sql("select event_id, occurred_at, received_at, event_type, user_id, organization_id, "
                      "session_id, revenue_cents, properties, received_date from raw.events limit 10")
    frame.write.partitionBy("received_date").parquet(str(layout))
    extra = spark.sql("select uuid() as event_id, occurred_at, received_at, event_type, user_id, organization_id, "
                      "session_id, revenue_cents, properties, received_date from raw.events limit 5")
    extra.write.mode("append").partitionBy("received_date").parquet(str(layout))
    assert main(["spark", "register-files", str(layout)]) == 0
    out = capsys.readouterr().out
    assert "15 row(s) read, 5 appended" in out and "10 duplicate(s) skipped" in out
    assert spark.sql("select count(*) from raw.events").collect()[0][0] == stored + 5


def test_bad_inputs_are_one_line_errors(spark: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty_spark_events(spark)
    good = tmp_path / "good.jsonl"
    good.write_text("\n".join(_lines()[:3]) + "\n")
    assert raw.load_files([str(good)]).loaded == 3

    def one_line_error(args: list[str], text: str) -> None:
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and text in err, err

    # every input is checked before any is read: the good file next to a bad one is not loaded
    (tmp_path / "events.txt").write_text("{}\n")
    one_line_error(["load", "--engine", "spark", str(good), str(tmp_path / "events.txt")], "cannot tell the format")
    one_line_error(["load", "--engine", "spark", str(good), str(tmp_path / "missing.jsonl")], "no such file")
    one_line_error(["generate", "--engine", "spark", "--days", "3", "--start", "2999-01-01"], "after today")
    wrong = tmp_path / "wrong"
    spark.sql("select 1 as event_id").write.parquet(str(wrong / "received_date=2026-01-01"))
    one_line_error(["spark", "register-files", str(wrong)], "not in the raw.events layout: event_id (int")
    one_line_error(["spark", "register-files", str(tmp_path / "nowhere")], "no such folder")
    # nothing lost, nothing added
    assert spark.sql("select count(*) from raw.events").collect()[0][0] == 3
    assert spark.sql("select count(*) from raw.events_quarantine").collect()[0][0] == 0
