//! The tamper-evident audit log against real stores: chains, group commit, checkpoints, export,
//! verification, tamper detection, append-only triggers, retention, the CLI.
//!
//! Requirement tags: INT-8-1 (a record per decision), INT-8-2 (append-only, tamper-evident,
//! retained, exportable), ADM-2 / CON-19 / CON-37 / ONB-AUD-1 (events), EXT-4.1-1 (export formats).

use crate::common;

use std::time::Duration;

use chrono::Utc;
use proptest::prelude::*;
use scp_pep::audit::checkpoint::TrustedKeys;
use scp_pep::audit::export::{ExportRequest, ExportSink, Format};
use scp_pep::audit::verify::{Problem, Report, verify_export, verify_store};
use scp_pep::audit::{AuditEvent, AuditLog, AuditSettings, CheckpointSigner, RecordKind};
use scp_pep::decision::{Decision, Denial, DenyCode, Incident, Outcome, Stage};
use scp_pep::sink::DecisionSink;
use scp_pep::store::Store;
use sqlx::Row;

use common::Harness;

on_both_stores!(
    every_decision_and_event_is_chained_and_verifies,
    export_round_trips_in_both_formats_and_pins_keys,
    append_only_is_enforced_by_the_store,
    retention_purges_to_a_checkpoint_and_stays_verifiable,
    decisions_through_the_server_are_audited,
);

async fn connect(url: &str) -> Store {
    Store::connect(url, 4, Duration::from_secs(5))
        .await
        .expect("store reachable")
}

fn settings() -> AuditSettings {
    AuditSettings {
        writer: "test-writer".into(),
        checkpoint_every: 7,
        ..Default::default()
    }
}

/// A decision of `tenant` (`None`: unattributed), allowed or denied, at `time`.
fn decision(i: usize, tenant: Option<&str>, time: chrono::DateTime<Utc>) -> Decision {
    let mut d = Decision::new(
        "GET",
        &format!("/v1/tenants/ke/health/persons/p-{i}/record"),
        time,
    );
    d.outcome = Outcome::Allow;
    d.tenant_id = tenant.map(str::to_owned);
    d.integration_id = tenant.map(|t| format!("int-{t}"));
    d.verticals = vec!["health".into()];
    d.stages = vec![Stage::Authenticate, Stage::Integration, Stage::Route];
    if i.is_multiple_of(3) {
        d.outcome = Outcome::Deny(Denial::new(
            DenyCode::ScopeViolation,
            "scope \"x\" not granted",
        ));
    }
    if i.is_multiple_of(10) {
        d.incidents = vec![Incident::ForgedHeaders];
    }
    d
}

/// Writes `n` decisions over tenants ke, ug and unattributed (every third), plus one event of
/// each non-decision kind producers use, then closes the log (chains sealed, final checkpoints).
/// Returns the signer's verifier key.
async fn build_log(
    store: &Store,
    n: usize,
    time: impl Fn(usize) -> chrono::DateTime<Utc>,
) -> String {
    let (signer, _) = CheckpointSigner::generate("scp-pep").unwrap();
    let vkey = signer.verifier_key().to_owned();
    let audit = AuditLog::start(store.clone(), signer, settings());
    let tenants = [Some("ke"), Some("ug"), None];
    // Five concurrent decisions at a time: several group commits, several checkpoints.
    for chunk in (0..n).collect::<Vec<_>>().chunks(5) {
        let mut tasks = Vec::new();
        for &i in chunk {
            let a = audit.clone();
            let d = decision(i, tenants[i % 3], time(i));
            tasks.push(tokio::spawn(async move { a.record(&d).await }));
        }
        for t in tasks {
            t.await.unwrap().expect("durable record committed");
        }
    }
    for kind in [
        RecordKind::AdminChange,
        RecordKind::CredentialIssued,
        RecordKind::CredentialRotated,
        RecordKind::CredentialRevoked,
        RecordKind::ConsentChange,
        RecordKind::ConsentEvidenceAccess,
        RecordKind::FrozenShare,
        RecordKind::RootBypass,
    ] {
        let ev = AuditEvent::new(kind, Some("ke"), serde_json::json!({"why": "test", "n": 1}))
            .actor("admin-1")
            .subject("int-ke");
        audit.record_event(&ev).await.expect("event committed");
    }
    audit.close().await;
    vkey
}

async fn count(store: &Store, sql: &'static str) -> i64 {
    match store {
        Store::Sqlite(p) => sqlx::query_scalar(sql).fetch_one(p).await.unwrap(),
        Store::Postgres(p) => sqlx::query_scalar(sql).fetch_one(p).await.unwrap(),
    }
}

async fn export_text(store: &Store, tenant: &str, format: Format, keys: &[String]) -> String {
    export_window(store, tenant, format, keys, 0, i64::MAX).await
}

