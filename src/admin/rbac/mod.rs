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
//! | `POST /v1/deny-rules/{id}/enforce` | `deny_rules.write` | promote a shadow rule (`mode: shadow`, issue 16) to enforcement: ADM-7 reason, `If-Match`, audited `deny_rule.enforce` |
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

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;
use utoipa_axum::routes;

use super::auth::AdminPrincipal;
use super::http::{
    AdminHttp, ApproveBody, ChangeRecord, Grant, Opened, PERMISSIONS, ReasonBody, RequestBody,
    Resource, ReviewBody, Scope, Target, check_reason, permission,
};
use crate::api::openapi::ApiRouter;
use crate::api::{
    ApiError, ApiResult, ErrorCode, instant, now_ms, opt_time, parse, precondition, rfc3339,
    store_unavailable,
};
use crate::pipeline::Engine;
use crate::policy::{DenyRule, DenyStatus, DenySubject, Mode};
use crate::store::{DocChange, DocKind, Expect, Store, StoredDoc};

mod assignments;
mod denies;
mod evaluate;
mod groups;
mod roles;

use assignments::*;
use denies::*;
use evaluate::*;
use groups::*;
use roles::*;

type Body = Result<Bytes, BytesRejection>;
type Q = crate::api::QueryParams;

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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
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
        .filter(|d| d.in_force(now) && d.mode.is_enforce())
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

impl Resource for RoleDoc {
    const KIND: DocKind = DocKind::Role;
    const NOUN: &'static str = "role";
    fn target(&self) -> Target<'_> {
        Target::tenant(&self.tenant_id)
    }
}

impl Resource for GroupDoc {
    const KIND: DocKind = DocKind::Group;
    const NOUN: &'static str = "group";
    fn target(&self) -> Target<'_> {
        Target::tenant(&self.tenant_id)
    }
}

impl Resource for AssignmentDoc {
    const KIND: DocKind = DocKind::RoleAssignment;
    const NOUN: &'static str = "role assignment";
    fn target(&self) -> Target<'_> {
        Target::tenant(&self.tenant_id)
    }
}

impl Resource for DenyRule {
    const KIND: DocKind = DocKind::DenyRule;
    const NOUN: &'static str = "deny rule";
    fn target(&self) -> Target<'_> {
        Target::tenant(&self.tenant)
    }
}

// ---------------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------------

fn new_id(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7())
}

fn text<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn invalid_transition(msg: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidTransition, msg)
}

fn ok_json(status: StatusCode, version: i64, body: Value) -> Response {
    crate::api::with_etag(status, version, body)
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

// ---------------------------------------------------------------------------------------------
// Router and OpenAPI
// ---------------------------------------------------------------------------------------------

/// The roles, groups, assignments, deny-rule and evaluate routes (see the module table), with
/// their OpenAPI operations.
pub fn routes() -> ApiRouter<AdminHttp> {
    ApiRouter::new()
        .routes(routes!(list_permissions))
        .routes(routes!(create_role, list_roles))
        .routes(routes!(get_role, patch_role))
        .routes(routes!(role_versions))
        .routes(routes!(request_review_role))
        .routes(routes!(review_role))
        .routes(routes!(approve_role))
        .routes(routes!(reject_role))
        .routes(routes!(archive_role))
        .routes(routes!(create_group, list_groups))
        .routes(routes!(get_group, patch_group))
        .routes(routes!(add_member))
        .routes(routes!(end_member))
        .routes(routes!(assign_group))
        .routes(routes!(assign_user))
        .routes(routes!(list_assignments))
        .routes(routes!(get_assignment))
        .routes(routes!(revoke_assignment))
        .routes(routes!(create_deny, list_denies))
        .routes(routes!(get_deny))
        .routes(routes!(revoke_deny))
        .routes(routes!(enforce_deny))
        .routes(routes!(evaluate))
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
        let doc = routes().into_openapi();
        assert_eq!(doc.paths.paths.len(), 23);
        assert!(
            doc.paths.paths["/v1/deny-rules/{deny_id}/enforce"]
                .post
                .is_some()
        );
        let roles = &doc.paths.paths["/v1/roles"];
        assert!(roles.post.is_some() && roles.get.is_some());
        let body = serde_json::to_value(&roles.post.as_ref().unwrap().request_body).unwrap();
        let schema = &body["content"]["application/json"]["schema"]["$ref"];
        assert_eq!(schema, "#/components/schemas/RoleCreate");
    }
}
