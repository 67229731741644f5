{#-
    Users seen in this run's arrivals (rows inserted since the watermark, and on a backfill
    every event of the backfill's days): their earliest day among them and their first day as
    recorded before this run. Empty on a full rebuild (first-seen is rebuilt then).
-#}
{{ config(materialized='table') }}

{%- set batch = metricsmith.rollup_batch(ref('int_rollup_batch')) %}
{%- set first_seen = metricsmith.rollup_relation('int_user_first_seen') %}
{#- which events are this run's arrivals: none on a full rebuild, those inserted since the low
    watermark (and, on a backfill, every event of its days), or all of them on the first run -#}
{%- set arrived = 'true' %}
{%- if batch.get('is_full_rebuild') %}
{%- set arrived = 'false' %}
{%- elif batch.get('low_watermark') is not none %}
{%- set arrived = "inserted_at >= cast('" ~ batch.low_watermark ~ "' as " ~ metricsmith.type_timestamptz() ~ ")" %}
{%- endif %}
{%- if batch.get('backfill_start') is not none and batch.get('low_watermark') is not none
       and not batch.get('is_full_rebuild') %}
{%- set arrived = "(" ~ arrived ~ " or event_date between cast('" ~ batch.backfill_start
    ~ "' as date) and cast('" ~ batch.backfill_end ~ "' as date))" %}
{%- endif %}

with

batch as (

    select * from {{ ref('int_rollup_batch') }}

),

arrivals as (

    select user_id, event_date
    from {{ ref('stg_events') }}
    where user_id is not null and {{ arrived }}

),

arrival_users as (

    select user_id, min(event_date) as arrival_first_date
    from arrivals
    group by user_id

),

{%- if first_seen is not none and not batch.get('is_full_rebuild') %}

-- first day now, and as of the last committed run (a run that did not reach the ledger
-- may already have moved it: its move is replayed, so the old first day is recomputed)
recorded as (

    select
        f.user_id,
        f.first_event_date as current_first_date,
        case
            when
                f.moved_at is not null
                and (batch.committed_batch_started_at is null or f.moved_at > batch.committed_batch_started_at)
                then f.moved_from_date
            else f.first_event_date
        end as first_event_date
    from {{ first_seen }} as f
    inner join arrival_users as a on f.user_id = a.user_id
    cross join batch

),

{%- else %}

recorded as (

    select
        cast(null as {{ dbt.type_string() }}) as user_id,
        cast(null as date) as current_first_date,
        cast(null as date) as first_event_date
    where 1 = 0

),

{%- endif %}

final as (

    select
        a.user_id,
        a.arrival_first_date,
        r.first_event_date as previous_first_date,
        r.current_first_date,
        case
            when r.current_first_date is null or a.arrival_first_date < r.current_first_date
                then a.arrival_first_date
            else r.current_first_date
        end as first_event_date,
        batch.batch_started_at
    from arrival_users as a
    left join recorded as r on a.user_id = r.user_id
    cross join batch

)

select * from final
