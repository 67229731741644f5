"""Ingest throughput: generator and loader events/s, and the loader vs a raw COPY.

    python bench/ingest.py [--events 1000000]

All three write the same rows into raw.events of a fresh database on the configured server
(embedded default unless METRICSMITH_DATABASE_URL is set), in one run:
  generator  -- metricsmith.generator.generate_to_db (numpy + COPY)
  raw COPY   -- the generator's rows as prepared COPY text, streamed straight into raw.events
  loader     -- metricsmith load of the same rows as a JSON Lines file (parse, validate, dedupe,
                quarantine, COPY)
Targets: generator >= 200 K events/s; loader >= 0.3x raw COPY.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import bench_database, server_label  # noqa: E402
from metricsmith.generator import EventGenerator, generate_to_db  # noqa: E402
from metricsmith.ingest import load_files  # noqa: E402

COLUMNS = "event_id, occurred_at, received_at, event_type, user_id, organization_id, session_id, revenue_cents, properties"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args()
    days = 100
    per_day = max(1, args.events // days)
    start = date(2025, 1, 1)
    gen = EventGenerator(days=days, events_per_day=per_day, seed=11, start=start)
    print(f"server: {server_label()}  events: {gen.total_events:,}")

    with bench_database("msbench_ingest") as url, psycopg.connect(url, autocommit=True) as conn:
        # generator
        result = generate_to_db(days=days, events_per_day=per_day, seed=11, start=start)
        gen_rate = result.events / result.seconds
        print(f"generator   {gen_rate:>12,.0f} events/s   ({result.seconds:.2f} s)")

        # raw COPY of the same rows (text prepared beforehand: only the server's work is timed)
        texts = [EventGenerator.copy_text(b) for b in gen.days_iter()]
        conn.execute("truncate raw.events")
        conn.execute("checkpoint")
        began = time.perf_counter()
        with conn.cursor() as cur:
            cur.execute("set time zone 'UTC'")
            with conn.transaction(), cur.copy(f"copy raw.events ({COLUMNS}) from stdin") as copy:
                for text in texts:
                    copy.write(text)
        raw_seconds = time.perf_counter() - began
        raw_rate = gen.total_events / raw_seconds
        print(f"raw COPY    {raw_rate:>12,.0f} events/s   ({raw_seconds:.2f} s)")
        del texts

        # loader, from a JSON Lines file of the same rows
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "events.jsonl"
            with open(path, "w") as out:
                for batch in gen.days_iter():
                    for record in EventGenerator.records(batch):
                        record["properties"] = json.loads(record["properties"])
                        out.write(json.dumps(record) + "\n")
            size_mb = os.path.getsize(path) / 1e6
            conn.execute("truncate raw.events")
            conn.execute("checkpoint")
            began = time.perf_counter()
            summary = load_files([str(path)])
            load_seconds = time.perf_counter() - began
        assert summary.loaded == gen.total_events, summary.as_dict()
        load_rate = gen.total_events / load_seconds
        print(f"loader      {load_rate:>12,.0f} events/s   ({load_seconds:.2f} s, {size_mb:.0f} MB JSON Lines)")
        print()
        print(f"generator vs target 200 K/s:  {gen_rate / 200_000:.2f}x  {'OK' if gen_rate >= 200_000 else 'MISSED'}")
        ratio = load_rate / raw_rate
        print(f"loader / raw COPY:            {ratio:.2f}   (target >= 0.30)  {'OK' if ratio >= 0.3 else 'MISSED'}")


if __name__ == "__main__":
    main()
