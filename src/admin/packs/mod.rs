//! Policy packs and policy changes (`spec/004_*` "Policy Packs and Policy Changes"; ADM-1,
//! ADM-2, ADM-4, ADM-6, ADM-7, ADM-8).
//!
//! A pack is a vertical's Cedar policy set ([`crate::policy::cedar`] has the schema and the
//! evaluation semantics), stored as an enforced `policy_pack` document ([`PolicyPack`]); a policy
//! change proposes new Cedar text for a pack and is stored as an admin-only `policy_change`
//! document. Every write goes through [`AdminHttp::commit`] (audit record first, one
//! transaction, snapshot reloaded on this replica before the answer).
//!
//! | route | permission (scope) | what |
//! |---|---|---|
//! | `GET /v1/policies/schema` | any `policy_packs.read` grant | the Cedar schema packs are validated against |
//! | `GET /v1/policies/packs?vertical_id=&status=` | `policy_packs.read` (vertical) | packs the caller may read |
//! | `POST /v1/policies/packs` | `policy_packs.write` (vertical) | create a draft (Cedar validated: 400 `POLICY_INVALID`, `field` = `policy_rules`) |
//! | `GET /v1/policies/packs/{id}` | `policy_packs.read` | one pack, `ETag` |
//! | `PATCH /v1/policies/packs/{id}` | `policy_packs.write` | edit a draft (`If-Match`) |
//! | `GET /v1/policies/packs/{id}/versions` | `policy_packs.read` | every stored version |
//! | `POST …/request-review` | `policy_packs.write` | draft → requested (`request_reason_code`) |
//! | `POST …/review` | `policy_packs.review` | requested → reviewed (`review_notes`) |
//! | `POST …/approve` | `policy_packs.approve` | reviewed → approved (`approval_reason_code`) |
//! | `POST …/activate` | `policy_packs.approve` | approved, restricted, suspended → active; the previous active pack of the same (tenant, vertical) **and mode** becomes deprecated in the same commit (activating a shadow pack leaves the enforced pack enforced) |
//! | `POST …/restrict` | `policy_packs.operate` | active → restricted (reads only) |
//! | `POST …/suspend` | `policy_packs.operate` | active, restricted → suspended (no longer enforced) |
//! | `POST …/deprecate` | `policy_packs.operate` | approved, active, restricted, suspended → deprecated |
//! | `POST …/archive` | `policy_packs.operate` | any state but active/restricted → archived (immutable) |
//! | `GET /v1/policies/changes?policy_pack_id=` | `policy_packs.read` | changes |
//! | `POST /v1/policies/changes` | `policy_packs.write` | propose new rules for a pack (draft) |
//! | `GET /v1/policies/changes/{id}` | `policy_packs.read` | one change |
//! | `POST /v1/policies/changes/{id}/impact` | `policy_packs.read` or `.review` | impact preview: re-decide the tenant's recorded decisions of a window (`{"from","to"}`, default the last 7 days) with the change's rules; stores the summary on the change (ADM-6) |
//! | `POST /v1/policies/changes/{id}/request-review`, `review`, `approve` | as for packs | lifecycle |
//! | `POST /v1/policies/changes/{id}/activate` | `policy_packs.approve` | approved → active: the pack gets the change's rules, window and (when the change sets one) `mode` as a new version in the same commit (both or neither, ADM-8); a change with `mode: enforce` on an active shadow pack promotes it and deprecates the previously enforced pack of the same (tenant, vertical) in that commit |
//! | `POST /v1/policies/changes/{id}/archive` | `policy_packs.operate` | → archived |
//!
//! # Shadow mode (issue 16)
//! A pack has a `mode`: `enforce` (default) or `shadow`. A (tenant, vertical) has at most one
//! active enforced and one active shadow pack; the shadow pack is evaluated on live traffic and
//! its would-be denials are recorded (`shadow` in the audit record and decision log), never
//! enforced. Promotion goes through a policy change with `mode: enforce` (review, four-eyes
//! approval, activation): the pack's new version in mode `enforce` and the deprecation of the
//! previously enforced pack land in one commit, audited as `policy_change.activate`.
//!
//! Transitions and edits honour `If-Match` (412 `PRECONDITION_FAILED`, nothing applied) and
//! answer with the new `version` and `ETag`. A transition from a state that does not allow it is
//! 409 `INVALID_TRANSITION`. Reasons follow ADM-7 (`OTHER` needs its text). Packs of another
//! tenant are 404 for non-root callers.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use utoipa::ToSchema;
use utoipa_axum::routes;

