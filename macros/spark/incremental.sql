{#-
    The incremental materialization on Spark (Parquet tables, no Delta: no MERGE, no DELETE).

    - `delete+insert` by a date key (metric_date, week_start, month_start, quarter_start): the
      table is partitioned by the key's calendar month (`partition_month`) and a run is an
      `insert overwrite` of exactly the partitions its new rows fall in (dynamic partition
      overwrite), holding the new rows and the partitions' other rows (delete+insert).
    - `delete+insert` by another key (user_id): the kept rows (anti join on the key) plus the new
      ones replace the table.
    - `append`: insert into.
    The query is first written to a staging table, so a model may read `{{ this }}` (the period
    marts do) while its partitions are rewritten.
-#}
{% materialization incremental, adapter='spark' -%}
    {%- set strategy = config.get('incremental_strategy') or 'append' -%}
    {%- set unique_key = config.get('unique_key') -%}
    {%- set on_schema_change = incremental_validate_on_schema_change(config.get('on_schema_change'), default='ignore') -%}
    {%- set target = this.incorporate(type='table') -%}
    {%- set existing = load_cached_relation(this) -%}
    {%- set staging = api.Relation.create(schema=this.schema, identifier=this.identifier ~ '__ms_stage', type='table') -%}
    {%- set kept = api.Relation.create(schema=this.schema, identifier=this.identifier ~ '__ms_kept', type='table') -%}
    {%- if strategy not in ['append', 'delete+insert'] -%}
        {{ exceptions.raise_compiler_error("metricsmith's Spark incremental materialization supports append and delete+insert, not " ~ strategy) }}
    {%- endif -%}

    {{ run_hooks(pre_hooks) }}
    {#- leftovers of a run that stopped half-way (dbt's relation cache lists the schema's tables at
        the start of the run, as dbt's own materializations find their intermediate relations) -#}
    {%- for leftover in [staging, kept] if load_cached_relation(leftover) is not none -%}
        {%- do adapter.drop_relation(leftover) -%}
    {%- endfor -%}
    {%- set ns_kept = namespace(created=false) -%}
    {%- call statement('stage') -%}
        create table {{ staging }} using parquet as {{ sql }}
    {%- endcall -%}
    {%- set columns = adapter.get_columns_in_relation(staging) -%}
    {%- do metricsmith.spark_check_contract(columns) -%}
    {%- set names = columns | map(attribute='name') | list -%}
    {%- set ns = namespace(key=none) -%}
    {%- if strategy == 'delete+insert' and unique_key is string -%}
        {%- for c in columns if c.name == unique_key and c.dtype | lower == 'date' -%}
            {%- set ns.key = unique_key -%}
        {%- endfor -%}
    {%- endif -%}
    {%- set part = metricsmith.spark_partition_column() -%}
    {%- set month_of_key = "cast(trunc(" ~ ns.key ~ ", 'MM') as date)" -%}

    {%- if existing is none or should_full_refresh() or existing.type != 'table' -%}
        {%- if existing is not none -%}{%- do adapter.drop_relation(existing) -%}{%- endif -%}
        {%- call statement('main') -%}
            create table {{ target }} using parquet
            {%- if ns.key %} partitioned by ({{ part }}){% endif %}
            as select {{ names | join(', ') }}{% if ns.key %}, {{ month_of_key }} as {{ part }}{% endif %}
            from {{ staging }}
        {%- endcall -%}
    {%- else -%}
        {%- set target_names = metricsmith.spark_sync_columns(target, columns, on_schema_change) -%}
        {%- set select_list = [] -%}
        {%- for n in target_names -%}
            {%- do select_list.append(n if n in names else (month_of_key if n == part else 'null') ~ ' as ' ~ n) -%}
        {%- endfor -%}
        {%- if strategy == 'append' -%}
            {%- call statement('main') -%}
                insert into table {{ target }} select {{ select_list | join(', ') }} from {{ staging }}
            {%- endcall -%}
        {%- else -%}
            {%- set keys = [unique_key] if unique_key is string else unique_key -%}
            {#- the rows to keep: of the partitions the new rows fall in (date key) or of the whole
                table (other keys), those whose key has no new row -#}
            {%- set ns_kept.created = true -%}
            {%- call statement('kept') -%}
                create table {{ kept }} using parquet as
                select {{ target_names | join(', ') }} from {{ target }} as t
                where
                    {%- if ns.key %} t.{{ part }} in (select distinct {{ month_of_key }} from {{ staging }}) and{% endif %}
                    not exists (
                        select 1 from {{ staging }} as s
                        where {% for k in keys %}s.{{ k }} = t.{{ k }}{{ ' and ' if not loop.last }}{% endfor %}
                    )
                union all
                select {{ select_list | join(', ') }} from {{ staging }}
            {%- endcall -%}
            {%- call statement('main') -%}
                insert overwrite table {{ target }}{% if ns.key %} partition ({{ part }}){% endif %}
                select {{ target_names | join(', ') }} from {{ kept }}
            {%- endcall -%}
        {%- endif -%}
    {%- endif -%}
    {%- do adapter.drop_relation(staging) -%}
    {%- if ns_kept.created -%}{%- do adapter.drop_relation(kept) -%}{%- endif -%}
    {{ run_hooks(post_hooks) }}
    {%- do persist_docs(target, model) -%}
    {{ return({'relations': [target]}) }}
{%- endmaterialization %}


{#- the partition column of the tables keyed by a date: the calendar month of the key, so a
    table holds one partition per month (a day table of a year: 12 partitions, not 365) -#}
{% macro spark_partition_column() -%}
    {{ return('partition_month') }}
{%- endmacro %}


{#- the target's columns after the schema check: columns new in the query are added
    (on_schema_change append_new_columns / sync_all_columns) or refused (fail); columns the query
    no longer has are written as null -#}
{% macro spark_sync_columns(target, columns, on_schema_change) -%}
    {%- set existing = adapter.get_columns_in_relation(target) -%}
    {%- set existing_names = existing | map(attribute='name') | list -%}
    {%- set new = [] -%}
    {%- for c in columns if c.name not in existing_names -%}{%- do new.append(c) -%}{%- endfor -%}
    {%- if new and on_schema_change == 'fail' -%}
        {{ exceptions.raise_compiler_error("the schema of " ~ target ~ " changed (new columns: " ~ (new | map(attribute='name') | join(', ')) ~ "); on_schema_change is fail: rebuild with --full-refresh") }}
    {%- endif -%}
    {%- if new and on_schema_change in ['append_new_columns', 'sync_all_columns'] -%}
        {%- call statement('add_columns') -%}
            alter table {{ target }} add columns ({% for c in new %}{{ c.name }} {{ c.dtype }}{{ ', ' if not loop.last }}{% endfor %})
        {%- endcall -%}
        {%- set existing = adapter.get_columns_in_relation(target) -%}
    {%- endif -%}
    {{ return(existing | map(attribute='name') | list) }}
{%- endmacro %}


{#- the model's contract, by name and by type (the contract's PostgreSQL types read as their
    Spark equivalents: numeric -> decimal, jsonb -> string (JSON text), text -> string,
    integer -> int) -#}
{% macro spark_check_contract(columns) -%}
    {%- set contract = config.get('contract') -%}
    {%- if contract is none or not contract.enforced -%}{{ return(none) }}{%- endif -%}
    {%- set built = {} -%}
    {%- for c in columns -%}{%- do built.update({c.name | lower: c.dtype | lower | replace(' ', '')}) -%}{%- endfor -%}
    {%- set problems = [] -%}
    {%- for name, col in model.columns.items() if col.data_type -%}
        {%- set declared = col.data_type | lower | replace(' ', '') | replace('numeric', 'decimal')
            | replace('jsonb', 'string') | replace('text', 'string') | replace('integer', 'int') -%}
        {%- set declared = 'decimal(38,4)' if declared in ['decimal(42,4)', 'decimal(46,4)'] else declared -%}
        {%- if name | lower not in built -%}
            {%- do problems.append(name ~ ' is missing') -%}
        {%- elif built[name | lower] != declared -%}
            {%- do problems.append(name ~ ' is ' ~ built[name | lower] ~ ', the contract says ' ~ col.data_type) -%}
        {%- endif -%}
    {%- endfor -%}
    {%- if problems -%}
        {{ exceptions.raise_compiler_error("contract of " ~ model.name ~ " on Spark: " ~ problems | join('; ')) }}
    {%- endif -%}
{%- endmacro %}