async fn export_window(
    store: &Store,
    tenant: &str,
    format: Format,
    keys: &[String],
    from_ms: i64,
    to_ms: i64,
) -> String {
    let file = tempfile::NamedTempFile::new().unwrap();
    let w = file.reopen().unwrap();
    let req = ExportRequest {
        tenant: tenant.into(),
        from_ms,
        to_ms,
        format,
    };
    scp_pep::audit::export::export(store, &req, keys, ExportSink::Write(Box::new(w)))
        .await
        .expect("export");
    std::fs::read_to_string(file.path()).unwrap()
}

fn verify_text(text: &str, keys: Option<&TrustedKeys>) -> Report {
    verify_export(std::io::Cursor::new(text.as_bytes()), keys)
}

/// INT-8-1, INT-8-2, ADM-2, CON-19, CON-37, ONB-AUD-1: every decision, incident and event gets
/// one record, chained per (writer, tenant), checkpointed and signed; the store verifies with
/// the pinned key.
async fn every_decision_and_event_is_chained_and_verifies(url: String) {
    let store = connect(&url).await;
    let vkey = build_log(&store, 120, |_| Utc::now()).await;
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM audit_records WHERE kind = 'decision'"
        )
        .await,
        120
    );
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM audit_records WHERE kind = 'security_incident'"
        )
        .await,
        12
    );
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM audit_chains").await,
        3,
        "one chain per tenant"
    );
    for kind in ["chain_start", "chain_end"] {
        let sql: &'static str = if kind == "chain_start" {
            "SELECT COUNT(*) FROM audit_records WHERE kind = 'chain_start'"
        } else {
            "SELECT COUNT(*) FROM audit_records WHERE kind = 'chain_end'"
        };
        assert_eq!(count(&store, sql).await, 3, "{kind}");
    }
    for kind in [
        "consent_evidence_access",
        "frozen_share",
        "root_bypass",
        "credential_rotated",
    ] {
        let n: i64 = match &store {
            Store::Sqlite(p) => {
                sqlx::query_scalar("SELECT COUNT(*) FROM audit_records WHERE kind = $1")
                    .bind(kind)
                    .fetch_one(p)
                    .await
                    .unwrap()
            }
            Store::Postgres(p) => {
                sqlx::query_scalar("SELECT COUNT(*) FROM audit_records WHERE kind = $1")
                    .bind(kind)
                    .fetch_one(p)
                    .await
                    .unwrap()
            }
        };
        assert_eq!(n, 1, "{kind}");
    }
    let keys = TrustedKeys::new(&[vkey.as_str()]).unwrap();
    let r = verify_store(&store, None, Some(&keys), None).await.unwrap();
    assert!(r.ok, "{r:?}");
    assert!(r.keys_pinned);
    assert_eq!(r.chains, 3);
    assert_eq!(
        r.records as i64,
        count(&store, "SELECT COUNT(*) FROM audit_records").await
    );
    assert!(r.checkpoints >= 3);
    assert_eq!(r.unsigned_records, 0, "sealed chains are fully signed");

    // Another key does not verify the checkpoints.
    let (other, _) = CheckpointSigner::generate("scp-pep").unwrap();
    let wrong = TrustedKeys::new(&[other.verifier_key()]).unwrap();
    let r = verify_store(&store, None, Some(&wrong), None)
        .await
        .unwrap();
    assert_eq!(r.failure.unwrap().problem, Problem::BadSignature);

    // A second writer process links its new chain to the previous one of the same writer.
    let (signer, _) = CheckpointSigner::generate("scp-pep").unwrap();
    let vkey2 = signer.verifier_key().to_owned();
    let audit = AuditLog::start(store.clone(), signer, settings());
    audit
        .record(&decision(1, Some("ke"), Utc::now()))
        .await
        .unwrap();
    audit.close().await;
    let start: String = match &store {
        Store::Sqlite(p) => sqlx::query("SELECT body FROM audit_records WHERE kind = 'chain_start' ORDER BY time_ms DESC, chain_id DESC LIMIT 1")
            .fetch_one(p).await.unwrap().get(0),
        Store::Postgres(p) => sqlx::query("SELECT body FROM audit_records WHERE kind = 'chain_start' ORDER BY time_ms DESC, chain_id DESC LIMIT 1")
            .fetch_one(p).await.unwrap().get(0),
    };
    let v: serde_json::Value = serde_json::from_str(&start).unwrap();
    assert!(v["detail"]["previous"]["size"].as_u64().unwrap() > 1, "{v}");
    let both = TrustedKeys::new(&[vkey.as_str(), vkey2.as_str()]).unwrap();
    let r = verify_store(&store, None, Some(&both), None).await.unwrap();
    assert!(r.ok, "{r:?}");
    store.close().await;
}

