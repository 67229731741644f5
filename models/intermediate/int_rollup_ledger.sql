{#-
    Append-only ledger of finished rollup runs. Runs last (after the marts of every declared grain); its newest
    high_watermark is where the next run starts reading arrivals. Never rebuilt by
    --full-refresh, so the history survives rebuilds.
-#}
{{
    config(
        materialized='incremental',
        incremental_strategy='append',
        full_refresh=false,
        on_schema_change='append_new_columns',
    )
}}
{%- for g in metricsmith.grains() %}
-- depends_on: {{ ref(g.model) }}
{%- endfor %}

{#- Advance the watermark only when every table that consumes the batch was built in this
    invocation (e.g. `dbt run --select +weekly_metrics+` must not skip monthly's changes). -#}
{%- set consumers = ['int_user_first_seen', 'int_daily_user_activity', 'int_daily_organization_activity',
                     'int_daily_session_activity'] + (metricsmith.grains() | map(attribute='model') | list) %}
{%- set ns = namespace(missing=[]) %}
{%- if execute %}
    {%- for name in consumers %}
        {%- if ('model.metricsmith.' ~ name) not in selected_resources %}
            {%- do ns.missing.append(name) %}
        {%- endif %}
    {%- endfor %}
    {%- if ns.missing %}
        {%- do log("int_rollup_ledger: not advancing the watermark, these rollup models were not selected: " ~ ns.missing | join(', ') ~ " (select +int_rollup_ledger)", info=true) %}
    {%- endif %}
{%- endif %}

with

batch as (

    select * from {{ ref('int_rollup_batch') }}

),

changed as (

    select
        count(*) as changed_days,
        min(metric_date) as first_changed_day,
        max(metric_date) as last_changed_day
    from {{ ref('int_changed_days') }}

),

final as (

    select
        batch.batch_started_at,
        {{ dbt.current_timestamp() }} as finished_at,
        batch.low_watermark,
        batch.high_watermark,
        batch.metrics_timezone,
        batch.is_full_rebuild,
        batch.watermark_column,
        batch.backfill_start,
        batch.backfill_end,
        changed.changed_days,
        changed.first_changed_day,
        changed.last_changed_day
    from batch
    cross join changed
    where {{ 'false' if ns.missing else 'true' }}

)

select * from final
