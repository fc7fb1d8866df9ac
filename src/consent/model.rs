//! The consent record and its rules, as pure functions (SEC-09; every `CON-*` line).
//!
//! A consent is keyed by (tenant, person, vertical, purpose) (CON-1, CON-2; purpose `""` = the
//! vertical as a whole). Every change is a new immutable [`ConsentVersion`] (CON-7); the store keeps
//! the newest version of the newest consent per key as the *head*, which is what enforcement reads.
//!
//! The *recorded* status of a version is one of pending, active, rejected, withdrawn. The
//! *effective* status at an instant is computed, never stored by a cron ([`effective`], CON-5):
//! an active consent is in force in `[active_from, active_until)`; after `active_until` it is
//! expired and inside the tenant's grace period until `grace_until`; after that it counts as
//! withdrawn (CON-28). Rejected consent has no grace (CON-20). Times are Unix milliseconds (UTC).

use serde::{Deserialize, Serialize};

use crate::api::ErrorCode;

/// Milliseconds per day.
pub const DAY_MS: i64 = 86_400_000;

/// Global maximum of a tenant's grace period, days (CON-27).
pub const MAX_GRACE_DAYS: u32 = 90;

/// Default reminder schedule, days before expiry (CON-33).
pub const DEFAULT_REMINDER_DAYS: [u32; 4] = [30, 7, 3, 1];

/// Recorded status of a version (CON-35 `status`; `expired` is computed, see [`Effective`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Recorded {
    Pending,
    Active,
    Rejected,
    Withdrawn,
}

impl Recorded {
    pub fn as_str(self) -> &'static str {
        match self {
            Recorded::Pending => "pending",
            Recorded::Active => "active",
            Recorded::Rejected => "rejected",
            Recorded::Withdrawn => "withdrawn",
        }
    }

    /// Parses the stored form.
    pub fn parse(s: &str) -> Option<Recorded> {
        Some(match s {
            "pending" => Recorded::Pending,
            "active" => Recorded::Active,
            "rejected" => Recorded::Rejected,
            "withdrawn" => Recorded::Withdrawn,
            _ => return None,
        })
    }
}

/// Effective status at an instant (CON-5, CON-26, CON-28).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Effective {
    /// No consent recorded for the key.
    Missing,
    /// Recorded pending (no evidence yet, offline capture not yet verified), or active but
    /// before `active_from`.
    Pending,
    /// In force.
    Active,
    /// Past `active_until`, inside the grace period (read-only for staff; never for integrations).
    Grace,
    Rejected,
    /// Withdrawn, or expired past its grace period (CON-28).
    Withdrawn,
}

impl Effective {
    /// The name used in API answers and audit records (`grace` is reported as `expired`, the
    /// spec's status name, with `in_grace: true` beside it in API views).
    pub fn as_str(self) -> &'static str {
        match self {
            Effective::Missing => "missing",
            Effective::Pending => "pending",
            Effective::Active => "active",
            Effective::Grace => "expired",
            Effective::Rejected => "rejected",
            Effective::Withdrawn => "withdrawn",
        }
    }
}

/// How consent was captured (CON-35 `capture_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CaptureMode {
    Online,
    Offline,
}

impl CaptureMode {
    pub fn as_str(self) -> &'static str {
        match self {
            CaptureMode::Online => "online",
            CaptureMode::Offline => "offline",
        }
    }
    pub fn parse(s: &str) -> Option<CaptureMode> {
        match s {
            "online" => Some(CaptureMode::Online),
            "offline" => Some(CaptureMode::Offline),
            _ => None,
        }
    }
}

/// Rejection reason codes, a global fixed list (CON-20).
pub const REJECTION_REASONS: &[&str] = &[
    "IDENTITY_MISMATCH",
    "EVIDENCE_INSUFFICIENT",
    "SCOPE_INVALID",
    "DUPLICATE_ACTIVE",
    "OTHER",
];

/// Withdrawal reason codes, a global fixed list (CON-25).
pub const WITHDRAWAL_REASONS: &[&str] = &[
    "USER_REQUEST",
    "CONSENT_EXPIRED",
    "DATA_INACCURATE",
    "LEGAL_REQUIREMENT",
    "DUPLICATE_RECORD",
    "SAFETY_RISK",
    "SYSTEM_ERROR",
    "OTHER",
];

/// What a version changed (the history's `change` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    Capture,
    Evidence,
    Verify,
    Reject,
    Withdraw,
    Renew,
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Capture => "capture",
            Change::Evidence => "evidence",
            Change::Verify => "verify",
            Change::Reject => "reject",
            Change::Withdraw => "withdraw",
            Change::Renew => "renew",
        }
    }
    pub fn parse(s: &str) -> Option<Change> {
        Some(match s {
            "capture" => Change::Capture,
            "evidence" => Change::Evidence,
            "verify" => Change::Verify,
            "reject" => Change::Reject,
            "withdraw" => Change::Withdraw,
            "renew" => Change::Renew,
            _ => return None,
        })
    }
}

