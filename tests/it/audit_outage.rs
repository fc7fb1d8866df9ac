//! Audit store outages against the real server: while the store cannot take records, decisions
//! become `503 AUDIT_UNAVAILABLE` denials (durable mode: at once; buffered mode: once the queue is
//! full), never an unaudited allow, and no check hangs; when the store returns, service resumes
//! by itself, the writer continues its chains and the store verifies.
//!
//! PostgreSQL is taken down through a TCP proxy (connections closed, new ones refused or
//! black-holed); SQLite by another connection holding the database's write lock.

use crate::common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{Harness, ProxyMode, TcpProxy};
use scp_pep::audit::checkpoint::TrustedKeys;
use scp_pep::audit::{AuditMode, CheckpointSigner};
use scp_pep::config::Config;
use scp_pep::store::Store;
use serde_json::Value;
use sqlx::Connection;

const KE_RECORD: &str = "/v1/tenants/ke/health/persons/p-1/record";
/// No check may take longer than this, store down or not.
const CHECK_BOUND: Duration = Duration::from_secs(5);
/// Denials must start, and service must resume, within this.
const SWITCH_BOUND: Duration = Duration::from_secs(10);
/// Answers that must agree once a switch has shown.
const CONFIRM: usize = 5;

/// A checkpoint key for the server and its verifier key for the test.
fn checkpoint_key() -> (String, String) {
    let (signer, skey) = CheckpointSigner::generate("scp-pep").unwrap();
    (skey, signer.verifier_key().to_owned())
}

/// Settings of every test here: a short write timeout and pool wait, so an outage shows within a
/// second. (Checkpoints during an outage: `checkpoint_due_during_outage_does_not_stall_decisions`.)
fn tweak(c: &mut Config, signing_key: &str) {
    c.audit.write_timeout_ms = 500;
    c.store.acquire_timeout_s = 1;
    c.audit.signing_key = Some(signing_key.to_owned());
}

fn token(h: &Harness) -> String {
    h.sign(
        "ke-rs256",
        &h.claims("ke", "int-ke-moh", &["health"], "health:person:read"),
    )
}

/// One check, bounded by `CHECK_BOUND`.
async fn check(h: &mut Harness, token: &str) -> Value {
    let started = Instant::now();
    let v = tokio::time::timeout(CHECK_BOUND, h.check(&Harness::get(KE_RECORD, token)))
        .await
        .unwrap_or_else(|_| panic!("a check took longer than {CHECK_BOUND:?}"));
    assert!(started.elapsed() < CHECK_BOUND);
    v
}

fn is_audit_unavailable(v: &Value) -> bool {
    v["allowed"] == false && v["status"] == 503 && v["code"] == "AUDIT_UNAVAILABLE"
}

/// The decision id of an allow.
fn allowed_id(v: &Value) -> Option<String> {
    (v["allowed"] == true).then(|| {
        v["headers_set"]["x-scp-decision-id"]
            .as_str()
            .expect("an allow carries x-scp-decision-id")
            .to_owned()
    })
}

/// `n` checks that must all be allowed; their decision ids.
async fn expect_allowed(h: &mut Harness, token: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let v = check(h, token).await;
        ids.push(allowed_id(&v).unwrap_or_else(|| panic!("expected an allow: {v}")));
    }
    ids
}

/// Durable mode, store just taken down: checks until one is denied with `AUDIT_UNAVAILABLE`
/// (within `SWITCH_BOUND`), then `CONFIRM` more that must be too. No answer may be an allow.
async fn expect_audit_unavailable(h: &mut Harness, token: &str) {
    let allowed = expect_audit_unavailable_after(h, token, false).await;
    assert!(allowed.is_empty());
}

