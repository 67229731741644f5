{#-
    Change tracking for the rollups (see docs/rollups.md, "How incremental runs stay exact").

    int_rollup_batch   one row per run: the received_at window [low_watermark, high_watermark]
    int_changed_days   the local days whose metrics may have changed in this run
    int_rollup_ledger  append-only history of finished runs; its latest high_watermark is the
                       next run's low_watermark (never dropped by --full-refresh)
-#}

{#- a relation of this project's schema, or none when it does not exist (no ref: avoids DAG cycles) -#}
{% macro rollup_relation(identifier) -%}
    {%- if not execute -%}{{ return(none) }}{%- endif -%}
    {{ return(adapter.get_relation(database=target.database, schema=model.schema, identifier=identifier)) }}
{%- endmacro %}


{#- safety lag subtracted from the high watermark, as an interval literal expression -#}
{% macro rollups_safety_lag_seconds() -%}
    {%- set lag = var('rollups_safety_lag_seconds', 600) -%}
    {%- if lag is string and not lag.isdigit() -%}
        {{ exceptions.raise_compiler_error("rollups_safety_lag_seconds must be a whole number of seconds, got: " ~ lag) }}
    {%- endif -%}
    {{- lag | int -}}
{%- endmacro %}


{#- the start of the oldest other open transaction in this database, or now() -#}
{% macro open_transaction_horizon() -%}
    {{ return(adapter.dispatch('open_transaction_horizon', 'metricsmith')()) }}
{%- endmacro %}

{% macro default__open_transaction_horizon() -%}
    {{ dbt.current_timestamp() }}
{%- endmacro %}

{% macro postgres__open_transaction_horizon() -%}
    coalesce(
        (select min(xact_start) from pg_stat_activity
         where datname = current_database() and pid <> pg_backend_pid() and xact_start is not null),
        now()
    )
{%- endmacro %}


{#- fetch the one row of int_rollup_batch (the model's ref('int_rollup_batch')) as a dict (execution time only) -#}
{% macro rollup_batch(batch_relation) -%}
    {%- if not execute -%}{{ return({}) }}{%- endif -%}
    {%- set text = dbt.type_string() -%}
    {%- set result = run_query("select cast(low_watermark as " ~ text ~ ") as low_watermark, cast(high_watermark as " ~ text ~ ") as high_watermark, is_full_rebuild, cast(backfill_start as " ~ text ~ ") as backfill_start, cast(backfill_end as " ~ text ~ ") as backfill_end from " ~ batch_relation) -%}
    {%- if result.rows | length != 1 -%}
        {{ exceptions.raise_compiler_error("int_rollup_batch must hold exactly one row; run the rollups with their upstream models (metricsmith rollups run)") }}
    {%- endif -%}
    {%- set row = result.rows[0] -%}
    {{ return({'low_watermark': row[0], 'high_watermark': row[1], 'is_full_rebuild': row[2], 'backfill_start': row[3], 'backfill_end': row[4]}) }}
{%- endmacro %}


{#- backfill range from vars, validated: returns [start, end] strings or [none, none] -#}
{% macro backfill_range() -%}
    {%- set start = var('backfill_start', none) -%}
    {%- set end = var('backfill_end', none) -%}
    {%- if (start is none) != (end is none) -%}
        {{ exceptions.raise_compiler_error("backfill needs both vars backfill_start and backfill_end (YYYY-MM-DD)") }}
    {%- endif -%}
    {%- if start is none -%}{{ return([none, none]) }}{%- endif -%}
    {%- set re = modules.re -%}
    {%- for v in [start, end] -%}
        {%- if not re.fullmatch('[0-9]{4}-[0-9]{2}-[0-9]{2}', v | string) -%}
            {{ exceptions.raise_compiler_error("backfill dates must be YYYY-MM-DD, got: " ~ v) }}
        {%- endif -%}
    {%- endfor -%}
    {%- if (start | string) > (end | string) -%}
        {{ exceptions.raise_compiler_error("backfill_start " ~ start ~ " is after backfill_end " ~ end) }}
    {%- endif -%}
    {{ return([start | string, end | string]) }}
{%- endmacro %}


{#-
    Contiguous date islands to recompute, as a list of dicts
    {range_start, range_end, out_start, out_end, from_ts, to_ts} (strings): output days
    [out_start, out_end] are whole periods of the coarsest month-based grain (months, or
    quarters when declared; clipped to the spine); the input range extends them to whole periods
    of every grain (ISO weeks) so "first activity in the week / month / quarter" is exact.
    `changed_days` is the model's ref('int_changed_days').
-#}
{% macro rollup_islands(changed_days) -%}
    {%- if not execute -%}{{ return([]) }}{%- endif -%}
    {%- set text = dbt.type_string() -%}
    {%- set sql -%}
        select
            cast(range_start as {{ text }}), cast(range_end as {{ text }}), cast(out_start as {{ text }}), cast(out_end as {{ text }}),
            cast({{ metricsmith.local_day_start('range_start') }} as {{ text }}),
            cast({{ metricsmith.local_day_start(metricsmith.add_days('range_end', 1)) }} as {{ text }})
        from ({{ metricsmith.rollup_islands_sql(changed_days) }}) islands
        order by 1
    {%- endset -%}
    {%- set rows = run_query(sql).rows -%}
    {%- set out = [] -%}
    {%- for r in rows -%}
        {%- do out.append({'range_start': r[0], 'range_end': r[1], 'out_start': r[2], 'out_end': r[3],
                           'from_ts': r[4], 'to_ts': r[5]}) -%}
    {%- endfor -%}
    {{ return(out) }}
{%- endmacro %}

{#- the grain whose whole periods an island outputs: the month-based grain of most months (every
    other month-based grain must nest in it), else the calendar month -#}
{% macro island_grain() -%}
    {%- set ns = namespace(outer={'name': 'month', 'unit': 'month', 'count': 1}) -%}
    {%- for g in metricsmith.period_grains() if g.unit == 'month' and (g.get('count', 1) | int) > (ns.outer.get('count', 1) | int) -%}
        {%- set ns.outer = g -%}
    {%- endfor -%}
    {%- for g in metricsmith.period_grains() if g.unit == 'month' and not metricsmith.grain_nests_in(g, ns.outer) -%}
        {{ exceptions.raise_compiler_error("vars.grains: " ~ g.name ~ " periods do not nest in " ~ ns.outer.name ~ " periods") }}
    {%- endfor -%}
    {{ return(ns.outer) }}
{%- endmacro %}

{% macro rollup_islands_sql(changed_days) -%}
    {%- set outer = metricsmith.island_grain() -%}
    {%- set months = outer.get('count', 1) | int -%}
    with changed as (
        select metric_date from {{ changed_days }}
    ),
    spine as (
        select min(spine_start) as spine_start, max(spine_end) as spine_end from {{ changed_days }}
    ),
    -- a changed day changes its own "first in" counts and those of the later days of every period
    -- holding it (never an earlier day): the outer periods (months / quarters) of the day and of
    -- the last day of its week; the events are read from the start of each output day's week
    touched_dates as (
        select metric_date as d from changed
        {%- for g in metricsmith.period_grains() if g.unit == 'week' %}
        union all
        select {{ metricsmith.period_end(g, metricsmith.period_start(g, 'metric_date')) }} from changed
        {%- endfor %}
    ),
    outer_periods as (
        select distinct {{ metricsmith.period_start(outer, 'd') }} as period_start from touched_dates
    ),
    numbered as (
        select
            period_start,
            (extract(year from period_start) * 12 + extract(month from period_start) - 1) / {{ months }}
                - row_number() over (order by period_start) as island_key
        from outer_periods
    ),
    islands as (
        select min(period_start) as first_period, max(period_start) as last_period
        from numbered
        group by island_key
    ),
    clipped as (
        select
            case when i.first_period > s.spine_start then i.first_period else s.spine_start end as out_start,
            case when {{ metricsmith.period_end(outer, 'i.last_period') }} < s.spine_end
                 then {{ metricsmith.period_end(outer, 'i.last_period') }} else s.spine_end end as out_end
        from islands as i
        cross join spine as s
    )
    select
        {%- set ns = namespace(first='out_start', last='out_end') %}
        {%- for g in metricsmith.period_grains() if g.unit == 'week' %}
        {%- set ns.first = 'least(' ~ ns.first ~ ', ' ~ metricsmith.period_start(g, 'out_start') ~ ')' %}
        {%- set ns.last = 'greatest(' ~ ns.last ~ ', ' ~ metricsmith.period_end(g, metricsmith.period_start(g, 'out_end')) ~ ')' %}
        {%- endfor %}
        {{ ns.first }} as range_start,
        {{ ns.last }} as range_end,
        out_start,
        out_end
    from clipped
    where out_start <= out_end
{%- endmacro %}


{#- per-transaction tuning for the heavy rollup statements (pre_hook) -#}
{% macro rollup_session_tuning() -%}
    {{ return(adapter.dispatch('rollup_session_tuning', 'metricsmith')()) }}
{%- endmacro %}

{% macro default__rollup_session_tuning() -%}
    select 1
{%- endmacro %}

{% macro postgres__rollup_session_tuning() -%}
    {%- set mem = var('rollups_work_mem', '1GB') | string -%}
    {%- if not modules.re.fullmatch('[0-9]+(kB|MB|GB)', mem) -%}
        {{ exceptions.raise_compiler_error("rollups_work_mem must look like 256MB, got: " ~ mem) }}
    {%- endif -%}
    {#- jit off: compiling the marts' plans took seconds against a sub-second gain (bench/README.md) -#}
    select set_config('work_mem', '{{ mem }}', true), set_config('jit', 'off', true)
{%- endmacro %}
