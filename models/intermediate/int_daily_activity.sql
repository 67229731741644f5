{#-
    One row per spine day: the day facts of users (with day totals), organizations and
    sessions side by side. The three are separate incremental models so that dbt builds them
    in parallel (one sort each); this view only joins them.
-#}
{{ config(materialized='view') }}

with

users as (

    select * from {{ ref('int_daily_user_activity') }}

),

organizations as (

    select * from {{ ref('int_daily_organization_activity') }}

),

sessions as (

    select * from {{ ref('int_daily_session_activity') }}

),

final as (

    select
        users.metric_date,
        users.total_events,
        users.signups,
        users.purchases,
        users.revenue_cents,
        users.active_users,
        organizations.active_organizations,
        sessions.sessions,
        users.users_first_in_week,
        users.users_first_in_month,
        users.users_first_in_week_month,
        organizations.organizations_first_in_week,
        organizations.organizations_first_in_month,
        sessions.sessions_first_in_week,
        sessions.sessions_first_in_month
    from users
    inner join organizations on organizations.metric_date = users.metric_date
    inner join sessions on sessions.metric_date = users.metric_date

)

select * from final
