//! Provisioning the Keycloak client, secret rotation, API keys and health.

use super::*;

// ---------------------------------------------------------------------------------------------
// Provisioning and credentials

pub(super) fn provisioner(
    s: &AdminHttp,
) -> Result<&Arc<dyn crate::admin::keycloak::Provisioner>, ApiError> {
    s.provisioner.as_ref().ok_or_else(|| {
        ApiError::new(
            ErrorCode::ProvisionerUnavailable,
            "no identity provider admin API is configured (`admin.keycloak`)",
        )
    })
}

/// The realm and audience of `tenant` (from its issuer, `…/realms/<realm>`).
pub(super) fn realm_and_audience(
    s: &AdminHttp,
    tenant: &str,
) -> Result<(String, String), ApiError> {
    let snap = s.engine.snapshot().load_full();
    let t = snap
        .as_ref()
        .as_ref()
        .and_then(|sn| sn.tenants.get(tenant).cloned())
        .ok_or_else(|| ApiError::invalid("tenant", "unknown tenant"))?;
    let realm = realm_of_issuer(&t.tenant.issuer).ok_or_else(|| {
        ApiError::new(
            ErrorCode::RealmUnknown,
            "the tenant's issuer is not a Keycloak realm URL (`…/realms/<realm>`)",
        )
    })?;
    let aud = t
        .tenant
        .audience
        .clone()
        .unwrap_or_else(|| s.audience.clone());
    Ok((realm.to_owned(), aud))
}

pub(super) fn credential_doc(
    i: &Integration,
    kind: &str,
    secret: &Secret,
    created_ms: i64,
    status: &str,
) -> DocChange {
    let id = format!("{}.{kind}", i.id);
    let doc = json!({
        "id": id,
        "integration_id": i.id,
        "tenant": i.tenant,
        "type": kind,
        "client_id": if kind == "client_secret" { json!(i.client_id) } else { Value::Null },
        "sha256": secret.sha256_hex(),
        "created_ms": created_ms,
        "status": status,
    });
    DocChange::put(DocKind::Credential, &id, Some(&i.tenant), doc.to_string()).status(status)
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CredentialBody {
    #[serde(default)]
    reason_code: Option<String>,
    #[serde(default)]
    reason_text: Option<String>,
}

impl CredentialBody {
    fn check(&self) -> Result<(), ApiError> {
        if let Some(c) = &self.reason_code {
            check_reason("reason_code", c, "reason_text", self.reason_text.as_deref())?;
        }
        Ok(())
    }
}

/// `POST /v1/integrations/{id}/provision` (`integrations.provision`, `If-Match`): creates the
/// Keycloak client of an approved integration (ONB-4) and answers 201 with `client_id` and
/// `client_secret`, shown this once (`Cache-Control: no-store`); the integration is bound to the
/// client. Audit kind `credential_issued` (ONB-AUD-1). When the store write fails after the
/// client was created, the client is deleted again.
///
/// Errors: 409 `INVALID_TRANSITION` (not approved), `ALREADY_PROVISIONED`, `CLIENT_EXISTS`,
/// `REALM_UNKNOWN`; 503 `PROVISIONER_UNAVAILABLE` (not configured or unreachable).
#[utoipa::path(post,
    path = "/v1/integrations/{id}/provision",
    tag = "integrations",
    summary = "Create the identity-provider client and issue its secret once (ONB-4)",
    params(("id" = String, Path, description = "The integration id"), crate::api::openapi::IfMatch),
    request_body = CredentialBody,
    security(("bearer" = ["integrations.provision"])),
    responses((status = 201, description = "The client id and the secret (shown once; cache-control: no-store)", body = Object)))]
