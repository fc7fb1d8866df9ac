//! The shared core of the admin routes (ADM-1, ADM-2, ADM-3, ADM-8).
//!
//! - [`AdminHttp::caller`]: the caller and its grants, through the one admin-token check
//!   ([`Access`], shared with the consent and audit routes and the live tail).
//! - [`AdminHttp::commit`]: the one audited write path. The `admin_change` audit record (plus a
//!   `root_bypass` record when the ROOT role was what allowed it) is written before the store
//!   write; when it cannot be, the answer is 503 `AUDIT_UNAVAILABLE` and nothing changes. The
//!   write itself is [`Store::write_documents`]: all changes or none, each guarded by its
//!   version (`If-Match` → 412). A change to an enforced document is installed in this
//!   replica's policy snapshot before the call returns; other replicas follow the change feed
//!   (PostgreSQL NOTIFY, then polling).

use std::sync::Arc;

use axum::Router;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::{Value, json};

pub use super::access::{Access, Caller, Grant, Scope, Target, Via};
use crate::api::openapi::ApiRouter;
use crate::api::{ApiError, store_unavailable};
use crate::audit::AuditLog;
use crate::audit::record::{AuditEvent, RecordKind};
use crate::pipeline::Engine;
use crate::store::{DocChange, DocKind, Source, Store, StoredDoc, Written};
use serde::de::DeserializeOwned;

/// A permission of the catalog (`GET /v1/permissions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permission {
    /// e.g. `integrations.approve`.
    pub id: &'static str,
    pub action: &'static str,
    pub resource: &'static str,
    /// `tenant`, `vertical`, `geo` or `program`: the narrowest scope a grant of it may carry.
    pub scope_type: &'static str,
    pub description: &'static str,
}

macro_rules! catalog {
    ($(($id:literal, $action:literal, $resource:literal, $scope:literal, $desc:literal)),* $(,)?) => {
        /// The permission catalog (ADM-6). Role documents may only name these ids.
        pub const PERMISSIONS: &[Permission] = &[
            $(Permission { id: $id, action: $action, resource: $resource, scope_type: $scope, description: $desc }),*
        ];
    };
}

catalog![
    (
        "integrations.read",
        "read",
        "integration",
        "vertical",
        "Read integrations, their health and history"
    ),
    (
        "integrations.create",
        "create",
        "integration",
        "tenant",
        "Create and edit draft integrations, submit them (ONB-1, ONB-2)"
    ),
    (
        "integrations.review",
        "review",
        "integration",
        "vertical",
        "Technical review by the vertical owner (INT-6.1-1)"
    ),
    (
        "integrations.legal_review",
        "legal_review",
        "integration",
        "tenant",
        "Legal and consent review (INT-6.1-1)"
    ),
    (
        "integrations.approve",
        "approve",
        "integration",
        "tenant",
        "Approve a single-tenant integration (ONB-3)"
    ),
    (
        "integrations.approve_cross_tenant",
        "approve_cross_tenant",
        "integration",
        "tenant",
        "Approve a cross-tenant integration: umbrella authority (INT-4.5-2)"
    ),
    (
        "integrations.provision",
        "provision",
        "integration",
        "tenant",
        "Create the Keycloak client and issue credentials (ONB-4)"
    ),
    (
        "integrations.operate",
        "operate",
        "integration",
        "tenant",
        "Activate, restrict, suspend, deprecate, archive (INT-6.2-*)"
    ),
    (
        "integrations.credentials",
        "rotate",
        "credential",
        "tenant",
        "Rotate client secrets, issue and revoke API keys (ONB-AUD-2)"
    ),
    (
        "integrations.webhooks",
        "configure",
        "webhook",
        "tenant",
        "Configure webhook subscriptions and their URLs (ONB-5)"
    ),
    (
        "integrations.mappings",
        "configure",
        "schema_mapping",
        "tenant",
        "Configure schema mappings (ONB-5)"
    ),
    (
        "roles.read",
        "read",
        "role",
        "tenant",
        "Read permissions, roles, groups and assignments"
    ),
    (
        "roles.write",
        "write",
        "role",
        "tenant",
        "Create and edit roles, request their review"
    ),
    ("roles.review", "review", "role", "tenant", "Review a role"),
    (
        "roles.approve",
        "approve",
        "role",
        "tenant",
        "Approve, reject or archive a role"
    ),
    (
        "groups.write",
        "write",
        "group",
        "tenant",
        "Create and edit groups and their members"
    ),
    (
        "assignments.write",
        "write",
        "role_assignment",
        "tenant",
        "Grant and revoke role assignments"
    ),
    (
        "deny_rules.read",
        "read",
        "deny_rule",
        "tenant",
        "Read deny rules"
    ),
    (
        "deny_rules.write",
        "write",
        "deny_rule",
        "tenant",
        "Create and revoke deny rules (ADM-3)"
    ),
    (
        "policy_packs.read",
        "read",
        "policy_pack",
        "vertical",
        "Read policy packs and policy changes"
    ),
    (
        "policy_packs.write",
        "write",
        "policy_pack",
        "vertical",
        "Create and edit policy packs and changes, request review"
    ),
    (
        "policy_packs.review",
        "review",
        "policy_pack",
        "vertical",
        "Review policy packs and changes"
    ),
    (
        "policy_packs.approve",
        "approve",
        "policy_pack",
        "tenant",
        "Approve and activate policy packs and changes"
    ),
    (
        "policy_packs.operate",
        "operate",
        "policy_pack",
        "tenant",
        "Restrict, suspend, deprecate, archive policy packs"
    ),
    (
        "tenants.consent_settings",
        "configure",
        "tenant",
        "tenant",
        "Consent grace period and reminders: umbrella authority (CON-27, CON-33)"
    ),
    (
        "authz.evaluate",
        "evaluate",
        "authz",
        "tenant",
        "Evaluate an authorization question (restricted)"
    ),
    (
        "audit.read",
        "read",
        "audit",
        "tenant",
        "Read and export the audit log"
    ),
];

