-- Metric cache: every invalidation is recorded here (the fence) before it is sent to Redis.
-- A Redis server holds in <prefix>cache:fence the highest id it has applied; a process
-- trusts its L1 and Redis only after checking that no recorded invalidation is missing
-- there (and delivers the missing ones itself). See docs/cache.md.
create table if not exists metricsmith.cache_invalidations (
    id         bigint generated always as identity primary key,
    prefix     text not null,
    tags       text[] not null default '{}',
    patterns   text[] not null default '{}',
    keys       text[] not null default '{}',
    created_at timestamptz not null default now()
);

create index if not exists cache_invalidations_prefix_id on metricsmith.cache_invalidations (prefix, id);
