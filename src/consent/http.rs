//! The consent REST API under `/v1/consents` (SEC-09, every `CON-*` line; INT-4.3-3, INT-4.3-4).
//!
//! Every route needs an admin bearer token (the audience and roles claim of [`AdminAuth`]); the
//! tenant is always the caller's own. Roles map to a [`model::Actor`] through the role lists of
//! `[consent]` (officer, field agent, evidence viewer, tenant admin, registrar) plus the admin
//! root and audit roles. Time is the consent service's clock ([`Consents::now_ms`]).
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
//! | `GET /v1/consents/openapi.json` | any admin token | this API as OpenAPI 3.0 |
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
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use serde::Deserialize;
use serde_json::{Value, json};

use super::model::{
    self, Actor, CaptureMode, Change, ConsentVersion, Effective, IdentityVerification, Recorded,
    RuleError, check_attachment_ids, check_reason, check_token,
};
use super::store::OutboxRow;
use super::{ConsentStoreError, Consents, PersonRecord};
use crate::admin::{AdminAuth, AdminPrincipal};
use crate::api::{ApiError, ApiResult, if_match, opt_time, parse, rfc3339, window, with_etag};
use crate::audit::AuditLog;
use crate::audit::cmd::parse_instant;
use crate::audit::record::{AuditEvent, RecordKind};
use crate::pipeline::SnapshotSlot;
use crate::store::Store;

pub use crate::api::MAX_BODY_BYTES;

/// Most fields a field-level consent may list (INT-4.3-5).
const MAX_FIELDS: usize = 256;

/// State of the consent routes.
#[derive(Clone)]
pub struct ConsentHttp {
    pub consents: Arc<Consents>,
    /// The audit log; `None` when `audit.mode = "off"` (then no events are written).
    pub audit: Option<Arc<AuditLog>>,
    pub admin: AdminAuth,
    pub snapshot: SnapshotSlot,
}

impl ConsentHttp {
    /// The API over `consents`, recording to `audit`, authenticating with `admin`, reading tenant
    /// settings (grace days, CON-27) from `snapshot`.
    pub fn new(
        consents: Arc<Consents>,
        audit: Option<Arc<AuditLog>>,
        admin: AdminAuth,
        snapshot: SnapshotSlot,
    ) -> Self {
        ConsentHttp {
            consents,
            audit,
            admin,
            snapshot,
        }
    }

    /// The routes, to merge into the HTTP listener's router (bodies limited to 64 KiB).
    pub fn router(self) -> Router {
        Router::new()
            .route("/v1/consents", post(capture).get(list))
            .route("/v1/consents/openapi.json", get(openapi))
            .route("/v1/consents/evaluate", post(evaluate))
            .route("/v1/consents/persons/{person_id}", put(put_person))
            .route("/v1/consents/aggregates/{route_id}/epoch", put(set_epoch))
            .route("/v1/consents/{id}", get(get_consent))
            .route(
                "/v1/consents/{id}/evidence",
                get(get_evidence).post(add_evidence),
            )
            .route("/v1/consents/{id}/verify", post(verify))
            .route("/v1/consents/{id}/reject", post(reject))
            .route("/v1/consents/{id}/withdraw", post(withdraw))
            .route("/v1/consents/{id}/renew", post(renew))
            .route("/v1/consents/{id}/history", get(history))
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
            .with_state(self)
    }

    fn store(&self) -> &Store {
        self.consents.store()
    }

    /// The caller's consent permissions.
    fn actor(&self, p: &AdminPrincipal) -> Actor {
        let c = self.consents.config();
        let has = |list: &[String]| p.roles.iter().any(|r| list.contains(r));
        Actor {
            root: p.root,
            officer: has(&c.officer_roles),
            field_agent: has(&c.field_agent_roles),
            evidence_viewer: has(&c.evidence_roles),
            auditor: p.auditor,
            tenant_admin: has(&c.tenant_admin_roles),
            registrar: has(&c.registrar_roles),
        }
    }

    async fn authenticate(&self, headers: &HeaderMap) -> Result<(AdminPrincipal, Actor), ApiError> {
        let authz = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let p = self.admin.authenticate(authz).await?;
        let a = self.actor(&p);
        Ok((p, a))
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
        match self.store().consent_latest(id).await.map_err(store_error)? {
            Some(v) if v.tenant_id == tenant => Ok(v),
            _ => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                "no such consent",
            )),
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
        res.map(|_| ()).map_err(store_error)
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

impl From<RuleError> for ApiError {
    fn from(e: RuleError) -> Self {
        ApiError {
            status: StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST),
            code: e.code,
            message: e.message,
            field: e.field.map(str::to_owned),
        }
    }
}

