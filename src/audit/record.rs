//! Audit record bodies (canonical JSON, RFC 8785) and the chain hash (INT-8-1, INT-8-2).
//!
//! A record is `(chain_id, seq, prev_hash, hash, body)`. `body` is the canonical JSON of one
//! decision or event: object keys sorted, no insignificant whitespace, integers only, strings
//! escaped as RFC 8785 prescribes. Decision bodies are written by a struct whose fields are
//! declared in sorted order (serde_json then emits exactly the RFC 8785 form; a property test
//! checks it against `serde_jcs`); event bodies, whose `detail` is free-form, go through `serde_jcs`.
//!
//! ```text
//! genesis(chain)   = SHA-256("scp-pep/audit-genesis/v1\n" ‖ chain_id)
//! hash(seq, prev, body) = SHA-256("scp-pep/audit-record/v1\n" ‖ u64be(seq) ‖ prev (32 bytes) ‖ body)
//! ```
//! Sequence numbers start at 1; record 1's `prev_hash` is the chain's genesis hash, which binds
//! every record to its chain id.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::decision::{Decision, Incident, Outcome, Stage};

/// A SHA-256 digest, 32 bytes.
pub type Hash = [u8; 32];

/// The tenant of records that no tenant can be attributed to (requests denied before the token
/// named one). Tenant ids never start with `_`, so it cannot collide with a real tenant.
pub const UNATTRIBUTED: &str = "_";

const GENESIS_DOMAIN: &[u8] = b"scp-pep/audit-genesis/v1\n";
const RECORD_DOMAIN: &[u8] = b"scp-pep/audit-record/v1\n";

/// The `prev_hash` of record 1 of `chain_id`.
pub fn genesis_hash(chain_id: &str) -> Hash {
    let mut h = Sha256::new();
    h.update(GENESIS_DOMAIN);
    h.update(chain_id.as_bytes());
    h.finalize().into()
}

/// The hash of record `seq` whose predecessor hashed to `prev` and whose canonical body is `body`.
pub fn record_hash(seq: u64, prev: &Hash, body: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update(RECORD_DOMAIN);
    h.update(seq.to_be_bytes());
    h.update(prev);
    h.update(body);
    h.finalize().into()
}

/// Kinds of audit records. The serialized names are the `kind` field of the body and the
/// `kind` column of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    /// One partner request decided by the pipeline (INT-8-1).
    Decision,
    /// A change made through the admin API (ADM-2).
    AdminChange,
    /// Credential lifecycle (ONB-AUD-1).
    CredentialIssued,
    CredentialRotated,
    CredentialRevoked,
    /// Mis-scoped vertical, cross-tenant attempt, forged headers (INT-9.4-1).
    SecurityIncident,
    /// A consent record changed (CON-37).
    ConsentChange,
    /// Someone viewed consent evidence (CON-19).
    ConsentEvidenceAccess,
    /// Consent was withdrawn after the person's data had been shared (INT-4.3-3).
    FrozenShare,
    /// A ROOT (break-glass) action.
    RootBypass,
    /// The audit log itself was read: export link issued, export downloaded, tail opened (EXT-6-1).
    AuditAccess,
    /// Records older than the tenant's retention were purged (INT-8-2).
    RetentionPurge,
    /// First record of a chain: writer, signing key, link to the writer's previous chain.
    ChainStart,
    /// Last record of a chain, written at orderly shutdown.
    ChainEnd,
}

impl RecordKind {
    /// Every kind.
    pub const ALL: [RecordKind; 14] = [
        RecordKind::Decision,
        RecordKind::AdminChange,
        RecordKind::CredentialIssued,
        RecordKind::CredentialRotated,
        RecordKind::CredentialRevoked,
        RecordKind::SecurityIncident,
        RecordKind::ConsentChange,
        RecordKind::ConsentEvidenceAccess,
        RecordKind::FrozenShare,
        RecordKind::RootBypass,
        RecordKind::AuditAccess,
        RecordKind::RetentionPurge,
        RecordKind::ChainStart,
        RecordKind::ChainEnd,
    ];