pub(super) async fn provision(
    State(s): State<AdminHttp>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let (caller, via, cur) = open(&s, &headers, &id, "integrations.provision").await?;
    let b: CredentialBody = parse(body)?;
    b.check()?;
    precondition(&headers, cur.version, &format!("integration {id}"))?;
    archived(&cur.integ)?;
    if cur.integ.state != S::Approved {
        return Err(ApiError::new(
            ErrorCode::InvalidTransition,
            format!(
                "only approved integrations are provisioned; `{id}` is {}",
                cur.integ.state.as_str()
            ),
        ));
    }
    if cur.integ.client_id.is_some() {
        return Err(ApiError::new(
            ErrorCode::AlreadyProvisioned,
            "the integration has its client; rotate its secret instead",
        ));
    }
    let p = provisioner(&s)?.clone();
    let (realm, audience) = realm_and_audience(&s, &cur.integ.tenant)?;
    let spec = ClientSpec {
        realm: realm.clone(),
        client_id: format!("scp-{}", cur.integ.id),
        tenant_id: cur.integ.tenant.clone(),
        integration_id: cur.integ.id.clone(),
        verticals: cur.integ.verticals.clone(),
        audience,
        name: cur.integ.partner_name.clone(),
    };
    let created = p.create_client(&spec).await.map_err(ApiError::from)?;
    let now = crate::api::now_ms();
    let mut i = cur.integ.clone();
    i.client_id = Some(spec.client_id.clone());
    i.onboarding
        .get_or_insert_with(Onboarding::default)
        .provisioned_at = rfc3339(now).as_str().map(str::to_owned);
    let record = ChangeRecord {
        kind: RecordKind::CredentialIssued,
        action: "integration.provision".into(),
        tenant: i.tenant.clone(),
        subject: i.id.clone(),
        detail: json!({"client_id": spec.client_id, "realm": realm, "credential": "client_secret",
                       "reason_code": b.reason_code, "reason_text": b.reason_text}),
    };
    let changes = vec![
        put_integration(&i, Expect::Version(cur.version)),
        credential_doc(&i, "client_secret", &created.secret, now, "active"),
    ];
    let w = match s.commit(&caller, &via, record, changes).await {
        Ok(w) => w,
        Err(e) => {
            if let Err(d) = p.delete_client(&realm, &spec.client_id).await {
                tracing::error!(error = %d, client_id = %spec.client_id, "orphaned identity provider client could not be deleted");
            }
            return Err(e);
        }
    };
    let mut v = view(&i, w.versions[0], None);
    v["credentials"] = json!({
        "client_id": spec.client_id,
        "client_secret": created.secret.expose(),
        "shown_once": true,
    });
    Ok(no_store(with_etag(StatusCode::CREATED, w.versions[0], v)))
}

/// `POST /v1/integrations/{id}/credentials/rotate` (`integrations.credentials`): regenerates the
/// client secret at the identity provider (the old one stops working) and shows the new one once
/// (ONB-AUD-2, audit `credential_rotated`). Its age restarts.
///
/// Recoverable in three audited steps: (1) a pending rotation marker (`rotation`, with a fresh
/// `attempt` id) is written to the `client_secret` credential document (audit `admin_change`,
/// action `integration.rotate_secret_begin`) before Keycloak is called; (2) Keycloak regenerates
/// the secret; (3) the new secret's SHA-256 is stored and the marker cleared (audit
/// `credential_rotated`). When step 2 or 3 fails the marker stays (`rotation_pending` in
/// `GET …/credentials`) and the secret Keycloak may hold is never shown to anyone; the next call
/// re-issues deterministically (a fresh regeneration, which invalidates the unshown one) and its
/// records name the attempt it `recovers`. A failure in step 1 changes nothing anywhere.
///
/// Errors: 409 `NOT_PROVISIONED` | `ARCHIVED` | `CLIENT_MISSING`; 503 `PROVISIONER_UNAVAILABLE`;
/// 503 `AUDIT_UNAVAILABLE` | `DEPENDENCY_UNAVAILABLE` (nothing done, or a pending rotation that
/// the next call completes: the message says which).
#[utoipa::path(post,
    path = "/v1/integrations/{id}/credentials/rotate",
    tag = "integrations",
    summary = "Rotate the client secret (shown once)",
    params(("id" = String, Path, description = "The integration id"), crate::api::openapi::IfMatch),
    request_body = CredentialBody,
    security(("bearer" = ["integrations.credentials"])),
    responses((status = 200, description = "The new secret (cache-control: no-store)", body = Object)))]
