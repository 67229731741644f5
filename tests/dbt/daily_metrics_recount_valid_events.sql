{#-
    An independent recount: per day, total_events, signups, purchases and revenue_cents of
    daily_metrics equal a plain aggregation of the valid events (stg_events), and the spine
    runs exactly from the first to the last day with a valid event (days without events
    carry zeros). Catches a day an incremental run failed to recompute. Returns the
    offending days.
-#}
with

events as (

    select event_date, event_type, revenue_cents from {{ ref('stg_events') }}

),

daily as (

    select metric_date, total_events, signups, purchases, revenue_cents from {{ ref('daily_metrics') }}

),

recount as (

    select
        event_date as metric_date,
        count(*) as total_events,
        sum(case when event_type = 'signup' then 1 else 0 end) as signups,
        sum(case when event_type = 'purchase' then 1 else 0 end) as purchases,
        sum(revenue_cents) as revenue_cents
    from events
    group by event_date

),

bounds as (

    select min(metric_date) as first_day, max(metric_date) as last_day from recount

),

compared as (

    select
        coalesce(daily.metric_date, recount.metric_date) as metric_date,
        daily.total_events,
        recount.total_events as recount_events,
        daily.revenue_cents,
        recount.revenue_cents as recount_revenue_cents,
        daily.signups <> coalesce(recount.signups, 0) or daily.purchases <> coalesce(recount.purchases, 0)
            as kinds_differ,
        daily.metric_date < bounds.first_day or daily.metric_date > bounds.last_day as outside_spine
    from daily
    full outer join recount on recount.metric_date = daily.metric_date
    cross join bounds

)

select *
from compared
where total_events is null
   or total_events <> coalesce(recount_events, 0)
   or revenue_cents <> coalesce(recount_revenue_cents, 0)
   or kinds_differ
   or outside_spine
