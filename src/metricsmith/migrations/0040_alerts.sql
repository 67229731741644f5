-- Alerts: incidents (one open incident per rule and labels fingerprint), silences, the
-- notification outbox (one row per incident event and channel) and every delivery attempt.
create table if not exists metricsmith.alert_incidents (
    id            bigint generated always as identity primary key,
    rule          text not null,
    fingerprint   text not null,
    labels        jsonb not null default '{}'::jsonb,
    severity      text not null check (severity in ('info', 'warning', 'critical')),
    state         text not null check (state in ('PENDING', 'FIRING', 'RESOLVED')),
    first_seen    timestamptz not null,
    last_seen     timestamptz not null,
    fired_at      timestamptz,
    -- the condition has been false since then (the minimum resolve time counts from here)
    cleared_since timestamptz,
    value         double precision,
    summary       text not null default '',
    notified_at   timestamptz,
    resolved_at   timestamptz,
    constraint alert_incidents_resolved check ((state = 'RESOLVED') = (resolved_at is not null)),
    constraint alert_incidents_fired check (state = 'PENDING' or fired_at is not null)
);
create unique index if not exists alert_incidents_open
    on metricsmith.alert_incidents (rule, fingerprint) where state <> 'RESOLVED';
create index if not exists alert_incidents_recent on metricsmith.alert_incidents (first_seen desc);

create table if not exists metricsmith.alert_silences (
    id         bigint generated always as identity primary key,
    rule       text not null,
    starts_at  timestamptz not null,
    ends_at    timestamptz not null check (ends_at > starts_at),
    reason     text not null check (length(reason) > 0),
    created_by text not null,
    created_at timestamptz not null default now()
);
create index if not exists alert_silences_rule on metricsmith.alert_silences (rule, ends_at);

create table if not exists metricsmith.alert_notifications (
    id              bigint generated always as identity primary key,
    incident_id     bigint not null references metricsmith.alert_incidents (id),
    event           text not null check (event in ('firing', 'resolved')),
    channel         text not null,
    payload         jsonb not null,
    status          text not null default 'pending' check (status in ('pending', 'delivered', 'failed')),
    attempts        int not null default 0,
    next_attempt_at timestamptz not null default now(),
    created_at      timestamptz not null default now(),
    delivered_at    timestamptz,
    unique (incident_id, event, channel)
);
create index if not exists alert_notifications_due
    on metricsmith.alert_notifications (next_attempt_at) where status = 'pending';

create table if not exists metricsmith.alert_deliveries (
    id              bigint generated always as identity primary key,
    notification_id bigint not null references metricsmith.alert_notifications (id),
    attempt         int not null check (attempt >= 1),
    attempted_at    timestamptz not null default clock_timestamp(),
    ok              boolean not null,
    status_code     int,
    error           text,
    duration_ms     bigint not null default 0,
    unique (notification_id, attempt)
);