pub(super) async fn rotate(
    State(s): State<AdminHttp>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let (caller, via, cur) = open(&s, &headers, &id, "integrations.credentials").await?;
    let b: CredentialBody = parse(body)?;
    b.check()?;
    archived(&cur.integ)?;
    let Some(client_id) = cur.integ.client_id.clone() else {
        return Err(ApiError::new(
            ErrorCode::NotProvisioned,
            "the integration has no client yet",
        ));
    };
    let p = provisioner(&s)?.clone();
    let (realm, _) = realm_and_audience(&s, &cur.integ.tenant)?;
    let cred_id = keycloak_sync::credential_id(&id);
    let stored = s
        .store
        .document(DocKind::Credential, &cred_id)
        .await
        .map_err(|e| ApiError::unavailable("policy store", &e))?;
    let (mut doc, expect) = match &stored {
        Some(d) => (
            serde_json::from_str::<Value>(&d.doc).unwrap_or_else(|_| json!({})),
            Expect::Version(d.version),
        ),
        None => (json!({}), Expect::Absent),
    };
    if !doc.is_object() {
        doc = json!({});
    }
    let recovers = doc["rotation"]["attempt"].as_str().map(str::to_owned);
    let attempt = uuid::Uuid::now_v7().to_string();
    // 1. The pending marker, before Keycloak is touched.
    let started = crate::api::now_ms();
    let base = json!({"id": cred_id, "integration_id": id, "tenant": cur.integ.tenant,
                      "type": "client_secret", "client_id": client_id, "status": "active"});
    for (k, v) in base.as_object().into_iter().flatten() {
        if doc.get(k).is_none() {
            doc[k] = v.clone();
        }
    }
    if doc.get("sha256").is_none() {
        doc["sha256"] = Value::Null;
        doc["created_ms"] = json!(started);
    }
    doc["rotation"] = json!({"state": "pending", "attempt": attempt, "started_ms": started,
                             "recovers": recovers});
    let begin = ChangeRecord::admin(
        "integration.rotate_secret_begin",
        &cur.integ.tenant,
        &id,
        json!({"client_id": client_id, "credential": "client_secret", "attempt": attempt,
               "recovers": recovers, "reason_code": b.reason_code, "reason_text": b.reason_text}),
    );
    let marker = DocChange::put(
        DocKind::Credential,
        &cred_id,
        Some(&cur.integ.tenant),
        doc.to_string(),
    )
    .status("active")
    .expect(expect);
    let w = s.commit(&caller, &via, begin, vec![marker]).await?;
    // 2. Keycloak. On failure the marker stays: the next call re-issues.
    let secret = p
        .rotate_secret(&realm, &client_id)
        .await
        .map_err(ApiError::from)?;
    // 3. Record it and clear the marker.
    let now = crate::api::now_ms();
    if let Value::Object(m) = &mut doc {
        m.remove("rotation");
    }
    doc["sha256"] = json!(secret.sha256_hex());
    doc["created_ms"] = json!(now);
    doc["status"] = json!("active");
    let record = ChangeRecord {
        kind: RecordKind::CredentialRotated,
        action: "integration.rotate_secret".into(),
        tenant: cur.integ.tenant.clone(),
        subject: cur.integ.id.clone(),
        detail: json!({"client_id": client_id, "credential": "client_secret", "attempt": attempt,
                       "recovers": recovers, "reason_code": b.reason_code, "reason_text": b.reason_text}),
    };
    // INT-5.1-1: never the secret, only that it changed; queued with the change.
    let events = crate::webhooks::rows_for(
        &s.store,
        &cur.integ.tenant,
        &cur.integ.id,
        "credential.rotated",
        json!({"credential": "client_secret", "client_id": client_id}),
        now,
    )
    .await
    .unwrap_or_else(|e| {
        // The identity provider has rotated already: record the rotation without its event.
        tracing::error!(error = %e, integration_id = %cur.integ.id, "webhook subscriptions unreadable; credential.rotated not announced");
        Vec::new()
    });
    let done = DocChange::put(
        DocKind::Credential,
        &cred_id,
        Some(&cur.integ.tenant),
        doc.to_string(),
    )
    .status("active")
    .expect(Expect::Version(w.versions[0]));
    if let Err(e) = s
        .commit_with(&caller, &via, record, vec![done], &events)
        .await
    {
        return Err(ApiError::new(
            e.code,
            format!(
                "the identity provider rotated the secret but it could not be recorded ({}); \
                 the rotation is pending and the unrecorded secret is never shown: rotate again \
                 to re-issue",
                e.message
            ),
        ));
    }
    crate::webhooks::count_events("credential.rotated", events.len() as u64);
    Ok(no_store(
        (
            StatusCode::OK,
            axum::Json(json!({
                "integration_id": id,
                "client_id": client_id,
                "client_secret": secret.expose(),
                "created_at": rfc3339(now),
                "shown_once": true,
                "recovered": recovers.is_some(),
            })),
        )
            .into_response(),
    ))
}