/// [`expect_audit_unavailable`]; with `allows_first`, allows before the first denial are
/// accepted and their decision ids returned (a full disk: SQLite still commits into WAL pages it
/// already allocated; `verify_after` then proves each of those allows has its record). No allow
/// after the first denial either way.
async fn expect_audit_unavailable_after(
    h: &mut Harness,
    token: &str,
    allows_first: bool,
) -> Vec<String> {
    let started = Instant::now();
    let mut denials = 0;
    let mut allowed = Vec::new();
    while denials <= CONFIRM {
        let v = check(h, token).await;
        if allows_first
            && denials == 0
            && started.elapsed() < SWITCH_BOUND
            && let Some(id) = allowed_id(&v)
        {
            allowed.push(id);
            continue;
        }
        assert_ne!(v["allowed"], true, "an allow while the store is down: {v}");
        if is_audit_unavailable(&v) {
            assert_eq!(v["headers_set"]["retry-after"], "1", "{v}");
            assert_eq!(v["body"]["error"]["retryable"], true, "{v}");
            denials += 1;
        } else {
            assert_eq!(denials, 0, "denials stay AUDIT_UNAVAILABLE while down: {v}");
            assert!(
                started.elapsed() < SWITCH_BOUND,
                "no AUDIT_UNAVAILABLE within {SWITCH_BOUND:?}: {v}"
            );
        }
    }
    allowed
}

