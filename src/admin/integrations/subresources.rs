//! Webhook subscriptions and schema mappings of an integration (ONB-5), and the webhook
//! delivery routes: deliveries with their attempts, replay of a dead letter, secret rotation
//! (EXT-4.3-2, EXT-5.1-1), plus the circuit's lifecycle action (ONB-LOG-01). Delivery itself is
//! `crate::webhooks`.

use super::*;
use crate::webhooks::guard::Refused;

// ---------------------------------------------------------------------------------------------
// Webhooks and schema mappings (ONB-5)

/// A resource kept per integration: a webhook subscription or a schema mapping.
pub(super) trait Sub: Send + Sync + 'static {
    const KIND: DocKind;
    /// Permission to change it.
    const PERMISSION: &'static str;
    /// Id prefix and the name in messages and audit actions.
    const PREFIX: &'static str;
    const NAME: &'static str;
    /// Validates a body into the stored fields (without ids).
    fn build(s: &AdminHttp, body: Result<Bytes, BytesRejection>) -> Result<Value, ApiError>;
}

pub(super) struct Webhook;
pub(super) struct Mapping;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct WebhookBody {
    url: String,
    events: Vec<String>,
    #[serde(default)]
    description: Option<String>,
}

impl Sub for Webhook {
    const KIND: DocKind = DocKind::Webhook;
    const PERMISSION: &'static str = "integrations.webhooks";
    const PREFIX: &'static str = "wh";
    const NAME: &'static str = "webhook";
    fn build(s: &AdminHttp, body: Result<Bytes, BytesRejection>) -> Result<Value, ApiError> {
        let b: WebhookBody = parse(body)?;
        let u = reqwest::Url::parse(&b.url)
            .map_err(|_| ApiError::invalid("url", "must be an absolute URL"))?;
        let allow = s.access.auth().config().webhook_allow_http_loopback;
        match crate::webhooks::guard::check_url(&u, allow) {
            Ok(()) => {}
            Err(Refused::Scheme) => {
                return Err(ApiError::invalid(
                    "url",
                    "webhooks are delivered over https only",
                ));
            }
            Err(Refused::Address(range)) => {
                return Err(ApiError::invalid(
                    "url",
                    format!("the address is in a refused range ({range}) (INT-5.1-1)"),
                ));
            }
            Err(_) => {
                return Err(ApiError::invalid(
                    "url",
                    "needs a host and must not carry credentials (user info)",
                ));
            }
        }
        if b.url.len() > 2048 {
            return Err(ApiError::invalid("url", "at most 2048 characters"));
        }
        if b.events.is_empty() || b.events.len() > 32 {
            return Err(ApiError::invalid("events", "one to 32 events"));
        }
        for (k, e) in b.events.iter().enumerate() {
            let ok =
                e.split('.').count() >= 2 && e.len() <= 64 && e.split('.').all(|p| is_slug(p, 64));
            if !ok || b.events[..k].contains(e) {
                return Err(ApiError::invalid(
                    format!("events[{k}]"),
                    "an event name such as `consent.revoked`, once",
                ));
            }
        }
        if let Some(d) = &b.description {
            non_blank("description", d, 500)?;
        }
        Ok(json!({"url": u.as_str(), "events": b.events, "description": b.description}))
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct MappingBody {
    name: String,
    /// `inbound` (partner → SCP) or `outbound`.
    direction: String,
    fields: Vec<FieldPair>,
}

#[derive(Deserialize, serde::Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct FieldPair {
    source: String,
    target: String,
}

impl Sub for Mapping {
    const KIND: DocKind = DocKind::SchemaMapping;
    const PERMISSION: &'static str = "integrations.mappings";
    const PREFIX: &'static str = "sm";
    const NAME: &'static str = "schema_mapping";
    fn build(_: &AdminHttp, body: Result<Bytes, BytesRejection>) -> Result<Value, ApiError> {
        let b: MappingBody = parse(body)?;
        non_blank("name", &b.name, 200)?;
        if !matches!(b.direction.as_str(), "inbound" | "outbound") {
            return Err(ApiError::invalid("direction", "`inbound` or `outbound`"));
        }
        if b.fields.is_empty() || b.fields.len() > 500 {
            return Err(ApiError::invalid("fields", "one to 500 field pairs"));
        }
        for (k, f) in b.fields.iter().enumerate() {
            non_blank(&format!("fields[{k}].source"), &f.source, 256)?;
            non_blank(&format!("fields[{k}].target"), &f.target, 256)?;
            if b.fields[..k].iter().any(|g| g.target == f.target) {
                return Err(ApiError::invalid(
                    format!("fields[{k}].target"),
                    "each target field is mapped once",
                ));
            }
        }
        Ok(json!({"name": b.name, "direction": b.direction, "fields": b.fields}))
    }
}

pub(super) fn sub_view(d: &StoredDoc) -> Value {
    let mut v: Value = serde_json::from_str(&d.doc).unwrap_or(Value::Null);
    v["version"] = json!(d.version);
    v["created_at"] = json!(d.created_at);
    v["updated_at"] = json!(d.updated_at);
    v
}

/// The sub-resource `sub` of integration `cur`, or 404.
pub(super) async fn load_sub<T: Sub>(
    s: &AdminHttp,
    cur: &Current,
    sub: &str,
) -> Result<StoredDoc, ApiError> {
    let d = s
        .store
        .document(T::KIND, sub)
        .await
        .map_err(|e| ApiError::unavailable("policy store", &e))?
        .filter(|d| match d.tenant.as_deref() {
            Some(t) if t == cur.integ.tenant => true,
            Some(t) => {
                crate::admin::ledger::cross_tenant(t);
                false
            }
            None => false,
        })
        .filter(|d| {
            serde_json::from_str::<Value>(&d.doc)
                .is_ok_and(|v| v["integration_id"] == json!(cur.integ.id))
        })
        .ok_or_else(|| ApiError::not_found(format!("no {} `{sub}`", T::NAME)))?;
    Ok(d)
}

/// `POST /v1/integrations/{id}/webhooks|schema-mappings`: creates one (201, `ETag`).
pub(super) async fn sub_create<T: Sub>(
    State(s): State<AdminHttp>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let (caller, via, cur) = open(&s, &headers, &id, T::PERMISSION).await?;
    let mut doc = T::build(&s, body)?;
    archived(&cur.integ)?;
    let sub = format!("{}-{}", T::PREFIX, uuid::Uuid::now_v7().simple());
    doc["id"] = json!(sub);
    doc["integration_id"] = json!(id);
    doc["tenant"] = json!(cur.integ.tenant);
    // A webhook's signing secret (EXT-5.1-1) is stored before the subscription: a failure
    // leaves no subscription without a secret, only an unused secret row.
    let secret = if T::KIND == DocKind::Webhook {
        let sec = crate::webhooks::new_secret();
        s.store
            .webhook_secret_create(&sub, &sec, crate::api::now_ms())
            .await
            .map_err(|e| ApiError::unavailable("policy store", &e))?;
        Some(sec)
    } else {
        None
    };
    let w = s
        .commit(
            &caller,
            &via,
            ChangeRecord::admin(
                format!("{}.create", T::NAME),
                &cur.integ.tenant,
                &sub,
                json!({"integration_id": id}),
            ),
            vec![
                DocChange::put(T::KIND, &sub, Some(&cur.integ.tenant), doc.to_string())
                    .status("active")
                    .expect(Expect::Absent),
            ],
        )
        .await?;
    doc["version"] = json!(w.versions[0]);
    if let Some(sec) = secret {
        // Shown once; only the server keeps it.
        doc["secret"] = json!(sec);
        return Ok(no_store(with_etag(StatusCode::CREATED, w.versions[0], doc)));
    }
    Ok(with_etag(StatusCode::CREATED, w.versions[0], doc))
}

/// `GET /v1/integrations/{id}/webhooks|schema-mappings` (`integrations.read`).
pub(super) async fn sub_list<T: Sub>(
    State(s): State<AdminHttp>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let (_, _, cur) = open(&s, &headers, &id, "integrations.read").await?;
    let docs = s
        .store
        .documents(T::KIND, Some(&cur.integ.tenant))
        .await
        .map_err(|e| ApiError::unavailable("policy store", &e))?;
    let items: Vec<Value> = docs
        .iter()
        .map(sub_view)
        .filter(|v| v["integration_id"] == json!(id))
        .collect();
    Ok(axum::Json(json!({"integration_id": id, "items": items})).into_response())
}

/// `GET /v1/integrations/{id}/webhooks|schema-mappings/{sub}` (`integrations.read`).
pub(super) async fn sub_get<T: Sub>(
    State(s): State<AdminHttp>,
    Path((id, sub)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult {
    let (_, _, cur) = open(&s, &headers, &id, "integrations.read").await?;
    let d = load_sub::<T>(&s, &cur, &sub).await?;
    Ok(with_etag(StatusCode::OK, d.version, sub_view(&d)))
}

/// `PUT /v1/integrations/{id}/webhooks|schema-mappings/{sub}` (`If-Match`): replaces it.
pub(super) async fn sub_put<T: Sub>(
    State(s): State<AdminHttp>,
    Path((id, sub)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let (caller, via, cur) = open(&s, &headers, &id, T::PERMISSION).await?;
    let d = load_sub::<T>(&s, &cur, &sub).await?;
    let mut doc = T::build(&s, body)?;
    precondition(&headers, d.version, &format!("{} {sub}", T::NAME))?;
    archived(&cur.integ)?;
    doc["id"] = json!(sub);
    doc["integration_id"] = json!(id);
    doc["tenant"] = json!(cur.integ.tenant);
    let w = s
        .commit(
            &caller,
            &via,
            ChangeRecord::admin(
                format!("{}.update", T::NAME),
                &cur.integ.tenant,
                &sub,
                json!({"integration_id": id}),
            ),
            vec![
                DocChange::put(T::KIND, &sub, Some(&cur.integ.tenant), doc.to_string())
                    .status("active")
                    .expect(Expect::Version(d.version)),
            ],
        )
        .await?;
    doc["version"] = json!(w.versions[0]);
    Ok(with_etag(StatusCode::OK, w.versions[0], doc))
}

/// `DELETE /v1/integrations/{id}/webhooks|schema-mappings/{sub}` (`If-Match`): 204.
pub(super) async fn sub_delete<T: Sub>(
    State(s): State<AdminHttp>,
    Path((id, sub)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult {
    let (caller, via, cur) = open(&s, &headers, &id, T::PERMISSION).await?;
    let d = load_sub::<T>(&s, &cur, &sub).await?;
    precondition(&headers, d.version, &format!("{} {sub}", T::NAME))?;
    archived(&cur.integ)?;
    s.commit(
        &caller,
        &via,
        ChangeRecord::admin(
            format!("{}.delete", T::NAME),
            &cur.integ.tenant,
            &sub,
            json!({"integration_id": id}),
        ),
        vec![DocChange::delete(T::KIND, &sub).expect(Expect::Version(d.version))],
    )
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The five annotated handlers of one sub-resource kind (the generic handlers above do the work).
macro_rules! sub_handlers {
    ($kind:ty, $body:ident, $perm:tt, $coll:tt, $item:tt,
     $create:ident: $create_s:tt, $list:ident: $list_s:tt, $get:ident: $get_s:tt,
     $put:ident: $put_s:tt, $delete:ident: $delete_s:tt) => {
        #[utoipa::path(post, path = $coll, tag = "integrations", summary = $create_s,
            params(("id" = String, Path)), request_body = $body,
            security(("bearer" = [$perm])),
            responses((status = 201, description = "Created; ETag = version", body = Object)))]
        pub(super) async fn $create(
            st: State<AdminHttp>,
            id: Path<String>,
            headers: HeaderMap,
            body: Result<Bytes, BytesRejection>,
        ) -> ApiResult {
            sub_create::<$kind>(st, id, headers, body).await
        }

        #[utoipa::path(get, path = $coll, tag = "integrations", summary = $list_s,
            params(("id" = String, Path)),
            security(("bearer" = ["integrations.read"])),
            responses((status = 200, description = "The list", body = Object)))]
        pub(super) async fn $list(
            st: State<AdminHttp>,
            id: Path<String>,
            headers: HeaderMap,
        ) -> ApiResult {
            sub_list::<$kind>(st, id, headers).await
        }

        #[utoipa::path(get, path = $item, tag = "integrations", summary = $get_s,
            params(("id" = String, Path), ("sub" = String, Path)),
            security(("bearer" = ["integrations.read"])),
            responses((status = 200, description = "ETag = version", body = Object)))]
        pub(super) async fn $get(
            st: State<AdminHttp>,
            ids: Path<(String, String)>,
            headers: HeaderMap,
        ) -> ApiResult {
            sub_get::<$kind>(st, ids, headers).await
        }

        #[utoipa::path(put, path = $item, tag = "integrations", summary = $put_s,
            params(("id" = String, Path), ("sub" = String, Path), crate::api::openapi::IfMatch),
            request_body = $body,
            security(("bearer" = [$perm])),
            responses((status = 200, description = "Replaced; ETag = version", body = Object)))]
        pub(super) async fn $put(
            st: State<AdminHttp>,
            ids: Path<(String, String)>,
            headers: HeaderMap,
            body: Result<Bytes, BytesRejection>,
        ) -> ApiResult {
            sub_put::<$kind>(st, ids, headers, body).await
        }

