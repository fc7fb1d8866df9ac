//! The admin plane records what its handlers might forget: every use of the root role as
//! `root_bypass` in the tenant whose data it touched (reads included), and every attempt to touch
//! another tenant's objects as a `cross_tenant` security incident in that tenant, while the
//! caller gets the same answer as for an id that does not exist.

use crate::common;

use common::Harness;
use serde_json::Value;

async fn count(h: &Harness, kind: &str, tenant: &str) -> i64 {
    let sql = "SELECT COUNT(*) FROM audit_records WHERE kind = $1 AND tenant_id = $2";
    match &h.running.store {
        scp_pep::store::Store::Sqlite(p) => sqlx::query_scalar(sql)
            .bind(kind)
            .bind(tenant)
            .fetch_one(p)
            .await
            .unwrap(),
        scp_pep::store::Store::Postgres(p) => sqlx::query_scalar(sql)
            .bind(kind)
            .bind(tenant)
            .fetch_one(p)
            .await
            .unwrap(),
    }
}

async fn get(h: &Harness, path: &str, token: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .get(h.ops_url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

/// ADM-2 (every root use is audited): root reads of another tenant's objects and lists are each
/// recorded as `root_bypass` in that tenant; a root request that reaches no other tenant is
/// recorded in the root's own tenant; nothing is recorded twice for one request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_root_request_is_recorded_where_it_reached() {
    let h = Harness::start(None).await;
    let root = h.staff_token("ke", "root-1", &["scp-root"], "scp-pep-admin");
    let (ug0, ke0) = (
        count(&h, "root_bypass", "ug").await,
        count(&h, "root_bypass", "ke").await,
    );
    let (s, b) = get(&h, "/v1/integrations/int-ug-moh", &root).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(count(&h, "root_bypass", "ug").await, ug0 + 1);
    let (s, _) = get(&h, "/v1/integrations/int-ug-moh/credentials", &root).await;
    assert_eq!(s, 200);
    let (s, _) = get(&h, "/v1/integrations?tenant=ug", &root).await;
    assert_eq!(s, 200);
    assert_eq!(count(&h, "root_bypass", "ug").await, ug0 + 3);
    assert_eq!(
        count(&h, "root_bypass", "ke").await,
        ke0,
        "nothing in ke yet"
    );
    // Reaching no other tenant (even a 404) is still a use of the root role.
    let (s, _) = get(&h, "/v1/integrations/no-such-id", &root).await;
    assert_eq!(s, 404);
    let (s, _) = get(&h, "/v1/integrations", &root).await;
    assert_eq!(s, 200);
    assert_eq!(count(&h, "root_bypass", "ke").await, ke0 + 2);
    assert_eq!(count(&h, "root_bypass", "ug").await, ug0 + 3);
    // A non-root caller leaves no root_bypass record.
    let admin = h.staff_token("ke", "adm-1", &["scp-tenant-admin"], "scp-pep-admin");
    let (s, _) = get(&h, "/v1/integrations", &admin).await;
    assert_eq!(s, 200);
    assert_eq!(count(&h, "root_bypass", "ke").await, ke0 + 2);
}

/// INT-4.5-1, INT-9.4-1 on the admin plane: a caller of tenant ke naming an object of tenant ug
/// gets exactly the answer of a random id, and a `cross_tenant` security incident is recorded
/// in ug; a random id records nothing; naming another tenant outright is recorded in ke.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_tenant_admin_attempts_are_incidents() {
    let h = Harness::start(None).await;
    let admin = h.staff_token("ke", "adm-1", &["scp-tenant-admin"], "scp-pep-admin");
    let (ug0, ke0) = (
        count(&h, "security_incident", "ug").await,
        count(&h, "security_incident", "ke").await,
    );
    let (s1, mut b1) = get(&h, "/v1/integrations/int-ug-moh", &admin).await;
    let (s2, mut b2) = get(&h, "/v1/integrations/int-zz-none", &admin).await;
    assert_eq!((s1, s2), (404, 404));
    // Same code, same shape; the message names the id asked for, nothing else differs.
    b1["error"]["message"] = Value::Null;
    b2["error"]["message"] = Value::Null;
    assert_eq!(b1, b2);
    assert_eq!(count(&h, "security_incident", "ug").await, ug0 + 1);
    assert_eq!(count(&h, "security_incident", "ke").await, ke0);
    let (s, _) = get(&h, "/v1/integrations?tenant=ug", &admin).await;
    assert_eq!(s, 403);
    assert_eq!(count(&h, "security_incident", "ke").await, ke0 + 1);
    let metrics = h.metrics_text().await;
    let line = metrics
        .lines()
        .find(|l| l.starts_with("scp_pep_security_incidents_total{kind=\"cross_tenant\"}"))
        .unwrap_or_default();
    assert!(line.ends_with(" 2"), "{line}");
}
