-- raw.events: the event store every metric is computed from (contract: see README).
create schema if not exists raw;

create table if not exists raw.events (
    event_id        uuid        primary key,
    occurred_at     timestamptz not null,
    received_at     timestamptz not null default now(),
    event_type      text        not null check (event_type <> ''),
    user_id         text,
    organization_id text,
    session_id      text,
    revenue_cents   bigint      not null default 0 check (revenue_cents >= 0),
    properties      jsonb       not null default '{}'::jsonb
);

comment on table raw.events is 'Raw product events. One row per event_id; loaded by metricsmith load / generate / realtime consume.';

-- the incremental models filter on both times: occurred_at for ranges (backfill, rebuilds),
-- received_at for "what arrived since the last run" (late data).
create index if not exists events_occurred_at_idx on raw.events (occurred_at);
create index if not exists events_received_at_idx on raw.events (received_at);

-- Rows the loader refused, kept verbatim with the reason. Nothing is ever silently dropped.
create table if not exists raw.events_quarantine (
    quarantine_id  bigint generated always as identity primary key,
    quarantined_at timestamptz not null default now(),
    source         text        not null,
    line_number    bigint,
    reason         text        not null,
    detail         text,
    raw_text       text        not null
);

create index if not exists events_quarantine_reason_idx on raw.events_quarantine (reason);

comment on table raw.events_quarantine is 'Input rows refused by the loader or the stream consumer, verbatim, with reason and detail.';