        #[utoipa::path(delete, path = $item, tag = "integrations", summary = $delete_s,
            params(("id" = String, Path), ("sub" = String, Path), crate::api::openapi::IfMatch),
            security(("bearer" = [$perm])),
            responses((status = 204, description = "Deleted")))]
        pub(super) async fn $delete(
            st: State<AdminHttp>,
            ids: Path<(String, String)>,
            headers: HeaderMap,
        ) -> ApiResult {
            sub_delete::<$kind>(st, ids, headers).await
        }
    };
}

sub_handlers!(Webhook, WebhookBody, "integrations.webhooks",
    "/v1/integrations/{id}/webhooks", "/v1/integrations/{id}/webhooks/{sub}",
    webhook_create: "Create a webhook subscription (ONB-5)",
    webhook_list: "List webhook subscriptions",
    webhook_get: "One webhook subscription",
    webhook_put: "Replace a webhook subscription",
    webhook_delete: "Delete a webhook subscription");

sub_handlers!(Mapping, MappingBody, "integrations.mappings",
    "/v1/integrations/{id}/schema-mappings", "/v1/integrations/{id}/schema-mappings/{sub}",
    mapping_create: "Create a schema mapping (ONB-5)",
    mapping_list: "List schema mappings",
    mapping_get: "One schema mapping",
    mapping_put: "Replace a schema mapping",
    mapping_delete: "Delete a schema mapping");

