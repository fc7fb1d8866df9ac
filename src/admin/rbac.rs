//! Permissions, roles, groups, role assignments, deny rules and `POST /v1/authz/evaluate`
//! (`spec/004_*`; ADM-1, ADM-2, ADM-3, ADM-6, ADM-7, ADM-8).
//!
//! | route | permission | what |
//! |---|---|---|
//! | `GET /v1/permissions` | `roles.read` | the catalog [`PERMISSIONS`] (filters `scope_type`, `status`) |
//! | `POST /v1/roles`, `GET /v1/roles` | `roles.write` / `roles.read` | create a draft role / list |
//! | `GET`, `PATCH /v1/roles/{role_id}` | `roles.read` / `roles.write` | one role / edit it |
//! | `GET /v1/roles/{role_id}/versions` | `roles.read` | every stored version |
//! | `POST /v1/roles/{role_id}/request-review` | `roles.write` | draft → approval_state pending |
//! | `POST /v1/roles/{role_id}/review` | `roles.review` | pending → reviewed |
//! | `POST /v1/roles/{role_id}/approve` | `roles.approve` | reviewed → status active, approved |
//! | `POST /v1/roles/{role_id}/reject` | `roles.approve` | pending/reviewed → rejected |
//! | `POST /v1/roles/{role_id}/archive` | `roles.approve` | any → archived (immutable) |
//! | `POST /v1/groups`, `GET /v1/groups` | `groups.write` / `roles.read` | create / list |
//! | `GET`, `PATCH /v1/groups/{group_id}` | `roles.read` / `groups.write` | one group with members / edit |
//! | `POST /v1/groups/{group_id}/members` | `groups.write` | add a member with a window |
//! | `POST /v1/groups/{group_id}/members/{user_id}/end` | `groups.write` | end a membership |
//! | `POST /v1/users/{user_id}/roles` | `assignments.write` | assign a role to a user |
//! | `POST /v1/groups/{group_id}/roles` | `assignments.write` | assign a role to a group |
//! | `GET /v1/role-assignments`, `GET /v1/role-assignments/{id}` | `roles.read` | list / one |
//! | `POST /v1/role-assignments/{id}/revoke` | `assignments.write` | revoke |
//! | `POST /v1/deny-rules`, `GET /v1/deny-rules`, `GET /v1/deny-rules/{id}` | `deny_rules.write` / `deny_rules.read` | create / list / one |
//! | `POST /v1/deny-rules/{id}/revoke` | `deny_rules.write` | revoke (kept, not enforced) |
//! | `POST /v1/authz/evaluate` | `authz.evaluate` | decision, reasons, applied_denies, masked_fields |
//!
//! Rules:
//! - Every resource is a stored document ([`DocKind::Role`], `Group`, `GroupMember`,
//!   `RoleAssignment`, `DenyRule`); `version_id` is the document version and the `ETag`; every
//!   change honours `If-Match` (412, nothing written, ADM-8) and goes through
//!   [`AdminHttp::commit`] (audited first, ADM-2). Other tenants' resources are 404 for non-root
//!   callers.
//! - Roles: `status` draft | active | rejected | archived and `approval_state` null | pending |
//!   reviewed | approved | rejected. Approval needs a review first, and the approver must be
//!   neither the author nor the last editor (four eyes, 403 `SEPARATION_OF_DUTIES`). A role
//!   created with `requires_approval: false` may be approved straight from draft, by anyone
//!   holding `roles.approve` (author included). Editing a draft or rejected role returns it to
//!   draft with no approval; an active role only accepts `description` and `active_until`
//!   (narrowing power needs no approval; widening it needs a new role).
//! - Dynamic groups: `dynamic_rule: {"token_role": "<role>"}` makes every user whose admin token
//!   carries that role (the roles claim) a member, evaluated at each request, besides the
//!   explicit members.
//! - Assignments: the role must be active; `scope.tenant_id` is the assignment's tenant (the
//!   caller's own unless ROOT); a role of `scope_type` vertical/geo/program needs that scope id;
//!   the caller must itself hold every permission of the role over that scope (no escalation).
//!   [`stored_grants`] turns assignments into grants at each request: an expired window, an
//!   ended membership, a revoked assignment or a role that is no longer active grants nothing
//!   from the next request on.
//! - Deny rules are enforced documents compiled into the policy snapshot: subject type
//!   `integration` applies to partner traffic (pipeline stage 6), `user`, `group` and `role` to
//!   admin callers ([`super::http::Caller::require`]) and to evaluate. Roles match a stored role
//!   id the user is assigned or a token role. The writing replica enforces a new rule before the
//!   API answers; others follow the change feed (PostgreSQL NOTIFY, else the poll interval).
//! - Evaluate: allow only when a stored grant of a catalog permission with that action and
//!   resource covers the scope, no deny rule applies and the vertical's policy pack (when
//!   there is one) allows. Reasons: `grant:assignment:<id>`, `no_grant`, `deny_rule:<id>`,
//!   `policy:<policy id>`.

use std::collections::{HashMap, HashSet};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::auth::AdminPrincipal;
use super::http::{
    AdminHttp, Caller, ChangeRecord, Grant, PERMISSIONS, Scope, Target, check_reason, permission,
};
use crate::api::{ApiError, ApiResult, instant, now_ms, opt_time, parse, precondition, rfc3339};
use crate::pipeline::Engine;
use crate::policy::{DenyRule, DenyStatus, DenySubject};
use crate::store::{DocChange, DocKind, Expect, Store, StoredDoc};

type Body = Result<Bytes, BytesRejection>;
type Q = Result<Query<HashMap<String, String>>, QueryRejection>;

const SCOPE_TYPES: &[&str] = &["tenant", "geo", "vertical", "program"];
const MAX_NAME: usize = 200;
const MAX_TEXT: usize = 2000;

// ---------------------------------------------------------------------------------------------
// Stored documents
// ---------------------------------------------------------------------------------------------

/// A role document (`role`). Times are ms since the epoch.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RoleDoc {
    role_id: String,
    tenant_id: String,
    role_name: String,
    #[serde(default)]
    description: Option<String>,
    scope_type: String,
    permission_ids: Vec<String>,
    active_from: i64,
    #[serde(default)]
    active_until: Option<i64>,
    requires_approval: bool,
    status: String,
    #[serde(default)]
    approval_state: Option<String>,
    created_by: String,
    created_at: i64,
    updated_by: String,
    updated_at: i64,
    /// Lifecycle stamps: `requested_at`, `requested_by`, `request_reason_code`, …
    #[serde(default)]
    lifecycle: serde_json::Map<String, Value>,
}

impl RoleDoc {
    fn in_force(&self, now: i64) -> bool {
        self.status == "active" && in_window(self.active_from, self.active_until, now)
    }
}

/// Dynamic membership: users whose admin token carries `token_role`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DynamicRule {
    token_role: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct GroupDoc {
    group_id: String,
    tenant_id: String,
    group_name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    dynamic_rule: Option<DynamicRule>,
    active_from: i64,
    #[serde(default)]
    active_until: Option<i64>,
    status: String,
    created_by: String,
    created_at: i64,
    updated_at: i64,
}

