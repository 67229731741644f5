{#- The schema of a model: its configured schema as is (`analytics`) on the production targets
    (var `production_targets`: `default` and `embedded`, the ones the metricsmith CLI, the flows
    and the Python query layer use), `<schema>_<target name>` on any other target (e.g.
    `analytics_dev` for `--target dev`), so a development target cannot overwrite the production
    marts. Python resolves the same name in metricsmith.core.schema. -#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {%- set schema = (target.schema if custom_schema_name is none else custom_schema_name) | trim -%}
    {%- if target.name in var('production_targets', ['default', 'embedded']) -%}
        {{ schema }}
    {%- else -%}
        {{ schema }}_{{ target.name | trim }}
    {%- endif -%}
{%- endmacro %}