// ---------------------------------------------------------------------------------------------
// Webhook deliveries, replay, secret rotation (EXT-4.3-2, INT-9.2-1, EXT-5.1-1)

/// Deliveries listed per subscription.
const DELIVERY_PAGE: i64 = 100;

fn delivery_view(
    r: &crate::webhooks::WebhookRow,
    attempts: &[crate::webhooks::WebhookAttempt],
) -> Value {
    json!({
        "id": r.id,
        "event_type": r.event_type,
        "event_id": serde_json::from_str::<Value>(&r.payload).ok().map(|v| v["id"].clone()),
        "status": if r.status == "failed" { "dead_letter" } else { r.status.as_str() },
        "reason": r.reason,
        "attempts": attempts.iter().map(|a| json!({
            "attempt": a.attempt,
            "status": a.status,
            "http_status": a.http_status,
            "latency_ms": a.latency_ms,
            "error_class": a.error_class,
            "time": rfc3339(a.time_ms),
        })).collect::<Vec<_>>(),
        "next_attempt_at": (r.status == "pending").then(|| rfc3339(r.next_attempt_ms)),
        "created_at": rfc3339(r.created_ms),
        "updated_at": rfc3339(r.updated_ms),
    })
}

/// `GET /v1/integrations/{id}/webhooks/{sub}/deliveries` (`integrations.read`): the newest 100
/// deliveries of the subscription, newest first, each with every attempt (status, HTTP status,
/// latency ms, error class; never the receiver's answer) (EXT-4.3-2). Status `pending`, `sent`
/// or `dead_letter`.
#[utoipa::path(get,
    path = "/v1/integrations/{id}/webhooks/{sub}/deliveries",
    tag = "integrations",
    summary = "Deliveries of a webhook subscription with their attempts (EXT-4.3-2)",
    params(("id" = String, Path), ("sub" = String, Path)),
    security(("bearer" = ["integrations.read"])),
    responses((status = 200, description = "The deliveries", body = Object)))]
