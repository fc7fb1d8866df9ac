//! End-to-end: access tokens issued by a real OpenID provider (the npm package `oidc-provider`,
//! configured like Keycloak: client-credentials grant, JWT access tokens with `at+jwt`, `azp`,
//! custom `tenant_id` / `integration_id` / `verticals` claims) are checked by the real scp-pep
//! gRPC server on loopback — including a signing-key rotation at the provider in the middle of the
//! test, which scp-pep must follow from the provider's JWKS without a restart.
//!
//! The provider is `tests/oidc/provider.mjs`; its dependencies are installed with `npm ci` when
//! `tests/oidc/node_modules` is missing, so a fresh clone works (Node.js ≥ 20 and npm are required;
//! the test fails, never skips, without them).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use scp_pep::check::{CheckInput, build_request, response_json};
use scp_pep::config::Config;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// Upper bound for `npm ci` on a cold cache.
const NPM_CI_TIMEOUT: Duration = Duration::from_secs(600);
/// Upper bound for the provider to print its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Upper bound for any single HTTP or gRPC exchange.
const IO_TIMEOUT: Duration = Duration::from_secs(15);
/// `auth.jwks_refetch_min_interval_s` of the scp-pep under test.
const REFETCH_INTERVAL: Duration = Duration::from_secs(1);
/// Sleeping this long guarantees the next unknown `kid` may trigger a JWKS refetch.
const PAST_REFETCH_INTERVAL: Duration = Duration::from_millis(1500);

const CLIENT: (&str, &str) = ("ke-int1-connector", "int1-secret");
const CLIENT_NO_INTEGRATION: (&str, &str) = ("ke-no-integration", "noint-secret");
const CLIENT_WRONG_TENANT: (&str, &str) = ("ke-wrong-tenant", "wrongtenant-secret");
const CLIENT_UNBOUND: (&str, &str) = ("ke-unbound", "unbound-secret");

const RECORD_PATH: &str = "/v1/tenants/ke/health/persons/p-123/record";

fn oidc_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oidc")
}

/// Runs `npm ci` in `tests/oidc` when its dependencies are not installed.
async fn ensure_node_modules() {
    let dir = oidc_dir();
    if dir.join("node_modules/oidc-provider").is_dir() {
        return;
    }
    eprintln!("oidc_e2e: tests/oidc/node_modules missing, running `npm ci`");
    let mut child = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("npm must be installed to run the OIDC end-to-end test");
    let status = tokio::time::timeout(NPM_CI_TIMEOUT, child.wait())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "`npm ci` in {} took longer than {NPM_CI_TIMEOUT:?}",
                dir.display()
            )
        })
        .expect("npm ci runs");
    assert!(
        status.success(),
        "`npm ci` in {} failed: {status}",
        dir.display()
    );
}

/// The running `tests/oidc/provider.mjs`.
struct Provider {
    child: Child,
    /// The provider exits when its stdin closes: held open for the whole test.
    stdin: Option<ChildStdin>,
    _stdout: BufReader<ChildStdout>,
    stderr: Arc<Mutex<String>>,
    issuer: String,
    jwks_uri: String,
    token_endpoint: String,
    kid: String,
    http: reqwest::Client,
    _config_dir: tempfile::TempDir,
}

impl Drop for Provider {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- oidc provider stderr ---\n{}",
                self.stderr.lock().unwrap()
            );
        }
        // `kill_on_drop` ends the process when `child` drops.
    }
}

