//! The policy documents: tenants, integrations, routes and deny rules, exactly as they are written in
//! `policies/*.yaml`, stored in the policy store and compiled into a
//! [`PolicySnapshot`](super::PolicySnapshot).
//!
//! Unknown fields are errors (`deny_unknown_fields`): a misspelt `ip_allowlist` must never silently
//! turn a control off.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// One file's content: any subset of the four lists.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    #[serde(default)]
    pub tenants: Vec<Tenant>,
    #[serde(default)]
    pub integrations: Vec<Integration>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub deny_rules: Vec<DenyRule>,
    #[serde(default)]
    pub policy_packs: Vec<PolicyPack>,
}

/// A country deployment (INT-4.5-*). Tokens are trusted only from its exact `issuer`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tenant {
    /// Lower-case identifier, e.g. `ke`; equals the `tenant_id` claim and `{tenant}` in paths.
    pub id: String,
    /// Data residency region, e.g. `africa-east` (INT-4.5-3): where the tenant's data resides.
    /// A route whose [`Route::data_region`] is another region is reached only when one of the
    /// two export lists below allows it (pipeline stage 6b).
    pub residency_region: String,
    /// Regions other than `residency_region` that routes carrying raw personal data may serve
    /// this tenant's data from or send it to (INT-4.5-4), e.g. a regional backup site covered by
    /// a data-sharing agreement. Empty (the default): raw personal data stays in-region.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_export_regions: Vec<String>,
    /// Regions other than `residency_region` that aggregate routes (kind `aggregate`, no person
    /// id: no raw personal data) may serve or send this tenant's data to (INT-4.5-3);
    /// `allowed_export_regions` hold for them too. Empty (the default): aggregates stay in-region
    /// unless `allowed_export_regions` names the region.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aggregate_export_regions: Vec<String>,
    /// Exact `iss` of the tenant's Keycloak realm, e.g. `https://idp.example/realms/ke`.
    pub issuer: String,
    /// Where the realm's signing keys are.
    pub jwks: JwksSource,
    /// Audience tokens must carry; defaults to the server's `auth.audience`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Remove the partner's `authorization` header before forwarding upstream (EXT-3.3-1).
    #[serde(default)]
    pub strip_authorization: bool,
    /// Days audit records of this tenant are kept before the retention purge removes them
    /// (INT-8-2); defaults to the server's `audit.retention_days`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_retention_days: Option<u32>,
    /// Days an expired consent stays in its read-only grace period for staff (CON-26, CON-27: at
    /// most 90, approved by the umbrella authority); defaults to `consent.default_grace_days`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consent_grace_days: Option<u32>,
    /// Days before expiry at which reminders go out (CON-33); default 30, 7, 3, 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consent_reminder_days: Option<Vec<u32>>,
    /// What the webhook circuit does to an integration after `webhooks.act_after` consecutive
    /// failed calls (ONB-LOG-01): `restrict` (default) or `suspend`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_circuit_action: Option<CircuitAction>,
}

/// The webhook circuit's action on an integration (ONB-LOG-01).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CircuitAction {
    Restrict,
    Suspend,
}

/// A JWKS location: `{url: "https://…"}` (fetched over HTTP(S), cached) or `{file: "path"}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "JwksSourceDoc", into = "JwksSourceDoc")]
pub enum JwksSource {
    Url(String),
    File(String),
}

/// The written form of [`JwksSource`]: exactly one of `url` and `file`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct JwksSourceDoc {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    file: Option<String>,
}

impl TryFrom<JwksSourceDoc> for JwksSource {
    type Error = String;
    fn try_from(d: JwksSourceDoc) -> Result<Self, String> {
        match (d.url, d.file) {
            (Some(u), None) => Ok(JwksSource::Url(u)),
            (None, Some(f)) => Ok(JwksSource::File(f)),
            _ => Err("jwks needs exactly one of `url` and `file`".into()),
        }
    }
}

impl From<JwksSource> for JwksSourceDoc {
    fn from(s: JwksSource) -> Self {
        match s {
            JwksSource::Url(u) => JwksSourceDoc {
                url: Some(u),
                file: None,
            },
            JwksSource::File(f) => JwksSourceDoc {
                url: None,
                file: Some(f),
            },
        }
    }
}

/// The one lifecycle of the admin resources: integrations (INT-6.2-1), policy packs and policy
/// changes (ADM-6). Each resource kind allows its own transitions between these states (its
/// transition table); the states and their names are shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lifecycle {
    Draft,
    Requested,
    Reviewed,
    Approved,
    Active,
    Restricted,
    Suspended,
    Deprecated,
    Archived,
}

