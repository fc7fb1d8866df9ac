//! HTTP authorization mode: the same decision pipeline as the gRPC ext_authz server, asked over
//! plain HTTP by proxies that speak it — Envoy's ext_authz `http_service`, nginx `auth_request`,
//! Traefik `forwardAuth` and Caddy `forward_auth` (issue 14).
//!
//! A dedicated listener (`[http_authz]`, off by default) answers every method and path: each
//! request is one authorization question about the *original* request, read per mode:
//!
//! | mode | original method | original path (and query) | client address |
//! |---|---|---|---|
//! | `envoy` | the request's own | the request's own, `path_prefix` removed | `x-authz-client-ip` |
//! | `nginx` | `x-original-method` | `x-original-uri` | `x-authz-client-ip` |
//! | `forwarded` | `x-forwarded-method` | `x-forwarded-uri` | `x-forwarded-for` (rightmost entry) |
//!
//! Each header name is configurable (`method_header`, `uri_header`, `client_ip_header`); only
//! the proxy may set them (it overwrites what a client sent), so the listener must be reachable
//! by the proxy alone. The headers naming the original request are not part of it: they are
//! taken out before the pipeline sees the headers.
//!
//! The answer keeps the gRPC contract (DESIGN.md, "Contract with Envoy"):
//! - allow: `200`, the `x-scp-*` headers to set upstream ([`crate::grpc::upstream_headers`]),
//!   and the request headers to remove — as `x-envoy-auth-headers-to-remove` in `envoy` mode
//!   (Envoy removes them), as `x-scp-headers-to-remove` otherwise (the shipped nginx config
//!   reads it for `authorization`);
//! - deny: the decision's status, the JSON denial body, `content-type`, `cache-control`,
//!   `x-scp-decision-id`, `www-authenticate` on 401 and scope failures, `retry-after` on 429/503.
//!   nginx's `auth_request` passes only 2xx, 401 and 403 (anything else becomes a 500 and the
//!   body is never read), so in `nginx` mode a denial is answered 401 (a 401 denial) or 403 (any
//!   other) and also carries `x-scp-status` (the real status) and `x-scp-body` (the JSON body,
//!   non-ASCII escaped), from which the shipped nginx config builds the client's answer.
//!
//! nginx and Traefik cannot remove headers by pattern: in those modes
//! ([`Mode::removes_fixed_headers`]) a request carrying an `x-scp-*` header that scp-pep does not
//! set is denied 400 `REQUEST_AMBIGUOUS` (in `envoy` mode it is removed, as over gRPC).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::decision::Decision;
use crate::pipeline::{Engine, RequestFacts};

/// Which proxy asks, and so where the original request is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Envoy ext_authz `http_service`: the request itself is the original (with `path_prefix`).
    Envoy,
    /// nginx `auth_request` (original method and URI in headers the config sets).
    Nginx,
    /// Traefik `forwardAuth`, Caddy `forward_auth` (`X-Forwarded-Method` / `-Uri` / `-For`).
    Forwarded,
}

impl Mode {
    /// Whether the proxy removes only a fixed list of headers (nginx, Traefik, Caddy), so a client
    /// `x-scp-*` header scp-pep does not set cannot be removed and is denied instead.
    pub fn removes_fixed_headers(self) -> bool {
        !matches!(self, Mode::Envoy)
    }

    fn default_method_header(self) -> &'static str {
        match self {
            Mode::Envoy => "",
            Mode::Nginx => "x-original-method",
            Mode::Forwarded => "x-forwarded-method",
        }
    }

    fn default_uri_header(self) -> &'static str {
        match self {
            Mode::Envoy => "",
            Mode::Nginx => "x-original-uri",
            Mode::Forwarded => "x-forwarded-uri",
        }
    }

    fn default_client_ip_header(self) -> &'static str {
        match self {
            Mode::Envoy | Mode::Nginx => "x-authz-client-ip",
            Mode::Forwarded => "x-forwarded-for",
        }
    }
}

/// `[http_authz]`: the HTTP authorization listener.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpAuthzConfig {
    /// Serve the HTTP authorization listener.
    pub enabled: bool,
    /// Its address; only the proxy may reach it (it trusts the headers below).
    pub listen: SocketAddr,
    pub mode: Mode,
    /// `envoy` mode: the `path_prefix` of Envoy's `http_service`, removed from the path.
    pub path_prefix: String,
    /// Header naming the original method; empty = the mode's default (table above). Ignored in
    /// `envoy` mode unless set.
    pub method_header: String,
    /// Header naming the original path and query; empty = the mode's default.
    pub uri_header: String,
    /// Header naming the client address; empty = the mode's default. For `x-forwarded-for` the
    /// rightmost entry (the one the proxy appended) is used.
    pub client_ip_header: String,
    /// Largest request body read (bytes); a longer body is cut and marked partial, as Envoy's
    /// `max_request_bytes` does.
    pub max_body_bytes: usize,
}

