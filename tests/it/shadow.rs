//! Shadow (dry-run) mode of policy packs, deny rules and rate limits (issue 16) against the real
//! server: real gRPC ext_authz checks, the real decision log, audit store, `/metrics`, the
//! `DecisionLog/Tail` gRPC service and the admin REST API.
//!
//! Requirement tags: ADM-3 (deny rules), ADM-6 (policy packs and changes), ADM-2 (audited).

use crate::common;

use std::time::Duration;

use common::Harness;
use reqwest::Method;
use scp_pep::proto::scp::pep::v1::decision_log_client::DecisionLogClient;
use scp_pep::proto::scp::pep::v1::{TailEvent, TailRequest};
use serde_json::{Value, json};
use tonic::Streaming;

const KE_RECORD: &str = "/v1/tenants/ke/health/persons/p-1/record";
const KE_ENROLMENT: &str = "/v1/tenants/ke/education/students/p-1/enrolment";

/// The shadow documents of the file-based tests: an integration with a shadow rate limit
/// (1/s, burst 1), a shadow deny rule on its reads, a shadow pack of ke/health forbidding HEAD
/// (and asking to mask `name`), and on ke/education an enforced pack forbidding GET next to a
/// shadow pack that permits everything.
const SHADOW_POLICIES: &str = r#"
integrations:
  - id: int-ke-shadow
    tenant: ke
    partner_name: Shadow partner
    legal_basis: Test agreement int-ke-shadow
    state: active
    verticals: [health]
    scopes: [health:person:read]
    rate_limit: {per_second: 1, burst: 1, mode: shadow}
deny_rules:
  - {id: dr-shadow-reads, tenant: ke, integration: int-ke-shadow, action: read, reason: would pause reads, mode: shadow}
policy_packs:
  - id: pp-shadow-health
    tenant: ke
    vertical: health
    status: active
    mode: shadow
    policies: |
      @id("all") @mask("name")
      permit(principal, action, resource);
      @id("no-head")
      forbid(principal, action, resource) when { context.method == "HEAD" };
  - id: pp-edu-enforced
    tenant: ke
    vertical: education
    status: active
    policies: |
      permit(principal, action, resource);
      @id("no-get")
      forbid(principal, action, resource) when { context.method == "GET" };
  - id: pp-edu-shadow
    tenant: ke
    vertical: education
    status: active
    mode: shadow
    policies: |
      @id("everything") permit(principal, action, resource);
"#;

async fn start_with_shadow_policies() -> Harness {
    Harness::start_with(None, |c| {
        let dir = c.policy.dir.clone().expect("the harness sets a policy dir");
        std::fs::write(dir.join("shadow.yaml"), SHADOW_POLICIES).unwrap();
    })
    .await
}

fn partner(h: &Harness, integration: &str, verticals: &[&str], scope: &str) -> String {
    h.sign("ke-rs256", &h.claims("ke", integration, verticals, scope))
}

async fn check(h: &mut Harness, method: &str, path: &str, token: &str) -> Value {
    let mut input = Harness::get(path, token);
    input.method = method.into();
    h.check(&input).await
}

async fn open_tail(h: &Harness, token: &str, req: TailRequest) -> Streaming<TailEvent> {
    let mut client = DecisionLogClient::connect(format!("http://{}", h.running.grpc_addr))
        .await
        .expect("client connects");
    let mut req = tonic::Request::new(req);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    client.tail(req).await.expect("tail opens").into_inner()
}

async fn next(s: &mut Streaming<TailEvent>) -> TailEvent {
    tokio::time::timeout(Duration::from_secs(10), s.message())
        .await
        .expect("an event within 10 s")
        .expect("the stream does not fail")
        .expect("the stream does not end")
}

