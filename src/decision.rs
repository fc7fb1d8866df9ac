//! Decisions: the stable denial-code catalogue and the [`Decision`] value that the pipeline returns.
//!
//! A denial is data, not an error: every stage that refuses a request produces a [`Denial`] with one
//! [`DenyCode`]; the code alone decides the HTTP status, whether the client may retry, and the
//! `www-authenticate` challenge (INT-4.6-3, EXT-7-1). The mapping lives here, in one place, so that
//! the gRPC adapter, the `check` CLI and the error-code table (`docs/error-codes.md`) can never
//! disagree.

use chrono::{DateTime, Utc};
use serde::Serialize;

/// One stable, machine-readable reason for a denial. The string form (`code.as_str()`) is the public
/// contract: it appears in JSON denial bodies, Envoy dynamic metadata, decision logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DenyCode {
    /// No `authorization: Bearer` token (an API key alone never authenticates, INT-4.2-5).
    TokenMissing,
    /// The bearer value is not a well-formed JWS compact token, or lacks a `kid`.
    TokenMalformed,
    /// The header `alg` is not in the allow-list (`none`, HS*, ...) (ONB-SEC-01).
    TokenAlgorithmNotAllowed,
    /// No key with the token's `kid` in the issuer's JWKS, even after a refetch.
    TokenKeyUnknown,
    /// The signature does not verify with the key named by `kid`.
    TokenSignatureInvalid,
    /// `exp` is in the past (beyond the configured leeway).
    TokenExpired,
    /// `nbf` is in the future (beyond the configured leeway).
    TokenNotYetValid,
    /// `iss` is not the exact issuer of any tenant.
    TokenIssuerUnknown,
    /// `aud` does not contain scp-pep's audience.
    TokenAudienceInvalid,
    /// `tenant_id`, `integration_id` or `verticals` is absent or has the wrong shape (INT-4.2-3/4).
    TokenClaimsMissing,
    /// Claims are present but contradict the issuer or the integration (tenant of another issuer,
    /// client id not bound to the integration).
    TokenClaimsInvalid,
    /// The integration requires an API key and the request carried none or a wrong one.
    ApiKeyInvalid,
    /// The integration requires mTLS, or the token is certificate-bound (`cnf.x5t#S256`), and the
    /// presented client certificate is missing or does not match (INT-4.2-6).
    ClientCertificateInvalid,
    /// The source address is outside the integration's IP allowlist (INT-4.2-7).
    IpNotAllowed,
    /// No integration with the token's `integration_id`.
    IntegrationUnknown,
    /// The integration is Suspended (INT-6.2-3).
    IntegrationSuspended,
    /// The integration is in a state that carries no traffic (Draft … Approved, Deprecated,
    /// Archived) (INT-4.1-1, INT-6.2-4, INT-6.2-5).
    IntegrationNotActive,
    /// The integration is Restricted and the route writes (INT-6.2-2).
    IntegrationRestricted,
    /// The token, integration and path disagree on the tenant (INT-4.5-1); a security incident.
    TenantMismatch,
    /// The request touches a vertical outside the integration's effective verticals (INT-4.4-2,
    /// INT-9.4-1); a security incident.
    VerticalNotPermitted,
    /// The path is ambiguous (`..`, `.`, encoded slashes or dots, empty segments, `;`, `\`, control
    /// bytes, non-canonical percent-encoding) and is rejected, not guessed.
    PathAmbiguous,
    /// A method-override (`x-http-method-override`, `x-http-method`, `x-method-override`) or
    /// path-override (`x-original-url`, `x-rewrite-url`) header disagrees with the request's own
    /// method or path: the upstream might run another operation than the one authorized.
    RequestAmbiguous,
    /// No route matches the method and path (default deny, INT-4.1-3).
    RouteNotFound,
    /// A route names where the person id is, and the request does not carry it.
    PersonIdMissing,
    /// The route's scope is not granted by both the integration contract and the token (ONB-PRIV-01).
    ScopeViolation,
    /// An active deny rule matched (ADM-3).
    DenyRuleMatched,
    /// An active policy pack (Cedar) of a vertical the request touches denied it: a `forbid`
    /// matched, no `permit` matched, or evaluation failed (fail closed) (ADM-6).
    PolicyDenied,
    /// The route's data region is outside what the reached tenant's residency rules allow for
    /// the route's data class: its residency region, its `allowed_export_regions` (raw personal
    /// data) or, for aggregate routes, its `aggregate_export_regions`; for a cross-tenant request
    /// the partner's home region must be allowed too (INT-4.5-3, INT-4.5-4). A security incident.
    ResidencyViolation,
    /// The request body (batch push) is missing, truncated, not JSON, or lacks the person ids the
    /// route's JSON pointer names.
    PayloadInvalid,
    /// The request body's media type is not one the route accepts, or the body has no
    /// `content-type` (INT-5.2-1).
    MediaTypeUnsupported,
    /// A person the request touches has no consent for a vertical of the route (INT-4.3-1).
    ConsentMissing,
    /// A person's consent is pending (no evidence yet, not verified, or before `active_from`)
    /// (CON-13).
    ConsentPending,
    /// A person's consent is withdrawn, or expired past its grace period; for aggregate routes, a
    /// withdrawal is newer than the aggregate's refresh epoch (INT-4.3-2, INT-4.3-4, INT-9.1-1,
    /// CON-22, CON-23, CON-28).
    ConsentWithdrawn,
    /// A person's consent expired; grace periods are for staff, never for integrations (CON-26).
    ConsentExpired,
    /// A person's consent was rejected at verification (CON-20).
    ConsentRejected,
    /// The integration's real-time rate limit (GCRA) is exhausted (INT-4.6-1).
    RateLimited,
    /// The integration's daily batch quota is exhausted (INT-4.6-2).
    QuotaExceeded,
    /// A dependency needed to decide (policy store snapshot, issuer JWKS) is unavailable; fail closed.
    DependencyUnavailable,
    /// The audit record could not be written (store down, buffer full); never an unaudited allow.
    AuditUnavailable,
}

