//! The consent REST API through real HTTP against a running scp-pep, on SQLite and PostgreSQL.
//!
//! Requirement tags are in each test's doc comment: CON-3–CON-37 (SEC-09), INT-4.3-3 (frozen
//! shares after withdrawal), INT-4.3-4 (aggregate epochs).

use crate::common;

use scp_pep::consent::ManualClock;
use scp_pep::consent::model::DAY_MS;
use serde_json::{Value, json};

use common::Harness;

const OFFICER: &str = "scp-consent-officer";
const AGENT: &str = "scp-field-agent";
const VIEWER: &str = "scp-consent-evidence-viewer";
const AUDITOR: &str = "scp-auditor";
const TENANT_ADMIN: &str = "scp-tenant-admin";
const REGISTRAR: &str = "scp-person-registrar";
const ROOT: &str = "scp-root";
const KE_RECORD: &str = "/v1/tenants/ke/health/persons/r-1/record";

fn token(h: &Harness, tenant: &str, sub: &str, roles: &[&str]) -> String {
    h.staff_token(tenant, sub, roles, "scp-pep-admin")
}

/// One answer: status, ETag, JSON body.
struct Answer {
    status: u16,
    etag: Option<String>,
    body: Value,
}

impl Answer {
    fn code(&self) -> Option<&str> {
        self.body["error"]["code"].as_str()
    }
    fn field(&self) -> Option<&str> {
        self.body["error"]["field"].as_str()
    }
}

async fn call(
    h: &Harness,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
    if_match: Option<&str>,
) -> Answer {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
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
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp.json().await.unwrap_or(Value::Null);
    Answer { status, etag, body }
}

async fn post(h: &Harness, path: &str, token: &str, body: Value) -> Answer {
    call(h, "POST", path, Some(token), Some(body), None).await
}

async fn get(h: &Harness, path: &str, token: &str) -> Answer {
    call(h, "GET", path, Some(token), None, None).await
}

async fn store_count(h: &Harness, sql: &str, arg: &str) -> i64 {
    match &h.running.store {
        scp_pep::store::Store::Sqlite(p) => sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(arg)
            .fetch_one(p)
            .await
            .unwrap(),
        scp_pep::store::Store::Postgres(p) => sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(arg)
            .fetch_one(p)
            .await
            .unwrap(),
    }
}

async fn audit_count(h: &Harness, kind: &str) -> i64 {
    store_count(
        h,
        "SELECT COUNT(*) FROM audit_records WHERE kind = $1",
        kind,
    )
    .await
}

fn at(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .to_rfc3339()
}

