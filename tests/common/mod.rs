//! Test harness: a real IdP-like JWKS server over HTTP, the real scp-pep server on loopback ports,
//! a tonic ext_authz client, and helpers to mint tokens with real keys.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::{Path as AxPath, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use jsonwebtoken::Algorithm;
use scp_pep::check::{CheckInput, build_request, response_json};
use scp_pep::config::Config;
use scp_pep::server::Running;
use scp_pep::signer::{SigningKey, jwks_json};
use serde_json::Value;

pub use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;

/// The signing keys tests use. `rogue-*` keys are never published.
pub struct Keys(pub HashMap<String, SigningKey>);

impl Keys {
    pub fn generate() -> Keys {
        let mut m = HashMap::new();
        for (name, alg) in [
            ("ke-rs256", Algorithm::RS256),
            ("ke-ps256", Algorithm::PS256),
            ("ke-es256", Algorithm::ES256),
            ("ke-eddsa", Algorithm::EdDSA),
            ("ug-rs256", Algorithm::RS256),
            ("rogue-rs256", Algorithm::RS256),
        ] {
            m.insert(
                name.to_owned(),
                SigningKey::generate(alg, name).expect("keygen"),
            );
        }
        Keys(m)
    }

    pub fn get(&self, name: &str) -> &SigningKey {
        self.0
            .get(name)
            .unwrap_or_else(|| panic!("no test key `{name}`"))
    }
}

/// A JWKS server at Keycloak's paths; what each realm publishes can change at run time.
#[derive(Clone)]
pub struct Idp {
    pub base: String,
    pub keys: Arc<Keys>,
    /// realm → published key names
    published: Arc<RwLock<HashMap<String, Vec<String>>>>,
    /// realm → extra keys added at run time (rotation)
    extra: Arc<RwLock<HashMap<String, Vec<SigningKey>>>>,
    pub fetches: Arc<AtomicUsize>,
    /// When set, every JWKS request fails with 503.
    pub down: Arc<std::sync::atomic::AtomicBool>,
    /// Milliseconds every JWKS response is delayed (a slow IdP).
    pub delay_ms: Arc<std::sync::atomic::AtomicU64>,
    /// When set, every JWKS request is answered 200 with these bytes (garbage, a huge body).
    pub body: Arc<RwLock<Option<Vec<u8>>>>,
}

async fn certs(State(idp): State<Idp>, AxPath(realm): AxPath<String>) -> impl IntoResponse {
    idp.fetches.fetch_add(1, Ordering::SeqCst);
    let delay = idp.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
    if idp.down.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, Vec::new());
    }
    if let Some(b) = idp.body.read().unwrap().clone() {
        return (StatusCode::OK, b);
    }
    let published = idp.published.read().unwrap();
    let extra = idp.extra.read().unwrap();
    let mut keys: Vec<&SigningKey> = published
        .get(&realm)
        .map(|names| names.iter().map(|n| idp.keys.get(n)).collect())
        .unwrap_or_default();
    if let Some(x) = extra.get(&realm) {
        keys.extend(x.iter());
    }
    (StatusCode::OK, jwks_json(&keys).into_bytes())
}

impl Idp {
    pub async fn start(keys: Arc<Keys>) -> Idp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let published = HashMap::from([
            (
                "ke".to_owned(),
                vec![
                    "ke-rs256".into(),
                    "ke-ps256".into(),
                    "ke-es256".into(),
                    "ke-eddsa".into(),
                ],
            ),
            ("ug".to_owned(), vec!["ug-rs256".into()]),
        ]);
        let idp = Idp {
            base: format!("http://{addr}"),
            keys,
            published: Arc::new(RwLock::new(published)),
            extra: Arc::new(RwLock::new(HashMap::new())),
            fetches: Arc::new(AtomicUsize::new(0)),
            down: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            delay_ms: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            body: Arc::new(RwLock::new(None)),
        };
        let app = Router::new()
            .route("/realms/{realm}/protocol/openid-connect/certs", get(certs))
            .with_state(idp.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        idp
    }

    pub fn issuer(&self, realm: &str) -> String {
        format!("{}/realms/{realm}", self.base)
    }

    /// Keycloak-shaped claims for `integration` of `tenant` issued by this IdP, valid for 5
    /// minutes (`int-ke-moh`'s client is `ke-moh-connector`, others use their id).
    pub fn claims(
        &self,
        tenant: &str,
        integration: &str,
        verticals: &[&str],
        scope: &str,
    ) -> Value {
        scp_pep::signer::ClaimsSpec {
            issuer: &self.issuer(tenant),
            audience: "scp-pep",
            client_id: if integration == "int-ke-moh" {
                "ke-moh-connector"
            } else {
                integration
            },
            tenant_id: tenant,
            integration_id: integration,
            verticals,
            scope,
            ttl_s: 300,
        }
        .claims()
    }

