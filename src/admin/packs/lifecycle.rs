//! The lifecycle of policy packs and policy changes: the transition tables (who may move a
//! document from which states to which, with what input), one annotated handler per action, and
//! the pack transition itself (the change transition is in `changes.rs`).

use super::*;
use crate::admin::http::step_handler;

step_handler!(
    pack_request_review,
    "policy packs",
    "/v1/policies/packs/{policy_pack_id}/request-review",
    "policy_pack_id",
    "policy_packs.write",
    RequestBody,
    "Request review (draft → requested)",
    "The document in its new state; ETag = version",
    pack_transition("request-review")
);
step_handler!(
    pack_review,
    "policy packs",
    "/v1/policies/packs/{policy_pack_id}/review",
    "policy_pack_id",
    "policy_packs.review",
    ReviewBody,
    "Review (requested → reviewed)",
    "The document in its new state; ETag = version",
    pack_transition("review")
);
step_handler!(
    pack_approve,
    "policy packs",
    "/v1/policies/packs/{policy_pack_id}/approve",
    "policy_pack_id",
    "policy_packs.approve",
    ApproveBody,
    "Approve (reviewed → approved; four eyes)",
    "The document in its new state; ETag = version",
    pack_transition("approve")
);
step_handler!(
    pack_activate,
    "policy packs",
    "/v1/policies/packs/{policy_pack_id}/activate",
    "policy_pack_id",
    "policy_packs.approve",
    EmptyBody,
    "Activate (approved, restricted or suspended → active; enforced before the answer)",
    "The document in its new state; ETag = version",
    pack_transition("activate")
);
step_handler!(
    pack_restrict,
    "policy packs",
    "/v1/policies/packs/{policy_pack_id}/restrict",
    "policy_pack_id",
    "policy_packs.operate",
    ReasonBody,
    "Restrict (active → restricted: writes denied)",
    "The document in its new state; ETag = version",
    pack_transition("restrict")
);
step_handler!(
    pack_suspend,
    "policy packs",
    "/v1/policies/packs/{policy_pack_id}/suspend",
    "policy_pack_id",
    "policy_packs.operate",
    ReasonBody,
    "Suspend (active or restricted → suspended)",
    "The document in its new state; ETag = version",
    pack_transition("suspend")
);
step_handler!(
    pack_deprecate,
    "policy packs",
    "/v1/policies/packs/{policy_pack_id}/deprecate",
    "policy_pack_id",
    "policy_packs.operate",
    ReasonBody,
    "Deprecate",
    "The document in its new state; ETag = version",
    pack_transition("deprecate")
);
step_handler!(
    pack_archive,
    "policy packs",
    "/v1/policies/packs/{policy_pack_id}/archive",
    "policy_pack_id",
    "policy_packs.operate",
    ReasonBody,
    "Archive (immutable afterwards)",
    "The document in its new state; ETag = version",
    pack_transition("archive")
);

step_handler!(
    change_request_review,
    "policy changes",
    "/v1/policies/changes/{policy_change_id}/request-review",
    "policy_change_id",
    "policy_packs.write",
    RequestBody,
    "Request review (draft → requested)",
    "The document in its new state; ETag = version",
    change_transition("request-review")
);
step_handler!(
    change_review,
    "policy changes",
    "/v1/policies/changes/{policy_change_id}/review",
    "policy_change_id",
    "policy_packs.review",
    ReviewBody,
    "Review (requested → reviewed)",
    "The document in its new state; ETag = version",
    change_transition("review")
);
step_handler!(
    change_approve,
    "policy changes",
    "/v1/policies/changes/{policy_change_id}/approve",
    "policy_change_id",
    "policy_packs.approve",
    ApproveBody,
    "Approve (reviewed → approved; four eyes)",
    "The document in its new state; ETag = version",
    change_transition("approve")
);
step_handler!(
    change_activate,
    "policy changes",
    "/v1/policies/changes/{policy_change_id}/activate",
    "policy_change_id",
    "policy_packs.approve",
    EmptyBody,
    "Activate: the pack's new version and the change's activation in one transaction (ADM-8)",
    "The document in its new state; ETag = version",
    change_transition("activate")
);
step_handler!(
    change_archive,
    "policy changes",
    "/v1/policies/changes/{policy_change_id}/archive",
    "policy_change_id",
    "policy_packs.operate",
    ReasonBody,
    "Archive (immutable afterwards)",
    "The document in its new state; ETag = version",
    change_transition("archive")
);

