-- API keys of the HTTP API (metricsmith.api.keys): the key is shown once; only its id, a salt
-- and the scrypt hash are kept, with the principal (a custom-metrics user), expiry and revocation.
create table if not exists metricsmith.api_keys (
    key_id text primary key,
    name text not null default '',
    principal text not null references metricsmith.users (user_id) on delete cascade,
    salt bytea not null,
    key_hash bytea not null,
    created_at timestamptz not null default now(),
    last_used_at timestamptz,
    expires_at timestamptz,
    revoked_at timestamptz
);