pub(super) async fn webhook_deliveries(
    State(s): State<AdminHttp>,
    Path((id, sub)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult {
    let (_, _, cur) = open(&s, &headers, &id, "integrations.read").await?;
    load_sub::<Webhook>(&s, &cur, &sub).await?;
    let unavailable = |e: crate::store::StoreError| ApiError::unavailable("policy store", &e);
    let rows = s
        .store
        .webhook_rows_of(&sub, DELIVERY_PAGE)
        .await
        .map_err(unavailable)?;
    let mut items = Vec::with_capacity(rows.len());
    for r in &rows {
        let a = s.store.webhook_attempts(&r.id).await.map_err(unavailable)?;
        items.push(delivery_view(r, &a));
    }
    Ok(
        axum::Json(json!({"integration_id": id, "subscription_id": sub, "items": items}))
            .into_response(),
    )
}

/// `POST /v1/integrations/{id}/webhooks/{sub}/deliveries/{delivery}/replay`
/// (`integrations.webhooks`): puts a dead-lettered delivery back in the queue with a fresh
/// retry budget, audited (`webhook.replay`) (INT-9.2-1). 202 with the delivery. Errors: 404
/// (unknown delivery of this subscription), 409 `INVALID_TRANSITION` (not a dead letter).
#[utoipa::path(post,
    path = "/v1/integrations/{id}/webhooks/{sub}/deliveries/{delivery}/replay",
    tag = "integrations",
    summary = "Replay a dead-lettered webhook delivery (INT-9.2-1)",
    params(("id" = String, Path), ("sub" = String, Path), ("delivery" = String, Path)),
    security(("bearer" = ["integrations.webhooks"])),
    responses((status = 202, description = "Queued again", body = Object)))]
