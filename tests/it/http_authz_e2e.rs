//! HTTP authorization mode end to end, through a REAL nginx (`auth_request`, the shipped
//! `deploy/nginx/scp-pep.conf`), a REAL Caddy (`forward_auth`, `deploy/caddy/Caddyfile`) and a
//! REAL Envoy (ext_authz `http_service`, the shipped `envoy/envoy-http.yaml`):
//!
//! ```text
//! client → nginx / Envoy → scp-pep HTTP authorization listener (in-process)
//!                        → if allowed: echo upstream (axum, in this test)
//! ```
//!
//! Both configs are used as shipped, with only their addresses replaced by this test's loopback
//! ports. The scenarios follow the gRPC e2e (`envoy_e2e.rs`): an allow with scp-pep's headers
//! upstream and the client's forged ones gone, denials with scp-pep's own status, JSON body and
//! headers (401, 400, 429 with `retry-after`, a 503 of scp-pep's own), exactly one decision
//! record per request, and fail closed (503 JSON, upstream untouched) with scp-pep down.
//!
//! nginx: `/usr/sbin/nginx` or `nginx` on PATH, Caddy: `caddy` (Debian packages, installed by
//! `scripts/test`); Envoy as for `envoy_e2e.rs`. Without them the tests fail when `CI` is set,
//! and otherwise print a skip note and pass.

use crate::common;
use crate::envoy_e2e::{Echo, seen_all};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::Harness;
use scp_pep::http_authz::Mode;
use serde_json::Value;
use tokio::process::{Child, Command};

const RECORD: &str = "/v1/tenants/ke/health/persons/p-1/record";
const READY_TIMEOUT: Duration = Duration::from_secs(60);

fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// `name` from `env` (must work when set), `extra` paths, or PATH; `None` (skip) outside CI.
fn locate(name: &str, env: &str, extra: &[&str]) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let path_dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    let found = extra
        .iter()
        .map(PathBuf::from)
        .chain(path_dirs.into_iter().map(|d| d.join(name)))
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            !in_ci(),
            "{name} is needed in CI (scripts/test installs it; or set {env})"
        );
        eprintln!("SKIPPED: no {name} (set {env} or install it); with CI set this test fails");
    }
    found
}

// ---------------------------------------------------------------------------------------------
// Proxies

/// A proxy child process, killed on drop; `url` is where clients send requests.
struct Proxy {
    _child: Child,
    url: String,
    stderr: PathBuf,
}

impl Proxy {
    fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

/// Spawns the proxy `cmd` (stderr to `stderr`, killed on drop) and waits until it listens on
/// loopback `port`; `log` is the file shown when a test fails.
async fn spawn_proxy(mut cmd: Command, port: u16, stderr: &Path, log: PathBuf) -> Proxy {
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(stderr).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("the proxy starts");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "proxy exited during startup ({status}):\n{}",
                std::fs::read_to_string(stderr).unwrap_or_default()
            );
        }
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "proxy not listening on {addr}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Proxy {
        _child: child,
        url: format!("http://{addr}"),
        stderr: log,
    }
}

/// nginx with `deploy/nginx/scp-pep.conf`, its addresses pointed at `authz` and `upstream`.
async fn start_nginx(bin: &Path, dir: &Path, authz: SocketAddr, upstream: SocketAddr) -> Proxy {
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/nginx/scp-pep.conf"),
    )
    .unwrap();
    let port = common::free_port();
    let site = shipped
        .replace("server 127.0.0.1:9194;", &format!("server {authz};"))
        .replace("server 127.0.0.1:8080;", &format!("server {upstream};"))
        .replace(
            "listen 127.0.0.1:8000;",
            &format!("listen 127.0.0.1:{port};"),
        );
    assert_ne!(site, shipped, "the shipped config's addresses changed");
    let d = dir.display();
    let conf = format!(
        "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 256; }}\nhttp {{\n access_log off;\n \
         client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n \
         fastcgi_temp_path {d}/fastcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n\
         {site}\n}}\n"
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    let stderr = dir.join("nginx.stderr");
    let mut cmd = Command::new(bin);
    cmd.arg("-p").arg(dir).arg("-c").arg(&path);
    spawn_proxy(cmd, port, &stderr, dir.join("error.log")).await
}

