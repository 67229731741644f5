{#-
    One row per spine day: the day facts of users (with day totals), organizations and
    sessions side by side, with the "first in" counts of every declared grain (a grain added
    to vars.grains adds its columns here by itself). The three are separate incremental models so that dbt builds them
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
        {{- metricsmith.first_activity_column_list('users', 'users', with_breakdowns=true) }},
        {{- metricsmith.first_activity_column_list('organizations', 'organizations') }},
        {{- metricsmith.first_activity_column_list('sessions', 'sessions') }}
    from users
    inner join organizations on users.metric_date = organizations.metric_date
    inner join sessions on users.metric_date = sessions.metric_date

)

select * from final
