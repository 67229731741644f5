{#-
    Spark SQL versions of the dispatched macros (METRICSMITH_ENGINE=spark, docs/spark.md). The
    session time zone is UTC, so a `timestamp` is an instant shown in UTC, like timestamptz.
-#}

{#- the local calendar date of an instant: its wall-clock time in the zone (DST-correct) -#}
{% macro spark__local_date(timestamp_expr) -%}
    cast(from_utc_timestamp({{ timestamp_expr }}, '{{ metricsmith.metrics_timezone() }}') as date)
{%- endmacro %}

{#- the instant at which a local date starts: local midnight read in the zone -#}
{% macro spark__local_day_start(date_expr) -%}
    to_utc_timestamp(cast(cast({{ date_expr }} as date) as timestamp), '{{ metricsmith.metrics_timezone() }}')
{%- endmacro %}

{% macro spark__date_series(start_expr, end_expr) -%}
    select explode(sequence(cast({{ start_expr }} as date), cast({{ end_expr }} as date), interval 1 day)) as metric_date
{%- endmacro %}

{#- exact date / timestamp arithmetic (dbt-spark's goes through unix seconds: sub-second parts
    are lost, so an event 0.5 s inside a limit could be refused) -#}
{% macro spark__dateadd(datepart, interval, from_date_or_timestamp) -%}
    timestampadd({{ datepart }}, {{ interval }}, {{ from_date_or_timestamp }})
{%- endmacro %}

{#- growth in percent as metricsmith.growth_pct computes it: 100 * (current - previous) / previous,
    null when previous is null or 0, rounded half away from zero to 4 decimals -#}
{% macro spark__growth_pct(current, previous) -%}
    cast(round(
        cast(100 * (cast({{ current }} as decimal(22, 0)) - {{ previous }}) as decimal(22, 0))
        / cast(nullif({{ previous }}, 0) as decimal(20, 0)), 4) as {{ metricsmith.type_growth_pct() }})
{%- endmacro %}

{#- Spark decimals hold at most 38 digits -#}
{% macro spark__type_average() -%}
    decimal(38, 4)
{%- endmacro %}

{% macro spark__type_growth_pct() -%}
    decimal(38, 4)
{%- endmacro %}

{% macro spark__average(column) -%}
    cast(round(sum(cast({{ column }} as decimal(30, 0))) / cast(count({{ column }}) as decimal(8, 0)), 4)
        as {{ metricsmith.type_average() }})
{%- endmacro %}

{#- a JSON array (text) of objects, ordered by order_by: an array of structs sorted on the key -#}
{% macro spark__json_object_array(pairs, order_by) -%}
    to_json(transform(
        array_sort(collect_list(named_struct('sort_key', {{ order_by }}, 'item', named_struct(
            {%- for key, expr in pairs %}
            '{{ key }}', {{ expr }}{{ "," if not loop.last }}
            {%- endfor %}
        )))),
        x -> x.item
    ))
{%- endmacro %}

{#- Spark has no session settings worth a per-model statement: the session sets them once; an
    empty hook is not run (dbt's run_hooks skips it), which saves a statement per model -#}
{% macro spark__rollup_session_tuning() -%}
{%- endmacro %}

{% macro spark__rollup_parallel_tuning() -%}
{%- endmacro %}

{#- an absolute instant: Spark's timestamp is stored in UTC and shown in the session time zone -#}
{% macro spark__type_timestamptz() -%}
    timestamp
{%- endmacro %}
