{#-
    One row per spine day: distinct organizations and organizations whose first activity in the day's
    ISO week / month falls on that day (see int_daily_user_activity).
-#}
{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key='metric_date',
        on_schema_change='fail',
        indexes=[{'columns': ['metric_date'], 'unique': True}],
        pre_hook=metricsmith.rollup_session_tuning(),
    )
}}
-- depends_on: {{ ref('int_changed_days') }}

{%- set islands = metricsmith.rollup_islands() %}

with

{{ metricsmith.island_ctes(islands, ['organization_id']) }},

{{ metricsmith.first_activity_counts('events', 'organization_id', 'organizations', dedupe_first=true) }},

final as (

    select
        spine_days.metric_date,
        cast(coalesce(c.active, 0) as {{ dbt.type_bigint() }}) as active_organizations,
        cast(coalesce(c.first_in_week, 0) as {{ dbt.type_bigint() }}) as organizations_first_in_week,
        cast(coalesce(c.first_in_month, 0) as {{ dbt.type_bigint() }}) as organizations_first_in_month
    from spine_days
    left join organizations_counts as c
        on c.island_id = spine_days.island_id and c.event_date = spine_days.metric_date

)

select * from final