/// INT-8-2, EXT-4.1-1: JSONL and CSV exports carry checkpoints and keys and verify offline; a
/// time window is widened to signed checkpoints and still verifies; unpinned keys are reported.
async fn export_round_trips_in_both_formats_and_pins_keys(url: String) {
    let store = connect(&url).await;
    let base = Utc::now() - chrono::Duration::hours(2);
    let vkey = build_log(&store, 90, |i| base + chrono::Duration::seconds(i as i64)).await;
    let keys = TrustedKeys::new(&[vkey.as_str()]).unwrap();
    for format in [Format::Jsonl, Format::Csv] {
        let text = export_text(&store, "ke", format, &[]).await;
        let r = verify_text(&text, Some(&keys));
        assert!(r.ok, "{format:?}: {r:?}");
        assert_eq!(r.chains, 1);
        // 30 decisions + 3 incidents + 8 events + chain_start + chain_end.
        assert_eq!(r.records, 30 + 3 + 8 + 2, "{format:?}");
        assert!(r.keys_pinned);
        let unpinned = verify_text(&text, None);
        assert!(unpinned.ok && !unpinned.keys_pinned && !unpinned.warnings.is_empty());
        // A window: only records of 10 seconds, widened to checkpoints, verifies.
        let from = (base + chrono::Duration::seconds(30)).timestamp_millis();
        let to = (base + chrono::Duration::seconds(40)).timestamp_millis();
        let w = export_window(&store, "ke", format, &[], from, to).await;
        let r = verify_text(&w, Some(&keys));
        assert!(r.ok, "{format:?} window: {r:?}");
        assert!(
            r.records < 43 && r.records >= 3,
            "{format:?} window holds {}",
            r.records
        );
    }
    // The other tenants' records never appear in ke's export.
    let text = export_text(&store, "ke", Format::Jsonl, &[]).await;
    assert!(!text.contains("\"tenant_id\":\"ug\""));
    store.close().await;
}

/// INT-8-2: no UPDATE, no DELETE (nor TRUNCATE on PostgreSQL) on any audit table; a DELETE is
/// accepted only for records covered by a recorded purge.
async fn append_only_is_enforced_by_the_store(url: String) {
    let store = connect(&url).await;
    build_log(&store, 10, |_| Utc::now()).await;
    let refused = [
        "UPDATE audit_records SET body = '{}' WHERE seq = 2",
        "DELETE FROM audit_records WHERE seq = 2",
        "UPDATE audit_checkpoints SET note = 'x'",
        "DELETE FROM audit_checkpoints",
        "DELETE FROM audit_chains",
        "UPDATE audit_chains SET writer = 'x'",
    ];
    for sql in refused {
        let res = match &store {
            Store::Sqlite(p) => sqlx::query(sql).execute(p).await.map(|_| ()),
            Store::Postgres(p) => sqlx::query(sql).execute(p).await.map(|_| ()),
        };
        let e = res.expect_err(sql).to_string();
        assert!(e.contains("append-only"), "{sql}: {e}");
    }
    if let Store::Postgres(p) = &store {
        let e = sqlx::query("TRUNCATE audit_records")
            .execute(p)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("append-only"), "{e}");
    }
    let n = count(&store, "SELECT COUNT(*) FROM audit_records").await;
    assert!(n > 10);
    store.close().await;
}

/// INT-8-2: retention purges only up to a signed checkpoint, records the purge (row and
/// `retention_purge` event), and what remains still verifies, from the store and as an export.
async fn retention_purges_to_a_checkpoint_and_stays_verifiable(url: String) {
    let store = connect(&url).await;
    let old = Utc::now() - chrono::Duration::days(40);
    let vkey = build_log(&store, 60, |i| if i < 30 { old } else { Utc::now() }).await;
    let before = count(&store, "SELECT COUNT(*) FROM audit_records").await;
    let (signer, _) = CheckpointSigner::generate("scp-pep").unwrap();
    let vkey2 = signer.verifier_key().to_owned();
    let audit = AuditLog::start(store.clone(), signer, settings());
    let mut days = std::collections::HashMap::new();
    days.insert("ke".to_owned(), 30u32);
    let done = scp_pep::audit::retention::purge_expired(
        &store,
        Some(&audit),
        &days,
        3650,
        Utc::now().timestamp_millis(),
    )
    .await
    .unwrap();
    audit.close().await;
    assert_eq!(done.len(), 1, "only ke has a 30-day retention: {done:?}");
    assert!(done[0].deleted > 0 && done[0].deleted <= 12, "{done:?}");
    let after = count(&store, "SELECT COUNT(*) FROM audit_records").await;
    assert!(after < before + 4);
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM audit_records WHERE kind = 'retention_purge'"
        )
        .await,
        1
    );
    assert_eq!(count(&store, "SELECT COUNT(*) FROM audit_purges").await, 1);
    let keys = TrustedKeys::new(&[vkey.as_str(), vkey2.as_str()]).unwrap();
    let r = verify_store(&store, None, Some(&keys), None).await.unwrap();
    assert!(r.ok, "{r:?}");
    let text = export_text(&store, "ke", Format::Jsonl, &[]).await;
    let r = verify_text(&text, Some(&keys));
    assert!(r.ok, "{r:?}");
    // A second run purges nothing new.
    let audit = AuditLog::start(
        store.clone(),
        CheckpointSigner::generate("scp-pep").unwrap().0,
        settings(),
    );
    let again = scp_pep::audit::retention::purge_expired(
        &store,
        Some(&audit),
        &days,
        3650,
        Utc::now().timestamp_millis(),
    )
    .await
    .unwrap();
    audit.close().await;
    assert!(again.is_empty(), "{again:?}");
    store.close().await;
}

