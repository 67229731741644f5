{#-
    The per-key day-activity models (int_daily_user_activity, int_daily_organization_activity,
    int_daily_session_activity) are one macro: each model is one line naming its key, the
    prefix of its "first in" columns and the name of its distinct-count column. One row per
    spine day: the distinct keys active that day and, per first-activity window (one per
    declared grain, see first_activity_windows), the keys whose first activity in the day's
    period falls on that day; with day_totals, the day's event totals too. An incremental run
    recomputes the islands (whole months or quarters) around the changed days.

    Speed (bench/README.md "Rollups"): the statement runs with rollup_parallel_tuning (parallel
    scan and sort, no JIT) and reads stg_events once per consumer (`events` is inlined, not
    materialized, so each read is a parallel scan).
-#}
{% macro day_activity(key, prefix, active_column, changed_days, events_relation, day_totals=false,
                      with_breakdowns=false, dedupe_first=false) -%}
{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key='metric_date',
        on_schema_change='sync_all_columns',
        indexes=[{'columns': ['metric_date'], 'unique': True}],
        pre_hook=[metricsmith.rollup_session_tuning(), metricsmith.rollup_parallel_tuning()],
    )
}}
{%- set islands = metricsmith.rollup_islands(changed_days) %}
{%- set columns = ['event_type', key, 'revenue_cents'] if day_totals else [key] %}

with

{{ metricsmith.island_ctes(islands, events_relation, columns) }},

{%- if day_totals %}

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

{%- endif %}

{{ metricsmith.first_activity_counts('events', key, prefix, with_breakdowns=with_breakdowns,
                                      dedupe_first=dedupe_first) }},

final as (

    select
        spine_days.metric_date,
        {%- if day_totals %}
        cast(coalesce(t.total_events, 0) as {{ dbt.type_bigint() }}) as total_events,
        cast(coalesce(t.signups, 0) as {{ dbt.type_bigint() }}) as signups,
        cast(coalesce(t.purchases, 0) as {{ dbt.type_bigint() }}) as purchases,
        cast(coalesce(t.revenue_cents, 0) as {{ metricsmith.type_cents() }}) as revenue_cents,
        {%- endif %}
        cast(coalesce(c.active, 0) as {{ dbt.type_bigint() }}) as {{ active_column }},
        {{- metricsmith.first_activity_columns('c', prefix, with_breakdowns=with_breakdowns) }}
    from spine_days
    {%- if day_totals %}
    left join day_totals as t
        on spine_days.island_id = t.island_id and spine_days.metric_date = t.event_date
    {%- endif %}
    left join {{ prefix }}_counts as c
        on spine_days.island_id = c.island_id and spine_days.metric_date = c.event_date

)

select * from final
{%- endmacro %}


{#- per-transaction planner settings for the heavy rollup statements (a pre_hook after
    rollup_session_tuning): parallel workers (up to the server's max_parallel_workers_per_gather)
    for the scans and sorts of ~5 M events whatever the row estimates of stg_events' filter say,
    and no JIT (its compile time is seconds against a sub-second gain for these plans) -#}
{% macro rollup_parallel_tuning() -%}
    {{ return(adapter.dispatch('rollup_parallel_tuning', 'metricsmith')()) }}
{%- endmacro %}

{% macro postgres__rollup_parallel_tuning() -%}
    select
        set_config('jit', 'off', true),
        set_config('parallel_setup_cost', '0', true),
        set_config('parallel_tuple_cost', '0', true)
{%- endmacro %}

{% macro default__rollup_parallel_tuning() -%}
    select 1
{%- endmacro %}


{#- the keyword that lets Postgres inline a CTE read more than once (each read then plans its
    own parallel scan); empty elsewhere -#}
{% macro cte_inline() -%}
    {{ return(adapter.dispatch('cte_inline', 'metricsmith')()) }}
{%- endmacro %}

{% macro default__cte_inline() -%}
{%- endmacro %}

{% macro postgres__cte_inline() -%}
    not materialized
{%- endmacro %}
