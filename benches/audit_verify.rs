//! Audit-log verification speed (issue 3: "Verification ≥ 200,000 records/s"). A plain `main`.
//!
//! 1. Builds a log of `BENCH_RECORDS` (500,000) decision records with `AuditLog` in buffered mode
//!    on a SQLite temp file (one tenant, so one chain plus its `chain_start` and `chain_end`
//!    records; default `checkpoint_every` = 1,000, but the writer checkpoints only after a commit, so
//!    one per group-commit batch at most). The decisions are realistic allows
//!    (tenant, integration, client, route, action, resource, verticals, scopes, data categories,
//!    masked and allowed fields, the eight stages of a request without a second factor; with
//!    `BENCH_CONSENT=1` also a consent check): about 750 bytes (850 with the consent check) of canonical
//!    body each (printed).
//! 2. Closes the log, exports the tenant with `audit::export::export` to a JSON-lines file and a
//!    CSV file (sizes printed).
//! 3. Times `verify_export` on each file and `verify_store` on the store, all with the pinned
//!    verifier key, `BENCH_REPEAT` (2) times each; asserts that every report is ok and counts
//!    every record; prints records/s.
//! 4. The same on PostgreSQL (a fresh database on `BENCH_PG_URL`, default
//!    `postgres://root@127.0.0.1:5432/test`, dropped at the end) with `BENCH_PG_RECORDS`
//!    (default: `BENCH_RECORDS`) records. `BENCH_VERIFY_STORES=sqlite` skips PostgreSQL.
//!
//! `BENCH_COMMIT_PROBE=1` runs a diagnostic instead (for the durable-mode latency): on an otherwise
//! idle runtime, the latency of a durable `AuditLog::record` with 1, 8 and 64 concurrent callers,
//! and the cost of the raw SQL steps of one commit (pool acquire, empty transaction, 8 single-row
//! INSERTs, one 8-row INSERT) on each store.
//!
//! Run: `cargo bench --bench audit_verify`.

mod support;

/// The same allocator as the `scp-pep` binary (src/main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::{BufReader, BufWriter};
use std::path::Path;
use std::time::{Duration, Instant};

use scp_pep::audit::checkpoint::TrustedKeys;
use scp_pep::audit::export::{ExportRequest, ExportSink, Format, export};
use scp_pep::audit::verify::{Report, verify_export, verify_store};
use scp_pep::audit::{AuditLog, AuditMode, AuditSettings, CheckpointSigner};
use scp_pep::decision::{ConsentCheck, Decision, Stage};
use scp_pep::sink::DecisionSink;
use scp_pep::store::Store;

