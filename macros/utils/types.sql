{#-
    Column types of the rollup marts, declared once (the contracts in
    models/marts/_marts__models.yml state the same types).

    Revenue: revenue_cents is bigint per event (the loader bounds it at 10^12), but sums of
    many events exceed bigint (9.2 * 10^18), so every sum of revenue is numeric(38, 0): room
    for 10^12 cents times more events than a bigint can count. Averages keep 4 decimals over
    the same range; growth percentages (100 * (this - previous) / previous, previous >= 1)
    need two more integer digits than the largest value.
-#}
{% macro type_cents() -%}
    numeric(38, 0)
{%- endmacro %}

{% macro type_average() -%}
    {{ return(adapter.dispatch('type_average', 'metricsmith')()) }}
{%- endmacro %}

{% macro default__type_average() -%}
    numeric(42, 4)
{%- endmacro %}

{% macro type_growth_pct() -%}
    {{ return(adapter.dispatch('type_growth_pct', 'metricsmith')()) }}
{%- endmacro %}

{% macro default__type_growth_pct() -%}
    numeric(46, 4)
{%- endmacro %}

{#- mean of a column over a group, rounded to 4 decimals (computed with 20 decimals: Postgres
    keeps only ~16 significant digits in a quotient otherwise, too few for large sums) -#}
{% macro average(column) -%}
    {{ return(adapter.dispatch('average', 'metricsmith')(column)) }}
{%- endmacro %}

{% macro default__average(column) -%}
    cast(round(avg(cast({{ column }} as numeric(65, 20))), 4) as {{ metricsmith.type_average() }})
{%- endmacro %}
