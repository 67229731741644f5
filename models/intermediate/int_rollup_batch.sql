{#-
    One row describing this rollup run: which arrivals it covers (received_at >= low_watermark)
    and the watermark the next run starts from. See docs/rollups.md.
-#}
{{ config(materialized='table') }}

{%- set tz = metricsmith.metrics_timezone() %}
{%- set backfill = metricsmith.backfill_range() %}
{%- set ledger = metricsmith.rollup_relation('int_rollup_ledger') %}
{%- set activity = metricsmith.rollup_relation('int_daily_user_activity') %}
{%- set first_seen = metricsmith.rollup_relation('int_user_first_seen') %}
{%- set organizations = metricsmith.rollup_relation('int_daily_organization_activity') %}
{%- set sessions = metricsmith.rollup_relation('int_daily_session_activity') %}
{%- set ns = namespace(low=none, last_tz=none, committed=none, full=(flags.FULL_REFRESH or activity is none or first_seen is none or organizations is none or sessions is none)) %}
{#- a first-seen table from an older metricsmith (without moved_at) is rebuilt -#}
{%- if execute and first_seen is not none and not ns.full -%}
    {%- if 'moved_at' not in (adapter.get_columns_in_relation(first_seen) | map(attribute='name') | list) -%}
        {%- set ns.full = true -%}
    {%- endif -%}
{%- endif %}

{%- if execute and ledger is not none -%}
    {%- set last = run_query("select cast(high_watermark as text), metrics_timezone, cast(batch_started_at as text) from " ~ ledger ~ " order by finished_at desc limit 1").rows -%}
    {%- if last | length == 1 -%}
        {%- set ns.low = last[0][0] -%}
        {%- set ns.last_tz = last[0][1] -%}
        {%- set ns.committed = last[0][2] -%}
    {%- endif -%}
{%- endif -%}

{%- if execute and not ns.full and ns.last_tz is not none and ns.last_tz != tz -%}
    {{ exceptions.raise_compiler_error(
        "metrics_timezone changed from " ~ ns.last_tz ~ " to " ~ tz ~ " since the last rollup run: "
        ~ "every day moves, so rebuild with `metricsmith rollups run --full-refresh` "
        ~ "(or dbt run --full-refresh --select +monthly_metrics+ +weekly_metrics+)") }}
{%- endif -%}

with

arrivals as (

    select max(received_at) as max_received_at
    from {{ source('raw', 'events') }}
    {%- if not ns.full and ns.low is not none %}
    where received_at >= cast('{{ ns.low }}' as {{ metricsmith.type_timestamptz() }})
    {%- endif %}

),

batch as (

    select
        {{ dbt.current_timestamp() }} as batch_started_at,
        {% if ns.full or ns.low is none -%}
        cast(null as {{ metricsmith.type_timestamptz() }})
        {%- else -%}
        cast('{{ ns.low }}' as {{ metricsmith.type_timestamptz() }})
        {%- endif %} as low_watermark,
        -- never past the start of a transaction still open (its rows are not visible yet),
        -- minus a safety lag for clients that set received_at themselves
        -- (null when nothing arrived: the watermark then stays where it was)
        case when arrivals.max_received_at is not null then
        {{ dbt.dateadd('second', '-' ~ metricsmith.rollups_safety_lag_seconds(),
                       'least(arrivals.max_received_at, ' ~ metricsmith.open_transaction_horizon() ~ ')') }}
        end as candidate_watermark,
        -- batch_started_at of the last run the ledger recorded: changes made after it by runs
        -- that did not finish (or selected only some models) are not committed yet
        {% if ns.committed is none -%}
        cast(null as {{ metricsmith.type_timestamptz() }})
        {%- else -%}
        cast('{{ ns.committed }}' as {{ metricsmith.type_timestamptz() }})
        {%- endif %} as committed_batch_started_at,
        '{{ tz }}' as metrics_timezone,
        {{ 'true' if ns.full else 'false' }} as is_full_rebuild,
        {% if backfill[0] is not none -%}
        cast('{{ backfill[0] }}' as date) as backfill_start,
        cast('{{ backfill[1] }}' as date) as backfill_end
        {%- else -%}
        cast(null as date) as backfill_start,
        cast(null as date) as backfill_end
        {%- endif %}
    from arrivals

),

final as (

    select
        batch_started_at,
        low_watermark,
        -- the watermark never moves backwards; with no arrivals it stays where it was
        coalesce(greatest(candidate_watermark, low_watermark), low_watermark, candidate_watermark) as high_watermark,
        committed_batch_started_at,
        metrics_timezone,
        is_full_rebuild,
        backfill_start,
        backfill_end
    from batch

)

select * from final
