//! Audit export over HTTP: readable only with `audit.read`, answered with a signed, time-limited
//! download link (EXT-4.1-1, EXT-6-1, EXT-6-3, INT-8-2).
//!
//! - `POST /v1/audit/exports` with `authorization: Bearer <admin token>` and a JSON body
//!   `{"tenant": "ke", "from": "2026-11-01", "to": "2026-11-22T00:00:00Z", "format": "jsonl"|"csv"}`
//!   (`from`/`to` optional: RFC 3339 or `YYYY-MM-DD`). The caller must hold `audit.read` for that
//!   tenant (an audit role's claim mapping or a role assignment; or root, which is also recorded
//!   as `root_bypass`). Answer `201`:
//!   `{"url": "/v1/audit/exports/download?…&sig=…", "expires_at": "…", "expires_in_s": 300}`.
//! - `GET /v1/audit/exports/download?…` streams the export. The link is bound to the caller it
//!   was issued to: the download needs an admin bearer token of the same subject from the same
//!   tenant's issuer, still holding `audit.read` for the exported tenant, so a leaked link alone
//!   reads nothing. Its parameters are covered by an HMAC-SHA-256 (`audit.link_key`), compared in
//!   constant time, and it expires after `audit.link_ttl_s` seconds.
//!
//! Issuing a link and every download are `audit_access` records (a download names who actually
//! downloaded, the subject the link was issued to and the peer address); when one cannot be
//! written the answer is 503 `AUDIT_UNAVAILABLE` and nothing is exported (no unaudited read of
//! the audit log).
//!
//! Errors are `{"error": {"code": "…", "message": "…", "field": "…"}}` with codes
//! `UNAUTHENTICATED` (401), `FORBIDDEN` (403), `INVALID_REQUEST` (400, `field` names the input),
//! `LINK_INVALID` (403), `LINK_EXPIRED` (410), `AUDIT_UNAVAILABLE` (503),
//! `DEPENDENCY_UNAVAILABLE` (503).

use std::sync::Arc;

use aws_lc_rs::hmac;
use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::routes;

use super::AuditLog;
use super::export::{ExportRequest, ExportSink, Format};
use super::record::{AuditEvent, RecordKind};
use crate::admin::access::{Access, Target, Via};
use crate::api::openapi::ApiRouter;
use crate::api::{ApiError, ErrorCode};
use crate::store::Store;
use crate::time::parse_instant;

/// State of the audit HTTP routes.
#[derive(Clone)]
pub struct AuditHttp {
    pub store: Store,
    pub audit: Arc<AuditLog>,
    /// The admin-token check (`audit.read`).
    pub access: Access,
    link_key: Arc<hmac::Key>,
    link_ttl_s: u64,
}

impl AuditHttp {
    /// `link_key`: HMAC key of download links (≥ 32 bytes recommended; `None`: 32 random bytes,
    /// so links only work on this replica). `link_ttl_s`: link lifetime, seconds.
    pub fn new(
        store: Store,
        audit: Arc<AuditLog>,
        access: Access,
        link_key: Option<&str>,
        link_ttl_s: u64,
    ) -> Self {
        let key = match link_key {
            Some(k) => hmac::Key::new(hmac::HMAC_SHA256, k.as_bytes()),
            None => {
                let rng = aws_lc_rs::rand::SystemRandom::new();
                hmac::Key::generate(hmac::HMAC_SHA256, &rng).unwrap_or_else(|_| {
                    // Generation only fails if the OS RNG fails; fall back to a UUIDv4-derived key.
                    hmac::Key::new(hmac::HMAC_SHA256, uuid::Uuid::new_v4().as_bytes())
                })
            }
        };
        AuditHttp {
            store,
            audit,
            access,
            link_key: Arc::new(key),
            link_ttl_s,
        }
    }

    /// The routes, to merge into the HTTP listener's router.
    pub fn router(self) -> Router {
        routes().with_state(self).into()
    }
}

/// The audit export routes with their OpenAPI operations.
pub fn routes() -> ApiRouter<AuditHttp> {
    ApiRouter::new()
        .routes(routes!(create_link))
        .routes(routes!(download))
}