use super::http::{
    AdminHttp, ApproveBody, Caller, ChangeRecord, EmptyBody, Opened, ReasonBody, RequestBody,
    Resource, ReviewBody, Target, check_reason,
};
use crate::api::openapi::ApiRouter;
use crate::api::{
    ApiError, ApiResult, ErrorCode, now_ms, parse, precondition, rfc3339, store_unavailable,
    window, with_etag,
};
use crate::policy::cedar;
use crate::policy::model::{Mode, PackStatus, PolicyPack};
use crate::store::{DocChange, DocKind, Expect, StoredDoc};

use crate::policy::model::Lifecycle::*;

mod changes;

mod lifecycle;

use lifecycle::*;

use changes::*;

/// The packs and changes routes, with their OpenAPI operations (one per lifecycle action).
pub fn routes() -> ApiRouter<AdminHttp> {
    ApiRouter::new()
        .routes(routes!(schema))
        .routes(routes!(list_packs, create_pack))
        .routes(routes!(get_pack, patch_pack))
        .routes(routes!(pack_versions))
        .routes(routes!(pack_request_review))
        .routes(routes!(pack_review))
        .routes(routes!(pack_approve))
        .routes(routes!(pack_activate))
        .routes(routes!(pack_restrict))
        .routes(routes!(pack_suspend))
        .routes(routes!(pack_deprecate))
        .routes(routes!(pack_archive))
        .routes(routes!(list_changes, create_change))
        .routes(routes!(get_change))
        .routes(routes!(change_impact))
        .routes(routes!(change_request_review))
        .routes(routes!(change_review))
        .routes(routes!(change_approve))
        .routes(routes!(change_activate))
        .routes(routes!(change_archive))
}

/// A stored policy change (admin-only document `policy_change`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyChange {
    pub id: String,
    pub tenant: String,
    pub policy_pack_id: String,
    /// The pack's vertical (permission scope).
    pub vertical: String,
    pub change_summary: String,
    /// The proposed Cedar text (validated at submission).
    pub policies: String,
    pub active_from: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_until: Option<String>,
    pub status: PackStatus,
    /// The pack version the activation wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_pack_version: Option<i64>,
    /// The mode the activation gives the pack (issue 16): `enforce` promotes a shadow pack (the
    /// previously enforced pack of its (tenant, vertical) is deprecated in the same commit),
    /// `shadow` demotes one; absent keeps the pack's mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// The latest impact preview of these rules ([`crate::impact::summary`], ADM-6): computed
    /// by `POST …/impact` and by the `review` transition when none exists for the current rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub impact: Option<Value>,
}

fn status_str(s: PackStatus) -> &'static str {
    s.as_str()
}

fn parse_status(s: &str) -> Option<PackStatus> {
    PackStatus::parse(s)
}

/// 400 `POLICY_INVALID` naming `policy_rules` when the Cedar text does not parse or validate.
fn check_rules(text: &str) -> Result<(), ApiError> {
    cedar::check_policies(text)
        .map(|_| ())
        .map_err(|m| ApiError::new(ErrorCode::PolicyInvalid, m).at("policy_rules"))
}

impl Resource for PolicyPack {
    const KIND: DocKind = DocKind::PolicyPack;
    const NOUN: &'static str = "policy pack";
    /// Its tenant and vertical.
    fn target(&self) -> Target<'_> {
        Target::verticals(&self.tenant, std::slice::from_ref(&self.vertical))
    }
}

impl Resource for PolicyChange {
    const KIND: DocKind = DocKind::PolicyChange;
    const NOUN: &'static str = "policy change";
    /// Its tenant and vertical.
    fn target(&self) -> Target<'_> {
        Target::verticals(&self.tenant, std::slice::from_ref(&self.vertical))
    }
}

/// Loads a pack the caller's tenant may see (404 otherwise).
async fn load_pack(
    s: &AdminHttp,
    caller: &Caller,
    id: &str,
) -> Result<(StoredDoc, PolicyPack), ApiError> {
    let (pack, doc) = s.load(caller, DocKind::PolicyPack, id).await?;
    Ok((doc, pack))
}

