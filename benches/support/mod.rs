//! Shared setup for the benchmarks: an in-process JWKS server, the fixture policies with the
//! rate limit raised, a running scp-pep on loopback ports, and a signed token that it allows.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use jsonwebtoken::Algorithm;
use scp_pep::check::CheckInput;
use scp_pep::config::Config;
use scp_pep::pipeline::RequestFacts;
use scp_pep::server::Running;
use scp_pep::signer::{ClaimsSpec, SigningKey, jwks_json};

/// The request every benchmark sends: allowed by the fixture integration `int-ke-moh`.
pub const METHOD: &str = "GET";
pub const PATH: &str = "/v1/tenants/ke/health/persons/p-1/record";

/// A running scp-pep plus what a client needs to get allowed.
pub struct Bench {
    pub running: Running,
    pub key: Arc<SigningKey>,
    pub idp_base: String,
    pub token: String,
    /// Kept alive for the store file and the policy copy.
    pub dir: tempfile::TempDir,
}

impl Bench {
    /// Starts the JWKS server and scp-pep (decision log off) on the current tokio runtime.
    pub async fn start() -> Bench {
        Self::start_with(None).await
    }

    /// As [`Bench::start`]; `decision_log`: `Some(file)` enables the JSON-lines decision log
    /// written to `file` (relative to the bench's temp dir).
    pub async fn start_with(decision_log: Option<&str>) -> Bench {
        let key = Arc::new(SigningKey::generate(Algorithm::RS256, "ke-rs256").expect("keygen"));
        let idp_base = start_idp(key.clone()).await;

        let dir = tempfile::tempdir().expect("tempdir");
        let policy_dir = dir.path().join("policies");
        write_bench_policies(&idp_base, &policy_dir);

        let mut config = Config::default();
        config.server.grpc_listen = "127.0.0.1:0".parse().unwrap();
        config.server.http_listen = "127.0.0.1:0".parse().unwrap();
        config.store.url = format!("sqlite:{}", dir.path().join("b.db").display());
        config.policy.dir = Some(policy_dir);
        config.decision_log.enabled = decision_log.is_some();
        if let Some(f) = decision_log {
            config.decision_log.output = dir.path().join(f).display().to_string();
        }
        config.auth.token_cache_entries = 10_000;
        let running = scp_pep::server::start(config, None)
            .await
            .expect("scp-pep starts");

        let token = sign_token(&key, &idp_base);
        Bench {
            running,
            key,
            idp_base,
            token,
            dir,
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
/// integration's rate limit so that the load benchmark measures decisions, not 429s.
fn write_bench_policies(idp_base: &str, dest: &Path) {
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
