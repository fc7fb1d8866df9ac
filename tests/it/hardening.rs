//! Bounded resources on the listeners, tried on the real binary with a 256-descriptor limit:
//! slow-loris and idle HTTP connections are closed, and however many HTTP connections a client
//! opens, gRPC `Check` (with its cold JWKS fetch) still answers.

use crate::common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Idp, Keys};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until EOF or error; `true` when the peer closed within `limit`.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// INT-7.1-1 and INT-4.1-4 (the PEP stays available to Envoy): with `ulimit -n 256`, 300 HTTP
/// connections that trickle a request head never starve the decision path (a `Check` that needs
/// a cold JWKS fetch is allowed while they are open); each is closed after
/// `header_read_timeout_s`; a kept-alive idle connection is closed too; afterwards the HTTP port
/// answers again without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_http_connections_never_starve_check() {
    let keys = std::sync::Arc::new(Keys::generate());
    let idp = Idp::start(keys.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let pol = dir.path().join("policies");
    common::write_policies(&idp.base, &pol);
    let (grpc, http) = (common::free_port(), common::free_port());
    let cfg = dir.path().join("scp-pep.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\ngrpc_listen = \"127.0.0.1:{grpc}\"\nhttp_listen = \"127.0.0.1:{http}\"\n\
             header_read_timeout_s = 1\nidle_timeout_s = 2\n\
             [store]\nurl = \"sqlite:{}\"\n[policy]\ndir = \"{}\"\n[decision_log]\noutput = \"{}\"\n",
            dir.path().join("s.db").display(),
            pol.display(),
            dir.path().join("d.jsonl").display()
        ),
    )
    .unwrap();
    let mut child = Command::new("sh")
        .args([
            "-c",
            "ulimit -n 256 && exec \"$0\" serve --config \"$1\"",
            env!("CARGO_BIN_EXE_scp-pep"),
            cfg.to_str().unwrap(),
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    common::wait_ready(http).await;

    // A kept-alive connection that goes idle after one request is closed.
    let mut idle = TcpStream::connect(("127.0.0.1", http)).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: pep\r\n\r\n")
        .await
        .unwrap();
    // 300 slow-loris connections, each with the first bytes of a request head.
    let mut slow = Vec::new();
    for _ in 0..300 {
        let mut s = TcpStream::connect(("127.0.0.1", http)).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nx-slow: ")
            .await
            .unwrap();
        slow.push(s);
    }

    // The decision path answers while they are open (cold JWKS: an outbound fetch is needed).
    let token = keys.get("ke-rs256").sign(&idp.claims(
        "ke",
        "int-ke-moh",
        &["health"],
        "health:person:read",
    ));
    let check = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_scp-pep"))
            .args([
                "check",
                "--server",
                &format!("http://127.0.0.1:{grpc}"),
                "GET",
                "/v1/tenants/ke/health/persons/p-1/record",
            ])
            .env("SCP_PEP_TOKEN", &token)
            .output()
            .unwrap()
    });
    let out = tokio::time::timeout(Duration::from_secs(20), check)
        .await
        .expect("Check answered while HTTP connections were held")
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    // Authenticated (the JWKS was fetched) and decided on consent (the store was read): no
    // consent is recorded for this person, so the answer is CONSENT_MISSING, not a 503.
    assert_eq!(
        v["code"], "CONSENT_MISSING",
        "the decision path was starved: {v}"
    );
    assert!(v["decision_id"].is_string(), "{v}");

    // Every slow connection is closed (≤ 32 at a time are accepted, each for ≤ 1 s).
    assert!(
        closed_within(&mut idle, Duration::from_secs(15)).await,
        "idle kept-alive connection stayed open"
    );
    let mut open = 0;
    for s in &mut slow {
        if !closed_within(s, Duration::from_secs(30)).await {
            open += 1;
        }
    }
    assert_eq!(open, 0, "slow-loris connections stayed open");

    // Service resumed without a restart.
    let r = reqwest::get(format!("http://127.0.0.1:{http}/healthz"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let metrics = reqwest::get(format!("http://127.0.0.1:{http}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("scp_pep_open_connections{listener=\"http\"}"),
        "{metrics}"
    );
    let _ = child.kill();
    let _ = child.wait();
}
