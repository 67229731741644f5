{#-
    One row per spine day: distinct sessions and sessions whose first activity in the day's
    period of each declared grain (ISO week, month, quarter) falls on that day (see
    int_daily_user_activity).
-#}
{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key='metric_date',
        on_schema_change='sync_all_columns',
        indexes=[{'columns': ['metric_date'], 'unique': True}],
        pre_hook=metricsmith.rollup_session_tuning(),
    )
}}
{%- set islands = metricsmith.rollup_islands(ref('int_changed_days')) %}

with

{{ metricsmith.island_ctes(islands, ref('stg_events'), ['session_id']) }},

{{ metricsmith.first_activity_counts('events', 'session_id', 'sessions') }},

final as (

    select
        spine_days.metric_date,
        cast(coalesce(c.active, 0) as {{ dbt.type_bigint() }}) as sessions,
        {{- metricsmith.first_activity_columns('c', 'sessions') }}
    from spine_days
    left join sessions_counts as c
        on spine_days.island_id = c.island_id and spine_days.metric_date = c.event_date

)

select * from final