/// Every code, in catalogue order (used by tests and the table in `docs/error-codes.md`).
pub const ALL_CODES: &[DenyCode] = &[
    DenyCode::TokenMissing,
    DenyCode::TokenMalformed,
    DenyCode::TokenAlgorithmNotAllowed,
    DenyCode::TokenKeyUnknown,
    DenyCode::TokenSignatureInvalid,
    DenyCode::TokenExpired,
    DenyCode::TokenNotYetValid,
    DenyCode::TokenIssuerUnknown,
    DenyCode::TokenAudienceInvalid,
    DenyCode::TokenClaimsMissing,
    DenyCode::TokenClaimsInvalid,
    DenyCode::ApiKeyInvalid,
    DenyCode::ClientCertificateInvalid,
    DenyCode::IpNotAllowed,
    DenyCode::IntegrationUnknown,
    DenyCode::IntegrationSuspended,
    DenyCode::IntegrationNotActive,
    DenyCode::IntegrationRestricted,
    DenyCode::TenantMismatch,
    DenyCode::VerticalNotPermitted,
    DenyCode::PathAmbiguous,
    DenyCode::RequestAmbiguous,
    DenyCode::RouteNotFound,
    DenyCode::PersonIdMissing,
    DenyCode::ScopeViolation,
    DenyCode::DenyRuleMatched,
    DenyCode::PolicyDenied,
    DenyCode::ResidencyViolation,
    DenyCode::PayloadInvalid,
    DenyCode::MediaTypeUnsupported,
    DenyCode::ConsentMissing,
    DenyCode::ConsentPending,
    DenyCode::ConsentWithdrawn,
    DenyCode::ConsentExpired,
    DenyCode::ConsentRejected,
    DenyCode::RateLimited,
    DenyCode::QuotaExceeded,
    DenyCode::DependencyUnavailable,
    DenyCode::AuditUnavailable,
];