/// Envoy with `envoy/envoy-http.yaml`, its addresses pointed at `authz` and `upstream`.
async fn start_envoy(bin: &Path, dir: &Path, authz: SocketAddr, upstream: SocketAddr) -> Proxy {
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("envoy/envoy-http.yaml"),
    )
    .unwrap();
    let (port, admin) = (common::free_port(), common::free_port());
    let config = shipped
        .replace(
            "address: 0.0.0.0, port_value: 10000",
            &format!("address: 127.0.0.1, port_value: {port}"),
        )
        .replace(
            "address: 127.0.0.1, port_value: 9901",
            &format!("address: 127.0.0.1, port_value: {admin}"),
        )
        .replace("uri: http://scp-pep:9194", &format!("uri: http://{authz}"))
        .replace(
            "address: scp-pep, port_value: 9194",
            &format!("address: 127.0.0.1, port_value: {}", authz.port()),
        )
        .replace(
            "address: echo, port_value: 8080",
            &format!("address: 127.0.0.1, port_value: {}", upstream.port()),
        );
    let path = dir.join("envoy.yaml");
    std::fs::write(&path, config).unwrap();
    let stderr = dir.join("envoy.stderr");
    let base_id = 200_000 + std::process::id() % 100_000;
    let mut cmd = Command::new(bin);
    cmd.arg("-c")
        .arg(&path)
        .args(["--base-id", &base_id.to_string(), "--disable-hot-restart"])
        .args(["--log-level", "warn", "--concurrency", "1"]);
    spawn_proxy(cmd, port, &stderr, stderr.clone()).await
}

/// Caddy with `deploy/caddy/Caddyfile`, its addresses pointed at `authz` and `upstream`.
async fn start_caddy(bin: &Path, dir: &Path, authz: SocketAddr, upstream: SocketAddr) -> Proxy {
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/caddy/Caddyfile"),
    )
    .unwrap();
    let port = common::free_port();
    let config = shipped
        .replace(
            "forward_auth 127.0.0.1:9194",
            &format!("forward_auth {authz}"),
        )
        .replace(
            "reverse_proxy 127.0.0.1:8080",
            &format!("reverse_proxy {upstream}"),
        )
        .replace("http://:8000 {", &format!("http://127.0.0.1:{port} {{"));
    assert_ne!(config, shipped);
    let path = dir.join("Caddyfile");
    std::fs::write(&path, config).unwrap();
    let stderr = dir.join("caddy.stderr");
    let mut cmd = Command::new(bin);
    cmd.args(["run", "--adapter", "caddyfile", "--config"])
        .arg(&path)
        .env("XDG_DATA_HOME", dir)
        .env("XDG_CONFIG_HOME", dir)
        .env("HOME", dir);
    spawn_proxy(cmd, port, &stderr, stderr.clone()).await
}

// ---------------------------------------------------------------------------------------------
// Scenarios

async fn decision_records(h: &Harness) -> i64 {
    let sql = "SELECT COUNT(*) FROM audit_records WHERE kind = 'decision'";
    match &h.running.store {
        scp_pep::store::Store::Sqlite(p) => sqlx::query_scalar(sql).fetch_one(p).await.unwrap(),
        scp_pep::store::Store::Postgres(p) => sqlx::query_scalar(sql).fetch_one(p).await.unwrap(),
    }
}

/// A denial as the client sees it: status, JSON body in the error shape, headers agreeing.
async fn assert_denial(r: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(r.status().as_u16(), status, "{code}");
    let h = r.headers().clone();
    assert_eq!(
        h.get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/json"),
        "{code}"
    );
    let body: Value = r.json().await.expect("denial body is JSON");
    let e = &body["error"];
    assert_eq!(e["code"], code, "{body}");
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert_eq!(e["retryable"], status == 429 || status == 503, "{body}");
    if let Some(id) = e["decision_id"].as_str() {
        assert_eq!(
            h.get("x-scp-decision-id").and_then(|v| v.to_str().ok()),
            Some(id),
            "header and body name one decision"
        );
    }
    if status == 429 || status == 503 {
        let ra: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
        assert!(ra >= 1);
    }
    body
}

