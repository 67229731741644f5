{#- The definition of a valid event. stg_events keeps rows where it is true, stg_events_rejected
    the others, each with the first failing rule as its reason. The limits are declared once, in
    dbt_project.yml `vars: event_rules`; the loader and the stream consumer read the same
    declaration (metricsmith.event_rules), so a row they accept is valid here too. -#}
{% macro event_rule_limits() -%}
    {%- set rules = var('event_rules') -%}
    {%- set minimum = rules['min_occurred_at'] | string -%}
    {%- if not modules.re.fullmatch('[0-9]{4}-[0-9]{2}-[0-9]{2}', minimum) -%}
        {{ exceptions.raise_compiler_error("vars.event_rules.min_occurred_at must be a date YYYY-MM-DD, got " ~ minimum) }}
    {%- endif -%}
    {{ return({
        'max_revenue_cents': rules['max_revenue_cents'] | int,
        'min_occurred_at': "cast('" ~ minimum ~ " 00:00:00+00' as " ~ metricsmith.type_timestamptz() ~ ")",
        'max_future_seconds': rules['max_future_seconds'] | int,
    }) }}
{%- endmacro %}

{% macro valid_event_condition(alias='') -%}
    {%- set p = (alias ~ '.') if alias else '' -%}
    {%- set limits = metricsmith.event_rule_limits() -%}
    (
        {{ p }}occurred_at is not null
        and {{ p }}received_at is not null
        and {{ p }}occurred_at >= {{ limits.min_occurred_at }}
        and {{ p }}occurred_at <= {{ dbt.dateadd('second', limits.max_future_seconds, p ~ 'received_at') }}
        and {{ p }}occurred_at <= {{ dbt.dateadd('second', limits.max_future_seconds, dbt.current_timestamp()) }}
        and {{ p }}event_type is not null
        and trim({{ p }}event_type) <> ''
        and {{ p }}revenue_cents is not null
        and {{ p }}revenue_cents >= 0
        and {{ p }}revenue_cents <= {{ limits.max_revenue_cents }}
    )
{%- endmacro %}

{% macro rejected_event_reason(alias='') -%}
    {%- set p = (alias ~ '.') if alias else '' -%}
    {%- set limits = metricsmith.event_rule_limits() -%}
    case
        when {{ p }}occurred_at is null then 'missing_occurred_at'
        when {{ p }}received_at is null then 'missing_received_at'
        when {{ p }}occurred_at < {{ limits.min_occurred_at }} then 'occurred_before_minimum'
        when {{ p }}occurred_at > {{ dbt.dateadd('second', limits.max_future_seconds, p ~ 'received_at') }} then 'occurred_after_received'
        when {{ p }}occurred_at > {{ dbt.dateadd('second', limits.max_future_seconds, dbt.current_timestamp()) }} then 'occurred_in_future'
        when {{ p }}event_type is null or trim({{ p }}event_type) = '' then 'empty_event_type'
        when {{ p }}revenue_cents is null then 'missing_revenue'
        when {{ p }}revenue_cents < 0 then 'negative_revenue'
        when {{ p }}revenue_cents > {{ limits.max_revenue_cents }} then 'revenue_too_large'
    end
{%- endmacro %}


{#- jsonb array of objects ordered by a column (Postgres; on an adapter without an implementation
    dbt's dispatch error stops the compile, naming the macro); used for weekly_breakdown -#}
{% macro json_object_array(pairs, order_by) -%}
    {{ return(adapter.dispatch('json_object_array', 'metricsmith')(pairs, order_by)) }}
{%- endmacro %}

{% macro postgres__json_object_array(pairs, order_by) -%}
    jsonb_agg(jsonb_build_object(
        {%- for key, expr in pairs %}
        '{{ key }}', {{ expr }}{{ "," if not loop.last }}
        {%- endfor %}
    ) order by {{ order_by }})
{%- endmacro %}
