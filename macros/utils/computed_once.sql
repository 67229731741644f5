{#-
    The body of a CTE that later CTEs read several times, computed once:
    `{{ metricsmith.computed_once(body) }}`, body rendered with `{% set %}`. PostgreSQL computes such
    a CTE once by itself (a CTE read more than once is materialised), so the body is kept as
    written. Spark inlines every read of a deterministic CTE (optimizer rule InlineCTE): each
    read is planned and run again, and column pruning makes the copies differ, so not even
    their exchanges are shared. A CTE with a non-deterministic expression is not inlined
    (SPARK-36447): computed once behind one exchange that every read reuses. So on Spark the
    body gets a filter that is always true but not deterministic.
-#}
{% macro computed_once(body) -%}
    {{ return(adapter.dispatch('computed_once', 'metricsmith')(body)) }}
{%- endmacro %}

{% macro default__computed_once(body) -%}
    {{ return(body) }}
{%- endmacro %}

{% macro spark__computed_once(body) -%}
    {%- set wrapped -%}
    select * from (
    {{ body }}
    ) as computed_once
    where rand() < 2
    {%- endset -%}
    {{ return(wrapped) }}
{%- endmacro %}
