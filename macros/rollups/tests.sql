{#- Generic data tests for the rollup invariants (used in models/marts/_marts__models.yml). -#}

{#- the spine has one row per day from the first to the last day: no gaps -#}
{% test spine_has_no_gaps(model, date_column) %}

with days as (
    select {{ date_column }} as d from {{ model }}
),

bounds as (
    select min(d) as first_day, max(d) as last_day, count(*) as n from days
)

select *
from bounds
where n > 0 and n <> {{ dbt.datediff('first_day', 'last_day', 'day') }} + 1

{% endtest %}


{#- a period's (week's, month's, quarter's) additive measures equal the sum of its days,
    days_with_data the number of its days, and each distinct count lies between the largest day
    and the sum -#}
{% test rollup_matches_days(model, period, period_column) %}

with days as (
    select
        {{ metricsmith.period_start(metricsmith.grain(period), 'metric_date') }} as period_start,
        *
    from {{ ref('daily_metrics') }}
),

summed as (
    select
        period_start,
        count(*) as days_with_data,
        sum(total_events) as total_events,
        sum(new_users) as new_users,
        sum(signups) as signups,
        sum(purchases) as purchases,
        sum(revenue_cents) as revenue_cents,
        max(active_users) as max_active_users,
        sum(active_users) as sum_active_users,
        max(sessions) as max_sessions,
        sum(sessions) as sum_sessions,
        max(active_organizations) as max_organizations,
        sum(active_organizations) as sum_organizations
    from days
    group by period_start
)

select coalesce(p.{{ period_column }}, s.period_start) as period_start
from {{ model }} as p
full outer join summed as s on s.period_start = p.{{ period_column }}
where p.{{ period_column }} is null
   or s.period_start is null
   or p.days_with_data <> s.days_with_data
   or p.total_events <> s.total_events
   or p.new_users <> s.new_users
   or p.signups <> s.signups
   or p.purchases <> s.purchases
   or p.revenue_cents <> s.revenue_cents
   or p.active_users not between s.max_active_users and s.sum_active_users
   or p.sessions not between s.max_sessions and s.sum_sessions
   or p.active_organizations not between s.max_organizations and s.sum_organizations

{% endtest %}


{#- the breakdown of a period (the weeks of a month, the months of a quarter) adds up to the
    period, and every part starts on a period start of the breakdown grain -#}
{% test breakdown_matches_period(model, period) %}
    {{ return(adapter.dispatch('test_breakdown_matches_period', 'metricsmith')(model, period)) }}
{% endtest %}

{% macro default__test_breakdown_matches_period(model, period) %}
{%- set g = metricsmith.grain(period) -%}
{%- set part = metricsmith.grain(g.breakdown) -%}
{%- set part_start = "cast(part ->> '" ~ part.start ~ "' as date)" %}

with parts as (
    select
        m.{{ g.start }} as period_start,
        sum(cast(part ->> 'days_in_{{ g.name }}' as {{ dbt.type_bigint() }})) as days_with_data,
        sum(cast(part ->> 'total_events' as {{ dbt.type_bigint() }})) as total_events,
        sum(cast(part ->> 'revenue_cents' as {{ metricsmith.type_cents() }})) as revenue_cents,
        max(cast(part ->> 'active_users' as {{ dbt.type_bigint() }})) as max_part_users,
        sum(cast(part ->> 'active_users' as {{ dbt.type_bigint() }})) as sum_part_users,
        bool_and({{ part_start }} = {{ metricsmith.period_start(part, part_start) }}) as parts_are_aligned
    from {{ model }} as m
    cross join lateral jsonb_array_elements(m.{{ part.adjective }}_breakdown) as part
    group by m.{{ g.start }}
)

select m.{{ g.start }}
from {{ model }} as m
left join parts as p on p.period_start = m.{{ g.start }}
where p.period_start is null
   or p.days_with_data <> m.days_with_data
   or p.total_events <> m.total_events
   or p.revenue_cents <> m.revenue_cents
   or m.active_users not between p.max_part_users and p.sum_part_users
   or not p.parts_are_aligned

{% endmacro %}
