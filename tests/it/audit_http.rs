//! Audit export over HTTP with signed, time-limited links, and the server's self-verification.
//!
//! Requirement tags: EXT-4.1-1 (export via a secure download link), EXT-6-1 (audit readable only
//! by admin roles), EXT-6-3 (time-limited, permission-scoped URLs), INT-8-2 (tamper evidence).

use crate::common;

use std::time::Duration;

use scp_pep::audit::checkpoint::TrustedKeys;
use scp_pep::audit::verify::verify_export;
use serde_json::{Value, json};

use common::Harness;

const KE_RECORD: &str = "/v1/tenants/ke/health/persons/p-1/record";

fn admin_token(h: &Harness, tenant: &str, roles: &[&str], aud: &str) -> String {
    h.staff_token(tenant, &format!("officer-{tenant}"), roles, aud)
}

async fn post(h: &Harness, token: Option<&str>, body: Value) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(h.ops_url("/v1/audit/exports"))
        .json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// `GET` on an export link, with `token` as the bearer (if any).
async fn download(h: &Harness, url: &str, token: Option<&str>) -> reqwest::Response {
    let mut r = reqwest::Client::new().get(h.ops_url(url));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    r.send().await.unwrap()
}

async fn some_decisions(h: &mut Harness, n: usize) {
    let claims = h.claims("ke", "int-ke-moh", &["health"], "health:person:read");
    let token = h.sign("ke-rs256", &claims);
    for _ in 0..n {
        let r = h.check(&Harness::get(KE_RECORD, &token)).await;
        assert_eq!(r["allowed"], true, "{r}");
    }
}

/// The body of the newest record of `kind` (SQLite harness).
async fn last_body(h: &Harness, kind: &str) -> Value {
    let scp_pep::store::Store::Sqlite(p) = &h.running.store else {
        unreachable!("the harness uses SQLite")
    };
    let body: String = sqlx::query_scalar(
        "SELECT body FROM audit_records WHERE kind = $1 ORDER BY rowid DESC LIMIT 1",
    )
    .bind(kind)
    .fetch_one(p)
    .await
    .unwrap();
    serde_json::from_str(&body).unwrap()
}

async fn store_count(h: &Harness, kind: &str) -> i64 {
    match &h.running.store {
        scp_pep::store::Store::Sqlite(p) => {
            sqlx::query_scalar("SELECT COUNT(*) FROM audit_records WHERE kind = $1")
                .bind(kind)
                .fetch_one(p)
                .await
                .unwrap()
        }
        scp_pep::store::Store::Postgres(p) => {
            sqlx::query_scalar("SELECT COUNT(*) FROM audit_records WHERE kind = $1")
                .bind(kind)
                .fetch_one(p)
                .await
                .unwrap()
        }
    }
}

/// EXT-4.1-1, EXT-6-1, EXT-6-3, INT-8-2: an auditor gets a signed link; the download is a
/// verifiable export of its tenant; both steps are audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auditor_downloads_a_verifiable_export_through_a_signed_link() {
    let mut h = Harness::start(None).await;
    some_decisions(&mut h, 5).await;
    let token = admin_token(&h, "ke", &["scp-auditor"], "scp-pep-admin");
    for format in ["jsonl", "csv"] {
        let (status, body) =
            post(&h, Some(&token), json!({"tenant": "ke", "format": format})).await;
        assert_eq!(status, 201, "{body}");
        let url = body["url"].as_str().unwrap();
        assert!(url.contains("sig=") && url.contains("exp="), "{url}");
        assert_eq!(body["expires_in_s"], 300);
        let resp = download(&h, url, Some(&token)).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["cache-control"], "no-store");
        let text = resp.text().await.unwrap();
        let vkey = h.running.audit.as_ref().unwrap().verifier_key().to_owned();
        let keys = TrustedKeys::new(&[vkey.as_str()]).unwrap();
        let r = verify_export(std::io::Cursor::new(text.as_bytes()), Some(&keys));
        assert!(r.ok, "{format}: {r:?}");
        assert!(r.records >= 5, "{format}: {r:?}");
    }
    // Link issue + download, for each format.
    assert_eq!(store_count(&h, "audit_access").await, 4);
}

