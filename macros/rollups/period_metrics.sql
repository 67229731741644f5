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

-- every spine day's activity with its new users and periods: what the period's measures sum
-- and what a growth comparison sums over its aligned days (all days: a baseline may lie outside
-- the refreshed periods)
day_values as (
    {%- set day_values_sql %}

    select
        day_activity.*,
        day_daily.new_users,
        {%- if part %}
        {{ metricsmith.period_start(part, 'day_activity.metric_date') }} as part_start,
        {%- endif %}
        {{ metricsmith.period_start(g, 'day_activity.metric_date') }} as period_start
    from {{ activity }} as day_activity
    inner join {{ daily }} as day_daily on day_daily.metric_date = day_activity.metric_date
    {%- endset %}
    {{ metricsmith.computed_once(day_values_sql) }}

),

-- the days of the periods recomputed
activity as (

    select * from day_values
    {%- if is_incremental() %}
    where metric_date >= (select min(period_start) from refresh_periods)
      and period_start in (select period_start from refresh_periods)
    {%- endif %}

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

-- the spine's first and last day (day_values has every spine day)
spine as (

    select min(metric_date) as first_day, max(metric_date) as last_day
    from day_values

),

{%- if compare %}
{%- for suffix, spec in compare.items() %}

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
{%- endfor %}

-- every comparison's basis and aligned days (macro like_for_like_ranges): one row per period
-- and comparison, so that each step below is one join for all the comparisons of the grain
comparison_ranges as (
    {%- set ranges_sql %}
    {%- for suffix, spec in compare.items() %}
    {%- set by_day_of_month = g.unit == 'month' and (g.get('count', 1) | int) == 1
        and spec.get('months') is not none and (spec.months | int) % 12 == 0 %}

    select '{{ suffix }}' as comparison, {{ suffix }}_ranges.*
    from (
        {{ metricsmith.like_for_like_ranges(suffix ~ '_periods', by_day_of_month) }}
    ) as {{ suffix }}_ranges
    {%- if not loop.last %}
    union all
    {%- endif %}
    {%- endfor %}
    {%- endset %}
    {{ metricsmith.computed_once(ranges_sql) }}

),

-- each comparison's basis, one row per period
comparison_bases as (

    select
        period_start,
        {%- for suffix in compare %}
        max(case when comparison = '{{ suffix }}' then basis end) as {{ suffix }}_basis,
        max(case when comparison = '{{ suffix }}' then basis_days end) as {{ suffix }}_basis_days{{ ',' if not loop.last }}
        {%- endfor %}
    from comparison_ranges
    group by period_start

),

-- the aligned days of both periods of each comparison
aligned_ranges as (

    select comparison, 'cur' as side, period_start, cur_lo as lo, cur_hi as hi
    from comparison_ranges
    where basis <> 'none'
    union all
    select comparison, 'prev' as side, period_start, prev_lo as lo, prev_hi as hi
    from comparison_ranges
    where basis <> 'none'

),

-- the day values summed over each aligned range: <comparison>_<side>_<measure>
aligned_values as (

    select
        r.period_start,
        {%- for suffix in compare %}
        {%- set outer_loop = loop %}
        {%- for side in ['cur', 'prev'] %}
        {%- set side_loop = loop %}
        {%- for column in growth_measures %}
        sum(case when r.comparison = '{{ suffix }}' and r.side = '{{ side }}'
            then d.{{ ('users_first_in_' ~ g.name) if column == 'active_users' else column }} end)
            as {{ suffix }}_{{ side }}_{{ column }}{{ ',' if not (outer_loop.last and side_loop.last and loop.last) }}
        {%- endfor %}
        {%- endfor %}
        {%- endfor %}
    from aligned_ranges as r
    inner join day_values as d on d.metric_date between r.lo and r.hi
    group by r.period_start

),

-- distinct users over aligned days that are not a prefix of the period's spine days (the
-- current period of a partial baseline) are counted from the events
suffix_users as (

    select
        r.comparison,
        r.period_start,
        count(distinct e.user_id) as active_users
    from comparison_ranges as r
    inner join {{ events }} as e
        on e.event_date between r.cur_lo and r.cur_hi
        and e.occurred_at >= {{ dbt.dateadd('day', -2, 'r.cur_lo') }}
        and e.occurred_at < {{ dbt.dateadd('day', 3, 'r.cur_hi') }}
    where r.basis <> 'none' and r.cur_lo > r.cur_from
    group by r.comparison, r.period_start

),

aligned_users as (

    select
        period_start,
        {%- for suffix in compare %}
        max(case when comparison = '{{ suffix }}' then active_users end) as {{ suffix }}_active_users{{ ',' if not loop.last }}
        {%- endfor %}
    from suffix_users
    group by period_start

),
{%- endif %}

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
        {%- set current_value = ('coalesce(au.' ~ suffix ~ '_active_users, av.' ~ suffix ~ '_cur_active_users)')
            if column == 'active_users' else 'av.' ~ suffix ~ '_cur_' ~ column %}
        {{ metricsmith.growth_pct(current_value, 'av.' ~ suffix ~ '_prev_' ~ column) }} as {{ column }}_{{ suffix }}_pct,
        {%- endfor %}
        cast(cb.{{ suffix }}_basis_days as {{ dbt.type_int() }}) as {{ suffix }}_basis_days,
        cast(cb.{{ suffix }}_basis as {{ dbt.type_string() }}) as {{ suffix }}_basis{{ ',' if part or not loop.last }}
        {%- endfor %}
        {%- if part %}
        cur.{{ part.adjective }}_breakdown
        {%- endif %}
    from current_periods as cur
    {%- if compare %}
    left join comparison_bases as cb on cb.period_start = cur.{{ g.start }}
    left join aligned_values as av on av.period_start = cur.{{ g.start }}
    left join aligned_users as au on au.period_start = cur.{{ g.start }}
    {%- endif %}

)

select * from final
{%- endmacro %}
