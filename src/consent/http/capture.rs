//! Capture, evidence, verification, rejection, withdrawal and renewal of consent.

use super::*;

// ---------------------------------------------------------------------------------------------
// Capture and changes

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CaptureReq {
    person_id: String,
    vertical_id: String,
    #[serde(default)]
    purpose: Option<String>,
    active_from: String,
    #[serde(default)]
    active_until: Option<String>,
    capture_mode: CaptureMode,
    #[serde(default)]
    evidence_attachment_ids: Vec<String>,
    #[serde(default)]
    verification_document_attachment_id: Option<String>,
    #[serde(default)]
    identity_verification: Option<IdentityVerification>,
    #[serde(default)]
    fields: Option<Vec<String>>,
}

/// `POST /v1/consents`: captures a consent (CON-3, CON-4, CON-6, CON-10–CON-16). Online capture
/// by officers (or root), offline capture by field agents only, with the agent's identity check
/// and the document's photo or scan. The person must be known and verified. Without evidence, and
/// for every offline capture until verified, the consent is pending. 201 with the view.
#[utoipa::path(post,
    path = "/v1/consents",
    tag = "consent",
    summary = "Capture consent (online: officer; offline: field agent)",
    request_body = CaptureReq,
    responses((status = 201, description = "The consent; ETag = version", body = Object)))]
pub(super) async fn capture(
    State(s): State<ConsentHttp>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let (p, a) = s.authenticate(&headers).await?;
    if !(a.officer || a.field_agent || a.root) {
        return Err(ApiError::forbidden(
            "capturing consent needs the officer or field agent role",
        ));
    }
    let req: CaptureReq = parse(body)?;
    match req.capture_mode {
        CaptureMode::Online if !(a.officer || a.root) => {
            return Err(ApiError::forbidden(
                "online capture needs the consent officer role",
            ));
        }
        CaptureMode::Offline if !a.field_agent => {
            return Err(ApiError::forbidden(
                "offline capture is restricted to field agents (CON-12)",
            ));
        }
        _ => {}
    }
    check_token("person_id", &req.person_id)?;
    check_token("vertical_id", &req.vertical_id)?;
    let purpose = req.purpose.unwrap_or_default();
    if !purpose.is_empty() {
        check_token("purpose", &purpose)?;
    }
    let (from, until) = window(&req.active_from, req.active_until.as_deref())?;
    check_attachment_ids("evidence_attachment_ids", &req.evidence_attachment_ids)?;
    if let Some(d) = &req.verification_document_attachment_id {
        check_token("verification_document_attachment_id", d)?;
    }
    let now = s.consents.now_ms();
    let identity = match req.identity_verification {
        Some(i) => {
            check_token("identity_verification.document_type", &i.document_type)?;
            if let Some(b) = &i.verified_by {
                check_token("identity_verification.verified_by", b)?;
            }
            Some(IdentityVerification {
                document_type: i.document_type,
                verified_by: Some(i.verified_by.unwrap_or_else(|| p.subject.clone())),
                verified_at_ms: Some(i.verified_at_ms.unwrap_or(now)),
            })
        }
        None => None,
    };
    if req.capture_mode == CaptureMode::Offline {
        if identity.is_none() {
            return Err(ApiError::invalid(
                "identity_verification",
                "offline capture needs the agent's identity verification (CON-14)",
            ));
        }
        if req.verification_document_attachment_id.is_none() {
            return Err(ApiError::invalid(
                "verification_document_attachment_id",
                "offline capture needs a photo or scan of the identity document (CON-14)",
            ));
        }
    }
    if let Some(f) = &req.fields {
        if f.len() > MAX_FIELDS {
            return Err(ApiError::invalid(
                "fields",
                format!("at most {MAX_FIELDS} fields"),
            ));
        }
        for x in f {
            check_token("fields", x)?;
        }
    }
    match s
        .store()
        .consent_person(&p.tenant_id, &req.person_id)
        .await
        .map_err(ApiError::from)?
    {
        None => {
            return Err(ApiError::new(
                ErrorCode::PersonUnknown,
                "the person registry has not reported this person",
            ));
        }
        Some(r) if r.verification != "verified" => {
            return Err(ApiError::new(
                ErrorCode::PersonProvisional,
                "consent cannot be captured for a provisional person (CON-3, CON-11)",
            ));
        }
        Some(_) => {}
    }
    let grace = s.grace_days(&p.tenant_id);
    let v = ConsentVersion {
        consent_id: uuid::Uuid::now_v7().to_string(),
        version: 1,
        version_id: uuid::Uuid::now_v7().to_string(),
        tenant_id: p.tenant_id.clone(),
        person_id: req.person_id,
        vertical_id: req.vertical_id,
        purpose,
        status: model::status_after_evidence(
            req.capture_mode,
            !req.evidence_attachment_ids.is_empty(),
            false,
        ),
        active_from_ms: from,
        active_until_ms: until,
        grace_until_ms: model::grace_until(until, grace),
        capture_mode: req.capture_mode,
        evidence_attachment_ids: req.evidence_attachment_ids,
        verification_document_attachment_id: req.verification_document_attachment_id,
        identity_verification: identity,
        fields: req.fields,
        reason_code: None,
        reason_text: None,
        change: Change::Capture,
        captured_by: p.subject.clone(),
        captured_at_ms: now,
        changed_by: p.subject.clone(),
        changed_at_ms: now,
    };
    s.commit(&p, &v).await?;
    Ok(with_etag(StatusCode::CREATED, v.version, view(&v, now)))
}