/// The field agent's record of how the person's identity was checked, for offline capture
/// (CON-14). Only references: the document itself is an attachment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IdentityVerification {
    /// Kind of document shown, e.g. `national_id`, `passport`, `birth_certificate`.
    pub document_type: String,
    /// Who checked it (the agent's subject; filled from the caller when absent).
    #[serde(default)]
    pub verified_by: Option<String>,
    /// When, Unix ms (filled with the capture time when absent).
    #[serde(default)]
    pub verified_at_ms: Option<i64>,
}

/// One immutable version of a consent record (CON-7, CON-35).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentVersion {
    /// System GUID of the consent (UUIDv7), stable across its versions.
    pub consent_id: String,
    /// 1, 2, 3… per consent.
    pub version: i64,
    /// System GUID of this version (UUIDv7).
    pub version_id: String,
    pub tenant_id: String,
    pub person_id: String,
    pub vertical_id: String,
    /// `""`: the whole vertical; otherwise a purpose the vertical supports (CON-2).
    pub purpose: String,
    pub status: Recorded,
    pub active_from_ms: i64,
    /// `None`: open-ended (CON-6).
    pub active_until_ms: Option<i64>,
    /// `active_until` + the tenant's grace days at the time of the version (`None` when
    /// open-ended).
    pub grace_until_ms: Option<i64>,
    pub capture_mode: CaptureMode,
    /// Attachment ids of the evidence (signature, photo, recording) (CON-15, CON-16).
    pub evidence_attachment_ids: Vec<String>,
    /// Attachment id of the identity document's photo or scan (offline capture, CON-14).
    pub verification_document_attachment_id: Option<String>,
    pub identity_verification: Option<IdentityVerification>,
    /// Field-level consent: when set, only these fields may be shared (INT-4.3-5).
    pub fields: Option<Vec<String>>,
    /// Withdrawal or rejection reason code (CON-20, CON-25).
    pub reason_code: Option<String>,
    /// Required when `reason_code` is `OTHER`.
    pub reason_text: Option<String>,
    pub change: Change,
    /// Who captured the consent and when (copied to every version).
    pub captured_by: String,
    pub captured_at_ms: i64,
    /// Who made this version and when.
    pub changed_by: String,
    pub changed_at_ms: i64,
}

impl ConsentVersion {
    /// The effective status at `now_ms` (Unix ms).
    pub fn effective(&self, now_ms: i64) -> Effective {
        effective(
            self.status,
            self.active_from_ms,
            self.active_until_ms,
            self.grace_until_ms,
            now_ms,
        )
    }
}

/// A head version as the store's summary read returns it: one per purpose of (tenant, person,
/// vertical). The consent cache keeps the smaller [`HeadState`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub consent_id: String,
    pub version: i64,
    /// `""`: the whole vertical.
    pub purpose: String,
    pub status: Recorded,
    pub active_from_ms: i64,
    pub active_until_ms: Option<i64>,
    pub grace_until_ms: Option<i64>,
    /// Field-level consent (INT-4.3-5).
    pub fields: Option<Vec<String>>,
    pub changed_at_ms: i64,
}

impl Head {
    /// The effective status at `now_ms` (Unix ms).
    pub fn effective(&self, now_ms: i64) -> Effective {
        effective(
            self.status,
            self.active_from_ms,
            self.active_until_ms,
            self.grace_until_ms,
            now_ms,
        )
    }
}

/// A consent head as [`crate::consent::Consents::decide`] reads it: its purpose and its
/// effective status at a given time.
pub trait HeadView {
    /// `""`: the whole vertical.
    fn purpose(&self) -> &str;
    /// The effective status at `now_ms` (Unix ms).
    fn effective_at(&self, now_ms: i64) -> Effective;
}

impl HeadView for Head {
    fn purpose(&self) -> &str {
        &self.purpose
    }
    fn effective_at(&self, now_ms: i64) -> Effective {
        self.effective(now_ms)
    }
}

/// The part of a [`Head`] that enforcement reads, as the consent cache keeps it (88 bytes inline,
/// plus the purpose and field names when present). No consent id, version or change time: the
/// cache only ever answers "may this pass", never "which consent".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadState {
    /// `""`: the whole vertical (an empty `Box<str>` allocates nothing).
    pub purpose: Box<str>,
    pub status: Recorded,
    pub active_from_ms: i64,
    pub active_until_ms: Option<i64>,
    pub grace_until_ms: Option<i64>,
    /// Field-level consent (INT-4.3-5).
    pub fields: Option<Box<[Box<str>]>>,
}

