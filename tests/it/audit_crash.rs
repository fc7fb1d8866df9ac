//! Crash test of the audit log: the real `scp-pep serve` binary, under concurrent load, is killed
//! with SIGKILL; after a restart on the same store every allow a client received has a committed
//! record, the restarted process's chains link to the killed process's chains, and the whole store
//! verifies against the pinned checkpoint key (library and `scp-pep audit verify`). Runs on
//! SQLite and on PostgreSQL (a fresh database on the local server).

use crate::common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{AuthorizationClient, Idp, Keys};
use scp_pep::audit::CheckpointSigner;
use scp_pep::audit::checkpoint::TrustedKeys;
use scp_pep::check::{CheckInput, build_request, response_json};
use scp_pep::store::Store;
use serde_json::Value;

on_both_stores!(
    kill_9_under_load_loses_no_allowed_decision,
    kill_9_during_pipelined_commit
);

/// Concurrent client tasks driving the load.
const CLIENTS: usize = 16;
/// Client tasks of the pipelined-commit variant: enough that a batch commits while the next fills.
const PIPELINED_CLIENTS: usize = 64;
/// Least time under load before the kill.
const LOAD_AT_LEAST: Duration = Duration::from_millis(1500);
/// Allows wanted before the kill (waited for, within `LOAD_AT_MOST`).
const ALLOWS_WANTED: usize = 300;
const LOAD_AT_MOST: Duration = Duration::from_secs(15);
/// Bound on any single check, on the server start and on the SIGTERM exit.
const BOUND: Duration = Duration::from_secs(20);

/// Persons `p-0` … `p-63` carry the load; each has active consent (pipeline stage 7).
const PERSONS: u64 = 64;

/// Gives `p-0` … `p-{PERSONS-1}` active consent in every tenant and vertical the targets use.
async fn seed_persons(url: &str) {
    let store = Store::connect(url, 2, Duration::from_secs(5))
        .await
        .unwrap();
    let consents = scp_pep::consent::Consents::new(
        store.clone(),
        Default::default(),
        Arc::new(scp_pep::consent::SystemClock),
    );
    let persons: Vec<String> = (0..PERSONS).map(|n| format!("p-{n}")).collect();
    common::seed_consents(&consents, "ke", &["health", "education"], &persons).await;
    common::seed_consents(&consents, "ug", &["health"], &persons).await;
    store.close().await;
}

/// A TOML basic string.
fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// A running `scp-pep serve`; killed (SIGKILL) when dropped, so a failed test leaves no process.
struct Server {
    child: Child,
    grpc: SocketAddr,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Spawns `scp-pep serve --config cfg` and waits for its "scp-pep listening" log line (the
    /// listeners bind port 0; the line names the addresses).
    async fn start(cfg: &Path) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_scp-pep"))
            .args(["serve", "--config", cfg.to_str().unwrap()])
            .env("RUST_LOG", "warn,scp_pep::server=info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("scp-pep spawns");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<SocketAddr>();
        let pipe = child.stderr.take().unwrap();
        let lines = stderr.clone();
        // Drains stderr for the whole life of the process (a full pipe would block the server).
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && v["fields"]["message"] == "scp-pep listening"
                    && let Some(a) = v["fields"]["grpc_addr"].as_str()
                    && let Ok(addr) = a.parse()
                {
                    let _ = tx.send(addr);
                }
                lines.lock().unwrap().push(line);
            }
        });
        let mut server = Server {
            child,
            grpc: "127.0.0.1:1".parse().unwrap(),
            stderr,
        };
        match tokio::time::timeout(BOUND, rx.recv()).await {
            Ok(Some(addr)) => server.grpc = addr,
            other => {
                let status = server.child.try_wait().ok().flatten();
                panic!(
                    "scp-pep did not start ({}; exit {status:?}):\n{}",
                    if other.is_err() {
                        "timeout"
                    } else {
                        "stderr closed"
                    },
                    server.stderr_text()
                );
            }
        }
        server
    }

    fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// SIGKILL; returns once the process is gone.
    fn kill_9(&mut self) -> ExitStatus {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped")
    }

    /// SIGTERM; waits (≤ `BOUND`) for the graceful exit.
    async fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success(), "kill -TERM {pid}");
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                started.elapsed() < BOUND,
                "no exit {BOUND:?} after SIGTERM:\n{}",
                self.stderr_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What the client tasks saw.
#[derive(Default)]
struct Load {
    /// Decision ids of the allows received.
    allowed: Mutex<Vec<String>>,
    /// Denial codes received, with counts.
    denied: Mutex<HashMap<String, u64>>,
    /// Requests that got no answer (transport errors, timeouts).
    failed: AtomicU64,
    in_flight: AtomicI64,
    stop: AtomicBool,
}