/// How a transition takes its input.
#[derive(Clone, Copy)]
pub(super) enum Input {
    None,
    /// `review_notes` (optional).
    Notes,
    /// A reason pair (ADM-7): code field, text field.
    Reason(&'static str, &'static str),
}

/// One lifecycle transition.
pub(super) struct Transition {
    pub(super) action: &'static str,
    pub(super) permission: &'static str,
    pub(super) from: &'static [PackStatus],
    pub(super) to: PackStatus,
    pub(super) input: Input,
    /// Time field of the answer, e.g. `approved_at`.
    pub(super) stamp: &'static str,
}

pub(super) const REASON: Input = Input::Reason("reason_code", "reason_text");

pub(super) const PACK_TRANSITIONS: &[Transition] = &[
    Transition {
        action: "request-review",
        permission: "policy_packs.write",
        from: &[Draft],
        to: Requested,
        input: Input::Reason("request_reason_code", "request_reason_text"),
        stamp: "requested_at",
    },
    Transition {
        action: "review",
        permission: "policy_packs.review",
        from: &[Requested],
        to: Reviewed,
        input: Input::Notes,
        stamp: "reviewed_at",
    },
    Transition {
        action: "approve",
        permission: "policy_packs.approve",
        from: &[Reviewed],
        to: Approved,
        input: Input::Reason("approval_reason_code", "approval_reason_text"),
        stamp: "approved_at",
    },
    Transition {
        action: "activate",
        permission: "policy_packs.approve",
        from: &[Approved, Restricted, Suspended],
        to: Active,
        input: Input::None,
        stamp: "activated_at",
    },
    Transition {
        action: "restrict",
        permission: "policy_packs.operate",
        from: &[Active],
        to: Restricted,
        input: REASON,
        stamp: "restricted_at",
    },
    Transition {
        action: "suspend",
        permission: "policy_packs.operate",
        from: &[Active, Restricted],
        to: Suspended,
        input: REASON,
        stamp: "suspended_at",
    },
    Transition {
        action: "deprecate",
        permission: "policy_packs.operate",
        from: &[Approved, Active, Restricted, Suspended],
        to: Deprecated,
        input: REASON,
        stamp: "deprecated_at",
    },
    Transition {
        action: "archive",
        permission: "policy_packs.operate",
        from: &[Draft, Requested, Reviewed, Approved, Suspended, Deprecated],
        to: Archived,
        input: REASON,
        stamp: "archived_at",
    },
];

pub(super) const CHANGE_TRANSITIONS: &[Transition] = &[
    Transition {
        action: "request-review",
        permission: "policy_packs.write",
        from: &[Draft],
        to: Requested,
        input: Input::Reason("request_reason_code", "request_reason_text"),
        stamp: "requested_at",
    },
    Transition {
        action: "review",
        permission: "policy_packs.review",
        from: &[Requested],
        to: Reviewed,
        input: Input::Notes,
        stamp: "reviewed_at",
    },
    Transition {
        action: "approve",
        permission: "policy_packs.approve",
        from: &[Reviewed],
        to: Approved,
        input: Input::Reason("approval_reason_code", "approval_reason_text"),
        stamp: "approved_at",
    },
    Transition {
        action: "activate",
        permission: "policy_packs.approve",
        from: &[Approved],
        to: Active,
        input: Input::None,
        stamp: "activated_at",
    },
    Transition {
        action: "archive",
        permission: "policy_packs.operate",
        from: &[
            Draft, Requested, Reviewed, Approved, Active, Suspended, Deprecated,
        ],
        to: Archived,
        input: REASON,
        stamp: "archived_at",
    },
];

/// The transition input: only the fields `input` names; reasons checked (ADM-7).
pub(super) fn transition_input(
    input: Input,
    body: Result<Bytes, BytesRejection>,
) -> Result<Value, ApiError> {
    let m: Map<String, Value> = parse(body)?;
    let allowed: Vec<&str> = match input {
        Input::None => vec![],
        Input::Notes => vec!["review_notes"],
        Input::Reason(c, t) => vec![c, t],
    };
    let mut detail = Map::new();
    for (k, v) in &m {
        if !allowed.contains(&k.as_str()) {
            return Err(ApiError::invalid(k.clone(), "unknown field"));
        }
        if !(v.is_string() || v.is_null()) {
            return Err(ApiError::invalid(k.clone(), "must be a string"));
        }
    }
    let get = |k: &str| m.get(k).and_then(Value::as_str);
    match input {
        Input::None => {}
        Input::Notes => {
            if let Some(n) = get("review_notes") {
                if n.chars().count() > 2000 {
                    return Err(ApiError::invalid("review_notes", "at most 2000 characters"));
                }
                detail.insert("review_notes".into(), Value::String(n.to_owned()));
            }
        }
        Input::Reason(c, t) => {
            let code = get(c).ok_or_else(|| ApiError::invalid(c, "required"))?;
            check_reason(c, code, t, get(t))?;
            detail.insert("reason_code".into(), Value::String(code.to_owned()));
            if let Some(text) = get(t) {
                detail.insert("reason_text".into(), Value::String(text.to_owned()));
            }
        }
    }
    Ok(Value::Object(detail))
}

