//! Permissions, roles, groups, role assignments, deny rules and authz/evaluate over real HTTP
//! and real gRPC, on SQLite and PostgreSQL (`spec/004_*`).

use crate::common;

use std::time::{Duration, Instant};

use common::{AuthorizationClient, Harness, fresh_pg_database};
use reqwest::Method;
use serde_json::{Value, json};

const KE_RECORD: &str = "/v1/tenants/ke/health/persons/p-1/record";
const ADMIN: &[&str] = &["scp-tenant-admin"];

fn token(h: &Harness, tenant: &str, sub: &str, roles: &[&str]) -> String {
    h.staff_token(tenant, sub, roles, "scp-pep-admin")
}

struct Resp {
    status: u16,
    etag: Option<String>,
    body: Value,
}

async fn call(
    h: &Harness,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
    if_match: Option<&str>,
) -> Resp {
    let mut req = reqwest::Client::new().request(method, h.ops_url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    if let Some(m) = if_match {
        req = req.header("if-match", m);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let etag = resp
        .headers()
        .get("etag")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = resp.json().await.unwrap_or(Value::Null);
    Resp { status, etag, body }
}

async fn post(h: &Harness, path: &str, token: &str, body: Value) -> Resp {
    call(h, Method::POST, path, Some(token), Some(body), None).await
}

async fn get(h: &Harness, path: &str, token: &str) -> Resp {
    call(h, Method::GET, path, Some(token), None, None).await
}

fn now_plus(ms: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::milliseconds(ms))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn past() -> String {
    now_plus(-60_000)
}

/// Creates and activates (requires_approval false) a role with `perms`; returns its id.
async fn active_role(h: &Harness, admin: &str, perms: &[&str]) -> String {
    let r = post(
        h,
        "/v1/roles",
        admin,
        json!({"role_name": "helper", "scope_type": "tenant", "permission_ids": perms,
               "active_from": past(), "requires_approval": false}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.body["role_id"].as_str().unwrap().to_owned();
    let r = post(
        h,
        &format!("/v1/roles/{id}/approve"),
        admin,
        json!({"approval_reason_code": "ROUTINE_REVIEW"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "active");
    id
}

async fn pg() -> Harness {
    Harness::start(Some(fresh_pg_database().await)).await
}

async fn sqlite() -> Harness {
    Harness::start(None).await
}

// --------------------------------------------------------------------------------------------

async fn role_lifecycle(h: Harness) {
    let alice = token(&h, "ke", "alice", ADMIN);
    let bob = token(&h, "ke", "bob", ADMIN);

    // Catalog ids only, named by index.
    let r = post(
        &h,
        "/v1/roles",
        &alice,
        json!({"role_name": "reviewers", "scope_type": "tenant",
               "permission_ids": ["roles.read", "nope.nothing"], "active_from": past()}),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.body["error"]["field"], "permission_ids[1]");
    let r = post(
        &h,
        "/v1/roles",
        &alice,
        json!({"role_name": "reviewers", "scope_type": "galaxy",
               "permission_ids": ["roles.read"], "active_from": past()}),
    )
    .await;
    assert_eq!(r.body["error"]["field"], "scope_type");

    let r = post(
        &h,
        "/v1/roles",
        &alice,
        json!({"role_name": "reviewers", "description": "reads roles", "scope_type": "tenant",
               "permission_ids": ["roles.read"], "active_from": past()}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["status"], "draft");
    assert_eq!(r.body["version_id"], 1);
    assert_eq!(r.etag.as_deref(), Some("\"1\""));
    assert!(r.body["created_at"].is_string());
    let id = r.body["role_id"].as_str().unwrap().to_owned();
    let path = format!("/v1/roles/{id}");

    // Stale If-Match: 412 and nothing changed.
    let r = call(
        &h,
        Method::PATCH,
        &path,
        Some(&alice),
        Some(json!({"role_name": "stale"})),
        Some("\"7\""),
    )
    .await;
    assert_eq!(r.status, 412, "{}", r.body);
    assert_eq!(r.body["error"]["code"], "PRECONDITION_FAILED");
    let r = get(&h, &path, &alice).await;
    assert_eq!(r.body["role_name"], "reviewers");
    assert_eq!(r.body["version_id"], 1);

    let r = call(
        &h,
        Method::PATCH,
        &path,
        Some(&alice),
        Some(json!({"role_name": "role readers", "permission_ids": ["roles.read", "deny_rules.read"]})),
        Some("\"1\""),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["version_id"], 2);
    assert!(r.body["updated_at"].is_string());

    // ADM-7: OTHER needs text; the field is named.
    let r = post(
        &h,
        &format!("{path}/request-review"),
        &alice,
        json!({"request_reason_code": "OTHER"}),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.body["error"]["field"], "request_reason_text");
    let r = post(
        &h,
        &format!("{path}/request-review"),
        &alice,
        json!({"request_reason_code": "NOT_A_CODE"}),
    )
    .await;
    assert_eq!(r.body["error"]["field"], "request_reason_code");
    assert_eq!(get(&h, &path, &alice).await.body["version_id"], 2);

    // Approval before review is refused.
    let r = post(
        &h,
        &format!("{path}/approve"),
        &bob,
        json!({"approval_reason_code": "ROUTINE_REVIEW"}),
    )
    .await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.body["error"]["code"], "INVALID_TRANSITION");

    let r = post(
        &h,
        &format!("{path}/request-review"),
        &alice,
        json!({"request_reason_code": "OTHER", "request_reason_text": "new team"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["approval_state"], "pending");
    assert!(r.body["requested_at"].is_string());

    let r = post(
        &h,
        &format!("{path}/review"),
        &bob,
        json!({"review_notes": "fine"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["approval_state"], "reviewed");
    assert!(r.body["reviewed_at"].is_string());

    // Four eyes: the author may not approve.
    let r = post(
        &h,
        &format!("{path}/approve"),
        &alice,
        json!({"approval_reason_code": "ROUTINE_REVIEW"}),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.body["error"]["code"], "SEPARATION_OF_DUTIES");

    let r = post(
        &h,
        &format!("{path}/approve"),
        &bob,
        json!({"approval_reason_code": "ROUTINE_REVIEW"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "active");
    assert_eq!(r.body["approval_state"], "approved");
    assert!(r.body["approved_at"].is_string());
    let v = r.body["version_id"].as_i64().unwrap();

    // An active role accepts no widening edit.
    let r = call(
        &h,
        Method::PATCH,
        &path,
        Some(&alice),
        Some(json!({"permission_ids": ["roles.approve"]})),
        None,
    )
    .await;
    assert_eq!(r.status, 409, "{}", r.body);

    let r = post(
        &h,
        &format!("{path}/archive"),
        &alice,
        json!({"reason_code": "CONTRACT_ENDED"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "archived");
    assert!(r.body["archived_at"].is_string());
    assert_eq!(r.body["version_id"], v + 1);
    let r = call(
        &h,
        Method::PATCH,
        &path,
        Some(&alice),
        Some(json!({"description": "x"})),
        None,
    )
    .await;
    assert_eq!(r.status, 409);
    assert_eq!(r.body["error"]["code"], "ARCHIVED");

    let r = get(&h, &format!("{path}/versions"), &alice).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let statuses: Vec<&str> = r.body["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["role"]["approval_state"].as_str().unwrap_or("none"))
        .collect();
    assert_eq!(
        statuses,
        [
            "none", "none", "pending", "reviewed", "approved", "approved"
        ]
    );
    assert_eq!(r.body["versions"][0]["actor"], "alice");

    // Reject path.
    let r = post(
        &h,
        "/v1/roles",
        &alice,
        json!({"role_name": "too much", "scope_type": "vertical",
               "permission_ids": ["integrations.approve"], "active_from": past()}),
    )
    .await;
    let id2 = r.body["role_id"].as_str().unwrap().to_owned();
    post(
        &h,
        &format!("/v1/roles/{id2}/request-review"),
        &alice,
        json!({"request_reason_code": "POLICY_UPDATE"}),
    )
    .await;
    let r = post(
        &h,
        &format!("/v1/roles/{id2}/reject"),
        &bob,
        json!({"reason_code": "OTHER", "reason_text": "too broad"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["approval_state"], "rejected");
    assert!(r.body["rejected_at"].is_string());

    let r = get(&h, "/v1/roles?status=rejected", &alice).await;
    let ids: Vec<&str> = r.body["roles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["role_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [id2.as_str()]);

    // Another tenant's role is invisible.
    let ug = token(&h, "ug", "uma", ADMIN);
    assert_eq!(get(&h, &path, &ug).await.status, 404);

    // The catalog.
    let r = get(&h, "/v1/permissions?scope_type=vertical", &alice).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let perms = r.body["permissions"].as_array().unwrap();
    assert!(!perms.is_empty());
    assert!(
        perms
            .iter()
            .all(|p| p["scope_type"] == "vertical" && p["status"] == "active")
    );
    assert!(
        perms
            .iter()
            .any(|p| p["permission_id"] == "integrations.review")
    );
    let r = get(&h, "/v1/permissions?colour=red", &alice).await;
    assert_eq!(r.body["error"]["field"], "colour");
}

// ADM-6, ADM-7, ADM-8
#[tokio::test]
async fn role_lifecycle_sqlite() {
    role_lifecycle(sqlite().await).await;
}

// ADM-6, ADM-7, ADM-8
#[tokio::test]
async fn role_lifecycle_postgres() {
    role_lifecycle(pg().await).await;
}

// --------------------------------------------------------------------------------------------

async fn unauthorized_everywhere(h: Harness) {
    let admin = token(&h, "ke", "alice", ADMIN);
    let role = active_role(&h, &admin, &["roles.read"]).await;
    let g = post(
        &h,
        "/v1/groups",
        &admin,
        json!({"group_name": "ops", "active_from": past()}),
    )
    .await;
    let group = g.body["group_id"].as_str().unwrap().to_owned();
    let a = post(
        &h,
        "/v1/users/carol/roles",
        &admin,
        json!({"role_id": role, "scope": {}, "effective_from": past()}),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.body);
    let asg = a.body["assignment_id"].as_str().unwrap().to_owned();
    let d = post(
        &h,
        "/v1/deny-rules",
        &admin,
        json!({"subject_type": "user", "subject_id": "mallory", "action": "*", "resource": "*",
               "scope": {}, "active_from": past(), "reason_code": "SECURITY_INCIDENT"}),
    )
    .await;
    assert_eq!(d.status, 201, "{}", d.body);
    let deny = d.body["deny_id"].as_str().unwrap().to_owned();

    let reason = json!({"reason_code": "ROUTINE_REVIEW"});
    let endpoints: Vec<(Method, String, Value, bool)> = vec![
        (Method::GET, "/v1/permissions".into(), Value::Null, true),
        (Method::GET, "/v1/roles".into(), Value::Null, true),
        (
            Method::POST,
            "/v1/roles".into(),
            json!({"role_name": "x", "scope_type": "tenant", "permission_ids": ["roles.read"], "active_from": past()}),
            false,
        ),
        (Method::GET, format!("/v1/roles/{role}"), Value::Null, true),
        (
            Method::PATCH,
            format!("/v1/roles/{role}"),
            json!({"description": "d"}),
            false,
        ),
        (
            Method::GET,
            format!("/v1/roles/{role}/versions"),
            Value::Null,
            true,
        ),
        (
            Method::POST,
            format!("/v1/roles/{role}/request-review"),
            json!({"request_reason_code": "ROUTINE_REVIEW"}),
            false,
        ),
        (
            Method::POST,
            format!("/v1/roles/{role}/review"),
            json!({}),
            false,
        ),
        (
            Method::POST,
            format!("/v1/roles/{role}/approve"),
            json!({"approval_reason_code": "ROUTINE_REVIEW"}),
            false,
        ),
        (
            Method::POST,
            format!("/v1/roles/{role}/reject"),
            reason.clone(),
            false,
        ),
        (
            Method::POST,
            format!("/v1/roles/{role}/archive"),
            reason.clone(),
            false,
        ),
        (
            Method::POST,
            "/v1/groups".into(),
            json!({"group_name": "g", "active_from": past()}),
            false,
        ),
        (Method::GET, "/v1/groups".into(), Value::Null, true),
        (
            Method::GET,
            format!("/v1/groups/{group}"),
            Value::Null,
            true,
        ),
        (
            Method::PATCH,
            format!("/v1/groups/{group}"),
            json!({"description": "d"}),
            false,
        ),
        (
            Method::POST,
            format!("/v1/groups/{group}/members"),
            json!({"user_id": "u", "effective_from": past()}),
            false,
        ),
        (
            Method::POST,
            format!("/v1/groups/{group}/members/u/end"),
            json!({"effective_until": now_plus(0), "reason_code": "ROUTINE_REVIEW"}),
            false,
        ),
        (
            Method::POST,
            format!("/v1/groups/{group}/roles"),
            json!({"role_id": role, "scope": {}, "effective_from": past()}),
            false,
        ),
        (
            Method::POST,
            "/v1/users/u/roles".into(),
            json!({"role_id": role, "scope": {}, "effective_from": past()}),
            false,
        ),
        (
            Method::GET,
            "/v1/role-assignments".into(),
            Value::Null,
            true,
        ),
        (
            Method::GET,
            format!("/v1/role-assignments/{asg}"),
            Value::Null,
            true,
        ),
        (
            Method::POST,
            format!("/v1/role-assignments/{asg}/revoke"),
            reason.clone(),
            false,
        ),
        (
            Method::POST,
            "/v1/deny-rules".into(),
            json!({"subject_type": "user", "subject_id": "x", "action": "*", "resource": "*",
                   "scope": {}, "active_from": past(), "reason_code": "SECURITY_INCIDENT"}),
            false,
        ),
        (Method::GET, "/v1/deny-rules".into(), Value::Null, true),
        (
            Method::GET,
            format!("/v1/deny-rules/{deny}"),
            Value::Null,
            true,
        ),
        (
            Method::POST,
            format!("/v1/deny-rules/{deny}/revoke"),
            reason.clone(),
            false,
        ),
        (
            Method::POST,
            "/v1/authz/evaluate".into(),
            json!({"subject_id": "carol", "action": "read", "resource": "role", "scope": {}}),
            false,
        ),
    ];
    // Persona with nothing here, and the auditor (reads only).
    let manager = token(&h, "ke", "ivan", &["scp-integration-manager"]);
    let auditor = token(&h, "ke", "audrey", &["scp-auditor"]);
    let nobody = token(&h, "ke", "nobody", &[]);
    for (m, path, body, read) in &endpoints {
        let body = (!body.is_null()).then(|| body.clone());
        let r = call(&h, m.clone(), path, None, body.clone(), None).await;
        assert_eq!(r.status, 401, "{m} {path} without a token: {}", r.body);
        for t in [&manager, &nobody] {
            let r = call(&h, m.clone(), path, Some(t), body.clone(), None).await;
            assert_eq!(r.status, 403, "{m} {path}: {}", r.body);
            assert_eq!(r.body["error"]["code"], "FORBIDDEN");
        }
        let r = call(&h, m.clone(), path, Some(&auditor), body.clone(), None).await;
        if *read {
            assert_eq!(r.status, 200, "auditor {m} {path}: {}", r.body);
        } else {
            assert_eq!(r.status, 403, "auditor {m} {path}: {}", r.body);
        }
    }
    // Nothing of the refused calls was written.
    let r = get(&h, &format!("/v1/roles/{role}"), &admin).await;
    assert_eq!(r.body["version_id"], 2);
    assert_eq!(r.body["status"], "active");
}

// ADM-1
#[tokio::test]
async fn unauthorized_everywhere_sqlite() {
    unauthorized_everywhere(sqlite().await).await;
}

// ADM-1
#[tokio::test]
async fn unauthorized_everywhere_postgres() {
    unauthorized_everywhere(pg().await).await;
}

// --------------------------------------------------------------------------------------------

async fn assignments_grant_real_power(h: Harness) {
    let admin = token(&h, "ke", "alice", ADMIN);
    // A user whose token carries no persona role.
    let carol = token(&h, "ke", "carol", &[]);
    let r = get(&h, "/v1/deny-rules", &carol).await;
    assert_eq!(r.status, 403);

    let role = active_role(&h, &admin, &["deny_rules.read"]).await;

    // A draft role cannot be assigned.
    let draft = post(
        &h,
        "/v1/roles",
        &admin,
        json!({"role_name": "d", "scope_type": "tenant", "permission_ids": ["roles.read"], "active_from": past()}),
    )
    .await;
    let r = post(
        &h,
        "/v1/users/carol/roles",
        &admin,
        json!({"role_id": draft.body["role_id"], "scope": {}, "effective_from": past()}),
    )
    .await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.body["error"]["code"], "ROLE_NOT_ACTIVE");

    // No escalation: the tenant admin does not hold audit.read, so it cannot grant it.
    let audit_role = active_role(&h, &admin, &["audit.read"]).await;
    let r = post(
        &h,
        "/v1/users/carol/roles",
        &admin,
        json!({"role_id": audit_role, "scope": {}, "effective_from": past()}),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("audit.read")
    );

    // The security persona lacks assignments.write.
    let sec = token(&h, "ke", "sam", &["scp-security"]);
    let r = post(
        &h,
        "/v1/users/carol/roles",
        &sec,
        json!({"role_id": role, "scope": {}, "effective_from": past()}),
    )
    .await;
    assert_eq!(r.status, 403);

    let r = post(
        &h,
        "/v1/users/carol/roles",
        &admin,
        json!({"role_id": role, "scope": {"tenant_id": "ke"}, "effective_from": past()}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["user_id"], "carol");
    assert_eq!(r.body["role_id"], role.as_str());
    let asg = r.body["assignment_id"].as_str().unwrap().to_owned();

    let r = get(&h, "/v1/deny-rules", &carol).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // Only what the role grants.
    assert_eq!(get(&h, "/v1/roles", &carol).await.status, 403);

    // Revoke: OTHER without text is refused and changes nothing.
    let r = post(
        &h,
        &format!("/v1/role-assignments/{asg}/revoke"),
        &admin,
        json!({"reason_code": "OTHER"}),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body["error"]["field"], "reason_text");
    assert_eq!(get(&h, "/v1/deny-rules", &carol).await.status, 200);
    let r = post(
        &h,
        &format!("/v1/role-assignments/{asg}/revoke"),
        &admin,
        json!({"reason_code": "CONTRACT_ENDED"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "revoked");
    assert!(r.body["revoked_at"].is_string());
    assert_eq!(get(&h, "/v1/deny-rules", &carol).await.status, 403);

    // A window that ends.
    let r = post(
        &h,
        "/v1/users/carol/roles",
        &admin,
        json!({"role_id": role, "scope": {}, "effective_from": past(), "effective_until": now_plus(1500)}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(get(&h, "/v1/deny-rules", &carol).await.status, 200);
    tokio::time::sleep(Duration::from_millis(1700)).await;
    assert_eq!(get(&h, "/v1/deny-rules", &carol).await.status, 403);

    // A window that has not begun.
    post(
        &h,
        "/v1/users/carol/roles",
        &admin,
        json!({"role_id": role, "scope": {}, "effective_from": now_plus(3_600_000)}),
    )
    .await;
    assert_eq!(get(&h, "/v1/deny-rules", &carol).await.status, 403);

    // A vertical-scoped assignment covers that vertical only.
    let vrole = post(
        &h,
        "/v1/roles",
        &admin,
        json!({"role_name": "v", "scope_type": "vertical", "permission_ids": ["integrations.read"],
               "active_from": past(), "requires_approval": false}),
    )
    .await;
    let vrole = vrole.body["role_id"].as_str().unwrap().to_owned();
    post(
        &h,
        &format!("/v1/roles/{vrole}/approve"),
        &admin,
        json!({"approval_reason_code": "ROUTINE_REVIEW"}),
    )
    .await;
    let r = post(
        &h,
        "/v1/users/carol/roles",
        &admin,
        json!({"role_id": vrole, "scope": {}, "effective_from": past()}),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body["error"]["field"], "scope.vertical_id");
    let r = post(
        &h,
        "/v1/users/carol/roles",
        &admin,
        json!({"role_id": vrole, "scope": {"vertical_id": "health"}, "effective_from": past()}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let r = post(
        &h,
        "/v1/authz/evaluate",
        &admin,
        json!({"subject_id": "carol", "action": "read", "resource": "integration",
               "scope": {"vertical_id": "health"}}),
    )
    .await;
    assert_eq!(r.body["decision"], "allow", "{}", r.body);
    let r = post(
        &h,
        "/v1/authz/evaluate",
        &admin,
        json!({"subject_id": "carol", "action": "read", "resource": "integration",
               "scope": {"vertical_id": "education"}}),
    )
    .await;
    assert_eq!(r.body["decision"], "deny", "{}", r.body);

    let r = get(
        &h,
        "/v1/role-assignments?subject_id=carol&status=revoked",
        &admin,
    )
    .await;
    assert_eq!(r.body["role_assignments"].as_array().unwrap().len(), 1);
}

// ADM-1, ADM-6
#[tokio::test]
async fn assignments_grant_real_power_sqlite() {
    assignments_grant_real_power(sqlite().await).await;
}

// ADM-1, ADM-6
#[tokio::test]
async fn assignments_grant_real_power_postgres() {
    assignments_grant_real_power(pg().await).await;
}

// --------------------------------------------------------------------------------------------

async fn groups_and_windows(h: Harness) {
    let admin = token(&h, "ke", "alice", ADMIN);
    let carol = token(&h, "ke", "carol", &[]);
    let role = active_role(&h, &admin, &["deny_rules.read"]).await;

    let r = post(
        &h,
        "/v1/groups",
        &admin,
        json!({"group_name": "investigators", "active_from": now_plus(-1000), "active_until": now_plus(-60_000)}),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body["error"]["field"], "active_until");

    let r = post(
        &h,
        "/v1/groups",
        &admin,
        json!({"group_name": "investigators", "description": "security", "active_from": past()}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["status"], "active");
    assert!(r.body["created_at"].is_string());
    let g = r.body["group_id"].as_str().unwrap().to_owned();

    let r = post(
        &h,
        &format!("/v1/groups/{g}/roles"),
        &admin,
        json!({"role_id": role, "scope": {}, "effective_from": past()}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["group_id"], g.as_str());
    assert_eq!(get(&h, "/v1/deny-rules", &carol).await.status, 403);

    // A membership that starts in the future grants nothing yet.
    let r = post(
        &h,
        &format!("/v1/groups/{g}/members"),
        &admin,
        json!({"user_id": "carol", "effective_from": now_plus(3_600_000)}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(r.body["membership_id"].is_string());
    assert_eq!(r.body["user_id"], "carol");
    assert_eq!(get(&h, "/v1/deny-rules", &carol).await.status, 403);
    let r = post(
        &h,
        &format!("/v1/groups/{g}/members/carol/end"),
        &admin,
        json!({"effective_until": now_plus(3_700_000), "reason_code": "ERROR_CORRECTION"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);

    // A membership now.
    let r = post(
        &h,
        &format!("/v1/groups/{g}/members"),
        &admin,
        json!({"user_id": "carol", "effective_from": past()}),
    )
    .await;
    assert_eq!(
        r.status, 409,
        "the future membership is still current: {}",
        r.body
    );
    let r = post(
        &h,
        &format!("/v1/groups/{g}/members"),
        &admin,
        json!({"user_id": "dan", "effective_from": past()}),
    )
    .await;
    assert_eq!(r.status, 201);
    let dan = token(&h, "ke", "dan", &[]);
    assert_eq!(get(&h, "/v1/deny-rules", &dan).await.status, 200);

    // End it: OTHER needs text; then ended now.
    let end = format!("/v1/groups/{g}/members/dan/end");
    let r = post(
        &h,
        &end,
        &admin,
        json!({"effective_until": now_plus(0), "reason_code": "OTHER"}),
    )
    .await;
    assert_eq!(r.body["error"]["field"], "reason_text");
    assert_eq!(get(&h, "/v1/deny-rules", &dan).await.status, 200);
    let r = post(
        &h,
        &end,
        &admin,
        json!({"effective_until": now_plus(0), "reason_code": "CONTRACT_ENDED"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body["effective_until"].is_string());
    assert_eq!(get(&h, "/v1/deny-rules", &dan).await.status, 403);
    assert_eq!(
        post(
            &h,
            &end,
            &admin,
            json!({"effective_until": now_plus(0), "reason_code": "CONTRACT_ENDED"})
        )
        .await
        .status,
        404
    );

    // Dynamic rule: users whose token carries `ext-ops`.
    let r = post(
        &h,
        "/v1/groups",
        &admin,
        json!({"group_name": "ext ops", "dynamic_rule": {"token_role": "ext-ops"}, "active_from": past()}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let dg = r.body["group_id"].as_str().unwrap().to_owned();
    post(
        &h,
        &format!("/v1/groups/{dg}/roles"),
        &admin,
        json!({"role_id": role, "scope": {}, "effective_from": past()}),
    )
    .await;
    let eve = token(&h, "ke", "eve", &["ext-ops"]);
    assert_eq!(get(&h, "/v1/deny-rules", &eve).await.status, 200);
    assert_eq!(get(&h, "/v1/deny-rules", &carol).await.status, 403);

    // PATCH with If-Match: stale 412; removing the rule ends eve's power.
    let r = call(
        &h,
        Method::PATCH,
        &format!("/v1/groups/{dg}"),
        Some(&admin),
        Some(json!({"dynamic_rule": null})),
        Some("\"9\""),
    )
    .await;
    assert_eq!(r.status, 412);
    assert_eq!(get(&h, "/v1/deny-rules", &eve).await.status, 200);
    let r = call(
        &h,
        Method::PATCH,
        &format!("/v1/groups/{dg}"),
        Some(&admin),
        Some(json!({"dynamic_rule": null})),
        Some("\"1\""),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body["updated_at"].is_string());
    assert_eq!(get(&h, "/v1/deny-rules", &eve).await.status, 403);

    let r = get(&h, &format!("/v1/groups/{g}"), &admin).await;
    assert_eq!(r.body["members"].as_array().unwrap().len(), 2);
}

// ADM-6, ADM-7, ADM-8
#[tokio::test]
async fn groups_and_windows_sqlite() {
    groups_and_windows(sqlite().await).await;
}

// ADM-6, ADM-7, ADM-8
#[tokio::test]
async fn groups_and_windows_postgres() {
    groups_and_windows(pg().await).await;
}

// --------------------------------------------------------------------------------------------

async fn partner_token(h: &Harness) -> String {
    let claims = h.claims("ke", "int-ke-moh", &["health"], "health:person:read");
    h.sign("ke-rs256", &claims)
}

async fn deny_rule_enforced_immediately(mut h: Harness) {
    let sec = token(&h, "ke", "sam", &["scp-security"]);
    let partner = partner_token(&h).await;
    let r = h.check(&Harness::get(KE_RECORD, &partner)).await;
    assert_eq!(r["allowed"], true, "{r}");

    // A future rule and a rule for another integration change nothing.
    let base = json!({"subject_type": "integration", "subject_id": "int-ke-moh", "action": "read",
                      "resource": "*", "scope": {"tenant_id": "ke"}, "reason_code": "SECURITY_INCIDENT"});
    let mut future = base.clone();
    future["active_from"] = json!(now_plus(3_600_000));
    let r = post(&h, "/v1/deny-rules", &sec, future).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let mut other = base.clone();
    other["subject_id"] = json!("int-ke-apikey");
    other["active_from"] = json!(past());
    assert_eq!(post(&h, "/v1/deny-rules", &sec, other).await.status, 201);
    let r = h.check(&Harness::get(KE_RECORD, &partner)).await;
    assert_eq!(r["allowed"], true, "{r}");

    // Bad inputs.
    let mut bad = base.clone();
    bad["active_from"] = json!(past());
    bad["action"] = json!("approve");
    let r = post(&h, "/v1/deny-rules", &sec, bad.clone()).await;
    assert_eq!(r.body["error"]["field"], "action");
    bad["action"] = json!("read");
    bad["reason_code"] = json!("OTHER");
    let r = post(&h, "/v1/deny-rules", &sec, bad.clone()).await;
    assert_eq!(r.body["error"]["field"], "reason_text");
    bad["reason_code"] = json!("SECURITY_INCIDENT");
    bad["subject_id"] = json!("int-nope");
    let r = post(&h, "/v1/deny-rules", &sec, bad).await;
    assert_eq!(r.body["error"]["field"], "subject_id");

    let mut now = base.clone();
    now["active_from"] = json!(past());
    let r = post(&h, "/v1/deny-rules", &sec, now).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["status"], "active");
    assert!(r.body["created_at"].is_string());
    let id = r.body["deny_id"].as_str().unwrap().to_owned();
    // The very next check on this replica is denied.
    let r = h.check(&Harness::get(KE_RECORD, &partner)).await;
    assert_eq!(r["allowed"], false, "{r}");
    assert_eq!(r["code"], "DENY_RULE_MATCHED", "{r}");

    let r = get(
        &h,
        "/v1/deny-rules?status=active&subject_id=int-ke-moh",
        &sec,
    )
    .await;
    assert_eq!(
        r.body["deny_rules"].as_array().unwrap().len(),
        2,
        "{}",
        r.body
    );

    let r = call(
        &h,
        Method::POST,
        &format!("/v1/deny-rules/{id}/revoke"),
        Some(&sec),
        Some(json!({"reason_code": "ERROR_CORRECTION"})),
        Some("\"5\""),
    )
    .await;
    assert_eq!(r.status, 412);
    let r = h.check(&Harness::get(KE_RECORD, &partner)).await;
    assert_eq!(r["allowed"], false, "{r}");
    let r = post(
        &h,
        &format!("/v1/deny-rules/{id}/revoke"),
        &sec,
        json!({"reason_code": "ERROR_CORRECTION"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "revoked");
    assert!(r.body["revoked_at"].is_string());
    let r = h.check(&Harness::get(KE_RECORD, &partner)).await;
    assert_eq!(r["allowed"], true, "{r}");
    // Kept for the record.
    let r = get(&h, &format!("/v1/deny-rules/{id}"), &sec).await;
    assert_eq!(r.body["status"], "revoked");

    // The file-managed rule of the fixtures still loads and applies (compatibility).
    let claims = h.claims("ke", "int-ke-denyme", &["health"], "health:person:read");
    let t = h.sign("ke-rs256", &claims);
    let r = h.check(&Harness::get(KE_RECORD, &t)).await;
    assert_eq!(r["code"], "DENY_RULE_MATCHED", "{r}");
}

// ADM-3, ADM-4, ADM-7, ADM-8
#[tokio::test]
async fn deny_rule_enforced_immediately_sqlite() {
    deny_rule_enforced_immediately(sqlite().await).await;
}

// ADM-3, ADM-4, ADM-7, ADM-8
#[tokio::test]
async fn deny_rule_enforced_immediately_postgres() {
    deny_rule_enforced_immediately(pg().await).await;
}

// --------------------------------------------------------------------------------------------

/// ADM-3 across replicas: a second scp-pep on the same PostgreSQL database (default poll
/// interval, LISTEN/NOTIFY) enforces a deny rule made through the first one within a bound.
// ADM-3, ADM-4
#[tokio::test]
async fn deny_rule_reaches_second_replica_postgres() {
    let mut h = pg().await;
    let mut config = scp_pep::config::Config::default();
    config.server.grpc_listen = "127.0.0.1:0".parse().unwrap();
    config.server.http_listen = "127.0.0.1:0".parse().unwrap();
    config.store.url = h.store_url.clone();
    config.policy.dir = Some(h.policy_dir.clone());
    config.decision_log.output = h.dir.path().join("r2.jsonl").display().to_string();
    config.audit.writer = Some("replica-2".into());
    assert_eq!(
        config.store.poll_interval_ms, 1000,
        "the default poll interval"
    );
    let r2 = scp_pep::server::start(config, None)
        .await
        .expect("replica 2 starts");
    let c2 = AuthorizationClient::connect(format!("http://{}", r2.grpc_addr))
        .await
        .unwrap();
    let partner = partner_token(&h).await;
    let input = Harness::get(KE_RECORD, &partner);
    let check2 = |c: &AuthorizationClient<tonic::transport::Channel>| {
        let req = scp_pep::check::build_request(&input);
        let mut c = c.clone();
        async move {
            let resp = c.check(req).await.unwrap().into_inner();
            scp_pep::check::response_json(&resp)
        }
    };
    assert_eq!(check2(&c2).await["allowed"], true);

    let sec = token(&h, "ke", "sam", &["scp-security"]);
    let mut delays = Vec::new();
    for round in 0..3 {
        let started = Instant::now();
        let r = post(
            &h,
            "/v1/deny-rules",
            &sec,
            json!({"subject_type": "integration", "subject_id": "int-ke-moh", "action": "*",
                   "resource": "*", "scope": {}, "active_from": past(),
                   "reason_code": "SECURITY_INCIDENT"}),
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.body);
        let api_done = started.elapsed();
        let id = r.body["deny_id"].as_str().unwrap().to_owned();
        assert_eq!(h.check(&input).await["code"], "DENY_RULE_MATCHED");
        loop {
            let r = check2(&c2).await;
            if r["allowed"] == false {
                assert_eq!(r["code"], "DENY_RULE_MATCHED", "{r}");
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "replica 2 still allows after 5 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let seen = started.elapsed();
        delays.push(seen);
        eprintln!(
            "round {round}: API answered after {api_done:?}; replica 2 denied after {seen:?} (from the request)"
        );
        let r = post(
            &h,
            &format!("/v1/deny-rules/{id}/revoke"),
            &sec,
            json!({"reason_code": "ERROR_CORRECTION"}),
        )
        .await;
        assert_eq!(r.status, 200);
        let t = Instant::now();
        while check2(&c2).await["allowed"] != true {
            assert!(t.elapsed() < Duration::from_secs(5));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    eprintln!("cross-replica deny delays: {delays:?}");
    r2.shutdown().await;
}

// --------------------------------------------------------------------------------------------

async fn admin_deny_and_evaluate(h: Harness) {
    let admin = token(&h, "ke", "alice", ADMIN);
    let sec = token(&h, "ke", "sam", &["scp-security"]);
    let role = active_role(&h, &admin, &["integrations.approve", "roles.read"]).await;
    let r = post(
        &h,
        "/v1/users/carol/roles",
        &admin,
        json!({"role_id": role, "scope": {}, "effective_from": past()}),
    )
    .await;
    let asg = r.body["assignment_id"].as_str().unwrap().to_owned();
    let carol = token(&h, "ke", "carol", &[]);

    let eval = |subject: &str, action: &str, resource: &str| {
        json!({"subject_id": subject, "action": action, "resource": resource,
               "scope": {"tenant_id": "ke"}, "context": {"channel": "test"}})
    };
    let r = post(
        &h,
        "/v1/authz/evaluate",
        &sec,
        eval("carol", "approve", "integration"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["decision"], "allow");
    assert_eq!(
        r.body["reasons"],
        json!([format!("grant:assignment:{asg}")])
    );
    assert_eq!(r.body["applied_denies"], json!([]));
    assert_eq!(r.body["masked_fields"], json!([]));
    // By permission id too.
    let r = post(
        &h,
        "/v1/authz/evaluate",
        &sec,
        eval("carol", "integrations.approve", "integration"),
    )
    .await;
    assert_eq!(r.body["decision"], "allow");
    let r = post(
        &h,
        "/v1/authz/evaluate",
        &sec,
        eval("nobody", "approve", "integration"),
    )
    .await;
    assert_eq!(r.body["decision"], "deny");
    assert_eq!(r.body["reasons"], json!(["no_grant"]));
    let r = post(
        &h,
        "/v1/authz/evaluate",
        &sec,
        eval("carol", "operate", "integration"),
    )
    .await;
    assert_eq!(r.body["decision"], "deny");
    let mut bad = eval("carol", "approve", "integration");
    bad["context"] = json!([1]);
    let r = post(&h, "/v1/authz/evaluate", &sec, bad).await;
    assert_eq!(r.body["error"]["field"], "context");
    let mut bad = eval("carol", "approve", "integration");
    bad["scope"]["planet"] = json!("mars");
    let r = post(&h, "/v1/authz/evaluate", &sec, bad).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body["error"]["field"], "scope.planet");
    // Only the caller's own tenant.
    let mut other = eval("carol", "approve", "integration");
    other["scope"]["tenant_id"] = json!("ug");
    assert_eq!(
        post(&h, "/v1/authz/evaluate", &sec, other).await.status,
        403
    );

    // A user deny rule: carol loses roles.read on the API and in evaluate.
    assert_eq!(get(&h, "/v1/roles", &carol).await.status, 200);
    let r = post(
        &h,
        "/v1/deny-rules",
        &sec,
        json!({"subject_type": "user", "subject_id": "carol", "action": "read", "resource": "role",
               "scope": {}, "active_from": past(), "reason_code": "SECURITY_INCIDENT"}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let d1 = r.body["deny_id"].as_str().unwrap().to_owned();
    let r = get(&h, "/v1/roles", &carol).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body["error"]["message"].as_str().unwrap().contains(&d1));
    let r = post(
        &h,
        "/v1/authz/evaluate",
        &sec,
        eval("carol", "read", "role"),
    )
    .await;
    assert_eq!(r.body["decision"], "deny");
    assert_eq!(r.body["applied_denies"], json!([d1]));
    assert!(
        r.body["reasons"]
            .as_array()
            .unwrap()
            .contains(&json!(format!("deny_rule:{d1}")))
    );
    // Approve is untouched by that rule.
    let r = post(
        &h,
        "/v1/authz/evaluate",
        &sec,
        eval("carol", "approve", "integration"),
    )
    .await;
    assert_eq!(r.body["decision"], "allow");

    // A role deny rule (on the stored role id) applies to everyone assigned it.
    let r = post(
        &h,
        "/v1/deny-rules",
        &sec,
        json!({"subject_type": "role", "subject_id": role, "action": "approve", "resource": "integration",
               "scope": {}, "active_from": past(), "reason_code": "COMPLIANCE"}),
    )
    .await;
    let d2 = r.body["deny_id"].as_str().unwrap().to_owned();
    let r = post(
        &h,
        "/v1/authz/evaluate",
        &sec,
        eval("carol", "approve", "integration"),
    )
    .await;
    assert_eq!(r.body["decision"], "deny");
    assert_eq!(r.body["applied_denies"], json!([d2]));

    // A role deny rule on a token role blocks the persona.
    let r = post(
        &h,
        "/v1/deny-rules",
        &sec,
        json!({"subject_type": "role", "subject_id": "scp-tenant-admin", "action": "write",
               "resource": "role", "scope": {}, "active_from": past(), "reason_code": "SECURITY_INCIDENT"}),
    )
    .await;
    assert_eq!(r.status, 201);
    let r = post(
        &h,
        "/v1/roles",
        &admin,
        json!({"role_name": "x", "scope_type": "tenant", "permission_ids": ["roles.read"], "active_from": past()}),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body);
    // Other admin work continues.
    assert_eq!(get(&h, "/v1/roles", &admin).await.status, 200);

    // A group deny rule.
    let g = post(
        &h,
        "/v1/groups",
        &admin,
        json!({"group_name": "g", "active_from": past()}),
    )
    .await;
    let g = g.body["group_id"].as_str().unwrap().to_owned();
    post(
        &h,
        &format!("/v1/groups/{g}/members"),
        &admin,
        json!({"user_id": "carol", "effective_from": past()}),
    )
    .await;
    let r = post(
        &h,
        "/v1/deny-rules",
        &sec,
        json!({"subject_type": "group", "subject_id": g, "action": "*", "resource": "*",
               "scope": {}, "active_from": past(), "reason_code": "SECURITY_INCIDENT"}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let d3 = r.body["deny_id"].as_str().unwrap().to_owned();
    let r = post(
        &h,
        "/v1/authz/evaluate",
        &sec,
        eval("carol", "approve", "integration"),
    )
    .await;
    let applied: Vec<String> = serde_json::from_value(r.body["applied_denies"].clone()).unwrap();
    assert!(applied.contains(&d3) && applied.contains(&d2), "{}", r.body);
    // Deny rules never touch partner traffic.
    let mut h = h;
    let partner = partner_token(&h).await;
    assert_eq!(
        h.check(&Harness::get(KE_RECORD, &partner)).await["allowed"],
        true
    );
}

// ADM-1, ADM-3, ADM-6
#[tokio::test]
async fn admin_deny_and_evaluate_sqlite() {
    admin_deny_and_evaluate(sqlite().await).await;
}

// ADM-1, ADM-3, ADM-6
#[tokio::test]
async fn admin_deny_and_evaluate_postgres() {
    admin_deny_and_evaluate(pg().await).await;
}

// ADM-6
#[tokio::test]
async fn openapi_lists_the_rbac_routes() {
    let h = sqlite().await;
    let r = reqwest::get(h.ops_url("/openapi.json")).await.unwrap();
    let doc: Value = r.json().await.unwrap();
    for p in [
        "/v1/permissions",
        "/v1/roles/{role_id}/approve",
        "/v1/groups/{group_id}/members/{user_id}/end",
        "/v1/role-assignments/{assignment_id}/revoke",
        "/v1/deny-rules/{deny_id}/revoke",
        "/v1/authz/evaluate",
    ] {
        assert!(doc["paths"][p].is_object(), "{p} missing");
    }
    assert!(doc["paths"]["/v1/roles"]["post"]["requestBody"].is_object());
}

/// ADM-1 (permission before anything else): a caller without the permission gets 403
/// `FORBIDDEN` whatever the body or id — never 400 naming a field nor 404 telling which ids
/// exist — while a caller with it gets the validation error and the 404.
#[tokio::test]
async fn permission_is_checked_before_body_and_existence() {
    let h = sqlite().await;
    let nobody = token(&h, "ke", "clerk-1", &["scp-unmapped-role"]);
    let admin = token(&h, "ke", "admin-1", ADMIN);
    let cases: Vec<(Method, &str, Option<Value>)> = vec![
        (Method::POST, "/v1/roles", Some(json!([]))),
        (Method::POST, "/v1/roles", Some(json!({"no_such_field": 1}))),
        (Method::GET, "/v1/roles/role-does-not-exist", None),
        (
            Method::PATCH,
            "/v1/roles/role-does-not-exist",
            Some(json!({})),
        ),
        (
            Method::POST,
            "/v1/roles/role-does-not-exist/approve",
            Some(json!({})),
        ),
        (
            Method::POST,
            "/v1/groups",
            Some(json!({"no_such_field": 1})),
        ),
        (Method::GET, "/v1/groups/grp-does-not-exist", None),
        (
            Method::POST,
            "/v1/deny-rules",
            Some(json!({"no_such_field": 1})),
        ),
        (Method::GET, "/v1/deny-rules/deny-does-not-exist", None),
        (Method::GET, "/v1/role-assignments?no_such_param=1", None),
        (
            Method::POST,
            "/v1/integrations",
            Some(json!({"no_such_field": 1})),
        ),
        (Method::GET, "/v1/integrations/int-does-not-exist", None),
        (
            Method::PATCH,
            "/v1/integrations/int-does-not-exist",
            Some(json!({})),
        ),
    ];
    for (method, path, body) in &cases {
        let r = call(&h, method.clone(), path, Some(&nobody), body.clone(), None).await;
        assert_eq!(
            r.status, 403,
            "{method} {path} without permission: {}",
            r.body
        );
        assert_eq!(
            r.body["error"]["code"], "FORBIDDEN",
            "{method} {path}: {}",
            r.body
        );
        let text = r.body.to_string();
        assert!(
            !text.contains("no_such") && !text.contains("does-not-exist"),
            "{method} {path}: the refusal echoes the request: {text}"
        );
    }
    // The same requests from the tenant admin reach validation and lookup.
    let r = call(
        &h,
        Method::POST,
        "/v1/roles",
        Some(&admin),
        Some(json!({"no_such_field": 1})),
        None,
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    let r = get(&h, "/v1/roles/role-does-not-exist", &admin).await;
    assert_eq!(r.status, 404, "{}", r.body);
}

// --------------------------------------------------------------------------------------------

/// `POST /v1/audit/exports` as `token`; returns the status and the error code (if any).
async fn export_link(h: &Harness, token: &str, body: Value) -> (u16, Option<String>) {
    let r = post(h, "/v1/audit/exports", token, body).await;
    let code = r.body["error"]["code"].as_str().map(str::to_owned);
    (r.status, code)
}

/// EXT-6-1, ADM-1, ADM-3: reading the audit log is the catalog permission `audit.read`, checked by
/// the same admin-token check as every other admin route: a role assignment grants it to a user
/// without an audit role, a deny rule takes it from an auditor, and a caller without it is refused
/// before its body is read.
async fn audit_read_is_a_permission(h: Harness) {
    let root = token(&h, "ke", "rita", &["scp-root"]);
    let sec = token(&h, "ke", "sam", &["scp-security"]);
    let carol = token(&h, "ke", "carol", &[]);
    let dave = token(&h, "ke", "dave", &["scp-auditor"]);

    // No audit.read: refused before the body (a JSON array) is looked at.
    assert_eq!(
        export_link(&h, &carol, json!([])).await,
        (403, Some("FORBIDDEN".into()))
    );
    assert_eq!(
        export_link(&h, &carol, json!({"tenant": "ke"})).await,
        (403, Some("FORBIDDEN".into()))
    );
    // An audit role holds it for its own tenant only.
    assert_eq!(export_link(&h, &dave, json!({"tenant": "ke"})).await.0, 201);
    assert_eq!(
        export_link(&h, &dave, json!({"tenant": "ug"})).await,
        (403, Some("FORBIDDEN".into()))
    );

    // Root (who alone may grant audit.read here) assigns a role holding it to carol.
    let role = active_role(&h, &root, &["audit.read"]).await;
    let r = post(
        &h,
        "/v1/users/carol/roles",
        &root,
        json!({"role_id": role, "scope": {"tenant_id": "ke"}, "effective_from": past()}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(
        export_link(&h, &carol, json!({"tenant": "ke"})).await.0,
        201
    );

    // A deny rule against dave takes audit.read away at once, on this route too.
    let r = post(
        &h,
        "/v1/deny-rules",
        &sec,
        json!({"subject_type": "user", "subject_id": "dave", "action": "read", "resource": "audit",
               "scope": {}, "active_from": past(), "reason_code": "SECURITY_INCIDENT"}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(
        export_link(&h, &dave, json!({"tenant": "ke"})).await,
        (403, Some("FORBIDDEN".into()))
    );
    // carol keeps hers.
    assert_eq!(
        export_link(&h, &carol, json!({"tenant": "ke"})).await.0,
        201
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_read_is_a_permission_sqlite() {
    audit_read_is_a_permission(sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_read_is_a_permission_postgres() {
    audit_read_is_a_permission(pg().await).await;
}
