//! The permission catalog and roles: create, edit, review, approve, reject, archive.

use super::*;
use crate::admin::http::step_handler;

// ---------------------------------------------------------------------------------------------
// Permissions
// ---------------------------------------------------------------------------------------------

#[utoipa::path(get,
    path = "/v1/permissions",
    tag = "roles",
    summary = "The permission catalog",
    params(("scope_type" = Option<String>, Query), ("status" = Option<String>, Query)),
    security(("bearer" = ["roles.read"])),
    responses((status = 200, description = "The permissions", body = Object)))]
pub(super) async fn list_permissions(
    State(h): State<AdminHttp>,
    headers: HeaderMap,
    q: Q,
) -> ApiResult {
    let caller = h.caller(&headers).await?;
    caller.require("roles.read", &Target::tenant(caller.tenant()))?;
    let q = crate::api::query_params(q, &["scope_type", "status"])?;
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

pub(super) fn role_view(r: &RoleDoc, version: i64) -> Value {
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

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RoleCreate {
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

#[utoipa::path(post,
    path = "/v1/roles",
    tag = "roles",
    summary = "Create a draft role",
    request_body = RoleCreate,
    security(("bearer" = ["roles.write"])),
    responses((status = 201, description = "The draft role; ETag = version_id", body = Object)))]
pub(super) async fn create_role(
    State(h): State<AdminHttp>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let (caller, b): (_, RoleCreate) = h.begin(&headers, body, "roles.write").await?;
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

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RolePatch {
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

#[utoipa::path(patch,
    path = "/v1/roles/{role_id}",
    tag = "roles",
    summary = "Edit a role",
    params(("role_id" = String, Path), crate::api::openapi::IfMatch),
    request_body = RolePatch,
    security(("bearer" = ["roles.write"])),
    responses((status = 200, description = "The role; ETag = version_id", body = Object)))]
pub(super) async fn patch_role(
    State(h): State<AdminHttp>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let (
        Opened {
            caller,
            via,
            doc: mut role,
            stored,
        },
        b,
    ): (Opened<RoleDoc>, RolePatch) = h.open_edit(&headers, &id, "roles.write", body).await?;
    if role.status == "archived" {
        return Err(ApiError::new(
            ErrorCode::Archived,
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
    let v = h
        .put(
            &caller,
            &via,
            &role,
            &stored,
            &role.status,
            ChangeRecord::admin(
                "role.update",
                &role.tenant_id,
                &id,
                json!({"status": role.status, "permission_ids": role.permission_ids}),
            ),
        )
        .await?;
    Ok(ok_json(StatusCode::OK, v, role_view(&role, v)))
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    RequestReview,
    Review,
    Approve,
    Reject,
    Archive,
}

step_handler!(
    request_review_role,
    "roles",
    "/v1/roles/{role_id}/request-review",
    "role_id",
    "roles.write",
    RequestBody,
    "Request review: approval_state pending",
    "The role; ETag = version_id",
    role_step(Step::RequestReview)
);
step_handler!(
    review_role,
    "roles",
    "/v1/roles/{role_id}/review",
    "role_id",
    "roles.review",
    ReviewBody,
    "Review: approval_state reviewed",
    "The role; ETag = version_id",
    role_step(Step::Review)
);
step_handler!(
    approve_role,
    "roles",
    "/v1/roles/{role_id}/approve",
    "role_id",
    "roles.approve",
    ApproveBody,
    "Approve: status active (four eyes)",
    "The role; ETag = version_id",
    role_step(Step::Approve)
);
step_handler!(
    reject_role,
    "roles",
    "/v1/roles/{role_id}/reject",
    "role_id",
    "roles.approve",
    ReasonBody,
    "Reject",
    "The role; ETag = version_id",
    role_step(Step::Reject)
);
step_handler!(
    archive_role,
    "roles",
    "/v1/roles/{role_id}/archive",
    "role_id",
    "roles.approve",
    ReasonBody,
    "Archive (immutable afterwards)",
    "The role; ETag = version_id",
    role_step(Step::Archive)
);

pub(super) async fn role_step(
    h: AdminHttp,
    id: String,
    headers: HeaderMap,
    body: Body,
    step: Step,
) -> ApiResult {
    let perm = match step {
        Step::RequestReview => "roles.write",
        Step::Review => "roles.review",
        _ => "roles.approve",
    };
    let Opened {
        caller,
        via,
        doc: mut role,
        stored,
    } = h.open::<RoleDoc>(&headers, &id, perm).await?;
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
            ErrorCode::SeparationOfDuties,
            "the author or last editor of a role may not approve it (four eyes)",
        ));
    }
    role.status = status.to_owned();
    role.approval_state = (approval != "none").then(|| approval.to_owned());
    let mut detail = detail;
    detail["status"] = json!(role.status);
    detail["approval_state"] = json!(role.approval_state);
    let v = h
        .put(
            &caller,
            &via,
            &role,
            &stored,
            &role.status,
            ChangeRecord::admin(action, &role.tenant_id, &id, detail),
        )
        .await?;
    Ok(ok_json(StatusCode::OK, v, role_view(&role, v)))
}

#[utoipa::path(get,
    path = "/v1/roles/{role_id}",
    tag = "roles",
    summary = "One role",
    params(("role_id" = String, Path)),
    security(("bearer" = ["roles.read"])),
    responses((status = 200, description = "The role; ETag = version_id", body = Object)))]
pub(super) async fn get_role(
    State(h): State<AdminHttp>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let Opened {
        doc: role, stored, ..
    } = h.open::<RoleDoc>(&headers, &id, "roles.read").await?;
    Ok(ok_json(
        StatusCode::OK,
        stored.version,
        role_view(&role, stored.version),
    ))
}

#[utoipa::path(get,
    path = "/v1/roles/{role_id}/versions",
    tag = "roles",
    summary = "Every version of a role",
    params(("role_id" = String, Path)),
    security(("bearer" = ["roles.read"])),
    responses((status = 200, description = "The versions", body = Object)))]
pub(super) async fn role_versions(
    State(h): State<AdminHttp>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let Opened { .. } = h.open::<RoleDoc>(&headers, &id, "roles.read").await?;
    let versions = h
        .store
        .document_versions(DocKind::Role, &id)
        .await
        .map_err(store_unavailable)?;
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

#[utoipa::path(get,
    path = "/v1/roles",
    tag = "roles",
    summary = "List roles",
    params(("status" = Option<String>, Query), ("tenant_id" = Option<String>, Query)),
    security(("bearer" = ["roles.read"])),
    responses((status = 200, description = "The roles", body = Object)))]
pub(super) async fn list_roles(State(h): State<AdminHttp>, headers: HeaderMap, q: Q) -> ApiResult {
    let l = h
        .list::<RoleDoc>(&headers, q, "roles.read", &["status"])
        .await?;
    let list: Vec<Value> = l
        .items
        .iter()
        .filter(|(r, _)| l.matches("status", &r.status))
        .map(|(r, d)| role_view(r, d.version))
        .collect();
    Ok(axum::Json(json!({ "roles": list })).into_response())
}