impl DenyCode {
    /// The stable string form, e.g. `"TOKEN_EXPIRED"`.
    pub fn as_str(self) -> &'static str {
        use DenyCode::*;
        match self {
            TokenMissing => "TOKEN_MISSING",
            TokenMalformed => "TOKEN_MALFORMED",
            TokenAlgorithmNotAllowed => "TOKEN_ALGORITHM_NOT_ALLOWED",
            TokenKeyUnknown => "TOKEN_KEY_UNKNOWN",
            TokenSignatureInvalid => "TOKEN_SIGNATURE_INVALID",
            TokenExpired => "TOKEN_EXPIRED",
            TokenNotYetValid => "TOKEN_NOT_YET_VALID",
            TokenIssuerUnknown => "TOKEN_ISSUER_UNKNOWN",
            TokenAudienceInvalid => "TOKEN_AUDIENCE_INVALID",
            TokenClaimsMissing => "TOKEN_CLAIMS_MISSING",
            TokenClaimsInvalid => "TOKEN_CLAIMS_INVALID",
            ApiKeyInvalid => "API_KEY_INVALID",
            ClientCertificateInvalid => "CLIENT_CERTIFICATE_INVALID",
            IpNotAllowed => "IP_NOT_ALLOWED",
            IntegrationUnknown => "INTEGRATION_UNKNOWN",
            IntegrationSuspended => "INTEGRATION_SUSPENDED",
            IntegrationNotActive => "INTEGRATION_NOT_ACTIVE",
            IntegrationRestricted => "INTEGRATION_RESTRICTED",
            TenantMismatch => "TENANT_MISMATCH",
            VerticalNotPermitted => "VERTICAL_NOT_PERMITTED",
            PathAmbiguous => "PATH_AMBIGUOUS",
            RequestAmbiguous => "REQUEST_AMBIGUOUS",
            RouteNotFound => "ROUTE_NOT_FOUND",
            PersonIdMissing => "PERSON_ID_MISSING",
            ScopeViolation => "SCOPE_VIOLATION",
            DenyRuleMatched => "DENY_RULE_MATCHED",
            PolicyDenied => "POLICY_DENIED",
            ResidencyViolation => "RESIDENCY_VIOLATION",
            PayloadInvalid => "PAYLOAD_INVALID",
            MediaTypeUnsupported => "MEDIA_TYPE_UNSUPPORTED",
            ConsentMissing => "CONSENT_MISSING",
            ConsentPending => "CONSENT_PENDING",
            ConsentWithdrawn => "CONSENT_WITHDRAWN",
            ConsentExpired => "CONSENT_EXPIRED",
            ConsentRejected => "CONSENT_REJECTED",
            RateLimited => "RATE_LIMITED",
            QuotaExceeded => "QUOTA_EXCEEDED",
            DependencyUnavailable => "DEPENDENCY_UNAVAILABLE",
            AuditUnavailable => "AUDIT_UNAVAILABLE",
        }
    }

    /// HTTP status Envoy sends to the client: 400 (ambiguous, incomplete or invalid request), 401
    /// (authentication), 403 (authorization), 415 (body media type), 429 (rate limit, quota),
    /// 503 (dependency).
    pub fn http_status(self) -> u16 {
        use DenyCode::*;
        match self {
            TokenMissing
            | TokenMalformed
            | TokenAlgorithmNotAllowed
            | TokenKeyUnknown
            | TokenSignatureInvalid
            | TokenExpired
            | TokenNotYetValid
            | TokenIssuerUnknown
            | TokenAudienceInvalid
            | TokenClaimsMissing
            | TokenClaimsInvalid
            | ApiKeyInvalid
            | ClientCertificateInvalid => 401,
            PathAmbiguous | RequestAmbiguous | PersonIdMissing | PayloadInvalid => 400,
            MediaTypeUnsupported => 415,
            RateLimited | QuotaExceeded => 429,
            DependencyUnavailable => 503,
            AuditUnavailable => 503,
            IpNotAllowed
            | IntegrationUnknown
            | IntegrationSuspended
            | IntegrationNotActive
            | IntegrationRestricted
            | TenantMismatch
            | VerticalNotPermitted
            | RouteNotFound
            | ScopeViolation
            | DenyRuleMatched
            | PolicyDenied
            | ResidencyViolation
            | ConsentMissing
            | ConsentPending
            | ConsentWithdrawn
            | ConsentExpired
            | ConsentRejected => 403,
        }
    }

    /// Whether the same request may succeed later without any change by the client
    /// (429 and 503 only); the client then honours `retry-after` (INT-4.6-4).
    pub fn retryable(self) -> bool {
        matches!(
            self,
            DenyCode::RateLimited
                | DenyCode::QuotaExceeded
                | DenyCode::DependencyUnavailable
                | DenyCode::AuditUnavailable
        )
    }

    /// The RFC 6750 `www-authenticate` challenge for this code, if any: `invalid_token` on every
    /// 401, `insufficient_scope` on scope failures.
    pub fn www_authenticate(self) -> Option<&'static str> {
        if self == DenyCode::ScopeViolation {
            Some(r#"Bearer error="insufficient_scope""#)
        } else if self == DenyCode::TokenMissing {
            // RFC 6750 §3.1: no error code when the request carried no credentials at all.
            Some(r#"Bearer realm="scp""#)
        } else if self.http_status() == 401 {
            Some(r#"Bearer error="invalid_token""#)
        } else {
            None
        }
    }
}

impl std::fmt::Display for DenyCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refusal: the code, a human message (never containing a token, key or secret) and, for 429/503,
/// the number of seconds after which a retry may succeed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Denial {
    pub code: DenyCode,
    pub message: String,
    /// Seconds; present only for retryable codes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_s: Option<u64>,
    /// For `PAYLOAD_INVALID` schema failures: the JSON pointer of the failing value (segments the
    /// schema does not name shown as `*`, never a value).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// For `PAYLOAD_INVALID` schema failures: the JSON Schema keyword at fault, e.g. `required`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keyword: Option<String>,
}