/// `GET /v1/integrations/{id}/credentials` (`integrations.read`): the integration's credentials
/// with `created_at`, `age_days`, `rotation_due` (≥ 90 days, ONB-AUD-2) and `rotation_pending`
/// (a rotation that did not complete: rotate again); never a secret.
#[utoipa::path(get,
    path = "/v1/integrations/{id}/credentials",
    tag = "integrations",
    summary = "Credential metadata (never a secret)",
    params(("id" = String, Path, description = "The integration id")),
    security(("bearer" = ["integrations.read"])),
    responses((status = 200, description = "Credential metadata", body = Object)))]
pub(super) async fn credentials(
    State(s): State<AdminHttp>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let (_, _, cur) = open(&s, &headers, &id, "integrations.read").await?;
    let docs = s
        .store
        .documents(DocKind::Credential, Some(&cur.integ.tenant))
        .await
        .map_err(|e| ApiError::unavailable("policy store", &e))?;
    let now = crate::api::now_ms();
    let out: Vec<Value> = docs
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(&d.doc).ok())
        .filter(|v| v["integration_id"] == json!(id))
        .map(|v| {
            let created = v["created_ms"].as_i64().unwrap_or(now);
            let age_days = (now - created).max(0) / 86_400_000;
            let active = v["status"] == json!("active");
            json!({
                "id": v["id"], "type": v["type"], "client_id": v["client_id"], "status": v["status"],
                "created_at": rfc3339(created), "age_days": age_days,
                "rotation_due": active && age_days >= ROTATION_DAYS,
                "rotation_pending": v["rotation"]["state"] == json!("pending"),
            })
        })
        .collect();
    Ok(axum::Json(json!({"integration_id": id, "credentials": out})).into_response())
}

/// `POST /v1/integrations/{id}/api-key` (`integrations.credentials`, `If-Match`): a new API key
/// (32 random bytes, base64url), shown once; the integration keeps its SHA-256 and every request
/// must then carry it besides the token (second factor only, INT-4.2-5). Replaces a previous key.
/// Audit `credential_issued`.
#[utoipa::path(post,
    path = "/v1/integrations/{id}/api-key",
    tag = "integrations",
    summary = "Issue an API key for handshake routes (shown once)",
    params(("id" = String, Path, description = "The integration id")),
    request_body = CredentialBody,
    security(("bearer" = ["integrations.credentials"])),
    responses((status = 201, description = "The key (cache-control: no-store)", body = Object)))]
pub(super) async fn issue_api_key(
    State(s): State<AdminHttp>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    use base64::Engine as _;
    use rand_core::RngCore;
    let (caller, via, cur) = open(&s, &headers, &id, "integrations.credentials").await?;
    let b: CredentialBody = parse(body)?;
    b.check()?;
    precondition(&headers, cur.version, &format!("integration {id}"))?;
    archived(&cur.integ)?;
    let mut raw = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut raw);
    let key = Secret::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw));
    let now = crate::api::now_ms();
    let mut i = cur.integ.clone();
    i.api_key_sha256 = Some(key.sha256_hex());
    let record = ChangeRecord {
        kind: RecordKind::CredentialIssued,
        action: "integration.issue_api_key".into(),
        tenant: i.tenant.clone(),
        subject: i.id.clone(),
        detail: json!({"credential": "api_key", "replaced": cur.integ.api_key_sha256.is_some(),
                       "reason_code": b.reason_code, "reason_text": b.reason_text}),
    };
    let w = s
        .commit(
            &caller,
            &via,
            record,
            vec![
                put_integration(&i, Expect::Version(cur.version)),
                credential_doc(&i, "api_key", &key, now, "active"),
            ],
        )
        .await?;
    Ok(no_store(with_etag(
        StatusCode::CREATED,
        w.versions[0],
        json!({"integration_id": id, "api_key": key.expose(), "created_at": rfc3339(now),
               "shown_once": true, "version": w.versions[0]}),
    )))
}

