{#-
    One row describing this rollup run: which arrivals it covers (inserted_at >= low_watermark:
    the server's insertion time, never the client-supplied received_at) and the watermark the
    next run starts from. See docs/rollups.md.
-#}
{{ config(materialized='table') }}

{%- set tz = metricsmith.metrics_timezone() %}
{%- set backfill = metricsmith.backfill_range() %}
{%- set ledger = metricsmith.rollup_relation('int_rollup_ledger') %}
{%- set activity = metricsmith.rollup_relation('int_daily_user_activity') %}
{%- set first_seen = metricsmith.rollup_relation('int_user_first_seen') %}
{%- set organizations = metricsmith.rollup_relation('int_daily_organization_activity') %}
{%- set sessions = metricsmith.rollup_relation('int_daily_session_activity') %}
{%- set missing = activity is none or first_seen is none or organizations is none or sessions is none %}
{%- set ns = namespace(low=none, last_tz=none, committed=none, full=(flags.FULL_REFRESH or missing)) %}
{#- a first-seen table from an older metricsmith (without moved_at) is rebuilt, and so are
    day-activity tables without the "first in" counts of a grain declared since they were built -#}
{%- if execute and first_seen is not none and not ns.full -%}
    {%- if 'moved_at' not in (adapter.get_columns_in_relation(first_seen) | map(attribute='name') | list) -%}
        {%- set ns.full = true -%}
    {%- endif -%}
    {%- for relation, prefix, breakdowns in [(activity, 'users', true), (organizations, 'organizations', false),
                                             (sessions, 'sessions', false)] -%}
        {%- set built = adapter.get_columns_in_relation(relation) | map(attribute='name') | list -%}
        {%- for w in metricsmith.first_activity_windows(breakdowns) -%}
            {%- if (prefix ~ '_first_in_' ~ w.suffix) not in built -%}{%- set ns.full = true -%}{%- endif -%}
        {%- endfor -%}
    {%- endfor -%}
{%- endif %}

{%- if execute and ledger is not none -%}
    {#- a ledger of an older version (watermarks on received_at) cannot be continued: rebuild once -#}
    {%- set basis = "watermark_column" if 'watermark_column' in (adapter.get_columns_in_relation(ledger) | map(attribute='name') | list) else "cast(null as " ~ dbt.type_string() ~ ")" -%}
    {%- set last = run_query("select cast(high_watermark as " ~ dbt.type_string() ~ "), metrics_timezone, cast(batch_started_at as " ~ dbt.type_string() ~ "), " ~ basis ~ " from " ~ ledger ~ " order by finished_at desc limit 1").rows -%}
    {%- if last | length == 1 -%}
        {%- set ns.low = last[0][0] -%}
        {%- set ns.last_tz = last[0][1] -%}
        {%- set ns.committed = last[0][2] -%}
        {%- if last[0][3] != 'inserted_at' -%}
            {%- set ns.full = true -%}
        {%- endif -%}
    {%- endif -%}
{%- endif -%}

{#- the open-transaction horizon is read in its own statement, before the statement below takes
    its snapshot: a transaction that commits in between is then either visible below or
    counted in the horizon (a row's inserted_at is never before its transaction's start) -#}
{%- set horizon = metricsmith.open_transaction_horizon() -%}
{%- if execute -%}
    {%- set horizon = "cast('" ~ run_query("select cast(" ~ metricsmith.open_transaction_horizon() ~ " as " ~ dbt.type_string() ~ ")").rows[0][0]
                      ~ "' as " ~ metricsmith.type_timestamptz() ~ ")" -%}
{%- endif -%}

{%- if execute and not ns.full and ns.last_tz is not none and ns.last_tz != tz -%}
    {{ exceptions.raise_compiler_error(
        "metrics_timezone changed from " ~ ns.last_tz ~ " to " ~ tz ~ " since the last rollup run: "
        ~ "every day moves, so rebuild with `metricsmith rollups run --full-refresh` "
        ~ "(or dbt run --full-refresh --select +int_rollup_ledger)") }}
{%- endif -%}

with

batch as (

    select
        {{ dbt.current_timestamp() }} as batch_started_at,
        {% if ns.full or ns.low is none -%}
        cast(null as {{ metricsmith.type_timestamptz() }})
        {%- else -%}
        cast('{{ ns.low }}' as {{ metricsmith.type_timestamptz() }})
        {%- endif %} as low_watermark,
        -- every row not visible now has an inserted_at (server clock) no earlier than the
        -- start of its transaction: the oldest transaction still open, read before this
        -- statement's snapshot (or now), is exact; minus a safety lag for server clock steps.
        -- Rows inserted before it are all visible to this run, whatever their received_at.
        {{ dbt.dateadd('second', '-' ~ metricsmith.rollups_safety_lag_seconds(), horizon) }} as candidate_watermark,
        -- batch_started_at of the last run the ledger recorded: changes made after it by runs
        -- that did not finish (or selected only some models) are not committed yet
        {% if ns.committed is none -%}
        cast(null as {{ metricsmith.type_timestamptz() }})
        {%- else -%}
        cast('{{ ns.committed }}' as {{ metricsmith.type_timestamptz() }})
        {%- endif %} as committed_batch_started_at,
        '{{ tz }}' as metrics_timezone,
        'inserted_at' as watermark_column,
        {{ 'true' if ns.full else 'false' }} as is_full_rebuild,
        {% if backfill[0] is not none -%}
        cast('{{ backfill[0] }}' as date) as backfill_start,
        cast('{{ backfill[1] }}' as date) as backfill_end
        {%- else -%}
        cast(null as date) as backfill_start,
        cast(null as date) as backfill_end
        {%- endif %}

),

final as (

    select
        batch_started_at,
        low_watermark,
        -- the watermark never moves backwards
        coalesce(greatest(candidate_watermark, low_watermark), low_watermark, candidate_watermark) as high_watermark,
        committed_batch_started_at,
        metrics_timezone,
        watermark_column,
        is_full_rebuild,
        backfill_start,
        backfill_end
    from batch

)

select * from final