/// INT-8-1, INT-9.4-1: decisions made by the real gRPC server are in the audit log (allow,
/// deny, forged-header incident), and the store verifies.
async fn decisions_through_the_server_are_audited(url: String) {
    let mut h = Harness::start(Some(url.clone())).await;
    let claims = h.claims("ke", "int-ke-moh", &["health"], "health:person:read");
    let token = h.sign("ke-rs256", &claims);
    let allow = h
        .check(&Harness::get(
            "/v1/tenants/ke/health/persons/p-1/record",
            &token,
        ))
        .await;
    assert_eq!(allow["allowed"], true, "{allow}");
    let deny = h
        .check(&Harness::get(
            "/v1/tenants/ke/health/persons/p-1/record",
            "x.y.z",
        ))
        .await;
    assert_eq!(deny["allowed"], false);
    let mut forged = Harness::get("/v1/tenants/ke/health/persons/p-1/record", &token);
    forged.headers.push(("x-scp-tenant-id".into(), "ug".into()));
    let f = h.check(&forged).await;
    let id = allow["decision_id"]
        .as_str()
        .expect("decision id")
        .to_owned();
    let deny_id = deny["decision_id"].as_str().map(str::to_owned);
    let store = h.running.store.clone();
    let rec = scp_pep::audit::store::record_by_event(&store, &id)
        .await
        .unwrap()
        .expect("allow is audited");
    assert_eq!(rec.kind, "decision");
    assert_eq!(rec.tenant_id, "ke");
    let body: serde_json::Value = serde_json::from_str(&rec.body).unwrap();
    assert_eq!(body["outcome"], "allow");
    assert_eq!(body["integration_id"], "int-ke-moh");
    assert!(!rec.body.contains(&token), "no token in the audit record");
    if let Some(deny_id) = deny_id {
        let rec = scp_pep::audit::store::record_by_event(&store, &deny_id)
            .await
            .unwrap()
            .expect("deny is audited");
        assert_eq!(rec.tenant_id, "_", "unauthenticated → unattributed chain");
    }
    assert!(f["decision_id"].is_string(), "{f}");
    assert!(
        count(
            &store,
            "SELECT COUNT(*) FROM audit_records WHERE kind = 'security_incident'"
        )
        .await
            >= 1
    );
    let vkey = h.running.audit.as_ref().unwrap().verifier_key().to_owned();
    let Harness { running, .. } = h;
    running.shutdown().await;
    let store = connect(&url).await;
    let keys = TrustedKeys::new(&[vkey.as_str()]).unwrap();
    let r = verify_store(&store, None, Some(&keys), None).await.unwrap();
    assert!(r.ok, "{r:?}");
    assert_eq!(
        r.unsigned_records, 0,
        "shutdown seals and checkpoints every chain"
    );
    store.close().await;
}

/// A small sealed log on SQLite and its exports, shared by the property tests.
struct Fixture {
    _dir: tempfile::TempDir,
    db: std::path::PathBuf,
    vkey: String,
    jsonl: String,
    csv: String,
}

fn fixture() -> &'static Fixture {
    static F: std::sync::OnceLock<Fixture> = std::sync::OnceLock::new();
    F.get_or_init(|| {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let db = dir.path().join("fixture.db");
            let store = connect(&format!("sqlite:{}", db.display())).await;
            let vkey = build_log(&store, 45, |_| Utc::now()).await;
            let jsonl = export_text(&store, "ke", Format::Jsonl, &[]).await;
            let csv = export_text(&store, "ke", Format::Csv, &[]).await;
            store.close().await;
            Fixture {
                _dir: dir,
                db,
                vkey,
                jsonl,
                csv,
            }
        })
    })
}

/// One single change to an export's lines.
#[derive(Debug, Clone)]
enum Edit {
    /// Change one character of line `line` at relative position `at` (0..1000 of its length).
    Char {
        line: usize,
        at: u16,
    },
    Delete {
        line: usize,
    },
    Duplicate {
        line: usize,
    },
    SwapWithNext {
        line: usize,
    },
}

