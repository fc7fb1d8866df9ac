//! `scp-pep explain`: one request evaluated offline against policy files, with the trace of every
//! stage (inputs, result, determining Cedar policies).

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

const PACK: &str = r#"policy_packs:
  - id: pack-ke-health
    tenant: ke
    vertical: health
    status: active
    policies: |
      @id("reads-in-office-hours")
      permit(principal, action == Scp::Action::"read", resource)
      when { context.hour >= 6 && context.hour < 20 };
      @id("no-writes")
      forbid(principal, action == Scp::Action::"write", resource);
"#;

/// A person id that must never appear in any output.
const PERSON: &str = "pid-7f3a91c2";

const CONSENTS: &str = r#"persons:
  - {tenant: ke, person_id: pid-7f3a91c2}
  - {tenant: ke, person_id: pid-0c44e9d1}
consents:
  - {tenant: ke, person_id: pid-7f3a91c2, vertical_id: health, active_from: "2026-01-01", evidence_attachment_ids: [att-1]}
"#;

const CLAIMS: &str = r#"{"tenant_id":"ke","integration_id":"int-ke-moh","verticals":["health"],"scope":"health:person:read health:encounter:write","azp":"ke-moh-connector"}"#;

/// The shipped demo policies plus a health pack, in a temporary directory.
fn policies(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("policies");
    std::fs::create_dir_all(&p).unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap().path();
        std::fs::copy(&e, p.join(e.file_name().unwrap())).unwrap();
    }
    std::fs::write(p.join("packs.yaml"), PACK).unwrap();
    std::fs::write(dir.join("consents.yaml"), CONSENTS).unwrap();
    p
}

fn explain(dir: &Path, extra: &[&str]) -> Output {
    let p = policies(dir);
    Command::new(env!("CARGO_BIN_EXE_scp-pep"))
        .env("RUST_LOG", "warn")
        .env_remove("SCP_PEP_TOKEN")
        .arg("explain")
        .arg("--policies")
        .arg(&p)
        .args(extra)
        .output()
        .unwrap()
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn stage<'a>(t: &'a Value, name: &str) -> &'a Value {
    t["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stage"] == name)
        .unwrap_or_else(|| panic!("no stage {name} in {t:#}"))
}