/// 409 `INVALID_TRANSITION` unless `cur` is in one of the recorded states `allowed`, and outside
/// the read-only grace period (CON-29).
pub(super) fn expect_status(
    cur: &ConsentVersion,
    allowed: &[Recorded],
    now: i64,
) -> Result<(), ApiError> {
    if !allowed.contains(&cur.status) {
        return Err(ApiError::new(
            ErrorCode::InvalidTransition,
            format!("not allowed while the consent is {}", cur.status.as_str()),
        ));
    }
    match cur.effective(now) {
        Effective::Grace => Err(ApiError::new(
            ErrorCode::InvalidTransition,
            "the consent is expired and read-only during its grace period (CON-29)",
        )),
        Effective::Withdrawn => Err(ApiError::new(
            ErrorCode::InvalidTransition,
            "the consent is expired past its grace period, which counts as withdrawn (CON-28)",
        )),
        _ => Ok(()),
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct EvidenceReq {
    evidence_attachment_ids: Vec<String>,
    #[serde(default)]
    verification_document_attachment_id: Option<String>,
}

/// `POST /v1/consents/{id}/evidence`: links more evidence (and the identity document) to a
/// pending or active consent (CON-13, CON-15, CON-16). An online pending consent becomes active
/// with evidence; an offline one stays pending until verified (CON-10). Officers, root, or field
/// agents for offline pending consents.
#[utoipa::path(post,
    path = "/v1/consents/{id}/evidence",
    tag = "consent",
    summary = "Attach evidence",
    params(("id" = String, Path, description = "The consent id"), crate::api::openapi::IfMatch),
    request_body = EvidenceReq,
    responses((status = 200, description = "The new version; ETag = version", body = Object)))]