/// One kind of allowed request: its token and path template (`{n}` = a person number).
#[derive(Clone)]
struct Target {
    token: String,
    path: &'static str,
}

fn targets(idp: &Idp, keys: &Keys) -> Vec<Target> {
    let mk = |tenant: &str,
              integration: &str,
              client_id: &str,
              verticals: &[&str],
              scope: &str,
              path: &'static str| Target {
        token: keys.get(&format!("{tenant}-rs256")).sign(
            &scp_pep::signer::ClaimsSpec {
                issuer: &idp.issuer(tenant),
                audience: "scp-pep",
                client_id,
                tenant_id: tenant,
                integration_id: integration,
                verticals,
                scope,
                ttl_s: 600,
            }
            .claims(),
        ),
        path,
    };
    // Three integrations (each with its own rate limit) over two tenants, hence two chains.
    vec![
        mk(
            "ke",
            "int-ke-moh",
            "ke-moh-connector",
            &["health"],
            "health:person:read",
            "/v1/tenants/ke/health/persons/p-{n}/record",
        ),
        mk(
            "ke",
            "int-ke-edu",
            "int-ke-edu",
            &["education"],
            "education:student:read",
            "/v1/tenants/ke/education/students/p-{n}/enrolment",
        ),
        mk(
            "ug",
            "int-ug-moh",
            "int-ug-moh",
            &["health"],
            "health:person:read",
            "/v1/tenants/ug/health/persons/p-{n}/record",
        ),
    ]
}

fn input(t: &Target, n: u64) -> CheckInput {
    CheckInput {
        method: "GET".into(),
        path: t.path.replace("{n}", &(n % PERSONS).to_string()),
        headers: vec![("authorization".into(), format!("Bearer {}", t.token))],
        source_ip: Some("192.0.2.1".into()),
        peer_certificate: None,
        body: None,
    }
}

/// The decision id of an allow (the `x-scp-decision-id` header set upstream), else `None`.
fn allowed_id(v: &Value) -> Option<String> {
    if v["allowed"] != true {
        return None;
    }
    let id = v["headers_set"]["x-scp-decision-id"]
        .as_str()
        .expect("an allow carries x-scp-decision-id")
        .to_owned();
    assert_eq!(v["decision_id"], id.as_str(), "header and metadata agree");
    Some(id)
}

