{#- One row per valid event, with its day in the reporting time zone. -#}
with

source as (

    select * from {{ source('raw', 'events') }}

),

valid as (

    select
        event_id,
        occurred_at,
        received_at,
        inserted_at,
        {{ metricsmith.local_date('occurred_at') }} as event_date,
        event_type,
        user_id,
        organization_id,
        session_id,
        revenue_cents,
        properties
    from source
    where {{ metricsmith.valid_event_condition() }}

)

select * from valid
