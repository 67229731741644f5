{#-
    The local days whose metrics may have changed in this run, with the reason, and the spine
    (first and last day with a valid event) after this run. On a full rebuild: every spine day.
-#}
{{ config(materialized='table', pre_hook=metricsmith.rollup_parallel_tuning()) }}
-- depends_on: {{ ref('int_changed_users') }}

{%- set batch = metricsmith.rollup_batch(ref('int_rollup_batch')) %}
{%- set activity = metricsmith.rollup_relation('int_daily_user_activity') %}
{%- set full = batch.get('is_full_rebuild') or activity is none %}

with

{%- if full %}

-- the local date is monotonic in occurred_at: convert the two extremes, not every row
spine as (

    select
        {{ metricsmith.local_date('min(occurred_at)') }} as spine_start,
        {{ metricsmith.local_date('max(occurred_at)') }} as spine_end
    from {{ ref('stg_events') }}

),

changed as (

    select series.metric_date, 'full_rebuild' as reason
    from spine
    cross join (
        {{ metricsmith.date_series('(select spine_start from spine)', '(select spine_end from spine)') }}
    ) as series

),

{%- else %}

arrival_days as (

    select distinct event_date as metric_date
    from {{ ref('stg_events') }}
    {%- if batch.get('low_watermark') is not none %}
    where
        inserted_at
        >= cast('{{ batch.low_watermark }}' as {{ metricsmith.type_timestamptz() }})
    {%- endif %}

),

previous_spine as (

    select min(metric_date) as spine_start, max(metric_date) as spine_end
    from {{ activity }}

),

spine as (

    select
        case
            when p.spine_start is null or a.first_day < p.spine_start then a.first_day else p.spine_start
        end as spine_start,
        case when p.spine_end is null or a.last_day > p.spine_end then a.last_day else p.spine_end end as spine_end,
        p.spine_start as previous_start,
        p.spine_end as previous_end
    from previous_spine as p
    cross join (select min(metric_date) as first_day, max(metric_date) as last_day from arrival_days) as a

),

-- days that join the spine (zero days between the old and the new first / last day)
spine_extension as (

    select series.metric_date
    from (
        {{ metricsmith.date_series('(select spine_start from spine)', '(select spine_end from spine)') }}
    ) as series
    cross join spine
    where
        spine.previous_start is null
        or series.metric_date < spine.previous_start
        or series.metric_date > spine.previous_end

),

-- a user's first day moved earlier: the old first day loses a new user
moved_first_days as (

    select distinct previous_first_date as metric_date
    from {{ ref('int_changed_users') }}
    where
        previous_first_date is not null
        and first_event_date <> previous_first_date

),

{%- if batch.get('backfill_start') is not none %}

backfill_days as (

    select series.metric_date
    from ({{ metricsmith.date_series("cast('" ~ batch.backfill_start ~ "' as date)", "cast('" ~ batch.backfill_end ~ "' as date)") }}) as series
    cross join spine
    where series.metric_date between spine.spine_start and spine.spine_end

),

{%- endif %}

all_changes as (

    select metric_date, 'new_events' as reason from arrival_days
    union all
    select metric_date, 'spine_extended' as reason from spine_extension
    union all
    select metric_date, 'first_seen_moved' as reason from moved_first_days
    {%- if batch.get('backfill_start') is not none %}
    union all
    select metric_date, 'backfill' as reason from backfill_days
    {%- endif %}

),

changed as (

    select metric_date, min(reason) as reason
    from all_changes
    group by metric_date

),

{%- endif %}

final as (

    select
        changed.metric_date,
        changed.reason,
        spine.spine_start,
        spine.spine_end
    from changed
    cross join spine
    where changed.metric_date is not null

)

select * from final
