//! Shared setup for the benchmarks: an in-process JWKS server, the fixture policies with the
//! rate limit raised, a running scp-pep on loopback ports, and a signed token that it allows.
//!
//! The audit log and the store are chosen by [`Options`] (`BENCH_AUDIT` = `off` (default) |
//! `buffered` | `durable`; `BENCH_STORE` = `sqlite` (default, a temp file) | `postgres` (a fresh
//! database on `BENCH_PG_URL`, default `postgres://root@127.0.0.1:5432/test`, dropped by
//! [`Bench::stop`])); `BENCH_SELF_VERIFY_S` sets `audit.verify_interval_s` (default 60; 0 turns
//! the in-process self-verifier off, so that its periodic passes do not land in a random phase of
//! a throughput comparison). The default is the audit log off so that figures stay comparable with those
//! measured before the audit log existed.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use jsonwebtoken::Algorithm;
use scp_pep::audit::AuditMode;
use scp_pep::check::CheckInput;
use scp_pep::config::Config;
use scp_pep::limits::RateBackend;
use scp_pep::pipeline::RequestFacts;
use scp_pep::server::Running;
use scp_pep::signer::{ClaimsSpec, SigningKey, jwks_json};

/// The request every benchmark sends: allowed by the fixture integration `int-ke-moh`.
pub const METHOD: &str = "GET";
pub const PATH: &str = "/v1/tenants/ke/health/persons/p-1/record";

/// Which store scp-pep runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// A SQLite file in the bench's temp dir (the default).
    Sqlite,
    /// A fresh database on the local PostgreSQL server.
    Postgres,
}

/// How to start scp-pep for a benchmark.
#[derive(Debug, Clone)]
pub struct Options {
    /// `Some(file)`: the JSON-lines decision log, written to `file` in the bench's temp dir.
    pub decision_log: Option<String>,
    /// The audit log mode (`Off` by default).
    pub audit: AuditMode,
    pub store: StoreKind,
    /// `audit.verify_interval_s` (the in-process self-verifier; 0 = off). `None`: the default
    /// (60 s). From `BENCH_SELF_VERIFY_S`.
    pub self_verify_s: Option<u64>,
    /// `Some(url)`: run on this existing database (not dropped by [`Bench::stop`]) instead of a
    /// fresh one; `store` must name its kind. Used for the consent bench's reusable datasets.
    pub store_url: Option<String>,
    /// Drop `person_id` from every route of the policy copy: those routes then touch no person
    /// and skip stage 7 (the consent bench's baseline).
    pub routes_without_person_id: bool,
    /// `consent.cache_entries`; `None`: the default.
    pub consent_cache_entries: Option<u64>,
    /// `[rate_limit] backend` (issue 14): `Redis` counts every check in Redis (`BENCH_REDIS_URL`,
    /// default the local server; a fresh key prefix per instance; `on_redis_error = "deny"`, so a
    /// Redis failure shows as an error rather than a silent local fallback).
    pub rate_backend: RateBackend,
}

impl Options {
    /// Decision log off; audit and store from `BENCH_AUDIT` and `BENCH_STORE` (default `off`,
    /// `sqlite`). Panics on an unknown value rather than measuring the wrong thing.
    pub fn from_env() -> Options {
        Options {
            decision_log: None,
            audit: std::env::var("BENCH_AUDIT")
                .ok()
                .filter(|v| !v.is_empty())
                .map_or(AuditMode::Off, |v| parse_audit(&v)),
            store: match std::env::var("BENCH_STORE").ok().as_deref() {
                None | Some("") | Some("sqlite") => StoreKind::Sqlite,
                Some("postgres") | Some("pg") => StoreKind::Postgres,
                Some(o) => panic!("BENCH_STORE={o}: expected sqlite or postgres"),
            },
            self_verify_s: std::env::var("BENCH_SELF_VERIFY_S")
                .ok()
                .and_then(|v| v.parse().ok()),
            store_url: None,
            routes_without_person_id: false,
            consent_cache_entries: None,
            rate_backend: match std::env::var("BENCH_RATE_BACKEND").ok().as_deref() {
                Some("redis") => RateBackend::Redis,
                _ => RateBackend::Local,
            },
        }
    }
}