async fn load_change(
    s: &AdminHttp,
    caller: &Caller,
    id: &str,
) -> Result<(StoredDoc, PolicyChange), ApiError> {
    let (change, doc) = s.load(caller, DocKind::PolicyChange, id).await?;
    Ok((doc, change))
}

fn pack_view(doc: &StoredDoc, p: &PolicyPack) -> Value {
    json!({
        "policy_pack_id": p.id,
        "tenant_id": p.tenant,
        "vertical_id": p.vertical,
        "status": status_str(p.status),
        "policy_rules": p.policies,
        "active_from": p.active_from,
        "active_until": p.active_until,
        "mode": p.mode.as_str(),
        "version": doc.version,
        "version_id": doc.version.to_string(),
        "created_at": doc.created_at,
        "updated_at": doc.updated_at,
    })
}

fn change_view(doc: &StoredDoc, c: &PolicyChange) -> Value {
    json!({
        "policy_change_id": c.id,
        "tenant_id": c.tenant,
        "policy_pack_id": c.policy_pack_id,
        "vertical_id": c.vertical,
        "change_summary": c.change_summary,
        "policy_rules": c.policies,
        "active_from": c.active_from,
        "active_until": c.active_until,
        "status": status_str(c.status),
        "applied_pack_version": c.applied_pack_version,
        "mode": c.mode.map(Mode::as_str),
        "impact": c.impact,
        "version": doc.version,
        "version_id": doc.version.to_string(),
        "created_at": doc.created_at,
        "updated_at": doc.updated_at,
    })
}

fn to_json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// Parses an RFC 3339 window and returns it normalized (UTC, milliseconds).
fn norm_window(from: &str, until: Option<&str>) -> Result<(String, Option<String>), ApiError> {
    let (f, u) = window(from, until)?;
    let s = |ms: i64| rfc3339(ms).as_str().unwrap_or_default().to_owned();
    Ok((s(f), u.map(s)))
}

/// 400 when `vertical` is not used by any route or integration of the loaded policy.
fn check_vertical(s: &AdminHttp, vertical: &str) -> Result<(), ApiError> {
    let guard = s.engine.snapshot().load();
    let known = guard.as_ref().as_ref().is_some_and(|snap| {
        snap.set
            .routes
            .iter()
            .any(|r| r.verticals.iter().any(|v| v == vertical))
            || snap
                .set
                .integrations
                .iter()
                .any(|i| i.verticals.iter().any(|v| v == vertical))
    });
    if known {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "vertical_id",
            format!("`{vertical}` is not a vertical any route or integration uses"),
        ))
    }
}

#[utoipa::path(get,
    path = "/v1/policies/schema",
    tag = "policy packs",
    summary = "The Cedar schema policy packs are validated against",
    security(("bearer" = ["policy_packs.read"])),
    responses((status = 200, description = "Schema text and semantics", body = Object)))]
async fn schema(State(s): State<AdminHttp>, headers: HeaderMap) -> ApiResult {
    let caller = s.caller(&headers).await?;
    caller.require_some("policy_packs.read")?;
    Ok(axum::Json(json!({
        "namespace": "Scp",
        "format": "cedarschema",
        "schema": cedar::SCHEMA_TEXT,
        "validation_mode": "strict",
        "semantics": "forbid wins; no permit = deny; a request must pass the active pack of every vertical it touches; @id names a policy in reasons; @mask(\"f1,f2\") on a determining permit masks fields; evaluation errors deny; restricted packs also deny writes",
    }))
    .into_response())
}

#[utoipa::path(get,
    path = "/v1/policies/packs",
    tag = "policy packs",
    summary = "List policy packs",
    params(("vertical_id" = Option<String>, Query), ("status" = Option<String>, Query), ("tenant_id" = Option<String>, Query)),
    security(("bearer" = ["policy_packs.read"])),
    responses((status = 200, description = "The packs (without their rules)", body = Object)))]
