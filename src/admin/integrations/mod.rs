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
//! - Shadow limits (issue 16): a `rate_limit` or `quota` with `mode: shadow` is counted in its
//!   own state and only reported. `POST /v1/integrations/{id}/enforce-limits`
//!   (`integrations.operate`, `If-Match`, ADM-7 `reason_code`/`reason_text`) switches every
//!   shadow limit of the integration to `enforce` in any non-archived state; audited as
//!   `integration.enforce_limits`. Drafts may also be edited with `PATCH`.
//! - Handshake (ONB-6, ONB-7): an approved, provisioned integration may call handshake routes
//!   only (pipeline stage 2/3); [`Activity`] marks it `active` after its first allowed handshake
//!   (a document write by actor `handshake`, audited) and keeps "last successful sync"
//!   (ONB-AUD-4), coalesced in memory and written at most once per second per integration.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::policy::id_namespace;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ipnet::IpNet;
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::routes;

use super::http::{
    AdminHttp, Caller, ChangeRecord, ReasonBody, Resource, Target, Via, check_reason,
};
use super::keycloak::{ClientSpec, Secret, realm_of_issuer};
use crate::api::openapi::ApiRouter;
use crate::api::{
    ApiError, ApiResult, ErrorCode, opt_time, parse, precondition, rfc3339, with_etag,
};
use crate::audit::AuditLog;
use crate::audit::record::{AuditEvent, RecordKind};
use crate::pipeline::{ActivityObserver, Engine};
use crate::policy::{
    Contact, FieldPolicy, Integration, IntegrationState, Onboarding, Quota, RateLimit,
};
use crate::store::{DocChange, DocKind, Expect, Source, Store, StoredDoc};

mod activity;
mod credentials;
pub mod keycloak_sync;
mod lifecycle;
mod subresources;

use IntegrationState as S;
pub use activity::*;
use credentials::*;
use lifecycle::*;
pub use subresources::circuit_act;
use subresources::*;

/// Days after which a secret or key is due for rotation (ONB-AUD-2).
pub const ROTATION_DAYS: i64 = 90;

/// The integrations routes with their OpenAPI operations.
pub fn routes() -> ApiRouter<AdminHttp> {
    ApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(get_one, patch))
        .routes(routes!(history))
        .routes(routes!(health))
        .routes(routes!(provision))
        .routes(routes!(credentials))
        .routes(routes!(rotate))
        .routes(routes!(issue_api_key, revoke_api_key))
        .routes(routes!(webhook_create, webhook_list))
        .routes(routes!(webhook_get, webhook_put, webhook_delete))
        .routes(routes!(webhook_deliveries))
        .routes(routes!(webhook_replay))
        .routes(routes!(webhook_rotate_secret))
        .routes(routes!(mapping_create, mapping_list))
        .routes(routes!(mapping_get, mapping_put, mapping_delete))
        .routes(routes!(submit))
        .routes(routes!(review))
        .routes(routes!(legal_review))
        .routes(routes!(approve))
        .routes(routes!(activate))
        .routes(routes!(restrict))
        .routes(routes!(suspend))
        .routes(routes!(deprecate))
        .routes(routes!(archive))
        .routes(routes!(enforce_limits))
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
        self.integ.target()
    }
}

impl Resource for Integration {
    const KIND: DocKind = DocKind::Integration;
    const NOUN: &'static str = "integration";
    /// Its tenant and every vertical it declares.
    fn target(&self) -> Target<'_> {
        Target::verticals(&self.tenant, &self.verticals)
    }
}

/// [`AdminHttp::open`] for integration `id`: the caller, how `permission` was allowed, and the
/// integration.
async fn open(
    s: &AdminHttp,
    headers: &HeaderMap,
    id: &str,
    permission: &str,
) -> Result<(Caller, Via, Current), ApiError> {
    let o = s.open::<Integration>(headers, id, permission).await?;
    Ok((
        o.caller,
        o.via,
        Current {
            integ: o.doc,
            version: o.stored.version,
            doc: o.stored,
        },
    ))
}

