//! The consent REST API under `/v1/consents` (SEC-09, every `CON-*` line; INT-4.3-3, INT-4.3-4).
//!
//! Every route needs an admin bearer token, checked by [`Access`] (the one admin-token check); the
//! tenant is always the caller's own. Roles map to a [`model::Actor`] through the role lists of
//! `[consent]` (officer, field agent, evidence viewer, tenant admin, registrar) plus the admin
//! root role and `audit.read` (unmasked reads). Time is the consent service's clock ([`Consents::now_ms`]).
//!
//! | route | who | what |
//! |---|---|---|
//! | `PUT /v1/consents/persons/{person_id}` | registrar, root | person verification and contact state (CON-3, CON-34) |
//! | `POST /v1/consents` | officer, root (online); field agent (offline) | capture (CON-3, CON-10–16) |
//! | `POST /v1/consents/{id}/evidence` | officer, root; field agent for offline pending | attach evidence (CON-13, CON-15, CON-16) |
//! | `POST /v1/consents/{id}/verify` | officer, root | pending → active (CON-10, CON-13) |
//! | `POST /v1/consents/{id}/reject` | officer, root | pending → rejected (CON-20) |
//! | `POST /v1/consents/{id}/withdraw` | officer, root | withdrawal (CON-9, CON-22, CON-25, CON-36, INT-4.3-3) |
//! | `POST /v1/consents/{id}/renew` | officer, root | new dates and evidence (CON-21) |
//! | `GET /v1/consents/{id}` | officer, field agent, evidence viewer, tenant admin, root | current view (CON-35) |
//! | `GET /v1/consents/{id}/evidence` | evidence viewer, root | evidence, masked unless audit-level (CON-17, CON-19) |
//! | `GET /v1/consents/{id}/history` | tenant admin, root | every version (CON-8, CON-37) |
//! | `GET /v1/consents?person_id=` | officer, tenant admin, root | heads of a person |
//! | `PUT /v1/consents/aggregates/{route_id}/epoch` | registrar, root | aggregate refresh epoch (INT-4.3-4) |
//! | `POST /v1/consents/evaluate` | any consent role, root | staff access decision (CON-26, CON-29, CON-30, CON-32) |
//! | `GET /v1/consents/openapi.json` | any admin token | this API as OpenAPI 3.1 (its part of `/openapi.json`) |
//!
//! Every change is validated in full, recorded as a `consent_change` audit event and then written
//! as one new version by one [`Store::consent_append`] call (nothing half-written; when the event
//! cannot be recorded the answer is 503 `AUDIT_UNAVAILABLE` and nothing changes). Changes accept
//! `If-Match: "<version>"` (412 `PRECONDITION_FAILED` when stale); answers carry
//! `ETag: "<version>"`.
//!
//! Errors are `{"error": {"code", "message", "field"?}}`: `UNAUTHENTICATED` 401, `FORBIDDEN` 403,
//! `INVALID_REQUEST` 400 (`field` names the input), `NOT_FOUND` 404 (also a consent of another
//! tenant), `PERSON_UNKNOWN` 404, `PERSON_PROVISIONAL`, `CONSENT_EXISTS`, `VERSION_CONFLICT`,
//! `EVIDENCE_REQUIRED`, `INVALID_TRANSITION`, `RENEW_NOT_ALLOWED` 409, `PRECONDITION_FAILED` 412,
//! `PAYLOAD_TOO_LARGE` 413, `AUDIT_UNAVAILABLE`, `DEPENDENCY_UNAVAILABLE` 503. Person ids and
//! tokens never enter logs or audit records (persons appear as [`Consents::person_ref`]).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::ToSchema;
use utoipa_axum::routes;