impl Default for HttpAuthzConfig {
    fn default() -> Self {
        HttpAuthzConfig {
            enabled: false,
            listen: ([127, 0, 0, 1], 9194).into(),
            mode: Mode::Envoy,
            path_prefix: String::new(),
            method_header: String::new(),
            uri_header: String::new(),
            client_ip_header: String::new(),
            max_body_bytes: 1 << 20,
        }
    }
}

impl HttpAuthzConfig {
    fn pick(set: &str, default: &str) -> Option<String> {
        let name = if set.is_empty() { default } else { set };
        (!name.is_empty()).then(|| name.to_ascii_lowercase())
    }

    /// The configuration with every header name resolved (lower-case; `None`: not read).
    pub fn resolved(&self) -> Resolved {
        Resolved {
            mode: self.mode,
            path_prefix: self.path_prefix.clone(),
            method_header: Self::pick(&self.method_header, self.mode.default_method_header()),
            uri_header: Self::pick(&self.uri_header, self.mode.default_uri_header()),
            client_ip_header: Self::pick(
                &self.client_ip_header,
                self.mode.default_client_ip_header(),
            ),
            max_body_bytes: self.max_body_bytes,
        }
    }
}

/// [`HttpAuthzConfig`] with header names resolved.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub mode: Mode,
    pub path_prefix: String,
    pub method_header: Option<String>,
    pub uri_header: Option<String>,
    pub client_ip_header: Option<String>,
    pub max_body_bytes: usize,
}

#[derive(Clone)]
struct AuthzState {
    engine: Arc<Engine>,
    cfg: Arc<Resolved>,
}

/// The listener's router: every method and path is one authorization question.
pub fn router(engine: Arc<Engine>, cfg: &HttpAuthzConfig) -> Router {
    let state = AuthzState {
        engine,
        cfg: Arc::new(cfg.resolved()),
    };
    Router::new().fallback(authorize).with_state(state)
}

async fn authorize(State(s): State<AuthzState>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let (bytes, truncated) = read_capped(body, s.cfg.max_body_bytes).await;
    let facts = facts_from_http(
        &s.cfg,
        parts.method.as_str(),
        parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/"),
        &parts.headers,
        bytes,
        truncated,
    );
    let d = s.engine.decide(&facts).await;
    to_http_response(&d, s.cfg.mode)
}

/// Reads at most `cap` bytes of `body`; `(bytes, cut)`.
async fn read_capped(body: Body, cap: usize) -> (Vec<u8>, bool) {
    let mut stream = body.into_data_stream();
    let mut out = Vec::new();
    let mut cut = false;
    while let Some(chunk) = futures_util::StreamExt::next(&mut stream).await {
        let Ok(chunk) = chunk else { break };
        let room = cap.saturating_sub(out.len());
        if chunk.len() > room {
            out.extend_from_slice(&chunk[..room]);
            cut = true;
            break;
        }
        out.extend_from_slice(&chunk);
    }
    (out, cut)
}

/// The original request's facts from an authorization request (pure; unit-tested). Missing
/// parts become empty values, which the pipeline then denies — as over gRPC.
pub fn facts_from_http(
    cfg: &Resolved,
    method: &str,
    path_and_query: &str,
    headers: &HeaderMap,
    body: Vec<u8>,
    body_truncated: bool,
) -> RequestFacts {
    let mut map: HashMap<String, String> = HashMap::new();
    for (name, value) in headers {
        let v = String::from_utf8_lossy(value.as_bytes()).into_owned();
        map.entry(name.as_str().to_owned())
            .and_modify(|e| {
                e.push(',');
                e.push_str(&v);
            })
            .or_insert(v);
    }
    let mut take = |name: &Option<String>| name.as_ref().and_then(|n| map.remove(n));
    let method = match take(&cfg.method_header) {
        Some(m) => m.trim().to_ascii_uppercase(),
        None if cfg.mode == Mode::Envoy => method.to_owned(),
        None => String::new(),
    };
    let path = match take(&cfg.uri_header) {
        Some(p) => p,
        None if cfg.mode == Mode::Envoy => path_and_query
            .strip_prefix(cfg.path_prefix.as_str())
            .map(|p| {
                if p.starts_with('/') {
                    p.to_owned()
                } else {
                    format!("/{p}")
                }
            })
            .unwrap_or_default(),
        None => String::new(),
    };
    let source_ip = take(&cfg.client_ip_header).and_then(|v| {
        v.rsplit(',')
            .next()
            .and_then(|last| last.trim().parse::<IpAddr>().ok())
    });
    // Hop metadata between the proxy and scp-pep, not headers of the original request.
    for hop in ["content-length", "transfer-encoding", "connection"] {
        map.remove(hop);
    }
    let body_truncated = body_truncated
        || map
            .get("x-envoy-auth-partial-body")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    RequestFacts {
        method,
        path,
        headers: map,
        source_ip,
        peer_certificate: None,
        body: (!body.is_empty()).then_some(body),
        body_truncated,
        fixed_removals: cfg.mode.removes_fixed_headers(),
    }
}

