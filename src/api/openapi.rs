//! The OpenAPI document of the REST APIs (admin, consent, audit), generated from the handlers.
//!
//! Every REST handler carries a `#[utoipa::path]` attribute (method, path, permission, request
//! body type, success response) and is registered with [`utoipa_axum::routes!`] on an
//! [`ApiRouter`]: the same table builds the axum router and the document, so a route cannot be
//! served without being documented or documented without being served. Request bodies are
//! described by their Rust types (`#[derive(ToSchema)]`, `deny_unknown_fields` →
//! `additionalProperties: false`).
//!
//! [`finish`] adds what every operation shares instead of repeating it per handler: the
//! `bearer` security scheme (the admin token), the [`ErrorBody`] schema and the error responses
//! each kind of operation can give.
//!
//! Permissions: an operation's `security` requirement lists the catalog permission it needs as
//! the role of the `bearer` scheme (`security: [{"bearer": ["roles.write"]}]`), which OpenAPI 3.1
//! allows for non-OAuth schemes.

use utoipa::openapi::path::Operation;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, InfoBuilder, OpenApi, Ref, RefOr};
use utoipa::{PartialSchema, ToSchema};

/// The router every REST surface builds: an axum router that also collects the OpenAPI
/// operations of the handlers registered with `routes!`.
pub type ApiRouter<S> = utoipa_axum::router::OpenApiRouter<S>;

/// The `If-Match` request header of every versioned write (ADM-4): `"<version>"`, the ETag the
/// resource was read with; a stale one is answered 412 `PRECONDITION_FAILED` and changes nothing.
/// Used in `#[utoipa::path(params(..., IfMatch))]`.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub struct IfMatch {
    /// `"<version>"`: 412 when the resource is at another version.
    #[param(rename = "If-Match")]
    if_match: Option<String>,
}

/// The JSON error body of every REST answer that is not a success:
/// `{"error": {"code", "message", "field"?}}`.
#[derive(serde::Serialize, ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// The `error` member of [`ErrorBody`].
#[derive(serde::Serialize, ToSchema)]
pub struct ErrorDetail {
    /// The machine-readable code (docs/error-codes.md).
    #[schema(schema_with = error_code_schema)]
    pub code: String,
    /// What went wrong, in words; never personal data or a secret.
    pub message: String,
    /// The input at fault (`body.field`, a query parameter or a header), when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

fn error_code_schema() -> utoipa::openapi::schema::Object {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(super::ErrorCode::ALL.iter().map(|c| c.as_str())))
        .build()
}

/// Completes the document collected by the routers: title and version, the `bearer` scheme,
/// the `Error` schema, and on every operation the error responses its method can give
/// (400, 401, 403, 404, 503 on every operation; 409, 412, 413 on writes) and, where the handler
/// declared none, `security: [{"bearer": []}]`.
///
/// Input: the merged document of every [`ApiRouter`]. Output: the served `/openapi.json`.
pub fn finish(mut doc: OpenApi) -> OpenApi {
    doc.info = InfoBuilder::new()
        .title("scp-pep admin, security and consent API")
        .version(env!("CARGO_PKG_VERSION"))
        .build();
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(
            Http::builder()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("JWT")
                .build(),
        ),
    );
    let mut schemas = Vec::new();
    ErrorBody::schemas(&mut schemas);
    for (name, s) in schemas {
        components.schemas.insert(name, s);
    }
    components
        .schemas
        .insert(ErrorBody::name().into_owned(), ErrorBody::schema());
    for item in doc.paths.paths.values_mut() {
        if let Some(op) = &mut item.get {
            complete(op, false);
        }
        for op in [
            &mut item.post,
            &mut item.put,
            &mut item.patch,
            &mut item.delete,
        ]
        .into_iter()
        .flatten()
        {
            complete(op, true);
        }
    }
    doc
}

/// Adds the shared error responses and the default security requirement to `op`.
fn complete(op: &mut Operation, write: bool) {
    let errors: &[(&str, &str)] = &[
        ("400", "INVALID_REQUEST: the input at fault is in `field`"),
        ("401", "UNAUTHENTICATED: no valid admin token"),
        (
            "403",
            "FORBIDDEN: the caller lacks the permission (checked before the input)",
        ),
        ("404", "NOT_FOUND: no such resource in the caller's tenants"),
        (
            "503",
            "AUDIT_UNAVAILABLE or DEPENDENCY_UNAVAILABLE (retry-after: 1)",
        ),
    ];
    let write_errors: &[(&str, &str)] = &[
        (
            "409",
            "ALREADY_EXISTS, INVALID_TRANSITION, ARCHIVED or another state conflict",
        ),
        ("412", "PRECONDITION_FAILED: If-Match names another version"),
        ("413", "PAYLOAD_TOO_LARGE: the body is over 64 KiB"),
    ];
    let extra = if write { write_errors } else { &[] };
    for (status, what) in errors.iter().chain(extra) {
        op.responses
            .responses
            .entry((*status).to_owned())
            .or_insert_with(|| RefOr::T(error_response(what)));
    }
    if op.security.is_none() {
        op.security = Some(vec![SecurityRequirement::new::<_, _, &str>("bearer", [])]);
    }
}

fn error_response(description: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Error")))
                .build(),
        )
        .build()
}

/// The schema of an untyped JSON object (a resource view built from the stored document).
pub fn any_object() -> utoipa::openapi::schema::Object {
    utoipa::openapi::schema::Object::with_type(utoipa::openapi::schema::Type::Object)
}

#[cfg(test)]
mod tests {
    use super::*;

    // ADM-1: the shared error responses and the bearer requirement are added to every
    // operation, without replacing what a handler declared.
    #[test]
    fn finish_adds_errors_and_security() {
        let mut op = Operation::new();
        op.responses.responses.insert(
            "404".into(),
            RefOr::T(error_response("NOT_FOUND or PERSON_UNKNOWN")),
        );
        complete(&mut op, true);
        for s in ["400", "401", "403", "404", "409", "412", "413", "503"] {
            assert!(op.responses.responses.contains_key(s), "{s}");
        }
        let RefOr::T(r) = &op.responses.responses["404"] else {
            panic!("inline response")
        };
        assert_eq!(r.description, "NOT_FOUND or PERSON_UNKNOWN");
        assert_eq!(op.security.as_ref().map(Vec::len), Some(1));
        let _ = ErrorBody::schema();
    }
}
