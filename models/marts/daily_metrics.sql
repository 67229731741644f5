{#- One row per spine day (see models/marts/_marts__models.yml). -#}
{{
    config(
        unique_key='metric_date',
        indexes=[{'columns': ['metric_date'], 'unique': True}],
    )
}}
-- depends_on: {{ ref('int_changed_days') }}

with

activity as (

    select activity.* from {{ ref('int_daily_activity') }} as activity
    {%- if is_incremental() %}
    where activity.metric_date in (select changed.metric_date from {{ ref('int_changed_days') }} as changed)
    {%- endif %}

),

first_seen as (

    select first_seen.* from {{ ref('int_user_first_seen') }} as first_seen
    {%- if is_incremental() %}
    where first_seen.first_event_date in (select changed.metric_date from {{ ref('int_changed_days') }} as changed)
    {%- endif %}

),

new_users as (

    select first_event_date as metric_date, count(*) as new_users
    from first_seen
    group by first_event_date

),

final as (

    select
        activity.metric_date,
        activity.total_events,
        activity.active_users,
        cast(coalesce(new_users.new_users, 0) as {{ dbt.type_bigint() }}) as new_users,
        activity.active_organizations,
        activity.sessions,
        activity.signups,
        activity.purchases,
        activity.revenue_cents
    from activity
    left join new_users on activity.metric_date = new_users.metric_date

)

select * from final