impl Provider {
    async fn start(config: Value) -> Provider {
        ensure_node_modules().await;
        let config_dir = tempfile::tempdir().unwrap();
        let config_path = config_dir.path().join("provider.json");
        std::fs::write(&config_path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        let mut child = Command::new("node")
            .arg(oidc_dir().join("provider.mjs"))
            .arg(&config_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node must be installed to run the OIDC end-to-end test");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let stderr_buf = Arc::new(Mutex::new(String::new()));
        {
            let buf = stderr_buf.clone();
            let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
            tokio::spawn(async move {
                while let Ok(Some(l)) = lines.next_line().await {
                    let mut b = buf.lock().unwrap();
                    b.push_str(&l);
                    b.push('\n');
                }
            });
        }
        let mut line = String::new();
        let read = tokio::time::timeout(READY_TIMEOUT, stdout.read_line(&mut line)).await;
        let ready: Value = match read {
            Ok(Ok(n)) if n > 0 => serde_json::from_str(line.trim())
                .unwrap_or_else(|e| panic!("provider ready line is not JSON ({e}): {line:?}")),
            other => {
                // Give the stderr drain a moment to collect the reason.
                tokio::time::sleep(Duration::from_millis(200)).await;
                panic!(
                    "OIDC provider did not print its ready line within {READY_TIMEOUT:?} ({other:?}); stderr:\n{}",
                    stderr_buf.lock().unwrap()
                );
            }
        };
        let s = |k: &str| {
            ready[k]
                .as_str()
                .unwrap_or_else(|| panic!("ready line lacks `{k}`: {ready}"))
                .to_owned()
        };
        let http = reqwest::Client::builder()
            .timeout(IO_TIMEOUT)
            .build()
            .unwrap();
        Provider {
            child,
            stdin: Some(stdin),
            _stdout: stdout,
            stderr: stderr_buf,
            issuer: s("issuer"),
            jwks_uri: s("jwks_uri"),
            token_endpoint: s("token_endpoint"),
            kid: s("kid"),
            http,
            _config_dir: config_dir,
        }
    }

    /// A client-credentials access token for `client`, requesting `scope`.
    async fn token(&self, client: (&str, &str), scope: &str) -> String {
        use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
        let body = format!(
            "grant_type=client_credentials&scope={}",
            utf8_percent_encode(scope, NON_ALPHANUMERIC)
        );
        let resp = self
            .http
            .post(&self.token_endpoint)
            .basic_auth(client.0, Some(client.1))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .expect("token endpoint answers");
        let status = resp.status();
        let text = resp.text().await.expect("token response body");
        assert!(
            status.is_success(),
            "token request for {} failed: HTTP {status}: {text}",
            client.0
        );
        let v: Value = serde_json::from_str(&text).expect("token response is JSON");
        v["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no access_token in {v}"))
            .to_owned()
    }

    /// `POST /admin/rotate` etc.; returns the JSON answer.
    async fn admin(&self, method: reqwest::Method, path: &str) -> Value {
        let resp = self
            .http
            .request(method, format!("{}{path}", self.issuer))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        assert!(resp.status().is_success(), "{path}: HTTP {}", resp.status());
        resp.json().await.expect("admin answer is JSON")
    }

    /// The `kid`s the provider's JWKS publishes, sorted.
    async fn published_kids(&self) -> Vec<String> {
        let jwks: Value = self
            .http
            .get(&self.jwks_uri)
            .send()
            .await
            .expect("JWKS answers")
            .json()
            .await
            .expect("JWKS is JSON");
        let mut kids: Vec<String> = jwks["keys"]
            .as_array()
            .expect("JWKS has keys")
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect();
        kids.sort();
        kids
    }

    /// Kills the provider and waits for it to exit.
    async fn stop(mut self) {
        drop(self.stdin.take());
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(IO_TIMEOUT, self.child.wait()).await;
    }
}

/// Decodes one base64url JSON part of a compact JWS (0 = header, 1 = payload).
fn jwt_part(token: &str, i: usize) -> Value {
    let part = token.split('.').nth(i).expect("compact JWS");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("JSON")
}

fn kid_of(token: &str) -> String {
    jwt_part(token, 0)["kid"]
        .as_str()
        .expect("token has a kid")
        .to_owned()
}

fn policy_yaml(issuer: &str, jwks_uri: &str) -> String {
    format!(
        r#"tenants:
  - id: ke
    residency_region: africa-east
    issuer: "{issuer}"
    jwks: {{url: "{jwks_uri}"}}
integrations:
  - id: int-1
    tenant: ke
    partner_name: OIDC end-to-end partner
    legal_basis: Test agreement int-1
    state: active
    verticals: [health, education]
    scopes: [health:read]
    client_id: {client}
    rate_limit: {{per_second: 1000, burst: 5000}}
routes:
  - id: health-person-record
    methods: [GET]
    path: /v1/tenants/{{tenant}}/health/persons/{{person_id}}/record
    verticals: [health]
    action: read
    resource: person_health_record
    scope: health:read
    person_id: {{in: path, name: person_id}}
    data_categories: [identity.basic, health.clinical]
    kind: real_time
"#,
        client = CLIENT.0
    )
}

/// Sends a real `CheckRequest` for a GET of `path` with `token` and returns the CLI's JSON view.
async fn check(
    client: &mut AuthorizationClient<tonic::transport::Channel>,
    path: &str,
    token: &str,
) -> Value {
    let input = CheckInput {
        method: "GET".into(),
        path: path.into(),
        headers: vec![("authorization".into(), format!("Bearer {token}"))],
        source_ip: Some("192.0.2.1".into()),
        peer_certificate: None,
        body: None,
    };
    let resp = tokio::time::timeout(IO_TIMEOUT, client.check(build_request(&input)))
        .await
        .expect("ext_authz answers in time")
        .expect("ext_authz never answers with a gRPC error")
        .into_inner();
    response_json(&resp)
}

fn assert_allowed(r: &Value, what: &str) {
    assert_eq!(
        r["allowed"],
        json!(true),
        "{what}: expected allow, got {r:#}"
    );
    assert_eq!(r["status"], json!(200), "{what}: {r:#}");
    assert_eq!(r["code"], json!("OK"), "{what}: {r:#}");
    assert_eq!(
        r["headers_set"]["x-scp-tenant-id"],
        json!("ke"),
        "{what}: {r:#}"
    );
    assert_eq!(
        r["headers_set"]["x-scp-integration-id"],
        json!("int-1"),
        "{what}: {r:#}"
    );
}

fn assert_denied(r: &Value, status: u16, code: &str, what: &str) {
    assert_eq!(
        r["allowed"],
        json!(false),
        "{what}: expected deny, got {r:#}"
    );
    assert_eq!(r["status"], json!(status), "{what}: {r:#}");
    assert_eq!(r["code"], json!(code), "{what}: {r:#}");
}

/// `scp_pep_jwks_fetch_total{result="ok"}` from scp-pep's `/metrics` (one server per test
/// binary, so the process-wide counter is this server's).
async fn jwks_fetches_ok(http: &reqwest::Client, http_addr: std::net::SocketAddr) -> u64 {
    let text = http
        .get(format!("http://{http_addr}/metrics"))
        .send()
        .await
        .expect("/metrics answers")
        .text()
        .await
        .expect("/metrics body");
    text.lines()
        .find(|l| l.starts_with("scp_pep_jwks_fetch_total{") && l.contains(r#"result="ok""#))
        .and_then(|l| l.rsplit(' ').next())
        .map(|n| n.parse::<f64>().expect("counter value") as u64)
        .unwrap_or(0)
}

/// INT-4.2-1, INT-4.2-2, INT-4.2-3, EXT-5.2-1
///
/// Tokens from a real OpenID provider are verified through the real gRPC ext_authz server: an
/// allowed call, claim and scope denials, and a signing-key rotation (new key picked up from the
/// JWKS on the unknown `kid`, old key honoured while published, refused once unpublished) — all
/// without restarting scp-pep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_provider_tokens_and_key_rotation() {
    let started = std::time::Instant::now();
    let claims = |tenant: &str, integration: Option<&str>| {
        let mut c = json!({"tenant_id": tenant, "verticals": ["health", "education"]});
        if let Some(i) = integration {
            c["integration_id"] = json!(i);
        }
        c
    };
    let provider = Provider::start(json!({
        "port": 0,
        "audience": "scp-pep",
        "scopes": ["health:read", "person:read", "education:read"],
        "access_token_ttl": 300,
        "clients": [
            {"client_id": CLIENT.0, "client_secret": CLIENT.1, "claims": claims("ke", Some("int-1"))},
            {"client_id": CLIENT_NO_INTEGRATION.0, "client_secret": CLIENT_NO_INTEGRATION.1,
             "claims": claims("ke", None)},
            {"client_id": CLIENT_WRONG_TENANT.0, "client_secret": CLIENT_WRONG_TENANT.1,
             "claims": claims("ug", Some("int-1"))},
            {"client_id": CLIENT_UNBOUND.0, "client_secret": CLIENT_UNBOUND.1,
             "claims": claims("ke", Some("int-1"))},
        ],
    }))
    .await;
    let kid1 = provider.kid.clone();
    eprintln!(
        "oidc_e2e: provider ready at {} (kid {kid1}) after {:?}",
        provider.issuer,
        started.elapsed()
    );

    // scp-pep, trusting the provider as tenant `ke`.
    let dir = tempfile::tempdir().unwrap();
    let policy_dir = dir.path().join("policies");
    std::fs::create_dir_all(&policy_dir).unwrap();
    std::fs::write(
        policy_dir.join("policy.yaml"),
        policy_yaml(&provider.issuer, &provider.jwks_uri),
    )
    .unwrap();
    let mut config = Config::default();
    config.server.grpc_listen = "127.0.0.1:0".parse().unwrap();
    config.server.http_listen = "127.0.0.1:0".parse().unwrap();
    config.store.url = format!("sqlite:{}", dir.path().join("pep.db").display());
    config.store.poll_interval_ms = 100;
    config.policy.dir = Some(policy_dir);
    config.decision_log.output = dir.path().join("decisions.jsonl").display().to_string();
    config.auth.audience = "scp-pep".into();
    // Fresh for the whole test: every refetch below is one triggered by an unknown `kid`.
    config.auth.jwks_ttl_s = 300;
    config.auth.jwks_refetch_min_interval_s = REFETCH_INTERVAL.as_secs();
    let running = tokio::time::timeout(
        Duration::from_secs(60),
        scp_pep::server::start(config, None),
    )
    .await
    .expect("scp-pep starts in time")
    .expect("scp-pep starts");
    // The person the checks read has active consent (pipeline stage 7).
    let seed: scp_pep::consent::import::ImportFile = serde_yaml_ng::from_str(
        "persons: [{tenant: ke, person_id: p-123}]\n\
         consents: [{tenant: ke, person_id: p-123, vertical_id: health, active_from: 2020-01-01, evidence_attachment_ids: [att-1]}]\n",
    )
    .unwrap();
    scp_pep::consent::import::import(&running.consents, None, &seed, "test", |_| 30)
        .await
        .expect("seed consent");
    let mut client = tokio::time::timeout(
        IO_TIMEOUT,
        AuthorizationClient::connect(format!("http://{}", running.grpc_addr)),
    )
    .await
    .expect("client connects in time")
    .expect("client connects");
    let http = reqwest::Client::builder()
        .timeout(IO_TIMEOUT)
        .build()
        .unwrap();
    let fetches_at_start = jwks_fetches_ok(&http, running.http_addr).await;
    assert!(
        fetches_at_start >= 1,
        "scp-pep prefetches the tenant's JWKS at start"
    );

    // 1. A provider token for the bound client, with the route's scope, is allowed (INT-4.2-1).
    let t1 = provider.token(CLIENT, "health:read person:read").await;
    let (h, p) = (jwt_part(&t1, 0), jwt_part(&t1, 1));
    assert_eq!(h["alg"], "RS256", "{h}");
    assert_eq!(h["typ"], "at+jwt", "{h}");
    assert_eq!(h["kid"], json!(kid1), "{h}");
    assert_eq!(p["iss"], json!(provider.issuer), "{p}");
    assert_eq!(p["aud"], "scp-pep", "{p}");
    assert_eq!(p["azp"], CLIENT.0, "{p}");
    assert_eq!(p["scope"], "health:read person:read", "{p}");
    let r = check(&mut client, RECORD_PATH, &t1).await;
    assert_allowed(&r, "provider token (kid 1)");
    assert_eq!(r["headers_set"]["x-scp-scopes"], "health:read", "{r:#}");
    assert_eq!(r["headers_set"]["x-scp-verticals"], "health", "{r:#}");

    // 2. Claims: a client whose token lacks `integration_id` (INT-4.2-3) …
    let t = provider.token(CLIENT_NO_INTEGRATION, "health:read").await;
    assert!(jwt_part(&t, 1).get("integration_id").is_none());
    let r = check(&mut client, RECORD_PATH, &t).await;
    assert_denied(
        &r,
        401,
        "TOKEN_CLAIMS_MISSING",
        "token without integration_id",
    );
    // … a token whose `tenant_id` is not the tenant of its issuer …
    let t = provider.token(CLIENT_WRONG_TENANT, "health:read").await;
    let r = check(&mut client, RECORD_PATH, &t).await;
    assert_denied(
        &r,
        401,
        "TOKEN_CLAIMS_INVALID",
        "token with another tenant_id",
    );
    // … and a correctly shaped token of a client the integration is not bound to (`azp`).
    let t = provider.token(CLIENT_UNBOUND, "health:read").await;
    assert_eq!(jwt_part(&t, 1)["azp"], CLIENT_UNBOUND.0);
    let r = check(&mut client, RECORD_PATH, &t).await;
    assert_denied(
        &r,
        401,
        "TOKEN_CLAIMS_INVALID",
        "token of an unbound client",
    );

    // 3. Scope: the bound client without health:read (INT-4.2-2).
    let t = provider.token(CLIENT, "person:read").await;
    assert_eq!(jwt_part(&t, 1)["scope"], "person:read");
    let r = check(&mut client, RECORD_PATH, &t).await;
    assert_denied(&r, 403, "SCOPE_VIOLATION", "token without health:read");

    // Every token so far was signed with the prefetched key: no refetch.
    assert_eq!(
        jwks_fetches_ok(&http, running.http_addr).await,
        fetches_at_start
    );

    // Old-key tokens, issued before the rotation and NOT presented until later: once verified, a
    // token is cached until `exp`, so only never-seen tokens show what the JWKS cache holds.
    let t1_unused_a = provider.token(CLIENT, "health:read").await;
    let t1_unused_b = provider.token(CLIENT, "health:read").await;
    assert_ne!(t1_unused_a, t1_unused_b);
    assert_eq!(kid_of(&t1_unused_a), kid1);
    assert_eq!(kid_of(&t1_unused_b), kid1);

    // 4. Rotation (EXT-5.2-1): the provider signs with a new key; the old one stays published.
    let kid2 = provider.admin(reqwest::Method::POST, "/admin/rotate").await["kid"]
        .as_str()
        .expect("rotate answers the new kid")
        .to_owned();
    assert_ne!(kid2, kid1);
    let mut both = vec![kid1.clone(), kid2.clone()];
    both.sort();
    assert_eq!(provider.published_kids().await, both);
    let t2 = provider.token(CLIENT, "health:read").await;
    assert_eq!(
        kid_of(&t2),
        kid2,
        "tokens after the rotation carry the new kid"
    );
    assert_ne!(kid_of(&t2), kid_of(&t1));
    // The last JWKS fetch must lie more than the refetch interval back.
    tokio::time::sleep(PAST_REFETCH_INTERVAL).await;
    let r = check(&mut client, RECORD_PATH, &t2).await;
    assert_allowed(&r, "new-key token after rotation, same scp-pep process");
    assert_eq!(
        jwks_fetches_ok(&http, running.http_addr).await,
        fetches_at_start + 1,
        "the unknown kid triggered exactly one JWKS refetch"
    );
    // The old key is still published, so a never-seen old-key token verifies against the
    // refetched key set; the already-verified old token stays allowed too.
    let r = check(&mut client, RECORD_PATH, &t1_unused_a).await;
    assert_allowed(
        &r,
        "old-key token (never presented before) while the old key is published",
    );
    let r = check(&mut client, RECORD_PATH, &t1).await;
    assert_allowed(&r, "old-key token presented before the rotation");
    assert_eq!(
        jwks_fetches_ok(&http, running.http_addr).await,
        fetches_at_start + 1,
        "known kids cause no refetch"
    );

    // 5. Revocation: the provider stops publishing the old key. scp-pep only learns of it on its
    // next refetch, which an unknown kid triggers: rotate once more (kid 3), present a kid-3 token
    // after the refetch interval, then the never-presented kid-1 token must be refused.
    let dropped = provider
        .admin(reqwest::Method::POST, "/admin/drop-old")
        .await;
    assert_eq!(dropped["kids"], json!([kid2]), "{dropped}");
    let kid3 = provider.admin(reqwest::Method::POST, "/admin/rotate").await["kid"]
        .as_str()
        .expect("rotate answers the new kid")
        .to_owned();
    assert!(kid3 != kid1 && kid3 != kid2);
    let mut published = vec![kid2.clone(), kid3.clone()];
    published.sort();
    assert_eq!(
        provider.published_kids().await,
        published,
        "kid 1 is no longer published"
    );
    let t3 = provider.token(CLIENT, "health:read").await;
    assert_eq!(kid_of(&t3), kid3);
    tokio::time::sleep(PAST_REFETCH_INTERVAL).await;
    let r = check(&mut client, RECORD_PATH, &t3).await;
    assert_allowed(&r, "kid-3 token after the second rotation");
    assert_eq!(
        jwks_fetches_ok(&http, running.http_addr).await,
        fetches_at_start + 2,
        "the kid-3 token triggered one more JWKS refetch"
    );
    // scp-pep's key set is now {kid 2, kid 3}. Whether or not this unknown kid may refetch again
    // (rate limit), the provider no longer publishes kid 1, so the answer is the same.
    let r = check(&mut client, RECORD_PATH, &t1_unused_b).await;
    assert_denied(
        &r,
        401,
        "TOKEN_KEY_UNKNOWN",
        "never-presented token signed with the dropped key",
    );
    // Tokens of the still-published key 2 keep working.
    let r = check(&mut client, RECORD_PATH, &t2).await;
    assert_allowed(&r, "kid-2 token after the drop");

    // 6. Tear down.
    provider.stop().await;
    tokio::time::timeout(Duration::from_secs(30), running.shutdown())
        .await
        .expect("scp-pep shuts down in time");
    eprintln!("oidc_e2e: passed in {:?}", started.elapsed());
}