/// `DELETE /v1/integrations/{id}/api-key` (`integrations.credentials`, `If-Match`): revokes the
/// API key (audit `credential_revoked`). 404 when the integration has none.
#[utoipa::path(delete,
    path = "/v1/integrations/{id}/api-key",
    tag = "integrations",
    summary = "Revoke the API key",
    params(("id" = String, Path, description = "The integration id")),
    request_body = CredentialBody,
    security(("bearer" = ["integrations.credentials"])),
    responses((status = 200, description = "Revoked", body = Object)))]
pub(super) async fn revoke_api_key(
    State(s): State<AdminHttp>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let (caller, via, cur) = open(&s, &headers, &id, "integrations.credentials").await?;
    let b: CredentialBody = parse(body)?;
    b.check()?;
    precondition(&headers, cur.version, &format!("integration {id}"))?;
    archived(&cur.integ)?;
    if cur.integ.api_key_sha256.is_none() {
        return Err(ApiError::not_found("the integration has no API key"));
    }
    let mut i = cur.integ.clone();
    i.api_key_sha256 = None;
    let cred_id = format!("{id}.api_key");
    let mut changes = vec![put_integration(&i, Expect::Version(cur.version))];
    if let Some(d) = s
        .store
        .document(DocKind::Credential, &cred_id)
        .await
        .map_err(|e| ApiError::unavailable("policy store", &e))?
        && let Ok(mut v) = serde_json::from_str::<Value>(&d.doc)
    {
        v["status"] = json!("revoked");
        v["revoked_ms"] = json!(crate::api::now_ms());
        changes.push(
            DocChange::put(
                DocKind::Credential,
                &cred_id,
                Some(&i.tenant),
                v.to_string(),
            )
            .status("revoked")
            .expect(Expect::Version(d.version)),
        );
    }
    let record = ChangeRecord {
        kind: RecordKind::CredentialRevoked,
        action: "integration.revoke_api_key".into(),
        tenant: i.tenant.clone(),
        subject: i.id.clone(),
        detail: json!({"credential": "api_key", "reason_code": b.reason_code, "reason_text": b.reason_text}),
    };
    let w = s.commit(&caller, &via, record, changes).await?;
    Ok(with_etag(
        StatusCode::OK,
        w.versions[0],
        view(&i, w.versions[0], None),
    ))
}

// ---------------------------------------------------------------------------------------------
// Health

/// `GET /v1/integrations/{id}/health` (`integrations.read`): state, health (`unknown` until the
/// first handshake, then `healthy`), `last_successful_sync`, `last_handshake` (ONB-7, ONB-AUD-4).
#[utoipa::path(get,
    path = "/v1/integrations/{id}/health",
    tag = "integrations",
    summary = "State, health, last success, credential rotation due",
    params(("id" = String, Path, description = "The integration id")),
    security(("bearer" = ["integrations.read"])),
    responses((status = 200, description = "Health", body = Object)))]
pub(super) async fn health(
    State(s): State<AdminHttp>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let (_, _, cur) = open(&s, &headers, &id, "integrations.read").await?;
    let a = s
        .store
        .integration_activity(&id)
        .await
        .map_err(|e| ApiError::unavailable("policy store", &e))?;
    let (health, last_sync, last_hs, failures) = match &a {
        Some(a) => (
            a.health.as_str(),
            a.last_success_ms,
            a.last_handshake_ms,
            a.webhook_failures,
        ),
        None => ("unknown", None, None, 0),
    };
    Ok(axum::Json(json!({
        "integration_id": id,
        "state": cur.integ.state.as_str(),
        "health": health,
        "last_successful_sync": opt_time(last_sync),
        "last_handshake": opt_time(last_hs),
        "webhook_failures": failures,
    }))
    .into_response())
}
