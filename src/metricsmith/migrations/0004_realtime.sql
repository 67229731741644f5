-- Realtime metrics: snapshots of the Redis values, reconciliation corrections, stream rejects.
create schema if not exists metricsmith;

-- One row per metric series per snapshot (all rows of a snapshot share snapshot_id and as_of).
create table if not exists metricsmith.realtime_metrics_cache (
    snapshot_id    bigint      not null,
    metric         text        not null,
    labels         jsonb       not null default '{}'::jsonb,
    metric_type    text        not null check (metric_type in ('counter', 'gauge', 'histogram', 'rate')),
    value          double precision,          -- counter / gauge value; histogram count; null for a rate
    value_detail   jsonb,                     -- histogram buckets/sum/count, rate per window
    window_seconds int[],                     -- a rate's windows
    as_of          timestamptz not null,
    primary key (snapshot_id, metric, labels)
);
create index if not exists realtime_metrics_cache_as_of_idx on metricsmith.realtime_metrics_cache (as_of);
create sequence if not exists metricsmith.realtime_snapshot_seq;
comment on table metricsmith.realtime_metrics_cache is
    'Snapshots of the realtime (Redis) metrics, written every minute by the realtime-snapshot flow.';

-- Every correction reconciliation applied to Redis.
create table if not exists metricsmith.realtime_corrections (
    correction_id  bigint generated always as identity primary key,
    run_id         uuid        not null,
    metric         text        not null,
    labels         jsonb       not null default '{}'::jsonb,
    expected       double precision not null,  -- recomputed from raw.events
    observed       double precision not null,  -- found in Redis
    drift          double precision not null,  -- expected - observed
    corrected_at   timestamptz not null default now()
);
create index if not exists realtime_corrections_at_idx on metricsmith.realtime_corrections (corrected_at);
comment on table metricsmith.realtime_corrections is
    'Realtime values reconciliation found wrong in Redis and set to the value recomputed from raw.events.';

-- Stream entries already quarantined (so a re-delivered bad entry is quarantined once).
create table if not exists metricsmith.realtime_stream_rejects (
    stream       text not null,
    entry_id     text not null,
    rejected_at  timestamptz not null default now(),
    primary key (stream, entry_id)
);
