//! The Envoy ext_authz v3 adapter: `CheckRequest` → [`RequestFacts`] → [`Engine::decide`] →
//! `CheckResponse` (DESIGN.md, "Contract with Envoy").
//!
//! This module only translates. It always answers `Ok(CheckResponse)`: an infrastructure failure is
//! a denial with 503 inside the response, never a gRPC error (Envoy would turn that into a bare 403,
//! or let the request through under `failure_mode_allow`).
//!
//! Allow: `x-scp-*` headers set with `OverwriteIfExistsOrAdd`; client-sent `x-scp-*` headers that
//! scp-pep does not set, the API key header and (per tenant) `authorization` removed. Envoy applies
//! removals after additions, so a header scp-pep sets is never also listed for removal.
//! Deny: HTTP status, `content-type: application/json`, JSON body, `www-authenticate` on 401 and
//! scope failures, `retry-after` on 429/503. Both: dynamic metadata (namespace
//! `envoy.filters.http.ext_authz`) with `decision_id`, `tenant_id`, `integration_id`, `code`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use envoy_types::ext_authz::v3::pb::{
    CheckRequest, CheckResponse, HeaderAppendAction, HttpStatusCode,
};
use envoy_types::ext_authz::v3::{
    CheckResponseExt, DeniedHttpResponseBuilder, OkHttpResponseBuilder,
};
use envoy_types::pb::envoy::config::core::v3::{Address, address};
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use tonic::{Request, Response, Status};

use crate::decision::Decision;
use crate::pipeline::{Engine, RequestFacts};

pub use envoy_types::ext_authz::v3::pb::{Authorization, AuthorizationServer};

/// gRPC status codes used in `CheckResponse.status` (google.rpc.Code).
const RPC_OK: tonic::Code = tonic::Code::Ok;

/// The ext_authz service.
#[derive(Clone)]
pub struct ExtAuthz {
    engine: Arc<Engine>,
}

impl ExtAuthz {
    pub fn new(engine: Arc<Engine>) -> Self {
        ExtAuthz { engine }
    }

    /// A tonic service ready to be added to a server.
    pub fn into_server(self) -> AuthorizationServer<Self> {
        AuthorizationServer::new(self)
    }
}

#[tonic::async_trait]
impl Authorization for ExtAuthz {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let facts = facts_from_check(request.into_inner());
        let decision = self.engine.decide(&facts).await;
        Ok(Response::new(to_check_response(&decision)))
    }
}

/// Extracts the transport-independent facts from a `CheckRequest`. Missing parts become empty
/// values, which the pipeline then denies.
pub fn facts_from_check(req: CheckRequest) -> RequestFacts {
    let mut facts = RequestFacts::default();
    let Some(attrs) = req.attributes else {
        return facts;
    };
    if let Some(source) = attrs.source {
        if !source.certificate.is_empty() {
            facts.peer_certificate = Some(source.certificate);
        }
        if let Some(Address {
            address: Some(address::Address::SocketAddress(sa)),
        }) = source.address
        {
            facts.source_ip = sa.address.parse::<IpAddr>().ok();
        }
    }
    if let Some(http) = attrs.request.and_then(|r| r.http) {
        facts.method = http.method;
        facts.path = http.path;
        let mut headers: HashMap<String, String> = http.headers;
        if headers.is_empty()
            && let Some(map) = http.header_map
        {
            for h in map.headers {
                let value = if h.value.is_empty() {
                    String::from_utf8_lossy(&h.raw_value).into_owned()
                } else {
                    h.value
                };
                headers.insert(h.key.to_ascii_lowercase(), value);
            }
        }
        facts.body_truncated = headers
            .get("x-envoy-auth-partial-body")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        if !http.raw_body.is_empty() {
            facts.body = Some(http.raw_body);
        } else if !http.body.is_empty() {
            facts.body = Some(http.body.into_bytes());
        }
        facts.headers = headers;
    }
    facts
}

fn sv(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    }
}