/// Store back: checks until one is allowed (within `SWITCH_BOUND`; meanwhile only
/// `AUDIT_UNAVAILABLE` denials), then `CONFIRM` more that must be allowed too. Returns the
/// decision ids of the allows.
async fn expect_service_resumes(h: &mut Harness, token: &str) -> Vec<String> {
    let started = Instant::now();
    loop {
        let v = check(h, token).await;
        if let Some(id) = allowed_id(&v) {
            let mut ids = vec![id];
            ids.extend(expect_allowed(h, token, CONFIRM).await);
            return ids;
        }
        assert!(
            is_audit_unavailable(&v),
            "only AUDIT_UNAVAILABLE until recovery: {v}"
        );
        assert!(
            started.elapsed() < SWITCH_BOUND,
            "service did not resume within {SWITCH_BOUND:?}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `scp_pep_audit_write_failures_total` from the server's `/metrics`.
async fn write_failures(h: &Harness) -> f64 {
    let text = h.metrics_text().await;
    common::metric_sum(&text, "scp_pep_audit_write_failures_total")
}

/// Event ids of the stored decision records.
async fn decision_ids(store: &Store) -> HashSet<String> {
    const SQL: &str = "SELECT event_id FROM audit_records WHERE kind = 'decision'";
    let v: Vec<String> = match store {
        Store::Sqlite(p) => sqlx::query_scalar(SQL).fetch_all(p).await.unwrap(),
        Store::Postgres(p) => sqlx::query_scalar(SQL).fetch_all(p).await.unwrap(),
    };
    v.into_iter().collect()
}

/// `(chain_id, seq)` of a stored record.
async fn position(store: &Store, event_id: &str) -> (String, i64) {
    const SQL: &str = "SELECT chain_id, seq FROM audit_records WHERE event_id = $1";
    match store {
        Store::Sqlite(p) => sqlx::query_as(SQL).bind(event_id).fetch_one(p).await,
        Store::Postgres(p) => sqlx::query_as(SQL).bind(event_id).fetch_one(p).await,
    }
    .unwrap_or_else(|e| panic!("decision {event_id} has a record: {e}"))
}

/// Stops the server (sealing its chains), then checks on `url` that every allowed decision has
/// its record (`unordered`: allows of concurrent clients, checked for a record only), that the
/// allows of each phase follow each other on one chain (the writer carried on after the outage
/// instead of forking or restarting it), and that the store verifies against the pinned key.
async fn verify_after(
    h: Harness,
    url: &str,
    vkey: &str,
    phases: &[Vec<String>],
    unordered: &[String],
) {
    h.running.shutdown().await;
    let store = Store::connect(url, 2, Duration::from_secs(5))
        .await
        .unwrap();
    let stored = decision_ids(&store).await;
    // Allowed by concurrent clients: each has its record, in no particular order.
    let lost: Vec<&String> = unordered
        .iter()
        .filter(|id| !stored.contains(*id))
        .collect();
    assert!(
        lost.is_empty(),
        "allowed under load without a record: {lost:?}"
    );
    let all: Vec<&String> = phases.iter().flatten().collect();
    let missing: Vec<&&String> = all.iter().filter(|id| !stored.contains(**id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} allowed decisions have no record: {missing:?}",
        missing.len(),
        all.len()
    );
    assert!(stored.len() >= all.len());
    let mut last: Option<(String, i64)> = None;
    for id in &all {
        let (chain, seq) = position(&store, id).await;
        if let Some((c, s)) = &last {
            assert_eq!(&chain, c, "one chain across the outage");
            assert!(seq > *s, "records follow each other in decision order");
        }
        last = Some((chain, seq));
    }
    let trusted = TrustedKeys::new(&[vkey]).unwrap();
    let report = scp_pep::audit::verify::verify_store(&store, None, Some(&trusted), None)
        .await
        .unwrap();
    assert!(report.ok, "{report:?}");
    assert!(report.records >= all.len() as u64, "{report:?}");
    assert!(report.checkpoints > 0, "{report:?}");
    store.close().await;
}

/// INT-8-1, issue 3 durability (PostgreSQL): with the store unreachable — connections closed and
/// new ones black-holed, then refused — every decision is a prompt 503 `AUDIT_UNAVAILABLE`
/// denial, never an allow, and the failed writes are counted in `/metrics`; each time the store
/// returns, service resumes without a restart and the records written after the outage chain
/// onto those before it (INT-8-2: the store verifies).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_denies_then_resumes() {
    let direct = common::fresh_pg_database().await;
    let proxy = TcpProxy::start(&common::pg_host_port(&direct)).await;
    let (skey, vkey) = checkpoint_key();
    let mut h = Harness::start_with(Some(common::pg_url_via(&direct, proxy.addr)), |c| {
        tweak(c, &skey)
    })
    .await;
    let t = token(&h);
    let mut phases = vec![expect_allowed(&mut h, &t, CONFIRM).await];

    for down in [ProxyMode::Blackhole, ProxyMode::Refuse] {
        let failures = write_failures(&h).await;
        proxy.set_mode(down).await;
        expect_audit_unavailable(&mut h, &t).await;
        assert!(
            write_failures(&h).await > failures,
            "{down:?}: failed writes are counted"
        );
        proxy.set_mode(ProxyMode::Up).await;
        phases.push(expect_service_resumes(&mut h, &t).await);
    }
    verify_after(h, &direct, &vkey, &phases, &[]).await;
}

/// INT-8-1, INT-8-2, issue 3 durability (PostgreSQL): a commit whose acknowledgement is lost has
/// an unknown outcome. The decision is denied with 503 `AUDIT_UNAVAILABLE` (its record was in
/// fact committed), and the writer re-reads its chain heads before the next write, so the records
/// that follow continue the chain after the committed ones instead of colliding with them or
/// forking: service resumes and the store verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_lost_commit_ack_resyncs_the_chain() {
    let direct = common::fresh_pg_database().await;
    let proxy = TcpProxy::start(&common::pg_host_port(&direct)).await;
    let (skey, vkey) = checkpoint_key();
    let mut h = Harness::start_with(Some(common::pg_url_via(&direct, proxy.addr)), |c| {
        tweak(c, &skey)
    })
    .await;
    let t = token(&h);
    let before = expect_allowed(&mut h, &t, CONFIRM).await;
    // The allowed requests' "last successful sync" (ONB-AUD-4) is written by a background task
    // at most once a second; let it land before the outage so the commits counted below are the
    // audit writer's.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;

    proxy.set_mode(ProxyMode::LoseCommitAck).await;
    let mut unknown = Vec::new();
    for _ in 0..3 {
        let v = check(&mut h, &t).await;
        assert!(is_audit_unavailable(&v), "commit not acknowledged: {v}");
        unknown.push(v["decision_id"].as_str().unwrap().to_owned());
    }
    assert!(
        proxy
            .lost_commit_acks
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 3,
        "each write committed and lost its acknowledgement"
    );
    proxy.set_mode(ProxyMode::Up).await;
    let after = expect_service_resumes(&mut h, &t).await;

    // The denied decisions' records were committed: they sit between the allows on the chain.
    let phases = vec![before, unknown, after];
    verify_after(h, &direct, &vkey, &phases, &[]).await;
}

/// Another connection to the SQLite file holding its write lock (`BEGIN EXCLUSIVE`).
struct SqliteLock(sqlx::SqliteConnection);

impl SqliteLock {
    async fn take(url: &str) -> SqliteLock {
        use std::str::FromStr;
        let opts = sqlx::sqlite::SqliteConnectOptions::from_str(url)
            .unwrap()
            .busy_timeout(Duration::from_secs(10));
        let mut conn = sqlx::SqliteConnection::connect_with(&opts).await.unwrap();
        sqlx::query("BEGIN EXCLUSIVE")
            .execute(&mut conn)
            .await
            .expect("write lock taken");
        SqliteLock(conn)
    }

    /// Records of the most advanced chain that no stored checkpoint covers (read inside the lock).
    async fn uncovered_records(&mut self) -> i64 {
        sqlx::query_scalar(
            "SELECT COALESCE(MAX((SELECT MAX(seq) FROM audit_records r WHERE r.chain_id = c.chain_id) \
             - COALESCE((SELECT MAX(size) FROM audit_checkpoints k WHERE k.chain_id = c.chain_id), 0)), 0) \
             FROM audit_chains c",
        )
        .fetch_one(&mut self.0)
        .await
        .unwrap()
    }

    async fn release(mut self) {
        sqlx::query("ROLLBACK").execute(&mut self.0).await.unwrap();
        self.0.close().await.unwrap();
    }
}

/// INT-8-1, issue 3 durability (SQLite): while another connection holds the write lock, every
/// decision is a prompt 503 `AUDIT_UNAVAILABLE` denial (the write times out after
/// `write_timeout_ms`, well before SQLite's 5 s busy timeout), never an allow; once the lock is
/// released service resumes by itself and the chain carries on (INT-8-2: the store verifies).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_locked_denies_then_resumes() {
    let (skey, vkey) = checkpoint_key();
    let mut h = Harness::start_with(None, |c| tweak(c, &skey)).await;
    let url = h.store_url.clone();
    let t = token(&h);
    let mut phases = vec![expect_allowed(&mut h, &t, CONFIRM).await];

    let failures = write_failures(&h).await;
    let lock = SqliteLock::take(&url).await;
    expect_audit_unavailable(&mut h, &t).await;
    assert!(
        write_failures(&h).await > failures,
        "failed writes are counted"
    );
    lock.release().await;
    phases.push(expect_service_resumes(&mut h, &t).await);
    verify_after(h, &url, &vkey, &phases, &[]).await;
}

