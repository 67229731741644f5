{#- One row per ISO week holding a spine day (see models/marts/_marts__models.yml). -#}
{{
    config(
        unique_key='week_start',
        indexes=[{'columns': ['week_start'], 'unique': True}],
    )
}}
-- depends_on: {{ ref('int_changed_days') }}

with

{%- if is_incremental() %}

refresh_weeks as (

    select distinct {{ metricsmith.week_start('metric_date') }} as week_start
    from {{ ref('int_changed_days') }}

),

-- weeks whose growth compares with a refreshed week
growth_weeks as (

    select {{ metricsmith.add_days('week_start', 7) }} as week_start from refresh_weeks
    except
    select week_start from refresh_weeks

),

{%- endif %}

activity as (

    select
        activity.*,
        daily.new_users,
        {{ metricsmith.week_start('activity.metric_date') }} as week_start
    from {{ ref('int_daily_activity') }} as activity
    inner join {{ ref('daily_metrics') }} as daily on daily.metric_date = activity.metric_date
    {%- if is_incremental() %}
    where activity.metric_date >= (select min(week_start) from refresh_weeks)
      and {{ metricsmith.week_start('activity.metric_date') }} in (select week_start from refresh_weeks)
    {%- endif %}

),

measures as (

    select
        week_start,
        {{ metricsmith.add_days('week_start', 6) }} as week_end,
        cast(count(*) as {{ dbt.type_int() }}) as days_with_data,
        cast(sum(total_events) as {{ dbt.type_bigint() }}) as total_events,
        cast(sum(users_first_in_week) as {{ dbt.type_bigint() }}) as active_users,
        cast(sum(new_users) as {{ dbt.type_bigint() }}) as new_users,
        cast(sum(organizations_first_in_week) as {{ dbt.type_bigint() }}) as active_organizations,
        cast(sum(sessions_first_in_week) as {{ dbt.type_bigint() }}) as sessions,
        cast(sum(signups) as {{ dbt.type_bigint() }}) as signups,
        cast(sum(purchases) as {{ dbt.type_bigint() }}) as purchases,
        cast(sum(revenue_cents) as {{ metricsmith.type_cents() }}) as revenue_cents,
        {{ metricsmith.average('total_events') }} as avg_daily_events,
        {{ metricsmith.average('active_users') }} as avg_daily_active_users,
        {{ metricsmith.average('revenue_cents') }} as avg_daily_revenue_cents
    from activity
    group by week_start

),

current_weeks as (

    select * from measures
    {%- if is_incremental() %}
    union all
    select
        week_start, week_end, days_with_data, total_events, active_users, new_users,
        active_organizations, sessions, signups, purchases, revenue_cents,
        avg_daily_events, avg_daily_active_users, avg_daily_revenue_cents
    from {{ this }}
    where week_start in (select week_start from growth_weeks)
    {%- endif %}

),

comparable_weeks as (

    select week_start, total_events, active_users, new_users, revenue_cents from measures
    {%- if is_incremental() %}
    union all
    select week_start, total_events, active_users, new_users, revenue_cents
    from {{ this }}
    where week_start not in (select week_start from refresh_weeks)
    {%- endif %}

),

final as (

    select
        cur.week_start,
        cur.week_end,
        cur.days_with_data,
        cur.days_with_data = 7 as is_complete,
        cur.total_events,
        cur.active_users,
        cur.new_users,
        cur.active_organizations,
        cur.sessions,
        cur.signups,
        cur.purchases,
        cur.revenue_cents,
        cur.avg_daily_events,
        cur.avg_daily_active_users,
        cur.avg_daily_revenue_cents,
        {{ metricsmith.growth_pct('cur.total_events', 'prev.total_events') }} as total_events_wow_pct,
        {{ metricsmith.growth_pct('cur.active_users', 'prev.active_users') }} as active_users_wow_pct,
        {{ metricsmith.growth_pct('cur.new_users', 'prev.new_users') }} as new_users_wow_pct,
        {{ metricsmith.growth_pct('cur.revenue_cents', 'prev.revenue_cents') }} as revenue_cents_wow_pct
    from current_weeks as cur
    left join comparable_weeks as prev
        on prev.week_start = {{ metricsmith.add_days('cur.week_start', -7) }}

)

select * from final
