{#-
    CTEs shared by the per-key day-activity models: `islands` (what this run recomputes, see
    rollup_islands), `events` (island_id, event_date and the given columns of the valid events
    in each island's input range: whole periods of every grain; each island is one occurred_at
    range scan of `events_relation`, the model's ref('stg_events')) and `spine_days`
    (island_id, metric_date: the days each island outputs).
-#}
{% macro island_ctes(islands, events_relation, columns) -%}
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

    select occurred_at, event_date, {{ columns | join(', ') }}
    from {{ events_relation }}

),

-- each island reads the events of its input range (ranges of adjacent islands may touch);
-- inlined into each reader so that each read is its own (parallel) scan
events as {{ metricsmith.cte_inline() }} (

    {%- for i in islands %}
    select {{ loop.index }} as island_id, event_date, {{ columns | join(', ') }}
    from source_events
    where occurred_at >= cast('{{ i.from_ts }}' as {{ metricsmith.type_timestamptz() }})
      and occurred_at < cast('{{ i.to_ts }}' as {{ metricsmith.type_timestamptz() }})
    {{ 'union all' if not loop.last }}
    {%- else %}
    select 0 as island_id, event_date, {{ columns | join(', ') }}
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

)
{%- endmacro %}