    /// The kind named `name` (its snake_case name), if any.
    pub fn from_name(name: &str) -> Option<RecordKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        use RecordKind::*;
        match self {
            Decision => "decision",
            AdminChange => "admin_change",
            CredentialIssued => "credential_issued",
            CredentialRotated => "credential_rotated",
            CredentialRevoked => "credential_revoked",
            SecurityIncident => "security_incident",
            ConsentChange => "consent_change",
            ConsentEvidenceAccess => "consent_evidence_access",
            FrozenShare => "frozen_share",
            RootBypass => "root_bypass",
            AuditAccess => "audit_access",
            RetentionPurge => "retention_purge",
            ChainStart => "chain_start",
            ChainEnd => "chain_end",
        }
    }
}

/// RFC 3339 with microseconds and `Z`, the one time format of audit bodies.
pub fn format_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Version of the decision body shape written now. Format 1 (no `format` key) recorded the
/// request's normalized path in `path` and unkeyed person references; format 2 records the route
/// template (or a bounded, sanitized shape with `path_hash`), `path_bytes`, `policy_version` and
/// keyed person references (`<key id>:<hex>`); format 3 adds `inputs` (the token's `scopes` and
/// `verticals`, [`crate::decision::DecisionInputs`]) on every decision whose token
/// authenticated, so the impact preview can re-decide it against a candidate policy
/// (`crate::impact`, ADM-6). Verification reads only [`BodyHead`], which all formats have.
pub const DECISION_FORMAT: u32 = 3;

/// The canonical body of a decision record (format 3). Field order is the sorted key order; do
/// not reorder.
#[derive(Serialize)]
struct DecisionBody<'a> {
    action: Option<&'a str>,
    allowed_fields: Option<&'a [String]>,
    client_id: Option<&'a str>,
    code: &'a str,
    consent_checks: &'a [crate::decision::ConsentCheck],
    data_categories: &'a [String],
    decision_id: &'a str,
    format: u32,
    incidents: &'a [Incident],
    /// Format 3: absent when the token did not authenticate.
    #[serde(skip_serializing_if = "Option::is_none")]
    inputs: Option<&'a crate::decision::DecisionInputs>,
    integration_id: Option<&'a str>,
    kind: &'static str,
    masked_fields: &'a [String],
    message: Option<&'a str>,
    method: &'a str,
    outcome: &'static str,
    path: &'a str,
    path_bytes: usize,
    path_hash: Option<&'a str>,
    persons: usize,
    policy_version: Option<i64>,
    resource: Option<&'a str>,
    route_id: Option<&'a str>,
    scopes: &'a [String],
    /// Shadow (dry-run) findings (issue 16); absent when none keeps older bodies byte-identical.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    shadow: &'a [crate::decision::ShadowFinding],
    stages: &'a [Stage],
    /// Only on cross-tenant requests (INT-4.5-2); absent keeps older bodies byte-identical.
    #[serde(skip_serializing_if = "Option::is_none")]
    target_tenant_id: Option<&'a str>,
    tenant_id: Option<&'a str>,
    time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_id: Option<&'a str>,
    verticals: &'a [String],
}

/// Appends the canonical body of `d` to `out` (RFC 8785 JSON, format [`DECISION_FORMAT`]).
/// Contains no token, key, certificate, header value, query string or person id: the path is
/// the route template or a sanitized shape ([`Decision::path`]), persons appear as keyed
/// references, free text is bounded.
pub fn decision_body(d: &Decision, out: &mut Vec<u8>) {
    let (outcome, message) = match &d.outcome {
        Outcome::Allow => ("allow", None),
        Outcome::Deny(den) => ("deny", Some(den.message.as_str())),
    };
    let body = DecisionBody {
        action: d.action.as_deref(),
        allowed_fields: d.allowed_fields.as_deref(),
        client_id: d.client_id.as_deref(),
        code: d.code_str(),
        consent_checks: &d.consent_checks,
        data_categories: &d.data_categories,
        decision_id: &d.decision_id,
        format: DECISION_FORMAT,
        incidents: &d.incidents,
        inputs: d.inputs.as_ref(),
        integration_id: d.integration_id.as_deref(),
        kind: RecordKind::Decision.as_str(),
        masked_fields: &d.masked_fields,
        message,
        method: &d.method,
        outcome,
        path: &d.path,
        path_bytes: d.path_bytes,
        path_hash: d.path_hash.as_deref(),
        persons: d.persons,
        policy_version: d.policy_version,
        resource: d.resource.as_deref(),
        route_id: d.route_id.as_deref(),
        scopes: &d.scopes,
        shadow: &d.shadow,
        stages: &d.stages,
        target_tenant_id: d.target_tenant_id.as_deref(),
        tenant_id: d.tenant_id.as_deref(),
        time: format_time(d.time),
        trace_id: d.trace_id.as_deref(),
        verticals: &d.verticals,
    };
    // Serializing plain strings, integers and sequences into a Vec cannot fail.
    let _ = serde_json::to_writer(out, &body);
}