pub(super) async fn webhook_replay(
    State(s): State<AdminHttp>,
    Path((id, sub, delivery)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> ApiResult {
    let (caller, via, cur) = open(&s, &headers, &id, Webhook::PERMISSION).await?;
    load_sub::<Webhook>(&s, &cur, &sub).await?;
    let unavailable = |e: crate::store::StoreError| ApiError::unavailable("policy store", &e);
    let row = s
        .store
        .webhook_row(&delivery)
        .await
        .map_err(unavailable)?
        .filter(|r| r.target == sub)
        .ok_or_else(|| ApiError::not_found(format!("no delivery `{delivery}`")))?;
    if row.status != "failed" {
        return Err(ApiError::new(
            ErrorCode::InvalidTransition,
            format!(
                "delivery `{delivery}` is {}; only dead letters are replayed",
                row.status
            ),
        ));
    }
    s.commit(
        &caller,
        &via,
        ChangeRecord::admin(
            "webhook.replay",
            &cur.integ.tenant,
            &sub,
            json!({"integration_id": id, "delivery_id": delivery, "event_type": row.event_type}),
        ),
        vec![],
    )
    .await?;
    let now = crate::api::now_ms();
    if !s
        .store
        .webhook_replay(&delivery, now)
        .await
        .map_err(unavailable)?
    {
        return Err(ApiError::new(
            ErrorCode::InvalidTransition,
            format!("delivery `{delivery}` is no longer a dead letter"),
        ));
    }
    let row = s
        .store
        .webhook_row(&delivery)
        .await
        .map_err(unavailable)?
        .unwrap_or(row);
    let a = s
        .store
        .webhook_attempts(&delivery)
        .await
        .map_err(unavailable)?;
    Ok((StatusCode::ACCEPTED, axum::Json(delivery_view(&row, &a))).into_response())
}

/// `POST /v1/integrations/{id}/webhooks/{sub}/rotate-secret` (`integrations.webhooks`): a new
/// signing secret, shown once; the previous one keeps signing (a second `v1,…` in
/// `webhook-signature`) for `webhooks.secret_overlap_s` (EXT-5.1-1). Audited
/// (`webhook.rotate_secret`, never the secret).
#[utoipa::path(post,
    path = "/v1/integrations/{id}/webhooks/{sub}/rotate-secret",
    tag = "integrations",
    summary = "Rotate a webhook signing secret (EXT-5.1-1)",
    params(("id" = String, Path), ("sub" = String, Path)),
    security(("bearer" = ["integrations.webhooks"])),
    responses((status = 200, description = "The new secret, once", body = Object)))]
