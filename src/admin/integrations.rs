//! Partner integrations through the admin API, from draft to active (INT-6.*, INT-4.5-2, ONB-*).
//!
//! An integration is the ENFORCED `integration` document ([`Integration`]); every change goes
//! through [`AdminHttp::commit`] (audited first, all-or-nothing, `If-Match` → 412).
//!
//! - `POST /v1/integrations` creates a `draft` (ONB-1, ONB-2); `PATCH` edits it while draft.
//! - `POST /v1/integrations/{id}/{action}`: the lifecycle (INT-6.1-1, INT-6.2-*): `submit`
//!   (draft → requested), `review` (vertical owner of every vertical → reviewed), `legal-review`
//!   (recorded; required before approval), `approve` (a `legal_document_id` is required, ONB-3,
//!   ONB-AUD-3; cross-tenant needs the umbrella authority, INT-4.5-2; the approver is not the
//!   creator), `activate`, `restrict`, `suspend`, `deprecate`, `archive` (immutable afterwards).
//!   A transition not allowed from the current state is 409 `INVALID_TRANSITION`.
//! - `POST /v1/integrations/{id}/provision` creates the Keycloak client through the
//!   [`Provisioner`] and shows the secret once (ONB-4, `credential_issued`, ONB-AUD-1); only its
//!   SHA-256 and creation time are stored, in a `credential` document (age tracking, ONB-AUD-2).
//! - Credentials: rotate the client secret, list credentials with their age, issue and revoke
//!   the API key (second factor only, INT-4.2-5).
//! - Webhook subscriptions and schema mappings per integration (ONB-5).
//! - Handshake (ONB-6, ONB-7): an approved, provisioned integration may call handshake routes
//!   only (pipeline stage 2/3); [`Activity`] marks it `active` after its first allowed handshake
//!   (a document write by actor `handshake`, audited) and keeps "last successful sync"
//!   (ONB-AUD-4), coalesced in memory and written at most once per second per integration.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ipnet::IpNet;
use serde::Deserialize;
use serde_json::{Value, json};

use super::http::{AdminHttp, Caller, ChangeRecord, Target, check_reason};
use super::keycloak::{ClientSpec, ProvisionError, Secret, realm_of_issuer};
use crate::api::{ApiError, ApiResult, opt_time, parse, precondition, rfc3339, with_etag};
use crate::audit::AuditLog;
use crate::audit::record::{AuditEvent, RecordKind};
use crate::pipeline::{ActivityObserver, Engine};
use crate::policy::{
    Contact, FieldPolicy, Integration, IntegrationState, Onboarding, Quota, RateLimit,
};
use crate::store::{DocChange, DocKind, Expect, Source, Store, StoredDoc};

/// Days after which a secret or key is due for rotation (ONB-AUD-2).
pub const ROTATION_DAYS: i64 = 90;

/// The integrations routes.
pub fn routes() -> Router<AdminHttp> {
    Router::new()
        .route("/v1/integrations", post(create).get(list))
        .route("/v1/integrations/{id}", get(get_one).patch(patch))
        .route("/v1/integrations/{id}/history", get(history))
        .route("/v1/integrations/{id}/health", get(health))
        .route("/v1/integrations/{id}/provision", post(provision))
        .route("/v1/integrations/{id}/credentials", get(credentials))
        .route("/v1/integrations/{id}/credentials/rotate", post(rotate))
        .route(
            "/v1/integrations/{id}/api-key",
            post(issue_api_key).delete(revoke_api_key),
        )
        .route(
            "/v1/integrations/{id}/webhooks",
            post(sub_create::<Webhook>).get(sub_list::<Webhook>),
        )
        .route(
            "/v1/integrations/{id}/webhooks/{sub}",
            get(sub_get::<Webhook>)
                .put(sub_put::<Webhook>)
                .delete(sub_delete::<Webhook>),
        )
        .route(
            "/v1/integrations/{id}/schema-mappings",
            post(sub_create::<Mapping>).get(sub_list::<Mapping>),
        )
        .route(
            "/v1/integrations/{id}/schema-mappings/{sub}",
            get(sub_get::<Mapping>)
                .put(sub_put::<Mapping>)
                .delete(sub_delete::<Mapping>),
        )
        .route("/v1/integrations/{id}/{action}", post(transition))
}

// ---------------------------------------------------------------------------------------------
// Loading and views

/// A stored integration with its version.
struct Current {
    integ: Integration,
    version: i64,
    doc: StoredDoc,
}

impl Current {
    fn target(&self) -> Target<'_> {
        Target::verticals(&self.integ.tenant, &self.integ.verticals)
    }
}

/// The integration `id` as `caller` may see it: 404 when absent or of another tenant (non-root).
async fn load(s: &AdminHttp, caller: &Caller, id: &str) -> Result<Current, ApiError> {
    let doc = s
        .store
        .document(DocKind::Integration, id)
        .await
        .map_err(|e| ApiError::unavailable("policy store", &e))?
        .ok_or_else(|| ApiError::not_found(format!("no integration `{id}`")))?;
    if doc.tenant.as_deref() != Some(caller.tenant()) && !caller.principal.root {
        return Err(ApiError::not_found(format!("no integration `{id}`")));
    }
    let integ: Integration = serde_json::from_str(&doc.doc)
        .map_err(|e| ApiError::unavailable("policy store (unreadable integration)", &e))?;
    Ok(Current {
        integ,
        version: doc.version,
        doc,
    })
}

/// The JSON view of an integration (never a secret; the API key only as its digest's presence).
fn view(i: &Integration, version: i64, doc: Option<&StoredDoc>) -> Value {
    let mut v = serde_json::to_value(i).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        let has_key = m.remove("api_key_sha256").is_some();
        m.insert("api_key".into(), json!(has_key));
        m.insert("version".into(), json!(version));
        m.insert("cross_tenant".into(), json!(!i.partner_tenants.is_empty()));
        if let Some(d) = doc {
            m.insert("created_at".into(), json!(d.created_at));
            m.insert("updated_at".into(), json!(d.updated_at));
        }
    }
    v
}

fn put_integration(i: &Integration, expect: Expect) -> DocChange {
    DocChange::put(
        DocKind::Integration,
        &i.id,
        Some(&i.tenant),
        serde_json::to_string(i).unwrap_or_default(),
    )
    .status(i.state.as_str())
    .expect(expect)
}

