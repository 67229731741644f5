{#-
    Every user is a new user exactly once: on each day, new_users equals the users whose first
    valid event falls on it (int_user_first_seen), and every first day is a spine day. A user
    missing from first-seen (e.g. history loaded behind the change tracking's back) or a day
    that kept a stale count fails here. Returns the offending days.
-#}
with

daily as (

    select metric_date, new_users from {{ ref('daily_metrics') }}

),

first_seen as (

    select first_event_date, count(*) as users
    from {{ ref('int_user_first_seen') }}
    group by first_event_date

),

compared as (

    select
        coalesce(daily.metric_date, first_seen.first_event_date) as metric_date,
        daily.new_users,
        coalesce(first_seen.users, 0) as first_seen_users
    from daily
    full outer join first_seen on first_seen.first_event_date = daily.metric_date

)

select *
from compared
where new_users is null
   or new_users <> first_seen_users
