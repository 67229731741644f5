-- Change tracking of the rollups (docs/rollups.md): when a row reached raw.events, assigned by
-- the server, whatever received_at (client-supplied, may lie years in the past or the future)
-- says. No loader sets it (they COPY / insert named columns); never set it yourself.
-- Existing rows get the migration time (a constant default: no table rewrite); the ledger of
-- an older version then triggers one full rebuild of the rollups.
alter table raw.events add column if not exists inserted_at timestamptz not null default now();
alter table raw.events alter column inserted_at set default clock_timestamp();

comment on column raw.events.inserted_at is
    'When the row was inserted (server clock, default clock_timestamp()); drives incremental rollups. Never set by loaders.';

-- rows are appended in insertion order: block-range summaries answer "inserted since the watermark"
create index if not exists events_inserted_at_brin on raw.events using brin (inserted_at) with (pages_per_range = 16);
