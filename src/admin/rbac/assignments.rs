//! Role assignments to users and groups.

use super::*;

// ---------------------------------------------------------------------------------------------
// Role assignments
// ---------------------------------------------------------------------------------------------

pub(super) fn assignment_view(a: &AssignmentDoc, version: i64) -> Value {
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

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct AssignBody {
    role_id: String,
    scope: Scope,
    effective_from: String,
    #[serde(default)]
    effective_until: Option<String>,
}

#[utoipa::path(post,
    path = "/v1/users/{user_id}/roles",
    tag = "role assignments",
    summary = "Assign a role to a user",
    params(("user_id" = String, Path)),
    request_body = AssignBody,
    security(("bearer" = ["assignments.write"])),
    responses((status = 201, description = "The assignment; ETag = version_id", body = Object)))]
pub(super) async fn assign_user(
    State(h): State<AdminHttp>,
    Path(uid): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    assign(h, "user", uid, headers, body).await
}

#[utoipa::path(post,
    path = "/v1/groups/{group_id}/roles",
    tag = "role assignments",
    summary = "Assign a role to a group",
    params(("group_id" = String, Path)),
    request_body = AssignBody,
    security(("bearer" = ["assignments.write"])),
    responses((status = 201, description = "The assignment; ETag = version_id", body = Object)))]
pub(super) async fn assign_group(
    State(h): State<AdminHttp>,
    Path(gid): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    assign(h, "group", gid, headers, body).await
}

pub(super) async fn assign(
    h: AdminHttp,
    subject_type: &str,
    subject_id: String,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let (caller, b): (_, AssignBody) = h.begin(&headers, body, "assignments.write").await?;
    let tenant = caller.tenant_for(b.scope.tenant_id.as_deref())?.to_owned();
    let via = caller.require("assignments.write", &Target::tenant(&tenant))?;
    let subject_id = check_name(&format!("{subject_type}_id"), &subject_id)?;
    if subject_type == "group" {
        let g = h
            .store
            .document(DocKind::Group, &subject_id)
            .await
            .map_err(store_unavailable)?;
        if g.is_none_or(|g| g.tenant.as_deref() != Some(tenant.as_str())) {
            return Err(ApiError::not_found(format!("no group `{subject_id}`")));
        }
    }
    let role = h
        .store
        .document(DocKind::Role, &b.role_id)
        .await
        .map_err(store_unavailable)?;
    let role: RoleDoc = match role {
        Some(d) if d.tenant.as_deref() == Some(tenant.as_str()) => {
            serde_json::from_str(&d.doc).map_err(|e| ApiError::unavailable("policy store", &e))?
        }
        _ => return Err(ApiError::invalid("role_id", "no such role in this tenant")),
    };
    if role.status != "active" {
        return Err(ApiError::new(
            ErrorCode::RoleNotActive,
            format!("role `{}` is {}", role.role_id, role.status),
        )
        .at("role_id"));
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

#[utoipa::path(post,
    path = "/v1/role-assignments/{assignment_id}/revoke",
    tag = "role assignments",
    summary = "Revoke a role assignment",
    params(("assignment_id" = String, Path), crate::api::openapi::IfMatch),
    request_body = ReasonBody,
    security(("bearer" = ["assignments.write"])),
    responses((status = 200, description = "The assignment; ETag = version_id", body = Object)))]
pub(super) async fn revoke_assignment(
    State(h): State<AdminHttp>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let (
        Opened {
            caller,
            via,
            doc: mut a,
            stored,
        },
        b,
    ): (Opened<AssignmentDoc>, ReasonBody) = h
        .open_edit(&headers, &id, "assignments.write", body)
        .await?;
    b.check()?;
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
    let v = h
        .put(
            &caller,
            &via,
            &a,
            &stored,
            "revoked",
            ChangeRecord::admin(
                "role_assignment.revoke",
                &a.tenant_id,
                &id,
                json!({"reason_code": b.reason_code, "reason_text": b.reason_text}),
            ),
        )
        .await?;
    Ok(ok_json(StatusCode::OK, v, assignment_view(&a, v)))
}

#[utoipa::path(get,
    path = "/v1/role-assignments/{assignment_id}",
    tag = "role assignments",
    summary = "One role assignment",
    params(("assignment_id" = String, Path)),
    security(("bearer" = ["roles.read"])),
    responses((status = 200, description = "The assignment; ETag = version_id", body = Object)))]
pub(super) async fn get_assignment(
    State(h): State<AdminHttp>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let Opened { doc: a, stored, .. } =
        h.open::<AssignmentDoc>(&headers, &id, "roles.read").await?;
    Ok(ok_json(
        StatusCode::OK,
        stored.version,
        assignment_view(&a, stored.version),
    ))
}

#[utoipa::path(get,
    path = "/v1/role-assignments",
    tag = "role assignments",
    summary = "List role assignments",
    params(("tenant_id" = Option<String>, Query), ("subject_type" = Option<String>, Query), ("subject_id" = Option<String>, Query), ("role_id" = Option<String>, Query), ("status" = Option<String>, Query)),
    security(("bearer" = ["roles.read"])),
    responses((status = 200, description = "The assignments", body = Object)))]
pub(super) async fn list_assignments(
    State(h): State<AdminHttp>,
    headers: HeaderMap,
    q: Q,
) -> ApiResult {
    let l = h
        .list::<AssignmentDoc>(
            &headers,
            q,
            "roles.read",
            &["subject_type", "subject_id", "role_id", "status"],
        )
        .await?;
    let list: Vec<Value> = l
        .items
        .iter()
        .filter(|(a, _)| {
            l.matches("subject_type", &a.subject_type)
                && l.matches("subject_id", &a.subject_id)
                && l.matches("role_id", &a.role_id)
                && l.matches("status", &a.status)
        })
        .map(|(a, d)| assignment_view(a, d.version))
        .collect();
    Ok(axum::Json(json!({ "role_assignments": list })).into_response())
}
