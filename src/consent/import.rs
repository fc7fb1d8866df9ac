//! Bulk import of persons and consents (`scp-pep consent import FILE`): migrating an existing
//! consent registry into scp-pep, and seeding test and demo stores.
//!
//! The file (YAML or JSON) is validated as a whole before anything is written; each consent is then
//! captured through the same store operation the REST API uses ([`Store::consent_append`]), with
//! the same rules: the person must be known and verified (CON-3), evidence makes it active, none
//! leaves it pending (CON-13). Import is idempotent: a consent whose key already has a live consent
//! with the same window is skipped. Every capture is a `consent_change` audit event when an audit log
//! is given.

use serde::Deserialize;

use super::Consents;
use super::model::{
    CaptureMode, Change, ConsentVersion, RuleError, check_attachment_ids, check_token, grace_until,
    status_after_evidence,
};
use super::store::{ConsentStoreError, PersonRecord};
use crate::audit::AuditLog;
use crate::audit::record::{AuditEvent, RecordKind};
use crate::store::Store;

/// An import file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportFile {
    #[serde(default)]
    pub persons: Vec<PersonDoc>,
    #[serde(default)]
    pub consents: Vec<ConsentDoc>,
}

/// A person's verification and contact state.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersonDoc {
    pub tenant: String,
    pub person_id: String,
    /// `verified` (default) or `provisional`.
    #[serde(default = "verified")]
    pub verification: String,
    /// `active` (default), `inactive` or `archived`.
    #[serde(default = "active")]
    pub status: String,
    /// `email`, `sms`.
    #[serde(default)]
    pub channels: Vec<String>,
}

fn verified() -> String {
    "verified".into()
}
fn active() -> String {
    "active".into()
}

/// One consent to capture.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentDoc {
    pub tenant: String,
    pub person_id: String,
    pub vertical_id: String,
    #[serde(default)]
    pub purpose: Option<String>,
    /// RFC 3339 or `YYYY-MM-DD`.
    pub active_from: String,
    /// RFC 3339, `YYYY-MM-DD`, or absent (open-ended).
    #[serde(default)]
    pub active_until: Option<String>,
    #[serde(default)]
    pub evidence_attachment_ids: Vec<String>,
    #[serde(default)]
    pub fields: Option<Vec<String>>,
}

/// What an import did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ImportOutcome {
    pub persons: usize,
    pub captured: usize,
    pub unchanged: usize,
}

/// Import errors: the entry (`consents[3]`), the field and the reason; or the store.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{entry}: {field}: {message}")]
    Invalid {
        entry: String,
        field: String,
        message: String,
    },
    #[error("{0}")]
    Store(#[from] ConsentStoreError),
    #[error("the audit log could not record the import; nothing further was written")]
    AuditUnavailable,
}

fn parse_time(s: &str) -> Option<i64> {
    crate::time::parse_instant(s).ok()
}

struct Prepared {
    v: ConsentVersion,
}