/// `off`, `buffered` or `durable`.
pub fn parse_audit(v: &str) -> AuditMode {
    match v.trim() {
        "off" => AuditMode::Off,
        "buffered" => AuditMode::Buffered,
        "durable" => AuditMode::Durable,
        o => panic!("audit mode {o:?}: expected off, buffered or durable"),
    }
}

/// The lower-case name of `m`.
pub fn audit_name(m: AuditMode) -> &'static str {
    match m {
        AuditMode::Off => "off",
        AuditMode::Buffered => "buffered",
        AuditMode::Durable => "durable",
    }
}

/// A running scp-pep plus what a client needs to get allowed.
pub struct Bench {
    pub running: Running,
    pub key: Arc<SigningKey>,
    pub idp_base: String,
    pub token: String,
    pub options: Options,
    /// PostgreSQL: (admin URL, database name) of the database to drop in [`Bench::stop`].
    pg_db: Option<(String, String)>,
    /// Kept alive for the store file and the policy copy.
    pub dir: tempfile::TempDir,
}

impl Bench {
    /// Starts the JWKS server and scp-pep (decision log off, audit and store from the
    /// environment: [`Options::from_env`]) on the current tokio runtime.
    pub async fn start() -> Bench {
        Self::start_with(Options::from_env()).await
    }

    /// As [`Bench::start`], with explicit options.
    pub async fn start_with(options: Options) -> Bench {
        let key = Arc::new(SigningKey::generate(Algorithm::RS256, "ke-rs256").expect("keygen"));
        let idp_base = start_idp(key.clone()).await;

        let dir = tempfile::tempdir().expect("tempdir");
        let policy_dir = dir.path().join("policies");
        write_bench_policies(&idp_base, &policy_dir, options.routes_without_person_id);

        let mut config = Config::default();
        config.server.grpc_listen = "127.0.0.1:0".parse().unwrap();
        config.server.http_listen = "127.0.0.1:0".parse().unwrap();
        let mut pg_db = None;
        config.store.url = match (&options.store_url, options.store) {
            (Some(url), _) => url.clone(),
            (None, StoreKind::Sqlite) => format!("sqlite:{}", dir.path().join("b.db").display()),
            (None, StoreKind::Postgres) => {
                let (url, admin, name) = fresh_pg_database().await;
                pg_db = Some((admin, name));
                url
            }
        };
        config.policy.dir = Some(policy_dir);
        config.decision_log.enabled = options.decision_log.is_some();
        if let Some(f) = &options.decision_log {
            config.decision_log.output = dir.path().join(f).display().to_string();
        }
        config.audit.mode = options.audit;
        if let Some(s) = options.self_verify_s {
            config.audit.verify_interval_s = s;
        }
        config.auth.token_cache_entries = 10_000;
        // `BENCH_OTLP_RATIO=r`: OpenTelemetry on, spans of a share `r` of decisions exported to an
        // in-process OTLP receiver that counts and drops them (the cost of tracing).
        if let Some(ratio) = std::env::var("BENCH_OTLP_RATIO")
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
        {
            config.tracing.otlp_endpoint = format!("http://{}", start_otlp_sink().await);
            config.tracing.sample_ratio = ratio;
            let provider = scp_pep::telemetry::provider(&config.tracing)
                .expect("tracing config")
                .expect("tracing on");
            use tracing_subscriber::layer::SubscriberExt as _;
            use tracing_subscriber::util::SubscriberInitExt as _;
            let _ = tracing_subscriber::registry()
                .with(scp_pep::telemetry::layer(&provider))
                .try_init();
            // Kept for the process's lifetime: dropping it would stop the export.
            std::mem::forget(provider);
        }
        // The HTTP authorization listener (Envoy `http_service` mode), idle unless a bench uses it.
        config.http_authz.enabled = true;
        config.http_authz.listen = "127.0.0.1:0".parse().unwrap();
        if let Some(n) = options.consent_cache_entries {
            config.consent.cache_entries = n;
        }
        if options.rate_backend == RateBackend::Redis {
            config.rate_limit.backend = RateBackend::Redis;
            config.rate_limit.redis_url = std::env::var("BENCH_REDIS_URL")
                .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
            config.rate_limit.key_prefix =
                format!("scp-pep-bench:{}:", uuid::Uuid::now_v7().simple());
            config.rate_limit.on_redis_error = scp_pep::limits::RedisErrorMode::Deny;
        }
        let running = scp_pep::server::start(config, None)
            .await
            .expect("scp-pep starts");
        if options.store_url.is_none() && !options.routes_without_person_id {
            // The person of `PATH` has active consent, so stage 7 allows.
            let seed: scp_pep::consent::import::ImportFile = serde_yaml_ng::from_str(
                "persons: [{tenant: ke, person_id: p-1}]\n\
                 consents: [{tenant: ke, person_id: p-1, vertical_id: health, active_from: 2020-01-01, evidence_attachment_ids: [att-1]}]\n",
            )
            .expect("seed file");
            scp_pep::consent::import::import(&running.consents, None, &seed, "bench", |_| 30)
                .await
                .expect("seed consent");
        }

        let token = sign_token(&key, &idp_base);
        Bench {
            running,
            key,
            idp_base,
            token,
            options,
            pg_db,
            dir,
        }
    }

