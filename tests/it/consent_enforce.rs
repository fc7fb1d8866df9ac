//! Consent enforcement (pipeline stage 7) through the real gRPC ext_authz server, on SQLite and
//! PostgreSQL, crossing every time boundary with an injectable clock.
//!
//! Requirement tags: INT-4.3-1..6, INT-9.1-1, CON-1, CON-2, CON-4, CON-5, CON-6, CON-13, CON-15,
//! CON-20, CON-22, CON-23, CON-24, CON-26, CON-28, CON-31.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use scp_pep::check::CheckInput;
use scp_pep::consent::import::{ConsentDoc, ImportFile, PersonDoc, import};
use scp_pep::consent::model::{Change, ConsentVersion, DAY_MS, Recorded};
use scp_pep::consent::{Consents, ManualClock};
use serde_json::json;

use common::Harness;

/// 2030-01-01T00:00:00Z.
const T0: i64 = 1_893_456_000_000;

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .to_rfc3339()
}

struct Env {
    h: Harness,
    clock: Arc<ManualClock>,
    token: String,
}

async fn env(store: Option<String>) -> Env {
    env_with(store, |_| {}).await
}

async fn env_with(store: Option<String>, tweak: impl FnOnce(&mut scp_pep::config::Config)) -> Env {
    let clock = ManualClock::new(T0);
    let h = Harness::start_with_clock(store, tweak, clock.clone()).await;
    let claims = h.claims(
        "ke",
        "int-ke-consent",
        &["health", "education"],
        "health:person:read health:encounter:write health:research:read profile:read stats:aggregate:read",
    );
    let token = h.sign("ke-rs256", &claims);
    Env { h, clock, token }
}

fn consents(e: &Env) -> &Consents {
    &e.h.running.consents
}

/// Registers `person` (verified) and captures consent through the import operation.
async fn capture(
    e: &Env,
    person: &str,
    vertical: &str,
    purpose: Option<&str>,
    window: (i64, Option<i64>),
    evidence: bool,
    fields: Option<Vec<&str>>,
) {
    let file = ImportFile {
        persons: vec![PersonDoc {
            tenant: "ke".into(),
            person_id: person.into(),
            verification: "verified".into(),
            status: "active".into(),
            channels: vec![],
        }],
        consents: vec![ConsentDoc {
            tenant: "ke".into(),
            person_id: person.into(),
            vertical_id: vertical.into(),
            purpose: purpose.map(str::to_owned),
            active_from: rfc3339(window.0),
            active_until: window.1.map(rfc3339),
            evidence_attachment_ids: if evidence {
                vec!["att-1".into()]
            } else {
                vec![]
            },
            fields: fields.map(|f| f.into_iter().map(str::to_owned).collect()),
        }],
    };
    import(consents(e), None, &file, "officer-1", |_| 30)
        .await
        .expect("capture");
}

/// Appends the next version of the head of (person, vertical, purpose) with `status`, as the
/// registry API does for reject and withdraw, and drops the cached entry.
async fn change(e: &Env, person: &str, vertical: &str, status: Recorded, change: Change) {
    let c = consents(e);
    let heads = c
        .store()
        .consent_heads("ke", person, vertical)
        .await
        .unwrap();
    let head = heads.iter().find(|v| v.purpose.is_empty()).unwrap();
    let next = ConsentVersion {
        version: head.version + 1,
        version_id: uuid::Uuid::now_v7().to_string(),
        status,
        change,
        reason_code: Some(
            if status == Recorded::Rejected {
                "IDENTITY_MISMATCH"
            } else {
                "USER_REQUEST"
            }
            .into(),
        ),
        changed_by: "officer-1".into(),
        changed_at_ms: c.now_ms(),
        ..head.clone()
    };
    c.store().consent_append(&next, c.now_ms()).await.unwrap();
    c.invalidate("ke", person, vertical);
}

fn get(e: &Env, path: &str) -> CheckInput {
    Harness::get(path, &e.token)
}