fn apply(text: &str, csv: bool, edit: &Edit) -> Option<String> {
    // CSV records can span lines (checkpoint notes); edit whole CSV records instead.
    let mut lines: Vec<String> = if csv {
        let mut rdr = csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(text.as_bytes());
        rdr.records()
            .map(|r| {
                let mut w = csv::WriterBuilder::new()
                    .has_headers(false)
                    .from_writer(Vec::new());
                w.write_record(&r.unwrap()).unwrap();
                String::from_utf8(w.into_inner().unwrap())
                    .unwrap()
                    .trim_end_matches('\n')
                    .to_owned()
            })
            .collect()
    } else {
        text.lines().map(str::to_owned).collect()
    };
    let n = lines.len();
    match *edit {
        Edit::Char { line, at } => {
            let l = &mut lines[line % n];
            let chars: Vec<char> = l.chars().collect();
            let i = (at as usize * chars.len()) / 1000;
            let c = chars[i];
            let repl = match c {
                '0'..='8' | 'a'..='y' | 'A'..='Y' => ((c as u8) + 1) as char,
                '9' => '0',
                'z' => 'a',
                'Z' => 'A',
                _ => return None, // punctuation: the change would only break syntax (also detected) — skip
            };
            let mut s: String = chars[..i].iter().collect();
            s.push(repl);
            s.extend(&chars[i + 1..]);
            *l = s;
        }
        Edit::Delete { line } => {
            lines.remove(line % n);
        }
        Edit::Duplicate { line } => {
            let l = lines[line % n].clone();
            lines.insert(line % n, l);
        }
        Edit::SwapWithNext { line } => {
            let i = line % (n - 1);
            lines.swap(i, i + 1);
        }
    }
    let mut out = lines.join("\n");
    out.push('\n');
    (out != text).then_some(out)
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        4 => (0usize..10_000, 0u16..1000).prop_map(|(line, at)| Edit::Char { line, at }),
        1 => (0usize..10_000).prop_map(|line| Edit::Delete { line }),
        1 => (0usize..10_000).prop_map(|line| Edit::Duplicate { line }),
        1 => (0usize..10_000).prop_map(|line| Edit::SwapWithNext { line }),
    ]
}

/// The header's informational fields (`exported_at`, `note`, the window) are not
/// evidence: a change confined to them is not tampering with the log. Everything else is.
fn touches_only_header_text(original: &str, edited: &str, csv: bool) -> bool {
    let header = |t: &str| -> Option<serde_json::Value> {
        if csv {
            let mut rdr = csv::ReaderBuilder::new().from_reader(t.as_bytes());
            let rec = rdr.records().next()?.ok()?;
            let mut v: serde_json::Value = serde_json::from_str(rec.get(9)?).ok()?;
            v["tenant_column"] = serde_json::Value::String(rec.get(3)?.to_owned());
            Some(v)
        } else {
            serde_json::from_str(t.lines().next()?).ok()
        }
    };
    let body = |t: &str| {
        let skip = if csv { 2 } else { 1 };
        t.lines().skip(skip).collect::<Vec<_>>().join("\n")
    };
    if body(original) != body(edited) {
        return false;
    }
    // Only these header fields are evidence (what verify uses).
    let strip = |v: Option<serde_json::Value>| {
        v.map(|v| {
            serde_json::json!({
                "keys": v["keys"], "tenant_id": v["tenant_id"], "type": v["type"], "format": v["format"],
                "tenant_column": v["tenant_column"],
            })
        })
    };
    match (strip(header(original)), strip(header(edited))) {
        // The verifier is given pinned keys here, so the header's key list only has to be well
        // formed: an edit that renames the field away (`"keys"` → `"leys"`) leaves nothing to
        // check and is not tampering; an edit inside a listed key still is.
        (Some(mut a), Some(mut b)) => {
            if header(edited).is_some_and(|v| v.get("keys").is_none()) {
                a["keys"] = serde_json::Value::Null;
                b["keys"] = serde_json::Value::Null;
            }
            a == b
        }
        _ => false,
    }
}

fn diff(a: &str, b: &str) -> String {
    let al: Vec<&str> = a.lines().collect();
    let bl: Vec<&str> = b.lines().collect();
    for i in 0..al.len().max(bl.len()) {
        if al.get(i) != bl.get(i) {
            return format!("line {}:\n- {:?}\n+ {:?}", i + 1, al.get(i), bl.get(i));
        }
    }
    String::new()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    /// INT-8-2: any single character change, line deletion, insertion (duplicate) or reordering
    /// (swap of neighbours) of an exported log, JSONL or CSV, is detected by `verify`.
    #[test]
    fn any_single_edit_of_an_export_is_detected(e in edit(), csv in any::<bool>()) {
        let f = fixture();
        let keys = TrustedKeys::new(&[f.vkey.as_str()]).unwrap();
        let original = if csv { &f.csv } else { &f.jsonl };
        prop_assert!(verify_text(original, Some(&keys)).ok);
        if let Some(edited) = apply(original, csv, &e) {
            if touches_only_header_text(original, &edited, csv) {
                return Ok(());
            }
            let r = verify_text(&edited, Some(&keys));
            prop_assert!(!r.ok, "undetected {:?} (csv={}):\n{}", e, csv, diff(original, &edited));
            prop_assert!(r.failure.is_some());
        }
    }
}

