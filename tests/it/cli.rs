//! The `scp-pep` binary as an operator uses it: `policy validate|apply`, `serve` configured by file
//! and environment, `check`, `demo --once`, and the ops endpoints.

use crate::common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Harness, Idp, Keys};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_scp-pep"));
    c.env("RUST_LOG", "warn");
    c
}

/// EXT-4.2-1: a valid directory validates; the JSON result counts each kind.
#[test]
fn policy_validate_accepts_the_shipped_policies() {
    let out = bin()
        .args(["policy", "validate", "policies"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["valid"], true);
    assert_eq!(v["counts"]["tenants"], 2);
    assert!(v["counts"]["routes"].as_u64().unwrap() >= 5);
}

/// Runs `scp-pep ARGS`; returns (exit code, stdout as JSON or null, stderr).
fn run(args: &[&str]) -> (Option<i32>, serde_json::Value, String) {
    let out = bin().args(args).output().unwrap();
    let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (
        out.status.code(),
        json,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// EXT-4.2-1, INT-9.3-1: bad files are refused with the file, entry and field at fault, and
/// `policy apply` then writes nothing.
#[test]
fn bad_policy_is_named_and_nothing_is_applied() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good");
    common::write_policies("http://127.0.0.1:1", &good);
    let good = good.to_str().unwrap();
    let store = format!("sqlite:{}", dir.path().join("p.db").display());
    let apply = |d: &str| run(&["policy", "apply", d, "--store", &store]);

    let (code, v, err) = apply(good);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        (v["changed"].as_bool(), v["version"].as_i64()),
        (Some(true), Some(1))
    );
    let (_, v, _) = apply(good);
    assert_eq!(
        (v["changed"].as_bool(), v["version"].as_i64()),
        (Some(false), Some(1)),
        "idempotent"
    );

    // Break one field of one entry, plus a dangling reference in another file.
    let bad_dir = dir.path().join("bad");
    common::write_policies("http://127.0.0.1:1", &bad_dir);
    let integ = std::fs::read_to_string(bad_dir.join("integrations.yaml")).unwrap();
    let broken = integ.replacen(
        "rate_limit: {per_second: 1000, burst: 5000}",
        "rate_limit: {per_second: 0, burst: 5000}",
        1,
    );
    std::fs::write(bad_dir.join("integrations.yaml"), broken).unwrap();
    std::fs::write(
        bad_dir.join("zz-extra.yaml"),
        "deny_rules:\n  - {id: dr-x, tenant: ke, integration: int-missing, reason: r}\n",
    )
    .unwrap();
    let bad = bad_dir.to_str().unwrap();
    let (code, _, stderr) = run(&["policy", "validate", bad]);
    assert_eq!(code, Some(1));
    for expected in [
        "integrations.yaml: integrations[0] (int-ke-moh): rate_limit.per_second: must be at least 1",
        "zz-extra.yaml: deny_rules[0] (dr-x): integration: unknown integration `int-missing`",
    ] {
        assert!(stderr.contains(expected), "{stderr}");
    }
    let (code, _, stderr) = apply(bad);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("nothing was applied"));
    let (_, v, _) = apply(good);
    assert_eq!(
        (v["changed"].as_bool(), v["version"].as_i64()),
        (Some(false), Some(1)),
        "store untouched"
    );

    // A YAML type error names file and entry.
    std::fs::write(
        bad_dir.join("zz-extra.yaml"),
        "routes:\n  - id: r\n    methods: GET\n",
    )
    .unwrap();
    let (_, _, stderr) = run(&["policy", "validate", bad]);
    assert!(stderr.contains("zz-extra.yaml: routes[0]"), "{stderr}");
}

