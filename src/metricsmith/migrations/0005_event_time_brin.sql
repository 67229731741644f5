-- Event times are indexed with BRIN instead of btree.
-- received_at is (nearly) monotonic in arrival order and occurred_at follows it closely,
-- so block-range summaries answer the incremental models' "received since the watermark"
-- and the backfills' "occurred in this range" scans, at a fraction of the load cost:
-- measured here, COPY into raw.events ran ~2x faster than with two btrees.
drop index if exists raw.events_occurred_at_idx;
drop index if exists raw.events_received_at_idx;
create index if not exists events_occurred_at_brin on raw.events using brin (occurred_at) with (pages_per_range = 16);
create index if not exists events_received_at_brin on raw.events using brin (received_at) with (pages_per_range = 16);
