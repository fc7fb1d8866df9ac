//! Policy packs and policy changes through the admin API (real HTTP), enforced in pipeline
//! stage 6 (real gRPC ext_authz Check), on SQLite and PostgreSQL.
//!
//! Requirement tags: ADM-1 (restricted to authorized roles), ADM-2 (audited), ADM-4 (cache
//! invalidated on change), ADM-6 (policy packs and changes with their lifecycles), ADM-7
//! (reason text for OTHER), ADM-8 (conflicting updates and partial application).

use crate::common;

use reqwest::Method;
use serde_json::{Value, json};

use common::{Harness, fresh_pg_database};

const KE_RECORD: &str = "/v1/tenants/ke/health/persons/p-1/record";

/// Forbids HEAD, permits reads with the contract scope and masks `sex`.
const RULES_NO_HEAD: &str = r#"
@id("readers") @mask("sex")
permit(principal is Scp::Integration, action == Scp::Action::"read", resource)
  when { principal.scopes.contains("health:person:read") };
@id("no-head")
forbid(principal, action, resource) when { context.method == "HEAD" };
"#;

/// Permits everything, forbids GET.
const RULES_NO_GET: &str = r#"
permit(principal, action, resource);
@id("no-get")
forbid(principal, action, resource) when { context.method == "GET" };
"#;

const OWNER: &str = "scp-vertical-owner";
const ADMIN: &str = "scp-tenant-admin";