pub(super) async fn add_evidence(
    State(s): State<ConsentHttp>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let (p, a) = s.authenticate(&headers).await?;
    if !(a.officer || a.field_agent || a.root) {
        return Err(ApiError::forbidden(
            "attaching evidence needs the officer or field agent role",
        ));
    }
    let req: EvidenceReq = parse(body)?;
    check_attachment_ids("evidence_attachment_ids", &req.evidence_attachment_ids)?;
    if let Some(d) = &req.verification_document_attachment_id {
        check_token("verification_document_attachment_id", d)?;
    }
    let cur = s.load(&p.tenant_id, &id).await?;
    let offline_pending =
        cur.capture_mode == CaptureMode::Offline && cur.status == Recorded::Pending;
    if !(a.officer || a.root || offline_pending) {
        return Err(ApiError::forbidden(
            "field agents may only add evidence to offline captures pending verification",
        ));
    }
    precondition(&headers, &cur)?;
    let now = s.consents.now_ms();
    expect_status(&cur, &[Recorded::Pending, Recorded::Active], now)?;
    let mut next = s.successor(&cur, &p, Change::Evidence);
    for e in req.evidence_attachment_ids {
        if !next.evidence_attachment_ids.contains(&e) {
            next.evidence_attachment_ids.push(e);
        }
    }
    check_attachment_ids("evidence_attachment_ids", &next.evidence_attachment_ids)?;
    if req.verification_document_attachment_id.is_some() {
        next.verification_document_attachment_id = req.verification_document_attachment_id;
    }
    if cur.status == Recorded::Pending {
        next.status = model::status_after_evidence(
            cur.capture_mode,
            !next.evidence_attachment_ids.is_empty(),
            false,
        );
    }
    s.commit(&p, &next).await?;
    Ok(with_etag(StatusCode::OK, next.version, view(&next, now)))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Empty {}

/// `POST /v1/consents/{id}/verify`: verification of a pending consent (officer or root): active
/// when evidence is present and, for offline capture, the identity check and document too; this
/// is the "verified on sync" step of offline capture (CON-10, CON-13, CON-14). Else 409
/// `EVIDENCE_REQUIRED`.
#[utoipa::path(post,
    path = "/v1/consents/{id}/verify",
    tag = "consent",
    summary = "Verify a pending consent (officer)",
    params(("id" = String, Path, description = "The consent id"), crate::api::openapi::IfMatch),
    request_body = Empty,
    responses((status = 200, description = "The new version; ETag = version", body = Object)))]
pub(super) async fn verify(
    State(s): State<ConsentHttp>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let (p, a) = s.authenticate(&headers).await?;
    if !(a.officer || a.root) {
        return Err(ApiError::forbidden(
            "verifying consent needs the officer role",
        ));
    }
    let _: Empty = parse(body)?;
    let cur = s.load(&p.tenant_id, &id).await?;
    precondition(&headers, &cur)?;
    let now = s.consents.now_ms();
    expect_status(&cur, &[Recorded::Pending], now)?;
    if cur.evidence_attachment_ids.is_empty() {
        return Err(ApiError::new(
            ErrorCode::EvidenceRequired,
            "consent evidence (signature, photo or recording) must be attached first (CON-15)",
        ));
    }
    if cur.capture_mode == CaptureMode::Offline
        && (cur.identity_verification.is_none()
            || cur.verification_document_attachment_id.is_none())
    {
        return Err(ApiError::new(
            ErrorCode::EvidenceRequired,
            "offline capture needs the identity verification and the document's photo or scan (CON-14)",
        ));
    }
    let mut next = s.successor(&cur, &p, Change::Verify);
    next.status = model::status_after_evidence(cur.capture_mode, true, true);
    s.commit(&p, &next).await?;
    Ok(with_etag(StatusCode::OK, next.version, view(&next, now)))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ReasonReq {
    reason_code: String,
    #[serde(default)]
    reason_text: Option<String>,
}

/// `POST /v1/consents/{id}/reject`: rejects a pending consent with a reason from the fixed list
/// (`OTHER` needs text); it grants nothing and never enters grace (officer or root; CON-20).
#[utoipa::path(post,
    path = "/v1/consents/{id}/reject",
    tag = "consent",
    summary = "Reject a pending consent (officer)",
    params(("id" = String, Path, description = "The consent id"), crate::api::openapi::IfMatch),
    request_body = ReasonReq,
    responses((status = 200, description = "The new version; ETag = version", body = Object)))]