/// An audit event that is not a decision: admin change, credential lifecycle, consent change,
/// evidence access, frozen share, ROOT bypass, security incident, audit access, purge.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditEvent {
    pub kind: RecordKind,
    /// UUIDv7, unique per event.
    pub event_id: String,
    pub time: DateTime<Utc>,
    /// The tenant whose chain records the event; `None` → [`UNATTRIBUTED`].
    pub tenant_id: Option<String>,
    /// Who acted: admin subject, integration id, `scp-pep` for the server itself.
    pub actor: Option<String>,
    /// What was acted on: integration id, consent id, decision id, chain id…
    pub subject: Option<String>,
    /// Free-form details (no secrets, no tokens, no personal data beyond references).
    pub detail: serde_json::Value,
}

impl AuditEvent {
    /// A new event of `kind` now, with a fresh id.
    pub fn new(kind: RecordKind, tenant_id: Option<&str>, detail: serde_json::Value) -> Self {
        AuditEvent {
            kind,
            event_id: uuid::Uuid::now_v7().to_string(),
            time: Utc::now(),
            tenant_id: tenant_id.map(str::to_owned),
            actor: None,
            subject: None,
            detail,
        }
    }

    /// Sets the actor.
    pub fn actor(mut self, actor: impl Into<String>) -> Self {
        self.actor = Some(actor.into());
        self
    }

    /// Sets the subject.
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    /// The canonical body (RFC 8785 via `serde_jcs`).
    pub fn body(&self) -> Vec<u8> {
        let v = serde_json::json!({
            "actor": self.actor,
            "detail": self.detail,
            "event_id": self.event_id,
            "kind": self.kind.as_str(),
            "subject": self.subject,
            "tenant_id": self.tenant_id,
            "time": format_time(self.time),
        });
        serde_jcs::to_vec(&v).unwrap_or_default()
    }
}

/// The security-incident events a decision carries (one per incident), INT-9.4-1.
pub fn incident_events(d: &Decision) -> impl Iterator<Item = AuditEvent> + '_ {
    d.incidents.iter().map(move |i| {
        let mut e = AuditEvent::new(
            RecordKind::SecurityIncident,
            d.tenant_id.as_deref(),
            serde_json::json!({
                "incident": i,
                "decision_id": d.decision_id,
                "integration_id": d.integration_id,
                "route_id": d.route_id,
                "method": d.method,
                "path": d.path,
                "path_hash": d.path_hash,
                "target_tenant_id": d.target_tenant_id,
                "format": DECISION_FORMAT,
            }),
        );
        e.time = d.time;
        if let Some(i) = &d.integration_id {
            e.actor = Some(i.clone());
        }
        e.subject = Some(d.decision_id.clone());
        e
    })
}

/// The fields every body has that the store also keeps as columns; read back when verifying so
/// the columns cannot disagree with the hashed body.
#[derive(Debug, Deserialize)]
pub struct BodyHead<'a> {
    pub kind: &'a str,
    #[serde(borrow)]
    pub tenant_id: Option<&'a str>,
    pub time: &'a str,
    #[serde(default)]
    pub decision_id: Option<&'a str>,
    #[serde(default)]
    pub event_id: Option<&'a str>,
}

