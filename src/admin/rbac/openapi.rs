//! The OpenAPI operations of the RBAC routes.

use super::*;

/// `(path, method, permission, summary, request body fields)` of every route, for OpenAPI.
pub(super) const OPS: &[(&str, &str, &str, &str, &[&str])] = &[
    (
        "/v1/permissions",
        "get",
        "roles.read",
        "The permission catalog (query: scope_type, status)",
        &[],
    ),
    (
        "/v1/roles",
        "post",
        "roles.write",
        "Create a draft role",
        &[
            "role_name",
            "description",
            "scope_type",
            "permission_ids",
            "active_from",
            "active_until",
            "requires_approval",
            "tenant_id",
        ],
    ),
    (
        "/v1/roles",
        "get",
        "roles.read",
        "List roles (query: status, tenant_id)",
        &[],
    ),
    (
        "/v1/roles/{role_id}",
        "get",
        "roles.read",
        "One role (ETag = version_id)",
        &[],
    ),
    (
        "/v1/roles/{role_id}",
        "patch",
        "roles.write",
        "Edit a role (If-Match)",
        &[
            "role_name",
            "description",
            "permission_ids",
            "active_from",
            "active_until",
        ],
    ),
    (
        "/v1/roles/{role_id}/versions",
        "get",
        "roles.read",
        "Every version of a role",
        &[],
    ),
    (
        "/v1/roles/{role_id}/request-review",
        "post",
        "roles.write",
        "Request review: approval_state pending",
        &["request_reason_code", "request_reason_text"],
    ),
    (
        "/v1/roles/{role_id}/review",
        "post",
        "roles.review",
        "Review: approval_state reviewed",
        &["review_notes"],
    ),
    (
        "/v1/roles/{role_id}/approve",
        "post",
        "roles.approve",
        "Approve: status active (four eyes)",
        &["approval_reason_code", "approval_reason_text"],
    ),
    (
        "/v1/roles/{role_id}/reject",
        "post",
        "roles.approve",
        "Reject",
        &["reason_code", "reason_text"],
    ),
    (
        "/v1/roles/{role_id}/archive",
        "post",
        "roles.approve",
        "Archive (immutable afterwards)",
        &["reason_code", "reason_text"],
    ),
    (
        "/v1/groups",
        "post",
        "groups.write",
        "Create a group",
        &[
            "group_name",
            "description",
            "dynamic_rule",
            "active_from",
            "active_until",
            "tenant_id",
        ],
    ),
    ("/v1/groups", "get", "roles.read", "List groups", &[]),
    (
        "/v1/groups/{group_id}",
        "get",
        "roles.read",
        "One group with its memberships",
        &[],
    ),
    (
        "/v1/groups/{group_id}",
        "patch",
        "groups.write",
        "Edit a group (If-Match)",
        &["group_name", "description", "dynamic_rule", "active_until"],
    ),
    (
        "/v1/groups/{group_id}/members",
        "post",
        "groups.write",
        "Add a member",
        &["user_id", "effective_from", "effective_until"],
    ),
    (
        "/v1/groups/{group_id}/members/{user_id}/end",
        "post",
        "groups.write",
        "End a membership",
        &["effective_until", "reason_code", "reason_text"],
    ),
    (
        "/v1/groups/{group_id}/roles",
        "post",
        "assignments.write",
        "Assign a role to a group",
        &["role_id", "scope", "effective_from", "effective_until"],
    ),
    (
        "/v1/users/{user_id}/roles",
        "post",
        "assignments.write",
        "Assign a role to a user",
        &["role_id", "scope", "effective_from", "effective_until"],
    ),
    (
        "/v1/role-assignments",
        "get",
        "roles.read",
        "List role assignments (query: subject_type, subject_id, role_id, status)",
        &[],
    ),
    (
        "/v1/role-assignments/{assignment_id}",
        "get",
        "roles.read",
        "One role assignment",
        &[],
    ),
    (
        "/v1/role-assignments/{assignment_id}/revoke",
        "post",
        "assignments.write",
        "Revoke a role assignment",
        &["reason_code", "reason_text"],
    ),
    (
        "/v1/deny-rules",
        "post",
        "deny_rules.write",
        "Create a deny rule (enforced immediately on this replica, ADM-3)",
        &[
            "subject_type",
            "subject_id",
            "action",
            "resource",
            "scope",
            "active_from",
            "active_until",
            "reason_code",
            "reason_text",
        ],
    ),
    (
        "/v1/deny-rules",
        "get",
        "deny_rules.read",
        "List deny rules (query: status, subject_type, subject_id)",
        &[],
    ),
    (
        "/v1/deny-rules/{deny_id}",
        "get",
        "deny_rules.read",
        "One deny rule",
        &[],
    ),
    (
        "/v1/deny-rules/{deny_id}/revoke",
        "post",
        "deny_rules.write",
        "Revoke a deny rule",
        &["reason_code", "reason_text"],
    ),
    (
        "/v1/authz/evaluate",
        "post",
        "authz.evaluate",
        "Evaluate: decision, reasons, applied_denies, masked_fields",
        &["subject_id", "action", "resource", "scope", "context"],
    ),
];

/// OpenAPI path items of [`routes`]: `(path, item)`.
pub fn openapi_paths() -> Vec<(String, Value)> {
    let mut items: Vec<(String, serde_json::Map<String, Value>)> = Vec::new();
    for (path, method, perm, summary, fields) in OPS {
        let mut op = json!({
            "summary": summary,
            "description": format!("Needs the permission `{perm}`."),
            "responses": {
                "200": {"description": "OK (creates: 201; ETag = version_id)"},
                "400": {"description": "INVALID_REQUEST with the field at fault"},
                "401": {"description": "UNAUTHENTICATED"},
                "403": {"description": "FORBIDDEN, SEPARATION_OF_DUTIES"},
                "404": {"description": "NOT_FOUND"},
                "409": {"description": "INVALID_TRANSITION, ALREADY_EXISTS, ARCHIVED, ROLE_NOT_ACTIVE"},
                "412": {"description": "PRECONDITION_FAILED (If-Match)"},
                "503": {"description": "AUDIT_UNAVAILABLE, DEPENDENCY_UNAVAILABLE"},
            },
        });
        let params: Vec<Value> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|p| json!({"name": p, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        if !params.is_empty() {
            op["parameters"] = Value::Array(params);
        }
        if !fields.is_empty() {
            let props: serde_json::Map<String, Value> = fields
                .iter()
                .map(|f| ((*f).to_owned(), json!({})))
                .collect();
            op["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": {
                "type": "object", "additionalProperties": false, "properties": props}}}});
        }
        match items.iter_mut().find(|(p, _)| p == path) {
            Some((_, m)) => {
                m.insert((*method).to_owned(), op);
            }
            None => {
                let mut m = serde_json::Map::new();
                m.insert((*method).to_owned(), op);
                items.push(((*path).to_owned(), m));
            }
        }
    }
    items
        .into_iter()
        .map(|(p, m)| (p, Value::Object(m)))
        .collect()
}
