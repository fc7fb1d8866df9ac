//! No personal data in any record scp-pep writes (issue 11): audit records, decision log lines,
//! the live tail, security-incident events and the process log carry route templates and keyed
//! person references, never a person id from the path, query, header or body; records of paths
//! that match no route are bounded; person references are keyed (HMAC) and survive a rotation;
//! records of the previous format keep verifying.
//!
//! Requirement tags: SEC-09, INT-5.3-1, CON-18, INT-8-1, INT-8-2.

use crate::common;

use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use scp_pep::audit::export::{ExportRequest, ExportSink, Format};
use scp_pep::audit::record::{ChainedRecord, genesis_hash, record_hash};
use scp_pep::audit::verify::verify_export;
use scp_pep::check::CheckInput;
use scp_pep::proto::scp::pep::v1::decision_log_client::DecisionLogClient;
use scp_pep::proto::scp::pep::v1::{TailEvent, TailRequest};
use scp_pep::store::Store;
use serde_json::{Value, json};

use common::{Harness, seed_consents};

/// The process log of this test binary (every test shares one global subscriber).
static PROCESS_LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct LogWriter;
impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        PROCESS_LOG.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_process_log() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .json()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info,scp_pep=trace"))
            .with_writer(|| LogWriter)
            .try_init();
    });
}

/// Persons with consent (allowed requests).
const ALLOWED: &[&str] = &[
    "pid-7f3a91c2",
    "pid-3b8e0d14",
    "pid-c41d9e77",
    "pid-9a0f2b63",
    "pid-5e7c1a08",
];
/// Persons without consent, or only in denied requests.
const DENIED: &[&str] = &[
    "pid-d2e6f4a9",
    "pid-0c9b7e35",
    "pid-e8a1c6d3",
    "pid-4e2a8c71",
    "pid-71b4e2f0",
    "pid-a3f5c9e1",
    "pid-b6d8e0f2",
    "pid-f9c3a7b5",
    "pid-2d9f6b3e",
];

fn with_header(mut c: CheckInput, name: &str, value: &str) -> CheckInput {
    c.headers.push((name.into(), value.into()));
    c
}

fn post_json(path: &str, token: &str, body: &Value) -> CheckInput {
    let mut c = Harness::get(path, token);
    c.method = "POST".into();
    c.headers
        .push(("content-type".into(), "application/json".into()));
    c.body = Some(body.to_string().into_bytes());
    c
}

async fn export(store: &Store, tenant: &str) -> String {
    let file = tempfile::NamedTempFile::new().unwrap();
    let w = file.reopen().unwrap();
    let req = ExportRequest {
        tenant: tenant.into(),
        from_ms: 0,
        to_ms: i64::MAX,
        format: Format::Jsonl,
    };
    scp_pep::audit::export::export(store, &req, &[], ExportSink::Write(Box::new(w)))
        .await
        .expect("export");
    std::fs::read_to_string(file.path()).unwrap()
}

async fn open_root_tail(h: &Harness) -> tonic::Streaming<TailEvent> {
    let claims = json!({
        "iss": h.idp.issuer("ke"), "aud": "scp-pep-admin", "sub": "root-1", "tenant_id": "ke",
        "exp": chrono::Utc::now().timestamp() + 300, "iat": chrono::Utc::now().timestamp(),
        "realm_access": {"roles": ["scp-root"]},
    });
    let token = h.sign("ke-rs256", &claims);
    let mut client = DecisionLogClient::connect(format!("http://{}", h.running.grpc_addr))
        .await
        .unwrap();
    let mut req = tonic::Request::new(TailRequest {
        include_events: true,
        ..Default::default()
    });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    client
        .tail(req)
        .await
        .expect("root tail opens")
        .into_inner()
}