fn store_error(e: ConsentStoreError) -> ApiError {
    match e {
        ConsentStoreError::Conflict(code, message) => ApiError::conflict(code, message),
        ConsentStoreError::Store(e) => {
            tracing::warn!(error = %e, "consent store unavailable");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "DEPENDENCY_UNAVAILABLE",
                "the consent store is unavailable",
            )
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Request helpers

/// 412 when `If-Match` names another version than `cur`.
fn precondition(headers: &HeaderMap, cur: &ConsentVersion) -> Result<(), ApiError> {
    match if_match(headers)? {
        Some(v) if v != cur.version => Err(ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "PRECONDITION_FAILED",
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

// ---------------------------------------------------------------------------------------------
// Persons and aggregate epochs

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PersonReq {
    verification: String,
    status: String,
    #[serde(default)]
    channels: Vec<String>,
}

/// `PUT /v1/consents/persons/{person_id}`: a person's verification and contact state, as SCP's
/// person registry reports it (registrar or root; CON-3, CON-11, CON-34).
async fn put_person(
    State(s): State<ConsentHttp>,
    Path(person_id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let (p, a) = s.authenticate(&headers).await?;
    if !(a.registrar || a.root) {
        return Err(ApiError::forbidden(
            "reporting persons needs the registrar role",
        ));
    }
    let req: PersonReq = parse(body)?;
    check_token("person_id", &person_id)?;
    if !matches!(req.verification.as_str(), "verified" | "provisional") {
        return Err(ApiError::invalid(
            "verification",
            "must be `verified` or `provisional`",
        ));
    }
    if !matches!(req.status.as_str(), "active" | "inactive" | "archived") {
        return Err(ApiError::invalid(
            "status",
            "must be `active`, `inactive` or `archived`",
        ));
    }
    let mut channels = req.channels;
    if channels
        .iter()
        .any(|c| !matches!(c.as_str(), "email" | "sms"))
    {
        return Err(ApiError::invalid(
            "channels",
            "each must be `email` or `sms`",
        ));
    }
    channels.sort();
    channels.dedup();
    let rec = PersonRecord {
        tenant_id: p.tenant_id.clone(),
        person_id,
        verification: req.verification,
        status: req.status,
        channels,
        updated_ms: s.consents.now_ms(),
    };
    s.record(
        AuditEvent::new(
            RecordKind::AdminChange,
            Some(&p.tenant_id),
            json!({
                "action": "consent_person_put",
                "person_ref": s.consents.person_ref(&rec.tenant_id, &rec.person_id),
                "verification": rec.verification,
                "status": rec.status,
                "channels": rec.channels,
            }),
        )
        .actor(p.subject.clone()),
    )
    .await?;
    s.store()
        .consent_put_person(&rec)
        .await
        .map_err(store_error)?;
    Ok((StatusCode::OK, axum::Json(person_view(&rec))).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EpochReq {
    epoch: String,
}

/// `PUT /v1/consents/aggregates/{route_id}/epoch`: the refresh epoch of an aggregate route;
/// withdrawals after it block the route until the producer declares a newer one (registrar or
/// root; INT-4.3-4, CON-23).
async fn set_epoch(
    State(s): State<ConsentHttp>,
    Path(route_id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let (p, a) = s.authenticate(&headers).await?;
    if !(a.registrar || a.root) {
        return Err(ApiError::forbidden(
            "declaring aggregate epochs needs the registrar role",
        ));
    }
    let req: EpochReq = parse(body)?;
    check_token("route_id", &route_id)?;
    let epoch = parse_instant(&req.epoch).map_err(|m| ApiError::invalid("epoch", m))?;
    s.record(
        AuditEvent::new(
            RecordKind::AdminChange,
            Some(&p.tenant_id),
            json!({"action": "consent_aggregate_epoch", "route_id": route_id, "epoch_ms": epoch}),
        )
        .actor(p.subject.clone()),
    )
    .await?;
    let now = s.consents.now_ms();
    s.store()
        .consent_set_aggregate_epoch(&p.tenant_id, &route_id, epoch, &p.subject, now)
        .await
        .map_err(store_error)?;
    Ok(axum::Json(json!({"route_id": route_id, "epoch": rfc3339(epoch)})).into_response())
}

// ---------------------------------------------------------------------------------------------
// Capture and changes

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaptureReq {
    person_id: String,
    vertical_id: String,
    #[serde(default)]
    purpose: Option<String>,
    active_from: String,
    #[serde(default)]
    active_until: Option<String>,
    capture_mode: CaptureMode,
    #[serde(default)]
    evidence_attachment_ids: Vec<String>,
    #[serde(default)]
    verification_document_attachment_id: Option<String>,
    #[serde(default)]
    identity_verification: Option<IdentityVerification>,
    #[serde(default)]
    fields: Option<Vec<String>>,
}

/// `POST /v1/consents`: captures a consent (CON-3, CON-4, CON-6, CON-10–CON-16). Online capture
/// by officers (or root), offline capture by field agents only, with the agent's identity check
/// and the document's photo or scan. The person must be known and verified. Without evidence, and
/// for every offline capture until verified, the consent is pending. 201 with the view.
async fn capture(
    State(s): State<ConsentHttp>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let (p, a) = s.authenticate(&headers).await?;
    if !(a.officer || a.field_agent || a.root) {
        return Err(ApiError::forbidden(
            "capturing consent needs the officer or field agent role",
        ));
    }
    let req: CaptureReq = parse(body)?;
    match req.capture_mode {
        CaptureMode::Online if !(a.officer || a.root) => {
            return Err(ApiError::forbidden(
                "online capture needs the consent officer role",
            ));
        }
        CaptureMode::Offline if !a.field_agent => {
            return Err(ApiError::forbidden(
                "offline capture is restricted to field agents (CON-12)",
            ));
        }
        _ => {}
    }
    check_token("person_id", &req.person_id)?;
    check_token("vertical_id", &req.vertical_id)?;
    let purpose = req.purpose.unwrap_or_default();
    if !purpose.is_empty() {
        check_token("purpose", &purpose)?;
    }
    let (from, until) = window(&req.active_from, req.active_until.as_deref())?;
    check_attachment_ids("evidence_attachment_ids", &req.evidence_attachment_ids)?;
    if let Some(d) = &req.verification_document_attachment_id {
        check_token("verification_document_attachment_id", d)?;
    }
    let now = s.consents.now_ms();
    let identity = match req.identity_verification {
        Some(i) => {
            check_token("identity_verification.document_type", &i.document_type)?;
            if let Some(b) = &i.verified_by {
                check_token("identity_verification.verified_by", b)?;
            }
            Some(IdentityVerification {
                document_type: i.document_type,
                verified_by: Some(i.verified_by.unwrap_or_else(|| p.subject.clone())),
                verified_at_ms: Some(i.verified_at_ms.unwrap_or(now)),
            })
        }
        None => None,
    };
    if req.capture_mode == CaptureMode::Offline {
        if identity.is_none() {
            return Err(ApiError::invalid(
                "identity_verification",
                "offline capture needs the agent's identity verification (CON-14)",
            ));
        }
        if req.verification_document_attachment_id.is_none() {
            return Err(ApiError::invalid(
                "verification_document_attachment_id",
                "offline capture needs a photo or scan of the identity document (CON-14)",
            ));
        }
    }
    if let Some(f) = &req.fields {
        if f.len() > MAX_FIELDS {
            return Err(ApiError::invalid(
                "fields",
                format!("at most {MAX_FIELDS} fields"),
            ));
        }
        for x in f {
            check_token("fields", x)?;
        }
    }
    match s
        .store()
        .consent_person(&p.tenant_id, &req.person_id)
        .await
        .map_err(store_error)?
    {
        None => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "PERSON_UNKNOWN",
                "the person registry has not reported this person",
            ));
        }
        Some(r) if r.verification != "verified" => {
            return Err(ApiError::conflict(
                "PERSON_PROVISIONAL",
                "consent cannot be captured for a provisional person (CON-3, CON-11)",
            ));
        }
        Some(_) => {}
    }
    let grace = s.grace_days(&p.tenant_id);
    let v = ConsentVersion {
        consent_id: uuid::Uuid::now_v7().to_string(),
        version: 1,
        version_id: uuid::Uuid::now_v7().to_string(),
        tenant_id: p.tenant_id.clone(),
        person_id: req.person_id,
        vertical_id: req.vertical_id,
        purpose,
        status: model::status_after_evidence(
            req.capture_mode,
            !req.evidence_attachment_ids.is_empty(),
            false,
        ),
        active_from_ms: from,
        active_until_ms: until,
        grace_until_ms: model::grace_until(until, grace),
        capture_mode: req.capture_mode,
        evidence_attachment_ids: req.evidence_attachment_ids,
        verification_document_attachment_id: req.verification_document_attachment_id,
        identity_verification: identity,
        fields: req.fields,
        reason_code: None,
        reason_text: None,
        change: Change::Capture,
        captured_by: p.subject.clone(),
        captured_at_ms: now,
        changed_by: p.subject.clone(),
        changed_at_ms: now,
    };
    s.commit(&p, &v).await?;
    Ok(with_etag(StatusCode::CREATED, v.version, view(&v, now)))
}

/// 409 `INVALID_TRANSITION` unless `cur` is in one of the recorded states `allowed`, and outside
/// the read-only grace period (CON-29).
fn expect_status(cur: &ConsentVersion, allowed: &[Recorded], now: i64) -> Result<(), ApiError> {
    if !allowed.contains(&cur.status) {
        return Err(ApiError::conflict(
            "INVALID_TRANSITION",
            format!("not allowed while the consent is {}", cur.status.as_str()),
        ));
    }
    match cur.effective(now) {
        Effective::Grace => Err(ApiError::conflict(
            "INVALID_TRANSITION",
            "the consent is expired and read-only during its grace period (CON-29)",
        )),
        Effective::Withdrawn => Err(ApiError::conflict(
            "INVALID_TRANSITION",
            "the consent is expired past its grace period, which counts as withdrawn (CON-28)",
        )),
        _ => Ok(()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EvidenceReq {
    evidence_attachment_ids: Vec<String>,
    #[serde(default)]
    verification_document_attachment_id: Option<String>,
}

/// `POST /v1/consents/{id}/evidence`: links more evidence (and the identity document) to a
/// pending or active consent (CON-13, CON-15, CON-16). An online pending consent becomes active
/// with evidence; an offline one stays pending until verified (CON-10). Officers, root, or field
/// agents for offline pending consents.
async fn add_evidence(
    State(s): State<ConsentHttp>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let (p, a) = s.authenticate(&headers).await?;
    if !(a.officer || a.field_agent || a.root) {
        return Err(ApiError::forbidden(
            "attaching evidence needs the officer or field agent role",
        ));
    }
    let req: EvidenceReq = parse(body)?;
    check_attachment_ids("evidence_attachment_ids", &req.evidence_attachment_ids)?;
    if let Some(d) = &req.verification_document_attachment_id {
        check_token("verification_document_attachment_id", d)?;
    }
    let cur = s.load(&p.tenant_id, &id).await?;
    let offline_pending =
        cur.capture_mode == CaptureMode::Offline && cur.status == Recorded::Pending;
    if !(a.officer || a.root || offline_pending) {
        return Err(ApiError::forbidden(
            "field agents may only add evidence to offline captures pending verification",
        ));
    }
    precondition(&headers, &cur)?;
    let now = s.consents.now_ms();
    expect_status(&cur, &[Recorded::Pending, Recorded::Active], now)?;
    let mut next = s.successor(&cur, &p, Change::Evidence);
    for e in req.evidence_attachment_ids {
        if !next.evidence_attachment_ids.contains(&e) {
            next.evidence_attachment_ids.push(e);
        }
    }
    check_attachment_ids("evidence_attachment_ids", &next.evidence_attachment_ids)?;
    if req.verification_document_attachment_id.is_some() {
        next.verification_document_attachment_id = req.verification_document_attachment_id;
    }
    if cur.status == Recorded::Pending {
        next.status = model::status_after_evidence(
            cur.capture_mode,
            !next.evidence_attachment_ids.is_empty(),
            false,
        );
    }
    s.commit(&p, &next).await?;
    Ok(with_etag(StatusCode::OK, next.version, view(&next, now)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

/// `POST /v1/consents/{id}/verify`: verification of a pending consent (officer or root): active
/// when evidence is present and, for offline capture, the identity check and document too; this
/// is the "verified on sync" step of offline capture (CON-10, CON-13, CON-14). Else 409
/// `EVIDENCE_REQUIRED`.
async fn verify(
    State(s): State<ConsentHttp>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let (p, a) = s.authenticate(&headers).await?;
    if !(a.officer || a.root) {
        return Err(ApiError::forbidden(
            "verifying consent needs the officer role",
        ));
    }
    let _: Empty = parse(body)?;
    let cur = s.load(&p.tenant_id, &id).await?;
    precondition(&headers, &cur)?;
    let now = s.consents.now_ms();
    expect_status(&cur, &[Recorded::Pending], now)?;
    if cur.evidence_attachment_ids.is_empty() {
        return Err(ApiError::conflict(
            "EVIDENCE_REQUIRED",
            "consent evidence (signature, photo or recording) must be attached first (CON-15)",
        ));
    }
    if cur.capture_mode == CaptureMode::Offline
        && (cur.identity_verification.is_none()
            || cur.verification_document_attachment_id.is_none())
    {
        return Err(ApiError::conflict(
            "EVIDENCE_REQUIRED",
            "offline capture needs the identity verification and the document's photo or scan (CON-14)",
        ));
    }
    let mut next = s.successor(&cur, &p, Change::Verify);
    next.status = model::status_after_evidence(cur.capture_mode, true, true);
    s.commit(&p, &next).await?;
    Ok(with_etag(StatusCode::OK, next.version, view(&next, now)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReasonReq {
    reason_code: String,
    #[serde(default)]
    reason_text: Option<String>,
}

/// `POST /v1/consents/{id}/reject`: rejects a pending consent with a reason from the fixed list
/// (`OTHER` needs text); it grants nothing and never enters grace (officer or root; CON-20).
async fn reject(
    State(s): State<ConsentHttp>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let (p, a) = s.authenticate(&headers).await?;
    if !(a.officer || a.root) {
        return Err(ApiError::forbidden(
            "rejecting consent needs the officer role",
        ));
    }
    let req: ReasonReq = parse(body)?;
    let (code, text) = check_reason(
        model::REJECTION_REASONS,
        &req.reason_code,
        req.reason_text.as_deref(),
    )?;
    let cur = s.load(&p.tenant_id, &id).await?;
    precondition(&headers, &cur)?;
    let now = s.consents.now_ms();
    expect_status(&cur, &[Recorded::Pending], now)?;
    let mut next = s.successor(&cur, &p, Change::Reject);
    next.status = Recorded::Rejected;
    next.reason_code = Some(code);
    next.reason_text = text;
    s.commit(&p, &next).await?;
    Ok(with_etag(StatusCode::OK, next.version, view(&next, now)))
}

/// `POST /v1/consents/{id}/withdraw`: withdraws a pending, active or expired-in-grace consent
/// with a reason from the fixed list (officer or root only; field agents are refused, CON-9;
/// CON-22, CON-25). Effective at once on this replica and on the others through the change feed
/// (CON-24). Then every integration that received the person's data in the vertical gets a
/// `frozen_share` audit event (INT-4.3-3) and a case suspension is queued for SCP core services
/// (CON-36). The answer lists the integrations as `frozen_shares`.
async fn withdraw(
    State(s): State<ConsentHttp>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let (p, a) = s.authenticate(&headers).await?;
    if !(a.officer || a.root) {
        return Err(ApiError::forbidden(
            "withdrawal is for online consent officers; field agents cannot withdraw (CON-9)",
        ));
    }
    let req: ReasonReq = parse(body)?;
    let (code, text) = check_reason(
        model::WITHDRAWAL_REASONS,
        &req.reason_code,
        req.reason_text.as_deref(),
    )?;
    let cur = s.load(&p.tenant_id, &id).await?;
    precondition(&headers, &cur)?;
    let now = s.consents.now_ms();
    let allowed = match cur.status {
        Recorded::Pending => true,
        Recorded::Active => cur.effective(now) != Effective::Withdrawn,
        Recorded::Rejected | Recorded::Withdrawn => false,
    };
    if !allowed {
        return Err(ApiError::conflict(
            "INVALID_TRANSITION",
            format!(
                "a consent that is {} cannot be withdrawn",
                cur.effective(now).as_str()
            ),
        ));
    }
    let mut next = s.successor(&cur, &p, Change::Withdraw);
    next.status = Recorded::Withdrawn;
    next.reason_code = Some(code);
    next.reason_text = text;
    s.commit(&p, &next).await?;

    // Frozen shares (INT-4.3-3): the integrations that already hold the person's data.
    s.consents.flush_shares().await;
    let pref = s.consents.person_ref(&next.tenant_id, &next.person_id);
    let shares = match s
        .consents
        .shares_of(&next.tenant_id, &next.person_id, &next.vertical_id)
        .await
    {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(error = %e, consent_id = %next.consent_id, "share ledger unreadable after a withdrawal; frozen-share events not written");
            Vec::new()
        }
    };
    let mut frozen = Vec::with_capacity(shares.len());
    for (integration, first_ms, last_ms) in shares {
        let ev = AuditEvent::new(
            RecordKind::FrozenShare,
            Some(&next.tenant_id),
            json!({
                "consent_id": next.consent_id,
                "version": next.version,
                "vertical": next.vertical_id,
                "integration_id": integration,
                "person_ref": pref,
                "first_ms": first_ms,
                "last_ms": last_ms,
            }),
        )
        .actor(p.subject.clone())
        .subject(integration.clone());
        if s.record(ev).await.is_err() {
            tracing::error!(consent_id = %next.consent_id, integration_id = %integration, "frozen-share event not recorded");
        }
        frozen.push(integration);
    }
    // Case suspension of the primary vertical (CON-36).
    let queued = match s
        .store()
        .consent_outbox_insert(&[OutboxRow::case_suspension(&next, now)])
        .await
    {
        Ok(_) => true,
        Err(e) => {
            tracing::error!(error = %e, consent_id = %next.consent_id, "case suspension not queued");
            false
        }
    };
    let mut body = view(&next, now);
    body["frozen_shares"] = json!(frozen);
    body["case_suspension_queued"] = json!(queued);
    Ok(with_etag(StatusCode::OK, next.version, body))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RenewReq {
    active_from: String,
    #[serde(default)]
    active_until: Option<String>,
    evidence_attachment_ids: Vec<String>,
}

/// `POST /v1/consents/{id}/renew`: a new version of an active (or expired, in grace) consent with
/// new dates and new evidence (officer or root; lifecycle step 9). Rejected consent must be
/// captured anew (CON-21), as must withdrawn or past-grace consent: 409 `RENEW_NOT_ALLOWED`.
async fn renew(
    State(s): State<ConsentHttp>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let (p, a) = s.authenticate(&headers).await?;
    if !(a.officer || a.root) {
        return Err(ApiError::forbidden(
            "renewing consent needs the officer role",
        ));
    }
    let req: RenewReq = parse(body)?;
    let (from, until) = window(&req.active_from, req.active_until.as_deref())?;
    check_attachment_ids("evidence_attachment_ids", &req.evidence_attachment_ids)?;
    let cur = s.load(&p.tenant_id, &id).await?;
    precondition(&headers, &cur)?;
    let now = s.consents.now_ms();
    match (cur.status, cur.effective(now)) {
        (Recorded::Rejected, _) => {
            return Err(ApiError::conflict(
                "RENEW_NOT_ALLOWED",
                "rejected consent is re-captured as a new record, never renewed (CON-21)",
            ));
        }
        (Recorded::Withdrawn, _) | (Recorded::Active, Effective::Withdrawn) => {
            return Err(ApiError::conflict(
                "RENEW_NOT_ALLOWED",
                "withdrawn consent (or expired past grace, CON-28) is re-captured as a new record",
            ));
        }
        (Recorded::Pending, _) => {
            return Err(ApiError::conflict(
                "INVALID_TRANSITION",
                "a pending consent is completed with evidence and verification, not renewed",
            ));
        }
        (Recorded::Active, _) => {}
    }
    let mut next = s.successor(&cur, &p, Change::Renew);
    next.active_from_ms = from;
    next.active_until_ms = until;
    next.grace_until_ms = model::grace_until(until, s.grace_days(&cur.tenant_id));
    next.status = model::status_after_evidence(
        cur.capture_mode,
        !req.evidence_attachment_ids.is_empty(),
        true,
    );
    next.evidence_attachment_ids = req.evidence_attachment_ids;
    s.commit(&p, &next).await?;
    Ok(with_etag(StatusCode::OK, next.version, view(&next, now)))
}

// ---------------------------------------------------------------------------------------------
// Reads

/// `GET /v1/consents/{id}`: the current view (CON-35) with the computed status (CON-5, CON-28);
/// evidence only as a count (CON-17). Officers, field agents, evidence viewers, tenant admins,
/// root.
async fn get_consent(
    State(s): State<ConsentHttp>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let (p, a) = s.authenticate(&headers).await?;
    if !(a.officer || a.field_agent || a.evidence_viewer || a.tenant_admin || a.root) {
        return Err(ApiError::forbidden("reading consent needs a consent role"));
    }
    let cur = s.load(&p.tenant_id, &id).await?;
    Ok(with_etag(
        StatusCode::OK,
        cur.version,
        view(&cur, s.consents.now_ms()),
    ))
}

/// `GET /v1/consents/{id}/evidence`: the evidence attachment ids, masked unless the caller has
/// audit-level permission or is root (evidence viewers or root; CON-16, CON-17). Every access is
/// a `consent_evidence_access` audit event (CON-19; root also `root_bypass`); when it cannot be
/// recorded: 503 `AUDIT_UNAVAILABLE` and nothing is shown.
async fn get_evidence(
    State(s): State<ConsentHttp>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let (p, a) = s.authenticate(&headers).await?;
    if !(a.evidence_viewer || a.root) {
        return Err(ApiError::forbidden(
            "viewing consent evidence needs the evidence viewer role (CON-17)",
        ));
    }
    let cur = s.load(&p.tenant_id, &id).await?;
    let unmasked = a.auditor || a.root;
    let detail = json!({
        "consent_id": cur.consent_id,
        "version": cur.version,
        "vertical": cur.vertical_id,
        "person_ref": s.consents.person_ref(&cur.tenant_id, &cur.person_id),
        "masked": !unmasked,
        "evidence_count": cur.evidence_attachment_ids.len(),
    });
    if a.root {
        let mut d = detail.clone();
        d["action"] = json!("consent_evidence_read");
        s.record(
            AuditEvent::new(RecordKind::RootBypass, Some(&p.tenant_id), d)
                .actor(p.subject.clone())
                .subject(cur.consent_id.clone()),
        )
        .await?;
    }
    s.record(
        AuditEvent::new(
            RecordKind::ConsentEvidenceAccess,
            Some(&p.tenant_id),
            detail,
        )
        .actor(p.subject.clone())
        .subject(cur.consent_id.clone()),
    )
    .await?;
    let mut body = model::evidence_view(&cur, unmasked);
    body["consent_id"] = json!(cur.consent_id);
    body["version"] = json!(cur.version);
    Ok(with_etag(StatusCode::OK, cur.version, body))
}

/// `GET /v1/consents/{id}/history`: every version, oldest first (tenant admins and root only;
/// CON-7, CON-8, CON-37).
async fn history(
    State(s): State<ConsentHttp>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let (p, a) = s.authenticate(&headers).await?;
    if !(a.tenant_admin || a.root) {
        return Err(ApiError::forbidden(
            "consent version history is visible only to tenant admins and root (CON-37)",
        ));
    }
    let cur = s.load(&p.tenant_id, &id).await?;
    let now = s.consents.now_ms();
    let versions = s
        .store()
        .consent_history(&cur.consent_id)
        .await
        .map_err(store_error)?;
    let versions: Vec<Value> = versions.iter().map(|v| view(v, now)).collect();
    Ok(with_etag(
        StatusCode::OK,
        cur.version,
        json!({"consent_id": cur.consent_id, "versions": versions}),
    ))
}

/// `GET /v1/consents?person_id=…`: the current consents (one per vertical and purpose) of a
/// person (officers, tenant admins, root).
async fn list(
    State(s): State<ConsentHttp>,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let (p, a) = s.authenticate(&headers).await?;
    if !(a.officer || a.tenant_admin || a.root) {
        return Err(ApiError::forbidden(
            "listing consents needs the officer or tenant admin role",
        ));
    }
    let Ok(Query(q)) = query else {
        return Err(ApiError::invalid("person_id", "malformed query"));
    };
    if let Some(k) = q.keys().find(|k| *k != "person_id") {
        return Err(ApiError::invalid(k.clone(), "unknown query parameter"));
    }
    let person = q
        .get("person_id")
        .ok_or_else(|| ApiError::invalid("person_id", "required"))?;
    check_token("person_id", person)?;
    let now = s.consents.now_ms();
    let heads = s
        .store()
        .consent_heads_of_person(&p.tenant_id, person)
        .await
        .map_err(store_error)?;
    let views: Vec<Value> = heads.iter().map(|v| view(v, now)).collect();
    Ok(axum::Json(json!({"consents": views})).into_response())
}

// ---------------------------------------------------------------------------------------------
// Staff access decisions

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum StaffAction {
    Read,
    Write,
    Export,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EvaluateReq {
    person_id: String,
    vertical_id: String,
    #[serde(default)]
    purpose: Option<String>,
    action: StaffAction,
}

/// The staff decision for a consent state (CON-5, CON-20, CON-22, CON-26, CON-28, CON-29): active
/// allows everything; grace allows reads only; everything else denies. Root is decided by the
/// caller (it bypasses, CON-32).
fn staff_decision(status: Effective, action: StaffAction) -> (bool, &'static str) {
    match (status, action) {
        (Effective::Active, _) => (true, "consent_active"),
        (Effective::Grace, StaffAction::Read) => (true, "grace_read_only"),
        (Effective::Grace, _) => (false, "grace_read_only"),
        (Effective::Pending, _) => (false, "consent_pending"),
        (Effective::Rejected, _) => (false, "consent_rejected"),
        (Effective::Withdrawn, _) => (false, "consent_withdrawn"),
        (Effective::Missing, _) => (false, "consent_missing"),
    }
}

/// `POST /v1/consents/evaluate`: may a staff system act on a person's data in a vertical now?
/// `{decision: allow|deny, status, reason}` (CON-5, CON-26, CON-28, CON-29). Root bypasses every
/// consent check, including exports during grace, and every bypass is a `root_bypass` audit event
/// (CON-30, CON-32); no one else has a bypass. Any consent role may ask.
async fn evaluate(
    State(s): State<ConsentHttp>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let (p, a) = s.authenticate(&headers).await?;
    if !(a.officer || a.field_agent || a.evidence_viewer || a.tenant_admin || a.root) {
        return Err(ApiError::forbidden(
            "evaluating consent needs a consent role",
        ));
    }
    let req: EvaluateReq = parse(body)?;
    check_token("person_id", &req.person_id)?;
    check_token("vertical_id", &req.vertical_id)?;
    let purpose = req.purpose.filter(|x| !x.is_empty());
    if let Some(x) = &purpose {
        check_token("purpose", x)?;
    }
    // From the store, not the enforcement cache: staff see which consent decided, and the
    // cache keeps only what a decision needs (no consent id or version).
    let heads = s
        .consents
        .store()
        .consent_head_summaries(&p.tenant_id, &req.person_id, &req.vertical_id)
        .await
        .map_err(store_error)?;
    let now = s.consents.now_ms();
    let (status, version) = Consents::decide(&heads, purpose.as_deref(), now);
    let (mut allow, mut reason) = staff_decision(status, req.action);
    let action = match req.action {
        StaffAction::Read => "read",
        StaffAction::Write => "write",
        StaffAction::Export => "export",
    };
    if a.root {
        s.record(
            AuditEvent::new(
                RecordKind::RootBypass,
                Some(&p.tenant_id),
                json!({
                    "action": format!("consent_{action}"),
                    "consent_status": status.as_str(),
                    "consent_id": version.map(|v| v.consent_id.as_str()),
                    "vertical": req.vertical_id,
                    "purpose": purpose,
                    "person_ref": s.consents.person_ref(&p.tenant_id, &req.person_id),
                }),
            )
            .actor(p.subject.clone()),
        )
        .await?;
        if !allow {
            reason = "root_bypass";
        }
        allow = true;
    }
    Ok(axum::Json(json!({
        "decision": if allow { "allow" } else { "deny" },
        "status": status.as_str(),
        "in_grace": status == Effective::Grace,
        "reason": reason,
        "action": action,
        "consent_id": version.map(|v| v.consent_id.as_str()),
        "version": version.map(|v| v.version),
    }))
    .into_response())
}

// ---------------------------------------------------------------------------------------------
// OpenAPI

/// `GET /v1/consents/openapi.json`: this API as an OpenAPI 3.0 document (any admin token).
async fn openapi(State(s): State<ConsentHttp>, headers: HeaderMap) -> ApiResult {
    s.authenticate(&headers).await?;
    Ok(axum::Json(openapi_document()).into_response())
}

/// The OpenAPI 3.0 document of the consent API.
pub fn openapi_document() -> Value {
    let err = |d: &str| json!({"description": d, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let consent = |d: &str| json!({"description": d, "headers": {"ETag": {"schema": {"type": "string"}, "description": "\"<version>\""}}, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Consent"}}}});
    let body = |schema: &str| json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}});
    let id = json!({"name": "id", "in": "path", "required": true, "schema": {"type": "string"}});
    let if_match = json!({"name": "If-Match", "in": "header", "required": false, "schema": {"type": "string"}, "description": "\"<version>\": refuse with 412 when the consent is at another version"});
    let common = json!({
        "400": err("INVALID_REQUEST (field names the input)"),
        "401": err("UNAUTHENTICATED"),
        "403": err("FORBIDDEN"),
        "404": err("NOT_FOUND"),
        "503": err("AUDIT_UNAVAILABLE or DEPENDENCY_UNAVAILABLE"),
    });
    let merge = |extra: Value| {
        let mut m = common.clone();
        if let (Some(m), Some(e)) = (m.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                m.insert(k.clone(), v.clone());
            }
        }
        m
    };
    let change = |summary: &str, schema: Option<&str>, extra: Value| {
        let mut op = json!({
            "summary": summary,
            "parameters": [id, if_match],
            "responses": merge(json!({
                "200": consent("the new version"),
                "409": err("VERSION_CONFLICT, INVALID_TRANSITION, EVIDENCE_REQUIRED or RENEW_NOT_ALLOWED"),
                "412": err("PRECONDITION_FAILED"),
            })),
        });
        if let Some(s) = schema {
            op["requestBody"] = body(s);
        }
        if let (Some(r), Some(e)) = (op["responses"].as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                r.insert(k.clone(), v.clone());
            }
        }
        json!({"post": op})
    };
    let ts = json!({"type": "string", "format": "date-time"});
    let ts_null = json!({"type": "string", "format": "date-time", "nullable": true});
    let ids = json!({"type": "array", "items": {"type": "string"}, "maxItems": 32});
    let paths = json!({
        "/v1/consents": {
            "post": {
                "summary": "Capture consent (online: officer; offline: field agent)",
                "requestBody": body("CaptureRequest"),
                "responses": merge(json!({
                    "201": consent("captured (pending without evidence, and offline until verified)"),
                    "404": err("NOT_FOUND or PERSON_UNKNOWN"),
                    "409": err("PERSON_PROVISIONAL or CONSENT_EXISTS"),
                })),
            },
            "get": {
                "summary": "Current consents of a person (officer, tenant admin)",
                "parameters": [{"name": "person_id", "in": "query", "required": true, "schema": {"type": "string"}}],
                "responses": merge(json!({"200": {"description": "heads", "content": {"application/json": {"schema": {"type": "object", "properties": {"consents": {"type": "array", "items": {"$ref": "#/components/schemas/Consent"}}}}}}}})),
            },
        },
        "/v1/consents/{id}": {"get": {
            "summary": "Current view (evidence as a count only)",
            "parameters": [id],
            "responses": merge(json!({"200": consent("the current version")})),
        }},
        "/v1/consents/{id}/evidence": {
            "get": {
                "summary": "Evidence attachment ids (evidence viewer; masked unless audit-level); every access is audited",
                "parameters": [id],
                "responses": merge(json!({"200": {"description": "evidence", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Evidence"}}}}})),
            },
            "post": change("Attach evidence", Some("EvidenceRequest"), json!({}))["post"].clone(),
        },
        "/v1/consents/{id}/verify": change("Verify a pending consent (officer)", None, json!({})),
        "/v1/consents/{id}/reject": change("Reject a pending consent (officer)", Some("ReasonRequest"), json!({})),
        "/v1/consents/{id}/withdraw": change("Withdraw (officer; never field agents); answers with frozen_shares", Some("ReasonRequest"), json!({})),
        "/v1/consents/{id}/renew": change("Renew an active or in-grace consent (officer)", Some("RenewRequest"), json!({})),
        "/v1/consents/{id}/history": {"get": {
            "summary": "Every version (tenant admin, root)",
            "parameters": [id],
            "responses": merge(json!({"200": {"description": "versions, oldest first", "content": {"application/json": {"schema": {"type": "object", "properties": {"consent_id": {"type": "string"}, "versions": {"type": "array", "items": {"$ref": "#/components/schemas/Consent"}}}}}}}})),
        }},
        "/v1/consents/persons/{person_id}": {"put": {
            "summary": "Report a person's verification and contact state (registrar)",
            "parameters": [{"name": "person_id", "in": "path", "required": true, "schema": {"type": "string"}}],
            "requestBody": body("PersonRequest"),
            "responses": merge(json!({"200": {"description": "the person", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Person"}}}}})),
        }},
        "/v1/consents/aggregates/{route_id}/epoch": {"put": {
            "summary": "Declare an aggregate route's refresh epoch (registrar)",
            "parameters": [{"name": "route_id", "in": "path", "required": true, "schema": {"type": "string"}}],
            "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "additionalProperties": false, "required": ["epoch"], "properties": {"epoch": ts}}}}},
            "responses": merge(json!({"200": {"description": "stored", "content": {"application/json": {"schema": {"type": "object", "properties": {"route_id": {"type": "string"}, "epoch": ts}}}}}})),
        }},
        "/v1/consents/evaluate": {"post": {
            "summary": "Staff access decision (root bypasses, audited)",
            "requestBody": body("EvaluateRequest"),
            "responses": merge(json!({"200": {"description": "decision", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Decision"}}}}})),
        }},
        "/v1/consents/openapi.json": {"get": {
            "summary": "This document",
            "responses": {"200": {"description": "OpenAPI 3.0"}, "401": err("UNAUTHENTICATED")},
        }},
    });
    let consent_schema = json!({"type": "object", "properties": {
                    "consent_id": {"type": "string"}, "version": {"type": "integer"}, "version_id": {"type": "string"},
                    "tenant_id": {"type": "string"}, "person_id": {"type": "string"}, "vertical_id": {"type": "string"},
                    "purpose": {"type": "string", "nullable": true},
                    "status": {"type": "string", "enum": ["pending", "active", "expired", "rejected", "withdrawn"]},
                    "recorded_status": {"type": "string", "enum": ["pending", "active", "rejected", "withdrawn"]},
                    "in_grace": {"type": "boolean"},
                    "active_from": ts, "active_until": ts_null, "grace_until": ts_null,
                    "capture_mode": {"type": "string", "enum": ["online", "offline"]},
                    "evidence_count": {"type": "integer"}, "has_verification_document": {"type": "boolean"},
                    "identity_verification": {"type": "object", "nullable": true},
                    "fields": {"type": "array", "nullable": true, "items": {"type": "string"}},
                    "reason_code": {"type": "string", "nullable": true}, "reason_text": {"type": "string", "nullable": true},
                    "change": {"type": "string", "enum": ["capture", "evidence", "verify", "reject", "withdraw", "renew"]},
                    "captured_by": {"type": "string"}, "captured_at": ts, "changed_by": {"type": "string"}, "changed_at": ts,
                    "frozen_shares": {"type": "array", "items": {"type": "string"}, "description": "withdraw only"},
                    "case_suspension_queued": {"type": "boolean", "description": "withdraw only"}}});
    let mut schemas = json!({
        "Error": {"type": "object", "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "field": {"type": "string"}}}}},
        "CaptureRequest": {"type": "object", "additionalProperties": false,
            "required": ["person_id", "vertical_id", "active_from", "capture_mode"],
            "properties": {
                "person_id": {"type": "string"}, "vertical_id": {"type": "string"}, "purpose": {"type": "string"},
                "active_from": ts, "active_until": ts_null,
                "capture_mode": {"type": "string", "enum": ["online", "offline"]},
                "evidence_attachment_ids": ids,
                "verification_document_attachment_id": {"type": "string", "description": "required for offline capture"},
                "identity_verification": {"type": "object", "additionalProperties": false, "required": ["document_type"], "description": "required for offline capture",
                    "properties": {"document_type": {"type": "string"}, "verified_by": {"type": "string"}, "verified_at_ms": {"type": "integer", "format": "int64"}}},
                "fields": {"type": "array", "items": {"type": "string"}},
            }},
        "EvidenceRequest": {"type": "object", "additionalProperties": false, "required": ["evidence_attachment_ids"],
            "properties": {"evidence_attachment_ids": ids, "verification_document_attachment_id": {"type": "string"}}},
        "ReasonRequest": {"type": "object", "additionalProperties": false, "required": ["reason_code"],
            "properties": {"reason_code": {"type": "string", "description": format!("reject: {}; withdraw: {}", model::REJECTION_REASONS.join(", "), model::WITHDRAWAL_REASONS.join(", "))},
                "reason_text": {"type": "string", "description": "required for OTHER"}}},
        "RenewRequest": {"type": "object", "additionalProperties": false, "required": ["active_from", "evidence_attachment_ids"],
            "properties": {"active_from": ts, "active_until": ts_null, "evidence_attachment_ids": ids}},
        "PersonRequest": {"type": "object", "additionalProperties": false, "required": ["verification", "status"],
            "properties": {"verification": {"type": "string", "enum": ["verified", "provisional"]},
                "status": {"type": "string", "enum": ["active", "inactive", "archived"]},
                "channels": {"type": "array", "items": {"type": "string", "enum": ["email", "sms"]}}}},
        "Person": {"type": "object", "properties": {"tenant_id": {"type": "string"}, "person_id": {"type": "string"}, "verification": {"type": "string"}, "status": {"type": "string"}, "channels": {"type": "array", "items": {"type": "string"}}, "updated_at": ts}},
        "EvaluateRequest": {"type": "object", "additionalProperties": false, "required": ["person_id", "vertical_id", "action"],
            "properties": {"person_id": {"type": "string"}, "vertical_id": {"type": "string"}, "purpose": {"type": "string"}, "action": {"type": "string", "enum": ["read", "write", "export"]}}},
        "Decision": {"type": "object", "properties": {
            "decision": {"type": "string", "enum": ["allow", "deny"]},
            "status": {"type": "string", "enum": ["missing", "pending", "active", "expired", "rejected", "withdrawn"]},
            "in_grace": {"type": "boolean"},
            "reason": {"type": "string"}, "action": {"type": "string"},
            "consent_id": {"type": "string", "nullable": true}, "version": {"type": "integer", "nullable": true}}},
        "Evidence": {"type": "object", "properties": {
            "consent_id": {"type": "string"}, "version": {"type": "integer"},
            "evidence_attachment_ids": {"type": "array", "items": {"type": "string"}},
            "verification_document_attachment_id": {"type": "string", "nullable": true},
            "masked": {"type": "boolean"}}}
    });
    schemas["Consent"] = consent_schema;
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "scp-pep consent API",
            "version": "1",
            "description": "Per-person, per-vertical consent (SCP-SPEC-SEC-09). Every route needs an admin bearer token; the tenant is the token's. Changes are recorded as consent_change audit events before they are written.",
        },
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "schemas": schemas,
        },
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
        let d = openapi_document();
        assert_eq!(d["openapi"], "3.0.3");
        assert_eq!(d["paths"].as_object().map(|p| p.len()), Some(12));
    }
}