/// Store rows a database administrator could change, with the triggers dropped.
#[derive(Debug, Clone)]
enum RowEdit {
    /// Change one character of one record's body.
    Body { pick: usize },
    /// Delete one record.
    Delete { pick: usize },
    /// Swap the bodies and hashes of two neighbouring records.
    Swap { pick: usize },
    /// Insert a correctly hashed forged record in the middle, renumbering the ones after it.
    Insert { pick: usize },
    /// Delete the last 1–3 records of a chain (the tail its last checkpoint covers).
    Truncate { pick: usize },
}

fn row_edit() -> impl Strategy<Value = RowEdit> {
    prop_oneof![
        (0usize..1000).prop_map(|pick| RowEdit::Body { pick }),
        (0usize..1000).prop_map(|pick| RowEdit::Delete { pick }),
        (0usize..1000).prop_map(|pick| RowEdit::Swap { pick }),
        (0usize..1000).prop_map(|pick| RowEdit::Insert { pick }),
        (0usize..1000).prop_map(|pick| RowEdit::Truncate { pick }),
    ]
}

async fn tamper_store(db: &std::path::Path, e: &RowEdit) {
    use sqlx::Connection;
    let mut c = sqlx::SqliteConnection::connect(&format!("sqlite:{}", db.display()))
        .await
        .unwrap();
    for t in [
        "audit_records_no_update",
        "audit_records_no_delete",
        "audit_checkpoints_no_delete",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP TRIGGER {t}")))
            .execute(&mut c)
            .await
            .unwrap();
    }
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT chain_id, seq FROM audit_records ORDER BY chain_id, seq")
            .fetch_all(&mut c)
            .await
            .unwrap();
    let (chain, seq) = rows[match e {
        RowEdit::Body { pick }
        | RowEdit::Delete { pick }
        | RowEdit::Swap { pick }
        | RowEdit::Insert { pick }
        | RowEdit::Truncate { pick } => *pick,
    } % rows.len()]
    .clone();
    let max: i64 = sqlx::query_scalar("SELECT MAX(seq) FROM audit_records WHERE chain_id = $1")
        .bind(&chain)
        .fetch_one(&mut c)
        .await
        .unwrap();
    match e {
        RowEdit::Body { .. } => {
            sqlx::query("UPDATE audit_records SET body = replace(body, '\"time\":\"2', '\"time\":\"1') WHERE chain_id = $1 AND seq = $2")
                .bind(&chain).bind(seq).execute(&mut c).await.unwrap();
        }
        RowEdit::Delete { .. } => {
            sqlx::query("DELETE FROM audit_records WHERE chain_id = $1 AND seq = $2")
                .bind(&chain)
                .bind(seq)
                .execute(&mut c)
                .await
                .unwrap();
        }
        RowEdit::Swap { .. } => {
            let s = if seq == max { seq - 1 } else { seq };
            sqlx::query(
                "UPDATE audit_records SET body = CASE seq WHEN $2 THEN (SELECT body FROM audit_records WHERE chain_id = $1 AND seq = $3) \
                 ELSE (SELECT body FROM audit_records WHERE chain_id = $1 AND seq = $2) END \
                 WHERE chain_id = $1 AND seq IN ($2, $3)",
            )
            .bind(&chain).bind(s).bind(s + 1).execute(&mut c).await.unwrap();
        }
        RowEdit::Insert { .. } => {
            // Renumber seq >= k upward (from the top to keep the key unique), then forge record k
            // chained correctly onto k - 1.
            let k = seq.max(2);
            let mut s = max;
            while s >= k {
                sqlx::query(
                    "UPDATE audit_records SET seq = seq + 1 WHERE chain_id = $1 AND seq = $2",
                )
                .bind(&chain)
                .bind(s)
                .execute(&mut c)
                .await
                .unwrap();
                s -= 1;
            }
            let (prev, tenant): (Vec<u8>, String) = sqlx::query_as(
                "SELECT hash, tenant_id FROM audit_records WHERE chain_id = $1 AND seq = $2",
            )
            .bind(&chain)
            .bind(k - 1)
            .fetch_one(&mut c)
            .await
            .unwrap();
            let prev: [u8; 32] = prev.try_into().unwrap();
            let tid = if tenant == "_" {
                serde_json::Value::Null
            } else {
                serde_json::Value::String(tenant.clone())
            };
            let ev = AuditEvent {
                tenant_id: tid.as_str().map(str::to_owned),
                ..AuditEvent::new(
                    RecordKind::AdminChange,
                    None,
                    serde_json::json!({"forged": true}),
                )
            };
            let body = String::from_utf8(ev.body()).unwrap();
            let hash = scp_pep::audit::record::record_hash(k as u64, &prev, body.as_bytes());
            sqlx::query("INSERT INTO audit_records (chain_id, seq, tenant_id, time_ms, kind, event_id, prev_hash, hash, body) VALUES ($1,$2,$3,$4,'admin_change',$5,$6,$7,$8)")
                .bind(&chain).bind(k).bind(&tenant).bind(ev.time.timestamp_millis()).bind(&ev.event_id)
                .bind(&prev[..]).bind(&hash[..]).bind(&body)
                .execute(&mut c).await.unwrap();
        }
        RowEdit::Truncate { .. } => {
            sqlx::query("DELETE FROM audit_records WHERE chain_id = $1 AND seq > $2")
                .bind(&chain)
                .bind(max - 1 - (seq % 3))
                .execute(&mut c)
                .await
                .unwrap();
        }
    }
    c.close().await.unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, .. ProptestConfig::default() })]

    /// INT-8-2: a single change to the store's rows (body edit, deletion, neighbour swap, a
    /// correctly hashed insertion, or cutting a chain's tail) is detected by
    /// `verify` even with the append-only triggers dropped.
    #[test]
    fn any_single_row_edit_in_the_store_is_detected(e in row_edit()) {
        let f = fixture();
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        std::fs::copy(&f.db, &db).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let r = rt.block_on(async {
            tamper_store(&db, &e).await;
            let store = connect(&format!("sqlite:{}", db.display())).await;
            let keys = TrustedKeys::new(&[f.vkey.as_str()]).unwrap();
            let r = verify_store(&store, None, Some(&keys), None).await.unwrap();
            store.close().await;
            r
        });
        prop_assert!(!r.ok, "undetected {:?}: {:?}", e, r);
    }
}

