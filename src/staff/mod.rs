//! The read-only security staff view: one static web page on the HTTP port and the two data
//! endpoints it reads (EXT-6-1, INT-8-1).
//!
//! - `GET /staff` (with `/staff/app.js` and `/staff/app.css`): a static page compiled into the
//!   binary (no build step, no external asset, works offline). It holds nothing secret; the
//!   staff member gives an admin bearer token (input field, or `#token=…` in the URL fragment,
//!   which browsers never send to the server). The page keeps the token in memory and
//!   `sessionStorage` only. Strict headers: a CSP of `default-src 'none'` plus `'self'` for the
//!   script, style and `fetch`, `frame-ancestors 'none'`, `X-Frame-Options: DENY`,
//!   `Referrer-Policy: no-referrer`, `Cache-Control: no-store`, `X-Content-Type-Options: nosniff`.
//! - `GET /v1/audit/decisions/stream?tenant=…`: the live tail over HTTP, as Server-Sent Events
//!   (`text/event-stream`). The page reads it with `fetch()` and a streaming body reader, because
//!   `EventSource` cannot send an `Authorization` header (and a token in the URL would land in
//!   logs). It is the gRPC tail's own subscriber ([`DecisionLogService::open`]: same
//!   authorization, same `audit_access`/`root_bypass` records, same bounded buffer and
//!   `dropped` markers); every record is one `event: decision` (or `event: dropped`) with a JSON
//!   `data:` line of the fields in [`StreamRecord`], and a `: keep-alive` comment every 15 s.
//! - `GET /v1/audit/denials?tenant=…&window_s=3600`: the tenant's denied decisions of the last
//!   `window_s` seconds counted by code and by integration, read from the audit store (at most
//!   [`MAX_SCAN`] records; `truncated` says when there were more). No personal data: codes,
//!   integration ids and counts only.
//!
//! Both data endpoints need an admin token holding `audit.read` for the tenant (root may read
//! any tenant; recorded as `root_bypass`), and every call is recorded as an `audit_access`
//! record before anything is read; when it cannot be recorded the answer is 503
//! `AUDIT_UNAVAILABLE`. Errors are the REST error body `{"error": {"code", "message", "field"}}`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::routes;

use crate::admin::access::{Access, Caller, Target, Via};
use crate::api::openapi::ApiRouter;
use crate::api::{ApiError, ErrorCode};
use crate::audit::{AuditEvent, AuditLog, RecordKind};
use crate::proto::scp::pep::v1::{TailEvent, TailRequest};
use crate::store::Store;
use crate::tail::DecisionLogService;

/// The page, its script and its style, compiled in.
const PAGE_HTML: &str = include_str!("page.html");
const PAGE_JS: &str = include_str!("app.js");
const PAGE_CSS: &str = include_str!("app.css");

/// The page's Content-Security-Policy: nothing but its own script and style, and `fetch` to its
/// own origin.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                       connect-src 'self'; img-src 'none'; base-uri 'none'; form-action 'none'; \
                       frame-ancestors 'none'";

/// At most this many denied decisions are read for one `/v1/audit/denials` answer.
pub const MAX_SCAN: i64 = 100_000;
/// Longest accepted `window_s`: one day.
pub const MAX_WINDOW_S: u64 = 86_400;
/// Interval of the stream's keep-alive comment (below the HTTP listener's idle timeout).
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Longest tenant, integration or route filter accepted.
const MAX_FILTER_LEN: usize = 256;

/// State of the staff view's routes.
#[derive(Clone)]
pub struct StaffHttp {
    store: Store,
    audit: Arc<AuditLog>,
    access: Access,
    tail: DecisionLogService,
}

impl StaffHttp {
    /// The staff view over `audit` (stored in `store`), authorizing callers with `access`.
    pub fn new(store: Store, audit: Arc<AuditLog>, access: Access) -> Self {
        let tail = DecisionLogService::new(audit.clone(), access.clone());
        StaffHttp {
            store,
            audit,
            access,
            tail,
        }
    }

