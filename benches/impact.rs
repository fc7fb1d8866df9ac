//! Impact preview speed (issue 16 part 2: "1 million recorded decisions re-decided in ≤ 10 s,
//! end to end from the store"). A plain `main`.
//!
//! 1. Seeds `BENCH_IMPACT_RECORDS` (1,000,000) format-3 decision records into a SQLite store
//!    (`BENCH_IMPACT_DB`, default `target/bench-impact.db`; reused when it already holds them):
//!    two tenants (`ke`, `ug`), six integrations, five routes, spread over 7 days (every hour of
//!    the day), a mix of allows (~80 %) and denials (consent withdrawn, scope, deny rule, rate
//!    limit), one keyed consent check per person-route request (a distinct `person_ref` each);
//!    bodies are written by `audit::record::decision_body`, the writer's own encoder.
//! 2. Times reading + parsing alone: every decision row of the window streamed from the store
//!    in `time_ms` order per tenant and parsed into `impact::RecordedDecision`.
//! 3. Times `impact::from_store` end to end against a candidate: the fixture policy plus a pack
//!    for `ke`/`health` forbidding GET before 06:00 UTC. Prints decisions/s, the distinct input
//!    shapes decided, the totals and the flip groups; re-decide time ≈ (3) − (2).
//!
//! Run: `cargo bench --bench impact`.

/// The same allocator as the `scp-pep` binary (src/main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use futures_util::TryStreamExt;
use scp_pep::decision::{ConsentCheck, Decision, DecisionInputs, Denial, DenyCode, Outcome, Stage};
use scp_pep::policy::{PolicySet, PolicySnapshot};
use scp_pep::store::Store;
use sqlx::Row;

const START_MS: i64 = 1_790_000_000_000;
const SPAN_MS: i64 = 7 * 86_400_000;

struct Shape {
    tenant: &'static str,
    integration: &'static str,
    client: Option<&'static str>,
    route: &'static str,
    path: &'static str,
    method: &'static str,
    verticals: &'static [&'static str],
    scopes: &'static [&'static str],
    person: bool,
}

const SHAPES: &[Shape] = &[
    Shape {
        tenant: "ke",
        integration: "int-ke-moh",
        client: Some("ke-moh-connector"),
        route: "health-person-record",
        path: "/v1/tenants/ke/health/persons/{person_id}/record",
        method: "GET",
        verticals: &["health"],
        scopes: &["health:encounter:write", "health:person:read"],
        person: true,
    },
    Shape {
        tenant: "ke",
        integration: "int-ke-moh",
        client: Some("ke-moh-connector"),
        route: "health-encounter-create",
        path: "/v1/tenants/ke/health/persons/{person_id}/encounters",
        method: "POST",
        verticals: &["health"],
        scopes: &["health:encounter:write", "health:person:read"],
        person: true,
    },
    Shape {
        tenant: "ke",
        integration: "int-ke-edu",
        client: None,
        route: "education-student-enrolment",
        path: "/v1/tenants/ke/education/students/{person_id}/enrolment",
        method: "GET",
        verticals: &["education"],
        scopes: &["education:student:read"],
        person: true,
    },
    Shape {
        tenant: "ke",
        integration: "int-ke-denyme",
        client: None,
        route: "health-person-record",
        path: "/v1/tenants/ke/health/persons/{person_id}/record",
        method: "GET",
        verticals: &["health"],
        scopes: &["health:person:read"],
        person: true,
    },
    Shape {
        tenant: "ug",
        integration: "int-ug-moh",
        client: None,
        route: "health-person-record",
        path: "/v1/tenants/ug/health/persons/{person_id}/record",
        method: "GET",
        verticals: &["health"],
        scopes: &["health:person:read"],
        person: true,
    },
];

