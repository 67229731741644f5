-- Custom metrics (issue 5): principals for access control, definitions, immutable versions.
create schema if not exists metricsmith;

create table if not exists metricsmith.organizations (
    organization_id text primary key,
    name text not null default '',
    created_at timestamptz not null default now()
);

create table if not exists metricsmith.users (
    user_id text primary key,
    organization_id text references metricsmith.organizations (organization_id),
    is_org_admin boolean not null default false,
    created_at timestamptz not null default now()
);

create table if not exists metricsmith.teams (
    team_id text primary key,
    organization_id text not null references metricsmith.organizations (organization_id),
    created_at timestamptz not null default now()
);

create table if not exists metricsmith.team_members (
    team_id text not null references metricsmith.teams (team_id) on delete cascade,
    user_id text not null references metricsmith.users (user_id) on delete cascade,
    primary key (team_id, user_id)
);

create table if not exists metricsmith.custom_metric_definitions (
    metric_id bigint generated always as identity primary key,
    slug text not null unique check (slug ~ '^[a-z][a-z0-9_]{0,49}$'),
    name text not null,
    description text not null default '',
    owner_id text not null references metricsmith.users (user_id),
    team_id text references metricsmith.teams (team_id),
    organization_id text references metricsmith.organizations (organization_id),
    visibility text not null check (visibility in ('PRIVATE', 'TEAM', 'ORGANIZATION', 'PUBLIC')),
    current_version int not null default 1,
    status text not null default 'active' check (status in ('active', 'archived')),
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    archived_at timestamptz,
    check (visibility <> 'TEAM' or team_id is not null)
);

create table if not exists metricsmith.custom_metric_versions (
    metric_id bigint not null references metricsmith.custom_metric_definitions (metric_id),
    version int not null check (version >= 1),
    spec jsonb not null,
    compiled_sql text not null,
    estimated_cost double precision,
    estimated_rows double precision,
    created_by text not null references metricsmith.users (user_id),
    created_at timestamptz not null default now(),
    primary key (metric_id, version)
);

-- A version's spec never changes: refuse updates and deletes of version rows.
create or replace function metricsmith.custom_metric_versions_immutable() returns trigger
language plpgsql as $$
begin
    raise exception 'custom metric versions are immutable (metric %, version %)', old.metric_id, old.version;
end;
$$;

drop trigger if exists custom_metric_versions_immutable on metricsmith.custom_metric_versions;
create trigger custom_metric_versions_immutable
    before update or delete on metricsmith.custom_metric_versions
    for each row execute function metricsmith.custom_metric_versions_immutable();