async fn list_packs(
    State(s): State<AdminHttp>,
    headers: HeaderMap,
    query: crate::api::QueryParams,
) -> ApiResult {
    let l = s
        .list::<PolicyPack>(
            &headers,
            query,
            "policy_packs.read",
            &["vertical_id", "status"],
        )
        .await?;
    let status = status_query(&l.query)?;
    let items: Vec<Value> = l
        .items
        .iter()
        .filter(|(p, _)| {
            l.matches("vertical_id", &p.vertical) && status.is_none_or(|st| st == p.status)
        })
        .map(|(p, doc)| {
            let mut v = pack_view(doc, p);
            if let Value::Object(m) = &mut v {
                m.remove("policy_rules");
            }
            v
        })
        .collect();
    Ok(axum::Json(json!({ "items": items })).into_response())
}

/// The `status` query parameter of a list, when given (400 naming it when unknown).
fn status_query(q: &HashMap<String, String>) -> Result<Option<PackStatus>, ApiError> {
    q.get("status")
        .map(|st| parse_status(st).ok_or_else(|| ApiError::invalid("status", "unknown status")))
        .transpose()
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreatePack {
    #[serde(default)]
    tenant_id: Option<String>,
    vertical_id: String,
    policy_rules: String,
    active_from: String,
    #[serde(default)]
    active_until: Option<String>,
    /// `enforce` (default) or `shadow` (issue 16): an active shadow pack is evaluated next to
    /// the enforced one and only recorded.
    #[serde(default)]
    mode: Mode,
}

#[utoipa::path(post,
    path = "/v1/policies/packs",
    tag = "policy packs",
    summary = "Create a draft policy pack (Cedar validated against the schema)",
    request_body = CreatePack,
    security(("bearer" = ["policy_packs.write"])),
    responses((status = 201, description = "The draft pack; ETag = version", body = Object)))]
async fn create_pack(
    State(s): State<AdminHttp>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let (caller, req): (_, CreatePack) = s.begin(&headers, body, "policy_packs.write").await?;
    let tenant = caller.tenant_for(req.tenant_id.as_deref())?.to_owned();
    let via = caller.require(
        "policy_packs.write",
        &Target::verticals(&tenant, std::slice::from_ref(&req.vertical_id)),
    )?;
    // Assigned here, never chosen by the caller: a chosen id would answer 409 when another
    // tenant holds it (pack and change ids are global in the store).
    let id = format!("pp-{}", uuid::Uuid::now_v7());
    check_vertical(&s, &req.vertical_id)?;
    let (from, until) = norm_window(&req.active_from, req.active_until.as_deref())?;
    check_rules(&req.policy_rules)?;
    let pack = PolicyPack {
        id: id.clone(),
        tenant: tenant.clone(),
        vertical: req.vertical_id.clone(),
        status: Draft,
        policies: req.policy_rules,
        active_from: Some(from),
        active_until: until,
        mode: req.mode,
    };
    let change = DocChange::put(DocKind::PolicyPack, &id, Some(&tenant), to_json(&pack))
        .status(status_str(Draft))
        .expect(Expect::Absent);
    s.commit(
        &caller,
        &via,
        ChangeRecord::admin(
            "policy_pack.create",
            &tenant,
            &id,
            json!({"vertical": pack.vertical, "status": "draft", "mode": pack.mode.as_str()}),
        ),
        vec![change],
    )
    .await?;
    respond_pack(&s, &caller, &id, StatusCode::CREATED, None).await
}

/// Re-reads a pack and answers with its view (+ `stamp` = now).
async fn respond_pack(
    s: &AdminHttp,
    caller: &Caller,
    id: &str,
    status: StatusCode,
    stamp: Option<&str>,
) -> ApiResult {
    let (doc, p) = load_pack(s, caller, id).await?;
    let mut v = pack_view(&doc, &p);
    if let (Some(k), Value::Object(m)) = (stamp, &mut v) {
        m.insert(k.to_owned(), rfc3339(now_ms()));
    }
    Ok(with_etag(status, doc.version, v))
}

async fn respond_change(
    s: &AdminHttp,
    caller: &Caller,
    id: &str,
    status: StatusCode,
    stamp: Option<&str>,
) -> ApiResult {
    let (doc, c) = load_change(s, caller, id).await?;
    let mut v = change_view(&doc, &c);
    if let (Some(k), Value::Object(m)) = (stamp, &mut v) {
        m.insert(k.to_owned(), rfc3339(now_ms()));
    }
    Ok(with_etag(status, doc.version, v))
}