const TENANT: &str = "ke";

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A realistic allowed decision of the fixture integration, with a fresh id and time.
fn decision(i: u64) -> Decision {
    let mut d = Decision::new(
        "GET",
        &format!("/v1/tenants/ke/health/persons/p-{}/record", i % 100_000),
        chrono::Utc::now(),
    );
    d.tenant_id = Some(TENANT.into());
    d.outcome = scp_pep::decision::Outcome::Allow;
    d.integration_id = Some("int-ke-moh".into());
    d.client_id = Some("ke-moh-connector".into());
    d.route_id = Some("ke-health-person-record".into());
    d.action = Some("read".into());
    d.resource = Some("health.person.record".into());
    d.verticals = vec!["health".into()];
    d.scopes = vec!["health:person:read".into()];
    d.data_categories = vec!["demographics".into(), "clinical_summary".into()];
    d.persons = 1;
    d.masked_fields = vec!["national_id".into(), "phone".into()];
    d.allowed_fields = Some(vec![
        "person_id".into(),
        "name".into(),
        "date_of_birth".into(),
    ]);
    d.stages = vec![
        Stage::Authenticate,
        Stage::Integration,
        Stage::Route,
        Stage::TenantVertical,
        Stage::Scope,
        Stage::DenyRules,
        Stage::DataMinimization,
        Stage::RateLimit,
    ];
    // `BENCH_CONSENT=1`: one consent check too (+96 bytes of body).
    if std::env::var("BENCH_CONSENT").is_ok_and(|v| v == "1") {
        d.consent_checks = vec![ConsentCheck {
            person_ref: format!("{:016x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            purpose: Some("treatment".into()),
            result: "active".into(),
            vertical: "health".into(),
        }];
    }
    d.latency_us = 40 + i % 50;
    d
}

fn main() {
    let n_sqlite = env_u64("BENCH_RECORDS", 500_000).max(1);
    let n_pg = env_u64("BENCH_PG_RECORDS", n_sqlite).max(1);
    let repeat = env_u64("BENCH_REPEAT", 2).clamp(1, 10) as usize;
    let stores = std::env::var("BENCH_VERIFY_STORES").unwrap_or_else(|_| "sqlite,postgres".into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");

    let mut body = Vec::new();
    scp_pep::audit::record::decision_body(&decision(12_345), &mut body);
    println!(
        "audit_verify bench: nproc={}, decision body {} bytes (canonical JSON), repeat={repeat}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        body.len()
    );
    println!("sample body: {}", String::from_utf8_lossy(&body));

    if std::env::var("BENCH_COMMIT_PROBE").is_ok_and(|v| v == "1") {
        for s in stores.split(',').map(str::trim) {
            commit_probe(&rt, s);
        }
        return;
    }

    let mut all = Vec::new();
    for s in stores.split(',').map(str::trim) {
        match s {
            "sqlite" => {
                let dir = tempfile::tempdir().expect("tempdir");
                let url = format!("sqlite:{}", dir.path().join("audit.db").display());
                let store = rt.block_on(connect(&url));
                all.extend(run_store(
                    &rt,
                    "sqlite",
                    &store,
                    n_sqlite,
                    dir.path(),
                    repeat,
                ));
                rt.block_on(store.close());
                let db = dir.path().join("audit.db");
                println!(
                    "sqlite database file {} (WAL checkpointed on close)",
                    human(std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0))
                );
            }
            "postgres" => {
                let (url, admin, name) = rt.block_on(support::fresh_pg_database());
                let dir = tempfile::tempdir().expect("tempdir");
                let store = rt.block_on(connect(&url));
                all.extend(run_store(&rt, "postgres", &store, n_pg, dir.path(), repeat));
                rt.block_on(store.close());
                rt.block_on(support::drop_pg_database(&admin, &name));
            }
            "" => {}
            o => panic!("BENCH_VERIFY_STORES: unknown store {o}"),
        }
    }
    println!("\n== summary ==");
    for line in all {
        println!("{line}");
    }
}

async fn connect(url: &str) -> Store {
    Store::connect(url, 8, Duration::from_secs(30))
        .await
        .expect("store connects")
}

/// Builds, exports and verifies a log of `n` decisions on `store`; returns the RESULT lines.
fn run_store(
    rt: &tokio::runtime::Runtime,
    name: &str,
    store: &Store,
    n: u64,
    dir: &Path,
    repeat: usize,
) -> Vec<String> {
    let mut out = Vec::new();
    println!("\n== {name}: {n} decision records ==");
    let (signer, _private) = CheckpointSigner::generate("scp-pep-bench").expect("signer");
    let vkey = signer.verifier_key().to_owned();
    let trusted = TrustedKeys::new(&[vkey.as_str()]).expect("verifier key");

    // 1. Build.
    let t = Instant::now();
    let retries = rt.block_on(async {
        let log = AuditLog::start(
            store.clone(),
            signer,
            AuditSettings {
                mode: AuditMode::Buffered,
                writer: "bench".into(),
                ..AuditSettings::default()
            },
        );
        let mut retries = 0u64;
        for i in 0..n {
            let d = decision(i);
            // Buffered: `record` only queues; a full queue is an error, so wait and retry.
            while log.record(&d).await.is_err() {
                retries += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        log.close().await;
        retries
    });
    let build_s = t.elapsed().as_secs_f64();
    let line = format!(
        "RESULT {name} build (AuditLog buffered, group commit): {n} records in {build_s:.2}s = {:.0} records/s \
         (queue-full retries {retries})",
        n as f64 / build_s
    );
    println!("{line}");
    out.push(line);
    let expected = n + 2; // + chain_start + chain_end

    // 2. Export.
    let mut files = Vec::new();
    // `BENCH_EXPORTS=csv,jsonl` changes the order (the first export after the build can be slower).
    let order = std::env::var("BENCH_EXPORTS").unwrap_or_else(|_| "jsonl,csv".into());
    for ext in order.split(',').map(str::trim) {
        let fmt = match ext {
            "jsonl" => Format::Jsonl,
            "csv" => Format::Csv,
            o => panic!("BENCH_EXPORTS: unknown format {o}"),
        };
        let path = dir.join(format!("export.{ext}"));
        let f = std::fs::File::create(&path).expect("export file");
        let t = Instant::now();
        let sum = rt
            .block_on(export(
                store,
                &ExportRequest {
                    tenant: TENANT.into(),
                    from_ms: 0,
                    to_ms: i64::MAX,
                    format: fmt,
                },
                std::slice::from_ref(&vkey),
                ExportSink::Write(Box::new(BufWriter::with_capacity(1 << 20, f))),
            ))
            .expect("export");
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(sum.records, expected, "exported record count");
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let line = format!(
            "RESULT {name} export {ext}: {} records, {} checkpoints, {} in {secs:.2}s = {:.0} records/s",
            sum.records,
            sum.checkpoints,
            human(size),
            sum.records as f64 / secs
        );
        println!("{line}");
        out.push(line);
        files.push((ext, path));
    }

    // 3. Verify.
    for r in 0..repeat {
        for (ext, path) in &files {
            let f = std::fs::File::open(path).expect("open export");
            let t = Instant::now();
            let report = verify_export(BufReader::with_capacity(1 << 20, f), Some(&trusted));
            let secs = t.elapsed().as_secs_f64();
            check(&report, expected, &format!("verify_export {ext}"));
            let line = format!(
                "RESULT {name} verify_export {ext} (run {}): {} records in {secs:.3}s = {:.0} records/s \
                 ({} checkpoints checked)",
                r + 1,
                report.records,
                report.records as f64 / secs,
                report.checkpoints,
            );
            println!("{line}");
            out.push(line);
        }
        let t = Instant::now();
        let report = rt
            .block_on(verify_store(store, Some(TENANT), Some(&trusted), None))
            .expect("verify_store");
        let secs = t.elapsed().as_secs_f64();
        check(&report, expected, "verify_store");
        let line = format!(
            "RESULT {name} verify_store (run {}): {} records in {secs:.3}s = {:.0} records/s \
             ({} checkpoints checked)",
            r + 1,
            report.records,
            report.records as f64 / secs,
            report.checkpoints,
        );
        println!("{line}");
        out.push(line);
    }
    out
}

fn check(report: &Report, expected: u64, what: &str) {
    assert!(
        report.ok && report.failure.is_none(),
        "{what}: not ok: {:?}",
        report.failure
    );
    assert!(report.keys_pinned, "{what}: keys not pinned");
    assert_eq!(report.records, expected, "{what}: record count");
    assert_eq!(report.chains, 1, "{what}: chain count");
}

fn human(bytes: u64) -> String {
    format!("{:.1} MB ({bytes} bytes)", bytes as f64 / 1e6)
}

/// Diagnostic for durable mode: where the time of one group commit goes, with nothing else running.
fn commit_probe(rt: &tokio::runtime::Runtime, name: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut pg = None;
    let url = match name {
        "sqlite" => format!("sqlite:{}", dir.path().join("probe.db").display()),
        "postgres" => {
            let (url, admin, db) = rt.block_on(support::fresh_pg_database());
            pg = Some((admin, db));
            url
        }
        _ => return,
    };
    let _ = scp_pep::server::prometheus();
    let store = rt.block_on(connect(&url));
    println!("\n== commit probe: {name} ==");
    let (signer, _) = CheckpointSigner::generate("scp-pep-bench").expect("signer");
    let log = rt.block_on(async {
        AuditLog::start(
            store.clone(),
            signer,
            AuditSettings {
                mode: AuditMode::Durable,
                writer: "probe".into(),
                ..AuditSettings::default()
            },
        )
    });
    for conc in [1usize, 8, 64] {
        let per_task = (4000 / conc).max(50);
        let a0 = support::AuditCounters::read();
        let t = Instant::now();
        let mut lat: Vec<u64> = rt.block_on(async {
            let mut set = tokio::task::JoinSet::new();
            for c in 0..conc {
                let log = log.clone();
                set.spawn(async move {
                    let mut v = Vec::with_capacity(per_task);
                    for i in 0..per_task {
                        let d = decision((c * per_task + i) as u64);
                        let t = Instant::now();
                        log.record(&d).await.expect("durable record");
                        v.push(t.elapsed().as_nanos() as u64);
                    }
                    v
                });
            }
            let mut all = Vec::new();
            while let Some(v) = set.join_next().await {
                all.extend(v.expect("task"));
            }
            all
        });
        let secs = t.elapsed().as_secs_f64();
        lat.sort_unstable();
        let a1 = support::AuditCounters::read();
        println!(
            "PROBE {name} durable record, {conc} concurrent callers: {} records in {secs:.2}s = {:.0}/s; \
             latency p50={:.0}µs p99={:.0}µs; {}",
            lat.len(),
            lat.len() as f64 / secs,
            support::pct(&lat, 0.5) as f64 / 1e3,
            support::pct(&lat, 0.99) as f64 / 1e3,
            a1.since(&a0)
        );
    }
    rt.block_on(log.close());

    // Raw SQL steps, on a scratch table shaped like audit_records.
    let body = {
        let mut b = Vec::new();
        scp_pep::audit::record::decision_body(&decision(1), &mut b);
        String::from_utf8(b).expect("utf-8")
    };
    rt.block_on(async {
        let n = 300;
        macro_rules! steps {
            ($p:expr, $ph:literal) => {{
                let p = $p;
                let ph = |i: usize| match $ph {
                    "?" => "?".to_string(),
                    _ => format!("${i}"),
                };
                sqlx::query(sqlx::AssertSqlSafe(
                    "CREATE TABLE probe (chain_id TEXT NOT NULL, seq BIGINT NOT NULL, body TEXT NOT NULL, \
                     hash BYTEA NOT NULL, PRIMARY KEY (chain_id, seq))"
                        .replace("BYTEA", if $ph == "?" { "BLOB" } else { "BYTEA" }),
                ))
                .execute(p)
                .await
                .expect("scratch table");
                let mut seq = 0i64;
                let mut acquire = Vec::new();
                let mut empty = Vec::new();
                let mut single8 = Vec::new();
                let mut multi8 = Vec::new();
                let multi_sql = format!(
                    "INSERT INTO probe (chain_id, seq, body, hash) VALUES {}",
                    (0..8)
                        .map(|k| format!("({}, {}, {}, {})", ph(4 * k + 1), ph(4 * k + 2), ph(4 * k + 3), ph(4 * k + 4)))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                let single_sql = format!(
                    "INSERT INTO probe (chain_id, seq, body, hash) VALUES ({}, {}, {}, {})",
                    ph(1),
                    ph(2),
                    ph(3),
                    ph(4)
                );
                let hash = [7u8; 32];
                for _ in 0..n {
                    let t = Instant::now();
                    let c = p.acquire().await.expect("acquire");
                    acquire.push(t.elapsed().as_nanos() as u64);
                    drop(c);

                    let t = Instant::now();
                    let tx = p.begin().await.expect("begin");
                    tx.commit().await.expect("commit");
                    empty.push(t.elapsed().as_nanos() as u64);

                    let t = Instant::now();
                    let mut tx = p.begin().await.expect("begin");
                    for _ in 0..8 {
                        seq += 1;
                        sqlx::query(sqlx::AssertSqlSafe(single_sql.clone()))
                            .bind("c")
                            .bind(seq)
                            .bind(&body)
                            .bind(&hash[..])
                            .execute(&mut *tx)
                            .await
                            .expect("insert");
                    }
                    tx.commit().await.expect("commit");
                    single8.push(t.elapsed().as_nanos() as u64);

                    let t = Instant::now();
                    let mut q = sqlx::query(sqlx::AssertSqlSafe(multi_sql.clone()));
                    for _ in 0..8 {
                        seq += 1;
                        q = q.bind("c").bind(seq).bind(&body).bind(&hash[..]);
                    }
                    q.execute(p).await.expect("multi insert");
                    multi8.push(t.elapsed().as_nanos() as u64);
                }
                for (what, mut v) in [
                    ("pool acquire (test_before_acquire)", acquire),
                    ("BEGIN + COMMIT, empty", empty),
                    ("BEGIN + 8 single-row INSERTs + COMMIT", single8),
                    ("one 8-row INSERT, autocommit", multi8),
                ] {
                    v.sort_unstable();
                    println!(
                        "PROBE {name} raw SQL, idle: {what}: p50={:.0}µs p90={:.0}µs p99={:.0}µs",
                        support::pct(&v, 0.5) as f64 / 1e3,
                        support::pct(&v, 0.9) as f64 / 1e3,
                        support::pct(&v, 0.99) as f64 / 1e3,
                    );
                }
            }};
        }
        match &store {
            Store::Sqlite(p) => steps!(p, "?"),
            Store::Postgres(p) => steps!(p, "$"),
        }
    });
    rt.block_on(store.close());
    if let Some((admin, db)) = pg {
        rt.block_on(support::drop_pg_database(&admin, &db));
    }
}