/// The JSON error answer of `code` ([`ErrorCode::status`]) naming `field`.
fn error(code: ErrorCode, message: &str, field: Option<&str>) -> Response {
    ApiError {
        field: field.map(str::to_owned),
        ..ApiError::new(code, message)
    }
    .into_response()
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct LinkRequest {
    tenant: String,
    /// RFC 3339 or `YYYY-MM-DD` (inclusive; default: the beginning).
    #[serde(default)]
    from: Option<String>,
    /// RFC 3339 or `YYYY-MM-DD` (exclusive; default: now).
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    format: Option<Format>,
}

/// The signed parameters of a download link.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
struct LinkParams {
    tenant: String,
    from_ms: i64,
    to_ms: i64,
    format: Format,
    /// Unix seconds after which the link is dead.
    exp: i64,
    /// The admin subject the link was issued to: only it may download.
    sub: String,
    /// The tenant whose issuer signed that subject's token.
    by: String,
}

impl LinkParams {
    fn message(&self) -> String {
        let f = match self.format {
            Format::Jsonl => "jsonl",
            Format::Csv => "csv",
        };
        format!(
            "scp-pep/audit-export-link/v2\n{}\n{}\n{}\n{}\n{}\n{}\n{}",
            self.tenant, self.from_ms, self.to_ms, f, self.exp, self.sub, self.by
        )
    }
}

/// The signed link's parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct DownloadQuery {
    tenant: String,
    from_ms: i64,
    to_ms: i64,
    format: Format,
    exp: i64,
    sub: String,
    by: String,
    sig: String,
}

/// The answer of `POST /v1/audit/exports`.
#[derive(ToSchema)]
#[allow(dead_code)]
struct Link {
    /// The download path with its signed parameters.
    url: String,
    expires_at: String,
    /// Seconds until the link expires.
    expires_in_s: u64,
}

#[utoipa::path(post, path = "/v1/audit/exports", tag = "audit",
    summary = "Issue a signed, time-limited download link for a tenant's audit export",
    request_body = LinkRequest,
    security(("bearer" = ["audit.read"])),
    responses((status = 201, description = "The link", body = Link)))]
async fn create_link(
    State(s): State<AuditHttp>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let caller = match s.access.caller_from(&headers).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    // Permission before the body: a caller without `audit.read` learns nothing about the input.
    if let Err(e) = caller.require_some("audit.read") {
        return e.into_response();
    }
    let who = &caller.principal;
    let req: LinkRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            let field = ["tenant", "from", "to", "format"]
                .into_iter()
                .find(|f| e.to_string().contains(&format!("`{f}`")));
            return error(
                ErrorCode::InvalidRequest,
                "body must be {\"tenant\", \"from\"?, \"to\"?, \"format\"?: \"jsonl\"|\"csv\"}",
                field,
            );
        }
    };
    let via = match require_audit_read(&caller, &req.tenant) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let from_ms = match req.from.as_deref().map(parse_instant).transpose() {
        Ok(v) => v.unwrap_or(0),
        Err(m) => return error(ErrorCode::InvalidRequest, &m, Some("from")),
    };
    let to_ms = match req.to.as_deref().map(parse_instant).transpose() {
        Ok(v) => v.unwrap_or(i64::MAX),
        Err(m) => return error(ErrorCode::InvalidRequest, &m, Some("to")),
    };
    if from_ms >= to_ms {
        return error(
            ErrorCode::InvalidRequest,
            "`from` must be before `to`",
            Some("to"),
        );
    }
    let now = chrono::Utc::now();
    let params = LinkParams {
        tenant: req.tenant.clone(),
        from_ms,
        to_ms,
        format: req.format.unwrap_or(Format::Jsonl),
        exp: now.timestamp() + s.link_ttl_s as i64,
        sub: who.subject.clone(),
        by: who.tenant_id.clone(),
    };
    let detail = serde_json::json!({
        "action": "export_link_issued", "tenant": params.tenant, "from_ms": from_ms,
        "to_ms": to_ms, "format": params.format, "expires": params.exp,
    });
    if via == Via::Root {
        crate::admin::ledger::root_recorded(&req.tenant);
        let ev = AuditEvent::new(RecordKind::RootBypass, Some(&req.tenant), detail.clone())
            .actor(who.subject.clone());
        if s.audit.record_event(&ev).await.is_err() {
            return audit_unavailable();
        }
    }
    let ev = AuditEvent::new(RecordKind::AuditAccess, Some(&req.tenant), detail)
        .actor(who.subject.clone());
    if s.audit.record_event(&ev).await.is_err() {
        return audit_unavailable();
    }
    let tag = hmac::sign(&s.link_key, params.message().as_bytes());
    let query = match serde_urlencoded_pairs(&params, &B64URL.encode(tag.as_ref())) {
        Some(q) => q,
        None => {
            return error(ErrorCode::InvalidRequest, "tenant", Some("tenant"));
        }
    };
    let expires_at = chrono::DateTime::from_timestamp(params.exp, 0).unwrap_or(now);
    (
        StatusCode::CREATED,
        axum::Json(serde_json::json!({
            "url": format!("/v1/audit/exports/download?{query}"),
            "expires_at": expires_at.to_rfc3339(),
            "expires_in_s": s.link_ttl_s,
        })),
    )
        .into_response()
}

