{#-
    One row per user: the local day of the user's first valid event ever. Incremental runs
    only move a user's first day earlier (events are append-only), from int_changed_users.
-#}
{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key='user_id',
        on_schema_change='sync_all_columns',
        indexes=[
            {'columns': ['user_id'], 'unique': True},
            {'columns': ['first_event_date']},
        ],
        pre_hook=[metricsmith.rollup_session_tuning(), metricsmith.rollup_parallel_tuning()],
    )
}}
-- depends_on: {{ ref('int_changed_users') }}
{%- set batch = metricsmith.rollup_batch(ref('int_rollup_batch')) %}

with

{#- a full rebuild of an existing table replaces every user (delete+insert by user_id) -#}
{%- if is_incremental() and not batch.get('is_full_rebuild') %}

changed_users as (

    select * from {{ ref('int_changed_users') }}

),

-- users whose first day moves now; moved_from_date keeps the first day as of the last
-- committed run until a run that reaches the ledger has recomputed it
first_seen as (

    select
        user_id,
        first_event_date,
        previous_first_date as moved_from_date,
        batch_started_at as moved_at
    from changed_users
    where
        current_first_date is null
        or first_event_date < current_first_date

)

{%- else %}

events as (

    select user_id, occurred_at from {{ ref('stg_events') }}

),

-- the local date is monotonic in occurred_at: convert each user's first instant only
first_instants as (

    select user_id, min(occurred_at) as first_occurred_at
    from events
    where user_id is not null
    group by user_id

),

first_seen as (

    select
        user_id,
        {{ metricsmith.local_date('first_occurred_at') }} as first_event_date,
        cast(null as date) as moved_from_date,
        cast(null as {{ metricsmith.type_timestamptz() }}) as moved_at
    from first_instants

)

{%- endif %}

select * from first_seen
