//! Person records (channels, status) and aggregate epochs.

use super::*;

// ---------------------------------------------------------------------------------------------
// Persons and aggregate epochs

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PersonReq {
    verification: String,
    status: String,
    #[serde(default)]
    channels: Vec<String>,
}

/// `PUT /v1/consents/persons/{person_id}`: a person's verification and contact state, as SCP's
/// person registry reports it (registrar or root; CON-3, CON-11, CON-34).
#[utoipa::path(put,
    path = "/v1/consents/persons/{person_id}",
    tag = "consent",
    summary = "Report a person's verification and contact state (registrar)",
    params(("person_id" = String, Path)),
    request_body = PersonReq,
    responses((status = 200, description = "The person", body = Object)))]
pub(super) async fn put_person(
    State(s): State<ConsentHttp>,
    Path(person_id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let (p, a) = s.authenticate(&headers).await?;
    if !(a.registrar || a.root) {
        return Err(ApiError::forbidden(
            "reporting persons needs the registrar role",
        ));
    }
    let req: PersonReq = parse(body)?;
    check_token("person_id", &person_id)?;
    if !matches!(req.verification.as_str(), "verified" | "provisional") {
        return Err(ApiError::invalid(
            "verification",
            "must be `verified` or `provisional`",
        ));
    }
    if !matches!(req.status.as_str(), "active" | "inactive" | "archived") {
        return Err(ApiError::invalid(
            "status",
            "must be `active`, `inactive` or `archived`",
        ));
    }
    let mut channels = req.channels;
    if channels
        .iter()
        .any(|c| !matches!(c.as_str(), "email" | "sms"))
    {
        return Err(ApiError::invalid(
            "channels",
            "each must be `email` or `sms`",
        ));
    }
    channels.sort();
    channels.dedup();
    let rec = PersonRecord {
        tenant_id: p.tenant_id.clone(),
        person_id,
        verification: req.verification,
        status: req.status,
        channels,
        updated_ms: s.consents.now_ms(),
    };
    s.record(
        AuditEvent::new(
            RecordKind::AdminChange,
            Some(&p.tenant_id),
            json!({
                "action": "consent_person_put",
                "person_ref": s.consents.person_ref(&rec.tenant_id, &rec.person_id),
                "verification": rec.verification,
                "status": rec.status,
                "channels": rec.channels,
            }),
        )
        .actor(p.subject.clone()),
    )
    .await?;
    s.store()
        .consent_put_person(&rec)
        .await
        .map_err(ApiError::from)?;
    Ok((StatusCode::OK, axum::Json(person_view(&rec))).into_response())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct EpochReq {
    epoch: String,
}

/// `PUT /v1/consents/aggregates/{route_id}/epoch`: the refresh epoch of an aggregate route;
/// withdrawals after it block the route until the producer declares a newer one (registrar or
/// root; INT-4.3-4, CON-23).
#[utoipa::path(put,
    path = "/v1/consents/aggregates/{route_id}/epoch",
    tag = "consent",
    summary = "Declare an aggregate route's refresh epoch (registrar)",
    params(("route_id" = String, Path)),
    request_body = EpochReq,
    responses((status = 200, description = "Stored", body = Object)))]
pub(super) async fn set_epoch(
    State(s): State<ConsentHttp>,
    Path(route_id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let (p, a) = s.authenticate(&headers).await?;
    if !(a.registrar || a.root) {
        return Err(ApiError::forbidden(
            "declaring aggregate epochs needs the registrar role",
        ));
    }
    let req: EpochReq = parse(body)?;
    check_token("route_id", &route_id)?;
    let epoch = parse_instant(&req.epoch).map_err(|m| ApiError::invalid("epoch", m))?;
    s.record(
        AuditEvent::new(
            RecordKind::AdminChange,
            Some(&p.tenant_id),
            json!({"action": "consent_aggregate_epoch", "route_id": route_id, "epoch_ms": epoch}),
        )
        .actor(p.subject.clone()),
    )
    .await?;
    let now = s.consents.now_ms();
    s.store()
        .consent_set_aggregate_epoch(&p.tenant_id, &route_id, epoch, &p.subject, now)
        .await
        .map_err(ApiError::from)?;
    Ok(axum::Json(json!({"route_id": route_id, "epoch": rfc3339(epoch)})).into_response())
}