    /// Ends every open stream (normally) once `shutdown` becomes `true`, so an open staff page
    /// does not hold up a graceful shutdown.
    pub fn with_shutdown(mut self, shutdown: tokio::sync::watch::Receiver<bool>) -> Self {
        self.tail = self.tail.with_shutdown(shutdown);
        self
    }

    /// The page and the two data endpoints, to merge into the HTTP listener's router.
    pub fn router(self) -> Router {
        let page = Router::new()
            .route("/staff", axum::routing::get(page))
            .route("/staff/app.js", axum::routing::get(script))
            .route("/staff/app.css", axum::routing::get(style));
        let api: Router = routes().with_state(self).into();
        page.merge(api)
    }
}

/// The data endpoints with their OpenAPI operations.
pub fn routes() -> ApiRouter<StaffHttp> {
    ApiRouter::new()
        .routes(routes!(stream))
        .routes(routes!(denials))
}

/// A static asset with the staff view's security headers.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut r = Response::new(Body::from(body));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    r
}

/// `GET /staff`: the page (static, public: it holds nothing secret).
async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE_HTML)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", PAGE_JS)
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", PAGE_CSS)
}

/// The error body of `code` naming `field`.
fn error(code: ErrorCode, message: &str, field: Option<&str>) -> Response {
    ApiError {
        field: field.map(str::to_owned),
        ..ApiError::new(code, message)
    }
    .into_response()
}

/// Query of `GET /v1/audit/decisions/stream`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct StreamQuery {
    /// The tenant (default: the token's tenant; root without a tenant: every tenant).
    tenant: Option<String>,
    /// Only decisions of this integration.
    integration: Option<String>,
    /// Only decisions of this route (its policy id).
    route: Option<String>,
    /// `allow` or `deny`.
    outcome: Option<String>,
    /// `true`: only decisions with shadow findings (what documents in shadow mode would have
    /// denied).
    shadow: Option<bool>,
}

/// One decision as the stream sends it (the `data:` of an `event: decision`): the columns of the
/// committed record and the non-personal fields of its canonical body.
#[derive(Debug, Serialize, ToSchema)]
pub struct StreamRecord {
    pub chain_id: String,
    pub seq: u64,
    /// Unix milliseconds.
    pub time_unix_ms: i64,
    /// `allow` or `deny`.
    pub outcome: String,
    /// `OK` or the denial code.
    pub code: String,
    pub tenant_id: String,
    pub integration_id: String,
    /// The route's policy id (empty when no route matched).
    pub route_id: String,
    /// The route template (or a sanitized shape) the request matched.
    pub path: String,
    pub method: String,
    pub decision_id: String,
    /// Time spent deciding, µs.
    pub latency_us: u64,
    /// Shadow findings, `"<document> <code>"` (e.g. `policy_pack/p1 POLICY_DENIED`): what
    /// documents in shadow mode would have denied; never enforced.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shadow: Vec<String>,
}

impl StreamRecord {
    /// The record of a committed decision event.
    pub fn of(ev: &TailEvent) -> StreamRecord {
        let body: serde_json::Value = serde_json::from_str(&ev.body).unwrap_or_default();
        let field = |k: &str| {
            body.get(k)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_owned()
        };
        StreamRecord {
            chain_id: ev.chain_id.clone(),
            seq: ev.seq,
            time_unix_ms: ev.time_unix_ms,
            outcome: ev.outcome.clone(),
            code: ev.code.clone(),
            tenant_id: ev.tenant_id.clone(),
            integration_id: ev.integration_id.clone(),
            route_id: field("route_id"),
            path: field("path"),
            method: field("method"),
            decision_id: field("decision_id"),
            latency_us: ev.latency_us,
            shadow: ev
                .shadow
                .iter()
                .map(|f| format!("{} {}", f.document, f.code))
                .collect(),
        }
    }
}

/// One SSE frame: `event: NAME\ndata: JSON\n\n` (serde_json never writes a raw newline).
fn sse(name: &str, data: &impl Serialize) -> Bytes {
    let json = serde_json::to_string(data).unwrap_or_else(|_| "{}".into());
    Bytes::from(format!("event: {name}\ndata: {json}\n\n"))
}