impl Lifecycle {
    /// Every state, in lifecycle order.
    pub const ALL: [Lifecycle; 9] = [
        Lifecycle::Draft,
        Lifecycle::Requested,
        Lifecycle::Reviewed,
        Lifecycle::Approved,
        Lifecycle::Active,
        Lifecycle::Restricted,
        Lifecycle::Suspended,
        Lifecycle::Deprecated,
        Lifecycle::Archived,
    ];

    /// The lower-case name used in files, the API and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Lifecycle::Draft => "draft",
            Lifecycle::Requested => "requested",
            Lifecycle::Reviewed => "reviewed",
            Lifecycle::Approved => "approved",
            Lifecycle::Active => "active",
            Lifecycle::Restricted => "restricted",
            Lifecycle::Suspended => "suspended",
            Lifecycle::Deprecated => "deprecated",
            Lifecycle::Archived => "archived",
        }
    }

    /// The state named `s` (as [`Lifecycle::as_str`] spells it).
    pub fn parse(s: &str) -> Option<Lifecycle> {
        Lifecycle::ALL.into_iter().find(|l| l.as_str() == s)
    }
}

/// Integration lifecycle states (INT-6.2-1): the shared [`Lifecycle`].
pub type IntegrationState = Lifecycle;

/// A partner integration: the contract scp-pep enforces (INT-4.1-2, INT-4.4-1, ONB-1, ONB-2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Integration {
    /// Equals the token's `integration_id` claim.
    pub id: String,
    pub tenant: String,
    pub partner_name: String,
    pub legal_basis: String,
    pub state: IntegrationState,
    /// Declared verticals; the token's `verticals` must be a subset.
    pub verticals: Vec<String>,
    /// Approved scopes, e.g. `health:person:read`.
    pub scopes: Vec<String>,
    /// Optional explicit route allow-list (route ids); when set, only these routes are reachable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes: Option<Vec<String>>,
    /// OAuth client bound to this integration; when set, the token's `azp`/`client_id` must equal it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(default)]
    pub field_policy: FieldPolicy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<Quota>,
    /// Lower-case hex SHA-256 of the API key (the key itself is never stored). When set, every
    /// request must also carry the key (INT-4.2-5: second factor only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_sha256: Option<String>,
    /// Lower-case hex SHA-256 of the client certificate's DER; when set, mTLS is required (INT-4.2-6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls_cert_sha256: Option<String>,
    /// CIDRs the request may come from; empty = any (INT-4.2-7).
    #[serde(default)]
    pub ip_allowlist: Vec<IpNet>,
    /// Who to call about the integration (ONB-1); written by the admin API, optional in files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub technical_contacts: Vec<Contact>,
    /// Other tenants the integration exchanges data with: a cross-tenant integration, which the
    /// umbrella authority approves (INT-4.5-2).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partner_tenants: Vec<String>,
    /// The onboarding trail (who created, reviewed, approved; the legal document), kept by the
    /// admin API (INT-6.1-1, ONB-3, ONB-AUD-3). Absent for integrations written as files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onboarding: Option<Onboarding>,
}

/// A technical contact of a partner (ONB-1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Contact {
    pub name: String,
    pub email: String,
    /// e.g. `technical`, `security`, `operations`.
    pub role: String,
}

/// Who moved an integration through onboarding, and when (RFC 3339) (INT-6.1-1, ONB-AUD-3).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Onboarding {
    pub created_by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitted_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reviewed_by: Option<String>,
    /// The legal and consent review (required before approval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legal_reviewed_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legal_review_notes: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<String>,
    /// The legal or policy document the approval rests on (ONB-AUD-3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legal_document_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioned_at: Option<String>,
    /// `handshake` when the first successful handshake activated it (ONB-7), else the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activated_by: Option<String>,
}

/// Field-level filtering and masking per integration (INT-5.3-2).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FieldPolicy {
    /// When set, only these of a route's fields are visible; the rest are masked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_fields: Option<Vec<String>>,
    /// Always masked, even if allowed.
    #[serde(default)]
    pub masked_fields: Vec<String>,
}

/// Whether a document is enforced or only evaluated in shadow (dry-run) mode (issue 16).
///
/// - `enforce` (the default, omitted when serialized: existing documents and their hashes stay
///   identical): the document decides traffic.
/// - `shadow`: the document is evaluated on live traffic next to the enforced ones; its would-be
///   denial is recorded as a [`crate::decision::ShadowFinding`] (audit record, decision log,
///   `scp_pep_shadow_decisions_total`) but never enforced: it never changes the outcome, the
///   masks or the headers. Authentication, tenant/vertical isolation, lifecycle, scope and
///   consent have no shadow mode.
///
/// Unknown values are parse errors naming the `mode` field.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Enforce,
    Shadow,
}

