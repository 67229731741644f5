{#-
    Additive measures add up across grains: over the whole spine, the sums of weekly_metrics
    and of monthly_metrics equal the sum of daily_metrics (total_events, new_users, signups,
    purchases, revenue_cents, spine days), so no week or month is missing, doubled or stale.
    Returns one row per grain that differs.
-#}
{%- set measures = ['total_events', 'new_users', 'signups', 'purchases', 'revenue_cents'] %}

with

daily as (

    select count(*) as days, {% for m in measures %}sum({{ m }}) as {{ m }}{{ ", " if not loop.last }}{% endfor %}
    from {{ ref('daily_metrics') }}

),

weekly as (

    select sum(days_with_data) as days, {% for m in measures %}sum({{ m }}) as {{ m }}{{ ", " if not loop.last }}{% endfor %}
    from {{ ref('weekly_metrics') }}

),

monthly as (

    select sum(days_with_data) as days, {% for m in measures %}sum({{ m }}) as {{ m }}{{ ", " if not loop.last }}{% endfor %}
    from {{ ref('monthly_metrics') }}

),

grains as (

    select 'weekly' as grain, * from weekly
    union all
    select 'monthly' as grain, * from monthly

)

select grains.*
from grains
cross join daily
where coalesce(grains.days, 0) <> daily.days
{%- for m in measures %}
   or coalesce(grains.{{ m }}, 0) <> coalesce(daily.{{ m }}, 0)
{%- endfor %}