/// Checks that every permission the bootstrap mapping names is in the catalog.
///
/// Errors: the first unknown id, as `admin.claim_permissions.<role>: unknown permission <id>`.
pub fn check_claim_permissions(config: &super::auth::AdminConfig) -> Result<(), String> {
    for (role, perms) in &config.claim_permissions {
        if let Some(p) = perms.iter().find(|p| permission(p).is_none()) {
            return Err(format!(
                "admin.claim_permissions.{role}: unknown permission `{p}`"
            ));
        }
    }
    Ok(())
}

/// The catalog entry of `id`.
pub fn permission(id: &str) -> Option<&'static Permission> {
    PERMISSIONS.iter().find(|p| p.id == id)
}

/// One audited change: what the `admin_change` record says.
#[derive(Debug, Clone)]
pub struct ChangeRecord {
    /// Record kind: [`RecordKind::AdminChange`] or a credential kind (ONB-AUD-1).
    pub kind: RecordKind,
    /// e.g. `integration.approve`, `role.create`.
    pub action: String,
    /// Tenant whose chain records it.
    pub tenant: String,
    /// The resource id.
    pub subject: String,
    /// Reason code/text, new state, document id… never a secret.
    pub detail: Value,
}

impl ChangeRecord {
    /// An `admin_change` record.
    pub fn admin(action: impl Into<String>, tenant: &str, subject: &str, detail: Value) -> Self {
        ChangeRecord {
            kind: RecordKind::AdminChange,
            action: action.into(),
            tenant: tenant.to_owned(),
            subject: subject.to_owned(),
            detail,
        }
    }
}

/// A stored admin resource: its document kind and what its permissions are checked against.
pub trait Resource: DeserializeOwned + serde::Serialize {
    /// The document kind it is stored as.
    const KIND: DocKind;
    /// What it is called in messages, e.g. `deny rule`.
    const NOUN: &'static str;
    /// The tenant (and verticals) a permission on this resource must cover.
    fn target(&self) -> Target<'_>;
}

/// One resource opened for an action by [`AdminHttp::open`]: who, how it was allowed, the
/// resource and its stored row (id, version).
pub struct Opened<T> {
    pub caller: Caller,
    pub via: Via,
    pub doc: T,
    pub stored: StoredDoc,
}

/// A listing read by [`AdminHttp::list`]: the caller, the query parameters and the readable
/// resources of the tenant with their stored rows.
pub struct Listed<T> {
    pub caller: Caller,
    pub query: std::collections::HashMap<String, String>,
    pub items: Vec<(T, StoredDoc)>,
}

impl<T> Listed<T> {
    /// Whether query parameter `name` is absent or equals `value`.
    pub fn matches(&self, name: &str, value: &str) -> bool {
        self.query.get(name).is_none_or(|q| q == value)
    }
}