impl Mode {
    /// `enforce` or `shadow`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Shadow => "shadow",
        }
    }

    /// Whether this is [`Mode::Enforce`] (the default; `skip_serializing_if` helper).
    pub fn is_enforce(&self) -> bool {
        *self == Mode::Enforce
    }

    /// Whether this is [`Mode::Shadow`].
    pub fn is_shadow(&self) -> bool {
        *self == Mode::Shadow
    }
}

/// GCRA limit for real-time routes (INT-4.6-1): `per_second` sustained, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
    /// With `[rate_limit] backend = "redis"`: `true` counts this limit cluster-wide in Redis,
    /// `false` keeps it per replica; absent follows `[rate_limit] shared_by_default`. Ignored
    /// with the local backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared: Option<bool>,
    /// `enforce` (default) or `shadow`: a shadow limit is counted in its own per-replica state
    /// and only reported (`RATE_LIMITED` shadow finding), never enforced.
    #[serde(default, skip_serializing_if = "Mode::is_enforce")]
    pub mode: Mode,
}

/// Daily quota for batch routes (INT-4.6-2); the day is the UTC calendar day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    pub per_day: u64,
    /// Same as [`RateLimit::shared`], for the daily quota.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared: Option<bool>,
    /// `enforce` (default) or `shadow`: a shadow quota is counted in its own per-replica state
    /// and only reported (`QUOTA_EXCEEDED` shadow finding), never enforced.
    #[serde(default, skip_serializing_if = "Mode::is_enforce")]
    pub mode: Mode,
}

/// Read or write (Restricted integrations may only read, INT-6.2-2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Read,
    Write,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Write => "write",
        }
    }
}

/// Route kinds (INT-5.1-1, INT-4.6-2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteKind {
    /// Request/response; GCRA rate-limited.
    RealTime,
    /// Bulk transfer; daily quota.
    Batch,
    /// Aggregated or anonymized output; GCRA rate-limited.
    Aggregate,
    /// Connectivity check with fresh credentials (ONB-6); GCRA rate-limited.
    Handshake,
}

/// Where a route carries the id of the person it touches (consent, stage 7, reads it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, tag = "in", rename_all = "snake_case")]
pub enum PersonLocation {
    /// A `{name}` parameter of the path template.
    Path { name: String },
    /// A query parameter.
    Query { name: String },
    /// A request header (lower-case name).
    Header { name: String },
    /// A JSON pointer (RFC 6901) into the request body, where a `*` segment means every element
    /// of an array, e.g. `/records/*/person_id` (batch push routes; Envoy `with_request_body`).
    /// The value at the pointer is a string or an array of strings.
    Body { pointer: String },
}

/// An API operation partners may call (DESIGN.md stage 3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub id: String,
    /// Upper-case HTTP method(s).
    pub methods: Vec<String>,
    /// Template, e.g. `/v1/tenants/{tenant}/health/persons/{person_id}/record`; `{tenant}` is
    /// compared with the token's tenant.
    pub path: String,
    /// Every vertical the route touches (at least one, INT-4.4-3).
    pub verticals: Vec<String>,
    pub action: Action,
    pub resource: String,
    /// The scope the caller needs, from both contract and token.
    pub scope: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub person_id: Option<PersonLocation>,
    /// The purpose the route's data is used for, when consent is purpose-bound (CON-2); sent
    /// upstream as `x-scp-purpose`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consent_purpose: Option<String>,
    #[serde(default)]
    pub data_categories: Vec<String>,
    /// Fields the route returns or accepts (input to data minimization).
    #[serde(default)]
    pub fields: Vec<String>,
    pub kind: RouteKind,
    /// Media types a request body may have, `type/subtype` (INT-5.2-1); absent: JSON, plus
    /// `text/csv` on batch routes. XML, HL7, SDMX and the like only where listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_types: Option<Vec<String>>,
    /// JSON Schema a JSON request body must satisfy (INT-9.3-1, EXT-4.4-2), compiled once per
    /// policy snapshot; a route with one refuses requests without a body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_schema: Option<serde_json::Value>,
    /// The residency region the route's data is served from or sent to (its upstream's region,
    /// INT-4.5-3), e.g. `africa-east`; one of the regions the policy names (a tenant's
    /// `residency_region` or export region). Absent: the region of the tenant the request
    /// reaches, i.e. always in-region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_region: Option<String>,
}

impl Route {
    /// Whether the route carries raw personal data for residency (INT-4.5-4): every route except
    /// an aggregate route that names no person id (fail closed: handshake, batch and real-time
    /// routes count as personal).
    pub fn carries_personal_data(&self) -> bool {
        !(self.kind == RouteKind::Aggregate && self.person_id.is_none())
    }
}