/// Longest denial message, bytes: a message may echo a value from the request or the token, and
/// every record must have a bounded size (SEC-09).
pub const MAX_MESSAGE_BYTES: usize = 256;

/// `s` cut to at most `max` bytes at a character boundary, `…` marking a cut.
pub fn clip(mut s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push('…');
    s
}

impl Denial {
    /// A denial without `retry-after`; the message is cut to [`MAX_MESSAGE_BYTES`].
    pub fn new(code: DenyCode, message: impl Into<String>) -> Self {
        Denial {
            code,
            message: clip(message.into(), MAX_MESSAGE_BYTES),
            retry_after_s: None,
            field: None,
            keyword: None,
        }
    }

    /// A retryable denial (429/503) with `retry-after` in whole seconds (at least 1).
    pub fn retry_after(code: DenyCode, message: impl Into<String>, seconds: u64) -> Self {
        Denial {
            code,
            message: clip(message.into(), MAX_MESSAGE_BYTES),
            retry_after_s: Some(seconds.max(1)),
            field: None,
            keyword: None,
        }
    }
}

/// The pipeline stages (`docs/architecture.md`), in execution order. Every stage that ran is
/// recorded in the decision so the audit record says exactly what was checked (INT-8-1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// 1: bearer token, signature, issuer, audience, time, required claims.
    Authenticate,
    /// 2: integration exists, tenant, lifecycle state, token verticals ⊆ declared verticals.
    Integration,
    /// 1 (secondary factors, which need the integration record): API key, mTLS binding, IP allowlist.
    SecondFactor,
    /// 3: method + normalized path → route.
    Route,
    /// 4: path tenant = token tenant, or one the integration's umbrella-approved
    /// `partner_tenants` names (INT-4.5-2); route verticals ⊆ effective verticals.
    TenantVertical,
    /// 5: scope granted by contract and token.
    Scope,
    /// 5b: the request body against the route's media types and schema (only when the request
    /// carries a body or the route has a schema).
    Payload,
    /// 6: deny rules, then the policy packs (Cedar) of every vertical the route touches.
    DenyRules,
    /// 6b: the route's data region is allowed by the reached tenant's residency rules for the
    /// route's data class (INT-4.5-3, INT-4.5-4).
    Residency,
    /// 7: consent of every person the request touches, for every vertical of the route; for
    /// aggregate routes, withdrawals against the aggregate's refresh epoch.
    Consent,
    /// 8: allowed and masked fields.
    DataMinimization,
    /// 9: GCRA rate limit or daily quota.
    RateLimit,
}

/// A security incident noticed while deciding (INT-9.4-1); the audit log records it as its own event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Incident {
    /// The request reached outside the integration's verticals.
    VerticalMisScoped,
    /// The request named another tenant than its token and integration.
    CrossTenant,
    /// The client sent `x-scp-*` headers, which only scp-pep may set; they were removed.
    ForgedHeaders,
    /// The request would have moved the tenant's data to a region its residency rules do not
    /// allow (`RESIDENCY_VIOLATION`, INT-4.5-3, INT-4.5-4).
    ResidencyViolation,
}

