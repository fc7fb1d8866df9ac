//! The lifecycle transition table and `POST /v1/integrations/{id}/{action}`.

use super::*;
use crate::admin::http::step_handler;

// ---------------------------------------------------------------------------------------------
// Lifecycle

/// One lifecycle transition (INT-6.1-1, INT-6.2-*).
pub(super) struct Rule {
    pub(super) action: &'static str,
    pub(super) permission: &'static str,
    pub(super) from: &'static [IntegrationState],
    pub(super) to: IntegrationState,
    /// A reason (ADM-7) is required.
    pub(super) reason: bool,
}

/// The allowed-from table. `provision` is its own route (it talks to Keycloak).
pub(super) const RULES: &[Rule] = &[
    Rule {
        action: "submit",
        permission: "integrations.create",
        from: &[S::Draft],
        to: S::Requested,
        reason: false,
    },
    Rule {
        action: "review",
        permission: "integrations.review",
        from: &[S::Requested],
        to: S::Reviewed,
        reason: false,
    },
    Rule {
        action: "legal-review",
        permission: "integrations.legal_review",
        from: &[S::Reviewed],
        to: S::Reviewed,
        reason: false,
    },
    Rule {
        action: "approve",
        permission: "integrations.approve",
        from: &[S::Reviewed],
        to: S::Approved,
        reason: false,
    },
    Rule {
        action: "activate",
        permission: "integrations.operate",
        from: &[S::Approved, S::Restricted, S::Suspended],
        to: S::Active,
        reason: false,
    },
    Rule {
        action: "restrict",
        permission: "integrations.operate",
        from: &[S::Active],
        to: S::Restricted,
        reason: true,
    },
    Rule {
        action: "suspend",
        permission: "integrations.operate",
        from: &[S::Approved, S::Active, S::Restricted, S::Deprecated],
        to: S::Suspended,
        reason: true,
    },
    Rule {
        action: "deprecate",
        permission: "integrations.operate",
        from: &[S::Active, S::Restricted, S::Suspended],
        to: S::Deprecated,
        reason: true,
    },
    Rule {
        action: "archive",
        permission: "integrations.operate",
        from: &[
            S::Draft,
            S::Requested,
            S::Reviewed,
            S::Approved,
            S::Suspended,
            S::Deprecated,
        ],
        to: S::Archived,
        reason: true,
    },
];

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct TransitionBody {
    #[serde(default)]
    reason_code: Option<String>,
    #[serde(default)]
    reason_text: Option<String>,
    /// Review and legal-review notes.
    #[serde(default)]
    notes: Option<String>,
    /// `approve` only (ONB-AUD-3).
    #[serde(default)]
    legal_document_id: Option<String>,
}

