-- Quarantine is idempotent per (source, line content): re-loading a file does not record its
-- bad lines again. content_hash is sha256 of raw_text, set by a trigger for every writer.
alter table raw.events_quarantine add column if not exists content_hash bytea;

update raw.events_quarantine
set content_hash = sha256(convert_to(raw_text, 'UTF8'))
where content_hash is null;

-- earlier versions quarantined a re-loaded file's bad lines once per load: keep the first row
-- of each (source, line) - the later ones are exact repeats (same source, same text)
delete from raw.events_quarantine later
using raw.events_quarantine first
where later.source = first.source
  and later.content_hash = first.content_hash
  and later.quarantine_id > first.quarantine_id;

alter table raw.events_quarantine alter column content_hash set not null;

create or replace function raw.events_quarantine_content_hash() returns trigger
language plpgsql as $$
begin
    new.content_hash := sha256(convert_to(new.raw_text, 'UTF8'));
    return new;
end
$$;

drop trigger if exists events_quarantine_content_hash on raw.events_quarantine;
create trigger events_quarantine_content_hash
    before insert or update of raw_text on raw.events_quarantine
    for each row execute function raw.events_quarantine_content_hash();

create unique index if not exists events_quarantine_source_line_uq
    on raw.events_quarantine (source, content_hash);

comment on column raw.events_quarantine.content_hash is
    'sha256 of raw_text (set by a trigger): one row per (source, line content), so re-loads do not quarantine a line twice.';
