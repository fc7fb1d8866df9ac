//! `POST /v1/authz/evaluate`: what a subject may do, with reasons.

use super::*;

// ---------------------------------------------------------------------------------------------
// Evaluate
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct EvaluateBody {
    subject_id: String,
    action: String,
    resource: String,
    scope: Scope,
    #[serde(default)]
    context: Option<Value>,
}

#[utoipa::path(post,
    path = "/v1/authz/evaluate",
    tag = "authorization",
    summary = "What a subject may do: decision, reasons, applied deny rules, masked fields",
    request_body = EvaluateBody,
    security(("bearer" = ["authz.evaluate"])),
    responses((status = 200, description = "The decision", body = Object)))]
pub(super) async fn evaluate(
    State(h): State<AdminHttp>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let (caller, b): (_, EvaluateBody) = h.begin(&headers, body, "authz.evaluate").await?;
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
        .map_err(store_unavailable)?;
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