/// One client task: checks in a loop until `load.stop`.
async fn client_task(grpc: SocketAddr, target: Target, seed: u64, load: Arc<Load>) {
    let mut client = AuthorizationClient::connect(format!("http://{grpc}"))
        .await
        .expect("client connects");
    let mut n = seed * 1_000_000;
    while !load.stop.load(Ordering::SeqCst) {
        n += 1;
        let req = build_request(&input(&target, n));
        load.in_flight.fetch_add(1, Ordering::SeqCst);
        let res = tokio::time::timeout(BOUND, client.check(req)).await;
        load.in_flight.fetch_sub(1, Ordering::SeqCst);
        match res {
            Ok(Ok(resp)) => {
                let v = response_json(&resp.into_inner());
                match allowed_id(&v) {
                    Some(id) => load.allowed.lock().unwrap().push(id),
                    None => {
                        let code = v["code"].as_str().unwrap_or("?").to_owned();
                        *load.denied.lock().unwrap().entry(code).or_default() += 1;
                    }
                }
            }
            _ => {
                load.failed.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Rows of one text column.
async fn strings(store: &Store, sql: &'static str) -> Vec<String> {
    match store {
        Store::Sqlite(p) => sqlx::query_scalar(sql).fetch_all(p).await.unwrap(),
        Store::Postgres(p) => sqlx::query_scalar(sql).fetch_all(p).await.unwrap(),
    }
}

/// `(chain_id, tenant_id)` of every chain, oldest first.
async fn chains(store: &Store) -> Vec<(String, String)> {
    const SQL: &str = "SELECT chain_id, tenant_id FROM audit_chains ORDER BY created_ms, chain_id";
    match store {
        Store::Sqlite(p) => sqlx::query_as(SQL).fetch_all(p).await.unwrap(),
        Store::Postgres(p) => sqlx::query_as(SQL).fetch_all(p).await.unwrap(),
    }
}

/// `(seq, kind, hash, body)` of the first (`last == false`) or last record of a chain.
async fn end_record(store: &Store, chain: &str, last: bool) -> (i64, String, Vec<u8>, String) {
    let sql = if last {
        "SELECT seq, kind, hash, body FROM audit_records WHERE chain_id = $1 ORDER BY seq DESC LIMIT 1"
    } else {
        "SELECT seq, kind, hash, body FROM audit_records WHERE chain_id = $1 ORDER BY seq LIMIT 1"
    };
    match store {
        Store::Sqlite(p) => sqlx::query_as(sql).bind(chain).fetch_one(p).await,
        Store::Postgres(p) => sqlx::query_as(sql).bind(chain).fetch_one(p).await,
    }
    .unwrap_or_else(|e| panic!("chain {chain} has records: {e}"))
}

fn write_config(dir: &Path, url: &str, policies: &Path, signing_key: &str) -> PathBuf {
    let cfg = dir.join("scp-pep.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\ngrpc_listen = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"\n\
             [store]\nurl = {}\nmax_connections = 8\n\
             [policy]\ndir = {}\n\
             [decision_log]\nenabled = false\n\
             [audit]\nmode = \"durable\"\nwriter = \"crash-test\"\nsigning_key = {}\n\
             checkpoint_every = 50\ncheckpoint_interval_s = 1\n",
            q(url),
            q(policies.to_str().unwrap()),
            q(signing_key),
        ),
    )
    .unwrap();
    cfg
}

/// INT-8-1, INT-8-2, issue 3 durability: in durable mode an allow leaves scp-pep only after its
/// record is committed, so a SIGKILL under load loses no allowed decision. After a restart on the
/// same store service resumes, the new process opens new chains that name the killed process's
/// chains (size and head) as their predecessors, and every chain verifies against the pinned
/// checkpoint key, with `verify_store` and with `scp-pep audit verify --key`.
async fn kill_9_under_load_loses_no_allowed_decision(url: String) {
    kill_9_run(url, CLIENTS, 1).await;
}

/// INT-8-1, issue 11: the same with 64 clients, so that at the kill the audit writer has one
/// batch committing and the next filling behind it (pipelined group commit; the kill waits until
/// at least 32 requests are in flight, i.e. waiting for a commit). Every acknowledged allow is in
/// the store after the restart and every chain verifies. (The kill is not synchronized with the
/// writer's fsync itself: with the writer busy most of the time under this load, it lands inside
/// or right around a commit.)
async fn kill_9_during_pipelined_commit(url: String) {
    kill_9_run(url, PIPELINED_CLIENTS, 32).await;
}

/// Load with `clients` tasks, SIGKILL once at least `min_in_flight` requests are in flight, restart,
/// then check that no acknowledged allow is missing and the store verifies.
async fn kill_9_run(url: String, clients: usize, min_in_flight: i64) {
    let keys = Arc::new(Keys::generate());
    let idp = Idp::start(keys.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    common::write_policies(&idp.base, &policies);
    let (signer, signing_key) = CheckpointSigner::generate("scp-pep").unwrap();
    let vkey = signer.verifier_key().to_owned();
    let cfg = write_config(dir.path(), &url, &policies, &signing_key);
    let targets = targets(&idp, &keys);
    seed_persons(&url).await;

    // 1. Load, then SIGKILL while requests are in flight.
    let mut server = Server::start(&cfg).await;
    let load = Arc::new(Load::default());
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            tokio::spawn(client_task(
                server.grpc,
                targets[i % targets.len()].clone(),
                i as u64,
                load.clone(),
            ))
        })
        .collect();
    let started = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let n = load.allowed.lock().unwrap().len();
        if (started.elapsed() >= LOAD_AT_LEAST
            && n >= ALLOWS_WANTED
            && load.in_flight.load(Ordering::SeqCst) >= min_in_flight)
            || started.elapsed() >= LOAD_AT_MOST
        {
            break;
        }
    }
    let in_flight_at_kill = load.in_flight.load(Ordering::SeqCst);
    let status = server.kill_9();
    let load_time = started.elapsed();
    load.stop.store(true, Ordering::SeqCst);
    for t in tasks {
        tokio::time::timeout(BOUND + Duration::from_secs(5), t)
            .await
            .expect("client tasks stop")
            .expect("client task does not panic");
    }
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9), "killed by SIGKILL: {status}");
    }
    let allowed_before: Vec<String> = load.allowed.lock().unwrap().clone();
    let denied = load.denied.lock().unwrap().clone();
    eprintln!(
        "load: {} allows, denials {denied:?}, {} unanswered, {in_flight_at_kill} in flight at the kill, {load_time:?}",
        allowed_before.len(),
        load.failed.load(Ordering::SeqCst),
    );
    assert!(
        allowed_before.len() > 100,
        "the load must produce a substantial number of allows, got {} in {load_time:?} (denials {denied:?})",
        allowed_before.len()
    );
    assert!(
        in_flight_at_kill >= min_in_flight,
        "the kill must happen while at least {min_in_flight} requests are in flight, got {in_flight_at_kill}"
    );
    assert!(
        !denied.contains_key("AUDIT_UNAVAILABLE"),
        "the store was up: no AUDIT_UNAVAILABLE expected, got {denied:?}"
    );
    let unique: HashSet<&String> = allowed_before.iter().collect();
    assert_eq!(
        unique.len(),
        allowed_before.len(),
        "decision ids are unique"
    );
    drop(server);

    // 2. Restart on the same store: service resumes.
    let mut server = Server::start(&cfg).await;
    let mut client = AuthorizationClient::connect(format!("http://{}", server.grpc))
        .await
        .expect("client connects");
    let mut allowed_after = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        for n in 0..2 {
            let resp = tokio::time::timeout(
                BOUND,
                client.check(build_request(&input(t, 9_000_000 + 10 * i as u64 + n))),
            )
            .await
            .expect("check answers in time")
            .expect("ext_authz never answers with a gRPC error");
            let v = response_json(&resp.into_inner());
            let id = allowed_id(&v).unwrap_or_else(|| {
                panic!("allowed after the restart: {v}\n{}", server.stderr_text())
            });
            allowed_after.push(id);
        }
    }
    let status = server.terminate().await;
    assert!(
        status.success(),
        "graceful exit after SIGTERM: {status}\n{}",
        server.stderr_text()
    );
    drop(server);

    // 3. Every allow the clients received has its committed record.
    let store = Store::connect(&url, 2, Duration::from_secs(5))
        .await
        .expect("store reachable");
    let committed: HashSet<String> = strings(
        &store,
        "SELECT event_id FROM audit_records WHERE kind = 'decision'",
    )
    .await
    .into_iter()
    .collect();
    let missing: Vec<&String> = allowed_before
        .iter()
        .chain(&allowed_after)
        .filter(|id| !committed.contains(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} allowed decisions have no committed audit record, e.g. {:?}",
        missing.len(),
        allowed_before.len() + allowed_after.len(),
        &missing[..missing.len().min(5)]
    );

    // 4. Per tenant: the killed process's chain (no chain_end) and the restarted process's chain,
    //    which names it as predecessor with its size and head, and was sealed by the SIGTERM.
    let all = chains(&store).await;
    for tenant in ["ke", "ug"] {
        let ids: Vec<&String> = all
            .iter()
            .filter(|(_, t)| t == tenant)
            .map(|(c, _)| c)
            .collect();
        assert_eq!(
            ids.len(),
            2,
            "tenant {tenant}: one chain per process: {ids:?}"
        );
        let (killed, restarted) = (ids[0], ids[1]);
        let (killed_size, killed_kind, killed_head, _) = end_record(&store, killed, true).await;
        assert_ne!(
            killed_kind, "chain_end",
            "tenant {tenant}: the killed process could not seal its chain"
        );
        let (seq, kind, _, body) = end_record(&store, restarted, false).await;
        assert_eq!((seq, kind.as_str()), (1, "chain_start"));
        let body: Value = serde_json::from_str(&body).unwrap();
        let prev = &body["detail"]["previous"];
        assert_eq!(
            prev["chain_id"],
            killed.as_str(),
            "tenant {tenant}: the new chain links to the killed one: {body}"
        );
        assert_eq!(prev["size"], killed_size, "{body}");
        assert_eq!(prev["head"], hex::encode(&killed_head), "{body}");
        let (_, kind, _, _) = end_record(&store, restarted, true).await;
        assert_eq!(
            kind, "chain_end",
            "tenant {tenant}: SIGTERM seals the chain"
        );
    }

    // 5. The store verifies against the pinned key…
    let trusted = TrustedKeys::new(&[vkey.as_str()]).unwrap();
    let report = scp_pep::audit::verify::verify_store(&store, None, Some(&trusted), None)
        .await
        .expect("store readable");
    assert!(report.ok, "{report:?}");
    assert!(report.keys_pinned);
    assert_eq!(report.chains, all.len() as u64, "{report:?}");
    assert!(
        report.records >= committed.len() as u64 && report.records > 0,
        "{report:?}"
    );
    assert!(report.checkpoints > 0, "{report:?}");
    store.close().await;

    // …and so says the operator's command.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_scp-pep"))
        .args(["audit", "verify", "--store", &url, "--key", &vkey])
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "audit verify: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(stdout.trim()).expect("verify prints a JSON report");
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["keys_pinned"], true, "{v}");
    assert_eq!(v["records"], report.records, "{v}");
}