impl HeadView for HeadState {
    fn purpose(&self) -> &str {
        &self.purpose
    }
    fn effective_at(&self, now_ms: i64) -> Effective {
        effective(
            self.status,
            self.active_from_ms,
            self.active_until_ms,
            self.grace_until_ms,
            now_ms,
        )
    }
}

impl From<Head> for HeadState {
    fn from(h: Head) -> HeadState {
        HeadState {
            purpose: h.purpose.into_boxed_str(),
            status: h.status,
            active_from_ms: h.active_from_ms,
            active_until_ms: h.active_until_ms,
            grace_until_ms: h.grace_until_ms,
            fields: h
                .fields
                .map(|f| f.into_iter().map(String::into_boxed_str).collect()),
        }
    }
}

impl From<&ConsentVersion> for Head {
    fn from(v: &ConsentVersion) -> Head {
        Head {
            consent_id: v.consent_id.clone(),
            version: v.version,
            purpose: v.purpose.clone(),
            status: v.status,
            active_from_ms: v.active_from_ms,
            active_until_ms: v.active_until_ms,
            grace_until_ms: v.grace_until_ms,
            fields: v.fields.clone(),
            changed_at_ms: v.changed_at_ms,
        }
    }
}

/// The effective status of a version with `status` and window `[from, until)`, grace until
/// `grace_until`, at `now` (all Unix ms). CON-5, CON-6, CON-20, CON-26, CON-28.
pub fn effective(
    status: Recorded,
    from: i64,
    until: Option<i64>,
    grace_until: Option<i64>,
    now: i64,
) -> Effective {
    match status {
        Recorded::Pending => Effective::Pending,
        Recorded::Rejected => Effective::Rejected,
        Recorded::Withdrawn => Effective::Withdrawn,
        Recorded::Active => {
            if now < from {
                Effective::Pending
            } else {
                match until {
                    None => Effective::Active,
                    Some(u) if now < u => Effective::Active,
                    Some(u) => {
                        if now < grace_until.unwrap_or(u) {
                            Effective::Grace
                        } else {
                            Effective::Withdrawn
                        }
                    }
                }
            }
        }
    }
}

/// The instant from which a version blocks aggregated outputs (CON-23, CON-28): its withdrawal
/// time, or the end of its grace period once passed. `None` when it does not block (yet).
pub fn blocking_since(v: &ConsentVersion, now_ms: i64) -> Option<i64> {
    match v.status {
        Recorded::Withdrawn => Some(v.changed_at_ms),
        Recorded::Active => v.grace_until_ms.filter(|g| *g <= now_ms),
        _ => None,
    }
}

/// Who may act on consent (from the caller's roles; see `ConsentRoles`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Actor {
    /// Break-glass (CON-32): bypasses consent checks, always audited as `root_bypass`.
    pub root: bool,
    /// Online consent officer: capture, verify, reject, withdraw, renew (CON-9).
    pub officer: bool,
    /// Field agent: offline capture only (CON-12); never withdraws (CON-9).
    pub field_agent: bool,
    /// May view evidence attachment ids (CON-17), masked unless `auditor`.
    pub evidence_viewer: bool,
    /// Audit-level permission: evidence unmasked (CON-17).
    pub auditor: bool,
    /// Tenant admin: version history (CON-37).
    pub tenant_admin: bool,
    /// May register persons' verification and contact state.
    pub registrar: bool,
}

/// A rule violation: a machine code, the field at fault and a message (no personal data).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct RuleError {
    pub code: ErrorCode,
    pub field: Option<&'static str>,
    pub message: String,
}

impl RuleError {
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        RuleError {
            code: ErrorCode::InvalidRequest,
            field: Some(field),
            message: message.into(),
        }
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        RuleError {
            code: ErrorCode::Forbidden,
            field: None,
            message: message.into(),
        }
    }
}

/// Checks a reason against a fixed list; `OTHER` needs a non-empty text (CON-20, CON-25).
pub fn check_reason(
    list: &[&str],
    code: &str,
    text: Option<&str>,
) -> Result<(String, Option<String>), RuleError> {
    if !list.contains(&code) {
        return Err(RuleError::invalid(
            "reason_code",
            format!("must be one of {}", list.join(", ")),
        ));
    }
    let text = text.map(str::trim).filter(|t| !t.is_empty());
    if code == "OTHER" && text.is_none() {
        return Err(RuleError::invalid(
            "reason_text",
            "reason code OTHER needs a free-text reason",
        ));
    }
    if text.is_some_and(|t| t.len() > 2000) {
        return Err(RuleError::invalid("reason_text", "at most 2000 bytes"));
    }
    Ok((code.to_owned(), text.map(str::to_owned)))
}