impl GroupDoc {
    fn in_force(&self, now: i64) -> bool {
        self.status == "active" && in_window(self.active_from, self.active_until, now)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct MemberDoc {
    membership_id: String,
    tenant_id: String,
    group_id: String,
    user_id: String,
    effective_from: i64,
    #[serde(default)]
    effective_until: Option<i64>,
    /// `active` or `ended` (an end in the future keeps it active until then).
    status: String,
    created_by: String,
    created_at: i64,
    #[serde(default)]
    end_reason_code: Option<String>,
    #[serde(default)]
    end_reason_text: Option<String>,
}

impl MemberDoc {
    fn in_force(&self, now: i64) -> bool {
        self.status == "active" && in_window(self.effective_from, self.effective_until, now)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct AssignmentDoc {
    assignment_id: String,
    tenant_id: String,
    /// `user` or `group`.
    subject_type: String,
    subject_id: String,
    role_id: String,
    scope: Scope,
    effective_from: i64,
    #[serde(default)]
    effective_until: Option<i64>,
    /// `active` or `revoked`.
    status: String,
    created_by: String,
    created_at: i64,
    #[serde(default)]
    revoked_at: Option<i64>,
    #[serde(default)]
    revoked_by: Option<String>,
    #[serde(default)]
    revoke_reason_code: Option<String>,
    #[serde(default)]
    revoke_reason_text: Option<String>,
}

impl AssignmentDoc {
    fn in_force(&self, now: i64) -> bool {
        self.status == "active" && in_window(self.effective_from, self.effective_until, now)
    }
}

fn in_window(from: i64, until: Option<i64>, now: i64) -> bool {
    from <= now && until.is_none_or(|u| now < u)
}

// ---------------------------------------------------------------------------------------------
// Grants and denies of a subject
// ---------------------------------------------------------------------------------------------

/// What the store says about one user of one tenant at one instant.
#[derive(Debug, Default)]
struct SubjectFacts {
    /// Groups the user is an active member of (explicit or dynamic), of active groups.
    groups: Vec<String>,
    /// Role ids of the user's active assignments of active roles.
    roles: Vec<String>,
    grants: Vec<Grant>,
}

async fn subject_facts(
    store: &Store,
    tenant: &str,
    user: &str,
    token_roles: &[String],
    now: i64,
) -> Result<SubjectFacts, sqlx::Error> {
    let mut facts = SubjectFacts::default();
    let assignments: Vec<AssignmentDoc> = docs(store, DocKind::RoleAssignment, tenant)
        .await?
        .into_iter()
        .filter(|a: &AssignmentDoc| a.in_force(now))
        .collect();
    let groups: HashMap<String, GroupDoc> = docs(store, DocKind::Group, tenant)
        .await?
        .into_iter()
        .filter(|g: &GroupDoc| g.in_force(now))
        .map(|g| (g.group_id.clone(), g))
        .collect();
    let mut mine: HashSet<String> = docs(store, DocKind::GroupMember, tenant)
        .await?
        .into_iter()
        .filter(|m: &MemberDoc| m.user_id == user && m.in_force(now))
        .map(|m| m.group_id)
        .filter(|g| groups.contains_key(g))
        .collect();
    for g in groups.values() {
        if let Some(r) = &g.dynamic_rule
            && token_roles.contains(&r.token_role)
        {
            mine.insert(g.group_id.clone());
        }
    }
    let mut group_list: Vec<String> = mine.iter().cloned().collect();
    group_list.sort();
    facts.groups = group_list;
    let relevant: Vec<&AssignmentDoc> = assignments
        .iter()
        .filter(|a| match a.subject_type.as_str() {
            "user" => a.subject_id == user,
            "group" => mine.contains(&a.subject_id),
            _ => false,
        })
        .collect();
    if relevant.is_empty() {
        return Ok(facts);
    }
    let roles: HashMap<String, RoleDoc> = docs(store, DocKind::Role, tenant)
        .await?
        .into_iter()
        .filter(|r: &RoleDoc| r.in_force(now))
        .map(|r| (r.role_id.clone(), r))
        .collect();
    for a in relevant {
        let Some(role) = roles.get(&a.role_id) else {
            continue;
        };
        if !facts.roles.contains(&role.role_id) {
            facts.roles.push(role.role_id.clone());
        }
        let scope = Scope {
            tenant_id: Some(a.tenant_id.clone()),
            ..a.scope.clone()
        };
        for p in &role.permission_ids {
            facts.grants.push(Grant {
                permission: p.clone(),
                scope: scope.clone(),
                via: format!("assignment:{}", a.assignment_id),
            });
        }
    }
    Ok(facts)
}

/// Every parsable document of `kind` of `tenant` (unparsable ones are skipped and logged:
/// they grant nothing).
async fn docs<T: DeserializeOwned>(
    store: &Store,
    kind: DocKind,
    tenant: &str,
) -> Result<Vec<T>, sqlx::Error> {
    Ok(store
        .documents(kind, Some(tenant))
        .await?
        .into_iter()
        .filter_map(|d| match serde_json::from_str(&d.doc) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!(kind = kind.as_str(), id = %d.id, error = %e, "unreadable admin document skipped");
                None
            }
        })
        .collect())
}

/// The grants `principal` holds through role assignments in the store at `now_ms` (ADM-1):
/// active assignments (to the user, or to a group the user is an active member of, explicit or
/// dynamic) of active roles, inside their windows, each permission carrying the assignment's
/// scope with `tenant_id` = the assignment's tenant. `via` is `assignment:<id>`.
///
/// Errors: the store is unreachable.
pub async fn stored_grants(
    store: &Store,
    principal: &AdminPrincipal,
    now_ms: i64,
) -> Result<Vec<Grant>, sqlx::Error> {
    Ok(subject_facts(
        store,
        &principal.tenant_id,
        &principal.subject,
        &principal.roles,
        now_ms,
    )
    .await?
    .grants)
}

/// The caller's stored grants ([`stored_grants`]) and the deny rules in force against it
/// (ADM-3): rules of its tenant in the installed policy snapshot with subject `user` = its
/// subject, `group` = one of its groups, or `role` = a role it is assigned or a token role.
///
/// Errors: the store is unreachable.
pub async fn resolve(
    store: &Store,
    engine: &Engine,
    principal: &AdminPrincipal,
    now_ms: i64,
) -> Result<(Vec<Grant>, Vec<DenyRule>), sqlx::Error> {
    let facts = subject_facts(
        store,
        &principal.tenant_id,
        &principal.subject,
        &principal.roles,
        now_ms,
    )
    .await?;
    let denies = denies_for(
        engine,
        &principal.tenant_id,
        &principal.subject,
        &facts,
        &principal.roles,
        now_ms,
    );
    Ok((facts.grants, denies))
}

fn denies_for(
    engine: &Engine,
    tenant: &str,
    user: &str,
    facts: &SubjectFacts,
    token_roles: &[String],
    now: i64,
) -> Vec<DenyRule> {
    let snap = engine.snapshot().load_full();
    let Some(snap) = snap.as_ref() else {
        return Vec::new();
    };
    snap.deny_rules
        .get(tenant)
        .into_iter()
        .flatten()
        .filter(|d| d.in_force(now))
        .filter(|d| {
            let Some(s) = d.subject_id.as_deref() else {
                return false;
            };
            match d.subject_type {
                Some(DenySubject::User) => s == user,
                Some(DenySubject::Group) => facts.groups.iter().any(|g| g == s),
                Some(DenySubject::Role) => {
                    facts.roles.iter().any(|r| r == s) || token_roles.iter().any(|r| r == s)
                }
                _ => false,
            }
        })
        .cloned()
        .collect()
}

/// Whether admin deny rule `d` (already known to target the caller) forbids `permission` on
/// `target`: its action is unset, `*`, the permission's action or the permission id; its
/// resource is unset, `*` or the permission's resource; same tenant; a vertical/geo/program it
/// names is the target's, or the target does not narrow that dimension (fail closed).
pub fn deny_blocks(d: &DenyRule, permission_id: &str, target: &Target) -> bool {
    let (action, resource) = match permission(permission_id) {
        Some(p) => (p.action, p.resource),
        None => (permission_id, ""),
    };
    deny_matches(d, action, Some(permission_id), resource, target)
}

fn deny_matches(
    d: &DenyRule,
    action: &str,
    permission_id: Option<&str>,
    resource: &str,
    target: &Target,
) -> bool {
    d.tenant == target.tenant
        && d.action
            .as_deref()
            .is_none_or(|a| a == "*" || a == action || Some(a) == permission_id)
        && d.resource
            .as_deref()
            .is_none_or(|r| r == "*" || r == resource)
        && d.vertical
            .as_ref()
            .is_none_or(|v| target.verticals.is_empty() || target.verticals.contains(v))
        && d.geo
            .as_deref()
            .is_none_or(|g| target.geo.is_none_or(|t| t == g))
        && d.program
            .as_deref()
            .is_none_or(|p| target.program.is_none_or(|t| t == p))
}

// ---------------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------------

fn store_err(e: sqlx::Error) -> ApiError {
    ApiError::unavailable("policy store", &e)
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7())
}

fn text<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn invalid_transition(msg: impl Into<String>) -> ApiError {
    ApiError::conflict("INVALID_TRANSITION", msg)
}

/// Loads `kind`/`id` visible to `caller` (404 for another tenant's document unless ROOT).
async fn load<T: DeserializeOwned>(
    h: &AdminHttp,
    caller: &Caller,
    kind: DocKind,
    id: &str,
) -> Result<(T, StoredDoc), ApiError> {
    let doc = h
        .store
        .document(kind, id)
        .await
        .map_err(store_err)?
        .filter(|d| caller.principal.root || d.tenant.as_deref() == Some(caller.tenant()))
        .ok_or_else(|| ApiError::not_found(format!("no {} `{id}`", kind.as_str())))?;
    let v =
        serde_json::from_str(&doc.doc).map_err(|e| ApiError::unavailable("policy store", &e))?;
    Ok((v, doc))
}

fn ok_json(status: StatusCode, version: i64, body: Value) -> Response {
    crate::api::with_etag(status, version, body)
}

/// Rejects unknown query parameters (400 naming the parameter).
fn query(q: Q, allowed: &[&str]) -> Result<HashMap<String, String>, ApiError> {
    let Ok(Query(q)) = q else {
        return Err(ApiError::invalid("query", "unreadable query string"));
    };
    if let Some(k) = q.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(ApiError::invalid(
            k.clone(),
            format!("unknown query parameter; allowed: {}", allowed.join(", ")),
        ));
    }
    Ok(q)
}

fn check_name(field: &str, v: &str) -> Result<String, ApiError> {
    let v = v.trim();
    if v.is_empty() || v.chars().count() > MAX_NAME {
        return Err(ApiError::invalid(
            field,
            format!("must be 1 to {MAX_NAME} characters"),
        ));
    }
    Ok(v.to_owned())
}

fn check_text(field: &str, v: Option<String>) -> Result<Option<String>, ApiError> {
    match v {
        Some(t) if t.chars().count() > MAX_TEXT => Err(ApiError::invalid(
            field,
            format!("at most {MAX_TEXT} characters"),
        )),
        other => Ok(other),
    }
}

/// A window with named inputs: `until` after `from`.
fn window_of(
    from_field: &'static str,
    from: &str,
    until_field: &'static str,
    until: Option<&str>,
) -> Result<(i64, Option<i64>), ApiError> {
    let f = instant(from_field, from)?;
    let u = until.map(|u| instant(until_field, u)).transpose()?;
    if u.is_some_and(|u| u <= f) {
        return Err(ApiError::invalid(
            until_field,
            format!("must be after {from_field}"),
        ));
    }
    Ok((f, u))
}