/// State of the admin routes.
#[derive(Clone)]
pub struct AdminHttp {
    pub store: Store,
    /// `None` when `audit.mode = "off"` (then no events are written).
    pub audit: Option<Arc<AuditLog>>,
    /// The admin-token check shared by every REST surface and the tail.
    pub access: Access,
    pub engine: Arc<Engine>,
    /// Audience the snapshot compiles tenants with (`auth.audience`).
    pub audience: String,
    /// Creates partners' identity provider clients (ONB-4); `None` when `admin.keycloak` is not
    /// configured (provisioning then answers 503 `PROVISIONER_UNAVAILABLE`).
    pub provisioner: Option<Arc<dyn super::keycloak::Provisioner>>,
    /// `[webhooks]` (secret rotation overlap, EXT-5.1-1).
    pub webhooks: crate::webhooks::WebhooksConfig,
}

impl AdminHttp {
    /// Authenticates the request and resolves the caller's grants ([`Access::caller`]).
    ///
    /// Errors: 401 `UNAUTHENTICATED`, 503 `DEPENDENCY_UNAVAILABLE` (keys or store unreachable).
    pub async fn caller(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        self.access.caller_from(headers).await
    }

    /// Loads document `kind`/`id` as `T` when it belongs to the caller's tenant (ROOT: any
    /// tenant). The one loader of the admin resources.
    ///
    /// Errors: 404 `NOT_FOUND` (absent, or another tenant's: its existence is not revealed), 503
    /// `DEPENDENCY_UNAVAILABLE` (store unreachable, or a stored document that does not parse).
    pub async fn load<T: DeserializeOwned>(
        &self,
        caller: &Caller,
        kind: DocKind,
        id: &str,
    ) -> Result<(T, StoredDoc), ApiError> {
        let doc = self
            .store
            .document(kind, id)
            .await
            .map_err(store_unavailable)?
            .filter(|d| visible(caller, d))
            .ok_or_else(|| ApiError::not_found(format!("no {} `{id}`", kind.as_str())))?;
        let v = serde_json::from_str(&doc.doc)
            .map_err(|e| ApiError::unavailable("policy store (unreadable document)", &e))?;
        Ok((v, doc))
    }

    /// The start of every action on one stored resource, in the order the API promises:
    /// authenticate; `permission` in some scope (before anything is looked up, so a caller
    /// without it learns nothing); load `id` ([`AdminHttp::load`]); `permission` on the
    /// resource's target.
    ///
    /// Errors: 401 `UNAUTHENTICATED`, 403 `FORBIDDEN`, 404 `NOT_FOUND`, 503.
    pub async fn open<T: Resource>(
        &self,
        headers: &HeaderMap,
        id: &str,
        permission: &str,
    ) -> Result<Opened<T>, ApiError> {
        let caller = self.caller(headers).await?;
        caller.require_some(permission)?;
        let (doc, stored): (T, StoredDoc) = self.load(&caller, T::KIND, id).await?;
        let via = caller.require(permission, &doc.target())?;
        Ok(Opened {
            caller,
            via,
            doc,
            stored,
        })
    }

    /// The start of every route that creates or evaluates from a body, in the order the API
    /// promises: authenticate; `permission` in some scope (before the body is read, so a caller
    /// without it learns nothing about the input); then the body as `B`. The caller still
    /// checks `permission` on the target the body names.
    ///
    /// Errors: 401 `UNAUTHENTICATED`, 403 `FORBIDDEN`, 400 `INVALID_REQUEST` (the field at
    /// fault), 413, 503.
    pub async fn begin<B: DeserializeOwned>(
        &self,
        headers: &HeaderMap,
        body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
        permission: &str,
    ) -> Result<(Caller, B), ApiError> {
        let caller = self.caller(headers).await?;
        caller.require_some(permission)?;
        Ok((caller, crate::api::parse(body)?))
    }

