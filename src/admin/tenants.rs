//! Tenant settings that need the umbrella authority: the consent grace period and reminder
//! schedule (CON-27: grace ≤ 90 days, approved by the umbrella authority; CON-33).
//!
//! | route | permission | what |
//! |---|---|---|
//! | `GET /v1/tenants/{tenant_id}` | `integrations.read` | the tenant document (issuer, residency, settings) |
//! | `PATCH /v1/tenants/{tenant_id}/consent-settings` | `tenants.consent_settings` | grace days, reminder days |
//!
//! A change is one audited [`AdminHttp::commit`] of the (enforced) tenant document, guarded by
//! `If-Match`; the document then belongs to the API (policy files no longer override it).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::ToSchema;
use utoipa_axum::routes;

use super::http::{AdminHttp, ChangeRecord, Target, check_reason};
use crate::api::openapi::ApiRouter;
use crate::api::{ApiError, ApiResult, parse, precondition, with_etag};
use crate::policy::Tenant;
use crate::store::{DocChange, DocKind, Expect, StoredDoc};

/// The tenant routes.
pub fn routes() -> ApiRouter<AdminHttp> {
    ApiRouter::new()
        .routes(routes!(get_tenant))
        .routes(routes!(patch_consent_settings))
}

/// Loads tenant `id` (404 when unknown, or another tenant's for a non-root caller).
async fn load(
    s: &AdminHttp,
    caller: &super::http::Caller,
    id: &str,
) -> Result<(StoredDoc, Tenant), ApiError> {
    let tenant = caller
        .tenant_for(Some(id))
        .map_err(|_| ApiError::not_found("no such tenant"))?;
    let doc = s
        .store
        .document(DocKind::Tenant, tenant)
        .await
        .map_err(|e| ApiError::unavailable("policy store", &e))?
        .ok_or_else(|| ApiError::not_found("no such tenant"))?;
    let t: Tenant =
        serde_json::from_str(&doc.doc).map_err(|e| ApiError::unavailable("tenant document", &e))?;
    Ok((doc, t))
}

fn view(doc: &StoredDoc, t: &Tenant) -> Value {
    json!({
        "tenant_id": t.id,
        "residency_region": t.residency_region,
        "issuer": t.issuer,
        "consent_grace_days": t.consent_grace_days,
        "consent_reminder_days": t.consent_reminder_days,
        "audit_retention_days": t.audit_retention_days,
        "version": doc.version,
        "source": doc.source,
        "updated_at": doc.updated_at,
    })
}

/// `GET /v1/tenants/{tenant_id}`: the tenant document.
#[utoipa::path(get, path = "/v1/tenants/{tenant_id}", tag = "tenants",
    summary = "A tenant's settings (issuer, residency, consent and retention settings)",
    params(("tenant_id" = String, Path)),
    security(("bearer" = ["integrations.read"])),
    responses((status = 200, description = "The tenant; ETag = version", body = Object)))]
async fn get_tenant(
    State(s): State<AdminHttp>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let caller = s.caller(&headers).await?;
    caller.require_some("integrations.read")?;
    let (doc, t) = load(&s, &caller, &id).await?;
    caller.require("integrations.read", &Target::tenant(&t.id))?;
    Ok(with_etag(StatusCode::OK, doc.version, view(&doc, &t)))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ConsentSettingsReq {
    /// Days of read-only grace after a consent expires (≤ 90; `null` = the server default).
    #[serde(default)]
    #[schema(maximum = 90)]
    consent_grace_days: Option<u32>,
    /// Days before expiry reminders go out, each 1..=365.
    #[serde(default)]
    consent_reminder_days: Option<Vec<u32>>,
    reason_code: String,
    #[serde(default)]
    reason_text: Option<String>,
}

/// `PATCH /v1/tenants/{id}/consent-settings` (CON-27, CON-33): umbrella authority only.
#[utoipa::path(patch, path = "/v1/tenants/{tenant_id}/consent-settings", tag = "tenants",
    summary = "Consent grace period and reminder schedule (umbrella authority; CON-27, CON-33)",
    params(("tenant_id" = String, Path), crate::api::openapi::IfMatch),
    request_body = ConsentSettingsReq,
    security(("bearer" = ["tenants.consent_settings"])),
    responses((status = 200, description = "The tenant; ETag = version", body = Object)))]
async fn patch_consent_settings(
    State(s): State<AdminHttp>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let caller = s.caller(&headers).await?;
    caller.require_some("tenants.consent_settings")?;
    let req: ConsentSettingsReq = parse(body)?;
    let (doc, mut t) = load(&s, &caller, &id).await?;
    let via = caller.require("tenants.consent_settings", &Target::tenant(&t.id))?;
    check_reason(
        "reason_code",
        &req.reason_code,
        "reason_text",
        req.reason_text.as_deref(),
    )?;
    if let Some(d) = req.consent_grace_days
        && d > crate::consent::model::MAX_GRACE_DAYS
    {
        return Err(ApiError::invalid(
            "consent_grace_days",
            "at most 90 days (CON-27)",
        ));
    }
    if let Some(days) = &req.consent_reminder_days
        && (days.is_empty() || days.len() > 16 || days.iter().any(|d| !(1..=365).contains(d)))
    {
        return Err(ApiError::invalid(
            "consent_reminder_days",
            "1 to 16 values, each between 1 and 365",
        ));
    }
    precondition(&headers, doc.version, &format!("tenant {}", t.id))?;
    let before = json!({"consent_grace_days": t.consent_grace_days, "consent_reminder_days": t.consent_reminder_days});
    t.consent_grace_days = req.consent_grace_days;
    t.consent_reminder_days = req.consent_reminder_days;
    let text = serde_json::to_string(&t).map_err(|e| ApiError::unavailable("encoder", &e))?;
    let written = s
        .commit(
            &caller,
            &via,
            ChangeRecord::admin(
                "tenant.consent_settings",
                &t.id,
                &t.id,
                json!({
                    "before": before,
                    "after": {"consent_grace_days": t.consent_grace_days, "consent_reminder_days": t.consent_reminder_days},
                    "reason_code": req.reason_code,
                    "reason_text": req.reason_text,
                }),
            ),
            vec![
                DocChange::put(DocKind::Tenant, &t.id, Some(&t.id), text)
                    .expect(Expect::Version(doc.version)),
            ],
        )
        .await?;
    let version = written.versions.first().copied().unwrap_or(doc.version + 1);
    let doc = StoredDoc {
        version,
        source: "api".into(),
        ..doc
    };
    Ok(with_etag(StatusCode::OK, version, view(&doc, &t)))
}