    /// A one-line description: store, audit mode, and SQLite's `synchronous` / `journal_mode`.
    pub async fn describe(&self) -> String {
        let store = match &self.running.store {
            scp_pep::store::Store::Sqlite(p) => {
                let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
                    .fetch_one(p)
                    .await
                    .unwrap_or(-1);
                let jm: String = sqlx::query_scalar("PRAGMA journal_mode")
                    .fetch_one(p)
                    .await
                    .unwrap_or_default();
                let sync = match sync {
                    0 => "OFF",
                    1 => "NORMAL",
                    2 => "FULL",
                    3 => "EXTRA",
                    _ => "?",
                };
                format!("sqlite (journal_mode={jm}, synchronous={sync})")
            }
            scp_pep::store::Store::Postgres(p) => {
                let sc: String = sqlx::query_scalar("SHOW synchronous_commit")
                    .fetch_one(p)
                    .await
                    .unwrap_or_default();
                let fs: String = sqlx::query_scalar("SHOW fsync")
                    .fetch_one(p)
                    .await
                    .unwrap_or_default();
                format!("postgres (synchronous_commit={sc}, fsync={fs})")
            }
        };
        format!(
            "store={store} audit={} rate_backend={:?} self_verify_interval={}",
            audit_name(self.options.audit),
            self.options.rate_backend,
            self.options
                .self_verify_s
                .map_or("default (60 s)".to_string(), |s| format!("{s} s"))
        )
    }

    /// Shuts scp-pep down (sealing the audit chains) and drops the PostgreSQL database, if any.
    pub async fn stop(self) {
        if std::env::var_os("BENCH_OTLP_RATIO").is_some() {
            println!(
                "OTLP spans received by the sink so far: {}",
                OTLP_SPANS.load(std::sync::atomic::Ordering::Relaxed)
            );
        }
        self.running.shutdown().await;
        if let Some((admin, name)) = self.pg_db {
            drop_pg_database(&admin, &name).await;
        }
    }

    /// The request facts of the allowed request.
    pub fn facts(&self) -> RequestFacts {
        facts_for(&self.token)
    }

    /// The `CheckInput` of the allowed request (for gRPC).
    pub fn check_input(&self) -> CheckInput {
        CheckInput {
            method: METHOD.into(),
            path: PATH.into(),
            headers: vec![
                ("authorization".into(), format!("Bearer {}", self.token)),
                ("user-agent".into(), "scp-pep-bench/1".into()),
                ("accept".into(), "application/json".into()),
                ("x-request-id".into(), "bench-0001".into()),
            ],
            source_ip: Some("10.20.1.2".into()),
            peer_certificate: None,
            body: None,
        }
    }
}

/// A fresh token for `int-ke-moh`, valid for an hour.
pub fn sign_token(key: &SigningKey, idp_base: &str) -> String {
    let issuer = format!("{idp_base}/realms/ke");
    key.sign(
        &ClaimsSpec {
            issuer: &issuer,
            audience: "scp-pep",
            client_id: "ke-moh-connector",
            tenant_id: "ke",
            integration_id: "int-ke-moh",
            verticals: &["health"],
            scope: "health:person:read",
            ttl_s: 3600,
        }
        .claims(),
    )
}