    /// The start of every list route, in the order the API promises: authenticate;
    /// `permission` in some scope; the query (only `tenant_id` and `filters`, else 400 naming
    /// the parameter); the tenant (`tenant_id`, another tenant's only for ROOT); `permission` on
    /// that tenant when the permission is granted per tenant (a vertical-scoped permission such
    /// as `policy_packs.read` instead filters the items by their verticals); then every stored
    /// `T` of the tenant the caller may read, with its row.
    ///
    /// Errors: 401 `UNAUTHENTICATED`, 403 `FORBIDDEN`, 400 `INVALID_REQUEST`, 503.
    pub async fn list<T: Resource>(
        &self,
        headers: &HeaderMap,
        query: crate::api::QueryParams,
        permission_id: &str,
        filters: &[&str],
    ) -> Result<Listed<T>, ApiError> {
        let caller = self.caller(headers).await?;
        caller.require_some(permission_id)?;
        let mut allowed = vec!["tenant_id"];
        allowed.extend_from_slice(filters);
        let query = crate::api::query_params(query, &allowed)?;
        let tenant = caller
            .tenant_for(query.get("tenant_id").map(String::as_str))?
            .to_owned();
        if permission(permission_id).is_none_or(|p| p.scope_type == "tenant") {
            caller.require(permission_id, &Target::tenant(&tenant))?;
        }
        let mut items = Vec::new();
        for stored in self
            .store
            .documents(T::KIND, Some(&tenant))
            .await
            .map_err(store_unavailable)?
        {
            match serde_json::from_str::<T>(&stored.doc) {
                Ok(doc) if caller.may(permission_id, &doc.target()) => items.push((doc, stored)),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(kind = T::KIND.as_str(), id = %stored.id, error = %e, "unreadable admin document skipped");
                }
            }
        }
        Ok(Listed {
            caller,
            query,
            items,
        })
    }

    /// [`AdminHttp::open`] for an edit: then the body as `B`, then the `If-Match` precondition
    /// against the stored version (ADM-4).
    ///
    /// Errors: as [`AdminHttp::open`]; 400 `INVALID_REQUEST` (the body, with the field at
    /// fault); 412 `PRECONDITION_FAILED`.
    pub async fn open_edit<T: Resource, B: DeserializeOwned>(
        &self,
        headers: &HeaderMap,
        id: &str,
        permission: &str,
        body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
    ) -> Result<(Opened<T>, B), ApiError> {
        let opened = self.open::<T>(headers, id, permission).await?;
        let b: B = crate::api::parse(body)?;
        crate::api::precondition(headers, opened.stored.version, &format!("{} {id}", T::NOUN))?;
        Ok((opened, b))
    }

    /// Writes `doc` back (as opened: `stored` is its row) with document status `status`,
    /// guarded by the version it was read at, as one audited change ([`AdminHttp::commit`]).
    /// Returns the new version.
    ///
    /// Errors: as [`AdminHttp::commit`] (412 when it changed meanwhile).
    pub async fn put<T: Resource>(
        &self,
        caller: &Caller,
        via: &Via,
        doc: &T,
        stored: &StoredDoc,
        status: &str,
        record: ChangeRecord,
    ) -> Result<i64, ApiError> {
        let change = DocChange::put(
            T::KIND,
            &stored.id,
            Some(doc.target().tenant),
            serde_json::to_string(doc).unwrap_or_default(),
        )
        .status(status)
        .expect(crate::store::Expect::Version(stored.version));
        let w = self.commit(caller, via, record, vec![change]).await?;
        Ok(w.versions[0])
    }

    /// Records `record` (and a `root_bypass` record when `via` is ROOT), then writes `changes`
    /// in one transaction as the caller. Enforced changes are installed in this replica's
    /// snapshot before returning (ADM-3, ADM-4).
    ///
    /// Errors: 503 `AUDIT_UNAVAILABLE` (nothing written), 412 `PRECONDITION_FAILED` (a version
    /// precondition failed), 409 `ALREADY_EXISTS` (create of an existing id), 409 `ARCHIVED`
    /// (INT-6.2-5), 400 `POLICY_INVALID` (the enforced set would be invalid; `field` names the
    /// entry), 503 `DEPENDENCY_UNAVAILABLE`.
    pub async fn commit(
        &self,
        caller: &Caller,
        via: &Via,
        record: ChangeRecord,
        changes: Vec<DocChange>,
    ) -> Result<Written, ApiError> {
        self.commit_with(caller, via, record, changes, &[]).await
    }

    /// [`AdminHttp::commit`] that queues the webhook deliveries of the change in its
    /// transaction ([`Store::write_documents_with`], INT-5.1-1).
    pub async fn commit_with(
        &self,
        caller: &Caller,
        via: &Via,
        record: ChangeRecord,
        changes: Vec<DocChange>,
        webhooks: &[crate::webhooks::WebhookRow],
    ) -> Result<Written, ApiError> {
        let actor = caller.principal.subject.clone();
        let mut detail = record.detail.clone();
        if let Value::Object(m) = &mut detail {
            m.insert("action".into(), Value::String(record.action.clone()));
            m.insert(
                "via".into(),
                Value::String(match via {
                    Via::Grant(g) => g.clone(),
                    Via::Root => "root".into(),
                }),
            );
        }
        self.record(
            AuditEvent::new(record.kind, Some(&record.tenant), detail)
                .actor(actor.clone())
                .subject(record.subject.clone()),
        )
        .await?;
        if *via == Via::Root {
            super::ledger::root_recorded(&record.tenant);
            self.record(
                AuditEvent::new(
                    RecordKind::RootBypass,
                    Some(&record.tenant),
                    json!({"action": record.action, "caller_tenant": caller.tenant()}),
                )
                .actor(actor.clone())
                .subject(record.subject.clone()),
            )
            .await?;
        }
        let written = self
            .store
            .write_documents_with(&changes, Source::Api, &actor, None, webhooks)
            .await
            .map_err(|e| crate::api::write_error(e, &changes))?;
        if changes.iter().any(|c| c.kind.enforced()) {
            // This replica enforces the change before the API answers (ADM-3).
            if let Err(e) = crate::feed::reload(&self.store, &self.engine, &self.audience).await {
                tracing::error!(error = %e, "policy reload after an admin change failed; the change feed retries");
            }
        }
        Ok(written)
    }

    /// Records `ev` when the audit log is on; 503 `AUDIT_UNAVAILABLE` when it cannot.
    pub async fn record(&self, ev: AuditEvent) -> Result<(), ApiError> {
        if let Some(a) = &self.audit
            && let Err(e) = a.record_event(&ev).await
        {
            tracing::warn!(error = %e, kind = ev.kind.as_str(), "admin audit event not recorded");
            return Err(ApiError::audit_unavailable());
        }
        Ok(())
    }

    /// Every admin route (`/v1/...`) and `/openapi.json`.
    pub fn router(self) -> Router {
        Router::new()
            .route("/openapi.json", get(openapi))
            .merge(routes())
            .layer(axum::extract::DefaultBodyLimit::max(
                crate::api::MAX_BODY_BYTES,
            ))
            .with_state(self)
    }
}