async fn put_person(h: &Harness, registrar: &str, person: &str, verification: &str) {
    let a = call(
        h,
        "PUT",
        &format!("/v1/consents/persons/{person}"),
        Some(registrar),
        Some(json!({"verification": verification, "status": "active", "channels": ["sms"]})),
        None,
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
}

async fn evaluate(h: &Harness, tok: &str, person: &str, vertical: &str, action: &str) -> Value {
    let a = post(
        h,
        "/v1/consents/evaluate",
        tok,
        json!({"person_id": person, "vertical_id": vertical, "action": action}),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    a.body
}

async fn partner_check(h: &mut Harness) -> Value {
    let claims = h.claims("ke", "int-ke-moh", &["health"], "health:person:read");
    let t = h.sign("ke-rs256", &claims);
    h.check(&Harness::get(KE_RECORD, &t)).await
}

/// The main lifecycle, on one backend.
///
/// CON-3, CON-4, CON-5, CON-6, CON-7, CON-8, CON-9, CON-10, CON-11, CON-12, CON-13, CON-14,
/// CON-15, CON-16, CON-17, CON-19, CON-20, CON-21, CON-22, CON-25, CON-26, CON-27, CON-28,
/// CON-29, CON-30, CON-32, CON-35, CON-36, CON-37, INT-4.3-3, INT-4.3-4.
async fn scenario(url: Option<String>) {
    let t0 = chrono::Utc::now().timestamp_millis();
    let clock = ManualClock::new(t0);
    let mut h = Harness::start_with_clock(url, |_| {}, clock.clone()).await;
    let officer = token(&h, "ke", "officer-1", &[OFFICER]);
    let agent = token(&h, "ke", "agent-1", &[AGENT]);
    let viewer = token(&h, "ke", "viewer-1", &[VIEWER]);
    let auditor = token(&h, "ke", "auditor-1", &[VIEWER, AUDITOR]);
    let admin = token(&h, "ke", "admin-1", &[TENANT_ADMIN]);
    let registrar = token(&h, "ke", "registry", &[REGISTRAR]);
    let root = token(&h, "ke", "root-1", &[ROOT]);
    let ug_officer = token(&h, "ug", "officer-ug", &[OFFICER]);

    for p in ["r-1", "r-3", "r-4", "r-5"] {
        put_person(&h, &registrar, p, "verified").await;
    }
    put_person(&h, &registrar, "r-2", "provisional").await;

    let capture = |person: &str, vertical: &str, from: i64, until: Option<i64>, ev: &[&str]| {
        json!({
            "person_id": person, "vertical_id": vertical, "active_from": at(from),
            "active_until": until.map(at), "capture_mode": "online",
            "evidence_attachment_ids": ev,
        })
    };
    let window = (t0 - DAY_MS, Some(t0 + 10 * DAY_MS));

    // CON-3, CON-11: unknown and provisional persons.
    let a = post(
        &h,
        "/v1/consents",
        &officer,
        capture("r-9", "health", window.0, window.1, &["sig-1"]),
    )
    .await;
    assert_eq!(
        (a.status, a.code()),
        (404, Some("PERSON_UNKNOWN")),
        "{}",
        a.body
    );
    let a = post(
        &h,
        "/v1/consents",
        &officer,
        capture("r-2", "health", window.0, window.1, &["sig-1"]),
    )
    .await;
    assert_eq!(
        (a.status, a.code()),
        (409, Some("PERSON_PROVISIONAL")),
        "{}",
        a.body
    );

    // CON-4: bad dates and inputs name their field.
    let a = post(
        &h,
        "/v1/consents",
        &officer,
        capture("r-1", "health", t0, Some(t0), &["sig-1"]),
    )
    .await;
    assert_eq!(
        (a.status, a.field()),
        (400, Some("active_until")),
        "{}",
        a.body
    );
    let mut bad = capture("r-1", "health", t0, None, &["sig-1"]);
    bad["active_from"] = json!("tomorrow");
    let a = post(&h, "/v1/consents", &officer, bad).await;
    assert_eq!(
        (a.status, a.field()),
        (400, Some("active_from")),
        "{}",
        a.body
    );
    let mut bad = capture("r-1", "health", t0, None, &["sig-1"]);
    bad["colour"] = json!("blue");
    let a = post(&h, "/v1/consents", &officer, bad).await;
    assert_eq!(
        (a.status, a.code(), a.field()),
        (400, Some("INVALID_REQUEST"), Some("colour"))
    );
    let a = post(
        &h,
        "/v1/consents",
        &officer,
        capture("p 1", "health", t0, None, &["sig-1"]),
    )
    .await;
    assert_eq!(
        (a.status, a.field()),
        (400, Some("person_id")),
        "{}",
        a.body
    );
    let a = post(
        &h,
        "/v1/consents",
        &officer,
        capture("r-1", "health", t0, None, &["bad id"]),
    )
    .await;
    assert_eq!(
        (a.status, a.field()),
        (400, Some("evidence_attachment_ids")),
        "{}",
        a.body
    );

    // Online capture with evidence: active at once (CON-13, CON-15); CON-35 fields.
    let a = post(
        &h,
        "/v1/consents",
        &officer,
        capture("r-1", "health", window.0, window.1, &["sig-1", "photo-1"]),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(a.etag.as_deref(), Some("\"1\""));
    let c1 = a.body["consent_id"].as_str().unwrap().to_owned();
    assert_eq!(a.body["status"], "active");
    assert_eq!(a.body["tenant_id"], "ke");
    assert_eq!(a.body["capture_mode"], "online");
    assert_eq!(a.body["captured_by"], "officer-1");
    assert!(a.body["grace_until"].is_string());
    assert!(a.body["version_id"].is_string());
    // Duplicate capture while live.
    let a = post(
        &h,
        "/v1/consents",
        &officer,
        capture("r-1", "health", window.0, window.1, &["sig-1"]),
    )
    .await;
    assert_eq!(
        (a.status, a.code()),
        (409, Some("CONSENT_EXISTS")),
        "{}",
        a.body
    );

    // A partner reads p-1's record: allowed, and noted in the share ledger.
    let r = partner_check(&mut h).await;
    assert_eq!(r["allowed"], true, "{r}");

    // CON-17: the consent view shows only an evidence count.
    let a = get(&h, &format!("/v1/consents/{c1}"), &officer).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body["evidence_count"], 2);
    assert!(
        a.body.get("evidence_attachment_ids").is_none(),
        "{}",
        a.body
    );
    // CON-16, CON-17, CON-19: evidence needs its own permission, masked without audit level, and
    // every access is an audit event.
    let before = audit_count(&h, "consent_evidence_access").await;
    let a = get(&h, &format!("/v1/consents/{c1}/evidence"), &officer).await;
    assert_eq!(a.status, 403);
    let a = get(&h, &format!("/v1/consents/{c1}/evidence"), &viewer).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["masked"], true);
    assert_eq!(a.body["evidence_attachment_ids"], json!(["***", "***"]));
    let a = get(&h, &format!("/v1/consents/{c1}/evidence"), &auditor).await;
    assert_eq!(a.body["masked"], false);
    assert_eq!(
        a.body["evidence_attachment_ids"],
        json!(["sig-1", "photo-1"])
    );
    assert_eq!(audit_count(&h, "consent_evidence_access").await, before + 2);
    // Another tenant never sees it.
    let a = get(&h, &format!("/v1/consents/{c1}"), &ug_officer).await;
    assert_eq!((a.status, a.code()), (404, Some("NOT_FOUND")));

    // CON-13, CON-15: no evidence → pending, not effective; evidence later → active.
    let a = post(
        &h,
        "/v1/consents",
        &officer,
        capture("r-4", "health", window.0, window.1, &[]),
    )
    .await;
    assert_eq!(
        (a.status, a.body["status"].as_str()),
        (201, Some("pending")),
        "{}",
        a.body
    );
    let c4 = a.body["consent_id"].as_str().unwrap().to_owned();
    assert_eq!(
        evaluate(&h, &officer, "r-4", "health", "read").await["decision"],
        "deny"
    );
    let a = post(
        &h,
        &format!("/v1/consents/{c4}/evidence"),
        &officer,
        json!({"evidence_attachment_ids": ["sig-4"]}),
    )
    .await;
    assert_eq!(
        (a.status, a.body["status"].as_str()),
        (200, Some("active")),
        "{}",
        a.body
    );
    assert_eq!(a.etag.as_deref(), Some("\"2\""));
    assert_eq!(
        evaluate(&h, &officer, "r-4", "health", "write").await["decision"],
        "allow"
    );

    // CON-10, CON-12, CON-14: offline capture by field agents only, with identity check and
    // document; pending until verified on sync.
    let offline = |ev: &[&str]| {
        json!({
            "person_id": "r-3", "vertical_id": "health", "active_from": at(window.0),
            "active_until": null, "capture_mode": "offline", "evidence_attachment_ids": ev,
            "verification_document_attachment_id": "doc-3",
            "identity_verification": {"document_type": "national_id"},
        })
    };
    let a = post(&h, "/v1/consents", &officer, offline(&[])).await;
    assert_eq!((a.status, a.code()), (403, Some("FORBIDDEN")), "{}", a.body);
    let mut b = offline(&[]);
    b.as_object_mut().unwrap().remove("identity_verification");
    let a = post(&h, "/v1/consents", &agent, b).await;
    assert_eq!(
        (a.status, a.field()),
        (400, Some("identity_verification")),
        "{}",
        a.body
    );
    let mut b = offline(&[]);
    b.as_object_mut()
        .unwrap()
        .remove("verification_document_attachment_id");
    let a = post(&h, "/v1/consents", &agent, b).await;
    assert_eq!(
        (a.status, a.field()),
        (400, Some("verification_document_attachment_id")),
        "{}",
        a.body
    );
    let a = post(&h, "/v1/consents", &agent, offline(&[])).await;
    assert_eq!(
        (a.status, a.body["status"].as_str()),
        (201, Some("pending")),
        "{}",
        a.body
    );
    assert_eq!(a.body["identity_verification"]["verified_by"], "agent-1");
    let c3 = a.body["consent_id"].as_str().unwrap().to_owned();
    let a = post(
        &h,
        &format!("/v1/consents/{c3}/verify"),
        &officer,
        json!({}),
    )
    .await;
    assert_eq!(
        (a.status, a.code()),
        (409, Some("EVIDENCE_REQUIRED")),
        "{}",
        a.body
    );
    let a = post(
        &h,
        &format!("/v1/consents/{c3}/evidence"),
        &agent,
        json!({"evidence_attachment_ids": ["sig-3"]}),
    )
    .await;
    assert_eq!(
        (a.status, a.body["status"].as_str()),
        (200, Some("pending")),
        "{}",
        a.body
    );
    let a = post(&h, &format!("/v1/consents/{c3}/verify"), &agent, json!({})).await;
    assert_eq!(a.status, 403);
    let a = post(
        &h,
        &format!("/v1/consents/{c3}/verify"),
        &officer,
        json!({}),
    )
    .await;
    assert_eq!(
        (a.status, a.body["status"].as_str()),
        (200, Some("active")),
        "{}",
        a.body
    );
    assert_eq!(a.body["active_until"], Value::Null, "CON-6: open-ended");

    // CON-20, CON-21: rejection with a fixed reason; renew refused; re-capture allowed.
    let a = post(
        &h,
        "/v1/consents",
        &officer,
        capture("r-5", "health", window.0, window.1, &[]),
    )
    .await;
    let c5 = a.body["consent_id"].as_str().unwrap().to_owned();
    let a = post(
        &h,
        &format!("/v1/consents/{c5}/reject"),
        &officer,
        json!({"reason_code": "USER_REQUEST"}),
    )
    .await;
    assert_eq!(
        (a.status, a.field()),
        (400, Some("reason_code")),
        "{}",
        a.body
    );
    let a = post(
        &h,
        &format!("/v1/consents/{c5}/reject"),
        &officer,
        json!({"reason_code": "OTHER"}),
    )
    .await;
    assert_eq!(
        (a.status, a.field()),
        (400, Some("reason_text")),
        "{}",
        a.body
    );
    let a = post(
        &h,
        &format!("/v1/consents/{c5}/reject"),
        &officer,
        json!({"reason_code": "IDENTITY_MISMATCH"}),
    )
    .await;
    assert_eq!(
        (a.status, a.body["status"].as_str()),
        (200, Some("rejected")),
        "{}",
        a.body
    );
    assert_eq!(a.body["reason_code"], "IDENTITY_MISMATCH");
    let renew = json!({"active_from": at(t0), "active_until": at(t0 + 30 * DAY_MS), "evidence_attachment_ids": ["sig-5"]});
    let a = post(
        &h,
        &format!("/v1/consents/{c5}/renew"),
        &officer,
        renew.clone(),
    )
    .await;
    assert_eq!(
        (a.status, a.code()),
        (409, Some("RENEW_NOT_ALLOWED")),
        "{}",
        a.body
    );
    let e = evaluate(&h, &officer, "r-5", "health", "read").await;
    assert_eq!(
        (e["decision"].as_str(), e["status"].as_str()),
        (Some("deny"), Some("rejected"))
    );
    let a = post(
        &h,
        "/v1/consents",
        &officer,
        capture("r-5", "health", window.0, window.1, &["sig-5"]),
    )
    .await;
    assert_eq!(
        a.status, 201,
        "a rejected consent is re-captured: {}",
        a.body
    );

    // CON-9, CON-25, optimistic concurrency.
    let reason = json!({"reason_code": "USER_REQUEST"});
    let a = post(
        &h,
        &format!("/v1/consents/{c1}/withdraw"),
        &agent,
        reason.clone(),
    )
    .await;
    assert_eq!(
        (a.status, a.code()),
        (403, Some("FORBIDDEN")),
        "field agents never withdraw"
    );
    let a = post(
        &h,
        &format!("/v1/consents/{c1}/withdraw"),
        &officer,
        json!({"reason_code": "BORED"}),
    )
    .await;
    assert_eq!((a.status, a.field()), (400, Some("reason_code")));
    let a = post(
        &h,
        &format!("/v1/consents/{c1}/withdraw"),
        &officer,
        json!({"reason_code": "OTHER", "reason_text": " "}),
    )
    .await;
    assert_eq!((a.status, a.field()), (400, Some("reason_text")));
    let a = call(
        &h,
        "POST",
        &format!("/v1/consents/{c1}/withdraw"),
        Some(&officer),
        Some(reason.clone()),
        Some("\"7\""),
    )
    .await;
    assert_eq!(
        (a.status, a.code()),
        (412, Some("PRECONDITION_FAILED")),
        "{}",
        a.body
    );
    let changes_before = audit_count(&h, "consent_change").await;
    // CON-22, CON-36, INT-4.3-3: withdrawal.
    let a = call(
        &h,
        "POST",
        &format!("/v1/consents/{c1}/withdraw"),
        Some(&officer),
        Some(reason.clone()),
        Some("\"1\""),
    )
    .await;
    assert_eq!(
        (a.status, a.body["status"].as_str()),
        (200, Some("withdrawn")),
        "{}",
        a.body
    );
    assert_eq!(a.body["frozen_shares"], json!(["int-ke-moh"]));
    assert_eq!(a.body["case_suspension_queued"], true);
    assert_eq!(audit_count(&h, "consent_change").await, changes_before + 1);
    assert_eq!(audit_count(&h, "frozen_share").await, 1);
    let frozen = store_count(
        &h,
        "SELECT COUNT(*) FROM audit_records WHERE kind = 'frozen_share' AND body NOT LIKE '%' || $1 || '%'",
        "\"r-1\"",
    )
    .await;
    assert_eq!(
        frozen, 1,
        "frozen-share records carry a person ref, never the id"
    );
    assert_eq!(
        store_count(
            &h,
            "SELECT COUNT(*) FROM outbox WHERE kind = 'case_suspension' AND consent_id = $1",
            &c1
        )
        .await,
        1
    );
    let r = partner_check(&mut h).await;
    assert_eq!(r["allowed"], false, "withdrawal is effective at once: {r}");
    let a = post(
        &h,
        &format!("/v1/consents/{c1}/withdraw"),
        &officer,
        reason.clone(),
    )
    .await;
    assert_eq!((a.status, a.code()), (409, Some("INVALID_TRANSITION")));
    let a = post(
        &h,
        &format!("/v1/consents/{c1}/renew"),
        &officer,
        renew.clone(),
    )
    .await;
    assert_eq!((a.status, a.code()), (409, Some("RENEW_NOT_ALLOWED")));

    // CON-7, CON-8, CON-37: history grows, visible only to tenant admins and root.
    let a = get(&h, &format!("/v1/consents/{c1}/history"), &officer).await;
    assert_eq!(a.status, 403);
    let a = get(&h, &format!("/v1/consents/{c1}/history"), &admin).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let statuses: Vec<&str> = a.body["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["recorded_status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["active", "withdrawn"]);
    assert_eq!(a.body["versions"][1]["changed_by"], "officer-1");
    assert_eq!(a.body["versions"][1]["captured_by"], "officer-1");
    let a = get(&h, &format!("/v1/consents/{c3}/history"), &root).await;
    assert_eq!(a.body["versions"].as_array().unwrap().len(), 3);
    let update = "UPDATE consent_versions SET status = 'active' WHERE consent_id = $1";
    let refused = match &h.running.store {
        scp_pep::store::Store::Sqlite(p) => sqlx::query(update).bind(&c1).execute(p).await.is_err(),
        scp_pep::store::Store::Postgres(p) => {
            sqlx::query(update).bind(&c1).execute(p).await.is_err()
        }
    };
    assert!(refused, "CON-7: stored versions are immutable");

    // List by person.
    let a = get(&h, "/v1/consents?person_id=r-1", &officer).await;
    assert_eq!(
        a.body["consents"].as_array().map(Vec::len),
        Some(1),
        "{}",
        a.body
    );
    let a = get(&h, "/v1/consents", &officer).await;
    assert_eq!((a.status, a.field()), (400, Some("person_id")));

    // CON-5, CON-6: a consent in the future is not yet in force.
    let a = post(
        &h,
        "/v1/consents",
        &officer,
        capture("r-1", "education", t0 + DAY_MS, None, &["sig-e"]),
    )
    .await;
    assert_eq!(
        (
            a.status,
            a.body["status"].as_str(),
            a.body["recorded_status"].as_str()
        ),
        (201, Some("pending"), Some("active")),
        "{}",
        a.body
    );
    assert_eq!(
        evaluate(&h, &officer, "r-1", "education", "read").await["decision"],
        "deny"
    );

    // CON-26–CON-30: cross active_until (grace, read-only), then the grace end (withdrawn).
    clock.set(t0 + 11 * DAY_MS);
    assert_eq!(
        evaluate(&h, &officer, "r-1", "education", "write").await["decision"],
        "allow"
    );
    let e = evaluate(&h, &officer, "r-4", "health", "read").await;
    assert_eq!(
        (
            e["decision"].as_str(),
            e["status"].as_str(),
            e["in_grace"].as_bool()
        ),
        (Some("allow"), Some("expired"), Some(true)),
        "{e}"
    );
    assert_eq!(
        evaluate(&h, &officer, "r-4", "health", "write").await["decision"],
        "deny"
    );
    assert_eq!(
        evaluate(&h, &officer, "r-4", "health", "export").await["decision"],
        "deny"
    );
    let a = get(&h, &format!("/v1/consents/{c4}"), &officer).await;
    assert_eq!(
        (a.body["status"].as_str(), a.body["in_grace"].as_bool()),
        (Some("expired"), Some(true))
    );
    let a = post(
        &h,
        &format!("/v1/consents/{c4}/evidence"),
        &officer,
        json!({"evidence_attachment_ids": ["sig-x"]}),
    )
    .await;
    assert_eq!(
        (a.status, a.code()),
        (409, Some("INVALID_TRANSITION")),
        "CON-29: {}",
        a.body
    );
    let r = partner_check(&mut h).await;
    assert_eq!(r["allowed"], false);
    // CON-30, CON-32: root exports during grace, audited.
    let bypass = audit_count(&h, "root_bypass").await;
    let e = evaluate(&h, &root, "r-4", "health", "export").await;
    assert_eq!(
        (e["decision"].as_str(), e["reason"].as_str()),
        (Some("allow"), Some("root_bypass"))
    );
    assert_eq!(audit_count(&h, "root_bypass").await, bypass + 1);
    clock.set(t0 + 41 * DAY_MS);
    let e = evaluate(&h, &officer, "r-4", "health", "read").await;
    assert_eq!(
        (e["decision"].as_str(), e["status"].as_str()),
        (Some("deny"), Some("withdrawn")),
        "CON-28: {e}"
    );
    assert_eq!(
        evaluate(&h, &officer, "r-3", "health", "write").await["decision"],
        "allow",
        "open-ended"
    );
    // CON-32: root bypasses even withdrawn consent; no one else does.
    let e = evaluate(&h, &root, "r-1", "health", "write").await;
    assert_eq!(e["decision"], "allow");
    assert_eq!(
        evaluate(&h, &admin, "r-1", "health", "read").await["decision"],
        "deny"
    );
    assert_eq!(audit_count(&h, "root_bypass").await, bypass + 2);

    // INT-4.3-4: aggregate epochs.
    let a = call(
        &h,
        "PUT",
        "/v1/consents/aggregates/stats-health-education-summary/epoch",
        Some(&registrar),
        Some(json!({"epoch": at(t0)})),
        None,
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let a = call(
        &h,
        "PUT",
        "/v1/consents/aggregates/stats-health-education-summary/epoch",
        Some(&registrar),
        Some(json!({"epoch": "soon"})),
        None,
    )
    .await;
    assert_eq!((a.status, a.field()), (400, Some("epoch")));

    let a = get(&h, "/v1/consents/openapi.json", &registrar).await;
    assert_eq!(a.body["openapi"], "3.1.0");
    h.running.shutdown().await;
}

/// The main lifecycle on SQLite (see [`scenario`] for the requirement IDs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_lifecycle_sqlite() {
    scenario(None).await;
}

/// The main lifecycle on PostgreSQL (see [`scenario`] for the requirement IDs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_lifecycle_postgres() {
    scenario(Some(common::fresh_pg_database().await)).await;
}