    /// Publishes an additional key for `realm` (key rotation).
    pub fn add_key(&self, realm: &str, key: SigningKey) {
        self.extra
            .write()
            .unwrap()
            .entry(realm.into())
            .or_default()
            .push(key);
    }

    /// Stops publishing the fixture key `name` in `realm`.
    pub fn unpublish(&self, realm: &str, name: &str) {
        if let Some(v) = self.published.write().unwrap().get_mut(realm) {
            v.retain(|n| n != name);
        }
    }
}

/// Copies the fixture policies into `dest`, pointing tenants at `idp`.
pub fn write_policies(idp_base: &str, dest: &Path) {
    std::fs::create_dir_all(dest).unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/policies");
    for e in std::fs::read_dir(src).unwrap() {
        let p = e.unwrap().path();
        let text = std::fs::read_to_string(&p)
            .unwrap()
            .replace("{{IDP}}", idp_base);
        std::fs::write(dest.join(p.file_name().unwrap()), text).unwrap();
    }
}

/// A running scp-pep with its IdP, client and decision log.
pub struct Harness {
    pub idp: Idp,
    pub running: Running,
    pub client: AuthorizationClient<tonic::transport::Channel>,
    pub log_path: PathBuf,
    pub policy_dir: PathBuf,
    pub store_url: String,
    pub dir: tempfile::TempDir,
}

/// The configuration every test server starts from: loopback listeners on free ports, store
/// `store_url`, policies from `policy_dir`, decision log to `log_path`, fast change-feed polling.
pub fn test_config(store_url: &str, policy_dir: &Path, log_path: &Path) -> Config {
    let mut config = Config::default();
    config.server.grpc_listen = "127.0.0.1:0".parse().unwrap();
    config.server.http_listen = "127.0.0.1:0".parse().unwrap();
    config.store.url = store_url.to_owned();
    config.store.poll_interval_ms = 100;
    config.policy.dir = Some(policy_dir.to_owned());
    config.decision_log.output = log_path.display().to_string();
    config.auth.jwks_refetch_min_interval_s = 1;
    config
}

impl Harness {
    /// Starts everything; `store_url` `None` = a fresh SQLite file.
    pub async fn start(store_url: Option<String>) -> Harness {
        Self::start_with(store_url, |_| {}).await
    }

    pub async fn start_with(store_url: Option<String>, tweak: impl FnOnce(&mut Config)) -> Harness {
        Self::start_with_clock(store_url, tweak, Arc::new(scp_pep::consent::SystemClock)).await
    }

    /// [`Self::start_with`] with the clock consent evaluation reads (a `ManualClock` in tests
    /// that cross consent time boundaries).
    pub async fn start_with_clock(
        store_url: Option<String>,
        tweak: impl FnOnce(&mut Config),
        clock: Arc<dyn scp_pep::consent::Clock>,
    ) -> Harness {
        let keys = Arc::new(Keys::generate());
        let idp = Idp::start(keys).await;
        let dir = tempfile::tempdir().unwrap();
        let policy_dir = dir.path().join("policies");
        write_policies(&idp.base, &policy_dir);
        let log_path = dir.path().join("decisions.jsonl");
        let store_url =
            store_url.unwrap_or_else(|| format!("sqlite:{}", dir.path().join("pep.db").display()));
        let mut config = test_config(&store_url, &policy_dir, &log_path);
        tweak(&mut config);
        let running = scp_pep::server::start_with_clock(config, None, clock)
            .await
            .expect("scp-pep starts");
        seed_default_consents(&running.consents).await;
        let client = AuthorizationClient::connect(format!("http://{}", running.grpc_addr))
            .await
            .expect("client connects");
        Harness {
            idp,
            running,
            client,
            log_path,
            policy_dir,
            store_url,
            dir,
        }
    }

    /// Keycloak-shaped claims for `integration` of `tenant`, valid for 5 minutes.
    pub fn claims(
        &self,
        tenant: &str,
        integration: &str,
        verticals: &[&str],
        scope: &str,
    ) -> Value {
        self.idp.claims(tenant, integration, verticals, scope)
    }