/// The admin routes with their OpenAPI operations (one table for both).
fn routes() -> ApiRouter<AdminHttp> {
    ApiRouter::new()
        .merge(super::rbac::routes())
        .merge(super::packs::routes())
        .merge(super::integrations::routes())
        .merge(super::tenants::routes())
}

/// One annotated `POST` handler per lifecycle step (approve, archive, revoke…): its OpenAPI
/// operation (`$path` with the path parameter `$param`, `If-Match`, body type `$body`, permission
/// `$perm`, 200 with `$response`) and a thin call `$run(state, id, headers, body, $arg)` into the
/// module's transition function, which enforces the step. Used by roles, policy packs and
/// changes, and integrations.
#[rustfmt::skip] // rustfmt re-indents the attribute lines of this body on every run.
macro_rules! step_handler {
    ($name:ident, $tag:tt, $path:tt, $param:tt, $perm:tt, $body:ident, $summary:tt, $response:tt,
     $run:ident($arg:expr)) => {
        #[utoipa::path(post, path = $path, tag = $tag, summary = $summary,
            params(($param = String, Path), crate::api::openapi::IfMatch),
            request_body = $body,
            security(("bearer" = [$perm])),
            responses((status = 200, description = $response, body = Object)))]
        pub(super) async fn $name(
            axum::extract::State(s): axum::extract::State<crate::admin::http::AdminHttp>,
            axum::extract::Path(id): axum::extract::Path<String>,
            headers: axum::http::HeaderMap,
            body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
        ) -> crate::api::ApiResult {
            $run(s, id, headers, body, $arg).await
        }
    };
}
pub(crate) use step_handler;

/// Reason codes of admin changes (ADM-7); `OTHER` needs a text.
pub const REASON_CODES: &[&str] = &[
    "SECURITY_INCIDENT",
    "COMPLIANCE",
    "POLICY_UPDATE",
    "PARTNER_REQUEST",
    "ROUTINE_REVIEW",
    "CONTRACT_ENDED",
    "DATA_BREACH",
    "ERROR_CORRECTION",
    "OTHER",
];

/// The body of a lifecycle step that needs a reason (ADM-7): reject, archive, revoke, restrict,
/// suspend, deprecate.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReasonBody {
    /// One of [`REASON_CODES`].
    pub reason_code: String,
    /// Required when the code is `OTHER`; at most 1000 characters.
    #[serde(default)]
    pub reason_text: Option<String>,
}