/// INT-8-2: checkpoints published outside the database catch a truncation that also removed the
/// stored checkpoints (which the store alone can no longer show).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_checkpoints_catch_a_rewritten_store() {
    use sqlx::Connection;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    let cps = dir.path().join("published");
    let store = connect(&format!("sqlite:{}", db.display())).await;
    let (signer, _) = CheckpointSigner::generate("scp-pep").unwrap();
    let vkey = signer.verifier_key().to_owned();
    let audit = AuditLog::start(
        store.clone(),
        signer,
        AuditSettings {
            checkpoint_dir: Some(cps.clone()),
            ..settings()
        },
    );
    for i in 0..20 {
        audit
            .record(&decision(i, Some("ke"), Utc::now()))
            .await
            .unwrap();
    }
    audit.close().await;
    store.close().await;
    let published: Vec<_> = std::fs::read_dir(cps.join("ke")).unwrap().collect();
    assert_eq!(published.len(), 1, "one note per chain");

    // The DBA drops the triggers, cuts the chain's last 5 records and every checkpoint above.
    let mut c = sqlx::SqliteConnection::connect(&format!("sqlite:{}", db.display()))
        .await
        .unwrap();
    for t in ["audit_records_no_delete", "audit_checkpoints_no_delete"] {
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP TRIGGER {t}")))
            .execute(&mut c)
            .await
            .unwrap();
    }
    let max: i64 = sqlx::query_scalar("SELECT MAX(seq) FROM audit_records")
        .fetch_one(&mut c)
        .await
        .unwrap();
    sqlx::query("DELETE FROM audit_records WHERE seq > $1")
        .bind(max - 5)
        .execute(&mut c)
        .await
        .unwrap();
    sqlx::query("DELETE FROM audit_checkpoints WHERE size > $1")
        .bind(max - 5)
        .execute(&mut c)
        .await
        .unwrap();
    c.close().await.unwrap();

    let store = connect(&format!("sqlite:{}", db.display())).await;
    let keys = TrustedKeys::new(&[vkey.as_str()]).unwrap();
    let inside = verify_store(&store, None, Some(&keys), None).await.unwrap();
    assert!(
        inside.ok,
        "the store alone cannot show this cut: {inside:?}"
    );
    let outside = verify_store(&store, None, Some(&keys), Some(&cps))
        .await
        .unwrap();
    let f = outside.failure.expect("published checkpoint shows the cut");
    assert_eq!(f.problem, Problem::Truncated);
    assert_eq!(
        f.seq,
        Some(max as u64 - 4),
        "names the first missing record"
    );
    store.close().await;
}

