-- Growth in percent, the one definition (docs/rollups.md "Growth"): 100 * (current - previous)
-- / previous, rounded half away from zero to 4 decimals; NULL when previous is NULL or 0 (or
-- current is NULL). The difference is taken with 20 decimals before dividing: PostgreSQL keeps
-- only ~16 significant digits in a quotient otherwise, too few for large revenue sums. The dbt
-- marts (macro growth_pct), the custom metrics' growth_pct and the query layer's range
-- summaries all call it, so the rounding cannot differ between them. Immutable and a single
-- SQL expression: the planner inlines it.
create or replace function metricsmith.growth_pct(current numeric, previous numeric)
returns numeric
language sql
immutable
parallel safe
as $$
    select round(100 * cast(current - previous as numeric(65, 20)) / nullif(previous, 0), 4)
$$;

comment on function metricsmith.growth_pct(numeric, numeric) is
    '100 * (current - previous) / previous rounded to 4 decimals; NULL when previous is NULL or 0.';
