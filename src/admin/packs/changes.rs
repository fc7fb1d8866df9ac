//! Policy changes: list, read, create and move through review and approval.

use super::*;

#[utoipa::path(get,
    path = "/v1/policies/changes",
    tag = "policy changes",
    summary = "List policy changes",
    params(("policy_pack_id" = Option<String>, Query), ("status" = Option<String>, Query), ("tenant_id" = Option<String>, Query)),
    security(("bearer" = ["policy_packs.read"])),
    responses((status = 200, description = "The changes", body = Object)))]
pub(super) async fn list_changes(
    State(s): State<AdminHttp>,
    headers: HeaderMap,
    query: crate::api::QueryParams,
) -> ApiResult {
    let l = s
        .list::<PolicyChange>(
            &headers,
            query,
            "policy_packs.read",
            &["policy_pack_id", "status"],
        )
        .await?;
    let status = status_query(&l.query)?;
    let items: Vec<Value> = l
        .items
        .iter()
        .filter(|(c, _)| {
            l.matches("policy_pack_id", &c.policy_pack_id) && status.is_none_or(|st| st == c.status)
        })
        .map(|(c, doc)| change_view(doc, c))
        .collect();
    Ok(axum::Json(json!({ "items": items })).into_response())
}

#[utoipa::path(get,
    path = "/v1/policies/changes/{policy_change_id}",
    tag = "policy changes",
    summary = "One policy change",
    params(("policy_change_id" = String, Path)),
    security(("bearer" = ["policy_packs.read"])),
    responses((status = 200, description = "The change; ETag = version", body = Object)))]
pub(super) async fn get_change(
    State(s): State<AdminHttp>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let Opened {
        doc: c,
        stored: doc,
        ..
    } = s
        .open::<PolicyChange>(&headers, &id, "policy_packs.read")
        .await?;
    Ok(with_etag(
        StatusCode::OK,
        doc.version,
        change_view(&doc, &c),
    ))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateChange {
    policy_pack_id: String,
    change_summary: String,
    policy_rules: String,
    active_from: String,
    #[serde(default)]
    active_until: Option<String>,
    /// The pack's mode after activation (issue 16): `enforce` promotes a shadow pack, `shadow`
    /// demotes an enforced one; absent keeps it.
    #[serde(default)]
    mode: Option<Mode>,
}

#[utoipa::path(post,
    path = "/v1/policies/changes",
    tag = "policy changes",
    summary = "Propose new rules for a pack (draft)",
    request_body = CreateChange,
    security(("bearer" = ["policy_packs.write"])),
    responses((status = 201, description = "The draft change; ETag = version", body = Object)))]
pub(super) async fn create_change(
    State(s): State<AdminHttp>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let (caller, req): (_, CreateChange) = s.begin(&headers, body, "policy_packs.write").await?;
    let (_, pack) = load_pack(&s, &caller, &req.policy_pack_id)
        .await
        .map_err(|e| e.at("policy_pack_id"))?;
    let via = caller.require("policy_packs.write", &pack.target())?;
    if pack.status == Archived {
        return Err(ApiError::new(
            ErrorCode::Archived,
            format!(
                "policy pack `{}` is archived and accepts no change",
                pack.id
            ),
        ));
    }
    // Assigned here, never chosen by the caller: a chosen id would answer 409 when another
    // tenant holds it (pack and change ids are global in the store).
    let id = format!("pc-{}", uuid::Uuid::now_v7());
    let summary = req.change_summary.trim();
    if summary.is_empty() || summary.chars().count() > 2000 {
        return Err(ApiError::invalid(
            "change_summary",
            "1 to 2000 characters of text",
        ));
    }
    let (from, until) = norm_window(&req.active_from, req.active_until.as_deref())?;
    check_rules(&req.policy_rules)?;
    let c = PolicyChange {
        id: id.clone(),
        tenant: pack.tenant.clone(),
        policy_pack_id: pack.id.clone(),
        vertical: pack.vertical.clone(),
        change_summary: summary.to_owned(),
        policies: req.policy_rules,
        active_from: from,
        active_until: until,
        status: Draft,
        applied_pack_version: None,
        mode: req.mode,
        impact: None,
    };
    s.commit(
        &caller,
        &via,
        ChangeRecord::admin(
            "policy_change.create",
            &c.tenant,
            &id,
            json!({"policy_pack_id": c.policy_pack_id, "status": "draft",
                   "mode": c.mode.map(Mode::as_str)}),
        ),
        vec![
            DocChange::put(DocKind::PolicyChange, &id, Some(&c.tenant), to_json(&c))
                .status(status_str(Draft))
                .expect(Expect::Absent),
        ],
    )
    .await?;
    respond_change(&s, &caller, &id, StatusCode::CREATED, None).await
}