/// Facts of the allowed request with `token`, headers as Envoy reports them.
pub fn facts_for(token: &str) -> RequestFacts {
    let mut headers = HashMap::new();
    headers.insert("authorization".to_string(), format!("Bearer {token}"));
    headers.insert(":method".to_string(), METHOD.to_string());
    headers.insert(":path".to_string(), PATH.to_string());
    headers.insert(":authority".to_string(), "scp.local".to_string());
    headers.insert("user-agent".to_string(), "scp-pep-bench/1".to_string());
    headers.insert("accept".to_string(), "application/json".to_string());
    headers.insert("x-request-id".to_string(), "bench-0001".to_string());
    RequestFacts {
        method: METHOD.into(),
        path: PATH.into(),
        headers,
        source_ip: Some("10.20.1.2".parse().unwrap()),
        peer_certificate: None,
        ..RequestFacts::default()
    }
}

/// `BENCH_PG_URL`, else the local test server.
pub fn pg_admin_url() -> String {
    std::env::var("BENCH_PG_URL").unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".into())
}

/// Creates a fresh, empty PostgreSQL database; returns (its URL, the admin URL, its name).
pub async fn fresh_pg_database() -> (String, String, String) {
    use sqlx::Connection;
    let admin = pg_admin_url();
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL must be reachable at {admin}: {e}"));
    let name = format!("scp_pep_bench_{}", uuid::Uuid::now_v7().simple());
    // `name` is generated here from a UUID: no outside input reaches this statement.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create bench database");
    let _ = conn.close().await;
    let base = admin
        .rsplit_once('/')
        .map(|(b, _)| b.to_owned())
        .unwrap_or_else(|| admin.clone());
    (format!("{base}/{name}"), admin, name)
}

/// Drops a database made by [`fresh_pg_database`] (best effort: a failure is only printed).
pub async fn drop_pg_database(admin: &str, name: &str) {
    use sqlx::Connection;
    let res = async {
        let mut conn = sqlx::PgConnection::connect(admin).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&mut conn)
        .await?;
        conn.close().await
    }
    .await;
    if let Err(e) = res {
        eprintln!("could not drop bench database {name}: {e}");
    }
}