/// SEC-09, INT-5.3-1, CON-18, INT-8-1: allowed and denied requests that name persons in the
/// path, the query, a header and a JSON body, requests denied before routing, an ambiguous path,
/// a cross-tenant path and a path that matches no route, through the real gRPC server: no person
/// id appears in the audit export, the decision log, the live tail (readable and JSON forms) or
/// the process log; records carry route templates (format 2) and a 256 KiB unrouted path makes a
/// small record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_person_id_in_any_record() {
    capture_process_log();
    let mut h = Harness::start(None).await;
    let persons: Vec<String> = ALLOWED.iter().map(|s| s.to_string()).collect();
    seed_consents(
        &h.running.consents,
        "ke",
        &["health", "education"],
        &persons,
    )
    .await;
    let mut tail = open_root_tail(&h).await;

    let claims = h.claims(
        "ke",
        "int-ke-consent",
        &["health", "education"],
        "health:person:read health:encounter:write profile:read",
    );
    let token = h.sign("ke-rs256", &claims);
    let narrow = h.sign(
        "ke-rs256",
        &h.claims("ke", "int-ke-consent", &["health"], "profile:read"),
    );
    let huge = format!("/v1/tenants/ke/x/pid-2d9f6b3e{}", "a".repeat(256 * 1024));
    let batch = |ids: &[&str]| json!({"records": ids.iter().map(|p| json!({"person_id": p})).collect::<Vec<_>>()});
    let cases: Vec<(CheckInput, &str)> = vec![
        // path
        (
            Harness::get("/v1/tenants/ke/health/persons/pid-7f3a91c2/record", &token),
            "OK",
        ),
        (
            Harness::get("/v1/tenants/ke/profiles/pid-d2e6f4a9", &token),
            "CONSENT_MISSING",
        ),
        // query
        (
            Harness::get("/v1/tenants/ke/health/lookup?pid=pid-3b8e0d14", &token),
            "OK",
        ),
        (
            Harness::get("/v1/tenants/ke/health/lookup?pid=pid-0c9b7e35", &token),
            "CONSENT_MISSING",
        ),
        // header
        (
            with_header(
                Harness::get("/v1/tenants/ke/health/current", &token),
                "x-person-id",
                "pid-c41d9e77",
            ),
            "OK",
        ),
        (
            with_header(
                Harness::get("/v1/tenants/ke/health/current", &narrow),
                "x-person-id",
                "pid-e8a1c6d3",
            ),
            "SCOPE_VIOLATION",
        ),
        // JSON body
        (
            post_json(
                "/v1/tenants/ke/health/encounters/batch",
                &token,
                &batch(&["pid-9a0f2b63", "pid-5e7c1a08"]),
            ),
            "OK",
        ),
        (
            post_json(
                "/v1/tenants/ke/health/encounters/batch",
                &token,
                &batch(&["pid-5e7c1a08", "pid-4e2a8c71"]),
            ),
            "CONSENT_MISSING",
        ),
        // no route, ambiguous, before routing, cross-tenant, huge
        (
            Harness::get("/v1/tenants/ke/health/persons/pid-71b4e2f0/nothing", &token),
            "ROUTE_NOT_FOUND",
        ),
        (
            Harness::get(
                "/v1/tenants/ke/health/persons/pid-a3f5c9e1/../record",
                &token,
            ),
            "PATH_AMBIGUOUS",
        ),
        (
            CheckInput {
                headers: vec![],
                ..Harness::get("/v1/tenants/ke/health/persons/pid-b6d8e0f2/record", "")
            },
            "TOKEN_MISSING",
        ),
        (
            Harness::get(
                "/v1/tenants/pid-f9c3a7b5/health/persons/pid-f9c3a7b5/record",
                &token,
            ),
            "TENANT_MISMATCH",
        ),
        (Harness::get(&huge, &token), "ROUTE_NOT_FOUND"),
    ];
    let n = cases.len();
    for (input, want) in &cases {
        let got = h.check(input).await;
        assert_eq!(
            got["code"],
            *want,
            "{}: {got}",
            &input.path[..80.min(input.path.len())]
        );
    }

    // The live tail: every decision of the requests above, and the incident events.
    let mut tail_text = String::new();
    let mut decisions = 0;
    while decisions < n {
        let ev = tokio::time::timeout(Duration::from_secs(10), tail.message())
            .await
            .expect("tail event within 10 s")
            .unwrap()
            .unwrap();
        if ev.kind == "decision" {
            decisions += 1;
        }
        tail_text.push_str(&scp_pep::tail::format_line(&ev));
        tail_text.push('\n');
        tail_text.push_str(&scp_pep::tail::json_line(&ev).to_string());
        tail_text.push('\n');
    }

    let audit_ke = export(&h.running.store, "ke").await;
    let audit_unattributed = export(&h.running.store, "_").await;
    let log = h.log_lines(n).await;
    let log_text = std::fs::read_to_string(&h.log_path).unwrap();
    let process_log = String::from_utf8(PROCESS_LOG.lock().unwrap().clone()).unwrap();
    assert!(!process_log.is_empty(), "the process log is captured");

    for p in ALLOWED.iter().chain(DENIED) {
        for (what, text) in [
            ("audit export (ke)", &audit_ke),
            ("audit export (_)", &audit_unattributed),
            ("decision log", &log_text),
            ("live tail", &tail_text),
            ("process log", &process_log),
        ] {
            assert!(!text.contains(p), "{p} appears in the {what}");
        }
    }

    // Records carry templates, format 2, and bounded shapes for unrouted paths.
    let bodies: Vec<Value> = audit_ke
        .lines()
        .chain(audit_unattributed.lines())
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        // Export lines embed the canonical body as a JSON object.
        .filter_map(|v| v.get("body").filter(|b| b.is_object()).cloned())
        .filter(|b| b["kind"] == "decision")
        .collect();
    assert_eq!(bodies.len(), n, "one audit record per decision");
    for b in &bodies {
        assert_eq!(b["format"], 3, "{b}");
        if b["integration_id"].is_string() {
            assert!(
                b["inputs"]["scopes"].is_array(),
                "format 3 records the token's scopes: {b}"
            );
        }
        assert!(b["policy_version"].as_i64().is_some(), "{b}");
        assert!(b.to_string().len() < 4096, "record is bounded: {b}");
    }
    let by_route = |r: &str| bodies.iter().find(|b| b["route_id"] == r).unwrap();
    assert_eq!(
        by_route("health-person-record")["path"],
        "/v1/tenants/ke/health/persons/{person_id}/record"
    );
    assert_eq!(
        by_route("health-lookup")["path"],
        "/v1/tenants/ke/health/lookup"
    );
    let allowed_path = by_route("health-person-record");
    let pref = allowed_path["consent_checks"][0]["person_ref"]
        .as_str()
        .unwrap();
    assert_eq!(
        pref,
        h.running.consents.person_ref("ke", "pid-7f3a91c2"),
        "keyed reference"
    );
    assert!(pref.starts_with(&format!("{}:", h.running.consents.refs().key_id())));
    // Denied before routing: the template when the path has one.
    let missing = bodies
        .iter()
        .find(|b| b["code"] == "TOKEN_MISSING")
        .unwrap();
    assert_eq!(
        missing["path"],
        "/v1/tenants/ke/health/persons/{person_id}/record"
    );
    assert!(missing["path_hash"].is_null());
    // Cross-tenant: an unknown tenant segment stays `{tenant}`.
    let cross = bodies
        .iter()
        .find(|b| b["code"] == "TENANT_MISMATCH")
        .unwrap();
    assert_eq!(
        cross["path"],
        "/v1/tenants/{tenant}/health/persons/{person_id}/record"
    );
    // No route: a sanitized shape, the length and a keyed hash.
    let nothing = bodies
        .iter()
        .find(|b| b["code"] == "ROUTE_NOT_FOUND" && b["path_bytes"].as_u64() < Some(1000))
        .unwrap();
    assert_eq!(nothing["path"], "/v1/tenants/ke/health/persons/{?}/{?}");
    assert!(nothing["path_hash"].as_str().unwrap().contains(':'));
    let big = bodies
        .iter()
        .find(|b| b["path_bytes"].as_u64() > Some(256 * 1024))
        .unwrap();
    assert_eq!(big["path"], "/v1/tenants/ke/{?}/{?}");
    assert!(big.to_string().len() < 2048, "{big}");
    let ambiguous = bodies
        .iter()
        .find(|b| b["code"] == "PATH_AMBIGUOUS")
        .unwrap();
    assert!(
        ambiguous["path"].as_str().unwrap().contains("{?}"),
        "{ambiguous}"
    );
    // The decision log line has the same recorded path.
    assert!(log.iter().all(|l| l["path"].as_str().unwrap().len() <= 256));
    // Incident details (cross-tenant) carry the template too.
    assert!(audit_ke.contains("security_incident"));
    h.running.shutdown().await;
}