fn check_permission_ids(ids: &[String]) -> Result<Vec<String>, ApiError> {
    if ids.is_empty() {
        return Err(ApiError::invalid("permission_ids", "must not be empty"));
    }
    let mut out: Vec<String> = Vec::new();
    for (i, p) in ids.iter().enumerate() {
        if permission(p).is_none() {
            return Err(ApiError::invalid(
                format!("permission_ids[{i}]"),
                format!("`{p}` is not in the permission catalog (GET /v1/permissions)"),
            ));
        }
        if !out.contains(p) {
            out.push(p.clone());
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Permissions
// ---------------------------------------------------------------------------------------------

async fn list_permissions(State(h): State<AdminHttp>, headers: HeaderMap, q: Q) -> ApiResult {
    let caller = h.caller(&headers).await?;
    caller.require("roles.read", &Target::tenant(caller.tenant()))?;
    let q = query(q, &["scope_type", "status"])?;
    if let Some(s) = q.get("scope_type")
        && !SCOPE_TYPES.contains(&s.as_str())
    {
        return Err(ApiError::invalid(
            "scope_type",
            "must be tenant, geo, vertical or program",
        ));
    }
    if let Some(s) = q.get("status")
        && s != "active"
        && s != "retired"
    {
        return Err(ApiError::invalid("status", "must be active or retired"));
    }
    let list: Vec<Value> = PERMISSIONS
        .iter()
        .filter(|p| q.get("scope_type").is_none_or(|s| s == p.scope_type))
        .filter(|_| q.get("status").is_none_or(|s| s == "active"))
        .map(|p| {
            json!({
                "permission_id": p.id, "action": p.action, "resource": p.resource,
                "scope_type": p.scope_type, "description": p.description, "status": "active",
            })
        })
        .collect();
    Ok(axum::Json(json!({ "permissions": list })).into_response())
}

// ---------------------------------------------------------------------------------------------
// Roles
// ---------------------------------------------------------------------------------------------

fn role_view(r: &RoleDoc, version: i64) -> Value {
    let mut v = json!({
        "role_id": r.role_id, "version_id": version, "tenant_id": r.tenant_id,
        "role_name": r.role_name, "description": r.description, "scope_type": r.scope_type,
        "permission_ids": r.permission_ids, "active_from": rfc3339(r.active_from),
        "active_until": opt_time(r.active_until), "requires_approval": r.requires_approval,
        "status": r.status, "approval_state": r.approval_state,
        "created_by": r.created_by, "created_at": rfc3339(r.created_at),
        "updated_by": r.updated_by, "updated_at": rfc3339(r.updated_at),
    });
    for (k, x) in &r.lifecycle {
        let out = match (k.ends_with("_at"), x.as_i64()) {
            (true, Some(ms)) => rfc3339(ms),
            _ => x.clone(),
        };
        v[k.as_str()] = out;
    }
    v
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleCreate {
    role_name: String,
    #[serde(default)]
    description: Option<String>,
    scope_type: String,
    permission_ids: Vec<String>,
    active_from: String,
    #[serde(default)]
    active_until: Option<String>,
    #[serde(default)]
    requires_approval: Option<bool>,
    /// ROOT only: the tenant the role belongs to (default: the caller's).
    #[serde(default)]
    tenant_id: Option<String>,
}

async fn create_role(State(h): State<AdminHttp>, headers: HeaderMap, body: Body) -> ApiResult {
    let caller = h.caller(&headers).await?;
    caller.require_some("roles.write")?;
    let b: RoleCreate = parse(body)?;
    let tenant = caller.tenant_for(b.tenant_id.as_deref())?.to_owned();
    let via = caller.require("roles.write", &Target::tenant(&tenant))?;
    let role_name = check_name("role_name", &b.role_name)?;
    let description = check_text("description", b.description)?;
    if !SCOPE_TYPES.contains(&b.scope_type.as_str()) {
        return Err(ApiError::invalid(
            "scope_type",
            "must be tenant, geo, vertical or program",
        ));
    }
    let permission_ids = check_permission_ids(&b.permission_ids)?;
    let (from, until) = crate::api::window(&b.active_from, b.active_until.as_deref())?;
    let now = now_ms();
    let actor = caller.principal.subject.clone();
    let role = RoleDoc {
        role_id: new_id("role"),
        tenant_id: tenant.clone(),
        role_name,
        description,
        scope_type: b.scope_type,
        permission_ids,
        active_from: from,
        active_until: until,
        requires_approval: b.requires_approval.unwrap_or(true),
        status: "draft".into(),
        approval_state: None,
        created_by: actor.clone(),
        created_at: now,
        updated_by: actor,
        updated_at: now,
        lifecycle: Default::default(),
    };
    let w = h
        .commit(
            &caller,
            &via,
            ChangeRecord::admin(
                "role.create",
                &tenant,
                &role.role_id,
                json!({"status": "draft", "permission_ids": role.permission_ids}),
            ),
            vec![
                DocChange::put(DocKind::Role, &role.role_id, Some(&tenant), text(&role))
                    .status("draft")
                    .expect(Expect::Absent),
            ],
        )
        .await?;
    let v = w.versions[0];
    Ok(ok_json(StatusCode::CREATED, v, role_view(&role, v)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RolePatch {
    #[serde(default)]
    role_name: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    permission_ids: Option<Vec<String>>,
    #[serde(default)]
    active_from: Option<String>,
    #[serde(default)]
    active_until: Option<String>,
}

async fn patch_role(
    State(h): State<AdminHttp>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let caller = h.caller(&headers).await?;
    caller.require_some("roles.write")?;
    let (mut role, stored): (RoleDoc, _) = load(&h, &caller, DocKind::Role, &id).await?;
    let via = caller.require("roles.write", &Target::tenant(&role.tenant_id))?;
    let b: RolePatch = parse(body)?;
    precondition(&headers, stored.version, &format!("role {id}"))?;
    if role.status == "archived" {
        return Err(ApiError::conflict(
            "ARCHIVED",
            format!("role `{id}` is archived and accepts no change"),
        ));
    }
    let widening = b.role_name.is_some() || b.permission_ids.is_some() || b.active_from.is_some();
    if widening && role.status == "active" {
        return Err(invalid_transition(
            "an active role accepts only description and active_until; create a new role for other changes",
        ));
    }
    if b.role_name.is_none()
        && b.description.is_none()
        && b.permission_ids.is_none()
        && b.active_from.is_none()
        && b.active_until.is_none()
    {
        return Err(ApiError::invalid("body", "nothing to change"));
    }
    if let Some(n) = &b.role_name {
        role.role_name = check_name("role_name", n)?;
    }
    if let Some(d) = b.description {
        role.description = check_text("description", Some(d))?;
    }
    if let Some(p) = &b.permission_ids {
        role.permission_ids = check_permission_ids(p)?;
    }
    let from = match &b.active_from {
        Some(f) => rfc3339(instant("active_from", f)?),
        None => rfc3339(role.active_from),
    };
    let until = match &b.active_until {
        Some(u) => Some(u.clone()),
        None => role
            .active_until
            .map(rfc3339)
            .and_then(|v| v.as_str().map(str::to_owned)),
    };
    let (f, u) = crate::api::window(from.as_str().unwrap_or_default(), until.as_deref())?;
    role.active_from = f;
    role.active_until = u;
    if role.status != "active" {
        // Any edit of a draft or rejected role voids its approval progress.
        role.status = "draft".into();
        role.approval_state = None;
        role.lifecycle.clear();
    }
    let now = now_ms();
    role.updated_by = caller.principal.subject.clone();
    role.updated_at = now;
    let w = h
        .commit(
            &caller,
            &via,
            ChangeRecord::admin(
                "role.update",
                &role.tenant_id,
                &id,
                json!({"status": role.status, "permission_ids": role.permission_ids}),
            ),
            vec![
                DocChange::put(DocKind::Role, &id, Some(&role.tenant_id), text(&role))
                    .status(role.status.clone())
                    .expect(Expect::Version(stored.version)),
            ],
        )
        .await?;
    let v = w.versions[0];
    Ok(ok_json(StatusCode::OK, v, role_view(&role, v)))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Step {
    RequestReview,
    Review,
    Approve,
    Reject,
    Archive,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestBody {
    request_reason_code: String,
    #[serde(default)]
    request_reason_text: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReviewBody {
    #[serde(default)]
    review_notes: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApproveBody {
    approval_reason_code: String,
    #[serde(default)]
    approval_reason_text: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReasonBody {
    reason_code: String,
    #[serde(default)]
    reason_text: Option<String>,
}

/// A reason pair checked per ADM-7: `(code, text)`.
fn reason_of<T: DeserializeOwned>(
    body: Body,
    pick: impl FnOnce(T) -> (String, Option<String>),
    code_field: &str,
    text_field: &str,
) -> Result<(String, Option<String>), ApiError> {
    let (c, t) = pick(parse(body)?);
    check_reason(code_field, &c, text_field, t.as_deref())?;
    Ok((c, t))
}

async fn role_step(
    h: AdminHttp,
    id: String,
    headers: HeaderMap,
    body: Body,
    step: Step,
) -> ApiResult {
    let caller = h.caller(&headers).await?;
    let perm = match step {
        Step::RequestReview => "roles.write",
        Step::Review => "roles.review",
        _ => "roles.approve",
    };
    caller.require_some(perm)?;
    let (mut role, stored): (RoleDoc, _) = load(&h, &caller, DocKind::Role, &id).await?;
    let via = caller.require(perm, &Target::tenant(&role.tenant_id))?;
    let now = now_ms();
    let actor = caller.principal.subject.clone();
    let mut stamp = |k: &str, v: Value| {
        role.lifecycle.insert(k.to_owned(), v);
    };
    let (action, detail);
    match step {
        Step::RequestReview => {
            let (c, t) = reason_of(
                body,
                |b: RequestBody| (b.request_reason_code, b.request_reason_text),
                "request_reason_code",
                "request_reason_text",
            )?;
            stamp("requested_at", json!(now));
            stamp("requested_by", json!(actor));
            stamp("request_reason_code", json!(c));
            stamp("request_reason_text", json!(t));
            detail = json!({"reason_code": c, "reason_text": t});
            action = "role.request_review";
        }
        Step::Review => {
            let b: ReviewBody = parse(body)?;
            let notes = check_text("review_notes", b.review_notes)?;
            stamp("reviewed_at", json!(now));
            stamp("reviewed_by", json!(actor));
            stamp("review_notes", json!(notes));
            detail = json!({});
            action = "role.review";
        }
        Step::Approve => {
            let (c, t) = reason_of(
                body,
                |b: ApproveBody| (b.approval_reason_code, b.approval_reason_text),
                "approval_reason_code",
                "approval_reason_text",
            )?;
            stamp("approved_at", json!(now));
            stamp("approved_by", json!(actor));
            stamp("approval_reason_code", json!(c));
            stamp("approval_reason_text", json!(t));
            detail = json!({"reason_code": c, "reason_text": t});
            action = "role.approve";
        }
        Step::Reject | Step::Archive => {
            let (c, t) = reason_of(
                body,
                |b: ReasonBody| (b.reason_code, b.reason_text),
                "reason_code",
                "reason_text",
            )?;
            let (at, by, code, txt) = if step == Step::Reject {
                action = "role.reject";
                (
                    "rejected_at",
                    "rejected_by",
                    "reject_reason_code",
                    "reject_reason_text",
                )
            } else {
                action = "role.archive";
                (
                    "archived_at",
                    "archived_by",
                    "archive_reason_code",
                    "archive_reason_text",
                )
            };
            stamp(at, json!(now));
            stamp(by, json!(actor));
            stamp(code, json!(c));
            stamp(txt, json!(t));
            detail = json!({"reason_code": c, "reason_text": t});
        }
    }
    precondition(&headers, stored.version, &format!("role {id}"))?;
    let state = role.approval_state.as_deref();
    let (status, approval) = match step {
        Step::RequestReview if role.status == "draft" && state.is_none() => ("draft", "pending"),
        Step::Review if role.status == "draft" && state == Some("pending") => ("draft", "reviewed"),
        Step::Approve if role.status == "draft" && state == Some("reviewed") => {
            ("active", "approved")
        }
        Step::Approve if role.status == "draft" && !role.requires_approval => {
            ("active", "approved")
        }
        Step::Reject if role.status == "draft" && matches!(state, Some("pending" | "reviewed")) => {
            ("rejected", "rejected")
        }
        Step::Archive if role.status != "archived" => ("archived", state.unwrap_or("none")),
        _ => {
            return Err(invalid_transition(format!(
                "role `{id}` is {} (approval {}); see the role lifecycle",
                role.status,
                state.unwrap_or("none")
            )));
        }
    };
    if step == Step::Approve
        && role.requires_approval
        && (actor == role.created_by || actor == role.updated_by)
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "SEPARATION_OF_DUTIES",
            "the author or last editor of a role may not approve it (four eyes)",
        ));
    }
    role.status = status.to_owned();
    role.approval_state = (approval != "none").then(|| approval.to_owned());
    let mut detail = detail;
    detail["status"] = json!(role.status);
    detail["approval_state"] = json!(role.approval_state);
    let w = h
        .commit(
            &caller,
            &via,
            ChangeRecord::admin(action, &role.tenant_id, &id, detail),
            vec![
                DocChange::put(DocKind::Role, &id, Some(&role.tenant_id), text(&role))
                    .status(role.status.clone())
                    .expect(Expect::Version(stored.version)),
            ],
        )
        .await?;
    let v = w.versions[0];
    Ok(ok_json(StatusCode::OK, v, role_view(&role, v)))
}

async fn get_role(
    State(h): State<AdminHttp>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let caller = h.caller(&headers).await?;
    caller.require_some("roles.read")?;
    let (role, stored): (RoleDoc, _) = load(&h, &caller, DocKind::Role, &id).await?;
    caller.require("roles.read", &Target::tenant(&role.tenant_id))?;
    Ok(ok_json(
        StatusCode::OK,
        stored.version,
        role_view(&role, stored.version),
    ))
}

async fn role_versions(
    State(h): State<AdminHttp>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let caller = h.caller(&headers).await?;
    caller.require_some("roles.read")?;
    let (role, _): (RoleDoc, _) = load(&h, &caller, DocKind::Role, &id).await?;
    caller.require("roles.read", &Target::tenant(&role.tenant_id))?;
    let versions = h
        .store
        .document_versions(DocKind::Role, &id)
        .await
        .map_err(store_err)?;
    let list: Vec<Value> = versions
        .iter()
        .map(|v| {
            let doc = v
                .doc
                .as_deref()
                .and_then(|d| serde_json::from_str::<RoleDoc>(d).ok())
                .map(|r| role_view(&r, v.version));
            json!({"version_id": v.version, "status": v.status, "actor": v.actor,
                   "source": v.source, "time": v.time, "role": doc})
        })
        .collect();
    Ok(axum::Json(json!({"role_id": id, "versions": list})).into_response())
}

async fn list_roles(State(h): State<AdminHttp>, headers: HeaderMap, q: Q) -> ApiResult {
    let caller = h.caller(&headers).await?;
    caller.require_some("roles.read")?;
    let q = query(q, &["status", "tenant_id"])?;
    let tenant = caller.tenant_for(q.get("tenant_id").map(String::as_str))?;
    caller.require("roles.read", &Target::tenant(tenant))?;
    let list: Vec<Value> = h
        .store
        .documents(DocKind::Role, Some(tenant))
        .await
        .map_err(store_err)?
        .into_iter()
        .filter_map(|d| {
            let r: RoleDoc = serde_json::from_str(&d.doc).ok()?;
            q.get("status")
                .is_none_or(|s| *s == r.status)
                .then(|| role_view(&r, d.version))
        })
        .collect();
    Ok(axum::Json(json!({ "roles": list })).into_response())
}

// ---------------------------------------------------------------------------------------------
// Groups and members
// ---------------------------------------------------------------------------------------------

fn group_view(g: &GroupDoc, version: i64) -> Value {
    json!({
        "group_id": g.group_id, "version_id": version, "tenant_id": g.tenant_id,
        "group_name": g.group_name, "description": g.description, "dynamic_rule": g.dynamic_rule,
        "active_from": rfc3339(g.active_from), "active_until": opt_time(g.active_until),
        "status": g.status, "created_by": g.created_by, "created_at": rfc3339(g.created_at),
        "updated_at": rfc3339(g.updated_at),
    })
}

fn member_view(m: &MemberDoc, version: i64, now: i64) -> Value {
    json!({
        "membership_id": m.membership_id, "version_id": version, "group_id": m.group_id,
        "user_id": m.user_id, "effective_from": rfc3339(m.effective_from),
        "effective_until": opt_time(m.effective_until), "status": m.status,
        "in_force": m.in_force(now), "created_by": m.created_by,
        "created_at": rfc3339(m.created_at), "end_reason_code": m.end_reason_code,
    })
}

fn check_dynamic(d: &Option<DynamicRule>) -> Result<(), ApiError> {
    if let Some(r) = d {
        check_name("dynamic_rule.token_role", &r.token_role)?;
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupCreate {
    group_name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    dynamic_rule: Option<DynamicRule>,
    active_from: String,
    #[serde(default)]
    active_until: Option<String>,
    #[serde(default)]
    tenant_id: Option<String>,
}

async fn create_group(State(h): State<AdminHttp>, headers: HeaderMap, body: Body) -> ApiResult {
    let caller = h.caller(&headers).await?;
    caller.require_some("groups.write")?;
    let b: GroupCreate = parse(body)?;
    let tenant = caller.tenant_for(b.tenant_id.as_deref())?.to_owned();
    let via = caller.require("groups.write", &Target::tenant(&tenant))?;
    let group_name = check_name("group_name", &b.group_name)?;
    let description = check_text("description", b.description)?;
    check_dynamic(&b.dynamic_rule)?;
    let (from, until) = crate::api::window(&b.active_from, b.active_until.as_deref())?;
    let now = now_ms();
    let g = GroupDoc {
        group_id: new_id("grp"),
        tenant_id: tenant.clone(),
        group_name,
        description,
        dynamic_rule: b.dynamic_rule,
        active_from: from,
        active_until: until,
        status: "active".into(),
        created_by: caller.principal.subject.clone(),
        created_at: now,
        updated_at: now,
    };
    let w = h
        .commit(
            &caller,
            &via,
            ChangeRecord::admin(
                "group.create",
                &tenant,
                &g.group_id,
                json!({"dynamic_rule": g.dynamic_rule}),
            ),
            vec![
                DocChange::put(DocKind::Group, &g.group_id, Some(&tenant), text(&g))
                    .status("active")
                    .expect(Expect::Absent),
            ],
        )
        .await?;
    let v = w.versions[0];
    Ok(ok_json(StatusCode::CREATED, v, group_view(&g, v)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupPatch {
    #[serde(default)]
    group_name: Option<String>,
    #[serde(default)]
    description: Option<String>,
    /// `null` removes the rule.
    #[serde(default, deserialize_with = "some_or_null")]
    dynamic_rule: Option<Option<DynamicRule>>,
    #[serde(default)]
    active_until: Option<String>,
}

fn some_or_null<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

async fn patch_group(
    State(h): State<AdminHttp>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let caller = h.caller(&headers).await?;
    caller.require_some("groups.write")?;
    let (mut g, stored): (GroupDoc, _) = load(&h, &caller, DocKind::Group, &id).await?;
    let via = caller.require("groups.write", &Target::tenant(&g.tenant_id))?;
    let b: GroupPatch = parse(body)?;
    precondition(&headers, stored.version, &format!("group {id}"))?;
    if b.group_name.is_none()
        && b.description.is_none()
        && b.dynamic_rule.is_none()
        && b.active_until.is_none()
    {
        return Err(ApiError::invalid("body", "nothing to change"));
    }
    if let Some(n) = &b.group_name {
        g.group_name = check_name("group_name", n)?;
    }
    if let Some(d) = b.description {
        g.description = check_text("description", Some(d))?;
    }
    if let Some(d) = b.dynamic_rule {
        check_dynamic(&d)?;
        g.dynamic_rule = d;
    }
    if let Some(u) = &b.active_until {
        let (_, u) =
            crate::api::window(rfc3339(g.active_from).as_str().unwrap_or_default(), Some(u))?;
        g.active_until = u;
    }
    g.updated_at = now_ms();
    let w = h
        .commit(
            &caller,
            &via,
            ChangeRecord::admin(
                "group.update",
                &g.tenant_id,
                &id,
                json!({"dynamic_rule": g.dynamic_rule}),
            ),
            vec![
                DocChange::put(DocKind::Group, &id, Some(&g.tenant_id), text(&g))
                    .status(g.status.clone())
                    .expect(Expect::Version(stored.version)),
            ],
        )
        .await?;
    let v = w.versions[0];
    Ok(ok_json(StatusCode::OK, v, group_view(&g, v)))
}

async fn get_group(
    State(h): State<AdminHttp>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let caller = h.caller(&headers).await?;
    caller.require_some("roles.read")?;
    let (g, stored): (GroupDoc, _) = load(&h, &caller, DocKind::Group, &id).await?;
    caller.require("roles.read", &Target::tenant(&g.tenant_id))?;
    let now = now_ms();
    let members: Vec<Value> = h
        .store
        .documents(DocKind::GroupMember, Some(&g.tenant_id))
        .await
        .map_err(store_err)?
        .into_iter()
        .filter_map(|d| {
            let m: MemberDoc = serde_json::from_str(&d.doc).ok()?;
            (m.group_id == id).then(|| member_view(&m, d.version, now))
        })
        .collect();
    let mut v = group_view(&g, stored.version);
    v["members"] = Value::Array(members);
    Ok(ok_json(StatusCode::OK, stored.version, v))
}

async fn list_groups(State(h): State<AdminHttp>, headers: HeaderMap, q: Q) -> ApiResult {
    let caller = h.caller(&headers).await?;
    caller.require_some("roles.read")?;
    let q = query(q, &["tenant_id"])?;
    let tenant = caller.tenant_for(q.get("tenant_id").map(String::as_str))?;
    caller.require("roles.read", &Target::tenant(tenant))?;
    let list: Vec<Value> = h
        .store
        .documents(DocKind::Group, Some(tenant))
        .await
        .map_err(store_err)?
        .into_iter()
        .filter_map(|d| {
            let g: GroupDoc = serde_json::from_str(&d.doc).ok()?;
            Some(group_view(&g, d.version))
        })
        .collect();
    Ok(axum::Json(json!({ "groups": list })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MemberAdd {
    user_id: String,
    effective_from: String,
    #[serde(default)]
    effective_until: Option<String>,
}

async fn add_member(
    State(h): State<AdminHttp>,
    Path(gid): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let caller = h.caller(&headers).await?;
    caller.require_some("groups.write")?;
    let (g, _): (GroupDoc, _) = load(&h, &caller, DocKind::Group, &gid).await?;
    let via = caller.require("groups.write", &Target::tenant(&g.tenant_id))?;
    let b: MemberAdd = parse(body)?;
    let user_id = check_name("user_id", &b.user_id)?;
    let (from, until) = window_of(
        "effective_from",
        &b.effective_from,
        "effective_until",
        b.effective_until.as_deref(),
    )?;
    let now = now_ms();
    let existing: Vec<MemberDoc> = docs(&h.store, DocKind::GroupMember, &g.tenant_id)
        .await
        .map_err(store_err)?;
    if existing.iter().any(|m| {
        m.group_id == gid
            && m.user_id == user_id
            && m.status == "active"
            && m.effective_until.is_none_or(|u| u > now)
    }) {
        return Err(ApiError::conflict(
            "ALREADY_EXISTS",
            "the user already has a current membership of this group; end it first",
        ));
    }
    let m = MemberDoc {
        membership_id: new_id("mbr"),
        tenant_id: g.tenant_id.clone(),
        group_id: gid.clone(),
        user_id,
        effective_from: from,
        effective_until: until,
        status: "active".into(),
        created_by: caller.principal.subject.clone(),
        created_at: now,
        end_reason_code: None,
        end_reason_text: None,
    };
    let w = h
        .commit(
            &caller,
            &via,
            ChangeRecord::admin(
                "group.member_add",
                &g.tenant_id,
                &gid,
                json!({"membership_id": m.membership_id, "user_id": m.user_id}),
            ),
            vec![
                DocChange::put(
                    DocKind::GroupMember,
                    &m.membership_id,
                    Some(&g.tenant_id),
                    text(&m),
                )
                .status("active")
                .expect(Expect::Absent),
            ],
        )
        .await?;
    let v = w.versions[0];
    Ok(ok_json(StatusCode::CREATED, v, member_view(&m, v, now)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MemberEnd {
    effective_until: String,
    reason_code: String,
    #[serde(default)]
    reason_text: Option<String>,
}

async fn end_member(
    State(h): State<AdminHttp>,
    Path((gid, uid)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let caller = h.caller(&headers).await?;
    caller.require_some("groups.write")?;
    let (g, _): (GroupDoc, _) = load(&h, &caller, DocKind::Group, &gid).await?;
    let via = caller.require("groups.write", &Target::tenant(&g.tenant_id))?;
    let b: MemberEnd = parse(body)?;
    check_reason(
        "reason_code",
        &b.reason_code,
        "reason_text",
        b.reason_text.as_deref(),
    )?;
    let until = instant("effective_until", &b.effective_until)?;
    let now = now_ms();
    let current = h
        .store
        .documents(DocKind::GroupMember, Some(&g.tenant_id))
        .await
        .map_err(store_err)?
        .into_iter()
        .filter_map(|d| {
            let m: MemberDoc = serde_json::from_str(&d.doc).ok()?;
            (m.group_id == gid
                && m.user_id == uid
                && m.status == "active"
                && m.effective_until.is_none_or(|u| u > now))
            .then_some((m, d.version))
        })
        .next();
    let Some((mut m, version)) = current else {
        return Err(ApiError::not_found(
            "no current membership of this user in this group",
        ));
    };
    precondition(
        &headers,
        version,
        &format!("membership {}", m.membership_id),
    )?;
    if until <= m.effective_from {
        return Err(ApiError::invalid(
            "effective_until",
            "must be after the membership's effective_from",
        ));
    }
    m.effective_until = Some(until);
    if until <= now {
        m.status = "ended".into();
    }
    m.end_reason_code = Some(b.reason_code.clone());
    m.end_reason_text = b.reason_text.clone();
    let w = h
        .commit(
            &caller,
            &via,
            ChangeRecord::admin(
                "group.member_end",
                &g.tenant_id,
                &gid,
                json!({"membership_id": m.membership_id, "user_id": m.user_id,
                       "reason_code": b.reason_code, "reason_text": b.reason_text}),
            ),
            vec![
                DocChange::put(
                    DocKind::GroupMember,
                    &m.membership_id,
                    Some(&g.tenant_id),
                    text(&m),
                )
                .status(m.status.clone())
                .expect(Expect::Version(version)),
            ],
        )
        .await?;
    let v = w.versions[0];
    Ok(ok_json(StatusCode::OK, v, member_view(&m, v, now)))
}

// ---------------------------------------------------------------------------------------------
// Role assignments
// ---------------------------------------------------------------------------------------------

fn assignment_view(a: &AssignmentDoc, version: i64) -> Value {
    let mut v = json!({
        "assignment_id": a.assignment_id, "version_id": version, "tenant_id": a.tenant_id,
        "subject_type": a.subject_type, "role_id": a.role_id, "scope": a.scope,
        "effective_from": rfc3339(a.effective_from), "effective_until": opt_time(a.effective_until),
        "status": a.status, "created_by": a.created_by, "created_at": rfc3339(a.created_at),
        "revoked_at": opt_time(a.revoked_at), "revoke_reason_code": a.revoke_reason_code,
    });
    let key = if a.subject_type == "group" {
        "group_id"
    } else {
        "user_id"
    };
    v[key] = json!(a.subject_id);
    v
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AssignBody {
    role_id: String,
    scope: Scope,
    effective_from: String,
    #[serde(default)]
    effective_until: Option<String>,
}

async fn assign_user(
    State(h): State<AdminHttp>,
    Path(uid): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    assign(h, "user", uid, headers, body).await
}

async fn assign_group(
    State(h): State<AdminHttp>,
    Path(gid): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    assign(h, "group", gid, headers, body).await
}

async fn assign(
    h: AdminHttp,
    subject_type: &str,
    subject_id: String,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let caller = h.caller(&headers).await?;
    caller.require_some("assignments.write")?;
    let b: AssignBody = parse(body)?;
    let tenant = caller.tenant_for(b.scope.tenant_id.as_deref())?.to_owned();
    let via = caller.require("assignments.write", &Target::tenant(&tenant))?;
    let subject_id = check_name(&format!("{subject_type}_id"), &subject_id)?;
    if subject_type == "group" {
        let g = h
            .store
            .document(DocKind::Group, &subject_id)
            .await
            .map_err(store_err)?;
        if g.is_none_or(|g| g.tenant.as_deref() != Some(tenant.as_str())) {
            return Err(ApiError::not_found(format!("no group `{subject_id}`")));
        }
    }
    let role = h
        .store
        .document(DocKind::Role, &b.role_id)
        .await
        .map_err(store_err)?;
    let role: RoleDoc = match role {
        Some(d) if d.tenant.as_deref() == Some(tenant.as_str()) => {
            serde_json::from_str(&d.doc).map_err(|e| ApiError::unavailable("policy store", &e))?
        }
        _ => return Err(ApiError::invalid("role_id", "no such role in this tenant")),
    };
    if role.status != "active" {
        return Err(ApiError {
            field: Some("role_id".into()),
            ..ApiError::conflict(
                "ROLE_NOT_ACTIVE",
                format!("role `{}` is {}", role.role_id, role.status),
            )
        });
    }
    let scope = Scope {
        tenant_id: Some(tenant.clone()),
        ..b.scope
    };
    let needed = match role.scope_type.as_str() {
        "vertical" => scope.vertical_id.is_none().then_some("scope.vertical_id"),
        "geo" => scope.geo_id.is_none().then_some("scope.geo_id"),
        "program" => scope.program_id.is_none().then_some("scope.program_id"),
        _ => None,
    };
    if let Some(f) = needed {
        return Err(ApiError::invalid(
            f,
            format!("role of scope_type {} needs it", role.scope_type),
        ));
    }
    let verticals: Vec<String> = scope.vertical_id.iter().cloned().collect();
    let target = Target {
        tenant: &tenant,
        verticals: &verticals,
        geo: scope.geo_id.as_deref(),
        program: scope.program_id.as_deref(),
    };
    if let Some(p) = role.permission_ids.iter().find(|p| !caller.may(p, &target)) {
        return Err(ApiError::forbidden(format!(
            "granting this role needs holding its permission `{p}` over that scope yourself"
        )));
    }
    let (from, until) = window_of(
        "effective_from",
        &b.effective_from,
        "effective_until",
        b.effective_until.as_deref(),
    )?;
    let now = now_ms();
    let a = AssignmentDoc {
        assignment_id: new_id("asg"),
        tenant_id: tenant.clone(),
        subject_type: subject_type.into(),
        subject_id,
        role_id: role.role_id.clone(),
        scope,
        effective_from: from,
        effective_until: until,
        status: "active".into(),
        created_by: caller.principal.subject.clone(),
        created_at: now,
        revoked_at: None,
        revoked_by: None,
        revoke_reason_code: None,
        revoke_reason_text: None,
    };
    let w = h
        .commit(
            &caller,
            &via,
            ChangeRecord::admin(
                "role_assignment.grant",
                &tenant,
                &a.assignment_id,
                json!({"subject_type": a.subject_type, "subject_id": a.subject_id,
                       "role_id": a.role_id, "scope": a.scope}),
            ),
            vec![
                DocChange::put(
                    DocKind::RoleAssignment,
                    &a.assignment_id,
                    Some(&tenant),
                    text(&a),
                )
                .status("active")
                .expect(Expect::Absent),
            ],
        )
        .await?;
    let v = w.versions[0];
    Ok(ok_json(StatusCode::CREATED, v, assignment_view(&a, v)))
}

async fn revoke_assignment(
    State(h): State<AdminHttp>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let caller = h.caller(&headers).await?;
    caller.require_some("assignments.write")?;
    let (mut a, stored): (AssignmentDoc, _) =
        load(&h, &caller, DocKind::RoleAssignment, &id).await?;
    let via = caller.require("assignments.write", &Target::tenant(&a.tenant_id))?;
    let b: ReasonBody = parse(body)?;
    check_reason(
        "reason_code",
        &b.reason_code,
        "reason_text",
        b.reason_text.as_deref(),
    )?;
    precondition(&headers, stored.version, &format!("role assignment {id}"))?;
    if a.status != "active" {
        return Err(invalid_transition(format!(
            "role assignment `{id}` is {}",
            a.status
        )));
    }
    let now = now_ms();
    a.status = "revoked".into();
    a.revoked_at = Some(now);
    a.revoked_by = Some(caller.principal.subject.clone());
    a.revoke_reason_code = Some(b.reason_code.clone());
    a.revoke_reason_text = b.reason_text.clone();
    let w = h
        .commit(
            &caller,
            &via,
            ChangeRecord::admin(
                "role_assignment.revoke",
                &a.tenant_id,
                &id,
                json!({"reason_code": b.reason_code, "reason_text": b.reason_text}),
            ),
            vec![
                DocChange::put(DocKind::RoleAssignment, &id, Some(&a.tenant_id), text(&a))
                    .status("revoked")
                    .expect(Expect::Version(stored.version)),
            ],
        )
        .await?;
    let v = w.versions[0];
    Ok(ok_json(StatusCode::OK, v, assignment_view(&a, v)))
}

async fn get_assignment(
    State(h): State<AdminHttp>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let caller = h.caller(&headers).await?;
    caller.require_some("roles.read")?;
    let (a, stored): (AssignmentDoc, _) = load(&h, &caller, DocKind::RoleAssignment, &id).await?;
    caller.require("roles.read", &Target::tenant(&a.tenant_id))?;
    Ok(ok_json(
        StatusCode::OK,
        stored.version,
        assignment_view(&a, stored.version),
    ))
}

async fn list_assignments(State(h): State<AdminHttp>, headers: HeaderMap, q: Q) -> ApiResult {
    let caller = h.caller(&headers).await?;
    caller.require_some("roles.read")?;
    let q = query(
        q,
        &[
            "tenant_id",
            "subject_type",
            "subject_id",
            "role_id",
            "status",
        ],
    )?;
    let tenant = caller.tenant_for(q.get("tenant_id").map(String::as_str))?;
    caller.require("roles.read", &Target::tenant(tenant))?;
    let f = |k: &str, v: &str| q.get(k).is_none_or(|x| x == v);
    let list: Vec<Value> = h
        .store
        .documents(DocKind::RoleAssignment, Some(tenant))
        .await
        .map_err(store_err)?
        .into_iter()
        .filter_map(|d| {
            let a: AssignmentDoc = serde_json::from_str(&d.doc).ok()?;
            (f("subject_type", &a.subject_type)
                && f("subject_id", &a.subject_id)
                && f("role_id", &a.role_id)
                && f("status", &a.status))
            .then(|| assignment_view(&a, d.version))
        })
        .collect();
    Ok(axum::Json(json!({ "role_assignments": list })).into_response())
}

// ---------------------------------------------------------------------------------------------
// Deny rules
// ---------------------------------------------------------------------------------------------

fn deny_view(d: &DenyRule, stored: &StoredDoc) -> Value {
    json!({
        "deny_id": d.id, "version_id": stored.version, "tenant_id": d.tenant,
        "subject_type": d.subject_type.map(|s| s.as_str()).or(d.integration.as_ref().map(|_| "integration")),
        "subject_id": d.subject_id.as_ref().or(d.integration.as_ref()),
        "action": d.action.as_deref().unwrap_or("*"), "resource": d.resource.as_deref().unwrap_or("*"),
        "scope": {"tenant_id": d.tenant, "geo_id": d.geo, "vertical_id": d.vertical, "program_id": d.program},
        "oauth_scope": d.scope,
        "active_from": d.active_from, "active_until": d.active_until,
        "status": d.status.as_str(), "reason_code": d.reason_code, "reason": d.reason,
        "created_at": stored.created_at, "updated_at": stored.updated_at, "source": stored.source,
        "revoked_at": d.revoked_at, "revoke_reason_code": d.revoke_reason_code,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DenyCreate {
    subject_type: DenySubject,
    subject_id: String,
    action: String,
    resource: String,
    scope: Scope,
    active_from: String,
    #[serde(default)]
    active_until: Option<String>,
    reason_code: String,
    #[serde(default)]
    reason_text: Option<String>,
}

async fn create_deny(State(h): State<AdminHttp>, headers: HeaderMap, body: Body) -> ApiResult {
    let caller = h.caller(&headers).await?;
    caller.require_some("deny_rules.write")?;
    let b: DenyCreate = parse(body)?;
    let tenant = caller.tenant_for(b.scope.tenant_id.as_deref())?.to_owned();
    let via = caller.require("deny_rules.write", &Target::tenant(&tenant))?;
    let subject_id = check_name("subject_id", &b.subject_id)?;
    let action = check_name("action", &b.action)?;
    let resource = check_name("resource", &b.resource)?;
    if b.subject_type == DenySubject::Integration
        && !matches!(action.as_str(), "read" | "write" | "*")
    {
        return Err(ApiError::invalid(
            "action",
            "partner traffic rules take read, write or *",
        ));
    }
    check_reason(
        "reason_code",
        &b.reason_code,
        "reason_text",
        b.reason_text.as_deref(),
    )?;
    let (from, until) = crate::api::window(&b.active_from, b.active_until.as_deref())?;
    match b.subject_type {
        DenySubject::Integration => {
            let known = h
                .engine
                .snapshot()
                .load_full()
                .as_ref()
                .as_ref()
                .and_then(|s| {
                    s.integrations
                        .get(&subject_id)
                        .map(|i| i.integration.tenant == tenant)
                });
            if known != Some(true) {
                return Err(ApiError::invalid(
                    "subject_id",
                    "no such integration in this tenant",
                ));
            }
        }
        DenySubject::Group => {
            let g = h
                .store
                .document(DocKind::Group, &subject_id)
                .await
                .map_err(store_err)?;
            if g.is_none_or(|g| g.tenant.as_deref() != Some(tenant.as_str())) {
                return Err(ApiError::invalid(
                    "subject_id",
                    "no such group in this tenant",
                ));
            }
        }
        DenySubject::User | DenySubject::Role => {}
    }
    let star = |s: String| (s != "*").then_some(s);
    let reason = b
        .reason_text
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .unwrap_or_else(|| b.reason_code.clone());
    let rule = DenyRule {
        id: new_id("deny"),
        tenant: tenant.clone(),
        integration: (b.subject_type == DenySubject::Integration).then(|| subject_id.clone()),
        action: star(action),
        resource: star(resource),
        scope: None,
        vertical: b.scope.vertical_id.clone(),
        reason,
        subject_type: Some(b.subject_type),
        subject_id: Some(subject_id),
        geo: b.scope.geo_id.clone(),
        program: b.scope.program_id.clone(),
        active_from: rfc3339(from).as_str().map(str::to_owned),
        active_until: until
            .map(rfc3339)
            .and_then(|v| v.as_str().map(str::to_owned)),
        status: DenyStatus::Active,
        reason_code: Some(b.reason_code.clone()),
        revoked_at: None,
        revoke_reason_code: None,
        revoke_reason_text: None,
    };
    h.commit(
        &caller,
        &via,
        ChangeRecord::admin(
            "deny_rule.create",
            &tenant,
            &rule.id,
            json!({"subject_type": b.subject_type.as_str(), "subject_id": rule.subject_id,
                   "action": rule.action, "resource": rule.resource,
                   "reason_code": b.reason_code, "reason_text": b.reason_text}),
        ),
        vec![
            DocChange::put(DocKind::DenyRule, &rule.id, Some(&tenant), text(&rule))
                .status("active")
                .expect(Expect::Absent),
        ],
    )
    .await?;
    let stored = h
        .store
        .document(DocKind::DenyRule, &rule.id)
        .await
        .map_err(store_err)?
        .ok_or_else(|| ApiError::not_found("the deny rule vanished"))?;
    Ok(ok_json(
        StatusCode::CREATED,
        stored.version,
        deny_view(&rule, &stored),
    ))
}

async fn revoke_deny(
    State(h): State<AdminHttp>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let caller = h.caller(&headers).await?;
    caller.require_some("deny_rules.write")?;
    let (mut d, stored): (DenyRule, _) = load(&h, &caller, DocKind::DenyRule, &id).await?;
    let via = caller.require("deny_rules.write", &Target::tenant(&d.tenant))?;
    let b: ReasonBody = parse(body)?;
    check_reason(
        "reason_code",
        &b.reason_code,
        "reason_text",
        b.reason_text.as_deref(),
    )?;
    precondition(&headers, stored.version, &format!("deny rule {id}"))?;
    if d.status != DenyStatus::Active {
        return Err(invalid_transition(format!(
            "deny rule `{id}` is already revoked"
        )));
    }
    d.status = DenyStatus::Revoked;
    d.revoked_at = rfc3339(now_ms()).as_str().map(str::to_owned);
    d.revoke_reason_code = Some(b.reason_code.clone());
    d.revoke_reason_text = b.reason_text.clone();
    h.commit(
        &caller,
        &via,
        ChangeRecord::admin(
            "deny_rule.revoke",
            &d.tenant,
            &id,
            json!({"reason_code": b.reason_code, "reason_text": b.reason_text}),
        ),
        vec![
            DocChange::put(DocKind::DenyRule, &id, Some(&d.tenant), text(&d))
                .status("revoked")
                .expect(Expect::Version(stored.version)),
        ],
    )
    .await?;
    let stored = h
        .store
        .document(DocKind::DenyRule, &id)
        .await
        .map_err(store_err)?
        .ok_or_else(|| ApiError::not_found("the deny rule vanished"))?;
    Ok(ok_json(
        StatusCode::OK,
        stored.version,
        deny_view(&d, &stored),
    ))
}

async fn get_deny(
    State(h): State<AdminHttp>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let caller = h.caller(&headers).await?;
    caller.require_some("deny_rules.read")?;
    let (d, stored): (DenyRule, _) = load(&h, &caller, DocKind::DenyRule, &id).await?;
    caller.require("deny_rules.read", &Target::tenant(&d.tenant))?;
    Ok(ok_json(
        StatusCode::OK,
        stored.version,
        deny_view(&d, &stored),
    ))
}

async fn list_denies(State(h): State<AdminHttp>, headers: HeaderMap, q: Q) -> ApiResult {
    let caller = h.caller(&headers).await?;
    caller.require_some("deny_rules.read")?;
    let q = query(q, &["tenant_id", "status", "subject_type", "subject_id"])?;
    let tenant = caller.tenant_for(q.get("tenant_id").map(String::as_str))?;
    caller.require("deny_rules.read", &Target::tenant(tenant))?;
    let list: Vec<Value> = h
        .store
        .documents(DocKind::DenyRule, Some(tenant))
        .await
        .map_err(store_err)?
        .into_iter()
        .filter_map(|s| {
            let d: DenyRule = serde_json::from_str(&s.doc).ok()?;
            let v = deny_view(&d, &s);
            let keep = ["status", "subject_type", "subject_id"]
                .iter()
                .all(|k| q.get(*k).is_none_or(|x| v[*k].as_str() == Some(x.as_str())));
            keep.then_some(v)
        })
        .collect();
    Ok(axum::Json(json!({ "deny_rules": list })).into_response())
}

// ---------------------------------------------------------------------------------------------
// Evaluate
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EvaluateBody {
    subject_id: String,
    action: String,
    resource: String,
    scope: Scope,
    #[serde(default)]
    context: Option<Value>,
}

async fn evaluate(State(h): State<AdminHttp>, headers: HeaderMap, body: Body) -> ApiResult {
    let caller = h.caller(&headers).await?;
    caller.require_some("authz.evaluate")?;
    let b: EvaluateBody = parse(body)?;
    let tenant = caller.tenant_for(b.scope.tenant_id.as_deref())?.to_owned();
    caller.require("authz.evaluate", &Target::tenant(&tenant))?;
    let subject = check_name("subject_id", &b.subject_id)?;
    let action = check_name("action", &b.action)?;
    let resource = check_name("resource", &b.resource)?;
    if b.context.as_ref().is_some_and(|c| !c.is_object()) {
        return Err(ApiError::invalid("context", "must be a JSON object"));
    }
    let now = now_ms();
    let facts = subject_facts(&h.store, &tenant, &subject, &[], now)
        .await
        .map_err(store_err)?;
    let verticals: Vec<String> = b.scope.vertical_id.iter().cloned().collect();
    let target = Target {
        tenant: &tenant,
        verticals: &verticals,
        geo: b.scope.geo_id.as_deref(),
        program: b.scope.program_id.as_deref(),
    };
    let mut reasons: Vec<String> = Vec::new();
    let grants: Vec<&Grant> = facts
        .grants
        .iter()
        .filter(|g| {
            permission(&g.permission)
                .is_some_and(|p| (p.action == action || p.id == action) && p.resource == resource)
                && g.scope.covers(&target)
        })
        .collect();
    for g in &grants {
        let r = format!("grant:{}", g.via);
        if !reasons.contains(&r) {
            reasons.push(r);
        }
    }
    if grants.is_empty() {
        reasons.push("no_grant".into());
    }
    let perm_id = PERMISSIONS
        .iter()
        .find(|p| p.action == action && p.resource == resource)
        .map(|p| p.id);
    let applied: Vec<String> = denies_for(&h.engine, &tenant, &subject, &facts, &[], now)
        .into_iter()
        .filter(|d| {
            deny_matches(
                d,
                &action,
                perm_id.or(Some(action.as_str())),
                &resource,
                &target,
            )
        })
        .map(|d| d.id)
        .collect();
    for d in &applied {
        reasons.push(format!("deny_rule:{d}"));
    }
    let mut masked: Vec<String> = Vec::new();
    let mut pack_allows = true;
    if let Some(v) = &b.scope.vertical_id {
        let snap = h.engine.snapshot().load_full();
        if let Some(snap) = snap.as_ref() {
            let req = crate::policy::cedar::PackRequest {
                principal_type: "User",
                principal_id: &subject,
                action: &action,
                resource: &resource,
                tenant: &tenant,
                vertical: v,
                context: b.context.clone().unwrap_or_else(|| json!({})),
                now_ms: now,
            };
            if let Some(p) = snap.packs.evaluate(&req) {
                pack_allows = p.allowed;
                if p.reasons.is_empty() && !p.allowed {
                    reasons.push(format!("policy:{}", p.pack_id));
                }
                reasons.extend(p.reasons.iter().map(|r| format!("policy:{r}")));
                masked.extend(p.masked_fields);
            }
        }
    }
    masked.sort();
    masked.dedup();
    let allow = !grants.is_empty() && applied.is_empty() && pack_allows;
    Ok(axum::Json(json!({
        "subject_id": subject,
        "decision": if allow { "allow" } else { "deny" },
        "reasons": reasons,
        "applied_denies": applied,
        "masked_fields": masked,
        "evaluated_at": rfc3339(now),
    }))
    .into_response())
}

// ---------------------------------------------------------------------------------------------
// Router and OpenAPI
// ---------------------------------------------------------------------------------------------

/// The roles, groups, assignments, deny-rule and evaluate routes (see the module table).
pub fn routes() -> Router<AdminHttp> {
    macro_rules! step {
        ($s:expr) => {
            post(
                |State(h): State<AdminHttp>,
                 Path(id): Path<String>,
                 headers: HeaderMap,
                 body: Body| async move { role_step(h, id, headers, body, $s).await },
            )
        };
    }
    Router::new()
        .route("/v1/permissions", get(list_permissions))
        .route("/v1/roles", post(create_role).get(list_roles))
        .route("/v1/roles/{role_id}", get(get_role).patch(patch_role))
        .route("/v1/roles/{role_id}/versions", get(role_versions))
        .route(
            "/v1/roles/{role_id}/request-review",
            step!(Step::RequestReview),
        )
        .route("/v1/roles/{role_id}/review", step!(Step::Review))
        .route("/v1/roles/{role_id}/approve", step!(Step::Approve))
        .route("/v1/roles/{role_id}/reject", step!(Step::Reject))
        .route("/v1/roles/{role_id}/archive", step!(Step::Archive))
        .route("/v1/groups", post(create_group).get(list_groups))
        .route("/v1/groups/{group_id}", get(get_group).patch(patch_group))
        .route("/v1/groups/{group_id}/members", post(add_member))
        .route(
            "/v1/groups/{group_id}/members/{user_id}/end",
            post(end_member),
        )
        .route("/v1/groups/{group_id}/roles", post(assign_group))
        .route("/v1/users/{user_id}/roles", post(assign_user))
        .route("/v1/role-assignments", get(list_assignments))
        .route("/v1/role-assignments/{assignment_id}", get(get_assignment))
        .route(
            "/v1/role-assignments/{assignment_id}/revoke",
            post(revoke_assignment),
        )
        .route("/v1/deny-rules", post(create_deny).get(list_denies))
        .route("/v1/deny-rules/{deny_id}", get(get_deny))
        .route("/v1/deny-rules/{deny_id}/revoke", post(revoke_deny))
        .route("/v1/authz/evaluate", post(evaluate))
}

/// `(path, method, permission, summary, request body fields)` of every route, for OpenAPI.
const OPS: &[(&str, &str, &str, &str, &[&str])] = &[
    (
        "/v1/permissions",
        "get",
        "roles.read",
        "The permission catalog (query: scope_type, status)",
        &[],
    ),
    (
        "/v1/roles",
        "post",
        "roles.write",
        "Create a draft role",
        &[
            "role_name",
            "description",
            "scope_type",
            "permission_ids",
            "active_from",
            "active_until",
            "requires_approval",
            "tenant_id",
        ],
    ),
    (
        "/v1/roles",
        "get",
        "roles.read",
        "List roles (query: status, tenant_id)",
        &[],
    ),
    (
        "/v1/roles/{role_id}",
        "get",
        "roles.read",
        "One role (ETag = version_id)",
        &[],
    ),
    (
        "/v1/roles/{role_id}",
        "patch",
        "roles.write",
        "Edit a role (If-Match)",
        &[
            "role_name",
            "description",
            "permission_ids",
            "active_from",
            "active_until",
        ],
    ),
    (
        "/v1/roles/{role_id}/versions",
        "get",
        "roles.read",
        "Every version of a role",
        &[],
    ),
    (
        "/v1/roles/{role_id}/request-review",
        "post",
        "roles.write",
        "Request review: approval_state pending",
        &["request_reason_code", "request_reason_text"],
    ),
    (
        "/v1/roles/{role_id}/review",
        "post",
        "roles.review",
        "Review: approval_state reviewed",
        &["review_notes"],
    ),
    (
        "/v1/roles/{role_id}/approve",
        "post",
        "roles.approve",
        "Approve: status active (four eyes)",
        &["approval_reason_code", "approval_reason_text"],
    ),
    (
        "/v1/roles/{role_id}/reject",
        "post",
        "roles.approve",
        "Reject",
        &["reason_code", "reason_text"],
    ),
    (
        "/v1/roles/{role_id}/archive",
        "post",
        "roles.approve",
        "Archive (immutable afterwards)",
        &["reason_code", "reason_text"],
    ),
    (
        "/v1/groups",
        "post",
        "groups.write",
        "Create a group",
        &[
            "group_name",
            "description",
            "dynamic_rule",
            "active_from",
            "active_until",
            "tenant_id",
        ],
    ),
    ("/v1/groups", "get", "roles.read", "List groups", &[]),
    (
        "/v1/groups/{group_id}",
        "get",
        "roles.read",
        "One group with its memberships",
        &[],
    ),
    (
        "/v1/groups/{group_id}",
        "patch",
        "groups.write",
        "Edit a group (If-Match)",
        &["group_name", "description", "dynamic_rule", "active_until"],
    ),
    (
        "/v1/groups/{group_id}/members",
        "post",
        "groups.write",
        "Add a member",
        &["user_id", "effective_from", "effective_until"],
    ),
    (
        "/v1/groups/{group_id}/members/{user_id}/end",
        "post",
        "groups.write",
        "End a membership",
        &["effective_until", "reason_code", "reason_text"],
    ),
    (
        "/v1/groups/{group_id}/roles",
        "post",
        "assignments.write",
        "Assign a role to a group",
        &["role_id", "scope", "effective_from", "effective_until"],
    ),
    (
        "/v1/users/{user_id}/roles",
        "post",
        "assignments.write",
        "Assign a role to a user",
        &["role_id", "scope", "effective_from", "effective_until"],
    ),
    (
        "/v1/role-assignments",
        "get",
        "roles.read",
        "List role assignments (query: subject_type, subject_id, role_id, status)",
        &[],
    ),
    (
        "/v1/role-assignments/{assignment_id}",
        "get",
        "roles.read",
        "One role assignment",
        &[],
    ),
    (
        "/v1/role-assignments/{assignment_id}/revoke",
        "post",
        "assignments.write",
        "Revoke a role assignment",
        &["reason_code", "reason_text"],
    ),
    (
        "/v1/deny-rules",
        "post",
        "deny_rules.write",
        "Create a deny rule (enforced immediately on this replica, ADM-3)",
        &[
            "subject_type",
            "subject_id",
            "action",
            "resource",
            "scope",
            "active_from",
            "active_until",
            "reason_code",
            "reason_text",
        ],
    ),
    (
        "/v1/deny-rules",
        "get",
        "deny_rules.read",
        "List deny rules (query: status, subject_type, subject_id)",
        &[],
    ),
    (
        "/v1/deny-rules/{deny_id}",
        "get",
        "deny_rules.read",
        "One deny rule",
        &[],
    ),
    (
        "/v1/deny-rules/{deny_id}/revoke",
        "post",
        "deny_rules.write",
        "Revoke a deny rule",
        &["reason_code", "reason_text"],
    ),
    (
        "/v1/authz/evaluate",
        "post",
        "authz.evaluate",
        "Evaluate: decision, reasons, applied_denies, masked_fields",
        &["subject_id", "action", "resource", "scope", "context"],
    ),
];

/// OpenAPI path items of [`routes`]: `(path, item)`.
pub fn openapi_paths() -> Vec<(String, Value)> {
    let mut items: Vec<(String, serde_json::Map<String, Value>)> = Vec::new();
    for (path, method, perm, summary, fields) in OPS {
        let mut op = json!({
            "summary": summary,
            "description": format!("Needs the permission `{perm}`."),
            "responses": {
                "200": {"description": "OK (creates: 201; ETag = version_id)"},
                "400": {"description": "INVALID_REQUEST with the field at fault"},
                "401": {"description": "UNAUTHENTICATED"},
                "403": {"description": "FORBIDDEN, SEPARATION_OF_DUTIES"},
                "404": {"description": "NOT_FOUND"},
                "409": {"description": "INVALID_TRANSITION, ALREADY_EXISTS, ARCHIVED, ROLE_NOT_ACTIVE"},
                "412": {"description": "PRECONDITION_FAILED (If-Match)"},
                "503": {"description": "AUDIT_UNAVAILABLE, DEPENDENCY_UNAVAILABLE"},
            },
        });
        let params: Vec<Value> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|p| json!({"name": p, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        if !params.is_empty() {
            op["parameters"] = Value::Array(params);
        }
        if !fields.is_empty() {
            let props: serde_json::Map<String, Value> = fields
                .iter()
                .map(|f| ((*f).to_owned(), json!({})))
                .collect();
            op["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": {
                "type": "object", "additionalProperties": false, "properties": props}}}});
        }
        match items.iter_mut().find(|(p, _)| p == path) {
            Some((_, m)) => {
                m.insert((*method).to_owned(), op);
            }
            None => {
                let mut m = serde_json::Map::new();
                m.insert((*method).to_owned(), op);
                items.push(((*path).to_owned(), m));
            }
        }
    }
    items
        .into_iter()
        .map(|(p, m)| (p, Value::Object(m)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(action: Option<&str>, vertical: Option<&str>) -> DenyRule {
        serde_json::from_value(json!({
            "id": "d", "tenant": "ke", "reason": "r", "subject_type": "user", "subject_id": "u",
            "action": action, "resource": "integration", "vertical": vertical,
        }))
        .unwrap()
    }

    // ADM-3
    #[test]
    fn deny_matches_permission_action_or_id_and_scope() {
        let v = vec!["health".to_owned()];
        let t = Target::verticals("ke", &v);
        assert!(deny_blocks(
            &rule(Some("approve"), None),
            "integrations.approve",
            &t
        ));
        assert!(deny_blocks(
            &rule(Some("integrations.approve"), None),
            "integrations.approve",
            &t
        ));
        assert!(deny_blocks(
            &rule(None, Some("health")),
            "integrations.read",
            &t
        ));
        assert!(!deny_blocks(
            &rule(None, Some("education")),
            "integrations.read",
            &t
        ));
        assert!(!deny_blocks(
            &rule(Some("approve"), None),
            "integrations.read",
            &t
        ));
        assert!(
            !deny_blocks(&rule(None, None), "roles.read", &t),
            "other resource"
        );
        assert!(!deny_blocks(
            &rule(None, None),
            "integrations.read",
            &Target::tenant("ug")
        ));
        // A vertical rule applies to tenant-wide targets (fail closed).
        assert!(deny_blocks(
            &rule(None, Some("health")),
            "integrations.read",
            &Target::tenant("ke")
        ));
    }

    // ADM-3
    #[test]
    fn deny_rule_window_and_status() {
        let mut d = rule(None, None);
        d.active_from = Some("2026-01-01T00:00:00Z".into());
        d.active_until = Some("2026-02-01T00:00:00Z".into());
        let jan = 1_768_000_000_000; // 2026-01-09
        assert!(d.in_force(jan));
        assert!(!d.in_force(1_760_000_000_000));
        assert!(!d.in_force(1_780_000_000_000));
        d.status = DenyStatus::Revoked;
        assert!(!d.in_force(jan));
    }

    // ADM-6
    #[test]
    fn openapi_has_every_route() {
        let paths = openapi_paths();
        assert_eq!(paths.len(), 22);
        assert!(
            paths
                .iter()
                .any(|(p, i)| p == "/v1/roles" && i["post"].is_object() && i["get"].is_object())
        );
    }
}