/// Sum of the samples of Prometheus metric `name` (any labels) in the process-wide registry
/// (the same text scp-pep serves at `/metrics`); 0 when absent.
pub fn metric_sum(name: &str) -> f64 {
    let Some(h) = scp_pep::server::prometheus() else {
        return 0.0;
    };
    let text = h.render();
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The audit writer's counters (process-wide: all scp-pep instances of the process add up).
#[derive(Debug, Clone, Copy, Default)]
pub struct AuditCounters {
    /// Records committed (all kinds).
    pub records: f64,
    /// Transactions committed.
    pub commits: f64,
    /// Records in those transactions (sum of the batch-size histogram).
    pub batch_records: f64,
    /// Seconds spent in those transactions (sum of the commit-duration histogram).
    pub commit_seconds: f64,
    pub rejected: f64,
    pub write_failures: f64,
    pub checkpoints: f64,
    /// Records re-verified by the in-process self-verifier.
    pub verified: f64,
}

impl AuditCounters {
    pub fn read() -> AuditCounters {
        AuditCounters {
            records: metric_sum("scp_pep_audit_records_total"),
            commits: metric_sum("scp_pep_audit_commit_batch_records_count"),
            batch_records: metric_sum("scp_pep_audit_commit_batch_records_sum"),
            commit_seconds: metric_sum("scp_pep_audit_commit_duration_seconds_sum"),
            rejected: metric_sum("scp_pep_audit_rejected_total"),
            write_failures: metric_sum("scp_pep_audit_write_failures_total"),
            checkpoints: metric_sum("scp_pep_audit_checkpoints_total"),
            verified: metric_sum("scp_pep_audit_verified_records_total"),
        }
    }

    /// `self - earlier`, as a one-line summary.
    pub fn since(&self, earlier: &AuditCounters) -> String {
        let commits = self.commits - earlier.commits;
        let recs = self.batch_records - earlier.batch_records;
        let secs = self.commit_seconds - earlier.commit_seconds;
        format!(
            "audit: {:.0} records committed in {commits:.0} transactions (mean {:.1} records/commit, \
             mean commit {:.2} ms, writer busy {:.1} s); rejected {:.0}, write failures {:.0}, \
             checkpoints {:.0}, self-verified {:.0}",
            self.records - earlier.records,
            recs / commits.max(1.0),
            secs * 1e3 / commits.max(1.0),
            secs,
            self.rejected - earlier.rejected,
            self.write_failures - earlier.write_failures,
            self.checkpoints - earlier.checkpoints,
            self.verified - earlier.verified,
        )
    }
}

/// Serves `/realms/{realm}/protocol/openid-connect/certs` with `key`; returns the base URL.
async fn start_idp(key: Arc<SigningKey>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let body = jwks_json(&[&key]);
    let app = Router::new().route(
        "/realms/{realm}/protocol/openid-connect/certs",
        get(move || {
            let b = body.clone();
            async move { ([("content-type", "application/json")], b) }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

/// Copies `tests/fixtures/policies` to `dest`, pointing tenants at `idp_base` and raising every
/// integration's rate limit so that the load benchmark measures decisions, not 429s. With
/// `without_person_id`, routes lose their `person_id` (no person, so no stage 7).
fn write_bench_policies(idp_base: &str, dest: &Path, without_person_id: bool) {
    std::fs::create_dir_all(dest).unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/policies");
    for e in std::fs::read_dir(src).unwrap() {
        let p = e.unwrap().path();
        let mut text = std::fs::read_to_string(&p)
            .unwrap()
            .replace("{{IDP}}", idp_base);
        if p.file_name().is_some_and(|n| n == "integrations.yaml") {
            assert!(text.contains("per_second: 1000, burst: 5000"));
            text = text.replace(
                "per_second: 1000, burst: 5000",
                "per_second: 1000000, burst: 1000000",
            );
        }
        if without_person_id && p.file_name().is_some_and(|n| n == "routes.yaml") {
            text = text
                .lines()
                .filter(|l| !l.trim_start().starts_with("person_id:"))
                .map(|l| format!("{l}\n"))
                .collect();
        }
        std::fs::write(dest.join(p.file_name().unwrap()), text).unwrap();
    }
}

/// Percentile `q` (0..=1) of sorted `v` (nearest rank).
pub fn pct(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Resident set size of this process, kB (0 when /proc is unavailable).
pub fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

/// A no-op ext_authz server. `None`: answers `CheckResponse::with_status(OK)` (the baseline the
/// load and Envoy benches compare with); `Some(r)`: answers a clone of `r` (a real scp-pep allow
/// response, to separate the cost of the response's size from the cost of deciding).
struct Noop(Option<Arc<envoy_types::ext_authz::v3::pb::CheckResponse>>);

#[tonic::async_trait]
impl envoy_types::ext_authz::v3::pb::Authorization for Noop {
    async fn check(
        &self,
        _request: tonic::Request<envoy_types::ext_authz::v3::pb::CheckRequest>,
    ) -> Result<tonic::Response<envoy_types::ext_authz::v3::pb::CheckResponse>, tonic::Status> {
        use envoy_types::ext_authz::v3::CheckResponseExt;
        Ok(tonic::Response::new(match &self.0 {
            None => {
                envoy_types::ext_authz::v3::pb::CheckResponse::with_status(tonic::Status::ok(""))
            }
            Some(r) => (**r).clone(),
        }))
    }
}

/// Starts a no-op ext_authz server (see [`Noop`]) on a loopback port of the current runtime;
/// sending on the returned channel stops it.
pub async fn start_noop(
    canned: Option<envoy_types::ext_authz::v3::pb::CheckResponse>,
) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(envoy_types::ext_authz::v3::pb::AuthorizationServer::new(
                Noop(canned.map(Arc::new)),
            ))
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = rx.await;
            })
            .await;
    });
    (addr, tx)
}

/// Spans received by [`start_otlp_sink`].
pub static OTLP_SPANS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[derive(Default)]
struct OtlpSink;

#[tonic::async_trait]
impl opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService
    for OtlpSink
{
    async fn export(
        &self,
        req: tonic::Request<
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest,
        >,
    ) -> Result<
        tonic::Response<
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse,
        >,
        tonic::Status,
    > {
        let n: usize = req
            .into_inner()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        OTLP_SPANS.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(tonic::Response::new(Default::default()))
    }
}

/// An OTLP/gRPC trace receiver on loopback that counts spans ([`OTLP_SPANS`]) and drops them.
pub async fn start_otlp_sink() -> std::net::SocketAddr {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(
                TraceServiceServer::new(OtlpSink)
                    .accept_compressed(tonic::codec::CompressionEncoding::Gzip),
            )
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
    });
    addr
}
