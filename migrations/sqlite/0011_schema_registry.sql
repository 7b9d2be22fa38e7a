-- The schema registry (issue 13): versions registered over the API, each type's compatibility
-- mode, and deprecations (of API and directory versions alike). Every instance on one database
-- sees the same set: it polls `schema_revision`, which every change raises in its transaction.
create table schema_types (
    event_type text primary key,
    compatibility text not null,
    updated_at bigint not null
);

create table schema_versions (
    event_type text not null,
    version text not null,
    version_number bigint not null,
    document text not null,
    fingerprint text not null,
    registered_at bigint not null,
    primary key (event_type, version)
);

create table schema_deprecations (
    event_type text not null,
    version text not null,
    deprecated_at bigint not null,
    primary key (event_type, version)
);

create table schema_revision (
    id integer primary key check (id = 1),
    revision bigint not null
);

insert into schema_revision (id, revision) values (1, 0);