/// Decision-log lines of `integration`, once at least `n` exist.
async fn log_of(h: &Harness, integration: &str, n: usize) -> Vec<Value> {
    for _ in 0..100 {
        let lines: Vec<Value> = h
            .log_lines(1)
            .await
            .into_iter()
            .filter(|l| l["integration_id"] == integration)
            .collect();
        if lines.len() >= n {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("fewer than {n} decision-log lines of {integration}");
}

/// Bodies of decision audit records that contain `needle`.
async fn audit_bodies(h: &Harness, needle: &str) -> Vec<Value> {
    let pool = sqlx::SqlitePool::connect(&h.store_url).await.unwrap();
    let bodies: Vec<String> = sqlx::query_scalar(
        "SELECT body FROM audit_records WHERE kind = 'decision' AND instr(body, ?) > 0",
    )
    .bind(needle)
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    bodies
        .iter()
        .map(|b| serde_json::from_str(b).unwrap())
        .collect()
}

/// `scp_pep_shadow_decisions_total{document=…,code=…}` from `/metrics` (0 when absent).
async fn shadow_metric(h: &Harness, document: &str, code: &str) -> f64 {
    let text = h.metrics_text().await;
    text.lines()
        .filter(|l| l.starts_with("scp_pep_shadow_decisions_total{"))
        .filter(|l| {
            l.contains(&format!("document=\"{document}\""))
                && l.contains(&format!("code=\"{code}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn documents(findings: &Value) -> Vec<String> {
    let mut d: Vec<String> = findings
        .as_array()
        .map(|a| {
            a.iter()
                .map(|f| {
                    format!(
                        "{} {}",
                        f["document"].as_str().unwrap(),
                        f["code"].as_str().unwrap()
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    d.sort();
    d
}

/// ADM-3, ADM-6, issue 16: a shadow pack, deny rule and rate limit on live traffic never deny,
/// never mask; their would-be denials are in the decision log, the audit record and the
/// `scp_pep_shadow_decisions_total` metric, and the `shadow_only` tail returns only decisions
/// that carry findings, with the findings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_documents_are_recorded_never_enforced() {
    let mut h = start_with_shadow_policies().await;
    let auditor = h.staff_token("ke", "auditor-1", &["scp-auditor"], "scp-pep-admin");
    let mut tail = open_tail(
        &h,
        &auditor,
        TailRequest {
            shadow_only: true,
            ..Default::default()
        },
    )
    .await;

    // A decision without findings first: the shadow tail must skip it.
    let moh = partner(&h, "int-ke-moh", &["health"], "health:person:read");
    let r = check(&mut h, "GET", KE_RECORD, &moh).await;
    assert_eq!(r["allowed"], true, "{r}");

    let token = partner(&h, "int-ke-shadow", &["health"], "health:person:read");
    let get = check(&mut h, "GET", KE_RECORD, &token).await;
    assert_eq!(
        get["allowed"], true,
        "a shadow deny rule never denies: {get}"
    );
    let head = check(&mut h, "HEAD", KE_RECORD, &token).await;
    assert_eq!(
        head["allowed"], true,
        "a shadow pack, deny rule and rate limit never deny: {head}"
    );
    for r in [&get, &head] {
        let masked = r["headers_set"]["x-scp-masked-fields"]
            .as_str()
            .unwrap_or("");
        assert!(
            !masked.contains("name"),
            "a shadow @mask is never applied: {r}"
        );
        let text = r.to_string();
        assert!(
            !text.contains("dr-shadow-reads") && !text.contains("pp-shadow-health"),
            "the Envoy response carries no shadow finding: {r}"
        );
    }

    // Decision log.
    let lines = log_of(&h, "int-ke-shadow", 2).await;
    assert_eq!(
        documents(&lines[0]["shadow"]),
        vec!["deny_rule/dr-shadow-reads DENY_RULE_MATCHED"],
        "{}",
        lines[0]
    );
    // The second request within the second exceeds the shadow limit (1/s, burst 1).
    assert_eq!(
        documents(&lines[1]["shadow"]),
        vec![
            "deny_rule/dr-shadow-reads DENY_RULE_MATCHED",
            "policy_pack/pp-shadow-health POLICY_DENIED",
            "rate_limit/int-ke-shadow RATE_LIMITED",
        ],
        "{}",
        lines[1]
    );
    let pack = lines[1]["shadow"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["document"] == "policy_pack/pp-shadow-health")
        .unwrap();
    assert_eq!(pack["reasons"], json!(["pp-shadow-health/no-head"]));
    assert_eq!(lines[1]["outcome"], "allow", "{}", lines[1]);
    let moh_line = log_of(&h, "int-ke-moh", 1).await;
    assert!(moh_line[0].get("shadow").is_none(), "{}", moh_line[0]);

    // The shadow tail: only the two decisions with findings, in order, with their findings.
    let first = next(&mut tail).await;
    assert_eq!(first.integration_id, "int-ke-shadow");
    assert_eq!(first.outcome, "allow");
    assert_eq!(first.shadow.len(), 1);
    assert_eq!(first.shadow[0].document, "deny_rule/dr-shadow-reads");
    assert_eq!(first.shadow[0].code, "DENY_RULE_MATCHED");
    let second = next(&mut tail).await;
    assert_eq!(second.integration_id, "int-ke-shadow");
    assert_eq!(second.shadow.len(), 3, "{:?}", second.shadow);
    assert!(
        scp_pep::tail::format_line(&second).contains("policy_pack/pp-shadow-health POLICY_DENIED"),
        "{}",
        scp_pep::tail::format_line(&second)
    );

    // Audit records (the canonical bodies) carry the findings; bodies without any carry no key.
    let bodies = audit_bodies(&h, "policy_pack/pp-shadow-health").await;
    assert_eq!(bodies.len(), 1);
    assert_eq!(bodies[0]["outcome"], "allow");
    assert_eq!(bodies[0]["shadow"].as_array().unwrap().len(), 3);
    let moh_bodies = audit_bodies(&h, "\"integration_id\":\"int-ke-moh\"").await;
    assert!(!moh_bodies.is_empty());
    assert!(moh_bodies.iter().all(|b| b.get("shadow").is_none()));

    // The metric counts every finding by document and code.
    assert_eq!(
        shadow_metric(&h, "deny_rule/dr-shadow-reads", "DENY_RULE_MATCHED").await,
        2.0
    );
    assert_eq!(
        shadow_metric(&h, "policy_pack/pp-shadow-health", "POLICY_DENIED").await,
        1.0
    );
    assert_eq!(
        shadow_metric(&h, "rate_limit/int-ke-shadow", "RATE_LIMITED").await,
        1.0
    );
}

/// ADM-6, issue 16: a shadow document never turns a deny into an allow: an enforced pack next to
/// a permissive shadow pack still denies; scope, vertical and consent denials stay; a request
/// denied before stage 6 gets no shadow finding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_never_turns_a_deny_into_an_allow() {
    let mut h = start_with_shadow_policies().await;
    let edu = partner(&h, "int-ke-edu", &["education"], "education:student:read");
    let r = check(&mut h, "GET", KE_ENROLMENT, &edu).await;
    assert_eq!(r["allowed"], false, "{r}");
    assert_eq!(r["code"], "POLICY_DENIED", "{r}");

    let token = partner(&h, "int-ke-shadow", &["health"], "health:person:read");
    // Scope: the token lacks the route's scope.
    let wrong_scope = partner(&h, "int-ke-shadow", &["health"], "health:encounter:write");
    let r = check(&mut h, "GET", KE_RECORD, &wrong_scope).await;
    assert_eq!(r["code"], "SCOPE_VIOLATION", "{r}");
    // Vertical: the token names a vertical the integration does not declare.
    let wrong_vertical = partner(&h, "int-ke-shadow", &["education"], "health:person:read");
    let r = check(&mut h, "GET", KE_RECORD, &wrong_vertical).await;
    assert_eq!(r["code"], "VERTICAL_NOT_PERMITTED", "{r}");
    // Consent: a person without consent.
    let r = check(
        &mut h,
        "GET",
        "/v1/tenants/ke/health/persons/p-no-consent/record",
        &token,
    )
    .await;
    assert_eq!(r["allowed"], false, "{r}");
    assert_eq!(r["code"], "CONSENT_MISSING", "{r}");

    let lines = log_of(&h, "int-ke-shadow", 3).await;
    assert_eq!(lines[0]["code"], "SCOPE_VIOLATION");
    assert!(
        lines[0].get("shadow").is_none(),
        "denied before stage 6: {}",
        lines[0]
    );
    assert!(
        lines[1].get("shadow").is_none(),
        "denied before stage 6: {}",
        lines[1]
    );
    // The consent denial reached stage 6: the shadow rule's finding is recorded, the denial stays.
    assert_eq!(lines[2]["outcome"], "deny", "{}", lines[2]);
    assert_eq!(
        documents(&lines[2]["shadow"]),
        vec!["deny_rule/dr-shadow-reads DENY_RULE_MATCHED"]
    );
    let edu_line = log_of(&h, "int-ke-edu", 1).await;
    assert!(edu_line[0].get("shadow").is_none(), "{}", edu_line[0]);
}

// --- Promotion through the admin API ---------------------------------------------------------

const OWNER: &str = "scp-vertical-owner";
const ADMIN: &str = "scp-tenant-admin";

struct Resp {
    status: u16,
    body: Value,
}

async fn call(
    h: &Harness,
    method: Method,
    path: &str,
    token: &str,
    body: Value,
    if_match: Option<i64>,
) -> Resp {
    let mut req = reqwest::Client::new()
        .request(method, h.ops_url(path))
        .bearer_auth(token)
        .json(&body);
    if let Some(v) = if_match {
        req = req.header("if-match", format!("\"{v}\""));
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    Resp {
        status,
        body: r.json().await.unwrap_or(Value::Null),
    }
}

async fn post(h: &Harness, path: &str, token: &str, body: Value) -> Resp {
    call(h, Method::POST, path, token, body, None).await
}

/// Walks `kind` (`packs` or `changes`) `id` from draft to active.
async fn to_active(h: &Harness, kind: &str, id: &str) {
    let owner = h.staff_token("ke", "officer-owner", &[OWNER], "scp-pep-admin");
    let admin = h.staff_token("ke", "officer-admin", &[ADMIN], "scp-pep-admin");
    let steps = [
        (
            "request-review",
            &owner,
            json!({"request_reason_code": "POLICY_UPDATE"}),
        ),
        ("review", &owner, json!({"review_notes": "ok"})),
        (
            "approve",
            &admin,
            json!({"approval_reason_code": "ROUTINE_REVIEW"}),
        ),
        ("activate", &admin, json!({})),
    ];
    for (step, token, body) in steps {
        let r = post(h, &format!("/v1/policies/{kind}/{id}/{step}"), token, body).await;
        assert_eq!(r.status, 200, "{kind} {id} {step}: {}", r.body);
    }
}

async fn pack_status(h: &Harness, id: &str) -> (String, String) {
    let owner = h.staff_token("ke", "officer-owner", &[OWNER], "scp-pep-admin");
    let r = call(
        h,
        Method::GET,
        &format!("/v1/policies/packs/{id}"),
        &owner,
        Value::Null,
        None,
    )
    .await;
    (
        r.body["status"].as_str().unwrap_or("?").to_owned(),
        r.body["mode"].as_str().unwrap_or("?").to_owned(),
    )
}

/// ADM-6, ADM-3, ADM-2, issue 16: activating a shadow pack keeps the enforced pack of its
/// (tenant, vertical) enforced; a reviewed and approved policy change with `mode: enforce`
/// promotes it (requests now denied) and deprecates the old pack in the same commit; a shadow
/// deny rule is promoted by `POST /v1/deny-rules/{id}/enforce` (If-Match, reason, audited);
/// an unknown mode is 400 naming `mode`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_promotion_through_policy_change_and_enforce_route() {
    let mut h = Harness::start(None).await;
    let owner = h.staff_token("ke", "officer-owner", &[OWNER], "scp-pep-admin");
    let admin = h.staff_token("ke", "officer-admin", &[ADMIN], "scp-pep-admin");
    let moh = partner(&h, "int-ke-moh", &["health"], "health:person:read");

    let r = post(
        &h,
        "/v1/policies/packs",
        &owner,
        json!({"vertical_id": "health", "policy_rules": "permit(principal, action, resource);",
               "active_from": "2020-01-01T00:00:00Z", "mode": "dry-run"}),
    )
    .await;
    assert_eq!(
        (r.status, r.body["error"]["field"].as_str()),
        (400, Some("mode")),
        "{}",
        r.body
    );

    // The enforced pack permits everything; the shadow candidate forbids HEAD.
    let r = post(
        &h,
        "/v1/policies/packs",
        &owner,
        json!({"vertical_id": "health", "policy_rules": "permit(principal, action, resource);",
               "active_from": "2020-01-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let old = r.body["policy_pack_id"].as_str().unwrap().to_owned();
    to_active(&h, "packs", &old).await;
    let r = post(
        &h,
        "/v1/policies/packs",
        &owner,
        json!({"vertical_id": "health", "mode": "shadow",
               "policy_rules": "permit(principal, action, resource);\n@id(\"no-head\") forbid(principal, action, resource) when { context.method == \"HEAD\" };",
               "active_from": "2020-01-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(
        (r.status, r.body["mode"].as_str()),
        (201, Some("shadow")),
        "{}",
        r.body
    );
    let cand = r.body["policy_pack_id"].as_str().unwrap().to_owned();
    to_active(&h, "packs", &cand).await;
    assert_eq!(
        pack_status(&h, &old).await,
        ("active".into(), "enforce".into())
    );
    assert_eq!(
        pack_status(&h, &cand).await,
        ("active".into(), "shadow".into())
    );
    let r = check(&mut h, "HEAD", KE_RECORD, &moh).await;
    assert_eq!(r["allowed"], true, "shadow candidate is not enforced: {r}");
    let lines = log_of(&h, "int-ke-moh", 1).await;
    assert_eq!(
        documents(&lines.last().unwrap()["shadow"]),
        vec![format!("policy_pack/{cand} POLICY_DENIED")]
    );

    // Promotion: a policy change with mode enforce, through review and four-eyes approval.
    let r = post(
        &h,
        "/v1/policies/changes",
        &owner,
        json!({"policy_pack_id": cand, "change_summary": "promote the candidate",
               "policy_rules": "permit(principal, action, resource);\n@id(\"no-head\") forbid(principal, action, resource) when { context.method == \"HEAD\" };",
               "active_from": "2020-01-01T00:00:00Z", "mode": "enforce"}),
    )
    .await;
    assert_eq!(
        (r.status, r.body["mode"].as_str()),
        (201, Some("enforce")),
        "{}",
        r.body
    );
    let change = r.body["policy_change_id"].as_str().unwrap().to_owned();
    to_active(&h, "changes", &change).await;
    assert_eq!(
        pack_status(&h, &cand).await,
        ("active".into(), "enforce".into())
    );
    assert_eq!(pack_status(&h, &old).await.0, "deprecated");
    let r = check(&mut h, "HEAD", KE_RECORD, &moh).await;
    assert_eq!(r["code"], "POLICY_DENIED", "promoted pack is enforced: {r}");
    assert_eq!(
        common::count_audit_events(&h.running.store, "admin_change", "policy_change.activate")
            .await,
        1
    );

    // Deny rules: created in shadow mode, promoted by the enforce route.
    let r = post(
        &h,
        "/v1/deny-rules",
        &admin,
        json!({"subject_type": "integration", "subject_id": "int-ke-moh", "action": "read",
               "resource": "*", "scope": {}, "active_from": "2020-01-01T00:00:00Z",
               "reason_code": "SECURITY_INCIDENT", "mode": "shadow"}),
    )
    .await;
    assert_eq!(
        (r.status, r.body["mode"].as_str()),
        (201, Some("shadow")),
        "{}",
        r.body
    );
    let rule = r.body["deny_id"].as_str().unwrap().to_owned();
    let version = r.body["version_id"].as_i64().unwrap();
    let r = check(&mut h, "GET", KE_RECORD, &moh).await;
    assert_eq!(r["allowed"], true, "shadow rule not enforced: {r}");
    let r = call(
        &h,
        Method::POST,
        &format!("/v1/deny-rules/{rule}/enforce"),
        &admin,
        json!({"reason_code": "SECURITY_INCIDENT"}),
        Some(version + 7),
    )
    .await;
    assert_eq!(r.status, 412, "stale If-Match: {}", r.body);
    let r = call(
        &h,
        Method::POST,
        &format!("/v1/deny-rules/{rule}/enforce"),
        &admin,
        json!({"reason_code": "SECURITY_INCIDENT"}),
        Some(version),
    )
    .await;
    assert_eq!(
        (r.status, r.body["mode"].as_str()),
        (200, Some("enforce")),
        "{}",
        r.body
    );
    let r = check(&mut h, "GET", KE_RECORD, &moh).await;
    assert_eq!(
        r["code"], "DENY_RULE_MATCHED",
        "promoted rule is enforced: {r}"
    );
    let r = post(
        &h,
        &format!("/v1/deny-rules/{rule}/enforce"),
        &admin,
        json!({"reason_code": "SECURITY_INCIDENT"}),
    )
    .await;
    assert_eq!(r.status, 409, "already enforced: {}", r.body);
    assert_eq!(
        common::count_audit_events(&h.running.store, "admin_change", "deny_rule.enforce").await,
        1
    );
}

/// Issue 16, ADM-2: a shadow rate limit counts only in its own state (the request goes on,
/// `rate_limit/<id> RATE_LIMITED` is recorded); `POST /v1/integrations/{id}/enforce-limits`
/// (If-Match, reason) promotes it, audited, after which an exhausted limit denies; a second
/// promotion is 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_rate_limit_promoted_by_enforce_limits() {
    let mut h = start_with_shadow_policies().await;
    let token = partner(&h, "int-ke-shadow", &["health"], "health:person:read");
    for _ in 0..3 {
        let r = check(&mut h, "GET", KE_RECORD, &token).await;
        assert_eq!(r["allowed"], true, "a shadow limit never denies: {r}");
    }
    let operator = h.staff_token("ke", "officer-admin", &[ADMIN], "scp-pep-admin");
    let r = call(
        &h,
        Method::GET,
        "/v1/integrations/int-ke-shadow",
        &operator,
        Value::Null,
        None,
    )
    .await;
    assert_eq!(r.body["rate_limit"]["mode"], "shadow", "{}", r.body);
    let version = r.body["version"].as_i64().unwrap();
    let r = call(
        &h,
        Method::POST,
        "/v1/integrations/int-ke-shadow/enforce-limits",
        &operator,
        json!({"reason_code": "OTHER"}),
        Some(version),
    )
    .await;
    assert_eq!(r.status, 400, "OTHER needs its text (ADM-7): {}", r.body);
    let r = call(
        &h,
        Method::POST,
        "/v1/integrations/int-ke-shadow/enforce-limits",
        &operator,
        json!({"reason_code": "SECURITY_INCIDENT"}),
        Some(version),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body["rate_limit"].get("mode").is_none(),
        "enforce is omitted: {}",
        r.body
    );
    // Enforced now: at most one request of a fresh burst passes, the rest are RATE_LIMITED.
    let mut codes = Vec::new();
    for _ in 0..3 {
        let r = check(&mut h, "GET", KE_RECORD, &token).await;
        codes.push(r["code"].as_str().unwrap().to_owned());
    }
    assert!(codes.iter().any(|c| c == "RATE_LIMITED"), "{codes:?}");
    let r = post(
        &h,
        "/v1/integrations/int-ke-shadow/enforce-limits",
        &operator,
        json!({"reason_code": "SECURITY_INCIDENT"}),
    )
    .await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(
        common::count_audit_events(
            &h.running.store,
            "admin_change",
            "integration.enforce_limits"
        )
        .await,
        1
    );
}