/// EXT-6-1, EXT-6-3: who may not export, and links that are forged, altered or expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_links_are_refused_to_everyone_else() {
    let h = Harness::start_with(None, |c| c.audit.link_ttl_s = 0).await;
    let auditor = admin_token(&h, "ke", &["scp-auditor"], "scp-pep-admin");

    let (s, b) = post(&h, None, json!({"tenant": "ke"})).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (401, Some("UNAUTHENTICATED"))
    );
    let partner_aud = admin_token(&h, "ke", &["scp-auditor"], "scp-pep");
    let (s, _) = post(&h, Some(&partner_aud), json!({"tenant": "ke"})).await;
    assert_eq!(s, 401, "a token for another audience is not an admin token");
    let no_role = admin_token(&h, "ke", &["partner"], "scp-pep-admin");
    let (s, b) = post(&h, Some(&no_role), json!({"tenant": "ke"})).await;
    assert_eq!((s, b["error"]["code"].as_str()), (403, Some("FORBIDDEN")));
    let (s, b) = post(&h, Some(&auditor), json!({"tenant": "ug"})).await;
    assert_eq!(
        (s, b["error"]["field"].as_str()),
        (403, Some("tenant")),
        "{b}"
    );
    let (s, b) = post(
        &h,
        Some(&auditor),
        json!({"tenant": "ke", "from": "yesterday"}),
    )
    .await;
    assert_eq!(
        (s, b["error"]["code"].as_str(), b["error"]["field"].as_str()),
        (400, Some("INVALID_REQUEST"), Some("from"))
    );
    let (s, b) = post(&h, Some(&auditor), json!({"tenant": "ke", "format": "xml"})).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("INVALID_REQUEST")),
        "{b}"
    );

    // ttl 0: the link is dead on arrival.
    let (s, b) = post(&h, Some(&auditor), json!({"tenant": "ke"})).await;
    assert_eq!(s, 201, "{b}");
    let url = b["url"].as_str().unwrap().to_owned();
    let resp = download(&h, &url, Some(&auditor)).await;
    assert_eq!(resp.status(), 410);
    // Altering any signed parameter breaks the signature (checked before expiry).
    let forged = url.replace("tenant=ke", "tenant=ug");
    let resp = download(&h, &forged, Some(&auditor)).await;
    assert_eq!(resp.status(), 403);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "LINK_INVALID");
    let resp = download(&h, "/v1/audit/exports/download?tenant=ke", Some(&auditor)).await;
    assert_eq!(resp.status(), 403);
    // Without a token nothing is looked at.
    let resp = download(&h, &url, None).await;
    assert_eq!(resp.status(), 401);
}

/// EXT-6-1, EXT-4.1-1: a link is bound to the caller it was issued to. Another tenant's token,
/// another subject of the same tenant and no token at all download nothing, and nothing is
/// recorded for them; the download by the holder records who downloaded it and from where.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_link_is_bound_to_its_requester() {
    let mut h = Harness::start(None).await;
    some_decisions(&mut h, 2).await;
    let auditor = h.staff_token("ke", "auditor-1", &["scp-auditor"], "scp-pep-admin");
    let other = h.staff_token("ke", "auditor-2", &["scp-auditor"], "scp-pep-admin");
    let ug = h.staff_token("ug", "auditor-1", &["scp-auditor"], "scp-pep-admin");
    let (s, b) = post(&h, Some(&auditor), json!({"tenant": "ke"})).await;
    assert_eq!(s, 201, "{b}");
    let url = b["url"].as_str().unwrap().to_owned();
    let before = store_count(&h, "audit_access").await;
    let resp = download(&h, &url, None).await;
    assert_eq!(resp.status(), 401);
    for token in [&other, &ug] {
        let resp = download(&h, &url, Some(token)).await;
        assert_eq!(resp.status(), 403);
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["code"], "LINK_INVALID", "{v}");
    }
    assert_eq!(store_count(&h, "audit_access").await, before);
    let resp = download(&h, &url, Some(&auditor)).await;
    assert_eq!(resp.status(), 200);
    let _ = resp.text().await.unwrap();
    assert_eq!(store_count(&h, "audit_access").await, before + 1);
    let body = last_body(&h, "audit_access").await;
    assert_eq!(body["actor"], "auditor-1", "{body}");
    assert_eq!(body["detail"]["issued_to"], "auditor-1", "{body}");
    assert_eq!(body["detail"]["peer"], "127.0.0.1", "{body}");
}

/// EXT-6-1: the break-glass root role may export another tenant, and that is recorded as
/// `root_bypass`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_export_of_another_tenant_is_recorded_as_root_bypass() {
    let h = Harness::start(None).await;
    let root = admin_token(&h, "ke", &["scp-root"], "scp-pep-admin");
    let (s, b) = post(&h, Some(&root), json!({"tenant": "ug"})).await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(store_count(&h, "root_bypass").await, 1);
}

/// INT-8-2: the running server re-verifies its store (here: a full pass every second) and counts
/// a record edited after it was first checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_verification_counts_a_tampered_record() {
    let mut h = Harness::start_with(None, |c| {
        c.audit.verify_interval_s = 1;
        c.audit.full_verify_interval_s = 1;
        c.audit.checkpoint_interval_s = 1;
    })
    .await;
    some_decisions(&mut h, 5).await;
    // Let a checkpoint cover the records and a verification pass run.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let scp_pep::store::Store::Sqlite(pool) = &h.running.store else {
        unreachable!()
    };
    // A database administrator drops the trigger and edits a checkpointed decision.
    sqlx::query("DROP TRIGGER audit_records_no_update")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE audit_records SET body = replace(body, '\"outcome\":\"allow\"', '\"outcome\":\"deny\"') \
         WHERE seq = (SELECT MAX(seq) FROM audit_records WHERE kind = 'decision' AND tenant_id = 'ke') AND tenant_id = 'ke'",
    )
    .execute(pool)
    .await
    .unwrap();
    // New records (and a checkpoint past the edited one) make the next pass reach it.
    some_decisions(&mut h, 2).await;
    let mut failures = 0.0;
    for _ in 0..100 {
        let text = h.metrics_text().await;
        failures = text
            .lines()
            .find(|l| l.starts_with("scp_pep_audit_verify_failures_total"))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        if failures >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(failures >= 1.0, "self-verification did not notice the edit");
}