impl Incident {
    /// Every incident kind, in the order of the `scp_pep_security_incidents_total` handles.
    pub const ALL: [Incident; 4] = [
        Incident::VerticalMisScoped,
        Incident::CrossTenant,
        Incident::ForgedHeaders,
        Incident::ResidencyViolation,
    ];

    /// The snake_case name (the serialized form and the metric's `kind` label).
    pub fn as_str(self) -> &'static str {
        match self {
            Incident::VerticalMisScoped => "vertical_mis_scoped",
            Incident::CrossTenant => "cross_tenant",
            Incident::ForgedHeaders => "forged_headers",
            Incident::ResidencyViolation => "residency_violation",
        }
    }
}

/// One consent check of stage 7: which person (by reference, never the id), which vertical and
/// purpose, and the status found (`active`, `pending`, `withdrawn`, `expired`, `rejected`,
/// `missing`). Fields are in sorted order: the audit body serializes this struct as is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ConsentCheck {
    /// Keyed reference `<key id>:<32 hex>` (HMAC-SHA-256 of tenant and person id, see
    /// [`crate::pseudonym`]); lets auditors match records without the id. `*` for aggregate
    /// checks. Format-1 records hold an unkeyed SHA-256 prefix here.
    pub person_ref: String,
    pub purpose: Option<String>,
    pub result: String,
    pub vertical: String,
}

/// The inputs of a decision that are not in its other recorded fields and that a re-decision
/// against a candidate policy needs ([`crate::impact`], ADM-6): the authenticated token's
/// `verticals` claim and its full scope set (the recorded `scopes` are only the effective
/// ones, the token's ∩ the contract's). No personal data: claims that name the integration's
/// grants only. Fields are in sorted order: the audit body (format 3) serializes this as is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, Default)]
pub struct DecisionInputs {
    /// The token's `scope` claim, split on spaces, sorted, deduplicated.
    pub scopes: Vec<String>,
    /// The token's `verticals` claim, in token order.
    pub verticals: Vec<String>,
}

/// Longest recorded path shape, bytes (paths that match no route).
pub const MAX_RECORDED_PATH: usize = 256;

/// Allow or deny.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Allow,
    Deny(Denial),
}

/// Everything scp-pep decided about one request. Built by [`crate::pipeline`], rendered by the gRPC
/// adapter into a `CheckResponse`, and handed to the [`crate::sink::DecisionSink`] (INT-8-1).
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    /// UUIDv7, also sent upstream as `x-scp-decision-id` and in denial bodies.
    pub decision_id: String,
    /// W3C trace id (32 hex) of the trace this decision belongs to: the exported span's, else
    /// the request's `traceparent` ([`crate::telemetry::in_trace`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    pub time: DateTime<Utc>,
    #[serde(flatten)]
    pub outcome: Outcome,
    /// The token's tenant: the integration's home tenant.
    pub tenant_id: Option<String>,
    /// The tenant whose route the request reached (`{tenant}` of the path), only when it is
    /// another than `tenant_id`: a cross-tenant request of an umbrella-approved integration
    /// (INT-4.5-2), allowed or denied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_tenant_id: Option<String>,
    pub integration_id: Option<String>,
    /// The OAuth client (`azp`, else `client_id`).
    pub client_id: Option<String>,
    pub method: String,
    /// The path as records carry it, never a person id (SEC-09): the matched route's template
    /// with its parameters named (`/v1/tenants/ke/health/persons/{person_id}/record`; `{tenant}`
    /// is filled when it names a tenant of the policy); for a path that matches no route, its
    /// sanitized shape (segments that are no route literal or tenant become `{?}`, at most
    /// [`MAX_RECORDED_PATH`] bytes).
    pub path: String,
    /// Length of the request's path (without the query string), bytes.
    pub path_bytes: usize,
    /// Keyed hash of the request's path (`<key id>:<32 hex>`), only when no route template
    /// matched it (the recorded path then is a sanitized shape).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_hash: Option<String>,
    /// Version of the policy snapshot that decided (`None`: no policy loaded).
    pub policy_version: Option<i64>,
    pub route_id: Option<String>,
    pub action: Option<String>,
    pub resource: Option<String>,
    pub verticals: Vec<String>,
    pub scopes: Vec<String>,
    pub data_categories: Vec<String>,
    /// Number of persons the request touches (their ids stay out of logs; consent is stage 7).
    pub persons: usize,
    pub masked_fields: Vec<String>,
    /// `None` when the contract does not limit fields.
    pub allowed_fields: Option<Vec<String>>,
    pub stages: Vec<Stage>,
    /// Consent checks performed (stage 7), one per person and vertical.
    pub consent_checks: Vec<ConsentCheck>,
    /// The consent purpose the route is bound to (sent upstream as `x-scp-purpose`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    pub incidents: Vec<Incident>,
    /// Why, where a policy says: the determining policies of the policy packs (stage 6) as
    /// `<pack id>/<policy id>` (the `@id` annotation, else Cedar's id), for allows and denials.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
    /// Shadow (dry-run) findings: what documents in mode `shadow` would have denied (issue 16).
    /// Recorded, never enforced. Absent when empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shadow: Vec<ShadowFinding>,
    /// What a re-decision of this request against another policy needs besides the fields
    /// above (impact preview, ADM-6): the token's claims that matter. Set once stage 1
    /// authenticated the token; `None` for a request denied before (no token, bad token).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inputs: Option<DecisionInputs>,
    /// Wall time spent deciding, µs.
    pub latency_us: u64,
    /// Request headers Envoy must remove before forwarding (client `x-scp-*`, API key,
    /// `authorization` where the tenant asks). Not logged.
    #[serde(skip)]
    pub headers_to_remove: Vec<String>,
}