/// One chained record as stored and exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainedRecord {
    pub chain_id: String,
    pub seq: u64,
    pub tenant_id: String,
    /// Milliseconds since the Unix epoch (from the body's `time`).
    pub time_ms: i64,
    pub kind: String,
    /// The decision id or event id.
    pub event_id: String,
    pub prev_hash: Hash,
    pub hash: Hash,
    /// Canonical JSON.
    pub body: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::{ConsentCheck, Denial, DenyCode};
    use proptest::prelude::*;

    fn arb_string() -> impl Strategy<Value = String> {
        // Includes quotes, backslashes, control characters, non-ASCII and astral characters.
        proptest::string::string_regex("(?s).{0,12}").unwrap()
    }

    fn arb_decision() -> impl Strategy<Value = Decision> {
        (
            arb_string(),
            proptest::option::of(arb_string()),
            proptest::collection::vec(arb_string(), 0..3),
            proptest::option::of(proptest::collection::vec(arb_string(), 0..3)),
            any::<bool>(),
            0usize..5,
            arb_string(),
        )
            .prop_map(|(path, tenant, verticals, allowed, allow, persons, msg)| {
                let mut d = Decision::new("GET", &path, Utc::now());
                d.tenant_id = tenant;
                d.integration_id = Some("int-1".into());
                d.verticals = verticals.clone();
                d.scopes = verticals.clone();
                d.inputs = allow.then(|| crate::decision::DecisionInputs {
                    scopes: verticals.clone(),
                    verticals,
                });
                d.allowed_fields = allowed;
                d.persons = persons;
                d.stages = vec![Stage::Authenticate, Stage::Route];
                d.incidents = vec![Incident::ForgedHeaders];
                d.consent_checks = vec![ConsentCheck {
                    person_ref: "ab12".into(),
                    purpose: None,
                    result: "active".into(),
                    vertical: "health".into(),
                }];
                if allow {
                    d.shadow = vec![crate::decision::ShadowFinding {
                        code: DenyCode::PolicyDenied,
                        document: "policy_pack/p\"1".into(),
                        reasons: vec!["p\"1/forbid-é".into()],
                    }];
                }
                d.outcome = if allow {
                    Outcome::Allow
                } else {
                    Outcome::Deny(Denial::new(DenyCode::ScopeViolation, msg))
                };
                d
            })
    }

    proptest! {
        /// INT-8-2: the decision body is exactly RFC 8785 canonical JSON (checked against serde_jcs).
        #[test]
        fn decision_body_is_rfc8785(d in arb_decision()) {
            let mut fast = Vec::new();
            decision_body(&d, &mut fast);
            let v: serde_json::Value = serde_json::from_slice(&fast).unwrap();
            let reference = serde_jcs::to_vec(&v).unwrap();
            prop_assert_eq!(String::from_utf8(fast).unwrap(), String::from_utf8(reference).unwrap());
        }
    }

    #[test]
    fn hash_is_domain_separated_and_binds_every_input() {
        let g = genesis_hash("c1");
        assert_ne!(g, genesis_hash("c2"));
        let h = record_hash(1, &g, b"{}");
        assert_ne!(h, record_hash(2, &g, b"{}"));
        assert_ne!(h, record_hash(1, &genesis_hash("c2"), b"{}"));
        assert_ne!(h, record_hash(1, &g, b"{ }"));
        // Known answer: pins the encoding so a refactor cannot change it silently.
        assert_eq!(
            hex::encode(record_hash(1, &[0u8; 32], b"{}")),
            hex::encode({
                let mut x = Sha256::new();
                x.update(b"scp-pep/audit-record/v1\n");
                x.update([0, 0, 0, 0, 0, 0, 0, 1]);
                x.update([0u8; 32]);
                x.update(b"{}");
                <[u8; 32]>::from(x.finalize())
            })
        );
    }

    #[test]
    fn event_body_is_canonical_and_names_its_kind() {
        let e = AuditEvent::new(
            RecordKind::ConsentEvidenceAccess,
            Some("ke"),
            serde_json::json!({"z": 1, "a": "é"}),
        )
        .actor("admin-1");
        let body = String::from_utf8(e.body()).unwrap();
        assert!(
            body.starts_with("{\"actor\":\"admin-1\",\"detail\":{\"a\":\"é\",\"z\":1},"),
            "{body}"
        );
        assert!(body.contains("\"kind\":\"consent_evidence_access\""));
    }
}