fn serde_urlencoded_pairs(p: &LinkParams, sig: &str) -> Option<String> {
    use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
    let enc = |v: &str| utf8_percent_encode(v, NON_ALPHANUMERIC).to_string();
    let f = match p.format {
        Format::Jsonl => "jsonl",
        Format::Csv => "csv",
    };
    Some(format!(
        "tenant={}&from_ms={}&to_ms={}&format={f}&exp={}&sub={}&by={}&sig={}",
        enc(&p.tenant),
        p.from_ms,
        p.to_ms,
        p.exp,
        enc(&p.sub),
        enc(&p.by),
        enc(sig)
    ))
}

/// `audit.read` on `tenant`, or the 403 `FORBIDDEN` error naming the field `tenant`.
fn require_audit_read(
    caller: &crate::admin::access::Caller,
    tenant: &str,
) -> Result<Via, ApiError> {
    caller
        .require("audit.read", &Target::tenant(tenant))
        .map_err(|_| {
            ApiError::new(
                ErrorCode::Forbidden,
                "reading this tenant's audit log needs the permission `audit.read` for it",
            )
            .at("tenant")
        })
}

fn audit_unavailable() -> Response {
    // 503: `retry-after: 1` is set by the error answer.
    error(
        ErrorCode::AuditUnavailable,
        "this access could not be recorded in the audit log",
        None,
    )
}

#[utoipa::path(get, path = "/v1/audit/exports/download", tag = "audit",
    summary = "Download an export through a link from POST /v1/audit/exports, as the caller it was issued to",
    params(DownloadQuery),
    security(("bearer" = ["audit.read"])),
    responses(
        (status = 200, description = "The export (JSON lines or CSV), verifiable offline with `scp-pep audit verify`",
            content(("application/x-ndjson"), ("text/csv"))),
        (status = 403, description = "LINK_INVALID", body = crate::api::openapi::ErrorBody),
        (status = 410, description = "LINK_EXPIRED", body = crate::api::openapi::ErrorBody)))]
async fn download(
    State(s): State<AuditHttp>,
    parts: axum::http::request::Parts,
    q: Result<Query<DownloadQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let caller = match s.access.caller_from(&parts.headers).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let Ok(Query(q)) = q else {
        return error(ErrorCode::LinkInvalid, "malformed download link", None);
    };
    let Ok(tag) = B64URL.decode(q.sig.as_bytes()) else {
        return error(
            ErrorCode::LinkInvalid,
            "malformed download link",
            Some("sig"),
        );
    };
    let params = LinkParams {
        tenant: q.tenant,
        from_ms: q.from_ms,
        to_ms: q.to_ms,
        format: q.format,
        exp: q.exp,
        sub: q.sub,
        by: q.by,
    };
    if hmac::verify(&s.link_key, params.message().as_bytes(), &tag).is_err() {
        return error(
            ErrorCode::LinkInvalid,
            "the link's signature does not verify",
            Some("sig"),
        );
    }
    if chrono::Utc::now().timestamp() >= params.exp {
        return error(
            ErrorCode::LinkExpired,
            "the download link has expired",
            Some("exp"),
        );
    }
    let p = params;
    let who = &caller.principal;
    if who.subject != p.sub || who.tenant_id != p.by {
        return error(
            ErrorCode::LinkInvalid,
            "this link was issued to another caller",
            None,
        );
    }
    // The permission may have been withdrawn since the link was issued.
    let via = match require_audit_read(&caller, &p.tenant) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let peer = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip().to_string());
    let ev = AuditEvent::new(
        RecordKind::AuditAccess,
        Some(&p.tenant),
        serde_json::json!({"action": "export_downloaded", "from_ms": p.from_ms, "to_ms": p.to_ms,
            "format": p.format, "issued_to": p.sub, "peer": peer, "root": via == Via::Root}),
    )
    .actor(who.subject.clone());
    if s.audit.record_event(&ev).await.is_err() {
        return audit_unavailable();
    }
    let req = ExportRequest {
        tenant: p.tenant.clone(),
        from_ms: p.from_ms,
        to_ms: p.to_ms,
        format: p.format,
    };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let store = s.store.clone();
    let keys = vec![s.audit.verifier_key().to_owned()];
    tokio::spawn(async move {
        let err_tx = tx.clone();
        if let Err(e) = super::export::export(&store, &req, &keys, ExportSink::Channel(tx)).await {
            tracing::warn!(error = %e, "audit export stream failed");
            // The client sees a cut stream; the missing end line makes `verify` reject it.
            let _ = err_tx
                .send(Err(std::io::Error::other("export failed")))
                .await;
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    let ext = match p.format {
        Format::Jsonl => "jsonl",
        Format::Csv => "csv",
    };
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, p.format.content_type())
        .header(header::CACHE_CONTROL, "no-store")
        .header(
            header::CONTENT_DISPOSITION,
            format!(
                "attachment; filename=\"audit-{}.{ext}\"",
                p.tenant.replace(['"', '\\', '/'], "_")
            ),
        )
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| error(ErrorCode::Internal, "response", None))
}
