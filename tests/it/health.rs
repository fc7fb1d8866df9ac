//! `grpc.health.v1` on the ext_authz listener: NOT_SERVING until a policy snapshot is loaded,
//! SERVING after, NOT_SERVING again from the start of draining while `Check` keeps answering;
//! the `scp-pep health` probe's exit codes; and the real binary draining on SIGTERM.

use crate::common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::Harness;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const RECORD: &str = "/v1/tenants/ke/health/persons/p-1/record";
const SERVICES: [&str; 2] = ["", "envoy.service.auth.v3.Authorization"];

async fn health_client(addr: std::net::SocketAddr) -> HealthClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("health client connects");
    HealthClient::new(channel)
}

/// The status of `service`, as a health checker sees it.
async fn status(c: &mut HealthClient<tonic::transport::Channel>, service: &str) -> ServingStatus {
    let r = c
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap_or_else(|e| panic!("health Check({service:?}): {e}"))
        .into_inner();
    ServingStatus::try_from(r.status).unwrap()
}

/// Both service names report `want` (waits up to `within`).
async fn wait_status(
    c: &mut HealthClient<tonic::transport::Channel>,
    want: ServingStatus,
    within: Duration,
) {
    let deadline = Instant::now() + within;
    loop {
        let mut all = true;
        for s in SERVICES {
            all &= status(c, s).await == want;
        }
        if all {
            return;
        }
        assert!(Instant::now() < deadline, "health did not turn {want:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs the built `scp-pep health` against `grpc`; (exit code, stdout, stderr).
async fn health_cli(args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_scp-pep"))
        .arg("health")
        .args(args)
        .env_remove("SCP_PEP_HEALTH_GRPC")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// EXT-3.3-2 and INT-4.1-4 (failure isolation; the PEP stays available to Envoy): a replica
/// started on an empty store reports NOT_SERVING (and still answers `Check`, with its own 503);
/// once policies are applied it turns SERVING through the change feed; `drain` turns it
/// NOT_SERVING at once while `Check` keeps deciding, and `/readyz` says so too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_follows_policy_load_and_drain() {
    let mut h = Harness::start_with(None, |c| c.policy.dir = None).await;
    let mut hc = health_client(h.running.grpc_addr).await;
    for s in SERVICES {
        assert_eq!(status(&mut hc, s).await, ServingStatus::NotServing, "{s:?}");
    }
    // Unknown names are not invented.
    let unknown = hc
        .check(HealthCheckRequest {
            service: "scp.pep.v1.Nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    let token = h.sign(
        "ke-rs256",
        &h.claims("ke", "int-ke-moh", &["health"], "health:person:read"),
    );
    let v = h.check(&Harness::get(RECORD, &token)).await;
    assert_eq!(v["code"], "DEPENDENCY_UNAVAILABLE", "{v}");

    // The policy arrives through the store (another replica's `scp-pep policy apply`).
    let set = scp_pep::policy::PolicySet::load_dir(&h.policy_dir).unwrap();
    h.running.store.apply(&set).await.unwrap();
    wait_status(&mut hc, ServingStatus::Serving, Duration::from_secs(10)).await;
    let v = h.check(&Harness::get(RECORD, &token)).await;
    assert_eq!(v["allowed"], true, "{v}");
    let r = reqwest::get(h.ops_url("/readyz")).await.unwrap();
    assert_eq!(r.status(), 200);

    // Draining: NOT_SERVING at once (no wait), Check still decides, /readyz 503.
    h.running.drain().await;
    for s in SERVICES {
        assert_eq!(status(&mut hc, s).await, ServingStatus::NotServing, "{s:?}");
    }
    let v = h.check(&Harness::get(RECORD, &token)).await;
    assert_eq!(v["allowed"], true, "Check is answered while draining: {v}");
    let r = reqwest::get(h.ops_url("/readyz")).await.unwrap();
    assert_eq!(r.status(), 503);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["draining"], true, "{body}");
    assert_eq!(body["policy_loaded"], true, "{body}");
    // It stays NOT_SERVING (the snapshot follower does not undo the drain).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(status(&mut hc, "").await, ServingStatus::NotServing);
    h.running.shutdown().await;
}

/// `scp-pep health`: exit 0 and `SERVING` against a loaded replica, exit 1 and `NOT_SERVING`
/// before the policy loads and while draining, exit 1 and `UNREACHABLE` with nothing listening;
/// an address with credentials is refused and never echoed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_cli_exit_codes() {
    let h = Harness::start_with(None, |c| c.policy.dir = None).await;
    let addr = h.running.grpc_addr.to_string();

    let (code, out, _) = health_cli(&["--grpc", &addr]).await;
    assert_eq!((code, out.as_str()), (1, "NOT_SERVING\n"));

    let set = scp_pep::policy::PolicySet::load_dir(&h.policy_dir).unwrap();
    h.running.store.apply(&set).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, out, err) = health_cli(&["--grpc", &addr]).await;
        if code == 0 {
            assert_eq!(out, "SERVING\n");
            assert!(err.is_empty(), "{err}");
            break;
        }
        assert!(Instant::now() < deadline, "never SERVING: {out}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Both forms of the address, both service names.
    let url = format!("http://{addr}");
    let (code, out, _) = health_cli(&[
        "--grpc",
        &url,
        "--service",
        "envoy.service.auth.v3.Authorization",
        "--timeout-s",
        "2",
    ])
    .await;
    assert_eq!((code, out.as_str()), (0, "SERVING\n"));
    let (code, out, _) = health_cli(&["--grpc", &addr, "--service", "nope"]).await;
    assert_eq!((code, out.as_str()), (1, "SERVICE_UNKNOWN\n"));

    h.running.drain().await;
    let (code, out, _) = health_cli(&["--grpc", &addr]).await;
    assert_eq!((code, out.as_str()), (1, "NOT_SERVING\n"));
    h.running.shutdown().await;

    // Nothing listening.
    let (code, out, _) = health_cli(&["--grpc", &addr, "--timeout-s", "2"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with("UNREACHABLE: "), "{out}");
    assert_eq!(out.lines().count(), 1, "{out}");

    // Credentials in the address: refused, never printed.
    let (code, out, err) = health_cli(&["--grpc", "http://ops:s3cr3t-pw@127.0.0.1:9"]).await;
    assert_eq!(code, 1);
    assert!(out.starts_with("UNREACHABLE: "), "{out}");
    assert!(
        !out.contains("s3cr3t") && !err.contains("s3cr3t"),
        "{out}{err}"
    );
}

/// The real binary on SIGTERM: `grpc.health.v1` turns NOT_SERVING at once, `Check` is still
/// answered during `server.drain_s`, then the process exits 0 with its listeners closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_before_closing() {
    let keys = std::sync::Arc::new(common::Keys::generate());
    let idp = common::Idp::start(keys.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let pol = dir.path().join("policies");
    common::write_policies(&idp.base, &pol);
    let (grpc, http) = (common::free_port(), common::free_port());
    let cfg = dir.path().join("scp-pep.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\ngrpc_listen = \"127.0.0.1:{grpc}\"\nhttp_listen = \"127.0.0.1:{http}\"\n\
             drain_s = 3\n\
             [store]\nurl = \"sqlite:{}\"\n[policy]\ndir = \"{}\"\n[decision_log]\nenabled = false\n",
            dir.path().join("s.db").display(),
            pol.display(),
        ),
    )
    .unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_scp-pep"))
        .args(["serve", "--config", cfg.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    common::wait_ready(http).await;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{grpc}").parse().unwrap();
    let mut hc = health_client(addr).await;
    wait_status(&mut hc, ServingStatus::Serving, Duration::from_secs(10)).await;

    let t = Instant::now();
    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    wait_status(&mut hc, ServingStatus::NotServing, Duration::from_secs(1)).await;
    let mut authz = common::AuthorizationClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let req = scp_pep::check::build_request(&Harness::get(RECORD, "x.y.z"));
    let resp = authz
        .check(req)
        .await
        .expect("Check is answered while draining")
        .into_inner();
    let v = scp_pep::check::response_json(&resp);
    assert_eq!(v["code"], "TOKEN_MALFORMED", "{v}");
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "checked within the drain period"
    );
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("exits after the drain")
        .unwrap();
    assert!(status.success(), "{status}");
    assert!(
        t.elapsed() >= Duration::from_millis(2900),
        "listeners closed only after drain_s: {:?}",
        t.elapsed()
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "gRPC listener closed"
    );
}