/// The HTTP error of a refused tail.
fn tail_refused(s: tonic::Status) -> Response {
    match s.code() {
        tonic::Code::PermissionDenied => error(ErrorCode::Forbidden, s.message(), Some("tenant")),
        tonic::Code::InvalidArgument => {
            error(ErrorCode::InvalidRequest, s.message(), Some("outcome"))
        }
        _ => error(
            ErrorCode::AuditUnavailable,
            "this access could not be recorded in the audit log",
            None,
        ),
    }
}

#[utoipa::path(get, path = "/v1/audit/decisions/stream", tag = "audit",
    summary = "Follow a tenant's decisions live (Server-Sent Events; the staff view's tail)",
    description = "The live decision tail over HTTP: `event: decision` frames whose `data` is a \
        StreamRecord, `event: dropped` frames (`{\"dropped\": n}`) when this subscriber lost \
        records, a `: keep-alive` comment every 15 s. Opening it is recorded as `audit_access`.",
    params(StreamQuery),
    security(("bearer" = ["audit.read"])),
    responses((status = 200, description = "The stream (never ends on its own)",
        content_type = "text/event-stream", body = StreamRecord)))]
async fn stream(
    State(s): State<StaffHttp>,
    headers: HeaderMap,
    q: Result<Query<StreamQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let caller = match s.access.caller_from(&headers).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = caller.require_some("audit.read") {
        return e.into_response();
    }
    let Ok(Query(q)) = q else {
        return error(
            ErrorCode::InvalidRequest,
            "query parameters: tenant, integration, route, outcome",
            None,
        );
    };
    for (name, v) in [
        ("tenant", &q.tenant),
        ("integration", &q.integration),
        ("route", &q.route),
    ] {
        if v.as_ref().is_some_and(|v| v.len() > MAX_FILTER_LEN) {
            return error(ErrorCode::InvalidRequest, "filter too long", Some(name));
        }
    }
    let req = TailRequest {
        tenant_id: q.tenant.unwrap_or_default(),
        integration_id: q.integration.unwrap_or_default(),
        route_id: q.route.unwrap_or_default(),
        outcome: q.outcome.unwrap_or_default(),
        codes: vec![],
        include_events: false,
        shadow_only: q.shadow.unwrap_or(false),
    };
    let mut rx = match s.tail.open(&caller, req).await {
        Ok(rx) => rx,
        Err(st) => return tail_refused(st),
    };
    // The tail's receiver is already bounded and never makes the feed wait; this task only
    // frames its events and adds keep-alives, and ends when the client goes away.
    let (out, body) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(KEEP_ALIVE);
        tick.tick().await;
        if out
            .send(Ok(Bytes::from_static(b": open\n\n")))
            .await
            .is_err()
        {
            return;
        }
        loop {
            let frame = tokio::select! {
                _ = out.closed() => break,
                _ = tick.tick() => Bytes::from_static(b": keep-alive\n\n"),
                ev = rx.recv() => match ev {
                    Some(Ok(ev)) if ev.dropped > 0 => {
                        sse("dropped", &serde_json::json!({"dropped": ev.dropped}))
                    }
                    Some(Ok(ev)) => sse("decision", &StreamRecord::of(&ev)),
                    Some(Err(_)) | None => break,
                },
            };
            if out.send(Ok(frame)).await.is_err() {
                break;
            }
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-store")
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header("x-accel-buffering", "no")
        .body(Body::from_stream(
            tokio_stream::wrappers::ReceiverStream::new(body),
        ))
        .unwrap_or_else(|_| error(ErrorCode::Internal, "response", None))
}

/// Query of `GET /v1/audit/denials`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct DenialsQuery {
    /// The tenant (default: the token's tenant).
    tenant: Option<String>,
    /// The window ending now, seconds (1 to 86400; default 3600).
    window_s: Option<u64>,
}

/// A denial code and how many decisions it denied.
#[derive(Debug, Serialize, ToSchema, PartialEq, Eq)]
pub struct CodeCount {
    pub code: String,
    pub count: u64,
}