/// The integration `id` as `caller` may see it: 404 when absent or of another tenant (non-root).
async fn load(s: &AdminHttp, caller: &Caller, id: &str) -> Result<Current, ApiError> {
    let (integ, doc): (Integration, StoredDoc) = s.load(caller, DocKind::Integration, id).await?;
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
        return Err(ApiError::new(
            ErrorCode::Archived,
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

/// A new integration id, `int-<tenant>-<12 hex>` (48 random bits of a UUIDv7), in the
/// tenant's own namespace (see [`crate::policy::id_namespace`]).
fn new_integration_id(tenant: &str) -> String {
    format!(
        "int-{tenant}-{}",
        &uuid::Uuid::now_v7().simple().to_string()[20..]
    )
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    /// Optional id in the caller's tenant namespace, `int-<tenant>-<name>`; else generated.
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
    #[schema(value_type = Vec<String>)]
    ip_allowlist: Vec<IpNet>,
    #[serde(default)]
    mtls_cert_sha256: Option<String>,
    #[serde(default)]
    partner_tenants: Vec<String>,
}

/// `POST /v1/integrations` (`integrations.create`): a `draft` integration (ONB-1, ONB-2,
/// INT-6.2-1). 201 with the integration and `ETag`.
#[utoipa::path(post,
    path = "/v1/integrations",
    operation_id = "create_integration",
    tag = "integrations",
    summary = "Create a draft integration (ONB-1, ONB-2)",
    request_body = CreateBody,
    security(("bearer" = ["integrations.create"])),
    responses((status = 201, description = "The draft; ETag = version", body = Object)))]
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
            // Ids are per tenant: a chosen id lies in the caller's own namespace, so a
            // create never answers differently for another tenant's id than for a random one.
            let snap = s.engine.snapshot().load_full();
            let tenants = snap.as_ref().as_ref().map(|s| s.tenants.keys());
            let owner = tenants.and_then(|t| id_namespace(&id, t.map(String::as_str)));
            if owner != Some(tenant.as_str()) {
                return Err(ApiError::invalid(
                    "id",
                    format!("a chosen id begins with `int-{tenant}-` (ids are per tenant)"),
                ));
            }
            id
        }
        None => new_integration_id(&tenant),
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

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    state: Option<String>,
    tenant: Option<String>,
}

/// `GET /v1/integrations?state=&tenant=` (`integrations.read`): the integrations the caller may
/// read (a vertical-scoped reader sees only those within its vertical).
#[utoipa::path(get,
    path = "/v1/integrations",
    operation_id = "list_integrations",
    tag = "integrations",
    summary = "List the integrations the caller may read",
    params(ListQuery),
    security(("bearer" = ["integrations.read"])),
    responses((status = 200, description = "The integrations", body = Object)))]
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

/// `GET /v1/integrations/{id}` (`integrations.read`). A provisioned integration whose
/// Keycloak client's `enabled` flag was changed by the lifecycle shows `keycloak_client`:
/// `{enabled, sync: pending|synced, attempts, last_error, changed_at, synced_at}`.
#[utoipa::path(get,
    path = "/v1/integrations/{id}",
    operation_id = "get_integration",
    tag = "integrations",
    summary = "One integration",
    params(("id" = String, Path, description = "The integration id")),
    security(("bearer" = ["integrations.read"])),
    responses((status = 200, description = "The integration; ETag = version", body = Object)))]
async fn get_one(
    State(s): State<AdminHttp>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let (_, _, cur) = open(&s, &headers, &id, "integrations.read").await?;
    let mut v = view(&cur.integ, cur.version, Some(&cur.doc));
    if let Some(k) = keycloak_sync::current(&s, &cur.integ).await? {
        v["keycloak_client"] = k;
    }
    Ok(with_etag(StatusCode::OK, cur.version, v))
}

