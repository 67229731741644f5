{#-
    Per-day counts of distinct keys (users, organizations, sessions) and of keys whose first
    activity in each first-activity window of the day (its ISO week, month, quarter, ... : one
    per declared grain, see first_activity_windows; and the week part inside the month) falls on
    that day. Summing a grain's "first in" counts over a period's days gives the exact distinct
    count for the period — so every period's distinct counts become sums over days, with no
    re-scan of events.

    Works on `events` (island_id, event_date, <key>) where each island covers whole periods of
    every grain around the days it outputs. One sort per key: lag() finds the previous active
    day of the same key, then rows collapse to (day, previous day) pairs before the calendar
    arithmetic. The sort is the cost: see bench/README.md "Rollups" for what was measured.
-#}
{% macro first_activity_counts(events_cte, key, prefix, with_breakdowns=false, dedupe_first=false) -%}
    {%- set windows = metricsmith.first_activity_windows(with_breakdowns) %}
    {%- if dedupe_first %}
    {#- worth it when a key has many events per day (organizations): the sort gets much smaller -#}
    {{ prefix }}_days as (

        select distinct island_id, event_date, {{ key }}
        from {{ events_cte }}
        where {{ key }} is not null

    ),
    {%- endif %}

    {{ prefix }}_marks as (

        select
            island_id,
            event_date,
            -- the key first: the sort then compares abbreviated keys of the text (a leading
            -- integer column would disable them)
            lag(event_date) over (
                partition by {{ metricsmith.id_sort_key(key) }}, island_id
                order by event_date
            ) as previous_date
        from {{ (prefix ~ '_days') if dedupe_first else events_cte }}
        where {{ key }} is not null

    ),

    {{ prefix }}_pairs as (

        select island_id, event_date, previous_date, count(*) as marks
        from {{ prefix }}_marks
        group by island_id, event_date, previous_date

    ),

    {{ prefix }}_calendar as (

        select
            island_id,
            event_date,
            previous_date,
            {%- for g in metricsmith.period_grains() %}
            {{ metricsmith.period_start(g, 'event_date') }} as {{ g.name }}_start,
            {%- endfor %}
            marks
        from {{ prefix }}_pairs

    ),

    {{ prefix }}_counts as (

        select
            island_id,
            event_date,
            {%- for w in windows %}
            sum(case when previous_date is null
                {%- for g in w.grains %}
                       or previous_date < {{ g.name }}_start
                {%- endfor %} then marks else 0 end) as first_in_{{ w.suffix }},
            {%- endfor %}
            sum(case when previous_date is null or previous_date < event_date then marks else 0 end) as active
        from {{ prefix }}_calendar
        group by island_id, event_date

    )
{%- endmacro %}


{#- the "first in" columns of a day-activity model: `<prefix>_first_in_<window>` from the
    `<counts_alias>.first_in_<window>` counts of first_activity_counts, as bigint (0 without any) -#}
{% macro first_activity_columns(counts_alias, prefix, with_breakdowns=false) -%}
    {%- for w in metricsmith.first_activity_windows(with_breakdowns) %}
        cast(coalesce({{ counts_alias }}.first_in_{{ w.suffix }}, 0) as {{ dbt.type_bigint() }})
            as {{ prefix }}_first_in_{{ w.suffix }}{{ "," if not loop.last }}
    {%- endfor %}
{%- endmacro %}


{#- the "first in" columns of a day-activity model as a select list, `<relation_alias>.<prefix>_first_in_<window>` -#}
{% macro first_activity_column_list(relation_alias, prefix, with_breakdowns=false) -%}
    {%- for w in metricsmith.first_activity_windows(with_breakdowns) %}
        {{ relation_alias }}.{{ prefix }}_first_in_{{ w.suffix }}{{ "," if not loop.last }}
    {%- endfor %}
{%- endmacro %}