/// An integration and how many of its requests were denied (`integration_id` null: the
/// request named no known integration).
#[derive(Debug, Serialize, ToSchema, PartialEq, Eq)]
pub struct IntegrationCount {
    pub integration_id: Option<String>,
    pub count: u64,
}

/// The answer of `GET /v1/audit/denials`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Denials {
    pub tenant: String,
    /// Start of the window (RFC 3339, inclusive).
    pub from: String,
    /// End of the window: now (RFC 3339, exclusive).
    pub to: String,
    pub window_s: u64,
    /// Denied decisions counted.
    pub denials: u64,
    /// Most frequent first.
    pub by_code: Vec<CodeCount>,
    /// Most frequent first.
    pub by_integration: Vec<IntegrationCount>,
    /// More than the scan bound (100 000) denials in the window: the counts are of the newest.
    pub truncated: bool,
}

/// Counts denied decision bodies by code and by integration, most frequent first (ties by
/// name). Bodies that are not denied decisions are skipped. Returns (denials, by code, by
/// integration).
pub fn count_denials(bodies: &[String]) -> (u64, Vec<CodeCount>, Vec<IntegrationCount>) {
    use std::collections::BTreeMap;
    let mut codes: BTreeMap<String, u64> = BTreeMap::new();
    let mut integrations: BTreeMap<Option<String>, u64> = BTreeMap::new();
    let mut total = 0;
    for b in bodies {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(b) else {
            continue;
        };
        if v["outcome"] != "deny" || v["kind"] != "decision" {
            continue;
        }
        total += 1;
        let code = v["code"].as_str().unwrap_or("-").to_owned();
        *codes.entry(code).or_default() += 1;
        let integration = v["integration_id"].as_str().map(str::to_owned);
        *integrations.entry(integration).or_default() += 1;
    }
    let mut by_code: Vec<CodeCount> = codes
        .into_iter()
        .map(|(code, count)| CodeCount { code, count })
        .collect();
    by_code.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.code.cmp(&b.code)));
    let mut by_integration: Vec<IntegrationCount> = integrations
        .into_iter()
        .map(|(integration_id, count)| IntegrationCount {
            integration_id,
            count,
        })
        .collect();
    by_integration.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then_with(|| a.integration_id.cmp(&b.integration_id))
    });
    (total, by_code, by_integration)
}

/// `audit.read` for `tenant`, or 403 `FORBIDDEN` naming `tenant`.
fn require_audit_read(caller: &Caller, tenant: &str) -> Result<Via, ApiError> {
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

#[utoipa::path(get, path = "/v1/audit/denials", tag = "audit",
    summary = "A tenant's denied decisions of the last window counted by code and by integration",
    params(DenialsQuery),
    security(("bearer" = ["audit.read"])),
    responses((status = 200, description = "The counts", body = Denials)))]