pub(super) async fn change_transition(
    s: AdminHttp,
    id: String,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
    action: &str,
) -> ApiResult {
    let t = find(CHANGE_TRANSITIONS, action)?;
    let Opened {
        caller,
        via,
        doc: mut c,
        stored: doc,
        ..
    } = s.open::<PolicyChange>(&headers, &id, t.permission).await?;
    let mut detail = transition_input(t.input, body)?;
    precondition(&headers, doc.version, &format!("policy change {id}"))?;
    check_from(t, c.status, &format!("policy change `{id}`"))?;
    let from = c.status;
    // ADM-6: the review shows the impact of the rules under review; computed here when no
    // summary exists for the current rules.
    if t.action == "review"
        && c.impact.as_ref().and_then(|i| i["rules_sha256"].as_str())
            != Some(crate::impact::rules_digest(&c.policies).as_str())
    {
        let to_ms = now_ms();
        let (_, summary) = compute_impact(&s, &c, to_ms - IMPACT_DEFAULT_MS, to_ms).await?;
        c.impact = Some(summary);
    }
    let mut changes = Vec::new();
    if t.to == Active {
        // ADM-8: the pack's new version and the change's activation in one transaction.
        let (pdoc, mut pack) = load_pack(&s, &caller, &c.policy_pack_id).await?;
        if pack.status == Archived {
            return Err(ApiError::new(
                ErrorCode::Archived,
                format!(
                    "policy pack `{}` is archived and accepts no change",
                    pack.id
                ),
            ));
        }
        pack.policies = c.policies.clone();
        pack.active_from = Some(c.active_from.clone());
        pack.active_until = c.active_until.clone();
        c.applied_pack_version = Some(pdoc.version + 1);
        // Issue 16: a mode switch lands with the new version; an active pack then displaces the
        // active pack of its new mode (promotion deprecates the enforced one), all in this
        // commit (both or neither).
        let mut displaced = Vec::new();
        if let Some(m) = c.mode
            && m != pack.mode
        {
            pack.mode = m;
            if matches!(pack.status, Active | Restricted) {
                let (more, ids) = displace(&s, &pack).await?;
                changes.extend(more);
                displaced = ids;
            }
        }
        if let Value::Object(map) = &mut detail {
            map.insert("mode".into(), json!(pack.mode.as_str()));
            if !displaced.is_empty() {
                map.insert("deprecated".into(), json!(displaced));
            }
        }
        changes.push(
            DocChange::put(
                DocKind::PolicyPack,
                &pack.id,
                Some(&pack.tenant),
                to_json(&pack),
            )
            .status(status_str(pack.status))
            .expect(Expect::Version(pdoc.version)),
        );
        if let Value::Object(m) = &mut detail {
            m.insert("pack_version".into(), json!(pdoc.version + 1));
        }
    }
    c.status = t.to;
    changes.insert(
        0,
        DocChange::put(DocKind::PolicyChange, &id, Some(&c.tenant), to_json(&c))
            .status(status_str(t.to))
            .expect(Expect::Version(doc.version)),
    );
    if let Value::Object(m) = &mut detail {
        m.insert("from".into(), json!(from.as_str()));
        m.insert("status".into(), json!(t.to.as_str()));
        m.insert("policy_pack_id".into(), json!(c.policy_pack_id));
    }
    s.commit(
        &caller,
        &via,
        ChangeRecord::admin(
            format!("policy_change.{}", t.action.replace('-', "_")),
            &c.tenant,
            &id,
            detail,
        ),
        changes,
    )
    .await?;
    respond_change(&s, &caller, &id, StatusCode::OK, Some(t.stamp)).await
}

/// The default impact window: the last 7 days, ms.
const IMPACT_DEFAULT_MS: i64 = 7 * 86_400_000;

