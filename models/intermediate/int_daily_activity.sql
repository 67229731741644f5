{#-
    One row per spine day: additive day totals, distinct counts, and the "first activity in
    the week / month / week-within-month" counts that make weekly and monthly distinct counts
    exact sums (see macros/rollups/first_activity.sql). An incremental run recomputes whole
    months around the changed days (islands), reading only those events.
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

islands as (

    {%- for i in islands %}
    select
        {{ loop.index }} as island_id,
        cast('{{ i.range_start }}' as date) as range_start,
        cast('{{ i.range_end }}' as date) as range_end,
        cast('{{ i.out_start }}' as date) as out_start,
        cast('{{ i.out_end }}' as date) as out_end
    {{ 'union all' if not loop.last }}
    {%- else %}
    select
        0 as island_id,
        cast(null as date) as range_start,
        cast(null as date) as range_end,
        cast(null as date) as out_start,
        cast(null as date) as out_end
    where 1 = 0
    {%- endfor %}

),

source_events as (

    select occurred_at, event_date, event_type, user_id, organization_id, session_id, revenue_cents
    from {{ ref('stg_events') }}

),

-- each island reads the events of its whole ISO weeks (ranges of adjacent islands may touch)
events as (

    {%- for i in islands %}
    select {{ loop.index }} as island_id, event_date, event_type, user_id, organization_id, session_id, revenue_cents
    from source_events
    where occurred_at >= cast('{{ i.from_ts }}' as {{ metricsmith.type_timestamptz() }})
      and occurred_at < cast('{{ i.to_ts }}' as {{ metricsmith.type_timestamptz() }})
    {{ 'union all' if not loop.last }}
    {%- else %}
    select 0 as island_id, event_date, event_type, user_id, organization_id, session_id, revenue_cents
    from source_events
    where 1 = 0
    {%- endfor %}

),

spine_days as (

    {%- for i in islands %}
    select {{ loop.index }} as island_id, series.metric_date
    from ({{ metricsmith.date_series("cast('" ~ i.out_start ~ "' as date)", "cast('" ~ i.out_end ~ "' as date)") }}) as series
    {{ 'union all' if not loop.last }}
    {%- else %}
    select 0 as island_id, cast(null as date) as metric_date where 1 = 0
    {%- endfor %}

),

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

{{ metricsmith.first_activity_counts('events', 'organization_id', 'organizations', dedupe_first=true) }},

{{ metricsmith.first_activity_counts('events', 'session_id', 'sessions') }},

final as (

    select
        spine_days.metric_date,
        cast(coalesce(t.total_events, 0) as {{ dbt.type_bigint() }}) as total_events,
        cast(coalesce(t.signups, 0) as {{ dbt.type_bigint() }}) as signups,
        cast(coalesce(t.purchases, 0) as {{ dbt.type_bigint() }}) as purchases,
        cast(coalesce(t.revenue_cents, 0) as {{ dbt.type_bigint() }}) as revenue_cents,
        cast(coalesce(u.active, 0) as {{ dbt.type_bigint() }}) as active_users,
        cast(coalesce(o.active, 0) as {{ dbt.type_bigint() }}) as active_organizations,
        cast(coalesce(s.active, 0) as {{ dbt.type_bigint() }}) as sessions,
        cast(coalesce(u.first_in_week, 0) as {{ dbt.type_bigint() }}) as users_first_in_week,
        cast(coalesce(u.first_in_month, 0) as {{ dbt.type_bigint() }}) as users_first_in_month,
        cast(coalesce(u.first_in_week_month, 0) as {{ dbt.type_bigint() }}) as users_first_in_week_month,
        cast(coalesce(o.first_in_week, 0) as {{ dbt.type_bigint() }}) as organizations_first_in_week,
        cast(coalesce(o.first_in_month, 0) as {{ dbt.type_bigint() }}) as organizations_first_in_month,
        cast(coalesce(s.first_in_week, 0) as {{ dbt.type_bigint() }}) as sessions_first_in_week,
        cast(coalesce(s.first_in_month, 0) as {{ dbt.type_bigint() }}) as sessions_first_in_month
    from spine_days
    left join day_totals as t
        on t.island_id = spine_days.island_id and t.event_date = spine_days.metric_date
    left join users_counts as u
        on u.island_id = spine_days.island_id and u.event_date = spine_days.metric_date
    left join organizations_counts as o
        on o.island_id = spine_days.island_id and o.event_date = spine_days.metric_date
    left join sessions_counts as s
        on s.island_id = spine_days.island_id and s.event_date = spine_days.metric_date

)

select * from final
