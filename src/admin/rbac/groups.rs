//! Groups (static and dynamic) and their members.

use super::*;

// ---------------------------------------------------------------------------------------------
// Groups and members
// ---------------------------------------------------------------------------------------------

pub(super) fn group_view(g: &GroupDoc, version: i64) -> Value {
    json!({
        "group_id": g.group_id, "version_id": version, "tenant_id": g.tenant_id,
        "group_name": g.group_name, "description": g.description, "dynamic_rule": g.dynamic_rule,
        "active_from": rfc3339(g.active_from), "active_until": opt_time(g.active_until),
        "status": g.status, "created_by": g.created_by, "created_at": rfc3339(g.created_at),
        "updated_at": rfc3339(g.updated_at),
    })
}

pub(super) fn member_view(m: &MemberDoc, version: i64, now: i64) -> Value {
    json!({
        "membership_id": m.membership_id, "version_id": version, "group_id": m.group_id,
        "user_id": m.user_id, "effective_from": rfc3339(m.effective_from),
        "effective_until": opt_time(m.effective_until), "status": m.status,
        "in_force": m.in_force(now), "created_by": m.created_by,
        "created_at": rfc3339(m.created_at), "end_reason_code": m.end_reason_code,
    })
}

pub(super) fn check_dynamic(d: &Option<DynamicRule>) -> Result<(), ApiError> {
    if let Some(r) = d {
        check_name("dynamic_rule.token_role", &r.token_role)?;
    }
    Ok(())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct GroupCreate {
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

#[utoipa::path(post,
    path = "/v1/groups",
    tag = "groups",
    summary = "Create a group",
    request_body = GroupCreate,
    security(("bearer" = ["groups.write"])),
    responses((status = 201, description = "The group; ETag = version_id", body = Object)))]
pub(super) async fn create_group(
    State(h): State<AdminHttp>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let (caller, b): (_, GroupCreate) = h.begin(&headers, body, "groups.write").await?;
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

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct GroupPatch {
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

pub(super) fn some_or_null<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[utoipa::path(patch,
    path = "/v1/groups/{group_id}",
    tag = "groups",
    summary = "Edit a group",
    params(("group_id" = String, Path), crate::api::openapi::IfMatch),
    request_body = GroupPatch,
    security(("bearer" = ["groups.write"])),
    responses((status = 200, description = "The group; ETag = version_id", body = Object)))]
pub(super) async fn patch_group(
    State(h): State<AdminHttp>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let (
        Opened {
            caller,
            via,
            doc: mut g,
            stored,
        },
        b,
    ): (Opened<GroupDoc>, GroupPatch) = h.open_edit(&headers, &id, "groups.write", body).await?;
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
    let v = h
        .put(
            &caller,
            &via,
            &g,
            &stored,
            &g.status,
            ChangeRecord::admin(
                "group.update",
                &g.tenant_id,
                &id,
                json!({"dynamic_rule": g.dynamic_rule}),
            ),
        )
        .await?;
    Ok(ok_json(StatusCode::OK, v, group_view(&g, v)))
}

#[utoipa::path(get,
    path = "/v1/groups/{group_id}",
    tag = "groups",
    summary = "One group with its memberships",
    params(("group_id" = String, Path)),
    security(("bearer" = ["roles.read"])),
    responses((status = 200, description = "The group; ETag = version_id", body = Object)))]
pub(super) async fn get_group(
    State(h): State<AdminHttp>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let Opened { doc: g, stored, .. } = h.open::<GroupDoc>(&headers, &id, "roles.read").await?;
    let now = now_ms();
    let members: Vec<Value> = h
        .store
        .documents(DocKind::GroupMember, Some(&g.tenant_id))
        .await
        .map_err(store_unavailable)?
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

#[utoipa::path(get,
    path = "/v1/groups",
    tag = "groups",
    summary = "List groups",
    params(("tenant_id" = Option<String>, Query)),
    security(("bearer" = ["roles.read"])),
    responses((status = 200, description = "The groups", body = Object)))]
pub(super) async fn list_groups(State(h): State<AdminHttp>, headers: HeaderMap, q: Q) -> ApiResult {
    let l = h.list::<GroupDoc>(&headers, q, "roles.read", &[]).await?;
    let list: Vec<Value> = l
        .items
        .iter()
        .map(|(g, d)| group_view(g, d.version))
        .collect();
    Ok(axum::Json(json!({ "groups": list })).into_response())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct MemberAdd {
    user_id: String,
    effective_from: String,
    #[serde(default)]
    effective_until: Option<String>,
}

#[utoipa::path(post,
    path = "/v1/groups/{group_id}/members",
    tag = "groups",
    summary = "Add a member",
    params(("group_id" = String, Path)),
    request_body = MemberAdd,
    security(("bearer" = ["groups.write"])),
    responses((status = 201, description = "The membership; ETag = version_id", body = Object)))]
pub(super) async fn add_member(
    State(h): State<AdminHttp>,
    Path(gid): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let Opened {
        caller,
        via,
        doc: g,
        ..
    } = h.open::<GroupDoc>(&headers, &gid, "groups.write").await?;
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
        .map_err(store_unavailable)?;
    if existing.iter().any(|m| {
        m.group_id == gid
            && m.user_id == user_id
            && m.status == "active"
            && m.effective_until.is_none_or(|u| u > now)
    }) {
        return Err(ApiError::new(
            ErrorCode::AlreadyExists,
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

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct MemberEnd {
    effective_until: String,
    reason_code: String,
    #[serde(default)]
    reason_text: Option<String>,
}

#[utoipa::path(post,
    path = "/v1/groups/{group_id}/members/{user_id}/end",
    tag = "groups",
    summary = "End a membership",
    params(("group_id" = String, Path), ("user_id" = String, Path), crate::api::openapi::IfMatch),
    request_body = MemberEnd,
    security(("bearer" = ["groups.write"])),
    responses((status = 200, description = "The membership; ETag = version_id", body = Object)))]
pub(super) async fn end_member(
    State(h): State<AdminHttp>,
    Path((gid, uid)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let Opened {
        caller,
        via,
        doc: g,
        ..
    } = h.open::<GroupDoc>(&headers, &gid, "groups.write").await?;
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
        .map_err(store_unavailable)?
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
