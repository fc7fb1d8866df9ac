//! The live decision-log tail (`scp.pep.v1.DecisionLog/Tail`, `scp-pep audit tail`) against the
//! real server: admin authorization, filters, audit of every tail, slow consumers, the CLI.

use crate::common;

use std::time::Duration;

use common::Harness;
use scp_pep::check::{build_request, response_json};
use scp_pep::proto::scp::pep::v1::decision_log_client::DecisionLogClient;
use scp_pep::proto::scp::pep::v1::{TailEvent, TailRequest};
use serde_json::Value;
use tonic::{Code, Status, Streaming};

const KE_RECORD: &str = "/v1/tenants/ke/health/persons/p-1/record";
const UG_RECORD: &str = "/v1/tenants/ug/health/persons/p-1/record";
const KE_ENROLMENT: &str = "/v1/tenants/ke/education/students/p-1/enrolment";

/// An admin token of `tenant`'s issuer, signed with the tenant's published key.
fn admin_token(h: &Harness, tenant: &str, sub: &str, roles: &[&str], aud: &str) -> String {
    h.staff_token(tenant, sub, roles, aud)
}

fn auditor(h: &Harness) -> String {
    admin_token(h, "ke", "auditor-1", &["scp-auditor"], "scp-pep-admin")
}

/// Opens a tail over the real gRPC listener with the generated client.
async fn open_tail(
    h: &Harness,
    token: Option<&str>,
    req: TailRequest,
) -> Result<Streaming<TailEvent>, Status> {
    let mut client = DecisionLogClient::connect(format!("http://{}", h.running.grpc_addr))
        .await
        .expect("client connects");
    let mut req = tonic::Request::new(req);
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    client.tail(req).await.map(tonic::Response::into_inner)
}

/// The next event of `s` (≤ 10 s).
async fn next(s: &mut Streaming<TailEvent>) -> TailEvent {
    tokio::time::timeout(Duration::from_secs(10), s.message())
        .await
        .expect("an event within 10 s")
        .expect("the stream does not fail")
        .expect("the stream does not end")
}

/// A partner token: `integration` of `tenant` with `scope`.
fn partner(
    h: &Harness,
    tenant: &str,
    integration: &str,
    verticals: &[&str],
    scope: &str,
) -> String {
    h.sign(
        &format!("{tenant}-rs256"),
        &h.claims(tenant, integration, verticals, scope),
    )
}