use super::model::{
    self, Actor, CaptureMode, Change, ConsentVersion, Effective, IdentityVerification, Recorded,
    check_attachment_ids, check_reason, check_token,
};
use super::store::OutboxRow;
use super::{Consents, PersonRecord};
use crate::admin::AdminPrincipal;
use crate::admin::access::{Access, Caller, Target, Via};
use crate::api::openapi::ApiRouter;
use crate::api::{
    ApiError, ApiResult, ErrorCode, if_match, opt_time, parse, rfc3339, window, with_etag,
};
use crate::audit::AuditLog;
use crate::audit::record::{AuditEvent, RecordKind};
use crate::pipeline::SnapshotSlot;
use crate::store::Store;
use crate::time::parse_instant;

pub use crate::api::MAX_BODY_BYTES;

mod capture;
mod persons;
mod reads;
mod staff;

use capture::*;
use persons::*;
use reads::*;
use staff::*;

/// Most fields a field-level consent may list (INT-4.3-5).
const MAX_FIELDS: usize = 256;

/// State of the consent routes.
#[derive(Clone)]
pub struct ConsentHttp {
    pub consents: Arc<Consents>,
    /// The audit log; `None` when `audit.mode = "off"` (then no events are written).
    pub audit: Option<Arc<AuditLog>>,
    /// The admin-token check shared with the admin and audit routes.
    pub access: Access,
    pub snapshot: SnapshotSlot,
}

/// The consent routes with their OpenAPI operations. Who may call each is decided by the
/// consent role lists (`consent.*_roles`), named in each operation's summary.
pub fn routes() -> ApiRouter<ConsentHttp> {
    ApiRouter::new()
        .routes(routes!(capture, list))
        .routes(routes!(evaluate))
        .routes(routes!(put_person))
        .routes(routes!(set_epoch))
        .routes(routes!(get_consent))
        .routes(routes!(get_evidence, add_evidence))
        .routes(routes!(verify))
        .routes(routes!(reject))
        .routes(routes!(withdraw))
        .routes(routes!(renew))
        .routes(routes!(history))
        .route("/v1/consents/openapi.json", axum::routing::get(openapi))
}

/// `GET /v1/consents/openapi.json` (any admin token): [`openapi_document`].
async fn openapi(State(s): State<ConsentHttp>, headers: HeaderMap) -> ApiResult {
    s.authenticate(&headers).await?;
    Ok(axum::Json(openapi_document()).into_response())
}

/// The OpenAPI 3.1 document of the consent routes alone, generated from [`routes`] (the same
/// operations are part of the service-wide `/openapi.json`).
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    crate::api::openapi::finish(routes().into_openapi())
}

impl ConsentHttp {
    /// The API over `consents`, recording to `audit`, authenticating with `admin`, reading tenant
    /// settings (grace days, CON-27) from `snapshot`.
    pub fn new(
        consents: Arc<Consents>,
        audit: Option<Arc<AuditLog>>,
        access: Access,
        snapshot: SnapshotSlot,
    ) -> Self {
        ConsentHttp {
            consents,
            audit,
            access,
            snapshot,
        }
    }

    /// The routes, to merge into the HTTP listener's router (bodies limited to 64 KiB).
    pub fn router(self) -> Router {
        Router::from(routes())
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
            .with_state(self)
    }

    fn store(&self) -> &Store {
        self.consents.store()
    }

    /// The caller's consent permissions: the consent role lists (`consent.*_roles`) and, for
    /// unmasked reads, `audit.read` in the caller's own tenant (the same check as the audit API).
    fn actor(&self, caller: &Caller) -> Actor {
        let p = &caller.principal;
        let c = self.consents.config();
        let has = |list: &[String]| p.roles.iter().any(|r| list.contains(r));
        Actor {
            root: p.root,
            officer: has(&c.officer_roles),
            field_agent: has(&c.field_agent_roles),
            evidence_viewer: has(&c.evidence_roles),
            auditor: caller
                .require("audit.read", &Target::tenant(caller.tenant()))
                .is_ok_and(|via| via != Via::Root),
            tenant_admin: has(&c.tenant_admin_roles),
            registrar: has(&c.registrar_roles),
        }
    }