/// `POST /v1/integrations/{id}/{action}` with `If-Match`: one lifecycle transition (see the
/// module docs). Errors: 404 unknown action, 403 (incl. `SEPARATION_OF_DUTIES`), 400 (reason,
/// document id), 412, 409
/// `INVALID_TRANSITION` | `ARCHIVED` | `LEGAL_REVIEW_REQUIRED` |
/// `NOT_PROVISIONED`.
pub(super) async fn transition(
    s: AdminHttp,
    id: String,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
    action: &str,
) -> ApiResult {
    let rule = RULES
        .iter()
        .find(|r| r.action == action)
        .ok_or_else(|| ApiError::not_found(format!("no integration action `{action}`")))?;
    let caller = s.caller(&headers).await?;
    // Permission first: a caller without it learns nothing about which ids exist.
    caller.require_some(rule.permission)?;
    let cur = load(&s, &caller, &id).await?;
    let mut via = caller.require(rule.permission, &cur.target())?;
    if rule.to == S::Approved && !cur.integ.partner_tenants.is_empty() {
        // Cross-tenant: the umbrella authority approves (INT-4.5-2).
        via = caller.require("integrations.approve_cross_tenant", &cur.target())?;
    }
    let b: TransitionBody = parse(body)?;
    if rule.reason {
        let code = b
            .reason_code
            .as_deref()
            .ok_or_else(|| ApiError::invalid("reason_code", "is required (ADM-7)"))?;
        check_reason("reason_code", code, "reason_text", b.reason_text.as_deref())?;
    } else if let Some(code) = &b.reason_code {
        check_reason("reason_code", code, "reason_text", b.reason_text.as_deref())?;
    }
    if let Some(n) = &b.notes
        && n.chars().count() > 2000
    {
        return Err(ApiError::invalid("notes", "at most 2000 characters"));
    }
    if rule.to == S::Approved {
        match b.legal_document_id.as_deref().map(str::trim) {
            Some(d) if !d.is_empty() && d.len() <= 200 => {}
            _ => {
                return Err(ApiError::invalid(
                    "legal_document_id",
                    "approval names the legal or policy document it rests on (ONB-3, ONB-AUD-3)",
                ));
            }
        }
    } else if b.legal_document_id.is_some() {
        return Err(ApiError::invalid(
            "legal_document_id",
            "only an approval carries a legal document id",
        ));
    }
    precondition(&headers, cur.version, &format!("integration {id}"))?;
    archived(&cur.integ)?;
    let from = cur.integ.state;
    if !rule.from.contains(&from) {
        return Err(ApiError::new(
            ErrorCode::InvalidTransition,
            format!(
                "`{action}` is not allowed from {} (allowed from {})",
                from.as_str(),
                rule.from
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    let me = caller.principal.subject.clone();
    let now = rfc3339(crate::api::now_ms());
    let mut i = cur.integ.clone();
    let provisioned = i.client_id.is_some();
    let ob = i.onboarding.get_or_insert_with(Onboarding::default);
    match action {
        "submit" => ob.submitted_by = Some(me.clone()),
        "review" => ob.reviewed_by = Some(me.clone()),
        "legal-review" => {
            ob.legal_reviewed_by = Some(me.clone());
            ob.legal_review_notes = b.notes.clone();
        }
        "approve" => {
            if ob.legal_reviewed_by.is_none() {
                return Err(ApiError::new(
                    ErrorCode::LegalReviewRequired,
                    "the legal and consent review comes before approval (INT-6.1-1)",
                ));
            }
            if ob.created_by == me {
                return Err(ApiError::new(
                    ErrorCode::SeparationOfDuties,
                    "the creator of an integration does not approve it",
                ));
            }
            ob.approved_by = Some(me.clone());
            ob.legal_document_id = b.legal_document_id.clone().map(|d| d.trim().to_owned());
            ob.approved_at = now.as_str().map(str::to_owned);
        }
        "activate" => {
            if from == S::Approved && !provisioned {
                return Err(ApiError::new(
                    ErrorCode::NotProvisioned,
                    "provision the integration's client before activating it (ONB-4)",
                ));
            }
            ob.activated_by = Some(me.clone());
        }
        _ => {}
    }
    i.state = rule.to;
    let detail = json!({
        "from": from.as_str(),
        "to": rule.to.as_str(),
        "reason_code": b.reason_code,
        "reason_text": b.reason_text,
        "legal_document_id": b.legal_document_id,
        "notes": b.notes,
    });
    let mut changes = vec![put_integration(&i, Expect::Version(cur.version))];
    // The Keycloak client follows in the background (keycloak_sync): never waited for here.
    let kc = keycloak_sync::mark(&s, &i).await?;
    let mut detail = detail;
    if let Some((change, st)) = &kc {
        changes.push(change.clone());
        detail["keycloak_client"] = json!({"enabled": st.enabled, "sync": "pending"});
    }
    // INT-5.1-1: the event is queued in the transaction of the change.
    let events = crate::webhooks::state_changed_rows(
        &s.store,
        &i.tenant,
        &i.id,
        json!({"from": from.as_str(), "to": rule.to.as_str(), "action": action,
               "reason_code": b.reason_code}),
    )
    .await;
    let w = s
        .commit_with(
            &caller,
            &via,
            ChangeRecord::admin(
                format!("integration.{}", action.replace('-', "_")),
                &i.tenant,
                &i.id,
                detail,
            ),
            changes,
            &events,
        )
        .await?;
    crate::webhooks::count_events("integration.state_changed", events.len() as u64);
    let mut v = view(&i, w.versions[0], None);
    if let Some((_, st)) = kc {
        v["keycloak_client"] = st.view();
        keycloak_sync::spawn_now(&s, &i.id);
    }
    Ok(with_etag(StatusCode::OK, w.versions[0], v))
}

step_handler!(
    submit,
    "integrations",
    "/v1/integrations/{id}/submit",
    "id",
    "integrations.create",
    TransitionBody,
    "Submit a draft for review (draft → requested)",
    "The integration in its new state; ETag = version",
    transition("submit")
);
step_handler!(
    review,
    "integrations",
    "/v1/integrations/{id}/review",
    "id",
    "integrations.review",
    TransitionBody,
    "Technical review by the vertical owner (requested → reviewed)",
    "The integration in its new state; ETag = version",
    transition("review")
);
step_handler!(
    legal_review,
    "integrations",
    "/v1/integrations/{id}/legal-review",
    "id",
    "integrations.legal_review",
    TransitionBody,
    "Legal and consent review (recorded on a reviewed integration)",
    "The integration in its new state; ETag = version",
    transition("legal-review")
);
step_handler!(
    approve,
    "integrations",
    "/v1/integrations/{id}/approve",
    "id",
    "integrations.approve",
    TransitionBody,
    "Approve (reviewed → approved; legal_document_id required; cross-tenant needs integrations.approve_cross_tenant)",
    "The integration in its new state; ETag = version",
    transition("approve")
);
step_handler!(
    activate,
    "integrations",
    "/v1/integrations/{id}/activate",
    "id",
    "integrations.operate",
    TransitionBody,
    "Activate (needs provisioned credentials)",
    "The integration in its new state; ETag = version",
    transition("activate")
);
step_handler!(
    restrict,
    "integrations",
    "/v1/integrations/{id}/restrict",
    "id",
    "integrations.operate",
    TransitionBody,
    "Restrict (reads only)",
    "The integration in its new state; ETag = version",
    transition("restrict")
);
step_handler!(
    suspend,
    "integrations",
    "/v1/integrations/{id}/suspend",
    "id",
    "integrations.operate",
    TransitionBody,
    "Suspend (every request denied)",
    "The integration in its new state; ETag = version",
    transition("suspend")
);
step_handler!(
    deprecate,
    "integrations",
    "/v1/integrations/{id}/deprecate",
    "id",
    "integrations.operate",
    TransitionBody,
    "Deprecate",
    "The integration in its new state; ETag = version",
    transition("deprecate")
);
step_handler!(
    archive,
    "integrations",
    "/v1/integrations/{id}/archive",
    "id",
    "integrations.operate",
    TransitionBody,
    "Archive (immutable afterwards)",
    "The integration in its new state; ETag = version",
    transition("archive")
);
