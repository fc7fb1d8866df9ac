-- Tamper-evident audit log (INT-8-1, INT-8-2). One hash chain per (writer process, tenant);
-- signed checkpoints; purges only through a recorded, checkpointed truncation.
-- Append-only is enforced here too: no UPDATE or TRUNCATE anywhere, DELETE of records only when a
-- recorded purge covers them. (A superuser can drop triggers; the hash chain and the signed,
-- externally published checkpoints are what make that detectable.)
CREATE TABLE audit_chains (
    chain_id    TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    writer      TEXT NOT NULL,
    created_ms  BIGINT NOT NULL,
    key_id      TEXT NOT NULL,
    -- The checkpoint verifier key of the writer (`<name>+<id>+<base64>`): a convenience copy of
    -- what the chain_start record states. Verifiers should pin the published key instead.
    verifier_key TEXT NOT NULL
);
CREATE INDEX audit_chains_writer ON audit_chains (writer, tenant_id, created_ms);

CREATE TABLE audit_records (
    chain_id   TEXT NOT NULL,
    seq        BIGINT NOT NULL,
    tenant_id  TEXT NOT NULL,
    time_ms    BIGINT NOT NULL,
    kind       TEXT NOT NULL,
    event_id   TEXT NOT NULL,
    prev_hash  BYTEA NOT NULL,
    hash       BYTEA NOT NULL,
    body       TEXT NOT NULL,
    PRIMARY KEY (chain_id, seq)
);
CREATE INDEX audit_records_tenant_time ON audit_records (tenant_id, time_ms);
CREATE INDEX audit_records_event ON audit_records (event_id);

CREATE TABLE audit_checkpoints (
    chain_id  TEXT NOT NULL,
    size      BIGINT NOT NULL,
    time_ms   BIGINT NOT NULL,
    note      TEXT NOT NULL,
    PRIMARY KEY (chain_id, size)
);

CREATE TABLE audit_purges (
    chain_id   TEXT NOT NULL,
    upto_seq   BIGINT NOT NULL,
    time_ms    BIGINT NOT NULL,
    reason     TEXT NOT NULL,
    PRIMARY KEY (chain_id, upto_seq)
);

CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND TG_TABLE_NAME = 'audit_records' THEN
        -- Nested: OLD.seq exists only on audit_records.
        IF EXISTS (
            SELECT 1 FROM audit_purges p WHERE p.chain_id = OLD.chain_id AND p.upto_seq >= OLD.seq
        ) THEN
            RETURN OLD;
        END IF;
    END IF;
    RAISE EXCEPTION '% is append-only (% refused)', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER audit_records_append_only BEFORE UPDATE OR DELETE ON audit_records
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_chains_append_only BEFORE UPDATE OR DELETE ON audit_chains
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_checkpoints_append_only BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_purges_append_only BEFORE UPDATE OR DELETE ON audit_purges
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_records_no_truncate BEFORE TRUNCATE ON audit_records
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_chains_no_truncate BEFORE TRUNCATE ON audit_chains
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_purges_no_truncate BEFORE TRUNCATE ON audit_purges
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
