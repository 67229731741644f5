{#- The definition of a valid event (issue 3). stg_events keeps rows where it is true,
    stg_events_rejected the others, each with the first failing rule as its reason. -#}
{% macro valid_event_condition(alias='') -%}
    {%- set p = (alias ~ '.') if alias else '' -%}
    (
        {{ p }}occurred_at is not null
        and {{ p }}received_at is not null
        and {{ p }}occurred_at <= {{ dbt.dateadd('day', 1, p ~ 'received_at') }}
        and {{ p }}event_type is not null
        and trim({{ p }}event_type) <> ''
        and {{ p }}revenue_cents is not null
        and {{ p }}revenue_cents >= 0
    )
{%- endmacro %}

{% macro rejected_event_reason(alias='') -%}
    {%- set p = (alias ~ '.') if alias else '' -%}
    case
        when {{ p }}occurred_at is null then 'missing_occurred_at'
        when {{ p }}received_at is null then 'missing_received_at'
        when {{ p }}occurred_at > {{ dbt.dateadd('day', 1, p ~ 'received_at') }} then 'occurred_after_received'
        when {{ p }}event_type is null or trim({{ p }}event_type) = '' then 'empty_event_type'
        when {{ p }}revenue_cents is null then 'missing_revenue'
        when {{ p }}revenue_cents < 0 then 'negative_revenue'
    end
{%- endmacro %}


{#- jsonb array of objects ordered by a column (Postgres); used for weekly_breakdown -#}
{% macro json_object_array(pairs, order_by) -%}
    {{ return(adapter.dispatch('json_object_array', 'metricsmith')(pairs, order_by)) }}
{%- endmacro %}

{% macro default__json_object_array(pairs, order_by) -%}
    {{ exceptions.raise_compiler_error("json_object_array has no implementation for adapter " ~ adapter.type()) }}
{%- endmacro %}

{% macro postgres__json_object_array(pairs, order_by) -%}
    jsonb_agg(jsonb_build_object(
        {%- for key, expr in pairs %}
        '{{ key }}', {{ expr }}{{ "," if not loop.last }}
        {%- endfor %}
    ) order by {{ order_by }})
{%- endmacro %}
