-- Consent registry (SEC-09, CON-*). Versions are immutable (CON-7): consent_versions is
-- append-only, enforced by triggers. consent_heads points at the newest version of the newest
-- consent per (tenant, person, vertical, purpose); it is what enforcement reads.
CREATE TABLE consent_persons (
    tenant_id    TEXT NOT NULL,
    person_id    TEXT NOT NULL,
    verification TEXT NOT NULL CHECK (verification IN ('verified', 'provisional')),
    status       TEXT NOT NULL CHECK (status IN ('active', 'inactive', 'archived')),
    -- JSON array of contact channel kinds the person has ("email", "sms"); the addresses stay in
    -- SCP's person registry.
    channels     TEXT NOT NULL,
    updated_ms   BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, person_id)
);

CREATE TABLE consent_versions (
    consent_id     TEXT NOT NULL,
    version        BIGINT NOT NULL,
    version_id     TEXT NOT NULL UNIQUE,
    tenant_id      TEXT NOT NULL,
    person_id      TEXT NOT NULL,
    vertical_id    TEXT NOT NULL,
    purpose        TEXT NOT NULL,
    status         TEXT NOT NULL CHECK (status IN ('pending', 'active', 'rejected', 'withdrawn')),
    active_from_ms  BIGINT NOT NULL,
    active_until_ms BIGINT,
    grace_until_ms  BIGINT,
    capture_mode   TEXT NOT NULL CHECK (capture_mode IN ('online', 'offline')),
    evidence_attachment_ids TEXT NOT NULL,
    verification_document_attachment_id TEXT,
    identity_verification TEXT,
    fields         TEXT,
    reason_code    TEXT,
    reason_text    TEXT,
    change         TEXT NOT NULL,
    captured_by    TEXT NOT NULL,
    captured_at_ms BIGINT NOT NULL,
    changed_by     TEXT NOT NULL,
    changed_at_ms  BIGINT NOT NULL,
    PRIMARY KEY (consent_id, version)
);
CREATE INDEX consent_versions_person ON consent_versions (tenant_id, person_id);

CREATE TABLE consent_heads (
    tenant_id       TEXT NOT NULL,
    person_id       TEXT NOT NULL,
    vertical_id     TEXT NOT NULL,
    purpose         TEXT NOT NULL,
    consent_id      TEXT NOT NULL,
    version         BIGINT NOT NULL,
    status          TEXT NOT NULL,
    -- Copies of what enforcement needs, so a cache miss reads one narrow row per purpose.
    active_from_ms  BIGINT NOT NULL,
    active_until_ms BIGINT,
    grace_until_ms  BIGINT,
    fields          TEXT,
    changed_at_ms   BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, person_id, vertical_id, purpose)
);
CREATE UNIQUE INDEX consent_heads_consent ON consent_heads (consent_id);
CREATE INDEX consent_heads_expiry ON consent_heads (status, active_until_ms);
CREATE INDEX consent_heads_vertical ON consent_heads (tenant_id, vertical_id, status, changed_at_ms);
CREATE INDEX consent_heads_grace ON consent_heads (tenant_id, vertical_id, grace_until_ms);

-- The change feed of the consent cache: one row per written key; replicas follow `seq`.
CREATE TABLE consent_changes (
    seq         BIGSERIAL PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    person_id   TEXT NOT NULL,
    vertical_id TEXT NOT NULL,
    time_ms     BIGINT NOT NULL
);

-- Which integrations received data of which person (by reference) in which vertical: the input of
-- frozen-share events after a withdrawal (INT-4.3-3).
CREATE TABLE consent_shares (
    tenant_id      TEXT NOT NULL,
    person_ref     TEXT NOT NULL,
    vertical_id    TEXT NOT NULL,
    integration_id TEXT NOT NULL,
    first_ms       BIGINT NOT NULL,
    last_ms        BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, person_ref, vertical_id, integration_id)
);

-- Refresh epochs of aggregated outputs (INT-4.3-4, CON-23): the producer declares up to which
-- instant its aggregate excludes withdrawn consent.
CREATE TABLE consent_aggregate_epochs (
    tenant_id  TEXT NOT NULL,
    route_id   TEXT NOT NULL,
    epoch_ms   BIGINT NOT NULL,
    updated_by TEXT NOT NULL,
    updated_ms BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, route_id)
);

-- Notification outbox (CON-33, CON-34, CON-36): reminders, expiry notices, case suspensions.
CREATE TABLE consent_outbox (
    id              TEXT PRIMARY KEY,
    dedup_key       TEXT NOT NULL UNIQUE,
    tenant_id       TEXT NOT NULL,
    person_id       TEXT NOT NULL,
    consent_id      TEXT NOT NULL,
    consent_version BIGINT NOT NULL,
    vertical_id     TEXT NOT NULL,
    kind            TEXT NOT NULL CHECK (kind IN ('reminder', 'expiry', 'case_suspension')),
    days_before     INTEGER,
    channel         TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'sent', 'failed', 'suppressed')),
    reason          TEXT,
    attempts        INTEGER NOT NULL,
    next_attempt_ms BIGINT NOT NULL,
    created_ms      BIGINT NOT NULL,
    updated_ms      BIGINT NOT NULL
);
CREATE INDEX consent_outbox_due ON consent_outbox (status, next_attempt_ms);

-- Every delivery attempt, logged separately (CON-34).
CREATE TABLE consent_deliveries (
    outbox_id  TEXT NOT NULL,
    attempt    INTEGER NOT NULL,
    status     TEXT NOT NULL CHECK (status IN ('sent', 'failed')),
    error      TEXT,
    time_ms    BIGINT NOT NULL,
    PRIMARY KEY (outbox_id, attempt)
);

CREATE FUNCTION consent_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only (% refused)', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;
CREATE TRIGGER consent_versions_append_only BEFORE UPDATE OR DELETE ON consent_versions
    FOR EACH ROW EXECUTE FUNCTION consent_append_only();
CREATE TRIGGER consent_versions_no_truncate BEFORE TRUNCATE ON consent_versions
    FOR EACH STATEMENT EXECUTE FUNCTION consent_append_only();
CREATE TRIGGER consent_deliveries_append_only BEFORE UPDATE OR DELETE ON consent_deliveries
    FOR EACH ROW EXECUTE FUNCTION consent_append_only();