async fn denials(
    State(s): State<StaffHttp>,
    headers: HeaderMap,
    q: Result<Query<DenialsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let caller = match s.access.caller_from(&headers).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = caller.require_some("audit.read") {
        return e.into_response();
    }
    let q = match q {
        Ok(Query(q)) => q,
        Err(e) => {
            let field = ["window_s", "tenant"]
                .into_iter()
                .find(|f| e.body_text().contains(f));
            return error(
                ErrorCode::InvalidRequest,
                "query parameters: tenant, window_s (1 to 86400)",
                field,
            );
        }
    };
    let window_s = q.window_s.unwrap_or(3600);
    if window_s == 0 || window_s > MAX_WINDOW_S {
        return error(
            ErrorCode::InvalidRequest,
            "window_s must be between 1 and 86400",
            Some("window_s"),
        );
    }
    let tenant = q.tenant.unwrap_or_else(|| caller.tenant().to_owned());
    if tenant.is_empty() || tenant.len() > MAX_FILTER_LEN {
        return error(
            ErrorCode::InvalidRequest,
            "tenant must be 1 to 256 bytes",
            Some("tenant"),
        );
    }
    let via = match require_audit_read(&caller, &tenant) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let now = chrono::Utc::now();
    let to_ms = now.timestamp_millis();
    let from_ms = to_ms - (window_s as i64) * 1000;
    let who = &caller.principal;
    let detail = serde_json::json!({"action": "denials", "tenant": tenant, "from_ms": from_ms,
        "to_ms": to_ms, "window_s": window_s});
    if via == Via::Root {
        crate::admin::ledger::root_recorded(&tenant);
        let ev = AuditEvent::new(RecordKind::RootBypass, Some(&tenant), detail.clone())
            .actor(who.subject.clone());
        if s.audit.record_event(&ev).await.is_err() {
            return audit_unavailable();
        }
    }
    let ev =
        AuditEvent::new(RecordKind::AuditAccess, Some(&tenant), detail).actor(who.subject.clone());
    if s.audit.record_event(&ev).await.is_err() {
        return audit_unavailable();
    }
    let bodies = match crate::audit::store::denied_decision_bodies(
        &s.store,
        &tenant,
        from_ms,
        to_ms,
        MAX_SCAN + 1,
    )
    .await
    {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, "denial counts: audit store unavailable");
            return error(
                ErrorCode::DependencyUnavailable,
                "the audit store is unavailable",
                None,
            );
        }
    };
    let truncated = bodies.len() as i64 > MAX_SCAN;
    let scanned = &bodies[..bodies.len().min(MAX_SCAN as usize)];
    let (total, by_code, by_integration) = count_denials(scanned);
    let fmt = |ms: i64| {
        chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_default()
    };
    let mut r = axum::Json(Denials {
        tenant,
        from: fmt(from_ms),
        to: fmt(to_ms),
        window_s,
        denials: total,
        by_code,
        by_integration,
        truncated,
    })
    .into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn audit_unavailable() -> Response {
    error(
        ErrorCode::AuditUnavailable,
        "this access could not be recorded in the audit log",
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// EXT-6-1: denials are counted by code and by integration, most frequent first; allowed
    /// decisions and non-decisions (which the SQL prefilter may let through) are not counted.
    #[test]
    fn staff_denials_are_counted_by_code_and_integration() {
        let d = |outcome: &str, code: &str, integration: Option<&str>| {
            serde_json::json!({"kind": "decision", "outcome": outcome, "code": code,
                "integration_id": integration})
            .to_string()
        };
        let bodies = vec![
            d("deny", "SCOPE_VIOLATION", Some("int-a")),
            d("deny", "SCOPE_VIOLATION", Some("int-b")),
            d("deny", "RATE_LIMITED", Some("int-a")),
            d("deny", "TOKEN_INVALID", None),
            d("allow", "OK", Some("int-a")),
            r#"{"kind":"audit_access","outcome":"deny"}"#.to_owned(),
            "not json".to_owned(),
        ];
        let (total, by_code, by_integration) = count_denials(&bodies);
        assert_eq!(total, 4);
        let c = |code: &str, count| CodeCount {
            code: code.into(),
            count,
        };
        assert_eq!(
            by_code,
            vec![
                c("SCOPE_VIOLATION", 2),
                c("RATE_LIMITED", 1),
                c("TOKEN_INVALID", 1)
            ]
        );
        let i = |id: Option<&str>, count| IntegrationCount {
            integration_id: id.map(str::to_owned),
            count,
        };
        assert_eq!(
            by_integration,
            vec![i(Some("int-a"), 2), i(None, 1), i(Some("int-b"), 1)]
        );
    }

    /// The page is self-contained: no external origin, no inline script or style the CSP would
    /// refuse, and the script never writes record data as HTML.
    #[test]
    fn staff_page_is_self_contained() {
        for text in [PAGE_HTML, PAGE_JS, PAGE_CSS] {
            assert!(!text.contains("http://") && !text.contains("https://"));
            assert!(!text.contains("//cdn"));
        }
        assert!(PAGE_HTML.contains(r#"<script src="/staff/app.js""#));
        assert!(!PAGE_HTML.contains("<script>") && !PAGE_HTML.contains("style="));
        assert!(!PAGE_JS.contains("innerHTML") && !PAGE_JS.contains("outerHTML"));
        assert!(!PAGE_JS.contains("localStorage") && !PAGE_JS.contains("eval("));
    }
}