/// SEC-09, CON-18, INT-8-2: two deployments with different person_ref keys produce different
/// references; after a rotation (new key, old key kept as previous) the share ledger still finds
/// the shares written under the old key, and the audit log written under both keys verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_person_ref_rotation() {
    const K1: &str = "k1-0123456789abcdef0123456789abcdef0123456789";
    const K2: &str = "k2-fedcba9876543210fedcba9876543210fedcba9876";
    let mut h1 = Harness::start_with(None, |c| c.audit.person_ref_key = Some(K1.into())).await;
    let persons = vec!["pid-6a1e3c9d".to_string()];
    seed_consents(
        &h1.running.consents,
        "ke",
        &["health", "education"],
        &persons,
    )
    .await;
    let token = h1.sign(
        "ke-rs256",
        &h1.claims("ke", "int-ke-consent", &["health"], "health:person:read"),
    );
    let req = Harness::get("/v1/tenants/ke/health/persons/pid-6a1e3c9d/record", &token);
    assert_eq!(h1.check(&req).await["code"], "OK");
    let ref1 = h1.running.consents.person_ref("ke", "pid-6a1e3c9d");
    h1.running.consents.flush_shares().await;
    let store_url = h1.store_url.clone();
    let line1 = h1.log_lines(1).await.pop().unwrap();
    assert_eq!(line1["consent_checks"][0]["person_ref"], ref1.as_str());
    h1.running.shutdown().await;

    // Rotation: K2 current, K1 previous, same store.
    let mut h2 = Harness::start_with(Some(store_url), |c| {
        c.audit.person_ref_key = Some(K2.into());
        c.audit.person_ref_previous_keys = vec![K1.into()];
    })
    .await;
    let ref2 = h2.running.consents.person_ref("ke", "pid-6a1e3c9d");
    assert_ne!(ref1, ref2, "different keys, different references");
    assert_ne!(
        ref1.split(':').next(),
        ref2.split(':').next(),
        "key ids differ"
    );
    let shares = h2
        .running
        .consents
        .shares_of("ke", "pid-6a1e3c9d", "health")
        .await
        .unwrap();
    assert_eq!(
        shares.iter().map(|s| s.0.as_str()).collect::<Vec<_>>(),
        ["int-ke-consent"],
        "the share written under the previous key is found"
    );
    let token = h2.sign(
        "ke-rs256",
        &h2.claims("ke", "int-ke-consent", &["health"], "health:person:read"),
    );
    let req = Harness::get("/v1/tenants/ke/health/persons/pid-6a1e3c9d/record", &token);
    assert_eq!(h2.check(&req).await["code"], "OK");
    let line2 = h2.log_lines(1).await.pop().unwrap();
    assert_eq!(line2["consent_checks"][0]["person_ref"], ref2.as_str());
    let text = export(&h2.running.store, "ke").await;
    assert!(text.contains(&ref1) && text.contains(&ref2));
    let report = verify_export(std::io::Cursor::new(text.as_bytes()), None);
    assert!(report.ok, "{report:?}");
    h2.running.shutdown().await;
}

