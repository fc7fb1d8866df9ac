//! The read-only security staff view (`GET /staff`) and its data endpoints
//! (`GET /v1/audit/decisions/stream`, `GET /v1/audit/denials`) against the real server: admin
//! authorization, counts after real traffic, the live stream, audit of every access, and the
//! page itself in a real headless Chromium.
//!
//! Requirement tags: EXT-6-1 (audit log readable by security staff only, with `audit.read`),
//! INT-8-1 (decision logs: every decision, live), ADM-2 (root use recorded).

use crate::common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Harness;
use serde_json::Value;

const KE_RECORD: &str = "/v1/tenants/ke/health/persons/p-1/record";
const KE_ENROLMENT: &str = "/v1/tenants/ke/education/students/p-1/enrolment";
const UG_RECORD: &str = "/v1/tenants/ug/health/persons/p-1/record";

fn auditor(h: &Harness) -> String {
    h.staff_token("ke", "staff-1", &["scp-auditor"], "scp-pep-admin")
}

fn partner(
    h: &Harness,
    tenant: &str,
    integration: &str,
    verticals: &[&str],
    scope: &str,
) -> String {
    h.sign(
        &format!("{tenant}-rs256"),
        &h.claims(tenant, integration, verticals, scope),
    )
}

/// Sends one check; returns (code, decision id).
async fn check(h: &mut Harness, path: &str, token: &str) -> (String, String) {
    let v = h.check(&Harness::get(path, token)).await;
    (
        v["code"].as_str().unwrap().to_owned(),
        v["decision_id"].as_str().unwrap_or_default().to_owned(),
    )
}

/// `GET path` on the HTTP port, with `token` as bearer when given.
async fn get(h: &Harness, path: &str, token: Option<&str>) -> reqwest::Response {
    let mut req = reqwest::Client::new().get(h.ops_url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap()
}

/// Asserts an error answer: `status` and the house error body with `code` (and `field`).
async fn assert_error(r: reqwest::Response, status: u16, code: &str, field: Option<&str>) {
    assert_eq!(r.status().as_u16(), status);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], code, "{v}");
    if let Some(f) = field {
        assert_eq!(v["error"]["field"], f, "{v}");
    }
}

/// Counts audit records of `kind` whose body contains `needle` (the harness's SQLite store).
async fn records_in_store(h: &Harness, kind: &str, needle: &str) -> i64 {
    let pool = sqlx::SqlitePool::connect(&h.store_url).await.unwrap();
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM audit_records WHERE kind = ? AND instr(body, ?) > 0",
    )
    .bind(kind)
    .bind(needle)
    .fetch_one(&pool)
    .await
    .unwrap();
    pool.close().await;
    n
}