impl ReasonBody {
    /// [`check_reason`] on this pair (`reason_code`, `reason_text`).
    pub fn check(&self) -> Result<(), ApiError> {
        check_reason(
            "reason_code",
            &self.reason_code,
            "reason_text",
            self.reason_text.as_deref(),
        )
    }
}

/// The body of a request for review (ADM-7 reason pair).
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestBody {
    pub request_reason_code: String,
    #[serde(default)]
    pub request_reason_text: Option<String>,
}

/// The body of a review: optional notes (at most 2000 characters).
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReviewBody {
    #[serde(default)]
    pub review_notes: Option<String>,
}

/// The body of an approval (ADM-7 reason pair).
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApproveBody {
    pub approval_reason_code: String,
    #[serde(default)]
    pub approval_reason_text: Option<String>,
}

/// The body of a step that takes no input: `{}`.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmptyBody {}

/// Checks a reason pair (ADM-7): `code` must be one of [`REASON_CODES`]; `OTHER` needs a
/// non-blank `text` (≤ 1000 characters). `code_field`/`text_field` name the inputs in errors,
/// e.g. `reason_code`, `reason_text`.
///
/// Errors: 400 `INVALID_REQUEST` with the field at fault.
pub fn check_reason(
    code_field: &str,
    code: &str,
    text_field: &str,
    text: Option<&str>,
) -> Result<(), ApiError> {
    if !REASON_CODES.contains(&code) {
        return Err(ApiError::invalid(
            code_field,
            format!("must be one of {}", REASON_CODES.join(", ")),
        ));
    }
    let text = text.map(str::trim).unwrap_or("");
    if code == "OTHER" && text.is_empty() {
        return Err(ApiError::invalid(
            text_field,
            "is required when the reason code is OTHER (ADM-7)",
        ));
    }
    if text.chars().count() > 1000 {
        return Err(ApiError::invalid(text_field, "at most 1000 characters"));
    }
    Ok(())
}

async fn openapi() -> impl IntoResponse {
    static DOC: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let body = DOC.get_or_init(|| serde_json::to_vec(&openapi_document()).unwrap_or_default());
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body.as_slice(),
    )
}

/// The OpenAPI 3.1 document of every admin, consent and audit route (`GET /openapi.json`,
/// public), generated from the same route tables that build the routers
/// ([`crate::api::openapi`]).
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    let mut doc = routes().into_openapi();
    doc.merge(crate::consent::http::routes().into_openapi());
    doc.merge(crate::audit::http::routes().into_openapi());
    doc.merge(crate::staff::routes().into_openapi());
    crate::api::openapi::finish(doc)
}

/// Whether the caller may see `doc`: its own tenant's, or any for ROOT (noted as the root role
/// reaching that tenant, [`super::ledger::root_reached`]). Another tenant's document is noted as
/// a cross-tenant attempt ([`super::ledger::cross_tenant`]) and the caller gets the same 404 as
/// for an id that does not exist.
fn visible(caller: &Caller, doc: &StoredDoc) -> bool {
    match doc.tenant.as_deref() {
        Some(t) if t == caller.tenant() => true,
        Some(t) if caller.principal.root => {
            super::ledger::root_reached(t);
            true
        }
        Some(t) => {
            super::ledger::cross_tenant(t);
            false
        }
        None => caller.principal.root,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // EXT-5.3-1: the default persona mapping names only catalog permissions, and an unknown id in
    // a configured mapping is refused at start.
    #[test]
    fn claim_mapping_names_catalog_permissions_only() {
        let mut c = crate::admin::AdminConfig::default();
        assert_eq!(check_claim_permissions(&c), Ok(()));
        assert!(
            c.claim_permissions("scp-unmapped-role").is_empty(),
            "least privilege"
        );
        c.claim_permissions.insert(
            "ops".into(),
            vec!["integrations.read".into(), "everything".into()],
        );
        let e = check_claim_permissions(&c).unwrap_err();
        assert!(e.contains("ops") && e.contains("everything"), "{e}");
    }

    // ADM-7: a reason code from the list; OTHER needs a text.
    #[test]
    fn reason_codes() {
        assert!(check_reason("reason_code", "COMPLIANCE", "reason_text", None).is_ok());
        let e = check_reason("reason_code", "OTHER", "reason_text", Some("  ")).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("reason_text"));
        assert!(check_reason("reason_code", "OTHER", "reason_text", Some("court order")).is_ok());
        let e = check_reason("approval_reason_code", "BECAUSE", "t", None).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("approval_reason_code"));
    }
}