fn results(t: &Value) -> Vec<(String, String)> {
    t["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["stage"].as_str().unwrap().to_owned(),
                s["result"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// ADM-6: an allowed read shows every stage passing in pipeline order, the pack's determining
/// permit, and what offline evaluation could not check (consent without a registry, rate
/// limits); exit 0.
#[test]
fn explain_allowed_request_traces_every_stage_and_the_determining_permit() {
    let dir = tempfile::tempdir().unwrap();
    let path = format!("/v1/tenants/ke/health/persons/{PERSON}/record");
    let out = explain(
        dir.path(),
        &[
            "--json",
            "--at",
            "2026-12-06T10:00:00Z",
            "--claims",
            CLAIMS,
            "GET",
            &path,
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = json(&out);
    assert_eq!(t["outcome"], "allow");
    assert_eq!(t["route_id"], "health-person-record");
    assert_eq!(
        t["path"],
        "/v1/tenants/ke/health/persons/{person_id}/record"
    );
    let want: Vec<(String, String)> = [
        ("authenticate", "pass"),
        ("integration", "pass"),
        ("second_factor", "pass"),
        ("route", "pass"),
        ("tenant_vertical", "pass"),
        ("scope", "pass"),
        ("deny_rules", "pass"),
        ("policy_packs", "pass"),
        ("residency", "pass"),
        ("consent", "not_evaluated"),
        ("data_minimization", "pass"),
        ("rate_limit", "not_evaluated"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(results(&t), want);
    assert_eq!(
        stage(&t, "policy_packs")["policies"],
        serde_json::json!(["pack-ke-health/reads-in-office-hours"])
    );
    assert_eq!(stage(&t, "policy_packs")["inputs"]["context"]["hour"], 10);
    assert_eq!(
        t["not_evaluated"],
        serde_json::json!(["consent", "rate_limit"])
    );
    assert_eq!(
        stage(&t, "authenticate")["inputs"]["integration_id"],
        "int-ke-moh"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains(PERSON));
}

/// ADM-6: a pack `forbid` denies with POLICY_DENIED at the `policy_packs` stage, names the
/// determining policy, and every later stage is `not_reached`; the text trace says the same;
/// exit 1.
#[test]
fn explain_pack_denial_names_the_determining_forbid() {
    let dir = tempfile::tempdir().unwrap();
    let path = format!("/v1/tenants/ke/health/persons/{PERSON}/encounters");
    let args = [
        "--at",
        "2026-12-06T10:00:00Z",
        "--claims",
        CLAIMS,
        "POST",
        &path,
    ];
    let out = explain(dir.path(), &[&["--json"], &args[..]].concat());
    assert_eq!(out.status.code(), Some(1));
    let t = json(&out);
    assert_eq!(t["outcome"], "deny");
    assert_eq!(t["code"], "POLICY_DENIED");
    assert_eq!(t["http_status"], 403);
    let packs = stage(&t, "policy_packs");
    assert_eq!(packs["result"], "deny");
    assert_eq!(packs["code"], "POLICY_DENIED");
    assert_eq!(
        packs["policies"],
        serde_json::json!(["pack-ke-health/no-writes"])
    );
    for s in ["residency", "data_minimization", "rate_limit"] {
        assert_eq!(stage(&t, s)["result"], "not_reached", "{s}");
    }
    assert_eq!(stage(&t, "deny_rules")["result"], "pass");
    let text = explain(dir.path(), &args);
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(
        text.contains("policy_packs       deny           POLICY_DENIED"),
        "{text}"
    );
    assert!(
        text.contains("determining policy: pack-ke-health/no-writes"),
        "{text}"
    );
    assert!(text.contains("outcome: deny POLICY_DENIED (403)"), "{text}");
    assert!(!text.contains(PERSON));
}

/// INT-4.3-1: with `--consents`, stage 7 runs the real consent rules over an in-memory
/// registry: a person with active consent passes, one without is CONSENT_MISSING; persons are
/// shown as keyed references only.
#[test]
fn explain_checks_consent_from_a_registry_file_without_printing_person_ids() {
    let dir = tempfile::tempdir().unwrap();
    let consents = dir.path().join("consents.yaml");
    let run = |person: &str| {
        let path = format!("/v1/tenants/ke/health/persons/{person}/record");
        let c = consents.to_str().unwrap().to_owned();
        explain(
            dir.path(),
            &[
                "--json",
                "--consents",
                &c,
                "--at",
                "2026-12-06T10:00:00Z",
                "--claims",
                CLAIMS,
                "GET",
                &path,
            ],
        )
    };
    let ok = run(PERSON);
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let t = json(&ok);
    let c = stage(&t, "consent");
    assert_eq!(c["result"], "pass");
    assert_eq!(c["inputs"]["checks"][0]["result"], "active");
    assert_eq!(t["not_evaluated"], serde_json::json!(["rate_limit"]));
    let no = run("pid-0c44e9d1");
    assert_eq!(no.status.code(), Some(1));
    let t = json(&no);
    assert_eq!(t["code"], "CONSENT_MISSING");
    assert_eq!(stage(&t, "consent")["result"], "deny");
    for out in [&ok, &no] {
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !all.contains(PERSON) && !all.contains("pid-0c44e9d1"),
            "{all}"
        );
    }
}

/// ONB-PRIV-01: a token without the route's scope stops at the scope stage, whose inputs show
/// the route's scope, the contract's and the token's.
#[test]
fn explain_scope_violation_shows_the_scopes_compared() {
    let dir = tempfile::tempdir().unwrap();
    let claims = r#"{"tenant_id":"ke","integration_id":"int-ke-moh","verticals":["health"],"scope":"health:encounter:write","azp":"ke-moh-connector"}"#;
    let out = explain(
        dir.path(),
        &[
            "--json",
            "--claims",
            claims,
            "GET",
            "/v1/tenants/ke/health/persons/x/record",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let t = json(&out);
    assert_eq!(t["code"], "SCOPE_VIOLATION");
    let s = stage(&t, "scope");
    assert_eq!(s["result"], "deny");
    assert_eq!(s["inputs"]["route_scope"], "health:person:read");
    assert_eq!(
        s["inputs"]["token_scopes"],
        serde_json::json!(["health:encounter:write"])
    );
}

/// Bad input: not-JSON claims and a malformed token are exit 2 naming the argument, nothing
/// evaluated; missing claims are TOKEN_CLAIMS_MISSING at stage 1; a token's claims are used
/// but marked unverified and the token is never printed.
#[test]
fn explain_rejects_bad_claims_and_never_prints_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let out = explain(dir.path(), &["--claims", "{nope", "GET", "/v1/x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--claims"));
    assert!(out.stdout.is_empty());
    let out = explain(dir.path(), &["--token", "abc", "GET", "/v1/x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--token"));

    let out = explain(
        dir.path(),
        &[
            "--json",
            "--claims",
            r#"{"tenant_id":"ke","verticals":["health"]}"#,
            "GET",
            "/v1/x",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let t = json(&out);
    assert_eq!(t["code"], "TOKEN_CLAIMS_MISSING");
    assert_eq!(stage(&t, "authenticate")["result"], "deny");

    use base64::Engine as _;
    let b64 = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    let token = format!(
        "{}.{}.{}",
        b64(r#"{"alg":"RS256","kid":"k1"}"#),
        b64(CLAIMS),
        b64("not-a-signature")
    );
    let out = explain(
        dir.path(),
        &[
            "--json",
            "--at",
            "2026-12-06T10:00:00Z",
            "--token",
            &token,
            "GET",
            "/v1/tenants/ke/health/persons/x/record",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = json(&out);
    let auth = stage(&t, "authenticate");
    assert!(
        auth["detail"]
            .as_str()
            .unwrap()
            .contains("WITHOUT verifying")
    );
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!all.contains(&token) && !all.contains("eyJ"), "{all}");
}

fn explain_decision(h: &crate::common::Harness, id: &str, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_scp-pep"))
        .env("RUST_LOG", "warn")
        .env_remove("SCP_PEP_CONFIG")
        .args([
            "explain",
            "--json",
            "--decision",
            id,
            "--store",
            &h.store_url,
        ])
        .args(extra)
        .output()
        .unwrap()
}

/// ADM-6, INT-8-1: decisions recorded by a real server are explained from their audit records:
/// re-decided against the store's current policy the trace agrees with the record (an allow with
/// every stage, a deny-rule denial naming the rule); against a candidate directory whose pack
/// forbids GET, the same allow now stops at `policy_packs` with the determining policy and the
/// trace says it differs from the record. Unknown ids exit 1; no person id is printed.
#[tokio::test]
async fn explain_recorded_decision_from_the_audit_log() {
    use crate::common::Harness;
    let mut h = Harness::start(None).await;
    // p-1 has consent in the harness's store.
    let path = "/v1/tenants/ke/health/persons/p-1/record".to_owned();
    let moh = h.sign(
        "ke-rs256",
        &h.claims("ke", "int-ke-moh", &["health"], "health:person:read"),
    );
    let r = h.check(&Harness::get(&path, &moh)).await;
    assert_eq!(r["allowed"], true, "{r}");
    let allowed = r["decision_id"].as_str().unwrap().to_owned();
    let denyme = h.sign(
        "ke-rs256",
        &h.claims("ke", "int-ke-denyme", &["health"], "health:person:read"),
    );
    let r = h.check(&Harness::get(&path, &denyme)).await;
    assert_eq!(r["code"], "DENY_RULE_MATCHED", "{r}");
    let denied = r["decision_id"].as_str().unwrap().to_owned();
    // The audit writer commits before the answer leaves: the records are there.

    let out = explain_decision(&h, &allowed, &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = json(&out);
    assert_eq!(t["outcome"], "allow");
    assert_eq!(t["recorded"]["decision_id"], allowed.as_str());
    assert_eq!(t["recorded"]["code"], "OK");
    assert_eq!(t["recorded"]["same_code"], true);
    assert_eq!(
        stage(&t, "authenticate")["inputs"]["scopes"],
        serde_json::json!(["health:person:read"])
    );
    assert_eq!(stage(&t, "consent")["result"], "pass");
    assert_eq!(
        stage(&t, "consent")["inputs"]["checks"][0]["result"],
        "active"
    );

    let out = explain_decision(&h, &denied, &[]);
    assert_eq!(out.status.code(), Some(1));
    let t = json(&out);
    assert_eq!(t["code"], "DENY_RULE_MATCHED");
    assert_eq!(t["recorded"]["same_code"], true);
    let dr = stage(&t, "deny_rules");
    assert_eq!(dr["result"], "deny");
    assert!(
        dr["detail"].as_str().unwrap().contains("dr-investigation"),
        "{dr}"
    );

    // A candidate policy: the harness's files plus a pack forbidding GET.
    let cand = h.dir.path().join("cand");
    std::fs::create_dir_all(&cand).unwrap();
    for e in std::fs::read_dir(&h.policy_dir).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, cand.join(p.file_name().unwrap())).unwrap();
    }
    std::fs::write(
        cand.join("zz-pack.yaml"),
        "policy_packs:\n  - id: pack-ke-health-x\n    tenant: ke\n    vertical: health\n    status: active\n    policies: |\n      permit(principal, action, resource);\n      @id(\"no-get\")\n      forbid(principal, action, resource) when { context.method == \"GET\" };\n",
    )
    .unwrap();
    let out = explain_decision(&h, &allowed, &["--policies", cand.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = json(&out);
    assert_eq!(t["code"], "POLICY_DENIED");
    assert_eq!(t["recorded"]["same_code"], false);
    assert_eq!(
        stage(&t, "policy_packs")["policies"],
        serde_json::json!(["pack-ke-health-x/no-get"])
    );
    let text = Command::new(env!("CARGO_BIN_EXE_scp-pep"))
        .env("RUST_LOG", "warn")
        .env_remove("SCP_PEP_CONFIG")
        .args(["explain", "--decision", &allowed, "--store", &h.store_url])
        .args(["--policies", cand.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(
        text.contains("DIFFERS from the recorded decision"),
        "{text}"
    );
    assert!(
        text.contains(&format!("recorded decision {allowed}")),
        "{text}"
    );
    assert!(!text.contains("p-1"), "{text}");

    let out = explain_decision(&h, "01930000-0000-7000-8000-000000000000", &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no decision record"));
    let out = explain_decision(&h, "../etc", &[]);
    assert_eq!(out.status.code(), Some(2));
}
