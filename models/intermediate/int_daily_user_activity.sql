{#-
    One row per spine day: day totals, distinct users, and users whose first activity in the
    day's period of each declared grain (ISO week, month, quarter; vars.grains) and in the week
    part inside the month falls on that day. An incremental run recomputes whole months (or
    quarters) around the changed days (islands), reading only those events.
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

{{ metricsmith.island_ctes(islands, ref('stg_events'), ['event_type', 'user_id', 'revenue_cents']) }},

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

{{ metricsmith.first_activity_counts('events', 'user_id', 'users', with_breakdowns=true) }},

final as (

    select
        spine_days.metric_date,
        cast(coalesce(t.total_events, 0) as {{ dbt.type_bigint() }}) as total_events,
        cast(coalesce(t.signups, 0) as {{ dbt.type_bigint() }}) as signups,
        cast(coalesce(t.purchases, 0) as {{ dbt.type_bigint() }}) as purchases,
        cast(coalesce(t.revenue_cents, 0) as {{ metricsmith.type_cents() }}) as revenue_cents,
        cast(coalesce(u.active, 0) as {{ dbt.type_bigint() }}) as active_users,
        {{- metricsmith.first_activity_columns('u', 'users', with_breakdowns=true) }}
    from spine_days
    left join day_totals as t
        on spine_days.island_id = t.island_id and spine_days.metric_date = t.event_date
    left join users_counts as u
        on spine_days.island_id = u.island_id and spine_days.metric_date = u.event_date

)

select * from final
