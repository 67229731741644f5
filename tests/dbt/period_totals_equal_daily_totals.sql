{#-
    Additive measures add up across grains: over the whole spine, the sums of every period mart
    (weekly_metrics, monthly_metrics, quarterly_metrics: one per grain of vars.grains) equal the
    sum of daily_metrics (total_events, new_users, signups, purchases, revenue_cents, spine
    days), so no period is missing, doubled or stale. Returns one row per grain that differs.
-#}
{%- set measures = ['total_events', 'new_users', 'signups', 'purchases', 'revenue_cents'] %}

with

daily as (

    select
        count(*) as days,
        {%- for m in measures %}
        sum({{ m }}) as {{ m }}{{ "," if not loop.last }}
        {%- endfor %}
    from {{ ref('daily_metrics') }}

),

grains as (

    {%- for g in metricsmith.period_grains() %}
    select
        '{{ g.name }}' as grain,
        sum(days_with_data) as days,
        {%- for m in measures %}
        sum({{ m }}) as {{ m }}{{ "," if not loop.last }}
        {%- endfor %}
    from {{ ref(g.model) }}
    {{ "union all" if not loop.last }}
    {%- endfor %}

)

select grains.*
from grains
cross join daily
where coalesce(grains.days, 0) <> daily.days
{%- for m in measures %}
   or coalesce(grains.{{ m }}, 0) <> coalesce(daily.{{ m }}, 0)
{%- endfor %}
