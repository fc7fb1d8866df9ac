//! Every error code of the REST APIs (admin, consent, audit export) with its HTTP status, and
//! every conversion of a domain or store error into an [`ApiError`], in one place.
//!
//! The decision wing has its own table ([`crate::decision::Code`]); this is its REST twin. Domain
//! errors ([`RuleError`], [`ConsentStoreError`], [`WriteError`], [`AdminAuthError`]) carry a code
//! or a cause, never an HTTP status: the status of a code is decided here only
//! ([`ErrorCode::status`]), and `docs/error-codes.md` lists every code (a test reads it).

use axum::http::StatusCode;

use crate::admin::AdminAuthError;
use crate::admin::keycloak::ProvisionError;
use crate::consent::model::RuleError;
use crate::consent::store::ConsentStoreError;
use crate::store::{DocChange, Expect, WriteError};

use super::ApiError;

macro_rules! error_codes {
    ($($(#[$doc:meta])* $name:ident = $code:literal, $status:literal;)*) => {
        /// A machine-readable error code of the REST APIs (`error.code` of the JSON body).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $($(#[$doc])* $name,)*
        }

        impl ErrorCode {
            /// Every code, in table order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$name,)*];

            /// The code as sent, e.g. `"PRECONDITION_FAILED"`.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$name => $code,)*
                }
            }

            /// The HTTP status every answer with this code has.
            pub fn status(self) -> StatusCode {
                let s: u16 = match self {
                    $(ErrorCode::$name => $status,)*
                };
                StatusCode::from_u16(s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            }
        }
    };
}