/// JSON with every non-ASCII character escaped (`\uXXXX`), so it fits a header value.
fn ascii_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() && !c.is_ascii_control() {
            out.push(c);
        } else {
            let mut buf = [0u16; 2];
            for unit in c.encode_utf16(&mut buf) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

fn put(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(HeaderName::from_static(name), v);
    }
}

/// Renders a decision as the HTTP answer of the contract above (pure; unit-tested).
pub fn to_http_response(d: &Decision, mode: Mode) -> Response {
    let mut headers = HeaderMap::new();
    match d.denial() {
        None => {
            let set = crate::grpc::upstream_headers(d);
            let remove: Vec<&str> = d
                .headers_to_remove
                .iter()
                .map(String::as_str)
                .filter(|h| !set.iter().any(|(name, _)| name == h))
                .collect();
            for (name, value) in &set {
                put(&mut headers, name, value);
            }
            if !remove.is_empty() {
                let name = match mode {
                    Mode::Envoy => "x-envoy-auth-headers-to-remove",
                    Mode::Nginx | Mode::Forwarded => "x-scp-headers-to-remove",
                };
                put(&mut headers, name, &remove.join(","));
            }
            (StatusCode::OK, headers).into_response()
        }
        Some(denial) => {
            let status = denial.code.http_status();
            let body = d.denial_body().unwrap_or_default();
            put(&mut headers, "content-type", "application/json");
            put(&mut headers, "cache-control", "no-store");
            put(&mut headers, "x-scp-decision-id", &d.decision_id);
            if let Some(c) = denial.code.www_authenticate() {
                put(&mut headers, "www-authenticate", c);
            }
            if let Some(s) = denial.retry_after_s {
                put(&mut headers, "retry-after", &s.to_string());
            }
            let answered = match mode {
                Mode::Nginx => {
                    put(&mut headers, "x-scp-status", &status.to_string());
                    put(&mut headers, "x-scp-body", &ascii_json(&body));
                    if status == 401 { 401 } else { 403 }
                }
                Mode::Envoy | Mode::Forwarded => status,
            };
            let code = StatusCode::from_u16(answered).unwrap_or(StatusCode::FORBIDDEN);
            (code, headers, body).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(mode: Mode) -> Resolved {
        HttpAuthzConfig {
            mode,
            path_prefix: "/authz".into(),
            ..HttpAuthzConfig::default()
        }
        .resolved()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    /// Issue 14 (HTTP mode): each mode reads the original method, path and client address from
    /// where its proxy puts them, and nowhere else; those headers are not the request's own.
    #[test]
    fn each_mode_reads_the_original_request_from_its_proxy() {
        let h = headers(&[
            ("x-original-method", "post"),
            ("x-original-uri", "/v1/a?b=1"),
            ("x-authz-client-ip", "192.0.2.7"),
            ("x-forwarded-method", "DELETE"),
            ("x-forwarded-uri", "/v1/z"),
            ("x-forwarded-for", "198.51.100.1, 203.0.113.9"),
            ("authorization", "Bearer t"),
        ]);
        let f = facts_from_http(&cfg(Mode::Nginx), "GET", "/auth", &h, vec![], false);
        assert_eq!((f.method.as_str(), f.path.as_str()), ("POST", "/v1/a?b=1"));
        assert_eq!(f.source_ip, Some("192.0.2.7".parse().unwrap()));
        assert!(!f.headers.contains_key("x-original-uri"));
        assert!(f.headers.contains_key("authorization"));
        assert!(f.fixed_removals);

        let f = facts_from_http(&cfg(Mode::Forwarded), "GET", "/", &h, vec![], false);
        assert_eq!((f.method.as_str(), f.path.as_str()), ("DELETE", "/v1/z"));
        assert_eq!(f.source_ip, Some("203.0.113.9".parse().unwrap()));

        let f = facts_from_http(
            &cfg(Mode::Envoy),
            "PUT",
            "/authz/v1/x?q",
            &h,
            b"{}".to_vec(),
            false,
        );
        assert_eq!((f.method.as_str(), f.path.as_str()), ("PUT", "/v1/x?q"));
        assert_eq!(f.source_ip, Some("192.0.2.7".parse().unwrap()));
        assert_eq!(f.body.as_deref(), Some(&b"{}"[..]));
        assert!(!f.fixed_removals);
        // A path outside the prefix is no path at all (denied by the pipeline).
        let f = facts_from_http(&cfg(Mode::Envoy), "GET", "/other", &h, vec![], false);
        assert_eq!(f.path, "");

        // nginx without its headers: nothing to authorize (the pipeline denies).
        let f = facts_from_http(
            &cfg(Mode::Nginx),
            "GET",
            "/v1/a",
            &headers(&[]),
            vec![],
            false,
        );
        assert_eq!((f.method.as_str(), f.path.as_str()), ("", ""));
    }

    #[test]
    fn header_json_is_ascii() {
        let s = ascii_json(r#"{"m":"é… \n"}"#);
        assert!(s.is_ascii(), "{s}");
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["m"], "é… \n");
        assert!(HeaderValue::from_str(&s).is_ok());
    }
}
