{#-
    Reporting-time-zone helpers. A "day" is the calendar date of a timestamptz in the zone
    named by the dbt var `metrics_timezone` (DST-correct). Postgres-only syntax lives in the
    `postgres__` implementations; `default__` uses dbt's cross-database macros where possible.
-#}

{% macro metrics_timezone() -%}
    {%- set tz = var('metrics_timezone', 'UTC') | string | trim -%}
    {%- if not tz or "'" in tz or '\\' in tz -%}
        {{ exceptions.raise_compiler_error("metrics_timezone must be an IANA time zone name, got: " ~ tz) }}
    {%- endif -%}
    {{- tz -}}
{%- endmacro %}


{#- the local calendar date of a timestamptz expression -#}
{% macro local_date(timestamp_expr) -%}
    {{ return(adapter.dispatch('local_date', 'metricsmith')(timestamp_expr)) }}
{%- endmacro %}

{% macro default__local_date(timestamp_expr) -%}
    {%- if metricsmith.metrics_timezone() != 'UTC' -%}
        {{ exceptions.raise_compiler_error("local_date: time zone conversion has no implementation for adapter " ~ adapter.type() ~ "; add " ~ adapter.type() ~ "__local_date") }}
    {%- endif -%}
    cast({{ timestamp_expr }} as date)
{%- endmacro %}

{% macro postgres__local_date(timestamp_expr) -%}
    (({{ timestamp_expr }}) at time zone '{{ metricsmith.metrics_timezone() }}')::date
{%- endmacro %}


{#- the instant (timestamptz) at which a local calendar date starts -#}
{% macro local_day_start(date_expr) -%}
    {{ return(adapter.dispatch('local_day_start', 'metricsmith')(date_expr)) }}
{%- endmacro %}

{% macro default__local_day_start(date_expr) -%}
    {%- if metricsmith.metrics_timezone() != 'UTC' -%}
        {{ exceptions.raise_compiler_error("local_day_start has no implementation for adapter " ~ adapter.type()) }}
    {%- endif -%}
    cast({{ date_expr }} as {{ dbt.type_timestamp() }})
{%- endmacro %}

{% macro postgres__local_day_start(date_expr) -%}
    ((({{ date_expr }})::timestamp) at time zone '{{ metricsmith.metrics_timezone() }}')
{%- endmacro %}


{#- ISO week (Monday) and calendar month starts of a date, as dates -#}
{% macro week_start(date_expr) -%}
    cast({{ dbt.date_trunc('week', date_expr) }} as date)
{%- endmacro %}

{% macro month_start(date_expr) -%}
    cast({{ dbt.date_trunc('month', date_expr) }} as date)
{%- endmacro %}

{% macro add_days(date_expr, n) -%}
    cast({{ dbt.dateadd('day', n, date_expr) }} as date)
{%- endmacro %}

{% macro add_months(date_expr, n) -%}
    cast({{ dbt.dateadd('month', n, date_expr) }} as date)
{%- endmacro %}

{#- last day of the month that starts at month_start_expr -#}
{% macro month_end(month_start_expr) -%}
    cast({{ dbt.dateadd('day', -1, dbt.dateadd('month', 1, month_start_expr)) }} as date)
{%- endmacro %}


{#- one row per date from start_expr to end_expr inclusive, column `metric_date` (Postgres; on an
    adapter without an implementation dbt's dispatch error stops the compile, naming the macro) -#}
{% macro date_series(start_expr, end_expr) -%}
    {{ return(adapter.dispatch('date_series', 'metricsmith')(start_expr, end_expr)) }}
{%- endmacro %}

{% macro postgres__date_series(start_expr, end_expr) -%}
    select d::date as metric_date
    from generate_series(({{ start_expr }})::timestamp, ({{ end_expr }})::timestamp, interval '1 day') as d
{%- endmacro %}


{#- a sort key for identifiers: byte order, much faster than a linguistic collation -#}
{% macro id_sort_key(column) -%}
    {{ return(adapter.dispatch('id_sort_key', 'metricsmith')(column)) }}
{%- endmacro %}

{% macro default__id_sort_key(column) -%}
    {{ column }}
{%- endmacro %}

{% macro postgres__id_sort_key(column) -%}
    {{ column }} collate "C"
{%- endmacro %}


{#- growth in percent, the one definition: 100 * (current - previous) / previous, null when
    previous is null or 0, rounded to 4 decimals (the difference is taken with 20 decimals first:
    Postgres keeps only ~16 significant digits in a quotient otherwise), as type_growth_pct().
    Postgres calls the SQL function metricsmith.growth_pct (migration 0030_growth_pct), which
    the query layer calls too; other adapters spell the same expression. -#}
{% macro growth_pct(current, previous) -%}
    {{ return(adapter.dispatch('growth_pct', 'metricsmith')(current, previous)) }}
{%- endmacro %}

{% macro default__growth_pct(current, previous) -%}
    cast(round(100 * cast(cast({{ current }} as numeric) - {{ previous }} as numeric(65, 20)) / nullif({{ previous }}, 0), 4)
        as {{ metricsmith.type_growth_pct() }})
{%- endmacro %}

{% macro postgres__growth_pct(current, previous) -%}
    cast(metricsmith.growth_pct(cast({{ current }} as numeric), cast({{ previous }} as numeric))
        as {{ metricsmith.type_growth_pct() }})
{%- endmacro %}


{#- a time-zone-aware timestamp type. No default: dbt's cross-database timestamp is naive on most
    adapters, so an adapter without its own implementation stops the compile (dbt's dispatch
    error names the macro) instead of silently dropping the time zone -#}
{% macro type_timestamptz() -%}
    {{ return(adapter.dispatch('type_timestamptz', 'metricsmith')()) }}
{%- endmacro %}

{% macro postgres__type_timestamptz() -%}
    timestamptz
{%- endmacro %}
