//! Shared pieces of the REST APIs (admin, consent): the JSON error shape, body parsing with the
//! field at fault, `If-Match`/`ETag` and RFC 3339 times.
//!
//! Errors are `{"error": {"code", "message", "field"?}}`; 503 answers carry `retry-after: 1`.

use axum::body::Bytes;
use std::collections::HashMap;

use axum::extract::Query;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

mod error;
pub mod openapi;
pub use error::{ErrorCode, store_unavailable, write_error};

/// Largest request body of the admin and consent APIs, bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// An API failure: machine code (which decides the status, [`ErrorCode::status`]), message (no
/// personal data) and the input at fault.
#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            field: None,
        }
    }
    /// 400 `INVALID_REQUEST` naming `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError {
            field: Some(field.into()),
            ..Self::new(ErrorCode::InvalidRequest, message)
        }
    }
    /// This error naming `field` as the input at fault.
    pub fn at(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }
    /// 404 `NOT_FOUND` (also for resources of another tenant: their existence is not revealed).
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }
    /// 503 `DEPENDENCY_UNAVAILABLE` (`what`: "policy store", "consent store"…); the cause is
    /// logged, not returned.
    pub fn unavailable(what: &str, e: &dyn std::fmt::Display) -> Self {
        tracing::warn!(error = %e, "{what} unavailable");
        Self::new(
            ErrorCode::DependencyUnavailable,
            format!("the {what} is unavailable"),
        )
    }
    pub fn audit_unavailable() -> Self {
        Self::new(
            ErrorCode::AuditUnavailable,
            "this action could not be recorded in the audit log; nothing was done",
        )
    }
    /// The HTTP status of the answer (from the code).
    pub fn status(&self) -> StatusCode {
        self.code.status()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut e = json!({"code": self.code.as_str(), "message": self.message});
        if let Some(f) = self.field {
            e["field"] = Value::String(f);
        }
        let mut r = (status, axum::Json(json!({ "error": e }))).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}

/// A handler result.
pub type ApiResult = Result<Response, ApiError>;

/// Parses a JSON body; unknown, missing or mistyped inputs are 400 naming the field.
pub fn parse<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("request bodies are limited to {MAX_BODY_BYTES} bytes"),
            )
        } else {
            ApiError::invalid("body", "unreadable request body")
        }
    })?;
    let bytes: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &body
    };
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.inner().to_string();
        let named = ["unknown field `", "missing field `"]
            .iter()
            .find_map(|p| inner.strip_prefix(p))
            .and_then(|rest| rest.split('`').next());
        let field = match (named, path.as_str()) {
            (Some(n), "." | "") => n.to_owned(),
            // An unknown field is already the last segment of the path.
            (Some(n), p) if p == n || p.ends_with(&format!(".{n}")) => p.to_owned(),
            (Some(n), p) => format!("{p}.{n}"),
            (None, "." | "") => "body".to_owned(),
            (None, p) => p.to_owned(),
        };
        let message = inner.split(" at line ").next().unwrap_or("").to_owned();
        ApiError::invalid(field, message)
    })
}

/// A query string (the axum extractor's result).
pub type QueryParams = Result<Query<HashMap<String, String>>, QueryRejection>;

/// The query parameters, when every one is in `allowed`.
///
/// Errors: 400 `INVALID_REQUEST` naming the first unknown parameter (or `query` when the string
/// does not decode).
pub fn query_params(q: QueryParams, allowed: &[&str]) -> Result<HashMap<String, String>, ApiError> {
    let Ok(Query(q)) = q else {
        return Err(ApiError::invalid("query", "malformed query string"));
    };
    if let Some(k) = q.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(ApiError::invalid(
            k.clone(),
            format!("unknown query parameter; allowed: {}", allowed.join(", ")),
        ));
    }
    Ok(q)
}

/// The version an `If-Match` header asks for (`"3"`, `W/"3"`; `*` or absent: any).
pub fn if_match(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    let Some(v) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let s = v.to_str().unwrap_or("").trim();
    if s == "*" {
        return Ok(None);
    }
    s.trim_start_matches("W/")
        .trim_matches('"')
        .parse::<i64>()
        .map(Some)
        .map_err(|_| ApiError::invalid("If-Match", "must be an ETag of this API: \"<version>\""))
}

pub fn instant(field: &'static str, s: &str) -> Result<i64, ApiError> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .map_err(|_| ApiError::invalid(field, "must be an RFC 3339 time"))
}

/// Parses and checks an active window: `until` after `from` (CON-4, CON-6).
pub fn window(from: &str, until: Option<&str>) -> Result<(i64, Option<i64>), ApiError> {
    let from = instant("active_from", from)?;
    let until = until.map(|u| instant("active_until", u)).transpose()?;
    if until.is_some_and(|u| u <= from) {
        return Err(ApiError::invalid(
            "active_until",
            "must be after active_from (or null: open-ended)",
        ));
    }
    Ok((from, until))
}

pub fn rfc3339(ms: i64) -> Value {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)))
        .unwrap_or(Value::Null)
}

pub fn opt_time(ms: Option<i64>) -> Value {
    ms.map(rfc3339).unwrap_or(Value::Null)
}

/// A JSON answer with `ETag: "<version>"`.
pub fn with_etag(status: StatusCode, version: i64, body: Value) -> Response {
    let mut r = (status, axum::Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("\"{version}\"")) {
        r.headers_mut().insert(header::ETAG, v);
    }
    r
}

/// 412 `PRECONDITION_FAILED` when `If-Match` names another version than `current` (ADM-8).
/// `what` names the resource in the message, e.g. `"role r-1"`.
pub fn precondition(headers: &HeaderMap, current: i64, what: &str) -> Result<(), ApiError> {
    match if_match(headers)? {
        Some(v) if v != current => Err(ApiError::new(
            ErrorCode::PreconditionFailed,
            format!("{what} is at version {current}, not {v}; read it again"),
        )),
        _ => Ok(()),
    }
}

/// Times in milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