/// `/v1/audit/denials` for ke, polled (≤ 10 s) until it counts `n` denials (records are
/// committed by the audit writer shortly after the decision).
async fn denials_when(h: &Harness, token: &str, n: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = get(h, "/v1/audit/denials?tenant=ke&window_s=3600", Some(token)).await;
        assert_eq!(r.status().as_u16(), 200);
        let v: Value = r.json().await.unwrap();
        if v["denials"] == n {
            return v;
        }
        assert!(Instant::now() < deadline, "never {n} denials: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends the test traffic of tenant ke (2 allowed; 2 `SCOPE_VIOLATION` of int-ke-moh, 1 denial
/// of int-ke-edu) and one ug denial, and returns the code of the int-ke-edu denial.
async fn traffic(h: &mut Harness) -> String {
    let moh = partner(h, "ke", "int-ke-moh", &["health"], "health:person:read");
    let moh_wrong = partner(h, "ke", "int-ke-moh", &["health"], "health:encounter:write");
    let edu = partner(
        h,
        "ke",
        "int-ke-edu",
        &["education"],
        "education:student:read",
    );
    let ug_wrong = partner(h, "ug", "int-ug-moh", &["health"], "health:encounter:write");
    assert_eq!(check(h, KE_RECORD, &moh).await.0, "OK");
    assert_eq!(check(h, KE_ENROLMENT, &edu).await.0, "OK");
    assert_eq!(check(h, KE_RECORD, &moh_wrong).await.0, "SCOPE_VIOLATION");
    assert_eq!(check(h, KE_RECORD, &moh_wrong).await.0, "SCOPE_VIOLATION");
    // The education integration asking for a health record: denied, with its own code.
    let (edu_code, _) = check(h, KE_RECORD, &edu).await;
    assert_ne!(edu_code, "OK");
    assert_ne!(check(h, UG_RECORD, &ug_wrong).await.0, "OK");
    edu_code
}

/// EXT-6-1: both data endpoints answer 401 without a valid admin token, 403 without
/// `audit.read` (or for another tenant), 400 on bad input, in the house error format; the page
/// itself is public and carries the strict security headers. A refused call is not an access.
#[tokio::test]
async fn staff_endpoints_need_audit_read() {
    let h = Harness::start(None).await;
    let partner_admin = h.staff_token("ke", "someone", &["partner-admin"], "scp-pep-admin");
    let token = auditor(&h);
    for path in [
        "/v1/audit/denials?tenant=ke",
        "/v1/audit/decisions/stream?tenant=ke",
    ] {
        assert_error(get(&h, path, None).await, 401, "UNAUTHENTICATED", None).await;
        assert_error(
            get(&h, path, Some("not.a.jwt")).await,
            401,
            "UNAUTHENTICATED",
            None,
        )
        .await;
        assert_error(
            get(&h, path, Some(&partner_admin)).await,
            403,
            "FORBIDDEN",
            None,
        )
        .await;
        let other = path.replace("tenant=ke", "tenant=ug");
        assert_error(
            get(&h, &other, Some(&token)).await,
            403,
            "FORBIDDEN",
            Some("tenant"),
        )
        .await;
    }
    assert_error(
        get(&h, "/v1/audit/denials?window_s=0", Some(&token)).await,
        400,
        "INVALID_REQUEST",
        Some("window_s"),
    )
    .await;
    assert_error(
        get(&h, "/v1/audit/denials?window_s=abc", Some(&token)).await,
        400,
        "INVALID_REQUEST",
        Some("window_s"),
    )
    .await;
    assert_error(
        get(&h, "/v1/audit/decisions/stream?outcome=maybe", Some(&token)).await,
        400,
        "INVALID_REQUEST",
        Some("outcome"),
    )
    .await;
    assert_eq!(records_in_store(&h, "audit_access", "").await, 0);

    // The page: public, static, strict headers.
    let r = get(&h, "/staff", None).await;
    assert_eq!(r.status().as_u16(), 200);
    let hd = r.headers().clone();
    let csp = hd["content-security-policy"].to_str().unwrap();
    assert!(csp.starts_with("default-src 'none'"), "{csp}");
    assert!(csp.contains("script-src 'self'") && csp.contains("connect-src 'self'"));
    assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"));
    assert_eq!(hd["x-frame-options"], "DENY");
    assert_eq!(hd["referrer-policy"], "no-referrer");
    assert_eq!(hd["cache-control"], "no-store");
    assert!(
        hd["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = r.text().await.unwrap();
    assert!(html.contains("security staff view") && html.contains("/staff/app.js"));
    let js = get(&h, "/staff/app.js", None).await;
    assert_eq!(js.status().as_u16(), 200);
    assert_eq!(js.headers()["x-content-type-options"], "nosniff");
    assert!(js.text().await.unwrap().contains("textContent"));
    h.running.shutdown().await;
}

/// EXT-6-1, INT-8-1: after real decisions through the gRPC check, `/v1/audit/denials` counts the
/// tenant's denials by code and by integration (allowed decisions and the other tenant's denials
/// are not counted); every call is an `audit_access` record; root reading another tenant is
/// also a `root_bypass` record (ADM-2).
#[tokio::test]
async fn staff_denials_counted_after_real_traffic() {
    let mut h = Harness::start(None).await;
    let token = auditor(&h);
    let edu_code = traffic(&mut h).await;
    let v = denials_when(&h, &token, 3).await;
    assert_eq!(v["tenant"], "ke");
    assert_eq!(v["window_s"], 3600);
    assert_eq!(v["truncated"], false);
    assert!(
        v["from"].as_str().unwrap() < v["to"].as_str().unwrap(),
        "{v}"
    );
    let mut by_code: Vec<(String, u64)> = v["by_code"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["code"].as_str().unwrap().into(),
                c["count"].as_u64().unwrap(),
            )
        })
        .collect();
    by_code.sort();
    let mut want = vec![("SCOPE_VIOLATION".to_owned(), 2), (edu_code.clone(), 1)];
    if edu_code == "SCOPE_VIOLATION" {
        want = vec![("SCOPE_VIOLATION".to_owned(), 3)];
    }
    want.sort();
    assert_eq!(by_code, want, "{v}");
    let by_integration: Vec<(String, u64)> = v["by_integration"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["integration_id"].as_str().unwrap().into(),
                c["count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        by_integration,
        vec![("int-ke-moh".to_owned(), 2), ("int-ke-edu".to_owned(), 1)],
        "most frequent first: {v}"
    );
    // No personal data: the answer names codes, integrations and counts only.
    assert!(!v.to_string().contains("p-1"), "{v}");
    assert!(records_in_store(&h, "audit_access", "\"action\":\"denials\"").await >= 1);
    assert!(records_in_store(&h, "audit_access", "\"actor\":\"staff-1\"").await >= 1);

    // Root reads ug's counts: allowed, and recorded as a bypass in ug.
    let root = h.staff_token("ke", "root-1", &["scp-root"], "scp-pep-admin");
    let r = get(&h, "/v1/audit/denials?tenant=ug", Some(&root)).await;
    assert_eq!(r.status().as_u16(), 200);
    let ug: Value = r.json().await.unwrap();
    assert_eq!(ug["tenant"], "ug");
    assert!(ug["denials"].as_u64().unwrap() <= 1, "{ug}");
    assert_eq!(
        records_in_store(&h, "root_bypass", "\"action\":\"denials\"").await,
        1
    );
    h.running.shutdown().await;
}

/// Reads SSE frames from `r` until one `event: decision` whose decision id is `id` (≤ 10 s);
/// returns its data.
async fn frame_of(r: &mut reqwest::Response, buf: &mut String, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        while let Some(i) = buf.find("\n\n") {
            let frame: String = buf.drain(..i + 2).collect();
            if let Some(data) = frame
                .strip_prefix("event: decision\ndata: ")
                .map(str::trim_end)
            {
                let v: Value = serde_json::from_str(data).expect("data is JSON");
                if v["decision_id"] == id {
                    return v;
                }
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = tokio::time::timeout(left, r.chunk())
            .await
            .expect("the decision within 10 s")
            .expect("the stream does not fail")
            .expect("the stream does not end");
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}

/// INT-8-1, EXT-6-1: the HTTP stream delivers a decision made after subscribing, with the
/// fields the staff view shows (and no person id: the path is the route template); opening it
/// is an `audit_access` record like the gRPC tail's; `outcome=deny` filters; a server shutdown
/// ends the stream.
#[tokio::test]
async fn staff_stream_delivers_decisions_made_after_subscribing() {
    let mut h = Harness::start(None).await;
    let token = auditor(&h);
    let mut all = get(&h, "/v1/audit/decisions/stream", Some(&token)).await;
    assert_eq!(all.status().as_u16(), 200);
    assert_eq!(all.headers()["content-type"], "text/event-stream");
    assert_eq!(all.headers()["cache-control"], "no-store");
    let mut denies = get(
        &h,
        "/v1/audit/decisions/stream?tenant=ke&outcome=deny",
        Some(&token),
    )
    .await;
    assert_eq!(denies.status().as_u16(), 200);
    let moh = partner(&h, "ke", "int-ke-moh", &["health"], "health:person:read");
    let moh_wrong = partner(
        &h,
        "ke",
        "int-ke-moh",
        &["health"],
        "health:encounter:write",
    );
    let (code, allowed_id) = check(&mut h, KE_RECORD, &moh).await;
    assert_eq!(code, "OK");
    let (code, denied_id) = check(&mut h, KE_RECORD, &moh_wrong).await;
    assert_eq!(code, "SCOPE_VIOLATION");

    let mut buf = String::new();
    let ev = frame_of(&mut all, &mut buf, &allowed_id).await;
    assert_eq!(ev["outcome"], "allow");
    assert_eq!(ev["code"], "OK");
    assert_eq!(ev["tenant_id"], "ke");
    assert_eq!(ev["integration_id"], "int-ke-moh");
    assert_eq!(ev["route_id"], "health-person-record");
    assert_eq!(ev["method"], "GET");
    assert_eq!(
        ev["path"],
        "/v1/tenants/ke/health/persons/{person_id}/record"
    );
    assert!(ev["seq"].as_u64().unwrap() > 0 && ev["time_unix_ms"].as_i64().unwrap() > 0);
    assert!(!ev.to_string().contains("p-1"), "no person id: {ev}");
    let ev = frame_of(&mut all, &mut buf, &denied_id).await;
    assert_eq!(ev["code"], "SCOPE_VIOLATION");

    // The deny-only stream: the first decision it delivers is the denial.
    let mut buf = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let first = loop {
        if let Some(i) = buf.find("event: decision\ndata: ") {
            let rest = &buf[i + "event: decision\ndata: ".len()..];
            if let Some(end) = rest.find('\n') {
                break serde_json::from_str::<Value>(&rest[..end]).unwrap();
            }
        }
        let chunk = tokio::time::timeout(
            deadline.saturating_duration_since(Instant::now()),
            denies.chunk(),
        )
        .await
        .unwrap()
        .unwrap()
        .unwrap();
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
    };
    assert_eq!(first["decision_id"], denied_id.as_str());

    // Each open stream was recorded like a gRPC tail.
    assert_eq!(
        records_in_store(&h, "audit_access", "\"action\":\"tail\"").await,
        2
    );
    assert_eq!(
        records_in_store(&h, "audit_access", "\"actor\":\"staff-1\"").await,
        2
    );
    drop(all);
    // A server shutdown ends an open stream cleanly (the body completes) instead of holding up
    // the graceful shutdown until the connection is cut.
    let shutdown = tokio::spawn(h.running.shutdown());
    let end = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match denies.chunk().await {
                Ok(Some(_)) => continue,
                other => break other,
            }
        }
    })
    .await
    .expect("the stream ends at shutdown (without it, it stays open)");
    assert!(matches!(end, Ok(None)), "the stream completes: {end:?}");
    shutdown.await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// The page in a real browser.

/// Everything the process logs (the server runs in this test process).
static PROCESS_LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        PROCESS_LOG.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The Chromium binary: `SCP_PEP_CHROMIUM`, else `chromium` on `PATH`. Panics (the test fails,
/// never skips) when there is none: `scripts/test` installs Debian's `chromium`.
fn chromium() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("SCP_PEP_CHROMIUM") {
        return p.into();
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        for name in ["chromium", "chromium-browser"] {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "no Chromium found: install Debian's `chromium` (scripts/test does: apt-get install -y \
         chromium) or set SCP_PEP_CHROMIUM to the binary's path"
    );
}

/// Loads `url` in headless Chromium and returns the DOM after the page ran (virtual-time budget
/// 30 s; the page's stream keeps real time flowing only while data arrives).
async fn dump_dom(url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(chromium())
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-extensions",
                "--virtual-time-budget=30000",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("--dump-dom")
            .arg(url)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("chromium finishes within 120 s")
    .expect("chromium starts");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// EXT-6-1, INT-8-1: the staff page, opened in a real headless Chromium as
/// `/staff#token=<auditor token>`, shows the last hour's denials counted by code and by
/// integration and live rows of decisions made while it is open (their decision ids). The token
/// (given in the URL fragment) never appears in the server's logs or the audit log.
#[tokio::test]
async fn staff_page_in_headless_chromium_shows_counts_and_live_rows() {
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info,scp_pep=trace"))
        .with_writer(|| LogWriter)
        .try_init();
    let browser = chromium();
    let mut h = Harness::start(None).await;
    let token = auditor(&h);
    let edu_code = traffic(&mut h).await;
    denials_when(&h, &token, 3).await;

    // Allowed decisions keep coming while the page is open (they do not change the denials).
    let ids: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let moh = partner(&h, "ke", "int-ke-moh", &["health"], "health:person:read");
    let mut client = h.client.clone();
    let feeder = {
        let (ids, stop) = (ids.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let req = scp_pep::check::build_request(&Harness::get(KE_RECORD, &moh));
                let resp = client.check(req).await.unwrap().into_inner();
                let v = scp_pep::check::response_json(&resp);
                assert_eq!(v["code"], "OK", "{v}");
                ids.lock()
                    .unwrap()
                    .push(v["decision_id"].as_str().unwrap().to_owned());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let url = format!("http://{}/staff#token={token}", h.running.http_addr);
    // The page must catch decisions made while its stream is open; a slow browser start may
    // leave it too little real time, so up to three loads.
    let mut dom = String::new();
    for _ in 0..3 {
        dom = dump_dom(&url).await;
        let seen = ids
            .lock()
            .unwrap()
            .iter()
            .any(|id| dom.contains(id.as_str()));
        if seen {
            break;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    feeder.await.unwrap();
    let _ = browser;

    assert!(dom.contains("security staff view"), "{dom}");
    assert!(
        dom.contains("Live: following decisions"),
        "the stream was opened: {dom}"
    );
    // Denials by code and by integration.
    let row = |k: &str, n: u64| format!("<tr><td>{k}</td><td class=\"num\">{n}</td></tr>");
    if edu_code == "SCOPE_VIOLATION" {
        assert!(dom.contains(&row("SCOPE_VIOLATION", 3)), "{dom}");
    } else {
        assert!(dom.contains(&row("SCOPE_VIOLATION", 2)), "{dom}");
        assert!(dom.contains(&row(&edu_code, 1)), "{dom}");
    }
    assert!(dom.contains(&row("int-ke-moh", 2)), "{dom}");
    assert!(dom.contains(&row("int-ke-edu", 1)), "{dom}");
    assert!(
        dom.contains("<strong id=\"denials-total\">3</strong>"),
        "{dom}"
    );
    // Live rows: decisions made while the page was open, by their ids.
    let ids = ids.lock().unwrap().clone();
    let shown = ids.iter().filter(|id| dom.contains(id.as_str())).count();
    assert!(
        shown >= 1,
        "no live decision row among {} made: {dom}",
        ids.len()
    );
    assert!(dom.contains("<td class=\"outcome\">allow</td>"), "{dom}");
    // The page dropped the fragment from the address bar; the token is in no text of the DOM.
    assert!(!dom.contains(&token), "token in the DOM");

    // The token never reached a log: not the process log, not the decision log, not the audit.
    let log = String::from_utf8_lossy(&PROCESS_LOG.lock().unwrap()).into_owned();
    assert!(!log.is_empty(), "the process log was captured");
    let sig = token.rsplit('.').next().unwrap();
    assert!(!log.contains(sig), "the admin token is in the server's log");
    let decisions = std::fs::read_to_string(&h.log_path).unwrap_or_default();
    assert!(!decisions.contains(sig));
    assert_eq!(records_in_store(&h, "audit_access", sig).await, 0);
    assert!(records_in_store(&h, "audit_access", "\"action\":\"tail\"").await >= 1);
    h.running.shutdown().await;
}