/// A native deny rule: every field that is set must match; `forbid` beats every allow (ADM-3).
///
/// Written by the policy files (only `id`, `tenant`, `reason` and the matchers) or by
/// `POST /v1/deny-rules` (every field). Fields added for the admin API are optional, so older
/// files and stored documents still load.
///
/// - Partner traffic (pipeline stage 6) is matched by rules without a subject or with subject
///   type `integration`; `action` is then `read` or `write`.
/// - Admin callers and `POST /v1/authz/evaluate` are matched by rules of subject type `user`,
///   `group` or `role`; `action` is then a catalog action or permission id (`approve`,
///   `integrations.approve`).
/// - Only `status: active` rules inside `[active_from, active_until)` are enforced; revoked
///   rules are kept for the record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenyRule {
    pub id: String,
    pub tenant: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub integration: Option<String>,
    /// `read`/`write` for partner traffic; an admin action for user/group/role subjects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// OAuth scope of the route (partner traffic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vertical: Option<String>,
    /// Human reason, returned in the denial message.
    pub reason: String,
    /// Whom the rule denies; `None` = partner traffic (with `integration` as the matcher).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_type: Option<DenySubject>,
    /// The user id (`sub`), group id, role id (a stored role id or a token role) or integration id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub geo: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program: Option<String>,
    /// RFC 3339; enforced from then (absent: from creation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_from: Option<String>,
    /// RFC 3339; not enforced from then on (absent: open-ended).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_until: Option<String>,
    #[serde(default, skip_serializing_if = "DenyStatus::is_active")]
    pub status: DenyStatus,
    /// Reason code of the creation (ADM-7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason_code: Option<String>,
    /// RFC 3339, set by the revocation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoke_reason_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoke_reason_text: Option<String>,
    /// `enforce` (default) or `shadow` (partner-traffic rules only): a shadow rule that would
    /// hit is recorded as a `DENY_RULE_MATCHED` shadow finding, never enforced.
    #[serde(default, skip_serializing_if = "Mode::is_enforce")]
    pub mode: Mode,
}

impl DenyRule {
    /// Active and inside its window at `now_ms` (ms since the epoch). An unparsable window bound
    /// counts as "in force" (fail closed; validation rejects such documents anyway).
    pub fn in_force(&self, now_ms: i64) -> bool {
        let at = |s: &Option<String>| {
            s.as_deref().map(|t| {
                chrono::DateTime::parse_from_rfc3339(t)
                    .map(|t| t.timestamp_millis())
                    .ok()
            })
        };
        self.status == DenyStatus::Active
            && at(&self.active_from).is_none_or(|f| f.is_none_or(|f| f <= now_ms))
            && at(&self.active_until).is_none_or(|u| u.is_none_or(|u| now_ms < u))
    }

    /// Whether the rule is about partner traffic (no subject, or subject type `integration`).
    pub fn for_traffic(&self) -> bool {
        matches!(self.subject_type, None | Some(DenySubject::Integration))
    }
}

/// Subject types of deny rules (`spec/004_*` Deny Rules, plus `integration`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DenySubject {
    User,
    Group,
    Role,
    Integration,
}

impl DenySubject {
    pub fn as_str(self) -> &'static str {
        match self {
            DenySubject::User => "user",
            DenySubject::Group => "group",
            DenySubject::Role => "role",
            DenySubject::Integration => "integration",
        }
    }
}

/// A deny rule's state: revoked rules are kept but not enforced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DenyStatus {
    #[default]
    Active,
    Revoked,
}

impl DenyStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DenyStatus::Active => "active",
            DenyStatus::Revoked => "revoked",
        }
    }
    fn is_active(&self) -> bool {
        *self == DenyStatus::Active
    }
}

/// Lifecycle of policy packs and policy changes (ADM-6): the shared [`Lifecycle`].
pub type PackStatus = Lifecycle;

/// A vertical's policy pack: a Cedar policy set evaluated in pipeline stage 6 (`forbid` wins).
/// Only `active` packs inside their window are enforced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyPack {
    pub id: String,
    pub tenant: String,
    pub vertical: String,
    pub status: PackStatus,
    /// Cedar policy text (validated against the schema at submission).
    pub policies: String,
    /// RFC 3339; the pack is enforced from then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_from: Option<String>,
    /// RFC 3339; the pack stops being enforced then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_until: Option<String>,
    /// `enforce` (default) or `shadow`. An active shadow pack is evaluated next to the enforced
    /// pack of its (tenant, vertical) (at most one of each); its would-be denial is a
    /// `POLICY_DENIED` shadow finding and its `@mask` fields are not applied.
    #[serde(default, skip_serializing_if = "Mode::is_enforce")]
    pub mode: Mode,
}
