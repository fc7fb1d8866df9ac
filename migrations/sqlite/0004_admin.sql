-- Admin API (issue 5): every admin resource is a versioned document in policy_documents, one
-- table for the file loader and the API alike. `version` is the resource version behind ETag /
-- If-Match (ADM-8); `status` is its lifecycle state; every write appends the new version to the
-- append-only policy_document_versions (role, pack and policy-change versions, ADM-6).
-- SQLite cannot alter a CHECK constraint: the table is rebuilt.
CREATE TABLE policy_documents_v4 (
    kind       TEXT NOT NULL CHECK (kind IN ('tenant', 'integration', 'route', 'deny_rule', 'policy_pack', 'policy_change', 'role', 'group', 'group_member', 'role_assignment', 'webhook', 'schema_mapping', 'credential')),
    id         TEXT NOT NULL,
    tenant_id  TEXT,
    doc        TEXT NOT NULL,
    source     TEXT NOT NULL CHECK (source IN ('file', 'api')),
    updated_at TEXT NOT NULL,
    version    BIGINT NOT NULL DEFAULT 1,
    status     TEXT,
    created_at TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (kind, id)
);
INSERT INTO policy_documents_v4 (kind, id, tenant_id, doc, source, updated_at, version, status, created_at)
    SELECT kind, id, tenant_id, doc, source, updated_at, 1, NULL, updated_at FROM policy_documents;
DROP TABLE policy_documents;
ALTER TABLE policy_documents_v4 RENAME TO policy_documents;
CREATE INDEX policy_documents_kind_tenant ON policy_documents (kind, tenant_id);

CREATE TABLE policy_document_versions (
    kind     TEXT NOT NULL,
    id       TEXT NOT NULL,
    version  BIGINT NOT NULL,
    doc      TEXT,            -- NULL: the document was deleted
    status   TEXT,
    source   TEXT NOT NULL,
    actor    TEXT NOT NULL,
    time     TEXT NOT NULL,
    PRIMARY KEY (kind, id, version)
);
CREATE TRIGGER policy_document_versions_no_update BEFORE UPDATE ON policy_document_versions
BEGIN SELECT RAISE(ABORT, 'policy_document_versions is append-only'); END;
CREATE TRIGGER policy_document_versions_no_delete BEFORE DELETE ON policy_document_versions
BEGIN SELECT RAISE(ABORT, 'policy_document_versions is append-only'); END;

-- Runtime partner health (ONB-7, ONB-AUD-4, ONB-LOG-01): written often, so kept out of the
-- versioned documents (a sync must not bump the policy version on every replica).
CREATE TABLE integration_activity (
    integration_id      TEXT PRIMARY KEY,
    last_success_ms     BIGINT,
    last_handshake_ms   BIGINT,
    health              TEXT NOT NULL DEFAULT 'unknown',
    webhook_failures    BIGINT NOT NULL DEFAULT 0,
    updated_ms          BIGINT NOT NULL
);

-- The consent change feed is pruned by age once a minute on every replica: index the age.
CREATE INDEX consent_changes_time ON consent_changes (time_ms);