#[utoipa::path(get,
    path = "/v1/policies/packs/{policy_pack_id}",
    tag = "policy packs",
    summary = "One policy pack",
    params(("policy_pack_id" = String, Path)),
    security(("bearer" = ["policy_packs.read"])),
    responses((status = 200, description = "The pack; ETag = version", body = Object)))]
async fn get_pack(
    State(s): State<AdminHttp>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let Opened {
        doc: p,
        stored: doc,
        ..
    } = s
        .open::<PolicyPack>(&headers, &id, "policy_packs.read")
        .await?;
    Ok(with_etag(StatusCode::OK, doc.version, pack_view(&doc, &p)))
}

#[utoipa::path(get,
    path = "/v1/policies/packs/{policy_pack_id}/versions",
    tag = "policy packs",
    summary = "Every stored version of a pack",
    params(("policy_pack_id" = String, Path)),
    security(("bearer" = ["policy_packs.read"])),
    responses((status = 200, description = "The versions", body = Object)))]
async fn pack_versions(
    State(s): State<AdminHttp>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let _: Opened<PolicyPack> = s.open(&headers, &id, "policy_packs.read").await?;
    let versions = s
        .store
        .document_versions(DocKind::PolicyPack, &id)
        .await
        .map_err(store_unavailable)?;
    let items: Vec<Value> = versions
        .into_iter()
        .map(|v| {
            let doc: Option<PolicyPack> =
                v.doc.as_deref().and_then(|d| serde_json::from_str(d).ok());
            json!({
                "version": v.version,
                "version_id": v.version.to_string(),
                "status": v.status,
                "policy_rules": doc.as_ref().map(|d| d.policies.clone()),
                "active_from": doc.as_ref().and_then(|d| d.active_from.clone()),
                "active_until": doc.as_ref().and_then(|d| d.active_until.clone()),
                "source": v.source,
                "actor": v.actor,
                "time": v.time,
            })
        })
        .collect();
    Ok(axum::Json(json!({"policy_pack_id": id, "items": items})).into_response())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct PatchPack {
    #[serde(default)]
    policy_rules: Option<String>,
    #[serde(default)]
    active_from: Option<String>,
    #[serde(default)]
    active_until: Option<String>,
}

#[utoipa::path(patch,
    path = "/v1/policies/packs/{policy_pack_id}",
    tag = "policy packs",
    summary = "Edit a draft pack",
    params(("policy_pack_id" = String, Path), crate::api::openapi::IfMatch),
    request_body = PatchPack,
    security(("bearer" = ["policy_packs.write"])),
    responses((status = 200, description = "The pack; ETag = version", body = Object)))]
async fn patch_pack(
    State(s): State<AdminHttp>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let (
        Opened {
            caller,
            via,
            doc: mut p,
            stored: doc,
        },
        req,
    ): (Opened<PolicyPack>, PatchPack) = s
        .open_edit(&headers, &id, "policy_packs.write", body)
        .await?;
    if p.status != Draft {
        return Err(ApiError::new(
            ErrorCode::InvalidTransition,
            format!(
                "only draft packs can be edited (this one is {}); propose a policy change instead",
                p.status.as_str()
            ),
        ));
    }
    let from = req
        .active_from
        .as_deref()
        .or(p.active_from.as_deref())
        .unwrap_or_default()
        .to_owned();
    let until = req.active_until.clone().or(p.active_until.clone());
    let (from, until) = norm_window(&from, until.as_deref())?;
    if let Some(r) = &req.policy_rules {
        check_rules(r)?;
        p.policies = r.clone();
    }
    p.active_from = Some(from);
    p.active_until = until;
    let change = DocChange::put(DocKind::PolicyPack, &id, Some(&p.tenant), to_json(&p))
        .status(status_str(p.status))
        .expect(Expect::Version(doc.version));
    s.commit(
        &caller,
        &via,
        ChangeRecord::admin(
            "policy_pack.update",
            &p.tenant,
            &id,
            json!({"rules_changed": req.policy_rules.is_some()}),
        ),
        vec![change],
    )
    .await?;
    respond_pack(&s, &caller, &id, StatusCode::OK, Some("updated_at")).await
}