/// Sends one check and returns its code.
async fn code_of(h: &mut Harness, path: &str, token: &str) -> String {
    h.check(&Harness::get(path, token)).await["code"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// `scp_pep_audit_tail_dropped_total` from `/metrics` (0 when absent).
async fn dropped_metric(h: &Harness) -> f64 {
    let text = h.metrics_text().await;
    text.lines()
        .filter(|l| l.starts_with("scp_pep_audit_tail_dropped_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Counts audit records of `kind` whose body contains `needle`.
async fn records_in_store(h: &Harness, kind: &str, needle: &str) -> i64 {
    let pool = sqlx::SqlitePool::connect(&h.store_url).await.unwrap();
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM audit_records WHERE kind = ? AND instr(body, ?) > 0",
    )
    .bind(kind)
    .bind(needle)
    .fetch_one(&pool)
    .await
    .unwrap();
    pool.close().await;
    n
}

/// EXT-6-1, INT-8-1: an auditor follows its own tenant's decisions as they are committed; the
/// deny-only and integration filters select, the other tenant's decisions never appear, and each
/// event carries the committed record (chain, seq, canonical body).
#[tokio::test]
async fn auditor_tails_its_tenant_with_filters() {
    let mut h = Harness::start(None).await;
    let token = auditor(&h);
    let mut all = open_tail(&h, Some(&token), TailRequest::default())
        .await
        .expect("auditor may tail its tenant");
    let mut denies = open_tail(
        &h,
        Some(&token),
        TailRequest {
            outcome: "deny".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut edu = open_tail(
        &h,
        Some(&token),
        TailRequest {
            integration_id: "int-ke-edu".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut codes = open_tail(
        &h,
        Some(&token),
        TailRequest {
            codes: vec!["SCOPE_VIOLATION".into()],
            ..Default::default()
        },
    )
    .await
    .unwrap();

    let moh = partner(&h, "ke", "int-ke-moh", &["health"], "health:person:read");
    let moh_wrong_scope = partner(
        &h,
        "ke",
        "int-ke-moh",
        &["health"],
        "health:encounter:write",
    );
    let edu_token = partner(
        &h,
        "ke",
        "int-ke-edu",
        &["education"],
        "education:student:read",
    );
    let ug = partner(&h, "ug", "int-ug-moh", &["health"], "health:person:read");
    assert_eq!(code_of(&mut h, KE_RECORD, &moh).await, "OK");
    assert_eq!(
        code_of(&mut h, KE_RECORD, &moh_wrong_scope).await,
        "SCOPE_VIOLATION"
    );
    assert_eq!(code_of(&mut h, KE_ENROLMENT, &edu_token).await, "OK");
    assert_eq!(code_of(&mut h, UG_RECORD, &ug).await, "OK");
    assert_eq!(code_of(&mut h, KE_RECORD, &moh).await, "OK");

    // Unfiltered: ke's four decisions in commit order; ug's is not among them.
    let mut seen = Vec::new();
    for _ in 0..4 {
        let ev = next(&mut all).await;
        assert_eq!(
            (ev.kind.as_str(), ev.tenant_id.as_str()),
            ("decision", "ke")
        );
        assert_eq!(ev.dropped, 0);
        assert!(!ev.chain_id.is_empty() && ev.seq > 0);
        let body: Value = serde_json::from_str(&ev.body).expect("body is JSON");
        assert_eq!(body["code"], ev.code.as_str());
        assert_eq!(body["tenant_id"], "ke");
        assert!(body["decision_id"].as_str().is_some_and(|d| !d.is_empty()));
        seen.push((ev.integration_id, ev.outcome, ev.code));
    }
    let s = |a: &str, b: &str, c: &str| (a.to_owned(), b.to_owned(), c.to_owned());
    assert_eq!(
        seen,
        vec![
            s("int-ke-moh", "allow", "OK"),
            s("int-ke-moh", "deny", "SCOPE_VIOLATION"),
            s("int-ke-edu", "allow", "OK"),
            s("int-ke-moh", "allow", "OK"),
        ]
    );

    // Deny-only: just the scope violation; then the next deny is the next event.
    let ev = next(&mut denies).await;
    assert_eq!(
        (ev.outcome.as_str(), ev.code.as_str()),
        ("deny", "SCOPE_VIOLATION")
    );
    let ev = next(&mut codes).await;
    assert_eq!(ev.code, "SCOPE_VIOLATION");
    // Integration filter: only int-ke-edu.
    let ev = next(&mut edu).await;
    assert_eq!(ev.integration_id, "int-ke-edu");

    // Nothing else slipped through the filters: the next matching decision is the next event.
    assert_eq!(
        code_of(&mut h, KE_RECORD, &moh_wrong_scope).await,
        "SCOPE_VIOLATION"
    );
    assert_eq!(code_of(&mut h, KE_ENROLMENT, &edu_token).await, "OK");
    assert_eq!(next(&mut denies).await.code, "SCOPE_VIOLATION");
    assert_eq!(next(&mut codes).await.code, "SCOPE_VIOLATION");
    let e2 = next(&mut edu).await;
    assert_eq!(
        (e2.integration_id.as_str(), e2.code.as_str()),
        ("int-ke-edu", "OK")
    );
    h.running.shutdown().await;
}

/// EXT-6-1: opening a tail is itself an audit record (`audit_access`, actor = the admin subject,
/// detail = the filters), committed before the first event; with `include_events` the tail shows
/// non-decision records, its own access among them.
#[tokio::test]
async fn opening_a_tail_is_audited_and_events_are_opt_in() {
    let h = Harness::start(None).await;
    let token = auditor(&h);
    let mut s = open_tail(
        &h,
        Some(&token),
        TailRequest {
            include_events: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        records_in_store(&h, "audit_access", "\"actor\":\"auditor-1\"").await,
        1,
        "the access is committed before the tail is granted"
    );
    // Its own access record is among the first events (after the chain start, if any).
    let ev = loop {
        let ev = next(&mut s).await;
        if ev.kind == "audit_access" {
            break ev;
        }
        assert_ne!(ev.kind, "decision", "no decision was made yet");
    };
    assert_eq!(
        (ev.kind.as_str(), ev.tenant_id.as_str()),
        ("audit_access", "ke")
    );
    let body: Value = serde_json::from_str(&ev.body).unwrap();
    assert_eq!(body["actor"], "auditor-1");
    assert_eq!(body["detail"]["action"], "tail");
    assert_eq!(body["detail"]["filters"]["tenant_id"], "ke");
    assert_eq!(body["detail"]["filters"]["include_events"], true);
    assert_eq!(records_in_store(&h, "root_bypass", "").await, 0);

    // An open tail ends with the server and does not hold up its shutdown.
    tokio::time::timeout(Duration::from_secs(4), h.running.shutdown())
        .await
        .expect("shutdown is not held up by an open tail");
    let end = tokio::time::timeout(Duration::from_secs(4), s.message())
        .await
        .expect("the tail ends with the server");
    assert!(matches!(end, Ok(None) | Err(_)), "{end:?}");
}

/// EXT-6-1: no token, a token for another audience, a role without audit rights and another
/// tenant are refused with the right gRPC status, and no message repeats the token.
#[tokio::test]
async fn tail_refuses_unauthenticated_and_unauthorized_callers() {
    let h = Harness::start(None).await;
    let err = open_tail(&h, None, TailRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");

    let wrong_aud = admin_token(&h, "ke", "auditor-1", &["scp-auditor"], "scp-pep");
    let err = open_tail(&h, Some(&wrong_aud), TailRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(!err.message().contains(&wrong_aud));

    let partner_role = admin_token(&h, "ke", "someone", &["partner-admin"], "scp-pep-admin");
    let err = open_tail(&h, Some(&partner_role), TailRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(!err.message().contains(&partner_role));

    let token = auditor(&h);
    let err = open_tail(
        &h,
        Some(&token),
        TailRequest {
            tenant_id: "ug".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    let bad = open_tail(&h, Some("not.a.jwt"), TailRequest::default())
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::Unauthenticated);

    // A refused tail is not an access: nothing was recorded for it.
    assert_eq!(records_in_store(&h, "audit_access", "").await, 0);
    h.running.shutdown().await;
}

/// EXT-6-1, ADM-2: root tails every tenant; every root tail is recorded as a `root_bypass` event
/// as well as an `audit_access` event, in each tenant whose records it shows.
#[tokio::test]
async fn root_tails_every_tenant_and_is_recorded_as_bypass() {
    let mut h = Harness::start(None).await;
    let root = admin_token(&h, "ke", "root-1", &["scp-root"], "scp-pep-admin");
    let mut s = open_tail(&h, Some(&root), TailRequest::default())
        .await
        .expect("root may tail everything");
    let moh = partner(&h, "ke", "int-ke-moh", &["health"], "health:person:read");
    let ug = partner(&h, "ug", "int-ug-moh", &["health"], "health:person:read");
    assert_eq!(code_of(&mut h, KE_RECORD, &moh).await, "OK");
    assert_eq!(code_of(&mut h, UG_RECORD, &ug).await, "OK");
    let a = next(&mut s).await;
    let b = next(&mut s).await;
    assert_eq!(
        (a.tenant_id.as_str(), b.tenant_id.as_str()),
        ("ke", "ug"),
        "both tenants' decisions"
    );
    // Recorded in every tenant whose records the tail shows (ke and ug), once each.
    for kind in ["root_bypass", "audit_access"] {
        assert_eq!(records_in_store(&h, kind, "\"actor\":\"root-1\"").await, 2);
        for t in ["ke", "ug"] {
            let n = records_in_store(&h, kind, &format!("\"tenant_id\":\"{t}\"")).await;
            assert_eq!(n, 1, "{kind} in {t}");
        }
    }

    // Root may also name another tenant; that is a bypass too.
    let mut only_ug = open_tail(
        &h,
        Some(&root),
        TailRequest {
            tenant_id: "ug".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(code_of(&mut h, KE_RECORD, &moh).await, "OK");
    assert_eq!(code_of(&mut h, UG_RECORD, &ug).await, "OK");
    assert_eq!(next(&mut only_ug).await.tenant_id, "ug");
    assert_eq!(
        records_in_store(&h, "root_bypass", "\"actor\":\"root-1\"").await,
        3
    );
    h.running.shutdown().await;
}

/// INT-8-1: a tail that never reads does not fail or hold up decisions: every check is answered
/// OK while the tail falls behind; the tail loses records (counted in
/// `scp_pep_audit_tail_dropped_total`) and, once it reads, a marker says how many.
#[tokio::test]
async fn slow_consumer_never_slows_decisions() {
    let mut h = Harness::start_with(None, |c| c.audit.tail_capacity = 16).await;
    let token = auditor(&h);
    let mut slow = open_tail(&h, Some(&token), TailRequest::default())
        .await
        .unwrap();
    let moh = partner(&h, "ke", "int-ke-moh", &["health"], "health:person:read");
    let input = Harness::get(KE_RECORD, &moh);
    let mut answered = 0usize;
    for round in 0.. {
        assert!(
            round < 20,
            "the tail never fell behind after {answered} checks"
        );
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..200 {
            let mut c = h.client.clone();
            let req = build_request(&input);
            set.spawn(async move { c.check(req).await });
        }
        while let Some(r) = set.join_next().await {
            let resp = r.unwrap().expect("no gRPC error").into_inner();
            assert_eq!(response_json(&resp)["code"], "OK");
            answered += 1;
        }
        if dropped_metric(&h).await > 0.0 {
            break;
        }
    }
    // Reading now: every decision is either delivered or reported lost by a marker.
    let answered = answered as u64;
    let (mut delivered, mut dropped) = (0u64, 0u64);
    tokio::time::timeout(Duration::from_secs(20), async {
        while delivered + dropped < answered {
            let ev = slow.message().await.unwrap().expect("the tail stays open");
            if ev.dropped > 0 {
                assert!(ev.seq == 0 && ev.body.is_empty() && ev.kind.is_empty());
                dropped += ev.dropped;
            } else {
                assert_eq!(ev.kind, "decision");
                delivered += 1;
            }
        }
    })
    .await
    .expect("all records or markers within 20 s");
    assert!(dropped > 0, "a dropped marker was sent");
    assert_eq!(delivered + dropped, answered, "every loss is reported");
    // The log lost nothing: every decision was committed.
    assert!(records_in_store(&h, "decision", "").await >= answered as i64);
    // The tail goes on after the loss: the next decision is the next event.
    assert_eq!(code_of(&mut h, KE_RECORD, &moh).await, "OK");
    let ev = next(&mut slow).await;
    assert_eq!((ev.kind.as_str(), ev.dropped), ("decision", 0));
    h.running.shutdown().await;
}

fn tail_cmd(h: &Harness, token: Option<&str>, args: &[&str]) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_scp-pep"));
    c.env("RUST_LOG", "warn")
        .env_remove("SCP_PEP_ADMIN_TOKEN")
        .args(["audit", "tail", "--server"])
        .arg(format!("http://{}", h.running.grpc_addr))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    if let Some(t) = token {
        c.env("SCP_PEP_ADMIN_TOKEN", t);
    }
    c
}

/// Runs `cmd` while sending `checks` (path, token; round robin) until it exits (≤ 30 s).
async fn run_while_checking(
    h: &mut Harness,
    mut cmd: tokio::process::Command,
    checks: &[(&str, &str)],
) -> std::process::Output {
    let child = cmd.spawn().unwrap();
    let out = child.wait_with_output();
    tokio::pin!(out);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut i = 0;
    loop {
        tokio::select! {
            o = &mut out => return o.unwrap(),
            _ = tokio::time::sleep(Duration::from_millis(50)) => {
                assert!(tokio::time::Instant::now() < deadline, "scp-pep audit tail did not exit");
                let (path, token) = checks[i % checks.len()];
                i += 1;
                h.check(&Harness::get(path, token)).await;
            }
        }
    }
}

/// EXT-6-1, INT-8-1: `scp-pep audit tail --json --count 2` prints two JSON records (the TailEvent
/// fields, body parsed) and exits 0; the readable form prints one line per decision; a missing or
/// rejected token exits 2 naming the gRPC status, never the token.
#[tokio::test]
async fn cli_tail_prints_json_and_readable_lines() {
    let mut h = Harness::start(None).await;
    let token = auditor(&h);
    let moh = partner(&h, "ke", "int-ke-moh", &["health"], "health:person:read");
    let wrong = partner(
        &h,
        "ke",
        "int-ke-moh",
        &["health"],
        "health:encounter:write",
    );

    let cmd = tail_cmd(&h, Some(&token), &["--json", "--count", "2"]);
    let out = run_while_checking(&mut h, cmd, &[(KE_RECORD, moh.as_str())]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert_eq!(lines.len(), 2);
    for l in &lines {
        assert_eq!(l["kind"], "decision");
        assert_eq!(l["tenant_id"], "ke");
        assert_eq!(l["integration_id"], "int-ke-moh");
        assert_eq!(l["code"], "OK");
        assert_eq!(l["dropped"], 0);
        assert!(l["seq"].as_u64().unwrap() > 0);
        assert_eq!(
            l["body"]["path"], "/v1/tenants/ke/health/persons/{person_id}/record",
            "body is parsed JSON, with the route template"
        );
    }

    let cmd = tail_cmd(&h, Some(&token), &["--deny-only", "--count", "1"]);
    let checks = [(KE_RECORD, moh.as_str()), (KE_RECORD, wrong.as_str())];
    let out = run_while_checking(&mut h, cmd, &checks).await;
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout.lines().next().expect("one line");
    assert!(
        line.contains(" DENY  SCOPE_VIOLATION ")
            // The recorded path is the route template, never the person id (SEC-09).
            && line.contains(
                "ke/int-ke-moh GET /v1/tenants/ke/health/persons/{person_id}/record route=health-person-record "
            )
            && line.contains("µs decision="),
        "{line}"
    );
    assert_eq!(stdout.lines().count(), 1);

    let out = tail_cmd(&h, None, &[]).output().await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no admin token"));

    let wrong_aud = admin_token(&h, "ke", "auditor-1", &["scp-auditor"], "scp-pep");
    let out = tail_cmd(&h, Some(&wrong_aud), &[]).output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("UNAUTHENTICATED"), "{stderr}");
    assert!(!stderr.contains(&wrong_aud));

    let out = tail_cmd(&h, Some(&token), &["--tenant", "ug"])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("PERMISSION_DENIED"), "{stderr}");
    h.running.shutdown().await;
}

/// EXT-6-1, INT-8-1 (security staff view): `audit tail --route` keeps only that route's
/// decisions, and `--summary` prints one line per minute with the decisions counted per code
/// (here at exit, after `--count`), as text or JSON.
#[tokio::test]
async fn cli_tail_filters_by_route_and_summarizes_per_minute() {
    let mut h = Harness::start(None).await;
    let token = auditor(&h);
    let moh = partner(&h, "ke", "int-ke-moh", &["health"], "health:person:read");
    let wrong = partner(
        &h,
        "ke",
        "int-ke-moh",
        &["health"],
        "health:encounter:write",
    );
    let edu = partner(
        &h,
        "ke",
        "int-ke-edu",
        &["education"],
        "education:student:read",
    );
    // Two record checks (one allowed, one out of scope) and one enrolment check per round;
    // only the record route's decisions are counted.
    let checks = [
        (KE_RECORD, moh.as_str()),
        (KE_ENROLMENT, edu.as_str()),
        (KE_RECORD, wrong.as_str()),
    ];
    let cmd = tail_cmd(
        &h,
        Some(&token),
        &[
            "--route",
            "health-person-record",
            "--summary",
            "--json",
            "--count",
            "4",
        ],
    );
    let out = run_while_checking(&mut h, cmd, &checks).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    // Four decisions, in one minute or across a minute boundary.
    let total: u64 = lines.iter().map(|l| l["decisions"].as_u64().unwrap()).sum();
    assert_eq!(total, 4, "{lines:?}");
    let count = |code: &str| -> u64 {
        lines
            .iter()
            .map(|l| l["codes"][code].as_u64().unwrap_or(0))
            .sum()
    };
    assert_eq!(count("OK") + count("SCOPE_VIOLATION"), 4, "{lines:?}");
    assert!(
        count("OK") >= 1 && count("SCOPE_VIOLATION") >= 1,
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .all(|l| l["minute"].as_str().unwrap().ends_with('Z')),
        "{lines:?}"
    );

    let cmd = tail_cmd(
        &h,
        Some(&token),
        &[
            "--route",
            "health-person-record",
            "--summary",
            "--count",
            "2",
        ],
    );
    let out = run_while_checking(&mut h, cmd, &checks).await;
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(
        text.lines().all(|l| l.contains(" decisions=")) && text.contains("OK="),
        "{text}"
    );
}
