{#-
    Per-day counts of distinct keys (users, organizations, sessions) and of keys whose
    first activity in the day's ISO week / month / week-within-month falls on that day.
    Summing the "first in week" counts over a week's days gives the exact distinct count
    for the week, and likewise for months and the week parts of a month — so weekly and
    monthly distinct counts become sums over days, with no re-scan of events.

    Works on `events` (island_id, event_date, <key>) where each island covers whole ISO weeks
    and months around the days it outputs. One sort per key: lag() finds the previous active
    day of the same key, then rows collapse to (day, previous day) pairs before the calendar
    arithmetic.
-#}
{% macro first_activity_counts(events_cte, key, prefix, with_week_month=false, dedupe_first=false) -%}
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
            lag(event_date) over (
                partition by island_id, {{ metricsmith.id_sort_key(key) }}
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
            marks,
            {{ metricsmith.week_start('event_date') }} as week_start,
            {{ metricsmith.month_start('event_date') }} as month_start
        from {{ prefix }}_pairs

    ),

    {{ prefix }}_counts as (

        select
            island_id,
            event_date,
            sum(case when previous_date is null or previous_date < event_date then marks else 0 end) as active,
            sum(case when previous_date is null or previous_date < week_start then marks else 0 end) as first_in_week,
            sum(case when previous_date is null or previous_date < month_start then marks else 0 end) as first_in_month
            {%- if with_week_month %},
            sum(case when previous_date is null
                       or previous_date < week_start
                       or previous_date < month_start then marks else 0 end) as first_in_week_month
            {%- endif %}
        from {{ prefix }}_calendar
        group by island_id, event_date

    )
{%- endmacro %}