fn fixture_dir(dest: &Path, extra: Option<&str>) {
    std::fs::create_dir_all(dest).unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/policies");
    for e in std::fs::read_dir(src).unwrap() {
        let p = e.unwrap().path();
        let text = std::fs::read_to_string(&p)
            .unwrap()
            .replace("{{IDP}}", "https://idp.invalid");
        std::fs::write(dest.join(p.file_name().unwrap()), text).unwrap();
    }
    if let Some(x) = extra {
        std::fs::write(dest.join("zz-candidate.yaml"), x).unwrap();
    }
}

/// Decision `i` of the seeded log.
fn decision(i: u64, n: u64) -> (Decision, &'static str) {
    let s = &SHAPES[(i % SHAPES.len() as u64) as usize];
    let time_ms = START_MS + (i as i64 * SPAN_MS) / n as i64;
    let mut d = Decision::new(s.method, s.path, Utc.timestamp_millis_opt(time_ms).unwrap());
    d.decision_id =
        uuid::Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_0000 | i as u128).to_string();
    d.tenant_id = Some(s.tenant.into());
    d.integration_id = Some(s.integration.into());
    d.client_id = s.client.map(str::to_owned);
    d.policy_version = Some(7);
    d.route_id = Some(s.route.into());
    d.verticals = s.verticals.iter().map(|v| (*v).to_owned()).collect();
    d.scopes = s.scopes.iter().map(|v| (*v).to_owned()).collect();
    d.inputs = Some(DecisionInputs {
        scopes: d.scopes.clone(),
        verticals: d.verticals.clone(),
    });
    d.persons = s.person as usize;
    d.path_bytes = s.path.len();
    let mut stages = vec![
        Stage::Authenticate,
        Stage::Integration,
        Stage::SecondFactor,
        Stage::Route,
        Stage::TenantVertical,
        Stage::Scope,
        Stage::DenyRules,
        Stage::Residency,
        Stage::Consent,
        Stage::DataMinimization,
        Stage::RateLimit,
    ];
    let (outcome, cut) = match (s.integration, i % 20) {
        ("int-ke-denyme", _) => (Some(DenyCode::DenyRuleMatched), 7),
        (_, 0) => (Some(DenyCode::ConsentWithdrawn), 9),
        (_, 1) => (Some(DenyCode::RateLimited), 11),
        _ => (None, 11),
    };
    stages.truncate(cut);
    if s.person && cut >= 9 {
        d.consent_checks.push(ConsentCheck {
            person_ref: format!("k1:{:032x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            purpose: None,
            result: if outcome == Some(DenyCode::ConsentWithdrawn) {
                "withdrawn".into()
            } else {
                "active".into()
            },
            vertical: s.verticals[0].into(),
        });
    }
    d.stages = stages;
    d.outcome = match outcome {
        None => Outcome::Allow,
        Some(c) => Outcome::Deny(Denial::new(c, format!("{} (bench)", c.as_str()))),
    };
    (d, s.tenant)
}

async fn seed(store: &Store, n: u64) {
    let Store::Sqlite(p) = store else {
        unreachable!()
    };
    let have: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM audit_records WHERE kind = 'decision'")
            .fetch_one(p)
            .await
            .unwrap();
    if have as u64 == n {
        println!("store already holds {n} decision records");
        return;
    }
    sqlx::query("DELETE FROM audit_records")
        .execute(p)
        .await
        .unwrap();
    let t = Instant::now();
    let mut bytes = 0usize;
    const ROWS: u64 = 100;
    let mut seq = [0i64; 2];
    let mut i = 0;
    while i < n {
        let mut tx = p.begin().await.unwrap();
        for _ in 0..100 {
            if i >= n {
                break;
            }
            let end = (i + ROWS).min(n);
            let mut sql = String::from(
                "INSERT INTO audit_records (chain_id, seq, tenant_id, time_ms, kind, event_id, prev_hash, hash, body) VALUES ",
            );
            let rows: Vec<_> = (i..end).map(|j| decision(j, n)).collect();
            for k in 0..rows.len() {
                if k > 0 {
                    sql.push(',');
                }
                sql.push_str("(?,?,?,?,'decision',?,?,?,?)");
            }
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (d, tenant) in &rows {
                let c = (*tenant == "ug") as usize;
                seq[c] += 1;
                let mut body = Vec::with_capacity(900);
                scp_pep::audit::record::decision_body(d, &mut body);
                bytes += body.len();
                q = q
                    .bind(format!("bench-{tenant}"))
                    .bind(seq[c])
                    .bind(*tenant)
                    .bind(d.time.timestamp_millis())
                    .bind(d.decision_id.clone())
                    .bind(vec![0u8; 32])
                    .bind(vec![0u8; 32])
                    .bind(String::from_utf8(body).unwrap());
            }
            q.execute(&mut *tx).await.unwrap();
            i = end;
        }
        tx.commit().await.unwrap();
    }
    println!(
        "seeded {n} decision records ({} bytes of body each on average) in {:.1} s",
        bytes / n as usize,
        t.elapsed().as_secs_f64()
    );
}

