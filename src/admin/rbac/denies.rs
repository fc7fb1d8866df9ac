//! Deny rules: create, revoke, read.

use super::*;

// ---------------------------------------------------------------------------------------------
// Deny rules
// ---------------------------------------------------------------------------------------------

pub(super) fn deny_view(d: &DenyRule, stored: &StoredDoc) -> Value {
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
        "mode": d.mode.as_str(),
    })
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct DenyCreate {
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
    /// `enforce` (default) or `shadow` (issue 16; subject type `integration` only): a shadow
    /// rule is only recorded as a finding until `POST /v1/deny-rules/{id}/enforce`.
    #[serde(default)]
    mode: Mode,
}

#[utoipa::path(post,
    path = "/v1/deny-rules",
    tag = "deny rules",
    summary = "Create a deny rule (enforced on this replica before the answer, ADM-3)",
    request_body = DenyCreate,
    security(("bearer" = ["deny_rules.write"])),
    responses((status = 201, description = "The deny rule; ETag = version", body = Object)))]
pub(super) async fn create_deny(
    State(h): State<AdminHttp>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let (caller, b): (_, DenyCreate) = h.begin(&headers, body, "deny_rules.write").await?;
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
    if b.mode.is_shadow() && b.subject_type != DenySubject::Integration {
        return Err(ApiError::invalid(
            "mode",
            "shadow mode is only supported for partner-traffic (integration) deny rules",
        ));
    }
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
                .map_err(store_unavailable)?;
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
        mode: b.mode,
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
                   "reason_code": b.reason_code, "reason_text": b.reason_text,
                   "mode": b.mode.as_str()}),
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
        .map_err(store_unavailable)?
        .ok_or_else(|| ApiError::not_found("the deny rule vanished"))?;
    Ok(ok_json(
        StatusCode::CREATED,
        stored.version,
        deny_view(&rule, &stored),
    ))
}

#[utoipa::path(post,
    path = "/v1/deny-rules/{deny_id}/revoke",
    tag = "deny rules",
    summary = "Revoke a deny rule",
    params(("deny_id" = String, Path), crate::api::openapi::IfMatch),
    request_body = ReasonBody,
    security(("bearer" = ["deny_rules.write"])),
    responses((status = 200, description = "The deny rule; ETag = version", body = Object)))]
pub(super) async fn revoke_deny(
    State(h): State<AdminHttp>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let (
        Opened {
            caller,
            via,
            doc: mut d,
            stored,
        },
        b,
    ): (Opened<DenyRule>, ReasonBody) =
        h.open_edit(&headers, &id, "deny_rules.write", body).await?;
    b.check()?;
    if d.status != DenyStatus::Active {
        return Err(invalid_transition(format!(
            "deny rule `{id}` is already revoked"
        )));
    }
    d.status = DenyStatus::Revoked;
    d.revoked_at = rfc3339(now_ms()).as_str().map(str::to_owned);
    d.revoke_reason_code = Some(b.reason_code.clone());
    d.revoke_reason_text = b.reason_text.clone();
    let detail = json!({"reason_code": b.reason_code, "reason_text": b.reason_text});
    write_transition(&h, &caller, &via, "deny_rule.revoke", d, &stored, detail).await
}

/// Writes transition `action` of deny rule `d` (opened at `stored`'s version: a concurrent
/// write is 412), audited with `detail`, and answers 200 with the rule's new view and `ETag`.
async fn write_transition(
    h: &AdminHttp,
    caller: &crate::admin::http::Caller,
    via: &crate::admin::http::Via,
    action: &str,
    d: DenyRule,
    stored: &StoredDoc,
    detail: serde_json::Value,
) -> ApiResult {
    let id = d.id.clone();
    h.commit(
        caller,
        via,
        ChangeRecord::admin(action, &d.tenant, &id, detail),
        vec![
            DocChange::put(DocKind::DenyRule, &id, Some(&d.tenant), text(&d))
                .status(d.status.as_str())
                .expect(Expect::Version(stored.version)),
        ],
    )
    .await?;
    let stored = h
        .store
        .document(DocKind::DenyRule, &id)
        .await
        .map_err(store_unavailable)?
        .ok_or_else(|| ApiError::not_found("the deny rule vanished"))?;
    Ok(ok_json(
        StatusCode::OK,
        stored.version,
        deny_view(&d, &stored),
    ))
}