pub(super) fn find(
    table: &'static [Transition],
    action: &str,
) -> Result<&'static Transition, ApiError> {
    table
        .iter()
        .find(|t| t.action == action)
        .ok_or_else(|| ApiError::not_found(format!("no action `{action}`")))
}

pub(super) fn check_from(t: &Transition, cur: PackStatus, what: &str) -> Result<(), ApiError> {
    if t.from.contains(&cur) {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::InvalidTransition,
            format!(
                "{what} is {}; `{}` needs one of: {}",
                cur.as_str(),
                t.action,
                t.from
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ))
    }
}

pub(super) async fn pack_transition(
    s: AdminHttp,
    id: String,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
    action: &str,
) -> ApiResult {
    let t = find(PACK_TRANSITIONS, action)?;
    let Opened {
        caller,
        via,
        doc: mut p,
        stored: doc,
        ..
    } = s.open::<PolicyPack>(&headers, &id, t.permission).await?;
    let mut detail = transition_input(t.input, body)?;
    precondition(&headers, doc.version, &format!("policy pack {id}"))?;
    check_from(t, p.status, &format!("policy pack `{id}`"))?;
    let from = p.status;
    p.status = t.to;
    let mut changes = vec![
        DocChange::put(DocKind::PolicyPack, &id, Some(&p.tenant), to_json(&p))
            .status(status_str(t.to))
            .expect(Expect::Version(doc.version)),
    ];
    let mut deprecated = Vec::new();
    if t.to == Active {
        // One enforced and at most one shadow pack per (tenant, vertical): the previous one of
        // the same mode is deprecated in the same commit. Activating a shadow pack leaves the
        // enforced pack enforced (issue 16).
        let (more, ids) = displace(&s, &p).await?;
        changes.extend(more);
        deprecated = ids;
    }
    if let Value::Object(m) = &mut detail {
        m.insert("from".into(), json!(from.as_str()));
        m.insert("status".into(), json!(t.to.as_str()));
        m.insert("vertical".into(), json!(p.vertical));
        m.insert("mode".into(), json!(p.mode.as_str()));
        if !deprecated.is_empty() {
            m.insert("deprecated".into(), json!(deprecated));
        }
    }
    s.commit(
        &caller,
        &via,
        ChangeRecord::admin(
            format!("policy_pack.{}", t.action.replace('-', "_")),
            &p.tenant,
            &id,
            detail,
        ),
        changes,
    )
    .await?;
    respond_pack(&s, &caller, &id, StatusCode::OK, Some(t.stamp)).await
}

/// The changes that deprecate every other `active`/`restricted` pack of `p`'s (tenant,
/// vertical) in `p`'s mode (each with its version as precondition), and their ids: what
/// activating `p` (or switching its mode by a policy change) displaces. Packs of the other mode
/// are untouched: a shadow pack never displaces the enforced one (issue 16).
pub(super) async fn displace(
    s: &AdminHttp,
    p: &PolicyPack,
) -> Result<(Vec<DocChange>, Vec<String>), ApiError> {
    let mut changes = Vec::new();
    let mut ids = Vec::new();
    for other in s
        .store
        .documents(DocKind::PolicyPack, Some(&p.tenant))
        .await
        .map_err(store_unavailable)?
    {
        let Ok(mut o) = serde_json::from_str::<PolicyPack>(&other.doc) else {
            continue;
        };
        if o.id != p.id
            && o.vertical == p.vertical
            && o.mode == p.mode
            && matches!(o.status, Active | Restricted)
        {
            o.status = Deprecated;
            ids.push(o.id.clone());
            changes.push(
                DocChange::put(DocKind::PolicyPack, &o.id, Some(&o.tenant), to_json(&o))
                    .status(status_str(Deprecated))
                    .expect(Expect::Version(other.version)),
            );
        }
    }
    Ok((changes, ids))
}