/// INT-8-1, issue 3 durability (buffered mode, SQLite): while the store is locked, decisions are
/// allowed as long as their records can be queued, then — the queue full — denied with 503
/// `AUDIT_UNAVAILABLE`; after the lock is released every queued record is written (each allow
/// the client saw has its record, in order on one chain) and the store verifies (INT-8-2).
///
/// What may be outstanding is the queue plus the batch the retrying writer holds
/// (`queue_capacity + max_batch`, the documented loss window); `max_batch` is kept small here so
/// the bound is tight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_queue_fills_then_drains() {
    const QUEUE: usize = 64;
    const MAX_BATCH: usize = 16;
    let (skey, vkey) = checkpoint_key();
    let mut h = Harness::start_with(None, |c| {
        tweak(c, &skey);
        c.audit.mode = AuditMode::Buffered;
        c.audit.queue_capacity = QUEUE;
        c.audit.max_batch = MAX_BATCH;
    })
    .await;
    let url = h.store_url.clone();
    let t = token(&h);
    let mut phases = vec![expect_allowed(&mut h, &t, CONFIRM).await];

    let failures = write_failures(&h).await;
    let lock = SqliteLock::take(&url).await;
    // Queued: allowed. Then denied once the queue is full, until the lock goes. The retrying
    // writer holds one batch (≤ `max_batch` records) and takes no more, so at most the queue plus
    // that batch can be allowed while the store is locked.
    let bound = QUEUE + MAX_BATCH;
    let started = Instant::now();
    let mut queued = Vec::new();
    let mut denied_in_a_row = 0;
    while denied_in_a_row < CONFIRM {
        let v = check(&mut h, &t).await;
        match allowed_id(&v) {
            Some(id) => {
                queued.push(id);
                denied_in_a_row = 0;
            }
            None => {
                assert!(is_audit_unavailable(&v), "{v}");
                denied_in_a_row += 1;
            }
        }
        assert!(
            queued.len() <= bound,
            "{} decisions allowed with the store locked; the buffer holds {bound} at most",
            queued.len()
        );
        assert!(
            started.elapsed() < SWITCH_BOUND,
            "no steady AUDIT_UNAVAILABLE within {SWITCH_BOUND:?} ({} allowed)",
            queued.len()
        );
    }
    assert!(
        queued.len() >= QUEUE,
        "buffered mode allows while records can be queued: {} allowed",
        queued.len()
    );
    let started = Instant::now();
    while write_failures(&h).await <= failures {
        assert!(
            started.elapsed() < SWITCH_BOUND,
            "failed writes are counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    phases.push(queued);

    lock.release().await;
    phases.push(expect_service_resumes(&mut h, &t).await);
    // Everything queued is written, without a restart.
    let store = Store::connect(&url, 2, Duration::from_secs(5))
        .await
        .unwrap();
    let started = Instant::now();
    loop {
        let stored = decision_ids(&store).await;
        if phases.iter().flatten().all(|id| stored.contains(id)) {
            break;
        }
        assert!(
            started.elapsed() < SWITCH_BOUND,
            "queued records not written within {SWITCH_BOUND:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    store.close().await;
    verify_after(h, &url, &vkey, &phases, &[]).await;
}

/// Issue 3 durability, INT-8-1: a checkpoint that comes due while the store is unavailable must
/// not hold decisions longer than an outage otherwise does (a regression test: checkpoint writes
/// once ran without `write_timeout` and held durable decisions 5–10 s on a locked SQLite file).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_due_during_outage_does_not_stall_decisions() {
    let (skey, _) = checkpoint_key();
    let mut h = Harness::start_with(None, |c| {
        tweak(c, &skey);
        c.audit.checkpoint_interval_s = 1;
    })
    .await;
    let url = h.store_url.clone();
    let t = token(&h);
    expect_allowed(&mut h, &t, CONFIRM).await;
    // Lock the store right after a commit, retrying until the lock holder sees a record that no
    // checkpoint covers yet: a checkpoint then comes due within about a second.
    let mut attempts = 0;
    let lock = loop {
        attempts += 1;
        assert!(attempts <= 20, "no uncovered record at lock time");
        expect_allowed(&mut h, &t, 1).await;
        let mut lock = SqliteLock::take(&url).await;
        if lock.uncovered_records().await > 0 {
            break lock;
        }
        lock.release().await;
    };
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    while started.elapsed() < Duration::from_secs(8) {
        let t0 = Instant::now();
        let v = h.check(&Harness::get(KE_RECORD, &t)).await;
        slowest = slowest.max(t0.elapsed());
        assert!(is_audit_unavailable(&v), "{v}");
    }
    lock.release().await;
    h.running.shutdown().await;
    assert!(
        slowest < Duration::from_secs(2),
        "a decision waited {slowest:?} with write_timeout_ms = 500 (acquire_timeout_s = 1)"
    );
}

// ---------------------------------------------------------------------------------------------
// A PostgreSQL of the test's own, and a full disk

/// A PostgreSQL server of the test's own: `initdb` in a temporary directory, listening on its own
/// loopback port, run as the `postgres` user when the test runs as root (PostgreSQL refuses
/// root). Stopped (fast or immediate, i.e. crashed), paused (`SIGSTOP` to every process of the
/// cluster) and started again by the test; stopped for good on drop.
struct OwnPostgres {
    dir: tempfile::TempDir,
    port: u16,
    as_postgres: bool,
}

impl OwnPostgres {
    /// The directory of `initdb`/`pg_ctl`: on `PATH`, else Debian's `/usr/lib/postgresql/*/bin`.
    fn bin(tool: &str) -> std::path::PathBuf {
        let on_path = std::env::var_os("PATH")
            .into_iter()
            .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .map(|d| d.join(tool))
            .find(|p| p.is_file());
        let debian = || {
            let mut found: Vec<_> = std::fs::read_dir("/usr/lib/postgresql")
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path().join("bin").join(tool))
                .filter(|p| p.is_file())
                .collect();
            found.sort();
            found.pop()
        };
        on_path
            .or_else(debian)
            .unwrap_or_else(|| panic!("`{tool}` (PostgreSQL server binaries) must be installed"))
    }

    fn run(&self, tool: &str, args: &[&str]) -> std::process::Output {
        let bin = Self::bin(tool);
        let mut cmd = if self.as_postgres {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(bin);
            c
        } else {
            std::process::Command::new(bin)
        };
        cmd.args(args).output().expect("PostgreSQL tool runs")
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn start() -> OwnPostgres {
        let dir = tempfile::tempdir().unwrap();
        let uid = std::process::Command::new("id").arg("-u").output().unwrap();
        let as_postgres = String::from_utf8_lossy(&uid.stdout).trim() == "0";
        if as_postgres {
            let st = std::process::Command::new("chown")
                .args(["postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(st.success(), "chown of the cluster directory");
        }
        let pg = OwnPostgres {
            dir,
            port: common::free_port(),
            as_postgres,
        };
        let out = pg.run(
            "initdb",
            &[
                "-D",
                &pg.data(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        );
        assert!(out.status.success(), "initdb: {out:?}");
        pg.pg_start();
        pg
    }

    fn pg_start(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log").display().to_string();
        let out = self.run(
            "pg_ctl",
            &["-D", &self.data(), "-o", &opts, "-l", &log, "-w", "start"],
        );
        assert!(out.status.success(), "pg_ctl start: {out:?}");
    }

    /// `mode`: `fast` (clean shutdown) or `immediate` (a crash: no shutdown checkpoint).
    fn stop(&self, mode: &str) {
        let out = self.run("pg_ctl", &["-D", &self.data(), "-m", mode, "-w", "stop"]);
        assert!(out.status.success(), "pg_ctl stop: {out:?}");
    }

    /// `sig` (`STOP`, `CONT`) to the postmaster and every backend.
    fn signal_all(&self, sig: &str) {
        let pidfile = std::fs::read_to_string(self.dir.path().join("data/postmaster.pid")).unwrap();
        let postmaster: i32 = pidfile.lines().next().unwrap().trim().parse().unwrap();
        let children = std::process::Command::new("pgrep")
            .args(["-P", &postmaster.to_string()])
            .output()
            .unwrap();
        let mut pids = vec![postmaster];
        pids.extend(
            String::from_utf8_lossy(&children.stdout)
                .lines()
                .filter_map(|l| l.trim().parse::<i32>().ok()),
        );
        let _ = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .args(pids.iter().map(i32::to_string))
            .status();
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        self.signal_all("CONT");
        let _ = self.run("pg_ctl", &["-D", &self.data(), "-m", "immediate", "stop"]);
    }
}

/// Checks sent by two background tasks while the main task takes the store away and back:
/// every answer is an allow or a retryable 503 (`AUDIT_UNAVAILABLE`, or `DEPENDENCY_UNAVAILABLE`
/// when a consent has left the cache) within `CHECK_BOUND`; the decision ids
/// of the allows are returned when stopped.
struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<(Vec<String>, usize)>>,
}

impl Load {
    fn start(h: &Harness, token: &str) -> Load {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tasks = (0..2)
            .map(|_| {
                let mut client = h.client.clone();
                let input = Harness::get(KE_RECORD, token);
                let stop = stop.clone();
                tokio::spawn(async move {
                    let (mut allowed, mut denied) = (Vec::new(), 0);
                    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                        let req = scp_pep::check::build_request(&input);
                        let resp = tokio::time::timeout(CHECK_BOUND, client.check(req))
                            .await
                            .expect("a check under load stays within CHECK_BOUND")
                            .expect("ext_authz answers")
                            .into_inner();
                        let v = scp_pep::check::response_json(&resp);
                        match allowed_id(&v) {
                            Some(id) => allowed.push(id),
                            None => {
                                // Fail closed, structured: the record cannot be written, or a
                                // consent the cache no longer holds cannot be read.
                                let code = v["code"].as_str().unwrap_or_default();
                                assert!(
                                    v["status"] == 503
                                        && ["AUDIT_UNAVAILABLE", "DEPENDENCY_UNAVAILABLE"]
                                            .contains(&code)
                                        && v["body"]["error"]["retryable"] == true,
                                    "under load: {v}"
                                );
                                denied += 1;
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    (allowed, denied)
                })
            })
            .collect();
        Load { stop, tasks }
    }

    async fn finish(self) -> (Vec<String>, usize) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let (mut allowed, mut denied) = (Vec::new(), 0);
        for t in self.tasks {
            let (a, d) = t.await.expect("load task");
            allowed.extend(a);
            denied += d;
        }
        (allowed, denied)
    }
}

/// Issue 13 fault injection, INT-8-1, INT-8-2 (PostgreSQL of the test's own): under load from two
/// concurrent clients, the server is paused (`SIGSTOP`), stopped cleanly, and crashed (immediate
/// stop), each time then brought back. While it is away every decision is a prompt 503
/// `AUDIT_UNAVAILABLE` (never an allow, never beyond `CHECK_BOUND`); after each return service
/// resumes without a restart of scp-pep within `SWITCH_BOUND` (time printed); every allowed
/// decision has its record and the store verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_postgres_paused_stopped_crashed_under_load() {
    let pg = OwnPostgres::start();
    let (skey, vkey) = checkpoint_key();
    let mut h = Harness::start_with(Some(pg.url()), |c| tweak(c, &skey)).await;
    let t = token(&h);
    let mut phases = vec![expect_allowed(&mut h, &t, CONFIRM).await];
    let load = Load::start(&h, &t);

    for fault in ["SIGSTOP", "stop -m fast", "stop -m immediate"] {
        match fault {
            "SIGSTOP" => pg.signal_all("STOP"),
            "stop -m fast" => pg.stop("fast"),
            _ => pg.stop("immediate"),
        }
        expect_audit_unavailable(&mut h, &t).await;
        let back = Instant::now();
        match fault {
            "SIGSTOP" => pg.signal_all("CONT"),
            _ => pg.pg_start(),
        }
        phases.push(expect_service_resumes(&mut h, &t).await);
        eprintln!(
            "own PostgreSQL, {fault}: service resumed {} ms after the server was back",
            back.elapsed().as_millis()
        );
    }
    let (under_load, denied) = load.finish().await;
    assert!(
        !under_load.is_empty() && denied > 0,
        "the load saw both sides: {} allowed, {denied} denied",
        under_load.len()
    );
    verify_after(h, &pg.url(), &vkey, &phases, &under_load).await;
}

/// A tmpfs of the test's own (needs root: `mount -t tmpfs`), unmounted on drop.
struct SmallDisk(tempfile::TempDir);

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("mount runs");
        assert!(
            st.success(),
            "mounting a tmpfs needs root (the full-disk test runs as root in CI)"
        );
        SmallDisk(dir)
    }

    /// Writes zeros to `filler` until the disk is full.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.0.path().join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let block = vec![0u8; 64 * 1024];
        loop {
            if let Err(e) = f.write_all(&block) {
                assert_eq!(e.kind(), std::io::ErrorKind::StorageFull, "{e}");
                break;
            }
        }
        // Smaller writes fill what a 64 KiB block could not.
        while f.write_all(&[0u8; 512]).is_ok() {}
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.0.path())
            .status();
    }
}

/// Issue 13 fault injection, INT-8-1, INT-8-2 (SQLite on a full disk): with the store's file
/// system full (a 64 MiB tmpfs filled to the last byte), every decision is a prompt 503
/// `AUDIT_UNAVAILABLE`, never an allow; once space is freed service resumes without a restart
/// (time printed), every allowed decision has its record and the store verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_disk_full_denies_then_resumes() {
    let disk = SmallDisk::mount("64m");
    let url = format!("sqlite:{}", disk.0.path().join("pep.db").display());
    let (skey, vkey) = checkpoint_key();
    let mut h = Harness::start_with(Some(url.clone()), |c| tweak(c, &skey)).await;
    let t = token(&h);
    let mut phases = vec![expect_allowed(&mut h, &t, CONFIRM).await];
    let load = Load::start(&h, &t);
    let filler = disk.fill();
    phases.push(expect_audit_unavailable_after(&mut h, &t, true).await);
    let freed = Instant::now();
    std::fs::remove_file(&filler).unwrap();
    phases.push(expect_service_resumes(&mut h, &t).await);
    eprintln!(
        "SQLite disk full: service resumed {} ms after space was freed",
        freed.elapsed().as_millis()
    );
    let (under_load, _) = load.finish().await;
    verify_after(h, &url, &vkey, &phases, &under_load).await;
}
