"""Exactly-once effect under SIGKILL: consumer processes killed at random points, restarted.

Each round starts 1-2 ``metricsmith realtime consume`` processes and SIGKILLs them after a
random delay (``METRICSMITH_REALTIME_FAULT_PAUSE_MS`` widens the gaps between "Redis applied",
"Postgres committed" and "XACK" so kills land inside a batch). New processes have new names, so
the previous ones' pending entries come back only through XAUTOCLAIM. At the end one consumer
drains the stream; Redis counters and raw.events must equal the input exactly.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from typing import Any

import psycopg
from _realtime_events import BAD_EVENTS, expected_from, make_events, private_settings

from metricsmith.realtime import RealtimeMetricsService, StreamConsumer, track_many
from metricsmith.realtime.stream import GROUP

KILLS = int(os.environ.get("METRICSMITH_REALTIME_KILLS", "24"))


def _consumer(env: dict[str, str], *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "metricsmith.cli", "realtime", "consume", "--batch-size", "100",
         "--claim-idle-ms", "400", "--lock-ttl-ms", "600", "--block-ms", "100", *extra],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_sigkill_anywhere_loses_nothing_and_counts_nothing_twice(empty_events: psycopg.Connection[Any]) -> None:
    settings = private_settings()
    rng = random.Random(20)
    events = make_events(int(os.environ.get("METRICSMITH_REALTIME_KILL_EVENTS", "20000")), seed=21)
    # producer retries and bad input mixed in
    stream_input: list[Any] = events + rng.sample(events, 400)
    stream_input += [bad for bad, _ in BAD_EVENTS]
    rng.shuffle(stream_input)
    track_many(stream_input, settings=settings)

    env = {**os.environ, "METRICSMITH_REDIS_PREFIX": settings.redis_prefix,
           "METRICSMITH_REALTIME_FAULT_PAUSE_MS": "120"}
    svc = RealtimeMetricsService(settings)
    StreamConsumer(settings, log=lambda _: None).close()  # the group exists before the first kill
    kills = 0
    while kills < KILLS:
        procs = [_consumer(env) for _ in range(rng.choice([1, 1, 2]))]
        for proc in procs:  # wait until each one is up (its first stderr line), however busy the machine
            assert proc.stderr is not None
            proc.stderr.readline()
        time.sleep(rng.uniform(0.0, 0.9))  # then somewhere inside a batch
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait()
    pending_before = svc.redis.xpending(svc.keys.stream, GROUP)["pending"]
    remaining_before = svc.redis.xlen(svc.keys.stream)
    assert remaining_before > 0, "the kills all happened after the stream was drained; use more events"

    # --allow-quarantine: the bad entries may be left for this consumer; their quarantine is checked below
    final = _consumer({**env, "METRICSMITH_REALTIME_FAULT_PAUSE_MS": ""}, "--until-idle", "--allow-quarantine")
    _, err = final.communicate(timeout=300)
    assert final.returncode == 0, err.decode()
    assert svc.redis.xpending(svc.keys.stream, GROUP)["pending"] == 0
    assert svc.redis.xlen(svc.keys.stream) == 0

    expected = expected_from(events, settings.timezone)
    from test_realtime_stream import assert_matches

    assert_matches(svc, expected, empty_events)
    assert empty_events.execute("select count(*) from raw.events").fetchone() == (len(events),)
    reasons = sorted(r[0] for r in empty_events.execute("select reason from raw.events_quarantine").fetchall())
    assert reasons == sorted(reason for _, reason in BAD_EVENTS)
    print(f"{kills} SIGKILLs; {pending_before} entries were pending (claimed later), "
          f"{remaining_before} of {len(stream_input)} left for the final consumer")