/// INT-8-2: `scp-pep audit keygen | public-key | export | verify` through the real binary; a
/// tampered export exits 1 and names the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_exports_and_verifies() {
    let bin = env!("CARGO_BIN_EXE_scp-pep");
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("audit.key");
    let out = std::process::Command::new(bin)
        .args(["audit", "keygen", "--out"])
        .arg(&key_file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let vkey = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let db = dir.path().join("cli.db");
    let url = format!("sqlite:{}", db.display());
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\nurl = \"{url}\"\n[audit]\nsigning_key_file = \"{}\"\n",
            key_file.display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(bin)
        .args(["audit", "public-key", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), vkey);

    let store = connect(&url).await;
    let signer = CheckpointSigner::from_key(&std::fs::read_to_string(&key_file).unwrap()).unwrap();
    let audit = AuditLog::start(store.clone(), signer, settings());
    for i in 0..30 {
        audit
            .record(&decision(i, Some("ke"), Utc::now()))
            .await
            .unwrap();
    }
    audit.close().await;
    store.close().await;

    for fmt in ["jsonl", "csv"] {
        let file = dir.path().join(format!("ke.{fmt}"));
        let out = std::process::Command::new(bin)
            .args([
                "audit", "export", "--tenant", "ke", "--format", fmt, "--config",
            ])
            .arg(&config)
            .arg("--out")
            .arg(&file)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let out = std::process::Command::new(bin)
            .args(["audit", "verify", "--key", &vkey])
            .arg(&file)
            .output()
            .unwrap();
        assert!(out.status.success(), "{fmt}: {out:?}");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["ok"], true);
        // 30 decisions, 3 incidents (i = 0, 10, 20), chain_start, chain_end.
        assert_eq!(report["records"], 35);
    }
    // Tamper: change the path of the 5th record of the JSONL export.
    let file = dir.path().join("ke.jsonl");
    let text = std::fs::read_to_string(&file).unwrap();
    let tampered = text.replacen("/persons/p-4/", "/persons/p-9/", 1);
    assert_ne!(text, tampered);
    std::fs::write(&file, tampered).unwrap();
    let out = std::process::Command::new(bin)
        .args(["audit", "verify", "--key", &vkey])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["failure"]["problem"], "hash_mismatch");
    assert!(
        report["failure"]["seq"].as_u64().is_some() && report["failure"]["line"].as_u64().is_some()
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("FAILED") && stderr.contains("record"),
        "{stderr}"
    );
    // The store itself verifies through the CLI.
    let out = std::process::Command::new(bin)
        .args(["audit", "verify", "--key", &vkey, "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// INT-8-2: every checkpoint is also POSTed to `checkpoint_url` (outside the database) as the
/// signed note, which opens with the verifier key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_are_published_to_a_url() {
    use std::sync::{Arc, Mutex};
    let received: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/witness",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let sink = sink.clone();
            async move {
                let ct = headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                sink.lock().unwrap().push((ct, body));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    let store = connect(&format!("sqlite:{}", dir.path().join("u.db").display())).await;
    let (signer, _) = CheckpointSigner::generate("scp-pep").unwrap();
    let keys = TrustedKeys::new(&[signer.verifier_key()]).unwrap();
    let audit = AuditLog::start(
        store.clone(),
        signer,
        AuditSettings {
            checkpoint_url: Some(format!("http://{addr}/witness")),
            ..settings()
        },
    );
    for i in 0..10 {
        audit
            .record(&decision(i, Some("ke"), Utc::now()))
            .await
            .unwrap();
    }
    audit.close().await;
    // `close` waits for the POSTs in flight: every stored checkpoint has arrived.
    let stored = count(&store, "SELECT COUNT(*) FROM audit_checkpoints").await as usize;
    let got = received.lock().unwrap().clone();
    assert!(
        stored >= 2 && got.len() == stored,
        "{} published of {stored}",
        got.len()
    );
    let mut sizes: Vec<u64> = got
        .iter()
        .map(|(ct, note)| {
            assert!(ct.starts_with("text/plain"), "{ct}");
            let cp = keys.open(note).expect("published note verifies");
            assert_eq!(cp.tenant_id, "ke");
            cp.size
        })
        .collect();
    sizes.sort();
    let last = count(&store, "SELECT MAX(seq) FROM audit_records").await as u64;
    assert_eq!(
        sizes.last().copied(),
        Some(last),
        "the final checkpoint covers the sealed chain"
    );
    store.close().await;
}

/// INT-8-2, INT-4.1-4 (fault injection): a checkpoint witness that refuses connections, or
/// accepts them and never answers, holds up no record: every record is acknowledged, the chain's
/// checkpoints are stored in the database, and closing the log does not hang on the witness.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn witness_down_or_hanging_holds_up_nothing() {
    // Accepts connections and never reads or answers.
    let hang = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hang_addr = hang.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hang.accept().await {
            held.push(s);
        }
    });
    for url in [
        "http://127.0.0.1:9/witness".to_owned(),
        format!("http://{hang_addr}/witness"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let store = connect(&format!("sqlite:{}", dir.path().join("w.db").display())).await;
        let (signer, _) = CheckpointSigner::generate("scp-pep").unwrap();
        let audit = AuditLog::start(
            store.clone(),
            signer,
            AuditSettings {
                checkpoint_url: Some(url.clone()),
                ..settings()
            },
        );
        for i in 0..10 {
            tokio::time::timeout(
                std::time::Duration::from_secs(10),
                audit.record(&decision(i, Some("ke"), Utc::now())),
            )
            .await
            .unwrap_or_else(|_| panic!("{url}: a record waited on the witness"))
            .unwrap();
        }
        tokio::time::timeout(std::time::Duration::from_secs(30), audit.close())
            .await
            .unwrap_or_else(|_| panic!("{url}: close hung on the witness"));
        let stored = count(&store, "SELECT COUNT(*) FROM audit_checkpoints").await;
        assert!(stored >= 2, "{url}: {stored} checkpoints stored");
        assert_eq!(
            count(
                &store,
                "SELECT COUNT(*) FROM audit_records WHERE kind = 'decision'"
            )
            .await,
            10
        );
        store.close().await;
    }
}
