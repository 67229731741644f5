{#- Rows of raw.events that break the valid-event rules, with the first failing rule. -#}
with

source as (

    select * from {{ source('raw', 'events') }}

),

rejected as (

    select
        event_id,
        occurred_at,
        received_at,
        event_type,
        user_id,
        organization_id,
        session_id,
        revenue_cents,
        properties,
        {{ metricsmith.rejected_event_reason() }} as reason
    from source
    where not coalesce({{ metricsmith.valid_event_condition() }}, false)

)

select * from rejected
