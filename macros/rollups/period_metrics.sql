{#-
    The period marts (weekly_metrics, monthly_metrics, quarterly_metrics, ...): one macro for
    every grain of vars.grains longer than a day. One row per period holding a spine day: the
    additive measures summed over its days, the distinct counts as sums of the days' "first in
    <grain>" counts (exact, no re-scan of events), the daily averages, one growth column per
    growth measure and comparison of the grain (compare: {suffix: {months|weeks: N}}), and,
    when the grain declares a breakdown, a jsonb array of the finer periods inside the period.

    Incremental: the periods of int_changed_days are recomputed whole; the periods whose growth
    compares with one of them get their growth columns recomputed from the stored rows.
    The model passes the relations it reads (its refs): int_daily_activity, daily_metrics
    (new_users of each day) and int_changed_days.
-#}
{% macro period_metrics(grain_name, activity, daily, changed_days) -%}
{%- set g = metricsmith.grain(grain_name) -%}
{%- if g.unit == 'day' -%}
    {{ exceptions.raise_compiler_error("period_metrics builds the marts of grains longer than a day, not " ~ g.name) }}
{%- endif -%}
{{ config(unique_key=g.start, indexes=[{'columns': [g.start], 'unique': True}]) }}
{%- set measures = ['total_events', 'active_users', 'new_users', 'active_organizations', 'sessions',
                    'signups', 'purchases', 'revenue_cents'] -%}
{%- set growth_measures = ['total_events', 'active_users', 'new_users', 'revenue_cents'] -%}
{%- set compare = g.get('compare') or {} -%}
{%- set part = metricsmith.grain(g.breakdown) if g.get('breakdown') else none -%}
{%- set stored = [g.start, g.end, 'days_with_data'] + measures
    + ['avg_daily_events', 'avg_daily_active_users', 'avg_daily_revenue_cents']
    + ([part.adjective ~ '_breakdown'] if part else []) %}

with

{%- if is_incremental() %}

refresh_periods as (

    select distinct {{ metricsmith.period_start(g, 'metric_date') }} as period_start
    from {{ changed_days }}

),

-- periods whose growth compares with a refreshed period
growth_periods as (

    {%- for suffix, spec in compare.items() %}
    select {{ metricsmith.comparison_shift(spec, 'period_start', 1) }} as period_start from refresh_periods
    {{ 'union' if not loop.last else 'except' }}
    {%- else %}
    select period_start from refresh_periods where 1 = 0
    except
    {%- endfor %}
    select period_start from refresh_periods

),

{%- endif %}

activity as (

    select
        activity.*,
        daily.new_users,
        {%- if part %}
        {{ metricsmith.period_start(part, 'activity.metric_date') }} as part_start,
        {%- endif %}
        {{ metricsmith.period_start(g, 'activity.metric_date') }} as period_start
    from {{ activity }} as activity
    inner join {{ daily }} as daily on daily.metric_date = activity.metric_date
    {%- if is_incremental() %}
    where activity.metric_date >= (select min(period_start) from refresh_periods)
      and {{ metricsmith.period_start(g, 'activity.metric_date') }} in (select period_start from refresh_periods)
    {%- endif %}

),

{%- if part %}

-- the part of each {{ part.name }} that lies inside the {{ g.name }}
parts as (

    select
        period_start,
        part_start,
        cast(count(*) as {{ dbt.type_int() }}) as days_in_period,
        cast(sum(total_events) as {{ dbt.type_bigint() }}) as total_events,
        cast(sum(users_first_in_{{ metricsmith.breakdown_window(g) }}) as {{ dbt.type_bigint() }}) as active_users,
        cast(sum(revenue_cents) as {{ metricsmith.type_cents() }}) as revenue_cents
    from activity
    group by period_start, part_start

),

breakdowns as (

    select
        period_start,
        {{ metricsmith.json_object_array([
            (part.start, 'part_start'),
            ('days_in_' ~ g.name, 'days_in_period'),
            ('total_events', 'total_events'),
            ('active_users', 'active_users'),
            ('revenue_cents', 'revenue_cents'),
        ], 'part_start') }} as breakdown
    from parts
    group by period_start

),

{%- endif %}

measures as (

    select
        period_start as {{ g.start }},
        {{ metricsmith.period_end(g, 'period_start') }} as {{ g.end }},
        cast(count(*) as {{ dbt.type_int() }}) as days_with_data,
        cast(sum(total_events) as {{ dbt.type_bigint() }}) as total_events,
        cast(sum(users_first_in_{{ g.name }}) as {{ dbt.type_bigint() }}) as active_users,
        cast(sum(new_users) as {{ dbt.type_bigint() }}) as new_users,
        cast(sum(organizations_first_in_{{ g.name }}) as {{ dbt.type_bigint() }}) as active_organizations,
        cast(sum(sessions_first_in_{{ g.name }}) as {{ dbt.type_bigint() }}) as sessions,
        cast(sum(signups) as {{ dbt.type_bigint() }}) as signups,
        cast(sum(purchases) as {{ dbt.type_bigint() }}) as purchases,
        cast(sum(revenue_cents) as {{ metricsmith.type_cents() }}) as revenue_cents,
        {{ metricsmith.average('total_events') }} as avg_daily_events,
        {{ metricsmith.average('active_users') }} as avg_daily_active_users,
        {{ metricsmith.average('revenue_cents') }} as avg_daily_revenue_cents
    from activity
    group by period_start

),

recomputed as (

    {%- if part %}
    select measures.*, breakdowns.breakdown as {{ part.adjective }}_breakdown
    from measures
    inner join breakdowns on breakdowns.period_start = measures.{{ g.start }}
    {%- else %}
    select * from measures
    {%- endif %}

),

current_periods as (

    select {{ stored | join(', ') }} from recomputed
    {%- if is_incremental() %}
    union all
    select {{ stored | join(', ') }}
    from {{ this }}
    where {{ g.start }} in (select period_start from growth_periods)
    {%- endif %}

),

comparable_periods as (

    select {{ g.start }}, {{ growth_measures | join(', ') }} from recomputed
    {%- if is_incremental() %}
    union all
    select {{ g.start }}, {{ growth_measures | join(', ') }}
    from {{ this }}
    where {{ g.start }} not in (select period_start from refresh_periods)
    {%- endif %}

),

final as (

    select
        cur.{{ g.start }},
        cur.{{ g.end }},
        cur.days_with_data,
        cur.days_with_data = {{ dbt.datediff('cur.' ~ g.start, 'cur.' ~ g.end, 'day') }} + 1 as is_complete,
        {%- for column in measures %}
        cur.{{ column }},
        {%- endfor %}
        cur.avg_daily_events,
        cur.avg_daily_active_users,
        cur.avg_daily_revenue_cents{{ ',' if compare or part }}
        {%- for suffix, spec in compare.items() %}
        {%- set last_comparison = loop.last %}
        {%- for column in growth_measures %}
        {{ metricsmith.growth_pct('cur.' ~ column, 'prev_' ~ suffix ~ '.' ~ column) }}
            as {{ column }}_{{ suffix }}_pct{{ ',' if part or not (last_comparison and loop.last) }}
        {%- endfor %}
        {%- endfor %}
        {%- if part %}
        cur.{{ part.adjective }}_breakdown
        {%- endif %}
    from current_periods as cur
    {%- for suffix, spec in compare.items() %}
    left join comparable_periods as prev_{{ suffix }}
        on prev_{{ suffix }}.{{ g.start }} = {{ metricsmith.comparison_shift(spec, 'cur.' ~ g.start, -1) }}
    {%- endfor %}

)

select * from final
{%- endmacro %}