/// What one document in shadow mode would have done to a request: deny it with `code` (issue 16).
/// Never enforced; recorded in the audit record (`shadow`), the decision log, the gRPC tail and
/// `scp_pep_shadow_decisions_total{document,code}`. Holds policy ids only, no personal data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShadowFinding {
    // Fields in sorted key order: the audit body is canonical JSON (RFC 8785).
    /// The denial it would have produced: `POLICY_DENIED`, `DENY_RULE_MATCHED`,
    /// `RATE_LIMITED` or `QUOTA_EXCEEDED`.
    pub code: DenyCode,
    /// The document: `policy_pack/<id>`, `deny_rule/<id>`, `rate_limit/<integration id>` or
    /// `quota/<integration id>`.
    pub document: String,
    /// For packs, the determining Cedar policies as `<pack id>/<policy id>`; else empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
}

impl Decision {
    /// A fresh decision for `method` at `time`, with nothing decided yet: it starts as a denial
    /// ([`Decision::UNDECIDED`], fail closed) and only the pipeline's last stage makes it an
    /// allow. `path` is the path as it is to be recorded (the pipeline starts with `""` and sets
    /// it once it knows the route).
    pub fn new(method: &str, path: &str, time: DateTime<Utc>) -> Self {
        Decision {
            decision_id: uuid::Uuid::now_v7().to_string(),
            trace_id: None,
            time,
            outcome: Outcome::Deny(Denial::retry_after(
                DenyCode::DependencyUnavailable,
                Self::UNDECIDED,
                1,
            )),
            tenant_id: None,
            target_tenant_id: None,
            integration_id: None,
            client_id: None,
            // Request-controlled: an unusual method longer than any real one is not recorded.
            method: (if method.len() <= 32 { method } else { "{?}" }).to_owned(),
            path: path.to_owned(),
            path_bytes: path.len(),
            path_hash: None,
            policy_version: None,
            route_id: None,
            action: None,
            resource: None,
            verticals: Vec::new(),
            scopes: Vec::new(),
            data_categories: Vec::new(),
            persons: 0,
            masked_fields: Vec::new(),
            allowed_fields: None,
            stages: Vec::with_capacity(9),
            consent_checks: Vec::new(),
            purpose: None,
            incidents: Vec::new(),
            reasons: Vec::new(),
            shadow: Vec::new(),
            inputs: None,
            latency_us: 0,
            headers_to_remove: Vec::new(),
        }
    }