pub(super) async fn reject(
    State(s): State<ConsentHttp>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let (p, a) = s.authenticate(&headers).await?;
    if !(a.officer || a.root) {
        return Err(ApiError::forbidden(
            "rejecting consent needs the officer role",
        ));
    }
    let req: ReasonReq = parse(body)?;
    let (code, text) = check_reason(
        model::REJECTION_REASONS,
        &req.reason_code,
        req.reason_text.as_deref(),
    )?;
    let cur = s.load(&p.tenant_id, &id).await?;
    precondition(&headers, &cur)?;
    let now = s.consents.now_ms();
    expect_status(&cur, &[Recorded::Pending], now)?;
    let mut next = s.successor(&cur, &p, Change::Reject);
    next.status = Recorded::Rejected;
    next.reason_code = Some(code);
    next.reason_text = text;
    s.commit(&p, &next).await?;
    Ok(with_etag(StatusCode::OK, next.version, view(&next, now)))
}

/// `POST /v1/consents/{id}/withdraw`: withdraws a pending, active or expired-in-grace consent
/// with a reason from the fixed list (officer or root only; field agents are refused, CON-9;
/// CON-22, CON-25). Effective at once on this replica and on the others through the change feed
/// (CON-24). Then every integration that received the person's data in the vertical gets a
/// `frozen_share` audit event (INT-4.3-3) and a case suspension is queued for SCP core services
/// (CON-36). The answer lists the integrations as `frozen_shares`.
#[utoipa::path(post,
    path = "/v1/consents/{id}/withdraw",
    tag = "consent",
    summary = "Withdraw (officer; never field agents); answers with frozen_shares",
    params(("id" = String, Path, description = "The consent id"), crate::api::openapi::IfMatch),
    request_body = ReasonReq,
    responses((status = 200, description = "The new version; ETag = version", body = Object)))]
pub(super) async fn withdraw(
    State(s): State<ConsentHttp>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let (p, a) = s.authenticate(&headers).await?;
    if !(a.officer || a.root) {
        return Err(ApiError::forbidden(
            "withdrawal is for online consent officers; field agents cannot withdraw (CON-9)",
        ));
    }
    let req: ReasonReq = parse(body)?;
    let (code, text) = check_reason(
        model::WITHDRAWAL_REASONS,
        &req.reason_code,
        req.reason_text.as_deref(),
    )?;
    let cur = s.load(&p.tenant_id, &id).await?;
    precondition(&headers, &cur)?;
    let now = s.consents.now_ms();
    let allowed = match cur.status {
        Recorded::Pending => true,
        Recorded::Active => cur.effective(now) != Effective::Withdrawn,
        Recorded::Rejected | Recorded::Withdrawn => false,
    };
    if !allowed {
        return Err(ApiError::new(
            ErrorCode::InvalidTransition,
            format!(
                "a consent that is {} cannot be withdrawn",
                cur.effective(now).as_str()
            ),
        ));
    }
    let mut next = s.successor(&cur, &p, Change::Withdraw);
    next.status = Recorded::Withdrawn;
    next.reason_code = Some(code);
    next.reason_text = text;
    s.commit(&p, &next).await?;

    // Frozen shares (INT-4.3-3): the integrations that already hold the person's data.
    s.consents.flush_shares().await;
    let pref = s.consents.person_ref(&next.tenant_id, &next.person_id);
    let shares = match s
        .consents
        .shares_of(&next.tenant_id, &next.person_id, &next.vertical_id)
        .await
    {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(error = %e, consent_id = %next.consent_id, "share ledger unreadable after a withdrawal; frozen-share events not written");
            Vec::new()
        }
    };
    let mut frozen = Vec::with_capacity(shares.len());
    for (integration, first_ms, last_ms) in shares {
        let ev = AuditEvent::new(
            RecordKind::FrozenShare,
            Some(&next.tenant_id),
            json!({
                "consent_id": next.consent_id,
                "version": next.version,
                "vertical": next.vertical_id,
                "integration_id": integration,
                "person_ref": pref,
                "first_ms": first_ms,
                "last_ms": last_ms,
            }),
        )
        .actor(p.subject.clone())
        .subject(integration.clone());
        if s.record(ev).await.is_err() {
            tracing::error!(consent_id = %next.consent_id, integration_id = %integration, "frozen-share event not recorded");
        }
        // INT-5.1-1: the integration's webhook subscribers learn of the withdrawal (the person
        // only by reference), queued after the commit like the case suspension below.
        crate::webhooks::emit(
            s.store(),
            &next.tenant_id,
            &integration,
            "consent.withdrawn",
            json!({"consent_id": next.consent_id, "consent_version": next.version,
                   "vertical_id": next.vertical_id, "person_ref": pref}),
        )
        .await;
        frozen.push(integration);
    }
    // Case suspension of the primary vertical (CON-36).
    let queued = match s
        .store()
        .consent_outbox_insert(&[OutboxRow::case_suspension(&next, now)])
        .await
    {
        Ok(_) => true,
        Err(e) => {
            tracing::error!(error = %e, consent_id = %next.consent_id, "case suspension not queued");
            false
        }
    };
    let mut body = view(&next, now);
    body["frozen_shares"] = json!(frozen);
    body["case_suspension_queued"] = json!(queued);
    Ok(with_etag(StatusCode::OK, next.version, body))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RenewReq {
    active_from: String,
    #[serde(default)]
    active_until: Option<String>,
    evidence_attachment_ids: Vec<String>,
}