/// The grace end for an `active_until` under `grace_days` (CON-26, CON-27: capped at 90 days).
pub fn grace_until(active_until_ms: Option<i64>, grace_days: u32) -> Option<i64> {
    active_until_ms.map(|u| u + i64::from(grace_days.min(MAX_GRACE_DAYS)) * DAY_MS)
}

/// The recorded status a capture, evidence attachment or renewal leads to (CON-10, CON-13,
/// CON-15): offline captures stay pending until verified on sync; online ones are active when
/// evidence is present, else pending.
pub fn status_after_evidence(mode: CaptureMode, has_evidence: bool, verified: bool) -> Recorded {
    match mode {
        CaptureMode::Offline if !verified => Recorded::Pending,
        _ if has_evidence => Recorded::Active,
        _ => Recorded::Pending,
    }
}

/// Validates an attachment id list (ids only: the bytes live in SCP's attachment store, CON-16).
pub fn check_attachment_ids(field: &'static str, ids: &[String]) -> Result<(), RuleError> {
    if ids.len() > 32 {
        return Err(RuleError::invalid(field, "at most 32 attachment ids"));
    }
    for id in ids {
        check_token(field, id)?;
    }
    Ok(())
}

/// An identifier: 1–128 bytes of `[A-Za-z0-9._:-]`.
pub fn check_token(field: &'static str, s: &str) -> Result<(), RuleError> {
    let ok = !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(RuleError::invalid(
            field,
            "must be 1–128 characters of A–Z, a–z, 0–9, '.', '_', ':', '-'",
        ))
    }
}

/// The evidence view of a version for a caller (CON-17): attachment ids in clear for audit-level
/// callers, masked (`"***"` per id, count kept) otherwise.
pub fn evidence_view(v: &ConsentVersion, auditor: bool) -> serde_json::Value {
    let mask = |s: &str| {
        if auditor {
            s.to_owned()
        } else {
            "***".to_owned()
        }
    };
    serde_json::json!({
        "evidence_attachment_ids": v.evidence_attachment_ids.iter().map(|s| mask(s)).collect::<Vec<_>>(),
        "verification_document_attachment_id": v.verification_document_attachment_id.as_deref().map(mask),
        "masked": !auditor,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CON-5, CON-6, CON-26, CON-28: every boundary of the window, at the millisecond.
    #[test]
    fn effective_status_boundaries() {
        let (from, until) = (1_000, 2_000);
        let g = grace_until(Some(until), 1);
        let e = |now| effective(Recorded::Active, from, Some(until), g, now);
        assert_eq!(e(999), Effective::Pending);
        assert_eq!(e(1_000), Effective::Active);
        assert_eq!(e(1_999), Effective::Active);
        assert_eq!(e(2_000), Effective::Grace);
        assert_eq!(e(2_000 + DAY_MS - 1), Effective::Grace);
        assert_eq!(e(2_000 + DAY_MS), Effective::Withdrawn);
        // Open-ended.
        assert_eq!(
            effective(Recorded::Active, from, None, None, i64::MAX),
            Effective::Active
        );
        // Rejected never enters grace (CON-20).
        assert_eq!(
            effective(Recorded::Rejected, from, Some(until), g, 2_001),
            Effective::Rejected
        );
    }

    /// CON-27: the grace period is capped at 90 days.
    #[test]
    fn grace_is_capped() {
        assert_eq!(grace_until(Some(0), 365), Some(90 * DAY_MS));
        assert_eq!(grace_until(None, 30), None);
    }

    /// CON-20, CON-25: fixed lists; OTHER needs text.
    #[test]
    fn reasons() {
        assert!(check_reason(WITHDRAWAL_REASONS, "USER_REQUEST", None).is_ok());
        assert_eq!(
            check_reason(WITHDRAWAL_REASONS, "OTHER", Some("  "))
                .unwrap_err()
                .field,
            Some("reason_text")
        );
        assert_eq!(
            check_reason(REJECTION_REASONS, "USER_REQUEST", None)
                .unwrap_err()
                .field,
            Some("reason_code")
        );
        assert!(check_reason(REJECTION_REASONS, "OTHER", Some("blurred photo")).is_ok());
    }

    /// CON-10, CON-13, CON-15.
    #[test]
    fn evidence_rules() {
        use CaptureMode::*;
        assert_eq!(status_after_evidence(Online, true, false), Recorded::Active);
        assert_eq!(
            status_after_evidence(Online, false, false),
            Recorded::Pending
        );
        assert_eq!(
            status_after_evidence(Offline, true, false),
            Recorded::Pending
        );
        assert_eq!(status_after_evidence(Offline, true, true), Recorded::Active);
        assert_eq!(
            status_after_evidence(Offline, false, true),
            Recorded::Pending
        );
    }
}