fn admin_token(h: &Harness, tenant: &str, roles: &[&str]) -> String {
    h.staff_token(
        tenant,
        &format!("officer-{tenant}-{}", roles.join("+")),
        roles,
        "scp-pep-admin",
    )
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
    if_match: Option<i64>,
) -> Resp {
    let mut req = reqwest::Client::new().request(method, h.ops_url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    if let Some(v) = if_match {
        req = req.header("if-match", format!("\"{v}\""));
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let etag = r
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = r.json().await.unwrap_or(Value::Null);
    Resp { status, etag, body }
}

async fn post(h: &Harness, path: &str, token: &str, body: Value) -> Resp {
    call(h, Method::POST, path, Some(token), Some(body), None).await
}

async fn get(h: &Harness, path: &str, token: &str) -> Resp {
    call(h, Method::GET, path, Some(token), None, None).await
}

/// A real gRPC Check of `method` on the record route as int-ke-moh.
async fn partner(h: &mut Harness, method: &str) -> Value {
    let claims = h.claims("ke", "int-ke-moh", &["health"], "health:person:read");
    let token = h.sign("ke-rs256", &claims);
    let mut input = Harness::get(KE_RECORD, &token);
    input.method = method.into();
    h.check(&input).await
}

fn masked(r: &Value) -> String {
    r["headers_set"]["x-scp-masked-fields"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

/// Creates a draft pack of `ke`/health; the id is assigned by scp-pep (`body.policy_pack_id`).
async fn create_pack(h: &Harness, rules: &str) -> Resp {
    let owner = admin_token(h, "ke", &[OWNER]);
    post(
        h,
        "/v1/policies/packs",
        &owner,
        json!({"vertical_id": "health", "policy_rules": rules,
               "active_from": "2020-01-01T00:00:00Z"}),
    )
    .await
}

/// Walks `kind` (`packs` or `changes`) `id` from draft to approved; returns the last answer.
async fn to_approved(h: &Harness, kind: &str, id: &str) -> Resp {
    let owner = admin_token(h, "ke", &[OWNER]);
    let admin = admin_token(h, "ke", &[ADMIN]);
    let r = post(
        h,
        &format!("/v1/policies/{kind}/{id}/request-review"),
        &owner,
        json!({"request_reason_code": "POLICY_UPDATE"}),
    )
    .await;
    assert_eq!(
        (r.status, r.body["status"].as_str()),
        (200, Some("requested")),
        "{}",
        r.body
    );
    let r = post(
        h,
        &format!("/v1/policies/{kind}/{id}/review"),
        &owner,
        json!({"review_notes": "looks right"}),
    )
    .await;
    assert_eq!(
        (r.status, r.body["status"].as_str()),
        (200, Some("reviewed")),
        "{}",
        r.body
    );
    assert!(r.body["reviewed_at"].is_string());
    let r = post(
        h,
        &format!("/v1/policies/{kind}/{id}/approve"),
        &admin,
        json!({"approval_reason_code": "ROUTINE_REVIEW"}),
    )
    .await;
    assert_eq!(
        (r.status, r.body["status"].as_str()),
        (200, Some("approved")),
        "{}",
        r.body
    );
    r
}

async fn pack_doc_count(h: &Harness) -> usize {
    h.running
        .store
        .documents(scp_pep::store::DocKind::PolicyPack, None)
        .await
        .unwrap()
        .len()
}

// ADM-6, ADM-8: invalid Cedar (syntax, schema violation, templates), unknown verticals and
// unknown fields are 400 with the field at fault, and nothing is stored.
async fn invalid_packs_are_rejected(h: Harness) {
    let owner = admin_token(&h, "ke", &[OWNER]);
    let cases = [
        (
            "permit(principal, action, resource",
            "POLICY_INVALID",
            "policy_rules",
        ),
        (
            r#"permit(principal is Scp::Integration, action, resource) when { principal.age > 3 };"#,
            "POLICY_INVALID",
            "policy_rules",
        ),
        (
            r#"permit(principal, action == Scp::Action::"delete", resource);"#,
            "POLICY_INVALID",
            "policy_rules",
        ),
        (
            "permit(principal == ?principal, action, resource);",
            "POLICY_INVALID",
            "policy_rules",
        ),
        (
            r#"@mask("x") forbid(principal, action, resource);"#,
            "POLICY_INVALID",
            "policy_rules",
        ),
    ];
    for (rules, code, field) in cases {
        let r = create_pack(&h, rules).await;
        assert_eq!(r.status, 400, "{rules}: {}", r.body);
        assert_eq!(r.body["error"]["code"], code, "{}", r.body);
        assert_eq!(r.body["error"]["field"], field, "{}", r.body);
    }
    let r = post(
        &h,
        "/v1/policies/packs",
        &owner,
        json!({"vertical_id": "astrology", "policy_rules": RULES_NO_GET, "active_from": "2020-01-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(
        (r.status, r.body["error"]["field"].as_str()),
        (400, Some("vertical_id")),
        "{}",
        r.body
    );
    let r = post(
        &h,
        "/v1/policies/packs",
        &owner,
        json!({"vertical_id": "health", "policy_rules": RULES_NO_GET, "active_from": "2020-01-01T00:00:00Z", "enabled": true}),
    )
    .await;
    assert_eq!(
        (r.status, r.body["error"]["field"].as_str()),
        (400, Some("enabled")),
        "{}",
        r.body
    );
    let r = post(
        &h,
        "/v1/policies/packs",
        &owner,
        json!({"vertical_id": "health", "policy_rules": RULES_NO_GET, "active_from": "2021-01-01T00:00:00Z", "active_until": "2020-01-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(
        (r.status, r.body["error"]["field"].as_str()),
        (400, Some("active_until")),
        "{}",
        r.body
    );
    assert_eq!(pack_doc_count(&h).await, 0, "nothing stored");
    let r = get(&h, "/v1/policies/packs", &owner).await;
    assert_eq!(r.body["items"], json!([]), "{}", r.body);

    // A valid pack is stored; a change proposing invalid rules is refused the same way.
    let r = create_pack(&h, RULES_NO_GET).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let pp_ok = r.body["policy_pack_id"].as_str().unwrap().to_owned();
    let r = post(
        &h,
        "/v1/policies/changes",
        &owner,
        json!({"policy_pack_id": pp_ok, "change_summary": "x", "policy_rules": "forbid(", "active_from": "2020-01-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(
        (r.status, r.body["error"]["field"].as_str()),
        (400, Some("policy_rules")),
        "{}",
        r.body
    );
    // PATCH with invalid rules: 400, the draft keeps its version and rules.
    let r = call(
        &h,
        Method::PATCH,
        &format!("/v1/policies/packs/{pp_ok}"),
        Some(&owner),
        Some(json!({"policy_rules": "permit(principal, action, resource) when { principal.x };"})),
        Some(1),
    )
    .await;
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (400, Some("POLICY_INVALID")),
        "{}",
        r.body
    );
    let r = get(&h, &format!("/v1/policies/packs/{pp_ok}"), &owner).await;
    assert_eq!(
        (r.body["version"].as_i64(), r.body["policy_rules"].as_str()),
        (Some(1), Some(RULES_NO_GET))
    );
    let r = get(&h, "/v1/policies/changes", &owner).await;
    assert_eq!(r.body["items"], json!([]), "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_packs_are_rejected_sqlite() {
    invalid_packs_are_rejected(Harness::start(None).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_packs_are_rejected_postgres() {
    invalid_packs_are_rejected(Harness::start(Some(fresh_pg_database().await)).await).await;
}

// ADM-6, ADM-2, ADM-4, ADM-7, ADM-8: the pack lifecycle through activation; then a forbid denies
// partner traffic with POLICY_DENIED naming the policy, a permit passes with its @mask field;
// suspend → traffic passes again; a stale If-Match is 412 and changes nothing.
async fn pack_lifecycle_enforces(mut h: Harness) {
    let owner = admin_token(&h, "ke", &[OWNER]);
    let admin = admin_token(&h, "ke", &[ADMIN]);
    let base = partner(&mut h, "HEAD").await;
    assert_eq!(base["allowed"], true, "{base}");
    let base_get = partner(&mut h, "GET").await;
    assert!(!masked(&base_get).contains("sex"), "{base_get}");

    let r = create_pack(&h, RULES_NO_HEAD).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let pp_health = r.body["policy_pack_id"].as_str().unwrap().to_owned();
    assert_eq!(r.body["status"], "draft");
    assert_eq!(r.etag.as_deref(), Some("\"1\""));
    // A draft is not enforced.
    assert_eq!(partner(&mut h, "HEAD").await["allowed"], true);
    // Only drafts are edited, with If-Match.
    let r = call(
        &h,
        Method::PATCH,
        &format!("/v1/policies/packs/{pp_health}"),
        Some(&owner),
        Some(json!({"active_until": "2999-01-01T00:00:00Z"})),
        Some(7),
    )
    .await;
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (412, Some("PRECONDITION_FAILED")),
        "{}",
        r.body
    );
    let r = call(
        &h,
        Method::PATCH,
        &format!("/v1/policies/packs/{pp_health}"),
        Some(&owner),
        Some(json!({"active_until": "2999-01-01T00:00:00Z"})),
        Some(1),
    )
    .await;
    assert_eq!(
        (r.status, r.body["version"].as_i64()),
        (200, Some(2)),
        "{}",
        r.body
    );

    let r = to_approved(&h, "packs", &pp_health).await;
    let approved_version = r.body["version"].as_i64().unwrap();
    let r = call(
        &h,
        Method::PATCH,
        &format!("/v1/policies/packs/{pp_health}"),
        Some(&owner),
        Some(json!({"policy_rules": RULES_NO_GET})),
        None,
    )
    .await;
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (409, Some("INVALID_TRANSITION")),
        "{}",
        r.body
    );

    // The vertical owner may not activate; a stale If-Match is 412 and nothing changes.
    let r = post(
        &h,
        &format!("/v1/policies/packs/{pp_health}/activate"),
        &owner,
        json!({}),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = call(
        &h,
        Method::POST,
        &format!("/v1/policies/packs/{pp_health}/activate"),
        Some(&admin),
        None,
        Some(approved_version - 1),
    )
    .await;
    assert_eq!(r.status, 412, "{}", r.body);
    assert_eq!(
        get(&h, &format!("/v1/policies/packs/{pp_health}"), &admin)
            .await
            .body["status"],
        "approved"
    );
    assert_eq!(partner(&mut h, "HEAD").await["allowed"], true);

    let r = call(
        &h,
        Method::POST,
        &format!("/v1/policies/packs/{pp_health}/activate"),
        Some(&admin),
        None,
        Some(approved_version),
    )
    .await;
    assert_eq!(
        (r.status, r.body["status"].as_str()),
        (200, Some("active")),
        "{}",
        r.body
    );
    assert!(r.body["activated_at"].is_string());

    // Enforced on this replica before the API answered (ADM-4).
    let denied = partner(&mut h, "HEAD").await;
    assert_eq!(denied["allowed"], false, "{denied}");
    assert_eq!(denied["status"], 403, "{denied}");
    assert_eq!(denied["code"], "POLICY_DENIED", "{denied}");
    let msg = denied["body"]["error"]["message"].as_str().unwrap_or("");
    assert!(msg.contains("no-head") && msg.contains(&pp_health), "{msg}");
    let ok = partner(&mut h, "GET").await;
    assert_eq!(ok["allowed"], true, "{ok}");
    assert!(masked(&ok).split(',').any(|f| f == "sex"), "{ok}");

    // ADM-7: OTHER needs its text; nothing changes.
    let r = post(
        &h,
        &format!("/v1/policies/packs/{pp_health}/suspend"),
        &admin,
        json!({"reason_code": "OTHER"}),
    )
    .await;
    assert_eq!(
        (r.status, r.body["error"]["field"].as_str()),
        (400, Some("reason_text")),
        "{}",
        r.body
    );
    let r = post(
        &h,
        &format!("/v1/policies/packs/{pp_health}/suspend"),
        &admin,
        json!({"reason_code": "SECURITY_INCIDENT"}),
    )
    .await;
    assert_eq!(
        (r.status, r.body["status"].as_str()),
        (200, Some("suspended")),
        "{}",
        r.body
    );
    let again = partner(&mut h, "HEAD").await;
    assert_eq!(again["allowed"], true, "{again}");
    assert!(!masked(&partner(&mut h, "GET").await).contains("sex"));

    // Restricted: enforced, reads only (HEAD still forbidden by the pack).
    let r = post(
        &h,
        &format!("/v1/policies/packs/{pp_health}/activate"),
        &admin,
        json!({}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = post(
        &h,
        &format!("/v1/policies/packs/{pp_health}/restrict"),
        &admin,
        json!({"reason_code": "COMPLIANCE"}),
    )
    .await;
    assert_eq!(
        (r.status, r.body["status"].as_str()),
        (200, Some("restricted")),
        "{}",
        r.body
    );
    assert_eq!(partner(&mut h, "HEAD").await["code"], "POLICY_DENIED");
    assert_eq!(partner(&mut h, "GET").await["allowed"], true);

    // Deprecate, archive; archived is immutable.
    let r = post(
        &h,
        &format!("/v1/policies/packs/{pp_health}/deprecate"),
        &admin,
        json!({"reason_code": "POLICY_UPDATE"}),
    )
    .await;
    assert_eq!(r.body["status"], "deprecated", "{}", r.body);
    assert_eq!(partner(&mut h, "HEAD").await["allowed"], true);
    let r = post(
        &h,
        &format!("/v1/policies/packs/{pp_health}/archive"),
        &admin,
        json!({"reason_code": "ROUTINE_REVIEW"}),
    )
    .await;
    assert_eq!(r.body["status"], "archived", "{}", r.body);
    let r = post(
        &h,
        &format!("/v1/policies/packs/{pp_health}/activate"),
        &admin,
        json!({}),
    )
    .await;
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (409, Some("INVALID_TRANSITION")),
        "{}",
        r.body
    );

    // Every step is a version; list filters.
    let v = get(
        &h,
        &format!("/v1/policies/packs/{pp_health}/versions"),
        &owner,
    )
    .await;
    let statuses: Vec<&str> = v.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        [
            "draft",
            "draft",
            "requested",
            "reviewed",
            "approved",
            "active",
            "suspended",
            "active",
            "restricted",
            "deprecated",
            "archived"
        ]
    );
    let l = get(
        &h,
        "/v1/policies/packs?status=archived&vertical_id=health",
        &owner,
    )
    .await;
    assert_eq!(l.body["items"].as_array().unwrap().len(), 1, "{}", l.body);
    assert_eq!(l.body["items"][0]["policy_pack_id"], pp_health.as_str());
    let l = get(&h, "/v1/policies/packs?status=active", &owner).await;
    assert_eq!(l.body["items"], json!([]));

    // ADM-2: every change is in the audit log (admin_change records with the action).
    let actions = admin_actions(&h).await;
    for a in [
        "policy_pack.create",
        "policy_pack.update",
        "policy_pack.request_review",
        "policy_pack.review",
        "policy_pack.approve",
        "policy_pack.activate",
        "policy_pack.suspend",
        "policy_pack.archive",
    ] {
        assert!(
            actions.iter().any(|x| x == a),
            "{a} missing from {actions:?}"
        );
    }
}

/// The `action` of every `admin_change` audit record.
async fn admin_actions(h: &Harness) -> Vec<String> {
    let rows: Vec<String> = match &h.running.store {
        scp_pep::store::Store::Sqlite(p) => {
            sqlx::query_scalar("SELECT body FROM audit_records WHERE kind = 'admin_change'")
                .fetch_all(p)
                .await
                .unwrap()
        }
        scp_pep::store::Store::Postgres(p) => {
            sqlx::query_scalar("SELECT body FROM audit_records WHERE kind = 'admin_change'")
                .fetch_all(p)
                .await
                .unwrap()
        }
    };
    rows.iter()
        .filter_map(|b| serde_json::from_str::<Value>(b).ok())
        .filter_map(|v| find_action(&v))
        .collect()
}

fn find_action(v: &Value) -> Option<String> {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(a)) = m.get("action") {
                return Some(a.clone());
            }
            m.values().find_map(find_action)
        }
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pack_lifecycle_enforces_sqlite() {
    pack_lifecycle_enforces(Harness::start(None).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pack_lifecycle_enforces_postgres() {
    pack_lifecycle_enforces(Harness::start(Some(fresh_pg_database().await)).await).await;
}

// ADM-6, ADM-8: activating a policy change swaps the pack's rules in one commit (pack version +1
// and change active, or neither); a stale If-Match changes nothing; activating a second pack of
// the vertical deprecates the first in the same commit.
async fn policy_change_swaps_rules(mut h: Harness) {
    let owner = admin_token(&h, "ke", &[OWNER]);
    let admin = admin_token(&h, "ke", &[ADMIN]);
    let r = create_pack(&h, RULES_NO_HEAD).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let pp_a = r.body["policy_pack_id"].as_str().unwrap().to_owned();
    to_approved(&h, "packs", &pp_a).await;
    let r = post(
        &h,
        &format!("/v1/policies/packs/{pp_a}/activate"),
        &admin,
        json!({}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let pack_version = r.body["version"].as_i64().unwrap();
    assert_eq!(partner(&mut h, "HEAD").await["code"], "POLICY_DENIED");

    let r = post(
        &h,
        "/v1/policies/changes",
        &owner,
        json!({"policy_pack_id": pp_a, "change_summary": "allow HEAD, stop GET",
               "policy_rules": RULES_NO_GET, "active_from": "2020-01-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(
        (r.status, r.body["status"].as_str()),
        (201, Some("draft")),
        "{}",
        r.body
    );
    let pc_1 = r.body["policy_change_id"].as_str().unwrap().to_owned();
    let r = to_approved(&h, "changes", &pc_1).await;
    let change_version = r.body["version"].as_i64().unwrap();
    // Not applied before activation.
    assert_eq!(partner(&mut h, "HEAD").await["code"], "POLICY_DENIED");
    assert_eq!(partner(&mut h, "GET").await["allowed"], true);

    let r = call(
        &h,
        Method::POST,
        &format!("/v1/policies/changes/{pc_1}/activate"),
        Some(&admin),
        None,
        Some(change_version + 5),
    )
    .await;
    assert_eq!(r.status, 412, "{}", r.body);
    let p = get(&h, &format!("/v1/policies/packs/{pp_a}"), &admin).await;
    assert_eq!(
        (p.body["version"].as_i64(), p.body["policy_rules"].as_str()),
        (Some(pack_version), Some(RULES_NO_HEAD))
    );
    assert_eq!(
        get(&h, &format!("/v1/policies/changes/{pc_1}"), &admin)
            .await
            .body["status"],
        "approved"
    );

    let r = call(
        &h,
        Method::POST,
        &format!("/v1/policies/changes/{pc_1}/activate"),
        Some(&admin),
        None,
        Some(change_version),
    )
    .await;
    assert_eq!(
        (r.status, r.body["status"].as_str()),
        (200, Some("active")),
        "{}",
        r.body
    );
    assert_eq!(
        r.body["applied_pack_version"].as_i64(),
        Some(pack_version + 1)
    );
    let p = get(&h, &format!("/v1/policies/packs/{pp_a}"), &admin).await;
    assert_eq!(
        (
            p.body["version"].as_i64(),
            p.body["policy_rules"].as_str(),
            p.body["status"].as_str()
        ),
        (Some(pack_version + 1), Some(RULES_NO_GET), Some("active"))
    );
    assert_eq!(partner(&mut h, "HEAD").await["allowed"], true);
    let g = partner(&mut h, "GET").await;
    assert_eq!(g["code"], "POLICY_DENIED", "{g}");
    assert!(
        g["body"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no-get"),
        "{g}"
    );
    // An active change cannot be activated twice.
    let r = post(
        &h,
        &format!("/v1/policies/changes/{pc_1}/activate"),
        &admin,
        json!({}),
    )
    .await;
    assert_eq!(r.status, 409, "{}", r.body);

    // A second pack for the vertical: activating it deprecates pp-a in the same commit.
    let r = create_pack(&h, "permit(principal, action, resource);").await;
    assert_eq!(r.status, 201, "{}", r.body);
    let pp_b = r.body["policy_pack_id"].as_str().unwrap().to_owned();
    to_approved(&h, "packs", &pp_b).await;
    let r = post(
        &h,
        &format!("/v1/policies/packs/{pp_b}/activate"),
        &admin,
        json!({}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        get(&h, &format!("/v1/policies/packs/{pp_a}"), &admin)
            .await
            .body["status"],
        "deprecated"
    );
    assert_eq!(partner(&mut h, "GET").await["allowed"], true);
    assert_eq!(partner(&mut h, "HEAD").await["allowed"], true);

    let l = get(
        &h,
        &format!("/v1/policies/changes?policy_pack_id={pp_a}"),
        &owner,
    )
    .await;
    assert_eq!(l.body["items"].as_array().unwrap().len(), 1, "{}", l.body);
    let r = post(
        &h,
        &format!("/v1/policies/changes/{pc_1}/archive"),
        &admin,
        json!({"reason_code": "ROUTINE_REVIEW"}),
    )
    .await;
    assert_eq!(r.body["status"], "archived", "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_change_swaps_rules_sqlite() {
    policy_change_swaps_rules(Harness::start(None).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_change_swaps_rules_postgres() {
    policy_change_swaps_rules(Harness::start(Some(fresh_pg_database().await)).await).await;
}

// ADM-1: every route refuses callers without the permission (403), unauthenticated callers
// (401), and hides other tenants' packs (404).
async fn unauthorized_personas_are_refused(h: Harness) {
    let owner = admin_token(&h, "ke", &[OWNER]);
    let r = create_pack(&h, RULES_NO_GET).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let pp_x = r.body["policy_pack_id"].as_str().unwrap().to_owned();
    let r = post(
        &h,
        "/v1/policies/changes",
        &owner,
        json!({"policy_pack_id": pp_x, "change_summary": "s",
               "policy_rules": RULES_NO_HEAD, "active_from": "2020-01-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let pc_x = r.body["policy_change_id"].as_str().unwrap().to_owned();
    let none = admin_token(&h, "ke", &["scp-integration-manager"]);
    let nothing = json!({});
    let create = json!({"vertical_id": "health", "policy_rules": RULES_NO_GET, "active_from": "2020-01-01T00:00:00Z"});
    let change = json!({"policy_pack_id": pp_x, "change_summary": "s", "policy_rules": RULES_NO_GET, "active_from": "2020-01-01T00:00:00Z"});
    let reason = json!({"reason_code": "ROUTINE_REVIEW"});
    let routes: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, "/v1/policies/schema".into(), None),
        (Method::GET, "/v1/policies/packs".into(), None),
        (
            Method::POST,
            "/v1/policies/packs".into(),
            Some(create.clone()),
        ),
        (Method::GET, format!("/v1/policies/packs/{pp_x}"), None),
        (
            Method::PATCH,
            format!("/v1/policies/packs/{pp_x}"),
            Some(nothing.clone()),
        ),
        (
            Method::GET,
            format!("/v1/policies/packs/{pp_x}/versions"),
            None,
        ),
        (
            Method::POST,
            format!("/v1/policies/packs/{pp_x}/request-review"),
            Some(json!({"request_reason_code": "POLICY_UPDATE"})),
        ),
        (
            Method::POST,
            format!("/v1/policies/packs/{pp_x}/review"),
            Some(nothing.clone()),
        ),
        (
            Method::POST,
            format!("/v1/policies/packs/{pp_x}/approve"),
            Some(json!({"approval_reason_code": "POLICY_UPDATE"})),
        ),
        (
            Method::POST,
            format!("/v1/policies/packs/{pp_x}/activate"),
            Some(nothing.clone()),
        ),
        (
            Method::POST,
            format!("/v1/policies/packs/{pp_x}/restrict"),
            Some(reason.clone()),
        ),
        (
            Method::POST,
            format!("/v1/policies/packs/{pp_x}/suspend"),
            Some(reason.clone()),
        ),
        (
            Method::POST,
            format!("/v1/policies/packs/{pp_x}/deprecate"),
            Some(reason.clone()),
        ),
        (
            Method::POST,
            format!("/v1/policies/packs/{pp_x}/archive"),
            Some(reason.clone()),
        ),
        (Method::GET, "/v1/policies/changes".into(), None),
        (
            Method::POST,
            "/v1/policies/changes".into(),
            Some(change.clone()),
        ),
        (Method::GET, format!("/v1/policies/changes/{pc_x}"), None),
        (
            Method::POST,
            format!("/v1/policies/changes/{pc_x}/request-review"),
            Some(json!({"request_reason_code": "POLICY_UPDATE"})),
        ),
        (
            Method::POST,
            format!("/v1/policies/changes/{pc_x}/review"),
            Some(nothing.clone()),
        ),
        (
            Method::POST,
            format!("/v1/policies/changes/{pc_x}/approve"),
            Some(json!({"approval_reason_code": "POLICY_UPDATE"})),
        ),
        (
            Method::POST,
            format!("/v1/policies/changes/{pc_x}/activate"),
            Some(nothing.clone()),
        ),
        (
            Method::POST,
            format!("/v1/policies/changes/{pc_x}/archive"),
            Some(reason.clone()),
        ),
    ];
    for (m, path, body) in &routes {
        let r = call(&h, m.clone(), path, None, body.clone(), None).await;
        assert_eq!(r.status, 401, "{m} {path} without a token: {}", r.body);
        let r = call(&h, m.clone(), path, Some(&none), body.clone(), None).await;
        assert_eq!(
            r.status, 403,
            "{m} {path} as integration manager: {}",
            r.body
        );
        assert_eq!(r.body["error"]["code"], "FORBIDDEN");
    }
    // Per permission: the vertical owner neither approves, activates nor operates; the tenant
    // admin neither writes nor reviews; the umbrella authority does not operate.
    let admin = admin_token(&h, "ke", &[ADMIN]);
    let umbrella = admin_token(&h, "ke", &["scp-umbrella-authority"]);
    let refused: Vec<(&String, String)> = vec![
        (&owner, format!("/v1/policies/packs/{pp_x}/approve")),
        (&owner, format!("/v1/policies/packs/{pp_x}/activate")),
        (&owner, format!("/v1/policies/packs/{pp_x}/suspend")),
        (&owner, format!("/v1/policies/packs/{pp_x}/archive")),
        (&owner, format!("/v1/policies/changes/{pc_x}/approve")),
        (&owner, format!("/v1/policies/changes/{pc_x}/activate")),
        (&admin, "/v1/policies/packs".into()),
        (&admin, format!("/v1/policies/packs/{pp_x}/request-review")),
        (&admin, format!("/v1/policies/packs/{pp_x}/review")),
        (&admin, "/v1/policies/changes".into()),
        (&admin, format!("/v1/policies/changes/{pc_x}/review")),
        (&umbrella, format!("/v1/policies/packs/{pp_x}/suspend")),
        (&umbrella, format!("/v1/policies/packs/{pp_x}/archive")),
    ];
    for (token, path) in refused {
        let body = if path.ends_with("/changes") {
            change.clone()
        } else if path.ends_with("/packs") {
            create.clone()
        } else {
            reason.clone()
        };
        let r = post(&h, &path, token, body).await;
        assert_eq!(r.status, 403, "{path}: {}", r.body);
    }
    let r = call(
        &h,
        Method::PATCH,
        &format!("/v1/policies/packs/{pp_x}"),
        Some(&admin),
        Some(nothing.clone()),
        None,
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body);
    // Another tenant's admin does not see ke's pack.
    let ug = admin_token(&h, "ug", &[ADMIN]);
    assert_eq!(
        get(&h, &format!("/v1/policies/packs/{pp_x}"), &ug)
            .await
            .status,
        404
    );
    assert_eq!(
        get(&h, &format!("/v1/policies/changes/{pc_x}"), &ug)
            .await
            .status,
        404
    );
    assert_eq!(
        get(&h, "/v1/policies/packs", &ug).await.body["items"],
        json!([])
    );
    // Nothing changed through all of that.
    let r = get(&h, &format!("/v1/policies/packs/{pp_x}"), &owner).await;
    assert_eq!(
        (r.body["status"].as_str(), r.body["version"].as_i64()),
        (Some("draft"), Some(1))
    );
    // The schema is readable with the permission; the OpenAPI document lists every route.
    let s = get(&h, "/v1/policies/schema", &owner).await;
    assert!(
        s.body["schema"].as_str().unwrap().contains("namespace Scp"),
        "{}",
        s.body
    );
    let doc: Value = reqwest::get(h.ops_url("/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for (_, path, _) in &routes {
        let templ = path
            .replace(pp_x.as_str(), "{policy_pack_id}")
            .replace(pc_x.as_str(), "{policy_change_id}");
        assert!(
            doc["paths"][&templ].is_object(),
            "{templ} missing from /openapi.json"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthorized_personas_are_refused_sqlite() {
    unauthorized_personas_are_refused(Harness::start(None).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthorized_personas_are_refused_postgres() {
    unauthorized_personas_are_refused(Harness::start(Some(fresh_pg_database().await)).await).await;
}