/// The scenarios every proxy must pass; `mode` says which proxy it is.
async fn scenarios(h: &mut Harness, proxy: &Proxy, echo: &Echo, mode: Mode) {
    let client = reqwest::Client::new();
    let url = |p: &str| format!("{}{p}", proxy.url);
    let ke = h.sign(
        "ke-rs256",
        &h.claims("ke", "int-ke-moh", &["health"], "health:person:read"),
    );

    // 1. Allowed: scp-pep's headers upstream, the client's forged, override and API-key headers
    //    gone; one decision record.
    let before = decision_records(h).await;
    let r = client
        .get(url(RECORD))
        .bearer_auth(&ke)
        .header("x-scp-tenant-id", "ug")
        .header("x-scp-purpose", "forged")
        .header("x-scp-allowed-fields", "forged")
        .header("x-http-method-override", "GET")
        .header("x-api-key", "k-123")
        .send()
        .await
        .unwrap();
    let status = r.status();
    let text = r.text().await.unwrap_or_default();
    assert_eq!(
        status,
        200,
        "{text}\n{:?}\n{}",
        h.log_lines(1).await,
        proxy.stderr_text()
    );
    let up = echo.last();
    assert_eq!(up["method"], "GET");
    assert_eq!(up["path"], RECORD);
    assert_eq!(seen_all(&up, "x-scp-tenant-id"), ["ke"], "{up}");
    assert_eq!(seen_all(&up, "x-scp-integration-id"), ["int-ke-moh"]);
    assert_eq!(seen_all(&up, "x-scp-decision-id").len(), 1);
    // Headers scp-pep sets only on some routes: the client's values never pass.
    for name in ["x-scp-purpose", "x-scp-allowed-fields"] {
        assert!(
            !seen_all(&up, name).iter().any(|v| v.contains("forged")),
            "a forged {name} reached the upstream: {up}"
        );
    }
    for gone in ["x-http-method-override", "x-api-key"] {
        assert!(
            seen_all(&up, gone).iter().all(String::is_empty),
            "{gone} reached the upstream: {up}"
        );
    }
    assert_eq!(
        decision_records(h).await,
        before + 1,
        "one decision per request"
    );
    let hits = echo.hits();

    // 2. No token: 401 with the challenge; not upstream; one record.
    let before = decision_records(h).await;
    let r = client.get(url(RECORD)).send().await.unwrap();
    assert!(r.headers().contains_key("www-authenticate"));
    assert_denial(r, 401, "TOKEN_MISSING").await;
    assert_eq!(
        decision_records(h).await,
        before + 1,
        "one decision per denial"
    );

    // 3. An override naming another method: 400 REQUEST_AMBIGUOUS.
    let r = client
        .get(url(RECORD))
        .bearer_auth(&ke)
        .header("x-http-method-override", "DELETE")
        .send()
        .await
        .unwrap();
    assert_denial(r, 400, "REQUEST_AMBIGUOUS").await;

    // 4. A client x-scp-* header scp-pep does not set: removed by Envoy; nginx cannot remove it,
    //    so scp-pep refuses the request.
    let r = client
        .get(url(RECORD))
        .bearer_auth(&ke)
        .header("x-scp-role", "admin")
        .send()
        .await
        .unwrap();
    match mode {
        Mode::Envoy => {
            assert_eq!(r.status(), 200);
            assert!(
                seen_all(&echo.last(), "x-scp-role").is_empty(),
                "{}",
                echo.last()
            );
        }
        _ => {
            assert_denial(r, 400, "REQUEST_AMBIGUOUS").await;
        }
    }
    let hits_after_4 = if mode == Mode::Envoy { hits + 1 } else { hits };
    assert_eq!(
        echo.hits(),
        hits_after_4,
        "denials never reach the upstream"
    );

    // 5. Rate limit (1/s, burst 2): the third quick request is 429 with retry-after; each
    //    request is charged once.
    let limited = h.sign(
        "ke-rs256",
        &h.claims("ke", "int-ke-limited", &["health"], "health:person:read"),
    );
    let mut statuses = Vec::new();
    let mut last = None;
    for _ in 0..3 {
        let r = client
            .get(url(RECORD))
            .bearer_auth(&limited)
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
        last = Some(r);
    }
    assert_eq!(statuses, [200, 200, 429], "burst 2, then limited");
    assert_denial(last.unwrap(), 429, "RATE_LIMITED").await;
    assert_eq!(echo.hits(), hits_after_4 + 2);
}

/// A 503 denial of scp-pep's own (the audit store locked: `AUDIT_UNAVAILABLE`): through nginx
/// the client gets scp-pep's body; Envoy's `http_service` treats any 5xx of the authorization
/// server as an error and drops its body, so through Envoy the client gets the shipped config's
/// `DEPENDENCY_UNAVAILABLE` 503 (still JSON, retryable, `retry-after`).
async fn own_503(h: &mut Harness, proxy: &Proxy, expected: &str) {
    use sqlx::Connection;
    let ke = h.sign(
        "ke-rs256",
        &h.claims("ke", "int-ke-moh", &["health"], "health:person:read"),
    );
    let opts: sqlx::sqlite::SqliteConnectOptions = h.store_url.parse().unwrap();
    let mut lock = sqlx::SqliteConnection::connect_with(&opts).await.unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut lock)
        .await
        .unwrap();
    let r = reqwest::Client::new()
        .get(format!("{}{RECORD}", proxy.url))
        .bearer_auth(&ke)
        .send()
        .await
        .unwrap();
    assert_denial(r, 503, expected).await;
    sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();
}

