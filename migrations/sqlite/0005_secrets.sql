-- Issue 11: deployment secrets scp-pep generates itself when none is configured (the person_ref
-- key). One row per name, written once (INSERT … ON CONFLICT DO NOTHING), never updated.
CREATE TABLE pep_secrets (
    name       TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);