    /// The message of a decision no stage finished (a bug): it stays denied.
    pub const UNDECIDED: &'static str = "no decision was reached; denied";

    /// True when the outcome is allow.
    pub fn allowed(&self) -> bool {
        matches!(self.outcome, Outcome::Allow)
    }

    /// The denial, if any.
    pub fn denial(&self) -> Option<&Denial> {
        match &self.outcome {
            Outcome::Deny(d) => Some(d),
            Outcome::Allow => None,
        }
    }

    /// The code string, or `"OK"` for an allow (used in logs, metrics and metadata).
    pub fn code_str(&self) -> &'static str {
        self.denial().map_or("OK", |d| d.code.as_str())
    }

    /// The JSON denial body of the Envoy contract:
    /// `{"error":{"code","message","decision_id","retryable","field"?,"keyword"?}}` (`field`
    /// and `keyword` for payload schema failures); `None` for an allow.
    pub fn denial_body(&self) -> Option<String> {
        let d = self.denial()?;
        let mut body = serde_json::json!({
            "error": {
                "code": d.code.as_str(),
                "message": d.message,
                "decision_id": self.decision_id,
                "retryable": d.code.retryable(),
            }
        });
        if let Some(f) = &d.field {
            body["error"]["field"] = f.clone().into();
        }
        if let Some(k) = &d.keyword {
            body["error"]["keyword"] = k.clone().into();
        }
        Some(body.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// INT-4.6-3: every code has a distinct stable string, a status among 400/401/403/415/429/503, and
    /// exactly the 429/503 codes are retryable.
    #[test]
    fn catalogue_is_consistent() {
        let mut seen = std::collections::HashSet::new();
        for c in ALL_CODES {
            assert!(seen.insert(c.as_str()), "duplicate {}", c.as_str());
            let json = serde_json::to_string(c).unwrap();
            assert_eq!(json, format!("\"{}\"", c.as_str()));
            let s = c.http_status();
            assert!([400, 401, 403, 415, 429, 503].contains(&s));
            assert_eq!(c.retryable(), s == 429 || s == 503, "{c}");
            assert_eq!(
                c.www_authenticate().is_some(),
                s == 401 || *c == DenyCode::ScopeViolation
            );
        }
    }

    /// INT-9.4-1, INT-4.5-3: every incident kind's name is its serialized form (the metric label
    /// and the audit body agree).
    #[test]
    fn incident_names_match_serde() {
        for i in Incident::ALL {
            assert_eq!(
                serde_json::to_string(&i).unwrap(),
                format!("\"{}\"", i.as_str())
            );
        }
    }

    /// INT-4.6-3: the code table in `docs/error-codes.md` lists every code with its status (the
    /// documentation stays true).
    #[test]
    fn error_codes_doc_documents_every_code() {
        let doc = include_str!("../docs/error-codes.md");
        for c in ALL_CODES {
            let row = format!("| `{}` | {} |", c.as_str(), c.http_status());
            assert!(
                doc.contains(&row),
                "docs/error-codes.md lacks the row {row}"
            );
        }
    }

    /// INT-4.6-3: the denial body has the documented shape.
    #[test]
    fn denial_body_shape() {
        let mut d = Decision::new("GET", "/x", Utc::now());
        d.outcome = Outcome::Deny(Denial::new(DenyCode::ScopeViolation, "no"));
        let v: serde_json::Value = serde_json::from_str(&d.denial_body().unwrap()).unwrap();
        assert_eq!(v["error"]["code"], "SCOPE_VIOLATION");
        assert_eq!(v["error"]["retryable"], false);
        assert_eq!(v["error"]["decision_id"], d.decision_id.as_str());
        let mut allowed = Decision::new("GET", "/", Utc::now());
        allowed.outcome = Outcome::Allow;
        assert!(allowed.denial_body().is_none());
    }

    /// Default deny: a decision no stage finished is a retryable denial, never an allow.
    #[test]
    fn a_fresh_decision_is_denied() {
        let d = Decision::new("GET", "/", Utc::now());
        assert!(!d.allowed());
        let den = d.denial().unwrap();
        assert_eq!(den.code, DenyCode::DependencyUnavailable);
        assert_eq!(den.message, Decision::UNDECIDED);
        assert_eq!(den.retry_after_s, Some(1));
    }
}
