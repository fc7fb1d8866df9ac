//! Reading consent: one record, its evidence, its history, lists.

use super::*;

// ---------------------------------------------------------------------------------------------
// Reads

/// `GET /v1/consents/{id}`: the current view (CON-35) with the computed status (CON-5, CON-28);
/// evidence only as a count (CON-17). Officers, field agents, evidence viewers, tenant admins,
/// root.
#[utoipa::path(get,
    path = "/v1/consents/{id}",
    tag = "consent",
    summary = "Current view (evidence as a count only)",
    params(("id" = String, Path, description = "The consent id")),
    responses((status = 200, description = "The consent; ETag = version", body = Object)))]
pub(super) async fn get_consent(
    State(s): State<ConsentHttp>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let (p, a) = s.authenticate(&headers).await?;
    if !(a.officer || a.field_agent || a.evidence_viewer || a.tenant_admin || a.root) {
        return Err(ApiError::forbidden("reading consent needs a consent role"));
    }
    let cur = s.load(&p.tenant_id, &id).await?;
    Ok(with_etag(
        StatusCode::OK,
        cur.version,
        view(&cur, s.consents.now_ms()),
    ))
}

/// `GET /v1/consents/{id}/evidence`: the evidence attachment ids, masked unless the caller has
/// audit-level permission or is root (evidence viewers or root; CON-16, CON-17). Every access is
/// a `consent_evidence_access` audit event (CON-19; root also `root_bypass`); when it cannot be
/// recorded: 503 `AUDIT_UNAVAILABLE` and nothing is shown.
#[utoipa::path(get,
    path = "/v1/consents/{id}/evidence",
    tag = "consent",
    summary = "Evidence attachment ids (evidence viewer; masked unless audit-level); every access is audited",
    params(("id" = String, Path, description = "The consent id")),
    responses((status = 200, description = "The evidence", body = Object)))]
pub(super) async fn get_evidence(
    State(s): State<ConsentHttp>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let (p, a) = s.authenticate(&headers).await?;
    if !(a.evidence_viewer || a.root) {
        return Err(ApiError::forbidden(
            "viewing consent evidence needs the evidence viewer role (CON-17)",
        ));
    }
    let cur = s.load(&p.tenant_id, &id).await?;
    let unmasked = a.auditor || a.root;
    let detail = json!({
        "consent_id": cur.consent_id,
        "version": cur.version,
        "vertical": cur.vertical_id,
        "person_ref": s.consents.person_ref(&cur.tenant_id, &cur.person_id),
        "masked": !unmasked,
        "evidence_count": cur.evidence_attachment_ids.len(),
    });
    if a.root {
        crate::admin::ledger::root_recorded(&p.tenant_id);
        let mut d = detail.clone();
        d["action"] = json!("consent_evidence_read");
        s.record(
            AuditEvent::new(RecordKind::RootBypass, Some(&p.tenant_id), d)
                .actor(p.subject.clone())
                .subject(cur.consent_id.clone()),
        )
        .await?;
    }
    s.record(
        AuditEvent::new(
            RecordKind::ConsentEvidenceAccess,
            Some(&p.tenant_id),
            detail,
        )
        .actor(p.subject.clone())
        .subject(cur.consent_id.clone()),
    )
    .await?;
    let mut body = model::evidence_view(&cur, unmasked);
    body["consent_id"] = json!(cur.consent_id);
    body["version"] = json!(cur.version);
    Ok(with_etag(StatusCode::OK, cur.version, body))
}

/// `GET /v1/consents/{id}/history`: every version, oldest first (tenant admins and root only;
/// CON-7, CON-8, CON-37).
#[utoipa::path(get,
    path = "/v1/consents/{id}/history",
    operation_id = "consent_history",
    tag = "consent",
    summary = "Every version (tenant admin, root)",
    params(("id" = String, Path, description = "The consent id")),
    responses((status = 200, description = "The versions, oldest first", body = Object)))]
pub(super) async fn history(
    State(s): State<ConsentHttp>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let (p, a) = s.authenticate(&headers).await?;
    if !(a.tenant_admin || a.root) {
        return Err(ApiError::forbidden(
            "consent version history is visible only to tenant admins and root (CON-37)",
        ));
    }
    let cur = s.load(&p.tenant_id, &id).await?;
    let now = s.consents.now_ms();
    let versions = s
        .store()
        .consent_history(&cur.consent_id)
        .await
        .map_err(ApiError::from)?;
    let versions: Vec<Value> = versions.iter().map(|v| view(v, now)).collect();
    Ok(with_etag(
        StatusCode::OK,
        cur.version,
        json!({"consent_id": cur.consent_id, "versions": versions}),
    ))
}

/// `GET /v1/consents?person_id=…`: the current consents (one per vertical and purpose) of a
/// person (officers, tenant admins, root).
#[utoipa::path(get,
    path = "/v1/consents",
    operation_id = "list_consents",
    tag = "consent",
    summary = "Current consents of a person (officer, tenant admin)",
    params(("person_id" = String, Query)),
    responses((status = 200, description = "The consents", body = Object)))]
pub(super) async fn list(
    State(s): State<ConsentHttp>,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let (p, a) = s.authenticate(&headers).await?;
    if !(a.officer || a.tenant_admin || a.root) {
        return Err(ApiError::forbidden(
            "listing consents needs the officer or tenant admin role",
        ));
    }
    let q = crate::api::query_params(query, &["person_id"])?;
    let person = q
        .get("person_id")
        .ok_or_else(|| ApiError::invalid("person_id", "required"))?;
    check_token("person_id", person)?;
    let now = s.consents.now_ms();
    let heads = s
        .store()
        .consent_heads_of_person(&p.tenant_id, person)
        .await
        .map_err(ApiError::from)?;
    let views: Vec<Value> = heads.iter().map(|v| view(v, now)).collect();
    Ok(axum::Json(json!({"consents": views})).into_response())
}
