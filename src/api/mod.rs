//! Shared pieces of the REST APIs (admin, consent): the JSON error shape, body parsing with the
//! field at fault, `If-Match`/`ETag` and RFC 3339 times.
//!
//! Errors are `{"error": {"code", "message", "field"?}}`; 503 answers carry `retry-after: 1`.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::admin::AdminAuthError;

/// Largest request body of the admin and consent APIs, bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// An API failure: status, machine code, message (no personal data) and the input at fault.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError {
            field: Some(field.into()),
            ..Self::new(StatusCode::BAD_REQUEST, "INVALID_REQUEST", message)
        }
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "FORBIDDEN", message)
    }
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }
    /// 404 `NOT_FOUND` (also for resources of another tenant: their existence is not revealed).
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NOT_FOUND", message)
    }
    /// 503 `DEPENDENCY_UNAVAILABLE` (the store); the cause is logged, not returned.
    pub fn unavailable(what: &str, e: &dyn std::fmt::Display) -> Self {
        tracing::warn!(error = %e, "{what} unavailable");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "DEPENDENCY_UNAVAILABLE",
            format!("the {what} is unavailable"),
        )
    }
    pub fn audit_unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "AUDIT_UNAVAILABLE",
            "this action could not be recorded in the audit log; nothing was done",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut e = json!({"code": self.code, "message": self.message});
        if let Some(f) = self.field {
            e["field"] = Value::String(f);
        }
        let retry = self.status == StatusCode::SERVICE_UNAVAILABLE;
        let mut r = (self.status, axum::Json(json!({ "error": e }))).into_response();
        if retry {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}

impl From<AdminAuthError> for ApiError {
    fn from(e: AdminAuthError) -> Self {
        let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::UNAUTHORIZED);
        ApiError::new(status, e.code(), e.to_string())
    }
}

/// A handler result.
pub type ApiResult = Result<Response, ApiError>;

/// Parses a JSON body; unknown, missing or mistyped inputs are 400 naming the field.
pub fn parse<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "PAYLOAD_TOO_LARGE",
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
            StatusCode::PRECONDITION_FAILED,
            "PRECONDITION_FAILED",
            format!("{what} is at version {current}, not {v}; read it again"),
        )),
        _ => Ok(()),
    }
}

/// Times in milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