/// `GET /v1/integrations/{id}/history` (`integrations.read`): every stored version, oldest first.
#[utoipa::path(get,
    path = "/v1/integrations/{id}/history",
    operation_id = "integration_history",
    tag = "integrations",
    summary = "Every version of the integration",
    params(("id" = String, Path, description = "The integration id")),
    security(("bearer" = ["integrations.read"])),
    responses((status = 200, description = "The versions", body = Object)))]
async fn history(
    State(s): State<AdminHttp>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let (_, _, cur) = open(&s, &headers, &id, "integrations.read").await?;
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

#[derive(Deserialize, ToSchema)]
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
    #[schema(value_type = Option<Vec<String>>)]
    ip_allowlist: Option<Vec<IpNet>>,
    mtls_cert_sha256: Option<String>,
    partner_tenants: Option<Vec<String>>,
}

/// `PATCH /v1/integrations/{id}` (`integrations.create`, `If-Match`): edits a draft; any
/// other state is 409 `INVALID_TRANSITION` (archived: 409 `ARCHIVED`).
#[utoipa::path(patch,
    path = "/v1/integrations/{id}",
    operation_id = "patch_integration",
    tag = "integrations",
    summary = "Edit a draft",
    params(("id" = String, Path, description = "The integration id"), crate::api::openapi::IfMatch),
    request_body = PatchBody,
    security(("bearer" = ["integrations.create"])),
    responses((status = 200, description = "The integration; ETag = version", body = Object)))]
async fn patch(
    State(s): State<AdminHttp>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let (caller, via, cur) = open(&s, &headers, &id, "integrations.create").await?;
    let b: PatchBody = parse(body)?;
    precondition(&headers, cur.version, &format!("integration {id}"))?;
    archived(&cur.integ)?;
    if cur.integ.state != IntegrationState::Draft {
        return Err(ApiError::new(
            ErrorCode::InvalidTransition,
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

/// `POST /v1/integrations/{id}/enforce-limits` (`integrations.operate`, `If-Match`): promotes the
/// integration's shadow `rate_limit` and `quota` (issue 16) to enforcement, in any state but
/// archived, with an ADM-7 reason; audited as `integration.enforce_limits` (naming the promoted
/// documents), in force on this replica before the answer.
///
/// Errors: 409 `INVALID_TRANSITION` when no limit is in shadow mode, 409 `ARCHIVED`, 412 on a
/// stale `If-Match`, 400 on a bad reason.
#[utoipa::path(post,
    path = "/v1/integrations/{id}/enforce-limits",
    operation_id = "enforce_integration_limits",
    tag = "integrations",
    summary = "Promote shadow rate limit and quota to enforcement (shadow → enforce)",
    params(("id" = String, Path, description = "The integration id"), crate::api::openapi::IfMatch),
    request_body = ReasonBody,
    security(("bearer" = ["integrations.operate"])),
    responses((status = 200, description = "The integration; ETag = version", body = Object)))]
async fn enforce_limits(
    State(s): State<AdminHttp>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let (caller, via, cur) = open(&s, &headers, &id, "integrations.operate").await?;
    let b: ReasonBody = parse(body)?;
    b.check()?;
    precondition(&headers, cur.version, &format!("integration {id}"))?;
    archived(&cur.integ)?;
    let mut i = cur.integ.clone();
    let mut promoted = Vec::new();
    if let Some(r) = &mut i.rate_limit
        && r.mode.is_shadow()
    {
        r.mode = crate::policy::Mode::Enforce;
        promoted.push(format!("rate_limit/{id}"));
    }
    if let Some(q) = &mut i.quota
        && q.mode.is_shadow()
    {
        q.mode = crate::policy::Mode::Enforce;
        promoted.push(format!("quota/{id}"));
    }
    if promoted.is_empty() {
        return Err(ApiError::new(
            ErrorCode::InvalidTransition,
            format!("integration `{id}` has no rate limit or quota in shadow mode"),
        ));
    }
    let w = s
        .commit(
            &caller,
            &via,
            ChangeRecord::admin(
                "integration.enforce_limits",
                &i.tenant,
                &i.id,
                json!({"promoted": promoted, "reason_code": b.reason_code,
                       "reason_text": b.reason_text}),
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