/// Validates `file` completely, then writes it. `by`: the operator recorded as `captured_by`;
/// `grace_days(tenant)`: the tenant's grace period in days. Returns counts.
///
/// Errors: [`ImportError::Invalid`] before anything is written; store or audit failures.
pub async fn import(
    consents: &Consents,
    audit: Option<&AuditLog>,
    file: &ImportFile,
    by: &str,
    grace_days: impl Fn(&str) -> u32,
) -> Result<ImportOutcome, ImportError> {
    let store: &Store = consents.store();
    let now = consents.now_ms();
    let inv = |entry: String, field: &str, message: String| ImportError::Invalid {
        entry,
        field: field.into(),
        message,
    };
    let rule = |entry: String, e: RuleError| ImportError::Invalid {
        entry,
        field: e.field.unwrap_or("").into(),
        message: e.message,
    };
    for (i, p) in file.persons.iter().enumerate() {
        let entry = format!("persons[{i}]");
        check_token("tenant", &p.tenant).map_err(|e| rule(entry.clone(), e))?;
        check_token("person_id", &p.person_id).map_err(|e| rule(entry.clone(), e))?;
        if !matches!(p.verification.as_str(), "verified" | "provisional") {
            return Err(inv(entry, "verification", "verified or provisional".into()));
        }
        if !matches!(p.status.as_str(), "active" | "inactive" | "archived") {
            return Err(inv(entry, "status", "active, inactive or archived".into()));
        }
        if let Some(c) = p
            .channels
            .iter()
            .find(|c| !matches!(c.as_str(), "email" | "sms"))
        {
            return Err(inv(entry, "channels", format!("`{c}`: email or sms")));
        }
    }
    let mut prepared = Vec::with_capacity(file.consents.len());
    for (i, c) in file.consents.iter().enumerate() {
        let entry = format!("consents[{i}]");
        check_token("tenant", &c.tenant).map_err(|e| rule(entry.clone(), e))?;
        check_token("person_id", &c.person_id).map_err(|e| rule(entry.clone(), e))?;
        check_token("vertical_id", &c.vertical_id).map_err(|e| rule(entry.clone(), e))?;
        if let Some(p) = &c.purpose {
            check_token("purpose", p).map_err(|e| rule(entry.clone(), e))?;
        }
        check_attachment_ids("evidence_attachment_ids", &c.evidence_attachment_ids)
            .map_err(|e| rule(entry.clone(), e))?;
        let from = parse_time(&c.active_from).ok_or_else(|| {
            inv(
                entry.clone(),
                "active_from",
                "RFC 3339 or YYYY-MM-DD".into(),
            )
        })?;
        let until = match &c.active_until {
            None => None,
            Some(u) => Some(parse_time(u).ok_or_else(|| {
                inv(
                    entry.clone(),
                    "active_until",
                    "RFC 3339 or YYYY-MM-DD".into(),
                )
            })?),
        };
        if until.is_some_and(|u| u <= from) {
            return Err(inv(
                entry,
                "active_until",
                "must be after active_from".into(),
            ));
        }
        let status = status_after_evidence(
            CaptureMode::Online,
            !c.evidence_attachment_ids.is_empty(),
            false,
        );
        let id = uuid::Uuid::now_v7().to_string();
        prepared.push(Prepared {
            v: ConsentVersion {
                consent_id: id,
                version: 1,
                version_id: uuid::Uuid::now_v7().to_string(),
                tenant_id: c.tenant.clone(),
                person_id: c.person_id.clone(),
                vertical_id: c.vertical_id.clone(),
                purpose: c.purpose.clone().unwrap_or_default(),
                status,
                active_from_ms: from,
                active_until_ms: until,
                grace_until_ms: grace_until(until, grace_days(&c.tenant)),
                capture_mode: CaptureMode::Online,
                evidence_attachment_ids: c.evidence_attachment_ids.clone(),
                verification_document_attachment_id: None,
                identity_verification: None,
                fields: c.fields.clone(),
                reason_code: None,
                reason_text: None,
                change: Change::Capture,
                captured_by: by.to_owned(),
                captured_at_ms: now,
                changed_by: by.to_owned(),
                changed_at_ms: now,
            },
        });
    }

    let mut out = ImportOutcome::default();
    for p in &file.persons {
        store
            .consent_put_person(&PersonRecord {
                tenant_id: p.tenant.clone(),
                person_id: p.person_id.clone(),
                verification: p.verification.clone(),
                status: p.status.clone(),
                channels: p.channels.clone(),
                updated_ms: now,
            })
            .await?;
        out.persons += 1;
    }
    for (i, Prepared { v }) in prepared.into_iter().enumerate() {
        let entry = format!("consents[{i}]");
        match store.consent_person(&v.tenant_id, &v.person_id).await? {
            None => {
                return Err(inv(entry, "person_id", "unknown person (CON-3)".into()));
            }
            Some(p) if p.verification != "verified" => {
                return Err(inv(
                    entry,
                    "person_id",
                    "the person is provisional; capture needs a verified person (CON-11)".into(),
                ));
            }
            Some(_) => {}
        }
        let heads = store
            .consent_heads(&v.tenant_id, &v.person_id, &v.vertical_id)
            .await?;
        if heads.iter().any(|h| {
            h.purpose == v.purpose
                && h.status == v.status
                && h.active_from_ms == v.active_from_ms
                && h.active_until_ms == v.active_until_ms
        }) {
            out.unchanged += 1;
            continue;
        }
        if let Some(a) = audit {
            let ev = AuditEvent::new(
                RecordKind::ConsentChange,
                Some(&v.tenant_id),
                serde_json::json!({
                    "change": "capture", "via": "import", "consent_id": v.consent_id,
                    "version": v.version, "status": v.status.as_str(), "vertical": v.vertical_id,
                    "purpose": v.purpose, "person_ref": consents.person_ref(&v.tenant_id, &v.person_id),
                }),
            )
            .actor(by.to_owned());
            a.record_event(&ev)
                .await
                .map_err(|_| ImportError::AuditUnavailable)?;
        }
        store.consent_append(&v, now).await?;
        consents.invalidate(&v.tenant_id, &v.person_id, &v.vertical_id);
        out.captured += 1;
    }
    Ok(out)
}
