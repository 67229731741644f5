{#-
    Custom metrics (docs/custom_metrics.md). Every generated model (written by
    `metricsmith metrics compile` under METRICSMITH_HOME/generated/<database>/) is a thin call of
    `custom_metric(...)` that carries identifiers only: the metric id and version, the source,
    column names, grain, type. The expressions (validated and re-serialized by metricsmith with
    sqlglot) are read from metricsmith.custom_metric_models by (metric_id, version) when dbt runs
    the model, so no user-supplied text is ever part of a file that dbt renders.
    Output: period_start date, dimensions jsonb, value numeric, source_watermark timestamptz,
    computed_at timestamptz. Incremental (late data included) when the source has an arrival
    column: the periods touched by rows that arrived since the stored watermark (minus the
    rollups' safety lag) are recomputed whole; `--vars '{custom_metrics_backfill: {start: D, end: D}}'`
    adds the periods of that date range.
-#}

{#- the checked expressions of one metric version, by id (at parse time: placeholders) -#}
{% macro custom_metric_checked(metric_id, version) -%}
    {%- set placeholder = {'type': 'COUNT', 'expression': none, 'filter': none, 'percentile': none} -%}
    {%- if not execute -%}
        {{ return({'expression': none, 'filter': none, 'numerator': placeholder, 'denominator': placeholder}) }}
    {%- endif -%}
    {%- set rows = run_query(metricsmith.custom_metric_definition_query(metric_id | int, version | int)).rows -%}
    {%- if rows | length == 0 -%}
        {{ exceptions.raise_compiler_error("custom metric " ~ (metric_id | int) ~ " version " ~ (version | int)
            ~ " has no checked definition in metricsmith.custom_metric_models; run `metricsmith metrics compile`") }}
    {%- endif -%}
    {{ return(fromjson(rows[0][0])) }}
{%- endmacro %}

{#- the query of one checked definition (JSON text): PostgreSQL holds them; on Spark, the copy
    metricsmith writes before each run (metricsmith.spark.custom_metrics: the expressions rendered
    for Spark) -#}
{% macro custom_metric_definition_query(metric_id, version) -%}
    {{ return(adapter.dispatch('custom_metric_definition_query', 'metricsmith')(metric_id, version)) }}
{%- endmacro %}

{% macro default__custom_metric_definition_query(metric_id, version) -%}
    select definition::text from metricsmith.custom_metric_models
    where metric_id = {{ metric_id | int }} and version = {{ version | int }}
{%- endmacro %}

{% macro spark__custom_metric_definition_query(metric_id, version) -%}
    select definition from metricsmith.custom_metric_models
    where metric_id = {{ metric_id | int }} and version = {{ version | int }}
{%- endmacro %}


{% macro custom_metric_period(grain, column) -%}
    {{ return(adapter.dispatch('custom_metric_period', 'metricsmith')(grain, column)) }}
{%- endmacro %}

{% macro default__custom_metric_period(grain, column) -%}
    {%- if grain == 'day' -%} cast({{ column }} as date)
    {%- else -%} cast({{ dbt.date_trunc(grain, 'cast(' ~ column ~ ' as timestamp)') }} as date)
    {%- endif -%}
{%- endmacro %}


{% macro custom_metric_dimensions(dimensions) -%}
    {{ return(adapter.dispatch('custom_metric_dimensions', 'metricsmith')(dimensions)) }}
{%- endmacro %}

{% macro default__custom_metric_dimensions(dimensions) -%}
    {{ exceptions.raise_compiler_error("custom_metric_dimensions needs a JSON implementation for adapter " ~ adapter.type()) }}
{%- endmacro %}

{% macro postgres__custom_metric_dimensions(dimensions) -%}
    {%- if dimensions | length == 0 -%} '{}'::jsonb
    {%- else -%} jsonb_build_object(
        {%- for d in dimensions %}'{{ d }}', {{ adapter.quote(d) }}{{ ", " if not loop.last }}{% endfor -%})
    {%- endif -%}
{%- endmacro %}


{#- a JSON object (text) of the dimension values, nulls kept as JSON null like jsonb_build_object -#}
{% macro spark__custom_metric_dimensions(dimensions) -%}
    {%- if dimensions | length == 0 -%} '{}'
    {%- else -%} to_json(named_struct(
        {%- for d in dimensions %}'{{ d }}', {{ adapter.quote(d) }}{{ ", " if not loop.last }}{% endfor -%}
    ), map('ignoreNullFields', 'false'))
    {%- endif -%}
{%- endmacro %}


{#- the type of a dimensions column: jsonb on PostgreSQL, JSON text on Spark -#}
{% macro custom_metric_type_json() -%}
    {{ return(adapter.dispatch('custom_metric_type_json', 'metricsmith')()) }}
{%- endmacro %}

{% macro default__custom_metric_type_json() -%}
    jsonb
{%- endmacro %}

{% macro spark__custom_metric_type_json() -%}
    string
{%- endmacro %}


{#- the type of growth_pct in custom_metric_values: numeric on PostgreSQL (the growth_pct function's
    4 decimals), type_growth_pct on Spark -#}
{% macro custom_metric_type_growth() -%}
    {{ return(adapter.dispatch('custom_metric_type_growth', 'metricsmith')()) }}
{%- endmacro %}

{% macro default__custom_metric_type_growth() -%}
    numeric
{%- endmacro %}

{% macro spark__custom_metric_type_growth() -%}
    {{ metricsmith.type_growth_pct() }}
{%- endmacro %}


{#- the type of a value: PostgreSQL's unconstrained numeric; Spark's decimals hold 38 digits
    (its bare decimal is decimal(10, 0)) -#}
{% macro custom_metric_type_value() -%}
    {{ return(adapter.dispatch('custom_metric_type_value', 'metricsmith')()) }}
{%- endmacro %}

{% macro default__custom_metric_type_value() -%}
    numeric
{%- endmacro %}

{% macro spark__custom_metric_type_value() -%}
    decimal(38, 12)
{%- endmacro %}


{% macro custom_metric_percentile(p, expression) -%}
    {{ return(adapter.dispatch('custom_metric_percentile', 'metricsmith')(p, expression)) }}
{%- endmacro %}

{% macro default__custom_metric_percentile(p, expression) -%}
    {{ exceptions.raise_compiler_error("PERCENTILE has no implementation for adapter " ~ adapter.type()) }}
{%- endmacro %}

{% macro postgres__custom_metric_percentile(p, expression) -%}
    percentile_cont({{ p }}) within group (order by {{ expression }})
{%- endmacro %}

{% macro spark__custom_metric_percentile(p, expression) -%}
    percentile_cont({{ p }}) within group (order by {{ expression }})
{%- endmacro %}


{#- numerator / denominator, NULL when the denominator is 0. Spark divides in double: its decimal
    division of two 38-digit decimals keeps 6 decimals only -#}
{% macro custom_metric_ratio(numerator, denominator) -%}
    {{ return(adapter.dispatch('custom_metric_ratio', 'metricsmith')(numerator, denominator)) }}
{%- endmacro %}

{% macro default__custom_metric_ratio(numerator, denominator) -%}
    cast({{ numerator }} as numeric) / nullif(cast({{ denominator }} as numeric), 0)
{%- endmacro %}

{% macro spark__custom_metric_ratio(numerator, denominator) -%}
    cast(cast({{ numerator }} as double) / nullif(cast({{ denominator }} as double), 0)
        as {{ metricsmith.custom_metric_type_value() }})
{%- endmacro %}


{#- growth of a value against the previous one: the one definition (macro growth_pct). On Spark
    the values are decimal(38, 12), whose decimal division keeps 6 decimals, and growth_pct there
    is written for whole numbers: the same rule in double, rounded half away from zero to 4
    decimals -#}
{% macro custom_metric_growth_pct(current, previous) -%}
    {{ return(adapter.dispatch('custom_metric_growth_pct', 'metricsmith')(current, previous)) }}
{%- endmacro %}

{% macro default__custom_metric_growth_pct(current, previous) -%}
    {{ metricsmith.growth_pct(current, previous) }}
{%- endmacro %}

{% macro spark__custom_metric_growth_pct(current, previous) -%}
    cast(round(100 * (cast({{ current }} as double) - cast({{ previous }} as double))
        / nullif(cast({{ previous }} as double), 0), 4) as {{ metricsmith.type_growth_pct() }})
{%- endmacro %}


{#- the arrival time after which rows are read again by an incremental run: the stored
    watermark minus the rollups' safety lag (everything when the table is empty) -#}
{% macro custom_metric_received_after(lag_seconds) -%}
    {{ return(adapter.dispatch('custom_metric_received_after', 'metricsmith')(lag_seconds)) }}
{%- endmacro %}

{% macro default__custom_metric_received_after(lag_seconds) -%}
    coalesce(max(source_watermark), cast('-infinity' as timestamptz)) - interval '{{ lag_seconds | int }} seconds'
{%- endmacro %}

{% macro spark__custom_metric_received_after(lag_seconds) -%}
    coalesce({{ dbt.dateadd('second', -(lag_seconds | int), 'max(source_watermark)') }}, timestamp '0001-01-01 00:00:00')
{%- endmacro %}


{#- one aggregate; `filter` (RATIO parts) is applied with CASE so that it stays portable; a filtered
    SUM of no matching rows is 0 (like a filtered COUNT), not NULL -#}
{% macro custom_metric_aggregate(metric_type, expression=none, filter=none, percentile=none) -%}
    {%- if filter -%}
        {%- set expr = "case when " ~ filter ~ " then " ~ (expression or "1") ~ " end" -%}
    {%- else -%}
        {%- set expr = expression -%}
    {%- endif -%}
    {%- if metric_type == 'COUNT' -%} count({{ expr or '*' }})
    {%- elif metric_type == 'SUM' and filter -%} coalesce(sum({{ expr }}), 0)
    {%- elif metric_type == 'SUM' -%} sum({{ expr }})
    {%- elif metric_type == 'AVERAGE' -%} avg({{ expr }})
    {%- elif metric_type == 'DISTINCT_COUNT' -%} count(distinct {{ expr }})
    {%- elif metric_type == 'PERCENTILE' -%} {{ metricsmith.custom_metric_percentile(percentile, expr) }}
    {%- elif metric_type == 'MAX' -%} max({{ expr }})
    {%- elif metric_type == 'MIN' -%} min({{ expr }})
    {%- else -%} {{ exceptions.raise_compiler_error("unknown custom metric type " ~ metric_type) }}
    {%- endif -%}
{%- endmacro %}


{% macro custom_metric_value(metric_type, expression=none, percentile=none, numerator=none, denominator=none) -%}
    {%- if metric_type == 'RATIO' -%}
        {{ metricsmith.custom_metric_ratio(
            metricsmith.custom_metric_aggregate(numerator.type, numerator.expression, numerator.filter, numerator.percentile),
            metricsmith.custom_metric_aggregate(denominator.type, denominator.expression, denominator.filter, denominator.percentile)) }}
    {%- else -%}
        cast({{ metricsmith.custom_metric_aggregate(metric_type, expression, none, percentile) }} as {{ metricsmith.custom_metric_type_value() }})
    {%- endif -%}
{%- endmacro %}


{% macro custom_metric(metric_id, version, source, time_column, grain, metric_type, dimensions=[],
                       percentile=none, change_column=none) -%}
{%- set checked = metricsmith.custom_metric_checked(metric_id, version) -%}
{%- set expression = checked.expression -%}
{%- set filter = checked.filter -%}
{%- set numerator = checked.numerator -%}
{%- set denominator = checked.denominator -%}
{%- set period = metricsmith.custom_metric_period(grain, adapter.quote(time_column)) -%}
{%- set incremental = change_column is not none and is_incremental() -%}
{%- set backfill = var('custom_metrics_backfill', none) -%}
with
{%- if incremental %}

since as (
    select {{ metricsmith.custom_metric_received_after(var("rollups_safety_lag_seconds", 600)) }} as received_after
    from {{ this }}
),

touched as (
    select distinct {{ period }} as period_start
    from {{ source }}
    where {{ adapter.quote(change_column) }} > (select received_after from since)
    {%- if backfill %}
    union
    select distinct {{ period }}
    from {{ source }}
    where {{ adapter.quote(time_column) }} between cast('{{ backfill.start }}' as date) and cast('{{ backfill.end }}' as date)
    {%- endif %}
),
{%- endif %}

rows_in as (
    select *
    from {{ source }}
    where {{ filter if filter else "true" }}
    {%- if incremental %}
      and {{ adapter.quote(time_column) }} >= (select min(period_start) from touched)
      and {{ period }} in (select period_start from touched)
    {%- endif %}
)

select
    {{ period }} as period_start,
    {{ metricsmith.custom_metric_dimensions(dimensions) }} as dimensions,
    {{ metricsmith.custom_metric_value(metric_type, expression, percentile, numerator, denominator) }} as value,
    {%- if change_column %}
    max(max({{ adapter.quote(change_column) }})) over () as source_watermark,
    {%- else %}
    cast(null as {{ dbt.type_timestamp() }}) as source_watermark,
    {%- endif %}
    {{ dbt.current_timestamp() }} as computed_at
from rows_in
group by {{ period }}
{%- for d in dimensions %}, {{ adapter.quote(d) }}{% endfor %}
{%- endmacro %}


{#- analytics.custom_metric_values: all generated models (but those whose last run failed), with the previous
    period and growth (macro growth_pct: the marts' definition, 4 decimals), like for like (macro
    like_for_like_ranges, the marts' rule): the spine of a metric is its source's first to last day
    (time column, every row); a comparison where one period is partial on it compares the
    aggregate recomputed from the source over the aligned days of both periods, and says so in
    growth_basis / growth_basis_days. Each item: {slug, version, grain, relation (its ref), metric_id,
    source (ref), time_column, metric_type, dimensions, percentile}. -#}
{% macro custom_metric_values(all_inputs) -%}
{#- a model not built yet (e.g. a metric created after the last run, when only some metrics run) is left out -#}
{%- set inputs = [] -%}
{%- for item in all_inputs -%}
    {%- if not execute or load_relation(item.relation) is not none -%}{%- do inputs.append(item) -%}{%- endif -%}
{%- endfor -%}
{%- if inputs | length == 0 %}
select
    cast(null as {{ dbt.type_string() }}) as metric_slug,
    cast(null as {{ dbt.type_int() }}) as metric_version,
    cast(null as {{ dbt.type_string() }}) as grain,
    cast(null as date) as period_start,
    cast(null as {{ metricsmith.custom_metric_type_json() }}) as dimensions,
    cast(null as {{ metricsmith.custom_metric_type_value() }}) as value,
    cast(null as {{ metricsmith.custom_metric_type_value() }}) as previous_value,
    cast(null as {{ metricsmith.custom_metric_type_growth() }}) as growth_pct,
    cast(null as {{ metricsmith.type_timestamptz() }}) as computed_at,
    cast(null as {{ dbt.type_string() }}) as growth_basis,
    cast(null as {{ dbt.type_int() }}) as growth_basis_days
where false
{%- else %}
{#- one spine per source and time column -#}
{%- set spines = {} -%}
{%- for item in inputs -%}
    {%- set key = (item.source | string) ~ '.' ~ item.time_column -%}
    {%- if key not in spines -%}{%- do spines.update({key: 'spine_' ~ (spines | length)}) -%}{%- endif -%}
{%- endfor -%}
{%- set spined = [] -%}
{#- the inputs (by position) of grains longer than a day: a day is always complete, so only they
    recompute growth over aligned days -#}
{%- set longer = [] -%}
{%- for item in inputs -%}
    {%- if item.grain != 'day' -%}{%- do longer.append(loop.index) -%}{%- endif -%}
{%- endfor -%}
with
{%- for item in inputs %}
{%- set spine = spines[(item.source | string) ~ '.' ~ item.time_column] %}
{%- if spine not in spined %}
{%- do spined.append(spine) %}

{{ spine }} as (
    select
        min({{ metricsmith.custom_metric_period('day', adapter.quote(item.time_column)) }}) as first_day,
        max({{ metricsmith.custom_metric_period('day', adapter.quote(item.time_column)) }}) as last_day
    from {{ item.source }}
),
{%- endif %}

periods_{{ loop.index }} as (
    select
        cast('{{ item.slug }}' as {{ dbt.type_string() }}) as metric_slug,
        cast({{ item.version | int }} as {{ dbt.type_int() }}) as metric_version,
        p.period_start,
        {{ metricsmith.add_days('cast(' ~ dbt.dateadd(item.grain, 1, 'p.period_start') ~ ' as date)', -1) }} as period_end,
        cast({{ dbt.dateadd(item.grain, -1, 'p.period_start') }} as date) as prev_start,
        {{ metricsmith.add_days('p.period_start', -1) }} as prev_end,
        spine.first_day,
        spine.last_day
    from (select distinct period_start from {{ item.relation }}) as p
    cross join {{ spine }} as spine
),

ranges_{{ loop.index }} as (
    {{ metricsmith.like_for_like_ranges('periods_' ~ loop.index, false, ['metric_slug', 'metric_version']) }}
),
{%- if item.grain != 'day' %}
{#- a day is always complete: only longer grains recompute over aligned days. The range columns
    have names no source column has, so that the checked (unqualified) expressions resolve to the source -#}
{%- set checked = metricsmith.custom_metric_checked(item.metric_id, item.version) %}

aligned_{{ loop.index }} as (
    select
        sides.mm__slug as metric_slug,
        sides.mm__version as metric_version,
        sides.mm__period as period_start,
        sides.mm__side as side,
        {{ metricsmith.custom_metric_dimensions(item.dimensions) }} as dimensions,
        {{ metricsmith.custom_metric_value(item.metric_type, checked.expression, item.percentile,
                                           checked.numerator, checked.denominator) }} as value
    from (
        select metric_slug as mm__slug, metric_version as mm__version, period_start as mm__period,
               'cur' as mm__side, cur_lo as mm__lo, cur_hi as mm__hi
        from ranges_{{ loop.index }} where basis in ('to_date', 'partial_baseline')
        union all
        select metric_slug, metric_version, period_start, 'prev', prev_lo, prev_hi
        from ranges_{{ loop.index }} where basis in ('to_date', 'partial_baseline')
    ) as sides
    inner join {{ item.source }} as src
        on {{ metricsmith.custom_metric_period('day', 'src.' ~ adapter.quote(item.time_column)) }}
            between sides.mm__lo and sides.mm__hi
    where {{ checked.filter if checked.filter else "true" }}
    group by sides.mm__slug, sides.mm__version, sides.mm__period, sides.mm__side
    {%- for d in item.dimensions %}, {{ adapter.quote(d) }}{% endfor %}
),
{%- endif %}
{%- endfor %}

unioned as (
{%- for item in inputs %}
    select
        cast('{{ item.slug }}' as {{ dbt.type_string() }}) as metric_slug,
        cast({{ item.version | int }} as {{ dbt.type_int() }}) as metric_version,
        cast('{{ item.grain }}' as {{ dbt.type_string() }}) as grain,
        period_start,
        cast({{ dbt.dateadd(item.grain, -1, 'period_start') }} as date) as previous_period_start,
        dimensions,
        value,
        computed_at
    from {{ item.relation }}
    {{- "\n    union all" if not loop.last }}
{%- endfor %}
),

ranges as (
{%- for item in inputs %}
    select metric_slug, metric_version, period_start, basis, basis_days from ranges_{{ loop.index }}
    {{- "\n    union all" if not loop.last }}
{%- endfor %}
){{ ',' if longer }}
{%- if longer %}

aligned as (
{%- for i in longer %}
    select metric_slug, metric_version, period_start, side, dimensions, value from aligned_{{ i }}
    {{- "\n    union all" if not loop.last }}
{%- endfor %}
)
{%- endif %}

select
    cur.metric_slug,
    cur.metric_version,
    cur.grain,
    cur.period_start,
    cur.dimensions,
    cur.value,
    prev.value as previous_value,
    cast(case
        when r.basis = 'full' then {{ metricsmith.custom_metric_growth_pct('cur.value', 'prev.value') }}
        {%- if longer %}
        when r.basis <> 'none' then {{ metricsmith.custom_metric_growth_pct('aligned_cur.value', 'aligned_prev.value') }}
        {%- endif %}
    end as {{ metricsmith.custom_metric_type_growth() }}) as growth_pct,
    cur.computed_at,
    cast(r.basis as {{ dbt.type_string() }}) as growth_basis,
    cast(r.basis_days as {{ dbt.type_int() }}) as growth_basis_days
from unioned as cur
left join unioned as prev
    on prev.metric_slug = cur.metric_slug
   and prev.metric_version = cur.metric_version
   and prev.dimensions = cur.dimensions
   and prev.period_start = cur.previous_period_start
left join ranges as r
    on r.metric_slug = cur.metric_slug
   and r.metric_version = cur.metric_version
   and r.period_start = cur.period_start
{%- if longer %}
{%- for side in ['cur', 'prev'] %}
left join aligned as aligned_{{ side }}
    on aligned_{{ side }}.metric_slug = cur.metric_slug
   and aligned_{{ side }}.metric_version = cur.metric_version
   and aligned_{{ side }}.period_start = cur.period_start
   and aligned_{{ side }}.dimensions = cur.dimensions
   and aligned_{{ side }}.side = '{{ side }}'
{%- endfor %}
{%- endif %}
{%- endif %}
{%- endmacro %}