/// Re-decides the change's tenant's recorded decisions of `[from_ms, to_ms)` with the change's
/// rules (ADM-6). Returns the report (JSON) and the summary to store on the change.
///
/// Errors: 404 `NOT_FOUND` (the change's pack is gone), 503 `DEPENDENCY_UNAVAILABLE` (store).
async fn compute_impact(
    s: &AdminHttp,
    c: &PolicyChange,
    from_ms: i64,
    to_ms: i64,
) -> Result<(Value, Value), ApiError> {
    let snap = crate::impact::candidate_with_change(&s.store, c, &s.audience)
        .await
        .map_err(|(code, m)| {
            let e = if code == "NOT_FOUND" {
                ErrorCode::NotFound
            } else {
                ErrorCode::DependencyUnavailable
            };
            ApiError::new(e, m)
        })?;
    let report = crate::impact::from_store(&s.store, &snap, from_ms, to_ms, Some(&c.tenant), 5)
        .await
        .map_err(|e| {
            ApiError::new(
                ErrorCode::DependencyUnavailable,
                format!("audit store: {e}"),
            )
        })?;
    Ok((
        crate::impact::report_json(&report, from_ms, to_ms, Some(&c.tenant)),
        crate::impact::summary(&report, from_ms, to_ms, Some(&c.tenant), &c.policies),
    ))
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct ImpactBody {
    /// Window start (inclusive): RFC 3339 or `YYYY-MM-DD`. Default: 7 days before `to`.
    #[serde(default)]
    from: Option<String>,
    /// Window end (exclusive): RFC 3339 or `YYYY-MM-DD`. Default: now.
    #[serde(default)]
    to: Option<String>,
}

#[utoipa::path(post,
    path = "/v1/policies/changes/{policy_change_id}/impact",
    tag = "policy changes",
    summary = "Impact preview: re-decide recorded decisions with the change's rules",
    params(("policy_change_id" = String, Path)),
    request_body = ImpactBody,
    security(("bearer" = ["policy_packs.read", "policy_packs.review"])),
    responses((status = 200, description = "The impact report: window, tenant, totals, flips (see `scp_pep::impact`)", body = Object)))]
pub(super) async fn change_impact(
    State(s): State<AdminHttp>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    const READ: &str = "policy_packs.read";
    const REVIEW: &str = "policy_packs.review";
    let caller = s.caller(&headers).await?;
    if caller.require_some(READ).is_err() {
        caller.require_some(REVIEW)?;
    }
    let (mut c, doc): (PolicyChange, StoredDoc) =
        s.load(&caller, DocKind::PolicyChange, &id).await?;
    let via = match caller.require(READ, &c.target()) {
        Ok(v) => v,
        Err(_) => caller.require(REVIEW, &c.target())?,
    };
    let bytes = body.map_err(|e| ApiError::invalid("body", e.body_text()))?;
    let req: ImpactBody = if bytes.iter().all(u8::is_ascii_whitespace) {
        ImpactBody::default()
    } else {
        serde_json::from_slice(&bytes).map_err(|e| {
            let field = ["from", "to"]
                .into_iter()
                .find(|f| e.to_string().contains(&format!("`{f}`")))
                .unwrap_or("body");
            ApiError::invalid(field, format!("{e}"))
        })?
    };
    let instant = |v: Option<&str>, field: &'static str| {
        v.map(crate::time::parse_instant)
            .transpose()
            .map_err(|m| ApiError::invalid(field, m))
    };
    let to_ms = instant(req.to.as_deref(), "to")?.unwrap_or_else(now_ms);
    let from_ms = instant(req.from.as_deref(), "from")?.unwrap_or(to_ms - IMPACT_DEFAULT_MS);
    if from_ms >= to_ms {
        return Err(ApiError::invalid("from", "must be before `to`"));
    }
    let (report, summary) = compute_impact(&s, &c, from_ms, to_ms).await?;
    c.impact = Some(summary.clone());
    s.commit(
        &caller,
        &via,
        ChangeRecord::admin(
            "policy_change.impact",
            &c.tenant,
            &id,
            json!({"policy_pack_id": c.policy_pack_id, "window": summary["window"], "totals": summary["totals"]}),
        ),
        vec![
            DocChange::put(DocKind::PolicyChange, &id, Some(&c.tenant), to_json(&c))
                .status(status_str(c.status))
                .expect(Expect::Version(doc.version)),
        ],
    )
    .await?;
    Ok(axum::Json(report).into_response())
}