/// Promotes a shadow deny rule to enforcement (issue 16): `POST /v1/deny-rules/{id}/enforce`
/// with an ADM-7 reason (`reason_code`, `reason_text`) and `If-Match`; audited as
/// `deny_rule.enforce`, enforced on this replica before the answer.
///
/// Errors: 409 `INVALID_TRANSITION` when the rule is revoked or already enforced; 412 on a stale
/// `If-Match`; 400 on a bad reason.
#[utoipa::path(post,
    path = "/v1/deny-rules/{deny_id}/enforce",
    tag = "deny rules",
    summary = "Promote a shadow deny rule to enforcement (shadow → enforce)",
    params(("deny_id" = String, Path), crate::api::openapi::IfMatch),
    request_body = ReasonBody,
    security(("bearer" = ["deny_rules.write"])),
    responses((status = 200, description = "The deny rule; ETag = version", body = Object)))]
pub(super) async fn enforce_deny(
    State(h): State<AdminHttp>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let (
        Opened {
            caller,
            via,
            doc: mut d,
            stored,
        },
        b,
    ): (Opened<DenyRule>, ReasonBody) =
        h.open_edit(&headers, &id, "deny_rules.write", body).await?;
    b.check()?;
    if d.status != DenyStatus::Active || d.mode.is_enforce() {
        return Err(invalid_transition(format!(
            "deny rule `{id}` is not an active rule in shadow mode"
        )));
    }
    d.mode = Mode::Enforce;
    let detail = json!({"from": "shadow", "mode": "enforce",
                        "reason_code": b.reason_code, "reason_text": b.reason_text});
    write_transition(&h, &caller, &via, "deny_rule.enforce", d, &stored, detail).await
}

#[utoipa::path(get,
    path = "/v1/deny-rules/{deny_id}",
    tag = "deny rules",
    summary = "One deny rule",
    params(("deny_id" = String, Path)),
    security(("bearer" = ["deny_rules.read"])),
    responses((status = 200, description = "The deny rule; ETag = version", body = Object)))]
pub(super) async fn get_deny(
    State(h): State<AdminHttp>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let Opened { doc: d, stored, .. } =
        h.open::<DenyRule>(&headers, &id, "deny_rules.read").await?;
    Ok(ok_json(
        StatusCode::OK,
        stored.version,
        deny_view(&d, &stored),
    ))
}

#[utoipa::path(get,
    path = "/v1/deny-rules",
    tag = "deny rules",
    summary = "List deny rules",
    params(("tenant_id" = Option<String>, Query), ("status" = Option<String>, Query), ("subject_type" = Option<String>, Query), ("subject_id" = Option<String>, Query)),
    security(("bearer" = ["deny_rules.read"])),
    responses((status = 200, description = "The deny rules", body = Object)))]
pub(super) async fn list_denies(State(h): State<AdminHttp>, headers: HeaderMap, q: Q) -> ApiResult {
    const FILTERS: [&str; 3] = ["status", "subject_type", "subject_id"];
    let l = h
        .list::<DenyRule>(&headers, q, "deny_rules.read", &FILTERS)
        .await?;
    let list: Vec<Value> = l
        .items
        .iter()
        .map(|(d, s)| deny_view(d, s))
        .filter(|v| {
            FILTERS
                .iter()
                .all(|k| l.matches(k, v[*k].as_str().unwrap_or("")))
        })
        .collect();
    Ok(axum::Json(json!({ "deny_rules": list })).into_response())
}