/// scp-pep stopped: the proxy fails closed with a 503 JSON body and `retry-after: 1`.
async fn fails_closed(h: Harness, proxy: &Proxy, echo: &Echo) {
    let ke = h.sign(
        "ke-rs256",
        &h.claims("ke", "int-ke-moh", &["health"], "health:person:read"),
    );
    let hits = echo.hits();
    h.running.shutdown().await;
    let r = reqwest::Client::new()
        .get(format!("{}{RECORD}", proxy.url))
        .bearer_auth(&ke)
        .send()
        .await
        .unwrap();
    let body = assert_denial(r, 503, "DEPENDENCY_UNAVAILABLE").await;
    assert!(body["error"]["decision_id"].is_null(), "{body}");
    assert_eq!(echo.hits(), hits, "never the upstream");
}

async fn harness(mode: Mode) -> Harness {
    Harness::start_with(None, |c| {
        c.http_authz.enabled = true;
        c.http_authz.listen = "127.0.0.1:0".parse().unwrap();
        c.http_authz.mode = mode;
        if mode == Mode::Envoy {
            c.http_authz.path_prefix = "/authz".into();
        }
        // Below the proxies' authorization timeouts (Envoy 250 ms), so a locked store is
        // scp-pep's own 503, not a proxy timeout.
        c.audit.write_timeout_ms = 100;
    })
    .await
}

/// Issue 14 (HTTP authorization mode, nginx). INT-4.1-4 (every request authorized before it
/// reaches a service), INT-4.6-4 (429 with retry-after), EXT-4.4-2 (smuggled headers refused),
/// INT-8-1 (one audit record per decision; fail closed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_auth_request_keeps_the_contract() {
    let Some(bin) = locate("nginx", "SCP_PEP_NGINX", &["/usr/sbin/nginx"]) else {
        return;
    };
    let mut h = harness(Mode::Nginx).await;
    let (echo, upstream) = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = start_nginx(
        &bin,
        dir.path(),
        h.running.http_authz_addr.unwrap(),
        upstream,
    )
    .await;
    scenarios(&mut h, &proxy, &echo, Mode::Nginx).await;
    own_503(&mut h, &proxy, "AUDIT_UNAVAILABLE").await;
    fails_closed(h, &proxy, &echo).await;
}

/// Issue 14 (HTTP authorization mode, Caddy `forward_auth`, `forwarded` mode); same
/// requirements as above. Caddy passes scp-pep's denials (any status, body, headers) through, so
/// scp-pep's own 503 reaches the client; with scp-pep down Caddy answers 502 (fail closed, its
/// own empty body).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caddy_forward_auth_keeps_the_contract() {
    let Some(bin) = locate("caddy", "SCP_PEP_CADDY", &["/usr/bin/caddy"]) else {
        return;
    };
    let mut h = harness(Mode::Forwarded).await;
    let (echo, upstream) = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = start_caddy(
        &bin,
        dir.path(),
        h.running.http_authz_addr.unwrap(),
        upstream,
    )
    .await;
    scenarios(&mut h, &proxy, &echo, Mode::Forwarded).await;
    own_503(&mut h, &proxy, "AUDIT_UNAVAILABLE").await;
    let hits = echo.hits();
    h.running.shutdown().await;
    let r = reqwest::Client::new()
        .get(format!("{}{RECORD}", proxy.url))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_server_error(), "{}", r.status());
    assert_eq!(echo.hits(), hits, "never the upstream with scp-pep down");
}

/// Issue 14 (HTTP authorization mode, Envoy `http_service`); same requirements as above.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_http_service_keeps_the_contract() {
    let Some(bin) = locate("envoy", "SCP_PEP_ENVOY", &[]) else {
        return;
    };
    let mut h = harness(Mode::Envoy).await;
    let (echo, upstream) = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = start_envoy(
        &bin,
        dir.path(),
        h.running.http_authz_addr.unwrap(),
        upstream,
    )
    .await;
    scenarios(&mut h, &proxy, &echo, Mode::Envoy).await;
    own_503(&mut h, &proxy, "DEPENDENCY_UNAVAILABLE").await;
    fails_closed(h, &proxy, &echo).await;
}