error_codes! {
    /// A body field, query parameter or header is missing, unknown or malformed (`field` names it).
    InvalidRequest = "INVALID_REQUEST", 400;
    /// The change would make the enforced policy invalid (`field` names the entry).
    PolicyInvalid = "POLICY_INVALID", 400;
    /// No, malformed, expired or untrusted admin bearer token.
    Unauthenticated = "UNAUTHENTICATED", 401;
    /// The caller lacks the permission (or the role) for this action on this tenant.
    Forbidden = "FORBIDDEN", 403;
    /// Four eyes: the creator, author or last editor may not approve.
    SeparationOfDuties = "SEPARATION_OF_DUTIES", 403;
    /// An audit download link whose signature does not verify.
    LinkInvalid = "LINK_INVALID", 403;
    /// No such resource in the caller's tenant (another tenant's resources answer this too).
    NotFound = "NOT_FOUND", 404;
    /// The consent registry does not know the person.
    PersonUnknown = "PERSON_UNKNOWN", 404;
    /// A create named an id that exists.
    AlreadyExists = "ALREADY_EXISTS", 409;
    /// The lifecycle does not allow this action from the resource's current state.
    InvalidTransition = "INVALID_TRANSITION", 409;
    /// Archived resources never change.
    Archived = "ARCHIVED", 409;
    /// A concurrent change won; nothing was written.
    VersionConflict = "VERSION_CONFLICT", 409;
    /// Approval needs a recorded legal review first.
    LegalReviewRequired = "LEGAL_REVIEW_REQUIRED", 409;
    /// The integration has no identity-provider client yet.
    NotProvisioned = "NOT_PROVISIONED", 409;
    /// The integration already has its identity-provider client.
    AlreadyProvisioned = "ALREADY_PROVISIONED", 409;
    /// The identity provider already has a client with this id.
    ClientExists = "CLIENT_EXISTS", 409;
    /// The identity provider has no client for the integration.
    ClientMissing = "CLIENT_MISSING", 409;
    /// The identity provider has no realm for the tenant.
    RealmUnknown = "REALM_UNKNOWN", 409;
    /// Only an active role can be assigned.
    RoleNotActive = "ROLE_NOT_ACTIVE", 409;
    /// The person already holds a live consent for this key.
    ConsentExists = "CONSENT_EXISTS", 409;
    /// The consent change needs evidence first.
    EvidenceRequired = "EVIDENCE_REQUIRED", 409;
    /// The person is not verified yet.
    PersonProvisional = "PERSON_PROVISIONAL", 409;
    /// This consent cannot be renewed.
    RenewNotAllowed = "RENEW_NOT_ALLOWED", 409;
    /// An audit download link past its expiry.
    LinkExpired = "LINK_EXPIRED", 410;
    /// `If-Match` names another version than the current one; nothing was applied.
    PreconditionFailed = "PRECONDITION_FAILED", 412;
    /// The request body is over the limit.
    PayloadTooLarge = "PAYLOAD_TOO_LARGE", 413;
    /// The response could not be built (a bug; nothing was changed).
    Internal = "INTERNAL", 500;
    /// The action could not be recorded in the audit log; nothing was done.
    AuditUnavailable = "AUDIT_UNAVAILABLE", 503;
    /// The store or the admin issuer's keys are unavailable.
    DependencyUnavailable = "DEPENDENCY_UNAVAILABLE", 503;
    /// The identity-provider provisioner is not configured or unreachable; nothing changed.
    ProvisionerUnavailable = "PROVISIONER_UNAVAILABLE", 503;
    /// The request (body read included) took longer than `server.request_timeout_s`.
    RequestTimeout = "REQUEST_TIMEOUT", 503;
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<AdminAuthError> for ApiError {
    fn from(e: AdminAuthError) -> Self {
        let code = match e {
            AdminAuthError::Missing | AdminAuthError::Invalid(_) => ErrorCode::Unauthenticated,
            AdminAuthError::Forbidden => ErrorCode::Forbidden,
            AdminAuthError::Unavailable => ErrorCode::DependencyUnavailable,
        };
        ApiError::new(code, e.to_string())
    }
}

impl From<RuleError> for ApiError {
    fn from(e: RuleError) -> Self {
        ApiError {
            field: e.field.map(str::to_owned),
            ..ApiError::new(e.code, e.message)
        }
    }
}

impl From<ConsentStoreError> for ApiError {
    fn from(e: ConsentStoreError) -> Self {
        match e {
            ConsentStoreError::Exists(m) => ApiError::new(ErrorCode::ConsentExists, m),
            ConsentStoreError::VersionConflict(m) => ApiError::new(ErrorCode::VersionConflict, m),
            ConsentStoreError::Store(e) => ApiError::unavailable("consent store", &e),
        }
    }
}

/// Maps a store write failure to the API error of [`AdminHttp::commit`].
pub fn write_error(e: WriteError, changes: &[DocChange]) -> ApiError {
    match e {
        WriteError::Conflict { kind, id, current } => {
            let expected = changes
                .iter()
                .find(|c| c.kind == kind && c.id == id)
                .map(|c| c.expect);
            match (expected, current) {
                (Some(Expect::Absent), Some(_)) => ApiError::new(
                    ErrorCode::AlreadyExists,
                    format!("{} `{id}` already exists", kind.as_str()),
                ),
                (_, None) => ApiError::not_found(format!("no {} `{id}`", kind.as_str())),
                (_, Some(v)) => ApiError::new(
                    ErrorCode::PreconditionFailed,
                    format!(
                        "{} `{id}` changed meanwhile (now version {v}); read it again",
                        kind.as_str()
                    ),
                ),
            }
        }
        WriteError::Archived { kind, id } => ApiError::new(
            ErrorCode::Archived,
            format!("{} `{id}` is archived and accepts no change", kind.as_str()),
        ),
        WriteError::Invalid(errs) => {
            let first = errs.0.first();
            ApiError {
                field: first.map(|e| format!("{} {}", e.entry, e.field)),
                ..ApiError::new(ErrorCode::PolicyInvalid, errs.to_string())
            }
        }
        WriteError::Store(e) => ApiError::unavailable("policy store", &e),
    }
}

/// A failure of the identity-provider provisioner (ONB-4).
impl From<ProvisionError> for ApiError {
    fn from(e: ProvisionError) -> Self {
        match e {
            ProvisionError::Exists(c) => ApiError::new(
                ErrorCode::ClientExists,
                format!("the identity provider already has a client `{c}`"),
            ),
            ProvisionError::NotFound(c) => ApiError::new(
                ErrorCode::ClientMissing,
                format!("the identity provider has no client `{c}`"),
            ),
            ProvisionError::Unavailable(m) => {
                tracing::warn!(error = %m, "provisioner unavailable");
                ApiError::new(
                    ErrorCode::ProvisionerUnavailable,
                    "the identity provider could not be reached; nothing was changed",
                )
            }
        }
    }
}

/// A store failure of a read (`sqlx::Error`): 503 `DEPENDENCY_UNAVAILABLE`; the cause is logged,
/// not returned.
pub fn store_unavailable(e: sqlx::Error) -> ApiError {
    ApiError::unavailable("policy store", &e)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every code is listed in `docs/error-codes.md` with its status, and no code is listed twice
    /// in this table.
    #[test]
    fn every_code_is_documented_once() {
        let doc = include_str!("../../docs/error-codes.md");
        let mut seen = std::collections::HashSet::new();
        for c in ErrorCode::ALL {
            assert!(seen.insert(c.as_str()), "{c} twice");
            let row = format!("| `{}` | {} |", c.as_str(), c.status().as_u16());
            assert!(
                doc.contains(&row),
                "docs/error-codes.md lacks the row {row}"
            );
        }
    }

    /// Statuses are client errors or 5xx, never 2xx; 503 exactly for the unavailable codes and
    /// the request timeout (all safe to retry).
    #[test]
    fn statuses() {
        for c in ErrorCode::ALL {
            let s = c.status();
            assert!(s.is_client_error() || s.is_server_error(), "{c}: {s}");
            assert_eq!(
                s == StatusCode::SERVICE_UNAVAILABLE,
                c.as_str().ends_with("_UNAVAILABLE") || *c == ErrorCode::RequestTimeout,
                "{c}"
            );
        }
    }
}