async fn read_parse(store: &Store) -> (u64, Duration) {
    let Store::Sqlite(p) = store else {
        unreachable!()
    };
    let t = Instant::now();
    let mut n = 0u64;
    for tenant in ["ke", "ug"] {
        let mut rows = sqlx::query(
            "SELECT time_ms, body FROM audit_records WHERE tenant_id = $1 AND time_ms >= $2 AND time_ms < $3 AND kind = 'decision' ORDER BY time_ms",
        )
        .bind(tenant)
        .bind(START_MS)
        .bind(START_MS + SPAN_MS)
        .fetch(p);
        while let Some(row) = rows.try_next().await.unwrap() {
            let _t: i64 = row.get(0);
            let body: &str = row.get(1);
            let r = scp_pep::impact::RecordedDecision::parse(body).unwrap();
            n += r.inputs.is_some() as u64;
        }
    }
    (n, t.elapsed())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: u64 = std::env::var("BENCH_IMPACT_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let db: PathBuf = std::env::var("BENCH_IMPACT_DB")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-impact.db"));
    println!(
        "machine: {} cores, {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(
                |c| c.lines().find(|l| l.starts_with("model name")).map(|l| l
                    .split(':')
                    .nth(1)
                    .unwrap_or("")
                    .trim()
                    .to_owned())
            )
            .unwrap_or_default()
    );
    let store = Store::connect(
        &format!("sqlite:{}", db.display()),
        2,
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    seed(&store, n).await;

    let dir = tempfile::tempdir().unwrap();
    let cand = dir.path().join("candidate");
    fixture_dir(
        &cand,
        Some(
            "policy_packs:\n  - id: pack-ke-health-night\n    tenant: ke\n    vertical: health\n    status: active\n    policies: |\n      permit(principal, action, resource);\n      @id(\"no-night-reads\")\n      forbid(principal, action, resource) when { context.method == \"GET\" && context.hour < 6 };\n",
        ),
    );
    let snap = PolicySnapshot::compile(PolicySet::load_dir(&cand).unwrap(), 0, "scp-pep");

    let (parsed, rp) = read_parse(&store).await;
    println!(
        "read + parse: {parsed} records in {:.2} s ({:.0} records/s)",
        rp.as_secs_f64(),
        parsed as f64 / rp.as_secs_f64()
    );
    let t = Instant::now();
    let report = scp_pep::impact::from_store(&store, &snap, START_MS, START_MS + SPAN_MS, None, 5)
        .await
        .unwrap();
    let all = t.elapsed();
    println!(
        "impact end to end: {} decisions in {:.2} s ({:.0} decisions/s); re-decide ≈ {:.2} s",
        report.totals.read,
        all.as_secs_f64(),
        report.totals.read as f64 / all.as_secs_f64(),
        (all.saturating_sub(rp)).as_secs_f64()
    );
    println!("totals: {}", serde_json::to_string(&report.totals).unwrap());
    for f in &report.flips {
        println!(
            "  {:>8}  {} → {}  {:?} {:?} {:?} unverified {:?}",
            f.count, f.from, f.to, f.tenant_id, f.integration_id, f.route_id, f.unverified
        );
    }
    assert_eq!(report.totals.read, n);
    store.close().await;
}