    async fn authenticate(&self, headers: &HeaderMap) -> Result<(AdminPrincipal, Actor), ApiError> {
        let caller = self.access.caller_from(headers).await?;
        let a = self.actor(&caller);
        Ok((caller.principal, a))
    }

    /// The tenant's grace period, days (CON-26, CON-27).
    fn grace_days(&self, tenant: &str) -> u32 {
        let snap = self.snapshot.load_full();
        snap.as_ref()
            .as_ref()
            .and_then(|s| s.tenants.get(tenant))
            .and_then(|t| t.tenant.consent_grace_days)
            .unwrap_or(self.consents.config().default_grace_days)
    }

    /// Records `ev` when the audit log is on; 503 `AUDIT_UNAVAILABLE` when it cannot.
    async fn record(&self, ev: AuditEvent) -> Result<(), ApiError> {
        if let Some(a) = &self.audit
            && let Err(e) = a.record_event(&ev).await
        {
            tracing::warn!(error = %e, kind = ev.kind.as_str(), "consent audit event not recorded");
            return Err(ApiError::audit_unavailable());
        }
        Ok(())
    }

    /// The newest version of consent `id` of `tenant` (404 when unknown or of another tenant).
    async fn load(&self, tenant: &str, id: &str) -> Result<ConsentVersion, ApiError> {
        check_token("consent_id", id)?;
        match self
            .store()
            .consent_latest(id)
            .await
            .map_err(ApiError::from)?
        {
            Some(v) if v.tenant_id == tenant => Ok(v),
            Some(v) => {
                crate::admin::ledger::cross_tenant(&v.tenant_id);
                Err(ApiError::new(ErrorCode::NotFound, "no such consent"))
            }
            None => Err(ApiError::new(ErrorCode::NotFound, "no such consent")),
        }
    }

    /// Writes `next` (one `consent_change` event, then one append) and drops the cached entry.
    async fn commit(&self, p: &AdminPrincipal, next: &ConsentVersion) -> Result<(), ApiError> {
        let detail = json!({
            "consent_id": next.consent_id,
            "version": next.version,
            "change": next.change.as_str(),
            "status": next.status.as_str(),
            "reason_code": next.reason_code,
            "vertical": next.vertical_id,
            "purpose": next.purpose,
            "person_ref": self.consents.person_ref(&next.tenant_id, &next.person_id),
        });
        self.record(
            AuditEvent::new(RecordKind::ConsentChange, Some(&next.tenant_id), detail)
                .actor(p.subject.clone())
                .subject(next.consent_id.clone()),
        )
        .await?;
        let res = self
            .store()
            .consent_append(next, self.consents.now_ms())
            .await;
        // Invalidate even on failure: a conflict means someone else changed the key.
        self.consents
            .invalidate(&next.tenant_id, &next.person_id, &next.vertical_id);
        res.map(|_| ()).map_err(ApiError::from)
    }

    /// The next version of `cur`: same consent, `version + 1`, fresh id, by `p` now.
    fn successor(
        &self,
        cur: &ConsentVersion,
        p: &AdminPrincipal,
        change: Change,
    ) -> ConsentVersion {
        let mut v = cur.clone();
        v.version = cur.version + 1;
        v.version_id = uuid::Uuid::now_v7().to_string();
        v.change = change;
        v.changed_by = p.subject.clone();
        v.changed_at_ms = self.consents.now_ms();
        v.reason_code = None;
        v.reason_text = None;
        v
    }
}

// ---------------------------------------------------------------------------------------------
// Errors

// ---------------------------------------------------------------------------------------------
// Request helpers

