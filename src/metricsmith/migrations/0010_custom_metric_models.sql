-- Custom metrics, trust fixes (docs/custom_metrics.md, "What reaches dbt").
-- 1. Principal ids, team ids and slugs have a strict character set. Rows stored before keep
--    their value (`not valid`: checked for new and changed rows only); the application checks
--    the same rules with a clear error first.
alter table metricsmith.organizations add constraint organizations_id_charset
    check (organization_id ~ '^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,63}$') not valid;
alter table metricsmith.users add constraint users_id_charset
    check (user_id ~ '^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,63}$') not valid;
alter table metricsmith.teams add constraint teams_id_charset
    check (team_id ~ '^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,63}$') not valid;

-- 2. One row per generated model (metric version): the checked definition the generated model
--    reads by (metric_id, version) when dbt runs it (validated, re-serialized expressions; never
--    placed into a file dbt renders), and the model's last run (per-metric failure isolation).
create table if not exists metricsmith.custom_metric_models (
    metric_id bigint not null,
    version int not null,
    definition jsonb not null,
    run_status text check (run_status in ('success', 'error')),
    run_error text,
    run_at timestamptz,
    created_at timestamptz not null default now(),
    primary key (metric_id, version),
    foreign key (metric_id, version) references metricsmith.custom_metric_versions (metric_id, version)
);
