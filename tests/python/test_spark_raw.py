"""raw.events on Spark: `metricsmith load --engine spark` validates with the PostgreSQL loader's
rules (the same reasons), quarantines refused lines as Parquet (once per file), skips event_ids
already stored; `generate --engine spark` writes the generator's events; `spark register-files`
appends files in the layout; bad inputs end in one-line errors with nothing lost."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from _spark import empty_spark_events, spark_available, spark_fixture  # noqa: F401 - fixture

from metricsmith import ingest
from metricsmith.cli.main import main
from metricsmith.spark import raw

pytestmark = [spark_available]



def _lines() -> list[str]:
    good = [{"event_id": f"0190a1b2-0000-7000-8000-00000000000{i}", "occurred_at": f"2026-11-0{i}T10:00:00Z",
             "received_at": f"2026-11-0{i}T10:00:05Z", "event_type": "purchase", "user_id": f"u{i}",
             "revenue_cents": 100 * i, "properties": {"plan": "team"}} for i in range(1, 4)]
    bad = [
        {"event_id": "not-a-uuid", "occurred_at": "2026-11-02T10:00:00Z", "event_type": "purchase"},
        {"event_id": "0190a1b2-0000-7000-8000-0000000000a1", "occurred_at": "2026-11-02T10:00:00Z",
         "event_type": "purchase", "revenue_cents": -5},
        {"event_id": "0190a1b2-0000-7000-8000-0000000000a2", "occurred_at": "1999-12-31T10:00:00Z",
         "event_type": "page_view"},
    ]
    return [json.dumps(r) for r in good] + ["", "{not json"] + [json.dumps(r) for r in bad] + [json.dumps(good[0])]


def _expected_reasons(lines: list[str]) -> list[str]:
    """What the PostgreSQL loader's rule set says about each line (the independent check)."""
    out = []
    for line in lines:
        if line.strip():
            verdict = ingest.validate_record(line)
            if isinstance(verdict, ingest.Rejection):
                out.append(verdict.reason)
    return sorted(out)


def test_load_validates_quarantines_and_dedups(spark: Any, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    empty_spark_events(spark)
    lines = _lines()
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    assert main(["load", "--engine", "spark", str(path)]) == 1  # quarantined rows -> exit 1
    out = capsys.readouterr()
    assert "loaded                 3" in out.out and "duplicates             1" in out.out
    assert "4 row(s) quarantined" in out.err
    rows = spark.sql("select event_id, revenue_cents, received_date, properties from raw.events "
                     "order by event_id").collect()
    assert [(r[1], str(r[2])) for r in rows] == [(100, "2026-11-01"), (200, "2026-11-02"), (300, "2026-11-03")]
    assert json.loads(rows[0][3]) == {"plan": "team"}
    quarantined = spark.sql("select reason, source, line_number from raw.events_quarantine").collect()
    assert sorted(r[0] for r in quarantined) == _expected_reasons(lines)
    assert {r[1] for r in quarantined} == {"events.jsonl"}
    assert sorted(r[2] for r in quarantined) == [5, 6, 7, 8]

    # the same file again: nothing new, the bad lines are not quarantined twice
    summary = raw.load_files([str(path)])
    assert (summary.loaded, summary.duplicates, summary.already_quarantined) == (0, 4, 4)
    assert spark.sql("select count(*) from raw.events").collect()[0][0] == 3
    assert spark.sql("select count(*) from raw.events_quarantine").collect()[0][0] == 4


def test_generate_and_register_files(spark: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from datetime import date

    from metricsmith.generator import generate_events

    empty_spark_events(spark)
    assert main(["generate", "--engine", "spark", "--days", "3", "--events-per-day", "50", "--seed", "7",
                 "--start", "2026-01-01"]) == 0
    assert "into Spark raw.events" in capsys.readouterr().out
    expected = sorted(e["event_id"] for e in generate_events(days=3, events_per_day=50, seed=7,
                                                              start=date(2026, 1, 1)))
    stored = sorted(r[0] for r in spark.sql("select event_id from raw.events").collect())
    assert stored == expected

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
    assert spark.sql("select count(*) from raw.events").collect()[0][0] == len(expected) + 5


def test_bad_inputs_are_one_line_errors(spark: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty_spark_events(spark)
    csv = tmp_path / "events.csv"
    csv.write_text("event_id,occurred_at,event_type\n")
    assert main(["load", "--engine", "spark", str(csv)]) == 2
    assert "reads JSON Lines only" in capsys.readouterr().err
    assert main(["load", "--engine", "spark", str(tmp_path / "missing.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err
    wrong = tmp_path / "wrong"
    spark.sql("select 1 as event_id").write.parquet(str(wrong / "received_date=2026-01-01"))
    assert main(["spark", "register-files", str(wrong)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not in the raw.events layout" in err and "event_id (int" in err
    assert spark.sql("select count(*) from raw.events").collect()[0][0] == 0
