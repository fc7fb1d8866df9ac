-- Tamper-evident audit log (INT-8-1, INT-8-2). One hash chain per (writer process, tenant);
-- signed checkpoints; purges only through a recorded, checkpointed truncation.
-- Append-only is enforced here too: no UPDATE anywhere, DELETE of records only when a recorded
-- purge covers them. (A database owner can drop triggers; the hash chain and the signed,
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
    prev_hash  BLOB NOT NULL,
    hash       BLOB NOT NULL,
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

CREATE TRIGGER audit_records_no_update BEFORE UPDATE ON audit_records
BEGIN SELECT RAISE(ABORT, 'audit_records is append-only'); END;
CREATE TRIGGER audit_records_no_delete BEFORE DELETE ON audit_records
WHEN NOT EXISTS (SELECT 1 FROM audit_purges p WHERE p.chain_id = OLD.chain_id AND p.upto_seq >= OLD.seq)
BEGIN SELECT RAISE(ABORT, 'audit_records is append-only (delete only through a recorded purge)'); END;
CREATE TRIGGER audit_chains_no_update BEFORE UPDATE ON audit_chains
BEGIN SELECT RAISE(ABORT, 'audit_chains is append-only'); END;
CREATE TRIGGER audit_chains_no_delete BEFORE DELETE ON audit_chains
BEGIN SELECT RAISE(ABORT, 'audit_chains is append-only'); END;
CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
BEGIN SELECT RAISE(ABORT, 'audit_checkpoints is append-only'); END;
CREATE TRIGGER audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints
BEGIN SELECT RAISE(ABORT, 'audit_checkpoints is append-only'); END;
CREATE TRIGGER audit_purges_no_update BEFORE UPDATE ON audit_purges
BEGIN SELECT RAISE(ABORT, 'audit_purges is append-only'); END;
CREATE TRIGGER audit_purges_no_delete BEFORE DELETE ON audit_purges
BEGIN SELECT RAISE(ABORT, 'audit_purges is append-only'); END;
