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
    (new_users of each day), int_changed_days and stg_events.

    Growth is like-for-like (docs/rollups.md "Like-for-like growth"): a period's days are
    numbered by their offset in the period; a comparison uses the offsets both periods have on
    the spine (the whole periods when both are complete, except comparisons of a month with the
    month a year earlier, which align by day of month and so leave 29 February out). Each
    comparison gets <cmp>_basis_days and <cmp>_basis ('full', 'to_date', 'partial_baseline',
    'none'). Distinct counts over the aligned days are sums of the "first in <grain>" counts
    over a prefix of the period's spine days (exact); only the current period of a
    'partial_baseline' comparison (its aligned days are a suffix) counts its users from stg_events.
-#}
{% macro period_metrics(grain_name, activity, daily, changed_days, events) -%}
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
    {%- set activity_sql %}

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
    {%- endset %}
    {{ metricsmith.computed_once(activity_sql) }}

),

{%- if part %}

-- the part of each {{ part.name }} that lies inside the {{ g.name }}
parts as (

    select
        period_start,
        part_start,
        cast(count(*) as {{ dbt.type_int() }}) as days_in_period,
        count(*) = {{ dbt.datediff('greatest(part_start, period_start)',
            'least(' ~ metricsmith.period_end(part, 'part_start') ~ ', ' ~ metricsmith.period_end(g, 'period_start') ~ ')', 'day') }} + 1
            as is_complete,
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
            ('is_complete', 'is_complete'),
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
    {%- set current_periods_sql %}

    select {{ stored | join(', ') }} from recomputed
    {%- if is_incremental() %}
    union all
    select {{ stored | join(', ') }}
    from {{ this }}
    where {{ g.start }} in (select period_start from growth_periods)
    {%- endif %}
    {%- endset %}
    {{ metricsmith.computed_once(current_periods_sql) }}

),

spine as (

    select min(metric_date) as first_day, max(metric_date) as last_day
    from {{ daily }}

),

-- every spine day's values that a growth comparison sums over its aligned days
day_values as (
    {%- set day_values_sql %}

    select
        day_activity.metric_date,
        day_activity.total_events,
        day_activity.users_first_in_{{ g.name }} as users_first,
        day_daily.new_users,
        day_activity.revenue_cents
    from {{ activity }} as day_activity
    inner join {{ daily }} as day_daily on day_daily.metric_date = day_activity.metric_date
    {%- endset %}
    {{ metricsmith.computed_once(day_values_sql) }}

),
{%- for suffix, spec in compare.items() %}
{%- set by_day_of_month = g.unit == 'month' and (g.get('count', 1) | int) == 1
    and spec.get('months') is not none and (spec.months | int) % 12 == 0 %}

-- {{ suffix }}: each period, its baseline period and the spine
{{ suffix }}_periods as (

    select
        cur.{{ g.start }} as period_start,
        cur.{{ g.end }} as period_end,
        {{ metricsmith.comparison_shift(spec, 'cur.' ~ g.start, -1) }} as prev_start,
        {{ metricsmith.period_end(g, metricsmith.comparison_shift(spec, 'cur.' ~ g.start, -1)) }} as prev_end,
        spine.first_day,
        spine.last_day
    from current_periods as cur
    cross join spine

),

-- {{ suffix }}: the basis and the aligned days of both periods (macro like_for_like_ranges)
{{ suffix }}_ranges as (
    {%- set ranges_sql %}

    {{ metricsmith.like_for_like_ranges(suffix ~ '_periods', by_day_of_month) }}
    {%- endset %}
    {{ metricsmith.computed_once(ranges_sql) }}

),

{%- for side in ['cur', 'prev'] %}

{{ suffix }}_{{ side }}_values as (

    select
        r.period_start,
        sum(d.total_events) as total_events,
        sum(d.users_first) as active_users,
        sum(d.new_users) as new_users,
        sum(d.revenue_cents) as revenue_cents
    from {{ suffix }}_ranges as r
    inner join day_values as d on d.metric_date between r.{{ side }}_lo and r.{{ side }}_hi
    where r.basis <> 'none'
    group by r.period_start

),
{%- endfor %}

-- {{ suffix }}: distinct users over aligned days that are not a prefix of the period's
-- spine days (the current period of a partial baseline) are counted from the events
{{ suffix }}_suffix_users as (

    select
        r.period_start,
        count(distinct e.user_id) as active_users
    from {{ suffix }}_ranges as r
    inner join {{ events }} as e
        on e.event_date between r.cur_lo and r.cur_hi
        and e.occurred_at >= {{ dbt.dateadd('day', -2, 'r.cur_lo') }}
        and e.occurred_at < {{ dbt.dateadd('day', 3, 'r.cur_hi') }}
    where r.basis <> 'none' and r.cur_lo > r.cur_from
    group by r.period_start

),
{%- endfor %}

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
        {%- for column in growth_measures %}
        {%- set current_value = ('coalesce(' ~ suffix ~ '_su.active_users, ' ~ suffix ~ '_cv.active_users)')
            if column == 'active_users' else suffix ~ '_cv.' ~ column %}
        {{ metricsmith.growth_pct(current_value, suffix ~ '_pv.' ~ column) }} as {{ column }}_{{ suffix }}_pct,
        {%- endfor %}
        cast({{ suffix }}_r.basis_days as {{ dbt.type_int() }}) as {{ suffix }}_basis_days,
        cast({{ suffix }}_r.basis as {{ dbt.type_string() }}) as {{ suffix }}_basis{{ ',' if part or not loop.last }}
        {%- endfor %}
        {%- if part %}
        cur.{{ part.adjective }}_breakdown
        {%- endif %}
    from current_periods as cur
    {%- for suffix, spec in compare.items() %}
    left join {{ suffix }}_ranges as {{ suffix }}_r on {{ suffix }}_r.period_start = cur.{{ g.start }}
    left join {{ suffix }}_cur_values as {{ suffix }}_cv on {{ suffix }}_cv.period_start = cur.{{ g.start }}
    left join {{ suffix }}_prev_values as {{ suffix }}_pv on {{ suffix }}_pv.period_start = cur.{{ g.start }}
    left join {{ suffix }}_suffix_users as {{ suffix }}_su on {{ suffix }}_su.period_start = cur.{{ g.start }}
    {%- endfor %}

)

select * from final
{%- endmacro %}
