-- Orchestration (issue 4): one row per job run. A row is RUNNING while the job works and
-- ends in exactly one final status; a RUNNING row whose process died is marked FAILED by
-- the next run of that job (or by any run once it is older than details->>'timeout_seconds').
do $$
begin
    if not exists (select 1 from pg_type t join pg_namespace n on n.oid = t.typnamespace
                   where n.nspname = 'metricsmith' and t.typname = 'job_status') then
        create type metricsmith.job_status as enum ('RUNNING', 'COMPLETED', 'FAILED', 'PARTIAL');
    end if;
end
$$;

create table if not exists metricsmith.metrics_aggregation_jobs_log (
    id                  bigint generated always as identity primary key,
    job_name            text not null,
    status              metricsmith.job_status not null default 'RUNNING',
    attempt             int not null default 1 check (attempt >= 1),
    started_at          timestamptz not null default now(),
    finished_at         timestamptz,
    duration_ms         bigint check (duration_ms >= 0),
    period_start        date,
    period_end          date,
    rows_affected       bigint,
    models_ok           int,
    models_failed       int,
    error_message       text,
    prefect_flow_run_id uuid,
    details             jsonb not null default '{}'::jsonb,
    constraint jobs_log_final_has_finish check ((status = 'RUNNING') = (finished_at is null))
);

create index if not exists metrics_aggregation_jobs_log_job_started
    on metricsmith.metrics_aggregation_jobs_log (job_name, started_at desc);
create index if not exists metrics_aggregation_jobs_log_running
    on metricsmith.metrics_aggregation_jobs_log (job_name) where status = 'RUNNING';