pub(super) async fn webhook_rotate_secret(
    State(s): State<AdminHttp>,
    Path((id, sub)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult {
    let (caller, via, cur) = open(&s, &headers, &id, Webhook::PERMISSION).await?;
    load_sub::<Webhook>(&s, &cur, &sub).await?;
    archived(&cur.integ)?;
    let now = crate::api::now_ms();
    let overlap_ms =
        i64::try_from(s.webhooks.secret_overlap_s.saturating_mul(1000)).unwrap_or(i64::MAX);
    let until = now.saturating_add(overlap_ms);
    s.commit(
        &caller,
        &via,
        ChangeRecord {
            kind: RecordKind::CredentialRotated,
            action: "webhook.rotate_secret".into(),
            tenant: cur.integ.tenant.clone(),
            subject: sub.clone(),
            detail: json!({"integration_id": id, "credential": "webhook_secret",
                           "previous_valid_until": rfc3339(until)}),
        },
        vec![],
    )
    .await?;
    let sec = crate::webhooks::new_secret();
    let unavailable = |e: crate::store::StoreError| ApiError::unavailable("policy store", &e);
    if !s
        .store
        .webhook_secret_rotate(&sub, &sec, until, now)
        .await
        .map_err(unavailable)?
    {
        s.store
            .webhook_secret_create(&sub, &sec, now)
            .await
            .map_err(unavailable)?;
    }
    Ok(no_store(
        (
            StatusCode::OK,
            axum::Json(json!({
                "integration_id": id,
                "subscription_id": sub,
                "secret": sec,
                "previous_valid_until": rfc3339(until),
                "shown_once": true,
            })),
        )
            .into_response(),
    ))
}

/// The webhook circuit's action on integration `id` (ONB-LOG-01): `restrict`, or `suspend` when
/// its tenant sets `webhook_circuit_action: suspend`, through the lifecycle table ([`RULES`];
/// a state the action is not allowed from is left alone), audited first (`admin_change`, actor
/// `webhooks`, reason `webhook_failures`), written with a version check together with its
/// `integration.state_changed` event. Returns the new state, or `None` when nothing changed. The
/// caller reloads the policy.
pub async fn circuit_act(
    store: &Store,
    audit: Option<&AuditLog>,
    engine: Option<&Engine>,
    id: &str,
    subscription: &str,
    failures: i64,
) -> anyhow::Result<Option<&'static str>> {
    let Some(d) = store.document(DocKind::Integration, id).await? else {
        return Ok(None);
    };
    let mut i: Integration = serde_json::from_str(&d.doc)?;
    let suspend = engine.is_some_and(|e| {
        let snap = e.snapshot().load_full();
        (*snap)
            .as_ref()
            .and_then(|s| s.tenants.get(&i.tenant))
            .is_some_and(|t| {
                t.tenant.webhook_circuit_action == Some(crate::policy::CircuitAction::Suspend)
            })
    });
    let action = if suspend { "suspend" } else { "restrict" };
    let Some(rule) = RULES.iter().find(|r| r.action == action) else {
        return Ok(None);
    };
    let from = i.state;
    if !rule.from.contains(&from) {
        return Ok(None);
    }
    if let Some(a) = audit {
        a.record_event(
            &AuditEvent::new(
                RecordKind::AdminChange,
                Some(&i.tenant),
                json!({"action": format!("integration.{action}"), "via": "webhooks",
                       "from": from.as_str(), "to": rule.to.as_str(),
                       "reason_code": "webhook_failures", "subscription_id": subscription,
                       "consecutive_failures": failures}),
            )
            .actor("webhooks")
            .subject(id),
        )
        .await
        .map_err(|e| anyhow::anyhow!("audit: {e}"))?;
    }
    i.state = rule.to;
    let events = crate::webhooks::state_changed_rows(
        store,
        &i.tenant,
        id,
        json!({"from": from.as_str(), "to": rule.to.as_str(), "action": action,
               "reason_code": "webhook_failures"}),
    )
    .await;
    match store
        .write_documents_with(
            &[put_integration(&i, Expect::Version(d.version))],
            Source::Api,
            "webhooks",
            None,
            &events,
        )
        .await
    {
        Ok(_) => Ok(Some(rule.to.as_str())),
        Err(crate::store::WriteError::Conflict { .. }) => Ok(None),
        Err(e) => Err(anyhow::anyhow!("{e}")),
    }
}
