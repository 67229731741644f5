{#- One row per calendar month holding a spine day (see models/marts/_marts__models.yml). -#}
{{
    config(
        unique_key='month_start',
        indexes=[{'columns': ['month_start'], 'unique': True}],
    )
}}
-- depends_on: {{ ref('int_changed_days') }}

{%- set measure_columns = [
    'total_events', 'active_users', 'new_users', 'active_organizations', 'sessions',
    'signups', 'purchases', 'revenue_cents',
] %}

with

{%- if is_incremental() %}

refresh_months as (

    select distinct {{ metricsmith.month_start('metric_date') }} as month_start
    from {{ ref('int_changed_days') }}

),

-- months whose month-over-month or year-over-year growth compares with a refreshed month
growth_months as (

    select {{ metricsmith.add_months('month_start', 1) }} as month_start from refresh_months
    union
    select {{ metricsmith.add_months('month_start', 12) }} as month_start from refresh_months
    except
    select month_start from refresh_months

),

{%- endif %}

activity as (

    select
        activity.*,
        daily.new_users,
        {{ metricsmith.month_start('activity.metric_date') }} as month_start,
        {{ metricsmith.week_start('activity.metric_date') }} as week_start
    from {{ ref('int_daily_activity') }} as activity
    inner join {{ ref('daily_metrics') }} as daily on daily.metric_date = activity.metric_date
    {%- if is_incremental() %}
    where activity.metric_date >= (select min(month_start) from refresh_months)
      and {{ metricsmith.month_start('activity.metric_date') }} in (select month_start from refresh_months)
    {%- endif %}

),

-- the part of each ISO week that lies inside the month
week_parts as (

    select
        month_start,
        week_start,
        cast(count(*) as {{ dbt.type_int() }}) as days_in_month,
        cast(sum(total_events) as {{ dbt.type_bigint() }}) as total_events,
        cast(sum(users_first_in_week_month) as {{ dbt.type_bigint() }}) as active_users,
        cast(sum(revenue_cents) as {{ metricsmith.type_cents() }}) as revenue_cents
    from activity
    group by month_start, week_start

),

breakdowns as (

    select
        month_start,
        {{ metricsmith.json_object_array([
            ('week_start', 'week_start'),
            ('days_in_month', 'days_in_month'),
            ('total_events', 'total_events'),
            ('active_users', 'active_users'),
            ('revenue_cents', 'revenue_cents'),
        ], 'week_start') }} as weekly_breakdown
    from week_parts
    group by month_start

),

measures as (

    select
        month_start,
        {{ metricsmith.month_end('month_start') }} as month_end,
        cast(count(*) as {{ dbt.type_int() }}) as days_with_data,
        cast(sum(total_events) as {{ dbt.type_bigint() }}) as total_events,
        cast(sum(users_first_in_month) as {{ dbt.type_bigint() }}) as active_users,
        cast(sum(new_users) as {{ dbt.type_bigint() }}) as new_users,
        cast(sum(organizations_first_in_month) as {{ dbt.type_bigint() }}) as active_organizations,
        cast(sum(sessions_first_in_month) as {{ dbt.type_bigint() }}) as sessions,
        cast(sum(signups) as {{ dbt.type_bigint() }}) as signups,
        cast(sum(purchases) as {{ dbt.type_bigint() }}) as purchases,
        cast(sum(revenue_cents) as {{ metricsmith.type_cents() }}) as revenue_cents,
        {{ metricsmith.average('total_events') }} as avg_daily_events,
        {{ metricsmith.average('active_users') }} as avg_daily_active_users,
        {{ metricsmith.average('revenue_cents') }} as avg_daily_revenue_cents
    from activity
    group by month_start

),

recomputed as (

    select measures.*, breakdowns.weekly_breakdown
    from measures
    inner join breakdowns on breakdowns.month_start = measures.month_start

),

current_months as (

    select * from recomputed
    {%- if is_incremental() %}
    union all
    select
        month_start, month_end, days_with_data, {{ measure_columns | join(', ') }},
        avg_daily_events, avg_daily_active_users, avg_daily_revenue_cents, weekly_breakdown
    from {{ this }}
    where month_start in (select month_start from growth_months)
    {%- endif %}

),

comparable_months as (

    select month_start, total_events, active_users, new_users, revenue_cents from recomputed
    {%- if is_incremental() %}
    union all
    select month_start, total_events, active_users, new_users, revenue_cents
    from {{ this }}
    where month_start not in (select month_start from refresh_months)
    {%- endif %}

),

final as (

    select
        cur.month_start,
        cur.month_end,
        cur.days_with_data,
        cur.days_with_data = {{ dbt.datediff('cur.month_start', 'cur.month_end', 'day') }} + 1 as is_complete,
        {%- for column in measure_columns %}
        cur.{{ column }},
        {%- endfor %}
        cur.avg_daily_events,
        cur.avg_daily_active_users,
        cur.avg_daily_revenue_cents,
        {%- for column in ['total_events', 'active_users', 'new_users', 'revenue_cents'] %}
        {{ metricsmith.growth_pct('cur.' ~ column, 'prev_month.' ~ column) }} as {{ column }}_mom_pct,
        {%- endfor %}
        {%- for column in ['total_events', 'active_users', 'new_users', 'revenue_cents'] %}
        {{ metricsmith.growth_pct('cur.' ~ column, 'prev_year.' ~ column) }} as {{ column }}_yoy_pct,
        {%- endfor %}
        cur.weekly_breakdown
    from current_months as cur
    left join comparable_months as prev_month
        on prev_month.month_start = {{ metricsmith.add_months('cur.month_start', -1) }}
    left join comparable_months as prev_year
        on prev_year.month_start = {{ metricsmith.add_months('cur.month_start', -12) }}

)

select * from final
