-- Admin API (issue 5): every admin resource is a versioned document in policy_documents, one
-- table for the file loader and the API alike. `version` is the resource version behind ETag /
-- If-Match (ADM-8); `status` is its lifecycle state; every write appends the new version to the
-- append-only policy_document_versions (role, pack and policy-change versions, ADM-6).
ALTER TABLE policy_documents DROP CONSTRAINT IF EXISTS policy_documents_kind_check;
ALTER TABLE policy_documents ADD CONSTRAINT policy_documents_kind_check CHECK (kind IN ('tenant', 'integration', 'route', 'deny_rule', 'policy_pack', 'policy_change', 'role', 'group', 'group_member', 'role_assignment', 'webhook', 'schema_mapping', 'credential'));
ALTER TABLE policy_documents ADD COLUMN version BIGINT NOT NULL DEFAULT 1;
ALTER TABLE policy_documents ADD COLUMN status TEXT;
ALTER TABLE policy_documents ADD COLUMN created_at TEXT NOT NULL DEFAULT '';
UPDATE policy_documents SET created_at = updated_at;
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
CREATE FUNCTION policy_document_versions_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only (% refused)', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;
CREATE TRIGGER policy_document_versions_append_only BEFORE UPDATE OR DELETE ON policy_document_versions
    FOR EACH ROW EXECUTE FUNCTION policy_document_versions_append_only();
CREATE TRIGGER policy_document_versions_no_truncate BEFORE TRUNCATE ON policy_document_versions
    FOR EACH STATEMENT EXECUTE FUNCTION policy_document_versions_append_only();

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
