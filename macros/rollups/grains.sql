{#-
    The reporting grains, declared once in dbt_project.yml `vars: grains` (Python reads the same
    list: metricsmith.grains). Every period mart is `{{ metricsmith.period_metrics('<grain>', ...) }}`
    (macros/rollups/period_metrics.sql); the first-activity counts of the day-activity models,
    the islands an incremental run recomputes and the data tests loop over this list, so a grain
    is added by declaring it and writing its one-line mart, its YAML and its docs.
-#}

{#- the declared grains, finest first (the first one is the day) -#}
{% macro grains() -%}
    {%- set declared = var('grains') -%}
    {%- if declared is string or declared | length == 0 or declared[0].get('unit') != 'day' -%}
        {{ exceptions.raise_compiler_error("vars.grains must be a list of grains starting with the day (unit: day)") }}
    {%- endif -%}
    {%- for g in declared -%}
        {%- if g.get('unit') not in ['day', 'week', 'month'] -%}
            {{ exceptions.raise_compiler_error("vars.grains: " ~ g.get('name') ~ ".unit must be day, week or month") }}
        {%- endif -%}
    {%- endfor -%}
    {{ return(declared) }}
{%- endmacro %}


{#- the grains longer than a day (the ones with a period mart and first-activity counts) -#}
{% macro period_grains() -%}
    {{ return(metricsmith.grains()[1:]) }}
{%- endmacro %}


{#- one declared grain by name -#}
{% macro grain(name) -%}
    {%- for g in metricsmith.grains() -%}
        {%- if g.name == name -%}{{ return(g) }}{%- endif -%}
    {%- endfor -%}
    {{ exceptions.raise_compiler_error("unknown grain " ~ name ~ ": declared are "
        ~ (metricsmith.grains() | map(attribute='name') | join(', '))) }}
{%- endmacro %}


{#- the first day of the grain's period holding a date, as a date -#}
{% macro period_start(grain, date_expr) -%}
    {%- set count = grain.get('count', 1) | int -%}
    {%- if grain.unit == 'day' -%}
        cast({{ date_expr }} as date)
    {%- elif grain.unit == 'week' and count == 1 -%}
        {{ metricsmith.week_start(date_expr) }}
    {%- elif grain.unit == 'month' and count == 1 -%}
        {{ metricsmith.month_start(date_expr) }}
    {%- elif grain.unit == 'month' and count in [3, 12] -%}
        cast({{ dbt.date_trunc('quarter' if count == 3 else 'year', date_expr) }} as date)
    {%- elif grain.unit == 'month' -%}
        {{ metricsmith.add_months(metricsmith.month_start(date_expr),
            '-mod(cast(extract(month from ' ~ date_expr ~ ') as integer) - 1, ' ~ count ~ ')') }}
    {%- else -%}
        {{ exceptions.raise_compiler_error("grain " ~ grain.name ~ ": weeks of " ~ count ~ " weeks have no calendar start") }}
    {%- endif -%}
{%- endmacro %}


{#- a period start moved by n whole periods of the grain -#}
{% macro period_add(grain, start_expr, n) -%}
    {%- set count = grain.get('count', 1) | int -%}
    {%- if grain.unit == 'month' -%}
        {{ metricsmith.add_months(start_expr, count * n) }}
    {%- else -%}
        {{ metricsmith.add_days(start_expr, (7 if grain.unit == 'week' else 1) * count * n) }}
    {%- endif -%}
{%- endmacro %}


{#- the last day of the grain's period that starts at start_expr -#}
{% macro period_end(grain, start_expr) -%}
    cast({{ dbt.dateadd('day', -1, metricsmith.period_add(grain, start_expr, 1)) }} as date)
{%- endmacro %}


{#- a period start moved by a comparison of vars.grains (compare: {suffix: {months: N} | {weeks: N}}) -#}
{% macro comparison_shift(spec, start_expr, direction) -%}
    {%- if spec.get('months') is not none -%}
        {{ metricsmith.add_months(start_expr, direction * (spec.months | int)) }}
    {%- elif spec.get('weeks') is not none -%}
        {{ metricsmith.add_days(start_expr, direction * 7 * (spec.weeks | int)) }}
    {%- else -%}
        {{ exceptions.raise_compiler_error("vars.grains compare must be {months: N} or {weeks: N}, got " ~ spec) }}
    {%- endif -%}
{%- endmacro %}


{#- True when every period of grain `inner` lies inside one period of grain `outer` -#}
{% macro grain_nests_in(inner, outer) -%}
    {%- set nested = inner.unit == 'day'
        or (inner.unit == outer.unit and (outer.get('count', 1) | int) % (inner.get('count', 1) | int) == 0) -%}
    {{ return(nested) }}
{%- endmacro %}


{#-
    The first-activity windows of the day-activity models, as a list of
    {suffix, grains}: one per period grain (`week`, `month`, `quarter`: first activity in the
    day's period) and, with breakdowns, one per breakdown whose periods straddle the grain's
    (`week_month`: first activity in the part of the day's week inside its month). A key is
    first in a window on a day when it was not active on an earlier day of every listed grain's
    period. A breakdown that nests in its grain (the months of a quarter) needs no window of
    its own: its parts are its own periods.
-#}
{% macro first_activity_windows(with_breakdowns=false) -%}
    {%- set out = [] -%}
    {%- for g in metricsmith.period_grains() -%}
        {%- do out.append({'suffix': g.name, 'grains': [g]}) -%}
    {%- endfor -%}
    {%- if with_breakdowns -%}
        {%- for g in metricsmith.period_grains() if g.get('breakdown') -%}
            {%- set part = metricsmith.grain(g.breakdown) -%}
            {%- if not metricsmith.grain_nests_in(part, g) -%}
                {%- do out.append({'suffix': part.name ~ '_' ~ g.name, 'grains': [part, g]}) -%}
            {%- endif -%}
        {%- endfor -%}
    {%- endif -%}
    {{ return(out) }}
{%- endmacro %}


{#- the first-activity window whose sum over a breakdown part's days counts its distinct keys -#}
{% macro breakdown_window(grain) -%}
    {%- set part = metricsmith.grain(grain.breakdown) -%}
    {{ return(part.name if metricsmith.grain_nests_in(part, grain) else part.name ~ '_' ~ grain.name) }}
{%- endmacro %}
