{#-
    The like-for-like rule of every growth comparison (docs/rollups.md "Like-for-like growth"),
    in one place: the period marts (period_metrics) and custom_metric_values both call it.
    A period's days are numbered by their offset in the period; a comparison uses the offsets
    both periods have on the spine [first_day, last_day] (the whole periods when both are
    complete, unless by_day_of_month: a month against the month a year earlier, aligned by day
    of month, so 29 February has no partner).

    `periods` names a relation with period_start, period_end, prev_start, prev_end, first_day,
    last_day (and the `keys` columns, carried through). The select returns, per row: keys,
    period_start, cur_from (the period's first spine day), basis ('full', 'to_date',
    'partial_baseline', 'none'), basis_days (aligned days; NULL without a previous period) and
    the aligned day ranges cur_lo..cur_hi and prev_lo..prev_hi.
-#}
{% macro like_for_like_ranges(periods, by_day_of_month=false, keys=[]) -%}
{%- set carried = (keys | join(', ') ~ ', ') if keys else '' -%}
select
    {{ carried }}period_start,
    cur_from,
    case
        when not has_prev or hi < lo then 'none'
        when not prev_complete then 'partial_baseline'
        when not cur_complete then 'to_date'
        else 'full'
    end as basis,
    case
        when not has_prev then null
        {%- if not by_day_of_month %}
        when cur_complete and prev_complete then {{ dbt.datediff('cur_from', 'cur_to', 'day') }} + 1
        {%- endif %}
        else greatest(hi - lo + 1, 0)
    end as basis_days,
    {%- if by_day_of_month %}
    {{ metricsmith.add_days('period_start', 'lo') }} as cur_lo,
    {{ metricsmith.add_days('period_start', 'hi') }} as cur_hi,
    {{ metricsmith.add_days('prev_start', 'lo') }} as prev_lo,
    {{ metricsmith.add_days('prev_start', 'hi') }} as prev_hi
    {%- else %}
    case when cur_complete and prev_complete then cur_from else {{ metricsmith.add_days('period_start', 'lo') }} end as cur_lo,
    case when cur_complete and prev_complete then cur_to else {{ metricsmith.add_days('period_start', 'hi') }} end as cur_hi,
    case when cur_complete and prev_complete then prev_from else {{ metricsmith.add_days('prev_start', 'lo') }} end as prev_lo,
    case when cur_complete and prev_complete then prev_to else {{ metricsmith.add_days('prev_start', 'hi') }} end as prev_hi
    {%- endif %}
from (
    select
        {{ carried }}period_start,
        prev_start,
        cur_from,
        cur_to,
        prev_from,
        prev_to,
        prev_from <= prev_to as has_prev,
        cur_from = period_start and cur_to = period_end as cur_complete,
        prev_from = prev_start and prev_to = prev_end as prev_complete,
        greatest({{ dbt.datediff('period_start', 'cur_from', 'day') }},
                 {{ dbt.datediff('prev_start', 'prev_from', 'day') }}) as lo,
        least({{ dbt.datediff('period_start', 'cur_to', 'day') }},
              {{ dbt.datediff('prev_start', 'prev_to', 'day') }}) as hi
    from (
        select
            {{ carried }}period_start,
            period_end,
            prev_start,
            prev_end,
            greatest(period_start, first_day) as cur_from,
            least(period_end, last_day) as cur_to,
            greatest(prev_start, first_day) as prev_from,
            least(prev_end, last_day) as prev_to
        from {{ periods }}
    ) as bounds
) as offsets
{%- endmacro %}
