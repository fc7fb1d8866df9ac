//! Staff access decisions (`POST /v1/consent/evaluate`).

use super::*;

// ---------------------------------------------------------------------------------------------
// Staff access decisions

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(super) enum StaffAction {
    Read,
    Write,
    Export,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct EvaluateReq {
    person_id: String,
    vertical_id: String,
    #[serde(default)]
    purpose: Option<String>,
    action: StaffAction,
}

/// The staff decision for a consent state (CON-5, CON-20, CON-22, CON-26, CON-28, CON-29): active
/// allows everything; grace allows reads only; everything else denies. Root is decided by the
/// caller (it bypasses, CON-32).
pub(super) fn staff_decision(status: Effective, action: StaffAction) -> (bool, &'static str) {
    match (status, action) {
        (Effective::Active, _) => (true, "consent_active"),
        (Effective::Grace, StaffAction::Read) => (true, "grace_read_only"),
        (Effective::Grace, _) => (false, "grace_read_only"),
        (Effective::Pending, _) => (false, "consent_pending"),
        (Effective::Rejected, _) => (false, "consent_rejected"),
        (Effective::Withdrawn, _) => (false, "consent_withdrawn"),
        (Effective::Missing, _) => (false, "consent_missing"),
    }
}

/// `POST /v1/consents/evaluate`: may a staff system act on a person's data in a vertical now?
/// `{decision: allow|deny, status, reason}` (CON-5, CON-26, CON-28, CON-29). Root bypasses every
/// consent check, including exports during grace, and every bypass is a `root_bypass` audit event
/// (CON-30, CON-32); no one else has a bypass. Any consent role may ask.
#[utoipa::path(post,
    path = "/v1/consents/evaluate",
    operation_id = "consent_evaluate",
    tag = "consent",
    summary = "Staff access decision (root bypasses, audited)",
    request_body = EvaluateReq,
    responses((status = 200, description = "The decision", body = Object)))]
pub(super) async fn evaluate(
    State(s): State<ConsentHttp>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let (p, a) = s.authenticate(&headers).await?;
    if !(a.officer || a.field_agent || a.evidence_viewer || a.tenant_admin || a.root) {
        return Err(ApiError::forbidden(
            "evaluating consent needs a consent role",
        ));
    }
    let req: EvaluateReq = parse(body)?;
    check_token("person_id", &req.person_id)?;
    check_token("vertical_id", &req.vertical_id)?;
    let purpose = req.purpose.filter(|x| !x.is_empty());
    if let Some(x) = &purpose {
        check_token("purpose", x)?;
    }
    // From the store, not the enforcement cache: staff see which consent decided, and the
    // cache keeps only what a decision needs (no consent id or version).
    let heads = s
        .consents
        .store()
        .consent_head_summaries(&p.tenant_id, &req.person_id, &req.vertical_id)
        .await
        .map_err(ApiError::from)?;
    let now = s.consents.now_ms();
    let (status, version) = Consents::decide(&heads, purpose.as_deref(), now);
    let (mut allow, mut reason) = staff_decision(status, req.action);
    let action = match req.action {
        StaffAction::Read => "read",
        StaffAction::Write => "write",
        StaffAction::Export => "export",
    };
    if a.root {
        crate::admin::ledger::root_recorded(&p.tenant_id);
        s.record(
            AuditEvent::new(
                RecordKind::RootBypass,
                Some(&p.tenant_id),
                json!({
                    "action": format!("consent_{action}"),
                    "consent_status": status.as_str(),
                    "consent_id": version.map(|v| v.consent_id.as_str()),
                    "vertical": req.vertical_id,
                    "purpose": purpose,
                    "person_ref": s.consents.person_ref(&p.tenant_id, &req.person_id),
                }),
            )
            .actor(p.subject.clone()),
        )
        .await?;
        if !allow {
            reason = "root_bypass";
        }
        allow = true;
    }
    Ok(axum::Json(json!({
        "decision": if allow { "allow" } else { "deny" },
        "status": status.as_str(),
        "in_grace": status == Effective::Grace,
        "reason": reason,
        "action": action,
        "consent_id": version.map(|v| v.consent_id.as_str()),
        "version": version.map(|v| v.version),
    }))
    .into_response())
}
