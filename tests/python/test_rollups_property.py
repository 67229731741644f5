"""Property: random batches (late, out of order, re-sent, some invalid; received_at from the
batch's clock, as old as the event itself (before earlier runs), years ahead, or years
behind) loaded one after another with an incremental run after each; after every run the four marts (daily,
weekly, monthly, quarterly: the dates cross a quarter boundary) equal the independent Python computation of all
data so far, and at the end a --full-refresh gives the same tables cell for cell. 20 examples by default, 200 with METRICSMITH_DEEP=1."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rollups_reference import Event, diff_tables, fetch_tables, insert_events, reference

from metricsmith import rollups

TZ = "America/New_York"  # DST starts 2024-03-10 inside the range
BASE = datetime(2024, 2, 20, tzinfo=UTC)
AHEAD = datetime(2031, 6, 1, tzinfo=UTC)
BEHIND = datetime(2021, 6, 1, tzinfo=UTC)
EXAMPLES = 200 if os.environ.get("METRICSMITH_DEEP") == "1" else 20

event_spec = st.tuples(
    st.integers(0, 50 * 24 * 60),  # occurred minute after BASE (~50 days: Feb 29, month ends, DST)
    st.sampled_from([None, "u1", "u2", "u3", "u4", "u5", "u6"]),
    st.sampled_from([None, "o1", "o2", "o3"]),
    st.sampled_from([None, "s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8"]),
    st.sampled_from(["page_view", "signup", "purchase"]),
    st.integers(0, 500),
    st.integers(0, 12 * 60),  # minutes between batch clock and this event's receipt
    # received_at: the batch clock (+ delay); when it occurred (+ delay: older than earlier
    # runs); years ahead (a client clock); years behind (occurred > 1 day after: invalid)
    st.sampled_from(["clock", "clock", "occurred", "ahead", "behind"]),
)
batch_spec = st.tuples(st.lists(event_spec, min_size=1, max_size=12), st.integers(0, 3))  # events, re-sends
batches_spec = st.lists(batch_spec, min_size=1, max_size=4)


def _events(batch_no: int, specs: list[tuple[Any, ...]]) -> list[Event]:
    clock = BASE + timedelta(days=15 * batch_no)  # arrivals move on: older events become late
    out = []
    for minute, user, org, session, kind, revenue, delay, received in specs:
        occurred = BASE + timedelta(minutes=minute)
        base = {"clock": clock, "occurred": occurred, "ahead": AHEAD, "behind": BEHIND}[received]
        out.append(Event(occurred_at=occurred, received_at=base + timedelta(minutes=delay), event_type=kind,
                         user_id=user, organization_id=org, session_id=session,
                         revenue_cents=revenue if kind == "purchase" else 0))
    return out


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                      HealthCheck.too_slow])
@given(batches=batches_spec)
def test_incremental_runs_equal_full_refresh(empty_events: psycopg.Connection[Any], batches: list[Any]) -> None:
    conn = empty_events
    conn.execute("truncate raw.events")
    rollups.run_rollups(full_refresh=True, timezone=TZ, quiet=True)
    loaded: list[Event] = []
    for number, (specs, resend) in enumerate(batches):
        batch = _events(number, specs)
        batch += loaded[:resend]  # re-sent events: same event_id, skipped on load
        insert_events(conn, batch)
        loaded += [e for e in batch if e not in loaded]
        rollups.run_rollups(timezone=TZ, quiet=True)
        problems = diff_tables(reference(loaded, TZ), fetch_tables(conn))
        assert not problems, f"after batch {number}:\n" + "\n".join(problems)
    incremental = fetch_tables(conn)
    rollups.run_rollups(full_refresh=True, timezone=TZ, quiet=True)
    assert fetch_tables(conn) == incremental