/// INT-8-2: records of the previous decision format (format 1: no `format` key, the request path
/// in `path`, unkeyed person references) still verify, from the store and as an export, next to
/// format-2 records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn format_1_records_still_verify() {
    let mut h = Harness::start(None).await;
    let token = h.sign(
        "ke-rs256",
        &h.claims("ke", "int-ke-consent", &["health"], "health:person:read"),
    );
    let req = Harness::get("/v1/tenants/ke/health/persons/p-1/record", &token);
    assert_eq!(h.check(&req).await["code"], "OK");

    // A format-1 chain as the previous release wrote it.
    let store = &h.running.store;
    let (key_id, verifier_key): (String, String) = match store {
        Store::Sqlite(p) => sqlx::query_as(
            "SELECT key_id, verifier_key FROM audit_chains WHERE tenant_id = 'ke' LIMIT 1",
        )
        .fetch_one(p)
        .await
        .unwrap(),
        Store::Postgres(_) => unreachable!(),
    };
    let chain_id = "0190f1a0-0000-7000-8000-00000000f0f1".to_string();
    let row = scp_pep::audit::store::ChainRow {
        chain_id: chain_id.clone(),
        tenant_id: "ke".into(),
        writer: "old-release".into(),
        created_ms: 1_700_000_000_000,
        key_id,
        verifier_key,
    };
    let v1 = |i: u64| {
        format!(
            r#"{{"action":"read","allowed_fields":null,"client_id":"int-ke-consent","code":"OK","consent_checks":[{{"person_ref":"0123456789abcdef0123456789abcdef","purpose":null,"result":"active","vertical":"health"}}],"data_categories":[],"decision_id":"0190f1a0-0000-7000-8000-00000000000{i}","incidents":[],"integration_id":"int-ke-consent","kind":"decision","masked_fields":[],"message":null,"method":"GET","outcome":"allow","path":"/v1/tenants/ke/health/persons/p-{i}/record","persons":1,"resource":"person_health_record","route_id":"health-person-record","scopes":["health:person:read"],"stages":["authenticate"],"tenant_id":"ke","time":"2023-11-14T22:13:2{i}.000000Z","verticals":["health"]}}"#
        )
    };
    let mut prev = genesis_hash(&chain_id);
    let mut records = Vec::new();
    for seq in 1..=3u64 {
        let body = v1(seq);
        let hash = record_hash(seq, &prev, body.as_bytes());
        records.push(ChainedRecord {
            chain_id: chain_id.clone(),
            seq,
            tenant_id: "ke".into(),
            time_ms: 1_700_000_000_000 + seq as i64 * 1000,
            kind: "decision".into(),
            event_id: format!("0190f1a0-0000-7000-8000-00000000000{seq}"),
            prev_hash: prev,
            hash,
            body,
        });
        prev = hash;
    }
    scp_pep::audit::store::write_batch(store, &[row], &records)
        .await
        .unwrap();

    let text = export(store, "ke").await;
    assert!(text.contains(r#""path":"/v1/tenants/ke/health/persons/p-1/record""#));
    assert!(text.contains(r#""format":3"#));
    let report = verify_export(std::io::Cursor::new(text.as_bytes()), None);
    assert!(report.ok, "{report:?}");
    assert!(report.chains >= 2, "{report:?}");
    h.running.shutdown().await;
}