fn no_store(mut r: Response) -> Response {
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn archived(i: &Integration) -> Result<(), ApiError> {
    if i.state == IntegrationState::Archived {
        return Err(ApiError::conflict(
            "ARCHIVED",
            format!("integration `{}` is archived and accepts no change", i.id),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Validation

fn is_slug(s: &str, max: usize) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= max
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'_')
}

/// A least-privilege scope (ONB-2): 2–4 `:`-separated lower-case segments, no wildcard, e.g.
/// `beneficiary:read:anonymous`.
pub fn valid_scope(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    (2..=4).contains(&parts.len())
        && s.len() <= 128
        && parts.iter().all(|p| {
            p.as_bytes().first().is_some_and(u8::is_ascii_lowercase)
                && p.bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-')
        })
}

fn valid_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains('@')
        && s.len() <= 254
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

fn non_blank(field: &str, v: &str, max: usize) -> Result<(), ApiError> {
    if v.trim().is_empty() {
        return Err(ApiError::invalid(field, "must not be empty"));
    }
    if v.chars().count() > max {
        return Err(ApiError::invalid(
            field,
            format!("at most {max} characters"),
        ));
    }
    Ok(())
}

/// Checks what the admin API adds to the store's own validation (ONB-1, ONB-2, INT-4.5-2).
fn validate(s: &AdminHttp, i: &Integration) -> Result<(), ApiError> {
    non_blank("partner_name", &i.partner_name, 200)?;
    non_blank("legal_basis", &i.legal_basis, 2000)?;
    if i.technical_contacts.is_empty() || i.technical_contacts.len() > 20 {
        return Err(ApiError::invalid(
            "technical_contacts",
            "one to 20 technical contacts (ONB-1)",
        ));
    }
    for (k, c) in i.technical_contacts.iter().enumerate() {
        non_blank(&format!("technical_contacts[{k}].name"), &c.name, 200)?;
        non_blank(&format!("technical_contacts[{k}].role"), &c.role, 64)?;
        if !valid_email(&c.email) {
            return Err(ApiError::invalid(
                format!("technical_contacts[{k}].email"),
                "must be an e-mail address",
            ));
        }
    }
    if i.verticals.is_empty() || i.verticals.len() > 32 {
        return Err(ApiError::invalid("verticals", "one to 32 verticals"));
    }
    for (k, v) in i.verticals.iter().enumerate() {
        if !is_slug(v, 64) || i.verticals[..k].contains(v) {
            return Err(ApiError::invalid(
                format!("verticals[{k}]"),
                "a lower-case vertical id, once",
            ));
        }
    }
    if i.scopes.is_empty() || i.scopes.len() > 64 {
        return Err(ApiError::invalid("scopes", "one to 64 scopes (ONB-2)"));
    }
    for (k, sc) in i.scopes.iter().enumerate() {
        if !valid_scope(sc) || i.scopes[..k].contains(sc) {
            return Err(ApiError::invalid(
                format!("scopes[{k}]"),
                "a least-privilege scope such as `beneficiary:read:anonymous` (no wildcard), once",
            ));
        }
    }
    if let Some(h) = &i.mtls_cert_sha256
        && !(h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
    {
        return Err(ApiError::invalid(
            "mtls_cert_sha256",
            "64 lower-case hex digits: SHA-256 of the client certificate (DER)",
        ));
    }
    if let Some(rl) = i.rate_limit
        && (rl.per_second == 0 || rl.burst == 0)
    {
        return Err(ApiError::invalid("rate_limit", "per_second and burst ≥ 1"));
    }
    if i.quota.is_some_and(|q| q.per_day == 0) {
        return Err(ApiError::invalid("quota.per_day", "must be at least 1"));
    }
    if i.ip_allowlist.len() > 256 {
        return Err(ApiError::invalid("ip_allowlist", "at most 256 networks"));
    }
    let snap = s.engine.snapshot().load_full();
    let tenants = snap.as_ref().as_ref().map(|s| &s.tenants);
    let known = |t: &str| tenants.is_some_and(|m| m.contains_key(t));
    if !known(&i.tenant) {
        return Err(ApiError::invalid("tenant", "unknown tenant"));
    }
    for (k, t) in i.partner_tenants.iter().enumerate() {
        if *t == i.tenant || !known(t) || i.partner_tenants[..k].contains(t) {
            return Err(ApiError::invalid(
                format!("partner_tenants[{k}]"),
                "another known tenant, once (INT-4.5-2)",
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Create, read, edit

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    /// Optional id (else generated).
    #[serde(default)]
    id: Option<String>,
    /// Root only: another tenant.
    #[serde(default)]
    tenant: Option<String>,
    partner_name: String,
    legal_basis: String,
    technical_contacts: Vec<Contact>,
    verticals: Vec<String>,
    scopes: Vec<String>,
    #[serde(default)]
    routes: Option<Vec<String>>,
    #[serde(default)]
    field_policy: FieldPolicy,
    #[serde(default)]
    rate_limit: Option<RateLimit>,
    #[serde(default)]
    quota: Option<Quota>,
    #[serde(default)]
    ip_allowlist: Vec<IpNet>,
    #[serde(default)]
    mtls_cert_sha256: Option<String>,
    #[serde(default)]
    partner_tenants: Vec<String>,
}

/// `POST /v1/integrations` (`integrations.create`): a `draft` integration (ONB-1, ONB-2,
/// INT-6.2-1). 201 with the integration and `ETag`.
async fn create(
    State(s): State<AdminHttp>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let caller = s.caller(&headers).await?;
    caller.require_some("integrations.create")?;
    let b: CreateBody = parse(body)?;
    let tenant = caller.tenant_for(b.tenant.as_deref())?.to_owned();
    let via = caller.require(
        "integrations.create",
        &Target::verticals(&tenant, &b.verticals),
    )?;
    let id = match b.id {
        Some(id) => {
            if !is_slug(&id, 64) || id.len() < 3 {
                return Err(ApiError::invalid(
                    "id",
                    "3–64 characters: lower-case letters, digits, `-`, `_`",
                ));
            }
            id
        }
        None => format!(
            "int-{tenant}-{}",
            &uuid::Uuid::now_v7().simple().to_string()[20..]
        ),
    };
    let integ = Integration {
        id,
        tenant,
        partner_name: b.partner_name,
        legal_basis: b.legal_basis,
        state: IntegrationState::Draft,
        verticals: b.verticals,
        scopes: b.scopes,
        routes: b.routes,
        client_id: None,
        field_policy: b.field_policy,
        rate_limit: b.rate_limit,
        quota: b.quota,
        api_key_sha256: None,
        mtls_cert_sha256: b.mtls_cert_sha256,
        ip_allowlist: b.ip_allowlist,
        technical_contacts: b.technical_contacts,
        partner_tenants: b.partner_tenants,
        onboarding: Some(Onboarding {
            created_by: caller.principal.subject.clone(),
            ..Onboarding::default()
        }),
    };
    validate(&s, &integ)?;
    let w = s
        .commit(
            &caller,
            &via,
            ChangeRecord::admin(
                "integration.create",
                &integ.tenant,
                &integ.id,
                json!({"state": "draft", "cross_tenant": !integ.partner_tenants.is_empty()}),
            ),
            vec![put_integration(&integ, Expect::Absent)],
        )
        .await?;
    let v = w.versions[0];
    let doc = s
        .store
        .document(DocKind::Integration, &integ.id)
        .await
        .ok()
        .flatten();
    Ok(with_etag(
        StatusCode::CREATED,
        v,
        view(&integ, v, doc.as_ref()),
    ))
}

#[derive(Deserialize)]
struct ListQuery {
    state: Option<String>,
    tenant: Option<String>,
}

/// `GET /v1/integrations?state=&tenant=` (`integrations.read`): the integrations the caller may
/// read (a vertical-scoped reader sees only those within its vertical).
async fn list(
    State(s): State<AdminHttp>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> ApiResult {
    let caller = s.caller(&headers).await?;
    let tenant = caller.tenant_for(q.tenant.as_deref())?.to_owned();
    if !caller.principal.root
        && !caller
            .grants
            .iter()
            .any(|g| g.permission == "integrations.read")
    {
        return Err(ApiError::forbidden(
            "this needs the permission `integrations.read`",
        ));
    }
    if let Some(st) = &q.state
        && serde_json::from_value::<IntegrationState>(json!(st)).is_err()
    {
        return Err(ApiError::invalid("state", "not an integration state"));
    }
    let docs = s
        .store
        .documents(DocKind::Integration, Some(&tenant))
        .await
        .map_err(|e| ApiError::unavailable("policy store", &e))?;
    let mut out = Vec::new();
    for d in &docs {
        let Ok(i) = serde_json::from_str::<Integration>(&d.doc) else {
            continue;
        };
        if q.state.as_deref().is_some_and(|st| st != i.state.as_str()) {
            continue;
        }
        if caller.may(
            "integrations.read",
            &Target::verticals(&i.tenant, &i.verticals),
        ) {
            out.push(view(&i, d.version, Some(d)));
        }
    }
    Ok(axum::Json(json!({"integrations": out})).into_response())
}

/// `GET /v1/integrations/{id}` (`integrations.read`).
async fn get_one(
    State(s): State<AdminHttp>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let caller = s.caller(&headers).await?;
    caller.require_some("integrations.read")?;
    let cur = load(&s, &caller, &id).await?;
    caller.require("integrations.read", &cur.target())?;
    Ok(with_etag(
        StatusCode::OK,
        cur.version,
        view(&cur.integ, cur.version, Some(&cur.doc)),
    ))
}

/// `GET /v1/integrations/{id}/history` (`integrations.read`): every stored version, oldest first.
async fn history(
    State(s): State<AdminHttp>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let caller = s.caller(&headers).await?;
    caller.require_some("integrations.read")?;
    let cur = load(&s, &caller, &id).await?;
    caller.require("integrations.read", &cur.target())?;
    let versions = s
        .store
        .document_versions(DocKind::Integration, &id)
        .await
        .map_err(|e| ApiError::unavailable("policy store", &e))?;
    let versions: Vec<Value> = versions
        .iter()
        .map(|v| {
            let doc = v
                .doc
                .as_deref()
                .and_then(|d| serde_json::from_str::<Integration>(d).ok())
                .map(|i| view(&i, v.version, None));
            json!({"version": v.version, "state": v.status, "source": v.source,
                   "actor": v.actor, "time": v.time, "integration": doc})
        })
        .collect();
    Ok(with_etag(
        StatusCode::OK,
        cur.version,
        json!({"integration_id": id, "versions": versions}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchBody {
    partner_name: Option<String>,
    legal_basis: Option<String>,
    technical_contacts: Option<Vec<Contact>>,
    verticals: Option<Vec<String>>,
    scopes: Option<Vec<String>>,
    routes: Option<Vec<String>>,
    field_policy: Option<FieldPolicy>,
    rate_limit: Option<RateLimit>,
    quota: Option<Quota>,
    ip_allowlist: Option<Vec<IpNet>>,
    mtls_cert_sha256: Option<String>,
    partner_tenants: Option<Vec<String>>,
}

/// `PATCH /v1/integrations/{id}` (`integrations.create`, `If-Match`): edits a draft; any
/// other state is 409 `INVALID_TRANSITION` (archived: 409 `ARCHIVED`).
async fn patch(
    State(s): State<AdminHttp>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let caller = s.caller(&headers).await?;
    caller.require_some("integrations.create")?;
    let cur = load(&s, &caller, &id).await?;
    let via = caller.require("integrations.create", &cur.target())?;
    let b: PatchBody = parse(body)?;
    precondition(&headers, cur.version, &format!("integration {id}"))?;
    archived(&cur.integ)?;
    if cur.integ.state != IntegrationState::Draft {
        return Err(ApiError::conflict(
            "INVALID_TRANSITION",
            format!(
                "integration `{id}` is {}; only drafts are edited",
                cur.integ.state.as_str()
            ),
        ));
    }
    let mut i = cur.integ.clone();
    macro_rules! set {
        ($($f:ident),*) => { $( if let Some(v) = b.$f { i.$f = v; } )* };
    }
    set!(
        partner_name,
        legal_basis,
        technical_contacts,
        verticals,
        scopes,
        field_policy,
        ip_allowlist,
        partner_tenants
    );
    if let Some(r) = b.routes {
        i.routes = Some(r);
    }
    if let Some(r) = b.rate_limit {
        i.rate_limit = Some(r);
    }
    if let Some(q) = b.quota {
        i.quota = Some(q);
    }
    if let Some(m) = b.mtls_cert_sha256 {
        i.mtls_cert_sha256 = Some(m);
    }
    validate(&s, &i)?;
    // The caller must also hold the permission for the new verticals.
    caller.require(
        "integrations.create",
        &Target::verticals(&i.tenant, &i.verticals),
    )?;
    let w = s
        .commit(
            &caller,
            &via,
            ChangeRecord::admin("integration.update", &i.tenant, &i.id, json!({})),
            vec![put_integration(&i, Expect::Version(cur.version))],
        )
        .await?;
    Ok(with_etag(
        StatusCode::OK,
        w.versions[0],
        view(&i, w.versions[0], None),
    ))
}

// ---------------------------------------------------------------------------------------------
// Lifecycle

/// One lifecycle transition (INT-6.1-1, INT-6.2-*).
struct Rule {
    action: &'static str,
    permission: &'static str,
    from: &'static [IntegrationState],
    to: IntegrationState,
    /// A reason (ADM-7) is required.
    reason: bool,
}

use IntegrationState as S;

/// The allowed-from table. `provision` is its own route (it talks to Keycloak).
const RULES: &[Rule] = &[
    Rule {
        action: "submit",
        permission: "integrations.create",
        from: &[S::Draft],
        to: S::Requested,
        reason: false,
    },
    Rule {
        action: "review",
        permission: "integrations.review",
        from: &[S::Requested],
        to: S::Reviewed,
        reason: false,
    },
    Rule {
        action: "legal-review",
        permission: "integrations.legal_review",
        from: &[S::Reviewed],
        to: S::Reviewed,
        reason: false,
    },
    Rule {
        action: "approve",
        permission: "integrations.approve",
        from: &[S::Reviewed],
        to: S::Approved,
        reason: false,
    },
    Rule {
        action: "activate",
        permission: "integrations.operate",
        from: &[S::Approved, S::Restricted, S::Suspended],
        to: S::Active,
        reason: false,
    },
    Rule {
        action: "restrict",
        permission: "integrations.operate",
        from: &[S::Active],
        to: S::Restricted,
        reason: true,
    },
    Rule {
        action: "suspend",
        permission: "integrations.operate",
        from: &[S::Approved, S::Active, S::Restricted, S::Deprecated],
        to: S::Suspended,
        reason: true,
    },
    Rule {
        action: "deprecate",
        permission: "integrations.operate",
        from: &[S::Active, S::Restricted, S::Suspended],
        to: S::Deprecated,
        reason: true,
    },
    Rule {
        action: "archive",
        permission: "integrations.operate",
        from: &[
            S::Draft,
            S::Requested,
            S::Reviewed,
            S::Approved,
            S::Suspended,
            S::Deprecated,
        ],
        to: S::Archived,
        reason: true,
    },
];

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TransitionBody {
    #[serde(default)]
    reason_code: Option<String>,
    #[serde(default)]
    reason_text: Option<String>,
    /// Review and legal-review notes.
    #[serde(default)]
    notes: Option<String>,
    /// `approve` only (ONB-AUD-3).
    #[serde(default)]
    legal_document_id: Option<String>,
}

/// `POST /v1/integrations/{id}/{action}` with `If-Match`: one lifecycle transition (see the
/// module docs). Errors: 404 unknown action, 403 (incl. `SEPARATION_OF_DUTIES`), 400 (reason,
/// document id), 412, 409
/// `INVALID_TRANSITION` | `ARCHIVED` | `LEGAL_REVIEW_REQUIRED` |
/// `NOT_PROVISIONED`.
async fn transition(
    State(s): State<AdminHttp>,
    Path((id, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let caller = s.caller(&headers).await?;
    let cur = load(&s, &caller, &id).await?;
    let rule = RULES
        .iter()
        .find(|r| r.action == action)
        .ok_or_else(|| ApiError::not_found(format!("no integration action `{action}`")))?;
    let mut via = caller.require(rule.permission, &cur.target())?;
    if rule.to == S::Approved && !cur.integ.partner_tenants.is_empty() {
        // Cross-tenant: the umbrella authority approves (INT-4.5-2).
        via = caller.require("integrations.approve_cross_tenant", &cur.target())?;
    }
    let b: TransitionBody = parse(body)?;
    if rule.reason {
        let code = b
            .reason_code
            .as_deref()
            .ok_or_else(|| ApiError::invalid("reason_code", "is required (ADM-7)"))?;
        check_reason("reason_code", code, "reason_text", b.reason_text.as_deref())?;
    } else if let Some(code) = &b.reason_code {
        check_reason("reason_code", code, "reason_text", b.reason_text.as_deref())?;
    }
    if let Some(n) = &b.notes
        && n.chars().count() > 2000
    {
        return Err(ApiError::invalid("notes", "at most 2000 characters"));
    }
    if rule.to == S::Approved {
        match b.legal_document_id.as_deref().map(str::trim) {
            Some(d) if !d.is_empty() && d.len() <= 200 => {}
            _ => {
                return Err(ApiError::invalid(
                    "legal_document_id",
                    "approval names the legal or policy document it rests on (ONB-3, ONB-AUD-3)",
                ));
            }
        }
    } else if b.legal_document_id.is_some() {
        return Err(ApiError::invalid(
            "legal_document_id",
            "only an approval carries a legal document id",
        ));
    }
    precondition(&headers, cur.version, &format!("integration {id}"))?;
    archived(&cur.integ)?;
    let from = cur.integ.state;
    if !rule.from.contains(&from) {
        return Err(ApiError::conflict(
            "INVALID_TRANSITION",
            format!(
                "`{action}` is not allowed from {} (allowed from {})",
                from.as_str(),
                rule.from
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    let me = caller.principal.subject.clone();
    let now = rfc3339(crate::api::now_ms());
    let mut i = cur.integ.clone();
    let provisioned = i.client_id.is_some();
    let ob = i.onboarding.get_or_insert_with(Onboarding::default);
    match action.as_str() {
        "submit" => ob.submitted_by = Some(me.clone()),
        "review" => ob.reviewed_by = Some(me.clone()),
        "legal-review" => {
            ob.legal_reviewed_by = Some(me.clone());
            ob.legal_review_notes = b.notes.clone();
        }
        "approve" => {
            if ob.legal_reviewed_by.is_none() {
                return Err(ApiError::conflict(
                    "LEGAL_REVIEW_REQUIRED",
                    "the legal and consent review comes before approval (INT-6.1-1)",
                ));
            }
            if ob.created_by == me {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "SEPARATION_OF_DUTIES",
                    "the creator of an integration does not approve it",
                ));
            }
            ob.approved_by = Some(me.clone());
            ob.legal_document_id = b.legal_document_id.clone().map(|d| d.trim().to_owned());
            ob.approved_at = now.as_str().map(str::to_owned);
        }
        "activate" => {
            if from == S::Approved && !provisioned {
                return Err(ApiError::conflict(
                    "NOT_PROVISIONED",
                    "provision the integration's client before activating it (ONB-4)",
                ));
            }
            ob.activated_by = Some(me.clone());
        }
        _ => {}
    }
    i.state = rule.to;
    let detail = json!({
        "from": from.as_str(),
        "to": rule.to.as_str(),
        "reason_code": b.reason_code,
        "reason_text": b.reason_text,
        "legal_document_id": b.legal_document_id,
        "notes": b.notes,
    });
    let w = s
        .commit(
            &caller,
            &via,
            ChangeRecord::admin(
                format!("integration.{}", action.replace('-', "_")),
                &i.tenant,
                &i.id,
                detail,
            ),
            vec![put_integration(&i, Expect::Version(cur.version))],
        )
        .await?;
    Ok(with_etag(
        StatusCode::OK,
        w.versions[0],
        view(&i, w.versions[0], None),
    ))
}

// ---------------------------------------------------------------------------------------------
// Provisioning and credentials

fn provision_error(e: ProvisionError) -> ApiError {
    match e {
        ProvisionError::Exists(c) => ApiError::conflict(
            "CLIENT_EXISTS",
            format!("the identity provider already has a client `{c}`"),
        ),
        ProvisionError::NotFound(c) => ApiError::conflict(
            "CLIENT_MISSING",
            format!("the identity provider has no client `{c}`"),
        ),
        ProvisionError::Unavailable(m) => {
            tracing::warn!(error = %m, "provisioner unavailable");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "PROVISIONER_UNAVAILABLE",
                "the identity provider could not be reached; nothing was changed",
            )
        }
    }
}

fn provisioner(s: &AdminHttp) -> Result<&Arc<dyn super::keycloak::Provisioner>, ApiError> {
    s.provisioner.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "PROVISIONER_UNAVAILABLE",
            "no identity provider admin API is configured (`admin.keycloak`)",
        )
    })
}

/// The realm and audience of `tenant` (from its issuer, `…/realms/<realm>`).
fn realm_and_audience(s: &AdminHttp, tenant: &str) -> Result<(String, String), ApiError> {
    let snap = s.engine.snapshot().load_full();
    let t = snap
        .as_ref()
        .as_ref()
        .and_then(|sn| sn.tenants.get(tenant).cloned())
        .ok_or_else(|| ApiError::invalid("tenant", "unknown tenant"))?;
    let realm = realm_of_issuer(&t.tenant.issuer).ok_or_else(|| {
        ApiError::conflict(
            "REALM_UNKNOWN",
            "the tenant's issuer is not a Keycloak realm URL (`…/realms/<realm>`)",
        )
    })?;
    let aud = t
        .tenant
        .audience
        .clone()
        .unwrap_or_else(|| s.audience.clone());
    Ok((realm.to_owned(), aud))
}

fn credential_doc(
    i: &Integration,
    kind: &str,
    secret: &Secret,
    created_ms: i64,
    status: &str,
) -> DocChange {
    let id = format!("{}.{kind}", i.id);
    let doc = json!({
        "id": id,
        "integration_id": i.id,
        "tenant": i.tenant,
        "type": kind,
        "client_id": if kind == "client_secret" { json!(i.client_id) } else { Value::Null },
        "sha256": secret.sha256_hex(),
        "created_ms": created_ms,
        "status": status,
    });
    DocChange::put(DocKind::Credential, &id, Some(&i.tenant), doc.to_string()).status(status)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CredentialBody {
    #[serde(default)]
    reason_code: Option<String>,
    #[serde(default)]
    reason_text: Option<String>,
}

impl CredentialBody {
    fn check(&self) -> Result<(), ApiError> {
        if let Some(c) = &self.reason_code {
            check_reason("reason_code", c, "reason_text", self.reason_text.as_deref())?;
        }
        Ok(())
    }
}

/// `POST /v1/integrations/{id}/provision` (`integrations.provision`, `If-Match`): creates the
/// Keycloak client of an approved integration (ONB-4) and answers 201 with `client_id` and
/// `client_secret`, shown this once (`Cache-Control: no-store`); the integration is bound to the
/// client. Audit kind `credential_issued` (ONB-AUD-1). When the store write fails after the
/// client was created, the client is deleted again.
///
/// Errors: 409 `INVALID_TRANSITION` (not approved), `ALREADY_PROVISIONED`, `CLIENT_EXISTS`,
/// `REALM_UNKNOWN`; 503 `PROVISIONER_UNAVAILABLE` (not configured or unreachable).
async fn provision(
    State(s): State<AdminHttp>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let caller = s.caller(&headers).await?;
    caller.require_some("integrations.provision")?;
    let cur = load(&s, &caller, &id).await?;
    let via = caller.require("integrations.provision", &cur.target())?;
    let b: CredentialBody = parse(body)?;
    b.check()?;
    precondition(&headers, cur.version, &format!("integration {id}"))?;
    archived(&cur.integ)?;
    if cur.integ.state != S::Approved {
        return Err(ApiError::conflict(
            "INVALID_TRANSITION",
            format!(
                "only approved integrations are provisioned; `{id}` is {}",
                cur.integ.state.as_str()
            ),
        ));
    }
    if cur.integ.client_id.is_some() {
        return Err(ApiError::conflict(
            "ALREADY_PROVISIONED",
            "the integration has its client; rotate its secret instead",
        ));
    }
    let p = provisioner(&s)?.clone();
    let (realm, audience) = realm_and_audience(&s, &cur.integ.tenant)?;
    let spec = ClientSpec {
        realm: realm.clone(),
        client_id: format!("scp-{}", cur.integ.id),
        tenant_id: cur.integ.tenant.clone(),
        integration_id: cur.integ.id.clone(),
        verticals: cur.integ.verticals.clone(),
        audience,
        name: cur.integ.partner_name.clone(),
    };
    let created = p.create_client(&spec).await.map_err(provision_error)?;
    let now = crate::api::now_ms();
    let mut i = cur.integ.clone();
    i.client_id = Some(spec.client_id.clone());
    i.onboarding
        .get_or_insert_with(Onboarding::default)
        .provisioned_at = rfc3339(now).as_str().map(str::to_owned);
    let record = ChangeRecord {
        kind: RecordKind::CredentialIssued,
        action: "integration.provision".into(),
        tenant: i.tenant.clone(),
        subject: i.id.clone(),
        detail: json!({"client_id": spec.client_id, "realm": realm, "credential": "client_secret",
                       "reason_code": b.reason_code, "reason_text": b.reason_text}),
    };
    let changes = vec![
        put_integration(&i, Expect::Version(cur.version)),
        credential_doc(&i, "client_secret", &created.secret, now, "active"),
    ];
    let w = match s.commit(&caller, &via, record, changes).await {
        Ok(w) => w,
        Err(e) => {
            if let Err(d) = p.delete_client(&realm, &spec.client_id).await {
                tracing::error!(error = %d, client_id = %spec.client_id, "orphaned identity provider client could not be deleted");
            }
            return Err(e);
        }
    };
    let mut v = view(&i, w.versions[0], None);
    v["credentials"] = json!({
        "client_id": spec.client_id,
        "client_secret": created.secret.expose(),
        "shown_once": true,
    });
    Ok(no_store(with_etag(StatusCode::CREATED, w.versions[0], v)))
}

/// `POST /v1/integrations/{id}/credentials/rotate` (`integrations.credentials`): regenerates the
/// client secret at the identity provider (the old one stops working) and shows the new one once
/// (ONB-AUD-2, audit `credential_rotated`). Its age restarts.
///
/// Errors: 409 `NOT_PROVISIONED` | `ARCHIVED` | `CLIENT_MISSING`; 503 `PROVISIONER_UNAVAILABLE`;
/// 503 `AUDIT_UNAVAILABLE` after a rotation that could not be recorded (rotate again).
async fn rotate(
    State(s): State<AdminHttp>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let caller = s.caller(&headers).await?;
    caller.require_some("integrations.credentials")?;
    let cur = load(&s, &caller, &id).await?;
    let via = caller.require("integrations.credentials", &cur.target())?;
    let b: CredentialBody = parse(body)?;
    b.check()?;
    archived(&cur.integ)?;
    let Some(client_id) = cur.integ.client_id.clone() else {
        return Err(ApiError::conflict(
            "NOT_PROVISIONED",
            "the integration has no client yet",
        ));
    };
    let p = provisioner(&s)?.clone();
    let (realm, _) = realm_and_audience(&s, &cur.integ.tenant)?;
    let secret = p
        .rotate_secret(&realm, &client_id)
        .await
        .map_err(provision_error)?;
    let now = crate::api::now_ms();
    let record = ChangeRecord {
        kind: RecordKind::CredentialRotated,
        action: "integration.rotate_secret".into(),
        tenant: cur.integ.tenant.clone(),
        subject: cur.integ.id.clone(),
        detail: json!({"client_id": client_id, "credential": "client_secret",
                       "reason_code": b.reason_code, "reason_text": b.reason_text}),
    };
    s.commit(
        &caller,
        &via,
        record,
        vec![credential_doc(
            &cur.integ,
            "client_secret",
            &secret,
            now,
            "active",
        )],
    )
    .await?;
    Ok(no_store(
        (
            StatusCode::OK,
            axum::Json(json!({
                "integration_id": id,
                "client_id": client_id,
                "client_secret": secret.expose(),
                "created_at": rfc3339(now),
                "shown_once": true,
            })),
        )
            .into_response(),
    ))
}

/// `GET /v1/integrations/{id}/credentials` (`integrations.read`): the integration's credentials
/// with `created_at`, `age_days` and `rotation_due` (≥ 90 days, ONB-AUD-2); never a secret.
async fn credentials(
    State(s): State<AdminHttp>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let caller = s.caller(&headers).await?;
    caller.require_some("integrations.read")?;
    let cur = load(&s, &caller, &id).await?;
    caller.require("integrations.read", &cur.target())?;
    let docs = s
        .store
        .documents(DocKind::Credential, Some(&cur.integ.tenant))
        .await
        .map_err(|e| ApiError::unavailable("policy store", &e))?;
    let now = crate::api::now_ms();
    let out: Vec<Value> = docs
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(&d.doc).ok())
        .filter(|v| v["integration_id"] == json!(id))
        .map(|v| {
            let created = v["created_ms"].as_i64().unwrap_or(now);
            let age_days = (now - created).max(0) / 86_400_000;
            let active = v["status"] == json!("active");
            json!({
                "id": v["id"], "type": v["type"], "client_id": v["client_id"], "status": v["status"],
                "created_at": rfc3339(created), "age_days": age_days,
                "rotation_due": active && age_days >= ROTATION_DAYS,
            })
        })
        .collect();
    Ok(axum::Json(json!({"integration_id": id, "credentials": out})).into_response())
}

/// `POST /v1/integrations/{id}/api-key` (`integrations.credentials`, `If-Match`): a new API key
/// (32 random bytes, base64url), shown once; the integration keeps its SHA-256 and every request
/// must then carry it besides the token (second factor only, INT-4.2-5). Replaces a previous key.
/// Audit `credential_issued`.
async fn issue_api_key(
    State(s): State<AdminHttp>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    use base64::Engine as _;
    use rand_core::RngCore;
    let caller = s.caller(&headers).await?;
    caller.require_some("integrations.credentials")?;
    let cur = load(&s, &caller, &id).await?;
    let via = caller.require("integrations.credentials", &cur.target())?;
    let b: CredentialBody = parse(body)?;
    b.check()?;
    precondition(&headers, cur.version, &format!("integration {id}"))?;
    archived(&cur.integ)?;
    let mut raw = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut raw);
    let key = Secret::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw));
    let now = crate::api::now_ms();
    let mut i = cur.integ.clone();
    i.api_key_sha256 = Some(key.sha256_hex());
    let record = ChangeRecord {
        kind: RecordKind::CredentialIssued,
        action: "integration.issue_api_key".into(),
        tenant: i.tenant.clone(),
        subject: i.id.clone(),
        detail: json!({"credential": "api_key", "replaced": cur.integ.api_key_sha256.is_some(),
                       "reason_code": b.reason_code, "reason_text": b.reason_text}),
    };
    let w = s
        .commit(
            &caller,
            &via,
            record,
            vec![
                put_integration(&i, Expect::Version(cur.version)),
                credential_doc(&i, "api_key", &key, now, "active"),
            ],
        )
        .await?;
    Ok(no_store(with_etag(
        StatusCode::CREATED,
        w.versions[0],
        json!({"integration_id": id, "api_key": key.expose(), "created_at": rfc3339(now),
               "shown_once": true, "version": w.versions[0]}),
    )))
}

/// `DELETE /v1/integrations/{id}/api-key` (`integrations.credentials`, `If-Match`): revokes the
/// API key (audit `credential_revoked`). 404 when the integration has none.
async fn revoke_api_key(
    State(s): State<AdminHttp>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let caller = s.caller(&headers).await?;
    caller.require_some("integrations.credentials")?;
    let cur = load(&s, &caller, &id).await?;
    let via = caller.require("integrations.credentials", &cur.target())?;
    let b: CredentialBody = parse(body)?;
    b.check()?;
    precondition(&headers, cur.version, &format!("integration {id}"))?;
    archived(&cur.integ)?;
    if cur.integ.api_key_sha256.is_none() {
        return Err(ApiError::not_found("the integration has no API key"));
    }
    let mut i = cur.integ.clone();
    i.api_key_sha256 = None;
    let cred_id = format!("{id}.api_key");
    let mut changes = vec![put_integration(&i, Expect::Version(cur.version))];
    if let Some(d) = s
        .store
        .document(DocKind::Credential, &cred_id)
        .await
        .map_err(|e| ApiError::unavailable("policy store", &e))?
        && let Ok(mut v) = serde_json::from_str::<Value>(&d.doc)
    {
        v["status"] = json!("revoked");
        v["revoked_ms"] = json!(crate::api::now_ms());
        changes.push(
            DocChange::put(
                DocKind::Credential,
                &cred_id,
                Some(&i.tenant),
                v.to_string(),
            )
            .status("revoked")
            .expect(Expect::Version(d.version)),
        );
    }
    let record = ChangeRecord {
        kind: RecordKind::CredentialRevoked,
        action: "integration.revoke_api_key".into(),
        tenant: i.tenant.clone(),
        subject: i.id.clone(),
        detail: json!({"credential": "api_key", "reason_code": b.reason_code, "reason_text": b.reason_text}),
    };
    let w = s.commit(&caller, &via, record, changes).await?;
    Ok(with_etag(
        StatusCode::OK,
        w.versions[0],
        view(&i, w.versions[0], None),
    ))
}

// ---------------------------------------------------------------------------------------------
// Health

/// `GET /v1/integrations/{id}/health` (`integrations.read`): state, health (`unknown` until the
/// first handshake, then `healthy`), `last_successful_sync`, `last_handshake` (ONB-7, ONB-AUD-4).
async fn health(
    State(s): State<AdminHttp>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let caller = s.caller(&headers).await?;
    caller.require_some("integrations.read")?;
    let cur = load(&s, &caller, &id).await?;
    caller.require("integrations.read", &cur.target())?;
    let a = s
        .store
        .integration_activity(&id)
        .await
        .map_err(|e| ApiError::unavailable("policy store", &e))?;
    let (health, last_sync, last_hs, failures) = match &a {
        Some(a) => (
            a.health.as_str(),
            a.last_success_ms,
            a.last_handshake_ms,
            a.webhook_failures,
        ),
        None => ("unknown", None, None, 0),
    };
    Ok(axum::Json(json!({
        "integration_id": id,
        "state": cur.integ.state.as_str(),
        "health": health,
        "last_successful_sync": opt_time(last_sync),
        "last_handshake": opt_time(last_hs),
        "webhook_failures": failures,
    }))
    .into_response())
}

// ---------------------------------------------------------------------------------------------
// Webhooks and schema mappings (ONB-5)

/// A resource kept per integration: a webhook subscription or a schema mapping.
trait Sub: Send + Sync + 'static {
    const KIND: DocKind;
    /// Permission to change it.
    const PERMISSION: &'static str;
    /// Id prefix and the name in messages and audit actions.
    const PREFIX: &'static str;
    const NAME: &'static str;
    /// Validates a body into the stored fields (without ids).
    fn build(s: &AdminHttp, body: Result<Bytes, BytesRejection>) -> Result<Value, ApiError>;
}

struct Webhook;
struct Mapping;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookBody {
    url: String,
    events: Vec<String>,
    #[serde(default)]
    description: Option<String>,
}

impl Sub for Webhook {
    const KIND: DocKind = DocKind::Webhook;
    const PERMISSION: &'static str = "integrations.webhooks";
    const PREFIX: &'static str = "wh";
    const NAME: &'static str = "webhook";
    fn build(s: &AdminHttp, body: Result<Bytes, BytesRejection>) -> Result<Value, ApiError> {
        let b: WebhookBody = parse(body)?;
        let u = reqwest::Url::parse(&b.url)
            .map_err(|_| ApiError::invalid("url", "must be an absolute URL"))?;
        let loopback = match u.host_str() {
            Some("localhost") => true,
            Some(h) => h
                .trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback()),
            None => false,
        };
        let ok_scheme = u.scheme() == "https"
            || (u.scheme() == "http" && loopback && s.auth.config().webhook_allow_http_loopback);
        if !ok_scheme || u.host_str().is_none() {
            return Err(ApiError::invalid(
                "url",
                "webhooks are delivered over https only",
            ));
        }
        if !u.username().is_empty() || u.password().is_some() {
            return Err(ApiError::invalid(
                "url",
                "must not carry credentials (user info)",
            ));
        }
        if b.url.len() > 2048 {
            return Err(ApiError::invalid("url", "at most 2048 characters"));
        }
        if b.events.is_empty() || b.events.len() > 32 {
            return Err(ApiError::invalid("events", "one to 32 events"));
        }
        for (k, e) in b.events.iter().enumerate() {
            let ok =
                e.split('.').count() >= 2 && e.len() <= 64 && e.split('.').all(|p| is_slug(p, 64));
            if !ok || b.events[..k].contains(e) {
                return Err(ApiError::invalid(
                    format!("events[{k}]"),
                    "an event name such as `consent.revoked`, once",
                ));
            }
        }
        if let Some(d) = &b.description {
            non_blank("description", d, 500)?;
        }
        Ok(json!({"url": u.as_str(), "events": b.events, "description": b.description}))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MappingBody {
    name: String,
    /// `inbound` (partner → SCP) or `outbound`.
    direction: String,
    fields: Vec<FieldPair>,
}

#[derive(Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct FieldPair {
    source: String,
    target: String,
}

impl Sub for Mapping {
    const KIND: DocKind = DocKind::SchemaMapping;
    const PERMISSION: &'static str = "integrations.mappings";
    const PREFIX: &'static str = "sm";
    const NAME: &'static str = "schema_mapping";
    fn build(_: &AdminHttp, body: Result<Bytes, BytesRejection>) -> Result<Value, ApiError> {
        let b: MappingBody = parse(body)?;
        non_blank("name", &b.name, 200)?;
        if !matches!(b.direction.as_str(), "inbound" | "outbound") {
            return Err(ApiError::invalid("direction", "`inbound` or `outbound`"));
        }
        if b.fields.is_empty() || b.fields.len() > 500 {
            return Err(ApiError::invalid("fields", "one to 500 field pairs"));
        }
        for (k, f) in b.fields.iter().enumerate() {
            non_blank(&format!("fields[{k}].source"), &f.source, 256)?;
            non_blank(&format!("fields[{k}].target"), &f.target, 256)?;
            if b.fields[..k].iter().any(|g| g.target == f.target) {
                return Err(ApiError::invalid(
                    format!("fields[{k}].target"),
                    "each target field is mapped once",
                ));
            }
        }
        Ok(json!({"name": b.name, "direction": b.direction, "fields": b.fields}))
    }
}

fn sub_view(d: &StoredDoc) -> Value {
    let mut v: Value = serde_json::from_str(&d.doc).unwrap_or(Value::Null);
    v["version"] = json!(d.version);
    v["created_at"] = json!(d.created_at);
    v["updated_at"] = json!(d.updated_at);
    v
}

/// The sub-resource `sub` of integration `cur`, or 404.
async fn load_sub<T: Sub>(s: &AdminHttp, cur: &Current, sub: &str) -> Result<StoredDoc, ApiError> {
    let d = s
        .store
        .document(T::KIND, sub)
        .await
        .map_err(|e| ApiError::unavailable("policy store", &e))?
        .filter(|d| {
            serde_json::from_str::<Value>(&d.doc)
                .is_ok_and(|v| v["integration_id"] == json!(cur.integ.id))
        })
        .ok_or_else(|| ApiError::not_found(format!("no {} `{sub}`", T::NAME)))?;
    Ok(d)
}

/// `POST /v1/integrations/{id}/webhooks|schema-mappings`: creates one (201, `ETag`).
async fn sub_create<T: Sub>(
    State(s): State<AdminHttp>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let caller = s.caller(&headers).await?;
    let cur = load(&s, &caller, &id).await?;
    let via = caller.require(T::PERMISSION, &cur.target())?;
    let mut doc = T::build(&s, body)?;
    archived(&cur.integ)?;
    let sub = format!("{}-{}", T::PREFIX, uuid::Uuid::now_v7().simple());
    doc["id"] = json!(sub);
    doc["integration_id"] = json!(id);
    doc["tenant"] = json!(cur.integ.tenant);
    let w = s
        .commit(
            &caller,
            &via,
            ChangeRecord::admin(
                format!("{}.create", T::NAME),
                &cur.integ.tenant,
                &sub,
                json!({"integration_id": id}),
            ),
            vec![
                DocChange::put(T::KIND, &sub, Some(&cur.integ.tenant), doc.to_string())
                    .status("active")
                    .expect(Expect::Absent),
            ],
        )
        .await?;
    doc["version"] = json!(w.versions[0]);
    Ok(with_etag(StatusCode::CREATED, w.versions[0], doc))
}

/// `GET /v1/integrations/{id}/webhooks|schema-mappings` (`integrations.read`).
async fn sub_list<T: Sub>(
    State(s): State<AdminHttp>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let caller = s.caller(&headers).await?;
    let cur = load(&s, &caller, &id).await?;
    caller.require("integrations.read", &cur.target())?;
    let docs = s
        .store
        .documents(T::KIND, Some(&cur.integ.tenant))
        .await
        .map_err(|e| ApiError::unavailable("policy store", &e))?;
    let items: Vec<Value> = docs
        .iter()
        .map(sub_view)
        .filter(|v| v["integration_id"] == json!(id))
        .collect();
    Ok(axum::Json(json!({"integration_id": id, "items": items})).into_response())
}

/// `GET /v1/integrations/{id}/webhooks|schema-mappings/{sub}` (`integrations.read`).
async fn sub_get<T: Sub>(
    State(s): State<AdminHttp>,
    Path((id, sub)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult {
    let caller = s.caller(&headers).await?;
    let cur = load(&s, &caller, &id).await?;
    caller.require("integrations.read", &cur.target())?;
    let d = load_sub::<T>(&s, &cur, &sub).await?;
    Ok(with_etag(StatusCode::OK, d.version, sub_view(&d)))
}

/// `PUT /v1/integrations/{id}/webhooks|schema-mappings/{sub}` (`If-Match`): replaces it.
async fn sub_put<T: Sub>(
    State(s): State<AdminHttp>,
    Path((id, sub)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let caller = s.caller(&headers).await?;
    let cur = load(&s, &caller, &id).await?;
    let via = caller.require(T::PERMISSION, &cur.target())?;
    let d = load_sub::<T>(&s, &cur, &sub).await?;
    let mut doc = T::build(&s, body)?;
    precondition(&headers, d.version, &format!("{} {sub}", T::NAME))?;
    archived(&cur.integ)?;
    doc["id"] = json!(sub);
    doc["integration_id"] = json!(id);
    doc["tenant"] = json!(cur.integ.tenant);
    let w = s
        .commit(
            &caller,
            &via,
            ChangeRecord::admin(
                format!("{}.update", T::NAME),
                &cur.integ.tenant,
                &sub,
                json!({"integration_id": id}),
            ),
            vec![
                DocChange::put(T::KIND, &sub, Some(&cur.integ.tenant), doc.to_string())
                    .status("active")
                    .expect(Expect::Version(d.version)),
            ],
        )
        .await?;
    doc["version"] = json!(w.versions[0]);
    Ok(with_etag(StatusCode::OK, w.versions[0], doc))
}

/// `DELETE /v1/integrations/{id}/webhooks|schema-mappings/{sub}` (`If-Match`): 204.
async fn sub_delete<T: Sub>(
    State(s): State<AdminHttp>,
    Path((id, sub)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult {
    let caller = s.caller(&headers).await?;
    let cur = load(&s, &caller, &id).await?;
    let via = caller.require(T::PERMISSION, &cur.target())?;
    let d = load_sub::<T>(&s, &cur, &sub).await?;
    precondition(&headers, d.version, &format!("{} {sub}", T::NAME))?;
    archived(&cur.integ)?;
    s.commit(
        &caller,
        &via,
        ChangeRecord::admin(
            format!("{}.delete", T::NAME),
            &cur.integ.tenant,
            &sub,
            json!({"integration_id": id}),
        ),
        vec![DocChange::delete(T::KIND, &sub).expect(Expect::Version(d.version))],
    )
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---------------------------------------------------------------------------------------------
// Activity: last successful sync and handshakes (ONB-6, ONB-7, ONB-AUD-4)

/// Coalesces allowed requests in memory and writes them off the request path (at most once per
/// integration per flush interval, 1 s); activates approved integrations on their first allowed
/// handshake.
#[derive(Default)]
pub struct Activity {
    /// integration → latest allowed request, ms. Sharded (`DashMap`): the request path takes
    /// one shard lock and allocates nothing once the integration has an entry.
    syncs: dashmap::DashMap<String, i64>,
    /// integration → (latest handshake ms, the integration was approved then).
    handshakes: Mutex<HashMap<String, (i64, bool)>>,
    wake: tokio::sync::Notify,
}

impl ActivityObserver for Activity {
    fn allowed(&self, integration: &str, handshake: bool, state: IntegrationState, time_ms: i64) {
        if handshake {
            let approved = state == IntegrationState::Approved;
            if let Ok(mut m) = self.handshakes.lock() {
                let e = m.entry(integration.to_owned()).or_insert((time_ms, false));
                e.0 = e.0.max(time_ms);
                e.1 |= approved;
            }
            if approved {
                self.wake.notify_one();
            }
        } else if let Some(mut e) = self.syncs.get_mut(integration) {
            *e = (*e).max(time_ms);
        } else {
            let mut e = self.syncs.entry(integration.to_owned()).or_insert(time_ms);
            *e = (*e).max(time_ms);
        }
    }
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Activity::default())
    }

    /// Writes what accumulated every second (or at once for a first handshake) until
    /// `shutdown`, then once more.
    pub async fn run(
        self: Arc<Self>,
        store: Store,
        audit: Option<Arc<AuditLog>>,
        engine: Arc<Engine>,
        audience: String,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            let stop = tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => false,
                _ = self.wake.notified() => false,
                _ = shutdown.wait_for(|v| *v) => true,
            };
            self.flush(&store, audit.as_deref(), &engine, &audience)
                .await;
            if stop {
                return;
            }
        }
    }

    /// Writes the pending syncs and handshakes; activates approved integrations that shook hands.
    pub async fn flush(
        &self,
        store: &Store,
        audit: Option<&AuditLog>,
        engine: &Engine,
        audience: &str,
    ) {
        // `remove` returns each entry's latest value atomically; a request landing after its
        // removal starts a new entry for the next flush.
        let keys: Vec<String> = self.syncs.iter().map(|e| e.key().clone()).collect();
        let syncs: Vec<(String, i64)> = keys
            .into_iter()
            .filter_map(|k| self.syncs.remove(&k))
            .collect();
        if let Err(e) = store.record_syncs(&syncs).await {
            tracing::warn!(error = %e, "last successful sync not recorded");
        }
        let hs: Vec<(String, (i64, bool))> = self
            .handshakes
            .lock()
            .map(|mut m| std::mem::take(&mut *m).into_iter().collect())
            .unwrap_or_default();
        let mut activated = false;
        for (id, (ms, approved)) in hs {
            if let Err(e) = store.record_handshake(&id, ms).await {
                tracing::warn!(error = %e, integration_id = %id, "handshake not recorded");
                continue;
            }
            if approved {
                match activate_on_handshake(store, audit, &id).await {
                    Ok(a) => activated |= a,
                    Err(e) => {
                        tracing::warn!(error = %e, integration_id = %id, "activation after handshake failed; the next handshake retries")
                    }
                }
            }
        }
        if activated && let Err(e) = crate::server::reload(store, engine, audience).await {
            tracing::error!(error = %e, "policy reload after a handshake activation failed");
        }
    }
}

/// Marks `id` active after a successful handshake when it is still approved and provisioned
/// (ONB-7): audited first (`admin_change`, actor `handshake`), then written with a version
/// check. Returns whether it changed.
async fn activate_on_handshake(
    store: &Store,
    audit: Option<&AuditLog>,
    id: &str,
) -> anyhow::Result<bool> {
    let Some(d) = store.document(DocKind::Integration, id).await? else {
        return Ok(false);
    };
    let mut i: Integration = serde_json::from_str(&d.doc)?;
    if i.state != IntegrationState::Approved || i.client_id.is_none() {
        return Ok(false);
    }
    if let Some(a) = audit {
        a.record_event(
            &AuditEvent::new(
                RecordKind::AdminChange,
                Some(&i.tenant),
                json!({"action": "integration.activate", "via": "handshake",
                       "from": "approved", "to": "active"}),
            )
            .actor("handshake")
            .subject(id),
        )
        .await
        .map_err(|e| anyhow::anyhow!("audit: {e}"))?;
    }
    i.state = IntegrationState::Active;
    i.onboarding
        .get_or_insert_with(Onboarding::default)
        .activated_by = Some("handshake".into());
    match store
        .write_documents(
            &[put_integration(&i, Expect::Version(d.version))],
            Source::Api,
            "handshake",
            None,
        )
        .await
    {
        Ok(_) => Ok(true),
        // Someone else changed it meanwhile (another replica activated it, or an operator).
        Err(crate::store::WriteError::Conflict { .. }) => Ok(false),
        Err(e) => Err(anyhow::anyhow!("{e}")),
    }
}

// ---------------------------------------------------------------------------------------------
// OpenAPI

fn op(summary: &str, permission: &str, body: Option<&str>, ok: &str, codes: &[&str]) -> Value {
    let mut responses = serde_json::Map::new();
    responses.insert(ok.into(), json!({"description": "success"}));
    for c in codes {
        responses.insert(
            (*c).into(),
            json!({"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}),
        );
    }
    let mut o = json!({
        "summary": summary,
        "description": format!("Permission: `{permission}`."),
        "responses": responses,
    });
    if let Some(b) = body {
        o["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": {"type": "object", "description": b}}}});
    }
    o
}

/// OpenAPI path items of [`routes`]: `(path, item)`.
pub fn openapi_paths() -> Vec<(String, Value)> {
    let rd = &["401", "403", "404", "503"][..];
    let wr = &["400", "401", "403", "404", "409", "412", "503"][..];
    let id = json!([{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}]);
    // Parameters go on each operation (not on the path item) so every path-item key is a verb.
    let with_params = |mut v: Value, params: &Value| {
        if let Value::Object(ops) = &mut v {
            for op in ops.values_mut() {
                op["parameters"] = params.clone();
            }
        }
        v
    };
    let with_id = |v: Value| with_params(v, &id);
    let mut out = vec![
        (
            "/v1/integrations".to_owned(),
            json!({
                "post": op("Create a draft integration (ONB-1, ONB-2)", "integrations.create",
                    Some("partner_name, legal_basis, technical_contacts[{name,email,role}], verticals, scopes, field_policy, rate_limit, quota, ip_allowlist, mtls_cert_sha256, partner_tenants, routes, id?, tenant? (root)"),
                    "201", &["400", "401", "403", "409", "503"]),
                "get": op("List integrations (filter `state`)", "integrations.read", None, "200", &["400", "401", "403", "503"]),
            }),
        ),
        (
            "/v1/integrations/{id}".to_owned(),
            with_id(json!({
                "get": op("One integration", "integrations.read", None, "200", rd),
                "patch": op("Edit a draft (If-Match)", "integrations.create", Some("any create field except id and tenant"), "200", wr),
            })),
        ),
        (
            "/v1/integrations/{id}/history".to_owned(),
            with_id(json!({
            "get": op("Every version of the integration", "integrations.read", None, "200", rd)})),
        ),
        (
            "/v1/integrations/{id}/health".to_owned(),
            with_id(json!({
            "get": op("State, health, last successful sync, last handshake (ONB-7, ONB-AUD-4)", "integrations.read", None, "200", rd)})),
        ),
        (
            "/v1/integrations/{id}/provision".to_owned(),
            with_id(json!({
            "post": op("Create the Keycloak client; client_id and client_secret shown once (ONB-4)", "integrations.provision", Some("reason_code?, reason_text?"), "201", wr)})),
        ),
        (
            "/v1/integrations/{id}/credentials".to_owned(),
            with_id(json!({
            "get": op("Credentials with age_days and rotation_due (ONB-AUD-2)", "integrations.read", None, "200", rd)})),
        ),
        (
            "/v1/integrations/{id}/credentials/rotate".to_owned(),
            with_id(json!({
            "post": op("Rotate the client secret; the new one is shown once (ONB-AUD-2)", "integrations.credentials", Some("reason_code?, reason_text?"), "200", wr)})),
        ),
        (
            "/v1/integrations/{id}/api-key".to_owned(),
            with_id(json!({
                "post": op("Issue an API key (second factor, shown once, stored hashed; INT-4.2-5)", "integrations.credentials", Some("reason_code?, reason_text?"), "201", wr),
                "delete": op("Revoke the API key", "integrations.credentials", None, "200", wr),
            })),
        ),
    ];
    for r in RULES {
        let body = match r.action {
            "approve" => "legal_document_id (required, ONB-AUD-3), notes?",
            _ if r.reason => "reason_code (ADM-7), reason_text (required for OTHER)",
            _ => "notes?, reason_code?, reason_text?",
        };
        let perm = if r.action == "approve" {
            "integrations.approve (+ integrations.approve_cross_tenant when partner_tenants is set, INT-4.5-2)"
        } else {
            r.permission
        };
        out.push((
            format!("/v1/integrations/{{id}}/{}", r.action),
            with_id(json!({"post": op(
                &format!("Lifecycle: {} → {} (If-Match)", r.from.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("|"), r.to.as_str()),
                perm, Some(body), "200", wr)})),
        ));
    }
    for (seg, name, perm, body) in [
        (
            "webhooks",
            "webhook subscription",
            "integrations.webhooks",
            "url (https), events[], description?",
        ),
        (
            "schema-mappings",
            "schema mapping",
            "integrations.mappings",
            "name, direction (inbound|outbound), fields[{source,target}]",
        ),
    ] {
        out.push((
            format!("/v1/integrations/{{id}}/{seg}"),
            with_id(json!({
                "post": op(&format!("Create a {name} (ONB-5)"), perm, Some(body), "201", wr),
                "get": op(&format!("List {name}s"), "integrations.read", None, "200", rd),
            })),
        ));
        let item = json!({
            "get": op(&format!("One {name}"), "integrations.read", None, "200", rd),
            "put": op(&format!("Replace a {name} (If-Match)"), perm, Some(body), "200", wr),
            "delete": op(&format!("Delete a {name} (If-Match)"), perm, None, "204", wr),
        });
        let item = with_params(
            item,
            &json!([
                {"name": "id", "in": "path", "required": true, "schema": {"type": "string"}},
                {"name": "sub", "in": "path", "required": true, "schema": {"type": "string"}},
            ]),
        );
        out.push((format!("/v1/integrations/{{id}}/{seg}/{{sub}}"), item));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // ONB-2
    #[test]
    fn scopes_are_least_privilege_syntax() {
        assert!(valid_scope("beneficiary:read:anonymous"));
        assert!(valid_scope("payment:status:update"));
        assert!(valid_scope("health:person:read"));
        assert!(!valid_scope("health:*"));
        assert!(!valid_scope("admin"));
        assert!(!valid_scope("Health:read"));
        assert!(!valid_scope("a:b:c:d:e"));
        assert!(!valid_scope("health::read"));
    }

    // INT-6.2-1, INT-6.2-5
    #[test]
    fn nothing_leaves_archived_and_every_state_is_reachable() {
        for r in RULES {
            assert!(!r.from.contains(&S::Archived), "{}", r.action);
        }
        for s in [
            S::Requested,
            S::Reviewed,
            S::Approved,
            S::Active,
            S::Restricted,
            S::Suspended,
            S::Deprecated,
            S::Archived,
        ] {
            assert!(RULES.iter().any(|r| r.to == s), "{s:?}");
        }
    }

    // ONB-1
    #[test]
    fn emails() {
        assert!(valid_email("ops@partner.example"));
        assert!(!valid_email("ops@partner"));
        assert!(!valid_email("ops partner@x.example"));
        assert!(!valid_email("@x.example"));
    }
}