/// The binary serves with configuration from a TOML file overridden by `SCP_PEP_*` variables;
/// `/healthz`, `/readyz`, `/metrics` answer; `scp-pep check` prints the decision as JSON with exit
/// code 0 (allowed) or 1 (denied); SIGTERM shuts it down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_check_and_ops_endpoints() {
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
            "[server]\ngrpc_listen = \"127.0.0.1:1\"\nhttp_listen = \"127.0.0.1:{http}\"\n\
             drain_s = 0\n[store]\nurl = \"sqlite:{}\"\n[policy]\ndir = \"{}\"\n[decision_log]\noutput = \"{}\"\n",
            dir.path().join("s.db").display(),
            pol.display(),
            dir.path().join("d.jsonl").display()
        ),
    )
    .unwrap();

    // `consent import`: a bad file names the entry and field and writes nothing; a good one
    // captures active consent for the person the checks below touch (pipeline stage 7).
    let bad = dir.path().join("bad-consents.yaml");
    std::fs::write(
        &bad,
        "persons:\n  - {tenant: ke, person_id: p-1}\nconsents:\n  - {tenant: ke, person_id: p-1, vertical_id: health, active_from: yesterday}\n",
    )
    .unwrap();
    let out = bin()
        .args([
            "consent",
            "import",
            bad.to_str().unwrap(),
            "--config",
            cfg.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("consents[0]: active_from"), "{stderr}");
    let good = dir.path().join("consents.yaml");
    std::fs::write(
        &good,
        "persons:\n  - {tenant: ke, person_id: p-1, channels: [email]}\nconsents:\n  - {tenant: ke, person_id: p-1, vertical_id: health, active_from: 2020-01-01, evidence_attachment_ids: [att-1]}\n",
    )
    .unwrap();
    for expected in [(1, 0), (0, 1)] {
        let out = bin()
            .args([
                "consent",
                "import",
                good.to_str().unwrap(),
                "--config",
                cfg.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["counts"]["captured"], expected.0, "{v}");
        assert_eq!(v["counts"]["unchanged"], expected.1, "{v}");
    }

    let mut child = bin()
        .args(["serve", "--config", cfg.to_str().unwrap()])
        .env("SCP_PEP_SERVER__GRPC_LISTEN", format!("127.0.0.1:{grpc}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    common::wait_ready(http).await;
    let client = reqwest::Client::new();
    let health = client
        .get(format!("http://127.0.0.1:{http}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    let token = keys.get("ke-rs256").sign(&idp.claims(
        "ke",
        "int-ke-moh",
        &["health"],
        "health:person:read",
    ));
    let server = format!("http://127.0.0.1:{grpc}");
    let token_file = dir.path().join("t.jwt");
    std::fs::write(&token_file, &token).unwrap();
    let run_check = |args: &[&str]| {
        let out = bin().args(args).output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        (out.status.code(), v)
    };
    let (code, v) = run_check(&[
        "check",
        "--server",
        &server,
        "--token-file",
        token_file.to_str().unwrap(),
        "-H",
        "x-scp-masked-fields: none",
        "GET",
        "/v1/tenants/ke/health/persons/p-1/record",
    ]);
    assert_eq!(code, Some(0));
    assert_eq!(v["allowed"], true);
    assert_eq!(
        v["headers_set"]["x-scp-masked-fields"],
        "dob,hiv_status,national_id"
    );
    let (code, v) = run_check(&[
        "check",
        "--server",
        &server,
        "--token",
        &token,
        "GET",
        "/v1/tenants/ug/health/persons/p-1/record",
    ]);
    assert_eq!(code, Some(1));
    assert_eq!(v["code"], "TENANT_MISMATCH");
    assert_eq!(v["status"], 403);

    let metrics = client
        .get(format!("http://127.0.0.1:{http}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("scp_pep_decisions_total{outcome=\"allow\",code=\"OK\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("scp_pep_decisions_total{outcome=\"deny\",code=\"TENANT_MISMATCH\"} 1")
    );
    assert!(metrics.contains("scp_pep_decision_duration_seconds_bucket"));

    // Graceful stop on SIGTERM.
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // No token in anything the server wrote.
    let mut stderr = String::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        stderr.push_str(&line.unwrap());
    }
    let log = std::fs::read_to_string(dir.path().join("d.jsonl")).unwrap();
    let sig = token.rsplit('.').next().unwrap();
    assert!(
        !stderr.contains(sig) && !log.contains(sig),
        "a token reached a log"
    );
    assert_eq!(log.lines().count(), 2);
}

/// An empty store: not ready, and every request is denied 503 (fail closed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_store_is_not_ready_and_denies() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = scp_pep::config::Config::default();
    config.server.grpc_listen = "127.0.0.1:0".parse().unwrap();
    config.server.http_listen = "127.0.0.1:0".parse().unwrap();
    config.store.url = format!("sqlite:{}", dir.path().join("empty.db").display());
    config.decision_log.enabled = false;
    let running = scp_pep::server::start(config, None).await.unwrap();
    let r = reqwest::get(format!("http://{}/readyz", running.http_addr))
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["policy_loaded"], false);
    let v = scp_pep::check::check(
        &format!("http://{}", running.grpc_addr),
        &Harness::get("/v1/tenants/ke/health/persons/p-1/record", "x.y.z"),
    )
    .await
    .unwrap();
    assert_eq!(v["code"], "DEPENDENCY_UNAVAILABLE");
    assert_eq!(v["status"], 503);
    running.shutdown().await;
}

/// The demo runs its whole tour on free ports and every decision matches its expectation.
#[test]
fn demo_once_runs_the_tour() {
    let out = bin()
        .args([
            "demo",
            "--once",
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--jwks-listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("every decision as expected"), "{stdout}");
    for code in [
        "VERTICAL_NOT_PERMITTED",
        "TENANT_MISMATCH",
        "INTEGRATION_SUSPENDED",
        "RATE_LIMITED",
        "PATH_AMBIGUOUS",
        "CONSENT_MISSING",
    ] {
        assert!(stdout.contains(code), "tour shows {code}");
    }
}

/// The demo, while it serves, gives its third user (security staff) an auditor token and the
/// `audit tail` command; that command, run exactly as printed, streams the decision of the
/// printed `check` command. No token appears in the tail's output. The printed staff view URL
/// serves the page, and its token reads the denial counts (EXT-6-1).
#[test]
fn demo_prints_a_working_audit_tail_command() {
    use std::io::BufRead as _;
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut demo = Kill(
        bin()
            .args([
                "demo",
                "--grpc-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
                "--jwks-listen",
                "127.0.0.1:0",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = demo.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The printed commands, as argument lists after `cargo run -q --`.
    let args_of = |line: &str| -> Vec<String> {
        line.split_once("cargo run -q -- ")
            .unwrap()
            .1
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    let (mut tail, mut check, mut page) = (None, None, None);
    let deadline = Instant::now() + Duration::from_secs(120);
    while tail.is_none() || check.is_none() || page.is_none() {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the demo prints its commands");
        if line.contains("cargo run -q -- audit tail ") {
            tail = Some(args_of(&line));
        } else if line.contains("cargo run -q -- check ") {
            check = Some(args_of(&line));
        } else if line.contains("/staff#token=") {
            page = Some(line.trim().to_owned());
        }
    }
    let (tail, check, page) = (tail.unwrap(), check.unwrap(), page.unwrap());
    // The staff view's URL: the page is served; the token is in the fragment, which the
    // browser keeps, and it is the auditor's (it reads the denial counts).
    let (page_url, token) = page.split_once("#token=").unwrap();
    assert!(page_url.starts_with("http://127.0.0.1:"), "{page}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (html, denials) = rt.block_on(async {
        let html = reqwest::get(page_url).await.unwrap();
        assert_eq!(html.status().as_u16(), 200);
        let html = html.text().await.unwrap();
        let denials = reqwest::Client::new()
            .get(page_url.replace("/staff", "/v1/audit/denials"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        (html, denials)
    });
    assert!(html.contains("security staff view"), "{html}");
    assert_eq!(
        denials.status().as_u16(),
        200,
        "the printed token reads the counts"
    );
    assert!(tail.iter().any(|a| a == "--token-file"), "{tail:?}");

    let mut watcher = Kill(
        bin()
            .args(&tail)
            .args(["--json", "--count", "1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // The tail may subscribe after the first check: check until it has seen one.
    let until = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let out = bin().args(&check).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        if let Some(s) = watcher.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < until, "the tail saw no decision");
        std::thread::sleep(Duration::from_millis(300));
    };
    let mut text = String::new();
    std::io::Read::read_to_string(watcher.0.stdout.as_mut().unwrap(), &mut text).unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(watcher.0.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(status.success(), "{text}\n{err}");
    let event: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(event["kind"], "decision", "{event}");
    assert_eq!(event["tenant_id"], "ke", "{event}");
    assert_eq!(event["integration_id"], "int-ke-moh", "{event}");
    assert!(!text.contains("eyJ"), "no token in the tail: {text}");
}