    /// A staff token for the admin, consent and audit REST APIs: issued by `tenant`'s realm,
    /// audience `aud` (`scp-pep-admin` for most surfaces), subject `sub`, realm roles `roles`,
    /// valid for 600 s, signed with the tenant's RS256 key.
    pub fn staff_token(&self, tenant: &str, sub: &str, roles: &[&str], aud: &str) -> String {
        let now = chrono::Utc::now().timestamp();
        let claims = serde_json::json!({
            "iss": self.idp.issuer(tenant),
            "aud": aud,
            "sub": sub,
            "iat": now,
            "exp": now + 600,
            "realm_access": {"roles": roles},
        });
        self.sign(&format!("{tenant}-rs256"), &claims)
    }

    pub fn sign(&self, key: &str, claims: &Value) -> String {
        self.idp.keys.get(key).sign(claims)
    }

    /// Sends a real CheckRequest over gRPC and returns the CLI's JSON view of the response.
    pub async fn check(&mut self, input: &CheckInput) -> Value {
        let resp = self
            .client
            .check(build_request(input))
            .await
            .expect("ext_authz never answers with a gRPC error")
            .into_inner();
        response_json(&resp)
    }

    /// A GET with a bearer token.
    pub fn get(path: &str, token: &str) -> CheckInput {
        CheckInput {
            method: "GET".into(),
            path: path.into(),
            headers: vec![("authorization".into(), format!("Bearer {token}"))],
            source_ip: Some("192.0.2.1".into()),
            peer_certificate: None,
            body: None,
        }
    }

    /// The server's `/metrics` page (Prometheus text).
    pub async fn metrics_text(&self) -> String {
        reqwest::get(self.ops_url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub fn ops_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running.http_addr)
    }