/// 412 when `If-Match` names another version than `cur`.
fn precondition(headers: &HeaderMap, cur: &ConsentVersion) -> Result<(), ApiError> {
    match if_match(headers)? {
        Some(v) if v != cur.version => Err(ApiError::new(
            ErrorCode::PreconditionFailed,
            format!(
                "the consent is at version {}, not {v}; read it again",
                cur.version
            ),
        )),
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------
// Views

/// The API view of a version at `now` (CON-35): computed `status` beside `recorded_status`;
/// evidence only as counts (the ids need the evidence permission, CON-17).
fn view(v: &ConsentVersion, now: i64) -> Value {
    let eff = v.effective(now);
    json!({
        "consent_id": v.consent_id,
        "version": v.version,
        "version_id": v.version_id,
        "tenant_id": v.tenant_id,
        "person_id": v.person_id,
        "vertical_id": v.vertical_id,
        "purpose": (!v.purpose.is_empty()).then_some(v.purpose.as_str()),
        "status": eff.as_str(),
        "recorded_status": v.status.as_str(),
        "in_grace": eff == Effective::Grace,
        "active_from": rfc3339(v.active_from_ms),
        "active_until": opt_time(v.active_until_ms),
        "grace_until": opt_time(v.grace_until_ms),
        "capture_mode": v.capture_mode.as_str(),
        "evidence_count": v.evidence_attachment_ids.len(),
        "has_verification_document": v.verification_document_attachment_id.is_some(),
        "identity_verification": v.identity_verification,
        "fields": v.fields,
        "reason_code": v.reason_code,
        "reason_text": v.reason_text,
        "change": v.change.as_str(),
        "captured_by": v.captured_by,
        "captured_at": rfc3339(v.captured_at_ms),
        "changed_by": v.changed_by,
        "changed_at": rfc3339(v.changed_at_ms),
    })
}

fn person_view(p: &PersonRecord) -> Value {
    json!({
        "tenant_id": p.tenant_id,
        "person_id": p.person_id,
        "verification": p.verification,
        "status": p.status,
        "channels": p.channels,
        "updated_at": rfc3339(p.updated_ms),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CON-26, CON-29, CON-28, CON-20: the staff decision table.
    #[test]
    fn staff_decisions() {
        use StaffAction::*;
        assert!(staff_decision(Effective::Active, Export).0);
        assert!(staff_decision(Effective::Grace, Read).0);
        assert!(!staff_decision(Effective::Grace, Write).0);
        assert!(!staff_decision(Effective::Grace, Export).0);
        for e in [
            Effective::Pending,
            Effective::Rejected,
            Effective::Withdrawn,
            Effective::Missing,
        ] {
            assert!(!staff_decision(e, Read).0);
        }
    }

    #[test]
    fn bad_inputs_name_their_field() {
        let e = parse::<CaptureReq>(Ok(Bytes::from_static(br#"{"person_id": "p", "nope": 1}"#)))
            .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("nope"));
        let e = parse::<CaptureReq>(Ok(Bytes::from_static(br#"{"person_id": 5}"#))).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("person_id"));
        let e = parse::<CaptureReq>(Ok(Bytes::from_static(
            br#"{"person_id": "p", "vertical_id": "v", "active_from": "x", "capture_mode": "online", "identity_verification": {"document_type": "id", "x": 1}}"#,
        )))
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("identity_verification.x"));
        let e =
            parse::<CaptureReq>(Ok(Bytes::from_static(br#"{"vertical_id": "v"}"#))).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("person_id"));
    }

    #[test]
    fn openapi_is_an_openapi_document() {
        let d = serde_json::to_value(openapi_document()).unwrap();
        assert_eq!(d["openapi"], "3.1.0");
        let paths = d["paths"].as_object().unwrap();
        assert_eq!(paths.len(), 11, "{:?}", paths.keys());
        assert_eq!(
            d["paths"]["/v1/consents"]["post"]["requestBody"]["content"]["application/json"]["schema"]
                ["$ref"],
            "#/components/schemas/CaptureReq"
        );
        assert!(d["components"]["schemas"]["CaptureMode"].is_object());
    }
}
