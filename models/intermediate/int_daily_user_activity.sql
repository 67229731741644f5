{#-
    One row per spine day: day totals, distinct users, and users whose first activity in the
    day's ISO week / month / week part inside the month falls on that day. An incremental run
    recomputes whole months around the changed days (islands), reading only those events.
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

{{ metricsmith.island_ctes(islands, ['event_type', 'user_id', 'revenue_cents']) }},

day_totals as (

    select
        island_id,
        event_date,
        count(*) as total_events,
        sum(case when event_type = 'signup' then 1 else 0 end) as signups,
        sum(case when event_type = 'purchase' then 1 else 0 end) as purchases,
        sum(revenue_cents) as revenue_cents
    from events
    group by island_id, event_date

),

{{ metricsmith.first_activity_counts('events', 'user_id', 'users', with_week_month=true) }},

final as (

    select
        spine_days.metric_date,
        cast(coalesce(t.total_events, 0) as {{ dbt.type_bigint() }}) as total_events,
        cast(coalesce(t.signups, 0) as {{ dbt.type_bigint() }}) as signups,
        cast(coalesce(t.purchases, 0) as {{ dbt.type_bigint() }}) as purchases,
        cast(coalesce(t.revenue_cents, 0) as {{ metricsmith.type_cents() }}) as revenue_cents,
        cast(coalesce(u.active, 0) as {{ dbt.type_bigint() }}) as active_users,
        cast(coalesce(u.first_in_week, 0) as {{ dbt.type_bigint() }}) as users_first_in_week,
        cast(coalesce(u.first_in_month, 0) as {{ dbt.type_bigint() }}) as users_first_in_month,
        cast(coalesce(u.first_in_week_month, 0) as {{ dbt.type_bigint() }}) as users_first_in_week_month
    from spine_days
    left join day_totals as t
        on t.island_id = spine_days.island_id and t.event_date = spine_days.metric_date
    left join users_counts as u
        on u.island_id = spine_days.island_id and u.event_date = spine_days.metric_date

)

select * from final
