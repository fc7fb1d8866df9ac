-- Policy documents (tenants, integrations, routes, deny rules) as canonical JSON, and the policy
-- version that every replica follows (LISTEN scp_pep_policy, plus polling).
CREATE TABLE policy_documents (
    kind       TEXT NOT NULL CHECK (kind IN ('tenant', 'integration', 'route', 'deny_rule')),
    id         TEXT NOT NULL,
    tenant_id  TEXT,
    doc        TEXT NOT NULL,
    source     TEXT NOT NULL CHECK (source IN ('file', 'api')),
    updated_at TEXT NOT NULL,
    PRIMARY KEY (kind, id)
);

CREATE TABLE policy_state (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    version     BIGINT NOT NULL,
    file_digest TEXT,
    updated_at  TEXT NOT NULL
);

INSERT INTO policy_state (id, version, file_digest, updated_at) VALUES (1, 0, NULL, '');