/// Every header scp-pep sets on an allowed request (the rest of `x-scp-*` is removed).
pub const UPSTREAM_HEADERS: &[&str] = &[
    "x-scp-decision-id",
    "x-scp-tenant-id",
    "x-scp-integration-id",
    "x-scp-verticals",
    "x-scp-scopes",
    "x-scp-masked-fields",
    "x-scp-allowed-fields",
    "x-scp-purpose",
];

/// The headers an allow sets upstream, `(name, value)`: each of [`UPSTREAM_HEADERS`] that
/// applies (`x-scp-allowed-fields` and `x-scp-purpose` only when the route has them).
pub fn upstream_headers(d: &Decision) -> Vec<(&'static str, String)> {
    let mut headers: Vec<(&'static str, String)> = vec![
        ("x-scp-decision-id", d.decision_id.clone()),
        ("x-scp-tenant-id", d.tenant_id.clone().unwrap_or_default()),
        (
            "x-scp-integration-id",
            d.integration_id.clone().unwrap_or_default(),
        ),
        ("x-scp-verticals", d.verticals.join(",")),
        ("x-scp-scopes", d.scopes.join(" ")),
        ("x-scp-masked-fields", d.masked_fields.join(",")),
    ];
    if let Some(a) = &d.allowed_fields {
        headers.push(("x-scp-allowed-fields", a.join(",")));
    }
    if let Some(p) = &d.purpose {
        headers.push(("x-scp-purpose", p.clone()));
    }
    headers
}

/// Renders a decision as the Envoy `CheckResponse` of the contract above.
pub fn to_check_response(d: &Decision) -> CheckResponse {
    let mut resp = CheckResponse::new();
    let mut md = Struct::default();
    md.fields.insert("decision_id".into(), sv(&d.decision_id));
    md.fields.insert("code".into(), sv(d.code_str()));
    if let Some(t) = &d.tenant_id {
        md.fields.insert("tenant_id".into(), sv(t));
    }
    if let Some(i) = &d.integration_id {
        md.fields.insert("integration_id".into(), sv(i));
    }
    resp.set_dynamic_metadata(Some(md));

    let overwrite = Some(HeaderAppendAction::OverwriteIfExistsOrAdd);
    match d.denial() {
        None => {
            let headers = upstream_headers(d);
            let mut ok = OkHttpResponseBuilder::new();
            for h in &d.headers_to_remove {
                if !headers.iter().any(|(name, _)| name == h) {
                    ok.remove_header(h.clone());
                }
            }
            for (name, value) in headers {
                ok.add_header(name, value, overwrite, true);
            }
            resp.set_status(Status::new(RPC_OK, ""));
            resp.set_http_response(ok);
        }
        Some(denial) => {
            let mut denied = DeniedHttpResponseBuilder::new();
            denied.set_http_status(http_status_code(denial.code.http_status()));
            denied.add_header("content-type", "application/json", overwrite, false);
            denied.add_header("x-scp-decision-id", d.decision_id.clone(), overwrite, false);
            denied.add_header("cache-control", "no-store", overwrite, false);
            if let Some(c) = denial.code.www_authenticate() {
                denied.add_header("www-authenticate", c, overwrite, false);
            }
            if let Some(s) = denial.retry_after_s {
                denied.add_header("retry-after", s.to_string(), overwrite, false);
            }
            denied.set_body(d.denial_body().unwrap_or_default());
            let grpc = match denial.code.http_status() {
                401 => tonic::Code::Unauthenticated,
                429 => tonic::Code::ResourceExhausted,
                503 => tonic::Code::Unavailable,
                400 => tonic::Code::InvalidArgument,
                _ => tonic::Code::PermissionDenied,
            };
            resp.set_status(Status::new(grpc, denial.code.as_str()));
            resp.set_http_response(denied);
        }
    }
    resp
}

fn http_status_code(status: u16) -> HttpStatusCode {
    match status {
        400 => HttpStatusCode::BadRequest,
        401 => HttpStatusCode::Unauthorized,
        415 => HttpStatusCode::UnsupportedMediaType,
        429 => HttpStatusCode::TooManyRequests,
        503 => HttpStatusCode::ServiceUnavailable,
        _ => HttpStatusCode::Forbidden,
    }
}