    /// Waits (≤ 5 s) until the decision log has at least `n` lines, and returns them.
    pub async fn log_lines(&self, n: usize) -> Vec<Value> {
        for _ in 0..100 {
            let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
            let lines: Vec<Value> = text
                .lines()
                .filter(|l| !l.is_empty())
                .map(|l| serde_json::from_str(l).expect("decision log line is JSON"))
                .collect();
            if lines.len() >= n {
                return lines;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("decision log has fewer than {n} lines");
    }
}

/// The PostgreSQL server for store tests: `SCP_PEP_TEST_PG` or the machine's local server.
/// Tests fail (never skip) when it is unreachable.
pub fn pg_admin_url() -> String {
    std::env::var("SCP_PEP_TEST_PG")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".into())
}

/// Creates a fresh, empty PostgreSQL database and returns its URL.
pub async fn fresh_pg_database() -> String {
    use sqlx::Connection;
    let admin = pg_admin_url();
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL must be reachable at {admin} for store tests: {e}"));
    let name = format!("scp_pep_t_{}", uuid::Uuid::now_v7().simple());
    // `name` is generated here from a UUID: no outside input reaches this statement.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create test database");
    let base = admin
        .rsplit_once('/')
        .map(|(b, _)| b.to_owned())
        .unwrap_or(admin);
    format!("{base}/{name}")
}

/// How a [`TcpProxy`] treats connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    /// Forward bytes both ways.
    Up,
    /// Store down, fast: forwarded connections are closed and new ones are accepted and closed at
    /// once (the client reads EOF).
    Refuse,
    /// Store down, slow: forwarded connections are closed and new ones are accepted but never
    /// answered (a black hole) until the mode changes, when they are closed.
    Blackhole,
    /// PostgreSQL only: forward everything, except that a reply carrying a `COMMIT` command tag,
    /// or an `INSERT` one (in autocommit, an `INSERT`'s completion is its commit
    /// acknowledgement: the audit writer inserts a batch in one autocommit statement), is never
    /// delivered: the write is committed but the client never learns it (its connection hangs
    /// until the mode changes, then is closed).
    LoseCommitAck,
}

impl ProxyMode {
    fn forwards(self) -> bool {
        matches!(self, ProxyMode::Up | ProxyMode::LoseCommitAck)
    }
}

/// A TCP proxy on `127.0.0.1:0` in front of `upstream` (`host:port`), with a switch that takes
/// the upstream "down" ([`ProxyMode::Refuse`], [`ProxyMode::Blackhole`]) and back up, or loses
/// commit acknowledgements ([`ProxyMode::LoseCommitAck`]).
pub struct TcpProxy {
    pub addr: std::net::SocketAddr,
    mode: tokio::sync::watch::Sender<ProxyMode>,
    /// Connections currently forwarded (or about to be).
    active: Arc<AtomicUsize>,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicUsize>,
    /// Commit acknowledgements withheld so far.
    pub lost_commit_acks: Arc<AtomicUsize>,
}

/// Decrements a counter when dropped.
struct ActiveGuard(Arc<AtomicUsize>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// PostgreSQL `CommandComplete` tags that acknowledge a commit: `COMMIT`, and `INSERT 0 <n>` of
/// a statement in autocommit.
const COMMIT_TAGS: [&[u8]; 2] = [b"COMMIT\0", b"INSERT 0 "];
/// The longest of [`COMMIT_TAGS`].
const COMMIT_TAG_LEN: usize = 9;

/// Copies `from` to `to` while the mode forwards. `replies`: this is the server-to-client
/// direction, where [`ProxyMode::LoseCommitAck`] applies.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut rx: tokio::sync::watch::Receiver<ProxyMode>,
    replies: bool,
    lost: Arc<AtomicUsize>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    // The end of the previous chunk, so a tag split across two reads is still seen.
    let mut tail: Vec<u8> = Vec::new();
    loop {
        let n = tokio::select! {
            biased;
            _ = rx.wait_for(|m| !m.forwards()) => return,
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
        };
        let chunk = &buf[..n];
        let mode = *rx.borrow();
        if replies && mode == ProxyMode::LoseCommitAck {
            let mut window = std::mem::take(&mut tail);
            window.extend_from_slice(chunk);
            if COMMIT_TAGS
                .iter()
                .any(|t| window.windows(t.len()).any(|w| w == *t))
            {
                lost.fetch_add(1, Ordering::SeqCst);
                let _ = rx.wait_for(|m| *m != ProxyMode::LoseCommitAck).await;
                return;
            }
        }
        tail = chunk[n.saturating_sub(COMMIT_TAG_LEN)..].to_vec();
        if to.write_all(chunk).await.is_err() {
            return;
        }
    }
}

impl TcpProxy {
    /// Starts forwarding to `upstream` on the current Tokio runtime.
    pub async fn start(upstream: &str) -> TcpProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mode, rx) = tokio::sync::watch::channel(ProxyMode::Up);
        let active = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let lost_commit_acks = Arc::new(AtomicUsize::new(0));
        let upstream = upstream.to_owned();
        let (act, acc, lost) = (active.clone(), accepted.clone(), lost_commit_acks.clone());
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                acc.fetch_add(1, Ordering::SeqCst);
                // Counted before the mode is read: `set_mode` waits for this connection to close.
                act.fetch_add(1, Ordering::SeqCst);
                let guard = ActiveGuard(act.clone());
                let mut rx = rx.clone();
                let current = *rx.borrow_and_update();
                match current {
                    ProxyMode::Refuse => drop((client, guard)),
                    ProxyMode::Blackhole => {
                        drop(guard);
                        tokio::spawn(async move {
                            let _ = rx.wait_for(|m| *m != ProxyMode::Blackhole).await;
                            drop(client);
                        });
                    }
                    ProxyMode::Up | ProxyMode::LoseCommitAck => {
                        let upstream = upstream.clone();
                        let lost = lost.clone();
                        tokio::spawn(async move {
                            let _guard = guard;
                            let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                                return;
                            };
                            let _ = client.set_nodelay(true);
                            let _ = server.set_nodelay(true);
                            let (cr, cw) = client.into_split();
                            let (sr, sw) = server.into_split();
                            tokio::select! {
                                _ = pump(cr, sw, rx.clone(), false, lost.clone()) => {}
                                _ = pump(sr, cw, rx, true, lost) => {}
                            }
                            // Both sockets close here.
                        });
                    }
                }
            }
        });
        TcpProxy {
            addr,
            mode,
            active,
            accepted,
            lost_commit_acks,
        }
    }

    /// Switches the mode. Going down returns once every forwarded connection is closed (≤ 5 s),
    /// so nothing reaches the upstream afterwards.
    pub async fn set_mode(&self, mode: ProxyMode) {
        self.mode.send_replace(mode);
        if mode.forwards() {
            return;
        }
        let started = std::time::Instant::now();
        while self.active.load(Ordering::SeqCst) > 0 {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(5),
                "proxy connections did not close"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    pub fn mode(&self) -> ProxyMode {
        *self.mode.borrow()
    }
}

/// `url` (`postgres://user@host:port/db`) with its host and port replaced by `addr`.
pub fn pg_url_via(url: &str, addr: std::net::SocketAddr) -> String {
    let mut u = reqwest::Url::parse(url).expect("PostgreSQL URL");
    u.set_ip_host(addr.ip()).expect("settable host");
    u.set_port(Some(addr.port())).expect("settable port");
    u.to_string()
}

/// `host:port` of a PostgreSQL URL (port 5432 when absent).
pub fn pg_host_port(url: &str) -> String {
    let u = reqwest::Url::parse(url).expect("PostgreSQL URL");
    format!(
        "{}:{}",
        u.host_str().expect("PostgreSQL URL has a host"),
        u.port().unwrap_or(5432)
    )
}

/// Sum of the samples of the Prometheus metric `name` (any labels) in `/metrics` text; 0 when
/// absent.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Persons every [`Harness`] gives active, open-ended consent in tenant `ke` (verticals `health`,
/// `education`) and `ug` (`health`), so tests of other stages pass stage 7 (consent).
pub const SEEDED_PERSONS: &[&str] = &[
    "p-1", "p-2", "p-3", "p-4", "p-5", "p-6", "p-7", "p-8", "p-9", "p-123", "p-1001", "p-2001",
    "p-hang", "p-down", "me",
];

/// Registers `persons` as verified and captures active, open-ended consent (with evidence) for
/// each of `verticals` in `tenant`, through the same import operation as `scp-pep consent import`.
pub async fn seed_consents(
    consents: &scp_pep::consent::Consents,
    tenant: &str,
    verticals: &[&str],
    persons: &[String],
) {
    use scp_pep::consent::import::{ConsentDoc, ImportFile, PersonDoc, import};
    let mut file = ImportFile::default();
    for p in persons {
        file.persons.push(PersonDoc {
            tenant: tenant.into(),
            person_id: p.clone(),
            verification: "verified".into(),
            status: "active".into(),
            channels: vec!["email".into()],
        });
        for v in verticals {
            file.consents.push(ConsentDoc {
                tenant: tenant.into(),
                person_id: p.clone(),
                vertical_id: (*v).into(),
                purpose: None,
                active_from: "2000-01-01".into(),
                active_until: None,
                evidence_attachment_ids: vec!["att-seed".into()],
                fields: None,
            });
        }
    }
    import(consents, None, &file, "test-harness", |_| 30)
        .await
        .expect("seed consents");
}

/// [`seed_consents`] of [`SEEDED_PERSONS`] for the tenants and verticals of the test policies.
pub async fn seed_default_consents(consents: &scp_pep::consent::Consents) {
    let persons: Vec<String> = SEEDED_PERSONS.iter().map(|s| s.to_string()).collect();
    seed_consents(consents, "ke", &["health", "education"], &persons).await;
    seed_consents(consents, "ug", &["health"], &persons).await;
}

/// Audit records of `kind` whose body carries `"action":"<action>"` (admin changes name their
/// action in the detail).
#[allow(dead_code)]
pub async fn count_audit_events(store: &scp_pep::store::Store, kind: &str, action: &str) -> i64 {
    let sql = "SELECT COUNT(*) FROM audit_records WHERE kind = $1 AND body LIKE $2";
    let like = format!("%\"action\":\"{action}\"%");
    match store {
        scp_pep::store::Store::Sqlite(p) => sqlx::query_scalar(sql)
            .bind(kind)
            .bind(like)
            .fetch_one(p)
            .await
            .unwrap(),
        scp_pep::store::Store::Postgres(p) => sqlx::query_scalar(sql)
            .bind(kind)
            .bind(like)
            .fetch_one(p)
            .await
            .unwrap(),
    }
}

/// Runs each named `async fn name(url: String)` twice, as the tests `name::sqlite` (a fresh
/// SQLite file) and `name::postgres` (a fresh PostgreSQL database). With `optional:` the
/// function takes `Option<String>` and gets `None` (the harness's own SQLite store) instead.
macro_rules! on_both_stores {
    (optional: $($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name(None).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name(Some($crate::common::fresh_pg_database().await)).await;
                }
            }
        )*
    };
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    let dir = tempfile::tempdir().unwrap();
                    let url = format!("sqlite:{}", dir.path().join("store.db").display());
                    super::$name(url).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name($crate::common::fresh_pg_database().await).await;
                }
            }
        )*
    };
}

/// A loopback TCP port free at the time of the call (for a spawned `scp-pep serve`).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until a spawned server's `/readyz` on `http_port` answers 200 (at most 30 s).
pub async fn wait_ready(http_port: u16) {
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{http_port}/readyz");
    let started = std::time::Instant::now();
    loop {
        if let Ok(r) = client.get(&url).send().await
            && r.status() == 200
        {
            return;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "server did not become ready"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