/// `POST /v1/consents/{id}/renew`: a new version of an active (or expired, in grace) consent with
/// new dates and new evidence (officer or root; lifecycle step 9). Rejected consent must be
/// captured anew (CON-21), as must withdrawn or past-grace consent: 409 `RENEW_NOT_ALLOWED`.
#[utoipa::path(post,
    path = "/v1/consents/{id}/renew",
    tag = "consent",
    summary = "Renew an active or in-grace consent (officer)",
    params(("id" = String, Path, description = "The consent id"), crate::api::openapi::IfMatch),
    request_body = RenewReq,
    responses((status = 200, description = "The new version; ETag = version", body = Object)))]
pub(super) async fn renew(
    State(s): State<ConsentHttp>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let (p, a) = s.authenticate(&headers).await?;
    if !(a.officer || a.root) {
        return Err(ApiError::forbidden(
            "renewing consent needs the officer role",
        ));
    }
    let req: RenewReq = parse(body)?;
    let (from, until) = window(&req.active_from, req.active_until.as_deref())?;
    check_attachment_ids("evidence_attachment_ids", &req.evidence_attachment_ids)?;
    let cur = s.load(&p.tenant_id, &id).await?;
    precondition(&headers, &cur)?;
    let now = s.consents.now_ms();
    match (cur.status, cur.effective(now)) {
        (Recorded::Rejected, _) => {
            return Err(ApiError::new(
                ErrorCode::RenewNotAllowed,
                "rejected consent is re-captured as a new record, never renewed (CON-21)",
            ));
        }
        (Recorded::Withdrawn, _) | (Recorded::Active, Effective::Withdrawn) => {
            return Err(ApiError::new(
                ErrorCode::RenewNotAllowed,
                "withdrawn consent (or expired past grace, CON-28) is re-captured as a new record",
            ));
        }
        (Recorded::Pending, _) => {
            return Err(ApiError::new(
                ErrorCode::InvalidTransition,
                "a pending consent is completed with evidence and verification, not renewed",
            ));
        }
        (Recorded::Active, _) => {}
    }
    let mut next = s.successor(&cur, &p, Change::Renew);
    next.active_from_ms = from;
    next.active_until_ms = until;
    next.grace_until_ms = model::grace_until(until, s.grace_days(&cur.tenant_id));
    next.status = model::status_after_evidence(
        cur.capture_mode,
        !req.evidence_attachment_ids.is_empty(),
        true,
    );
    next.evidence_attachment_ids = req.evidence_attachment_ids;
    s.commit(&p, &next).await?;
    Ok(with_etag(StatusCode::OK, next.version, view(&next, now)))
}