async fn code_get(e: &mut Env, path: &str) -> String {
    let input = get(e, path);
    code(e, &input).await
}

async fn code(e: &mut Env, input: &CheckInput) -> String {
    let r = e.h.check(input).await;
    if r["allowed"] == true {
        "ALLOW".into()
    } else {
        r["code"].as_str().unwrap_or("?").to_owned()
    }
}

async fn code_batch(e: &mut Env, body: &[u8], headers: &[(&str, &str)]) -> String {
    let input = batch(e, body, headers);
    code(e, &input).await
}

fn profile(p: &str) -> String {
    format!("/v1/tenants/ke/profiles/{p}")
}

fn batch(e: &Env, body: &[u8], headers: &[(&str, &str)]) -> CheckInput {
    let mut i = CheckInput {
        method: "POST".into(),
        path: "/v1/tenants/ke/health/encounters/batch".into(),
        headers: vec![
            ("authorization".into(), format!("Bearer {}", e.token)),
            ("content-type".into(), "application/json".into()),
        ],
        body: Some(body.to_vec()),
        ..Default::default()
    };
    for (k, v) in headers {
        i.headers.push(((*k).into(), (*v).into()));
    }
    i
}

/// INT-4.3-1, CON-1, INT-4.4-2 (strictest intersection), EXT-6-2 (no personal data leaves without
/// consent): every vertical the route touches needs the person's consent; consent for one of two
/// verticals (partial consent) is a miss, and the person id never enters the decision log.
/// CON-31: stage 7 runs before data minimization and its checks are recorded by reference.
async fn per_person_per_vertical(store: Option<String>) {
    let mut e = env(store).await;
    let open = (T0 - DAY_MS, None);
    assert_eq!(code_get(&mut e, &profile("q-1")).await, "CONSENT_MISSING");
    capture(&e, "q-1", "health", None, open, true, None).await;
    assert_eq!(code_get(&mut e, &profile("q-1")).await, "CONSENT_MISSING");
    capture(&e, "q-1", "education", None, open, true, None).await;
    assert_eq!(code_get(&mut e, &profile("q-1")).await, "ALLOW");

    let lines = e.h.log_lines(3).await;
    let last = lines.last().unwrap();
    let checks = last["consent_checks"].as_array().unwrap();
    assert_eq!(checks.len(), 2, "{last}");
    assert_eq!(
        checks[0]["person_ref"],
        consents(&e).person_ref("ke", "q-1")
    );
    assert_eq!(checks[0]["result"], "active");
    let stages: Vec<&str> = last["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    let pos = |s: &str| stages.iter().position(|x| *x == s).unwrap();
    assert!(pos("deny_rules") < pos("consent") && pos("consent") < pos("data_minimization"));
    // The person id never enters the decision log.
    assert!(
        !lines.iter().any(|l| l.to_string().contains("\"q-1\"")),
        "person id leaked into the decision log"
    );
    e.h.running.shutdown().await;
}

#[tokio::test]
async fn per_person_per_vertical_sqlite() {
    per_person_per_vertical(None).await;
}

#[tokio::test]
async fn per_person_per_vertical_postgres() {
    per_person_per_vertical(Some(common::fresh_pg_database().await)).await;
}

/// CON-4, CON-5, CON-26, CON-28, CON-20: the active window, expiry (integrations get no grace),
/// the end of grace (treated as withdrawn), each crossed at the millisecond; pending without
/// evidence (CON-13, CON-15); rejected.
async fn time_boundaries(store: Option<String>) {
    let mut e = env(store).await;
    let from = T0 + DAY_MS;
    let until = T0 + 10 * DAY_MS;
    capture(&e, "q-2", "health", None, (from, Some(until)), true, None).await;
    capture(&e, "q-2", "education", None, (T0, None), true, None).await;
    let req = get(&e, &profile("q-2"));
    e.clock.set(from - 1);
    assert_eq!(code(&mut e, &req).await, "CONSENT_PENDING");
    e.clock.set(from);
    assert_eq!(code(&mut e, &req).await, "ALLOW");
    e.clock.set(until - 1);
    assert_eq!(code(&mut e, &req).await, "ALLOW");
    e.clock.set(until);
    assert_eq!(code(&mut e, &req).await, "CONSENT_EXPIRED");
    let grace_end = until + 30 * DAY_MS;
    e.clock.set(grace_end - 1);
    assert_eq!(code(&mut e, &req).await, "CONSENT_EXPIRED");
    e.clock.set(grace_end);
    assert_eq!(code(&mut e, &req).await, "CONSENT_WITHDRAWN");

    // Pending without evidence; rejected.
    e.clock.set(T0);
    capture(&e, "q-3", "health", None, (T0, None), false, None).await;
    capture(&e, "q-3", "education", None, (T0, None), true, None).await;
    let req = get(&e, &profile("q-3"));
    assert_eq!(code(&mut e, &req).await, "CONSENT_PENDING");
    change(&e, "q-3", "health", Recorded::Rejected, Change::Reject).await;
    assert_eq!(code(&mut e, &req).await, "CONSENT_REJECTED");
    e.h.running.shutdown().await;
}

#[tokio::test]
async fn time_boundaries_sqlite() {
    time_boundaries(None).await;
}

#[tokio::test]
async fn time_boundaries_postgres() {
    time_boundaries(Some(common::fresh_pg_database().await)).await;
}

/// INT-4.3-2, INT-4.3-6, INT-9.1-1, CON-22, CON-24: a withdrawal denies the very next request on
/// this replica (the cached allow is dropped at once) with `CONSENT_WITHDRAWN`; INT-4.3-3: the
/// share ledger names the integration that received the data.
#[tokio::test]
async fn withdrawal_denies_at_once_and_shares_are_recorded() {
    let mut e = env(None).await;
    capture(&e, "q-4", "health", None, (T0, None), true, None).await;
    capture(&e, "q-4", "education", None, (T0, None), true, None).await;
    let req = get(&e, &profile("q-4"));
    for _ in 0..3 {
        assert_eq!(code(&mut e, &req).await, "ALLOW");
    }
    let c = consents(&e);
    c.flush_shares().await;
    let shares = c
        .store()
        .consent_shares_of("ke", &c.person_ref("ke", "q-4"), "health")
        .await
        .unwrap();
    assert_eq!(
        shares.iter().map(|s| s.0.as_str()).collect::<Vec<_>>(),
        ["int-ke-consent"]
    );
    change(&e, "q-4", "health", Recorded::Withdrawn, Change::Withdraw).await;
    let r = e.h.check(&req).await;
    assert_eq!(r["code"], "CONSENT_WITHDRAWN", "{r}");
    assert_eq!(r["status"], 403);
    assert_eq!(r["body"]["error"]["retryable"], false, "{r}");
    e.h.running.shutdown().await;
}

/// CON-24, DESIGN.md caches: a withdrawal written by one replica reaches another replica's cache
/// through the change feed (PostgreSQL NOTIFY, polling as the safety net); once the first deny is
/// seen no later request is allowed.
#[tokio::test]
async fn withdrawal_reaches_other_replicas() {
    let url = common::fresh_pg_database().await;
    let a = env_with(Some(url.clone()), |c| c.consent.feed_poll_ms = 200).await;
    let mut b = env_with(Some(url), |c| c.consent.feed_poll_ms = 200).await;
    capture(&a, "q-5", "health", None, (T0, None), true, None).await;
    capture(&a, "q-5", "education", None, (T0, None), true, None).await;
    let req = get(&b, &profile("q-5"));
    assert_eq!(code(&mut b, &req).await, "ALLOW");
    change(&a, "q-5", "health", Recorded::Withdrawn, Change::Withdraw).await;
    let start = std::time::Instant::now();
    let mut denied_at = None;
    for _ in 0..100 {
        let c = code(&mut b, &req).await;
        match (denied_at, c.as_str()) {
            (None, "ALLOW") => {}
            (None, "CONSENT_WITHDRAWN") => denied_at = Some(start.elapsed()),
            (Some(_), "CONSENT_WITHDRAWN") => {}
            (_, other) => panic!("unexpected {other} after the first deny"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t = denied_at.expect("the other replica denies");
    assert!(t < Duration::from_secs(2), "propagation took {t:?}");
    a.h.running.shutdown().await;
    b.h.running.shutdown().await;
}

/// CON-2: a purpose-bound route is decided by the purpose's own consent when there is one, by the
/// vertical-wide consent otherwise, and a withdrawn vertical-wide consent blocks every purpose;
/// the purpose goes upstream as `x-scp-purpose`. INT-4.3-5: field-level consent masks the
/// fields it does not cover.
#[tokio::test]
async fn purposes_and_field_level_consent() {
    let mut e = env(None).await;
    let research = |p: &str| format!("/v1/tenants/ke/health/research/{p}");
    capture(&e, "q-6", "health", None, (T0, None), true, None).await;
    let input = get(&e, &research("q-6"));
    let r = e.h.check(&input).await;
    assert_eq!(r["allowed"], true, "{r}");
    assert_eq!(r["headers_set"]["x-scp-purpose"], "research", "{r}");
    capture(
        &e,
        "q-6",
        "health",
        Some("research"),
        (T0, None),
        false,
        None,
    )
    .await;
    assert_eq!(code_get(&mut e, &research("q-6")).await, "CONSENT_PENDING");

    capture(
        &e,
        "q-7",
        "health",
        Some("research"),
        (T0, None),
        true,
        None,
    )
    .await;
    assert_eq!(code_get(&mut e, &research("q-7")).await, "ALLOW");
    capture(&e, "q-7", "health", None, (T0, None), true, None).await;
    change(&e, "q-7", "health", Recorded::Withdrawn, Change::Withdraw).await;
    assert_eq!(
        code_get(&mut e, &research("q-7")).await,
        "CONSENT_WITHDRAWN"
    );

    capture(
        &e,
        "q-8",
        "health",
        None,
        (T0, None),
        true,
        Some(vec!["name"]),
    )
    .await;
    let input = get(&e, &research("q-8"));
    let r = e.h.check(&input).await;
    assert_eq!(r["allowed"], true, "{r}");
    assert_eq!(r["headers_set"]["x-scp-allowed-fields"], "name", "{r}");
    assert_eq!(
        r["headers_set"]["x-scp-masked-fields"], "diagnosis_code",
        "{r}"
    );
    e.h.running.shutdown().await;
}

/// INT-4.3-1 for batch push: every person in the body (JSON pointer with `*`) needs consent; one
/// miss denies the whole request; a body without the field, not JSON, truncated by Envoy, or
/// with too many persons is `PAYLOAD_INVALID`.
#[tokio::test]
async fn batch_push_reads_persons_from_the_body_sqlite() {
    batch_push(None).await;
}

#[tokio::test]
async fn batch_push_reads_persons_from_the_body_postgres() {
    batch_push(Some(common::fresh_pg_database().await)).await;
}

async fn batch_push(store: Option<String>) {
    let mut e = env_with(store, |c| c.consent.max_persons = 3).await;
    for p in ["q-10", "q-11"] {
        capture(&e, p, "health", None, (T0, None), true, None).await;
    }
    let body = |ids: &[&str]| {
        serde_json::to_vec(&json!({
            "records": ids.iter().map(|p| json!({"person_id": p, "code": "A01"})).collect::<Vec<_>>()
        }))
        .unwrap()
    };
    assert_eq!(
        code_batch(&mut e, &body(&["q-10", "q-11"]), &[]).await,
        "ALLOW"
    );
    assert_eq!(
        code_batch(&mut e, &body(&["q-10", "q-12", "q-11"]), &[]).await,
        "CONSENT_MISSING"
    );
    let input = batch(&e, br#"{"records": [{"code": "A01"}]}"#, &[]);
    let r = e.h.check(&input).await;
    assert_eq!(r["code"], "PAYLOAD_INVALID", "{r}");
    assert_eq!(r["status"], 400);
    assert_eq!(
        code_batch(&mut e, b"not json", &[]).await,
        "PAYLOAD_INVALID"
    );
    assert_eq!(code_batch(&mut e, b"", &[]).await, "PAYLOAD_INVALID");
    assert_eq!(
        code_batch(
            &mut e,
            &body(&["q-10"]),
            &[("x-envoy-auth-partial-body", "true")]
        )
        .await,
        "PAYLOAD_INVALID"
    );
    assert_eq!(
        code_batch(&mut e, &body(&["q-10", "q-11", "p-1", "p-2"]), &[]).await,
        "PAYLOAD_INVALID"
    );
    e.h.running.shutdown().await;
}

/// INT-4.3-4, CON-23, CON-28: an aggregate route is denied while a withdrawal in its vertical is
/// newer than the refresh epoch its producer declared, allowed again after a refresh, and the end
/// of a grace period counts like a withdrawal.
#[tokio::test]
async fn aggregates_respect_withdrawals() {
    let mut e = env(None).await;
    let agg = get(&e, "/v1/tenants/ke/stats/health/summary");
    assert_eq!(code(&mut e, &agg).await, "ALLOW");
    capture(&e, "q-20", "health", None, (T0, None), true, None).await;
    e.clock.advance(1_000);
    change(&e, "q-20", "health", Recorded::Withdrawn, Change::Withdraw).await;
    assert_eq!(code(&mut e, &agg).await, "CONSENT_WITHDRAWN");
    let store = consents(&e).store().clone();
    store
        .consent_set_aggregate_epoch("ke", "consent-health-aggregate", T0 + 2_000, "producer", T0)
        .await
        .unwrap();
    assert_eq!(code(&mut e, &agg).await, "ALLOW");

    // A consent whose grace ends after the epoch blocks from that instant.
    capture(
        &e,
        "q-21",
        "health",
        None,
        (T0, Some(T0 + DAY_MS)),
        true,
        None,
    )
    .await;
    e.clock.set(T0 + 31 * DAY_MS - 1);
    assert_eq!(code(&mut e, &agg).await, "ALLOW");
    e.clock.set(T0 + 31 * DAY_MS);
    // The blocking instant is cached for at most a second.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(code(&mut e, &agg).await, "CONSENT_WITHDRAWN");
    e.h.running.shutdown().await;
}

/// Fail closed (DESIGN.md Scale): when the store cannot be read on a cache miss the answer is 503
/// `DEPENDENCY_UNAVAILABLE`, never an allow; service resumes by itself.
#[tokio::test]
async fn store_down_on_a_miss_denies() {
    let direct = common::fresh_pg_database().await;
    let proxy = common::TcpProxy::start(&common::pg_host_port(&direct)).await;
    let mut e = env_with(Some(common::pg_url_via(&direct, proxy.addr)), |c| {
        c.audit.mode = scp_pep::audit::AuditMode::Off;
        c.store.acquire_timeout_s = 1;
    })
    .await;
    capture(&e, "q-30", "health", None, (T0, None), true, None).await;
    capture(&e, "q-30", "education", None, (T0, None), true, None).await;
    proxy.set_mode(common::ProxyMode::Refuse).await;
    let input = get(&e, &profile("q-30"));
    let r = e.h.check(&input).await;
    assert_eq!(r["code"], "DEPENDENCY_UNAVAILABLE", "{r}");
    assert_eq!(r["status"], 503);
    proxy.set_mode(common::ProxyMode::Up).await;
    let mut ok = false;
    for _ in 0..50 {
        if code_get(&mut e, &profile("q-30")).await == "ALLOW" {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "service resumes when the store returns");
    e.h.running.shutdown().await;
}