/// CON-9, CON-12, CON-17, CON-37, EXT-6-1: every route refuses a token without consent roles
/// (403) and a missing token (401).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_needs_a_token_and_a_role() {
    let h = Harness::start(None).await;
    let nobody = token(&h, "ke", "nobody", &["partner"]);
    let c = "0190d0d0-0000-7000-8000-000000000000";
    let routes: Vec<(&str, String, Option<Value>)> = vec![
        (
            "PUT",
            "/v1/consents/persons/r-1".into(),
            Some(json!({"verification": "verified", "status": "active"})),
        ),
        ("POST", "/v1/consents".into(), Some(json!({}))),
        ("GET", "/v1/consents?person_id=r-1".into(), None),
        ("GET", format!("/v1/consents/{c}"), None),
        ("GET", format!("/v1/consents/{c}/evidence"), None),
        (
            "POST",
            format!("/v1/consents/{c}/evidence"),
            Some(json!({"evidence_attachment_ids": []})),
        ),
        ("POST", format!("/v1/consents/{c}/verify"), Some(json!({}))),
        (
            "POST",
            format!("/v1/consents/{c}/reject"),
            Some(json!({"reason_code": "OTHER"})),
        ),
        (
            "POST",
            format!("/v1/consents/{c}/withdraw"),
            Some(json!({"reason_code": "USER_REQUEST"})),
        ),
        ("POST", format!("/v1/consents/{c}/renew"), Some(json!({}))),
        ("GET", format!("/v1/consents/{c}/history"), None),
        (
            "PUT",
            "/v1/consents/aggregates/r-1/epoch".into(),
            Some(json!({"epoch": "2026-01-01"})),
        ),
        ("POST", "/v1/consents/evaluate".into(), Some(json!({}))),
    ];
    for (method, path, body) in &routes {
        let a = call(&h, method, path, Some(&nobody), body.clone(), None).await;
        assert_eq!(
            (a.status, a.code()),
            (403, Some("FORBIDDEN")),
            "{method} {path}: {}",
            a.body
        );
        let a = call(&h, method, path, None, body.clone(), None).await;
        assert_eq!(
            (a.status, a.code()),
            (401, Some("UNAUTHENTICATED")),
            "{method} {path}: {}",
            a.body
        );
    }
    let a = call(&h, "GET", "/v1/consents/openapi.json", None, None, None).await;
    assert_eq!(a.status, 401);
    // Offline capture is for field agents only, even for root (CON-12); online not for agents.
    let root = token(&h, "ke", "root-1", &[ROOT]);
    let agent = token(&h, "ke", "agent-1", &[AGENT]);
    let offline = json!({"person_id": "r-1", "vertical_id": "health", "active_from": "2026-01-01T00:00:00Z", "capture_mode": "offline"});
    let a = post(&h, "/v1/consents", &root, offline).await;
    assert_eq!(a.status, 403, "{}", a.body);
    let online = json!({"person_id": "r-1", "vertical_id": "health", "active_from": "2026-01-01T00:00:00Z", "capture_mode": "online"});
    let a = post(&h, "/v1/consents", &agent, online).await;
    assert_eq!(a.status, 403, "{}", a.body);
    // Oversized bodies are refused.
    let officer = token(&h, "ke", "officer-1", &[OFFICER]);
    let big = json!({"person_id": "x".repeat(70_000)});
    let a = post(&h, "/v1/consents", &officer, big).await;
    assert_eq!(a.status, 413, "{}", a.body);
}
