//! The decision corpus: every `tests/corpus/*.yaml` case is sent as a real `CheckRequest` over gRPC
//! to the real scp-pep server (loopback), with tokens signed by real keys and JWKS served over HTTP.
//! Anyone can add a case without writing Rust; see `tests/corpus/README.md` for the format.
//!
//! After the corpus, the decision log is checked: one JSON line per decision with the documented
//! fields, and no token, API key or certificate anywhere in it.

use crate::common;

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;
use common::Harness;
use jsonwebtoken::{EncodingKey, Header};
use scp_pep::check::CheckInput;
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    #[serde(default)]
    requirements: Vec<String>,
    request: Req,
    /// Send the request this many times; earlier sends must be allowed, `expect` is for the last.
    #[serde(default)]
    repeat: Option<usize>,
    expect: Expect,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Req {
    #[serde(default = "get")]
    method: String,
    path: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default = "default_ip")]
    source_ip: Option<String>,
    #[serde(default)]
    token: Option<TokenSpec>,
    /// A fixture certificate file under tests/fixtures, sent as Envoy's peer certificate.
    #[serde(default)]
    client_cert: Option<String>,
}

fn get() -> String {
    "GET".into()
}

fn default_ip() -> Option<String> {
    Some("192.0.2.1".into())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenSpec {
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    integration: Option<String>,
    #[serde(default)]
    verticals: Option<Vec<String>>,
    #[serde(default)]
    scope: Option<String>,
    /// Claims merged over the defaults; `null` removes a claim.
    #[serde(default)]
    claims: serde_json::Map<String, Value>,
    /// Header fields merged over `{alg, kid, typ}`.
    #[serde(default)]
    header: serde_json::Map<String, Value>,
    /// `exp` relative to now, seconds.
    #[serde(default)]
    exp_in: Option<i64>,
    /// `nbf` relative to now, seconds.
    #[serde(default)]
    nbf_in: Option<i64>,
    /// `none` (unsigned), `hs256-public-key` (HMAC keyed with the public JWK),
    /// `tamper-signature`, `tamper-payload`.
    #[serde(default)]
    forge: Option<String>,
    /// A raw bearer value instead of a token.
    #[serde(default)]
    raw: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    allowed: bool,
    status: u64,
    code: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    removed: Vec<String>,
    #[serde(default)]
    not_removed: Vec<String>,
    #[serde(default)]
    www_authenticate: Option<String>,
    #[serde(default)]
    retry_after: Option<bool>,
}

fn b64(v: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
}

fn make_token(h: &Harness, spec: &TokenSpec) -> String {
    if let Some(raw) = &spec.raw {
        return raw.clone();
    }
    let key_name = spec.key.as_deref().unwrap_or("ke-rs256");
    let tenant = spec.tenant.as_deref().unwrap_or("ke");
    let integration = spec.integration.as_deref().unwrap_or("int-ke-moh");
    let verticals: Vec<&str> = spec
        .verticals
        .as_ref()
        .map(|v| v.iter().map(String::as_str).collect())
        .unwrap_or_else(|| vec!["health"]);
    let scope = spec.scope.as_deref().unwrap_or("health:person:read");
    let mut claims = h.claims(tenant, integration, &verticals, scope);
    let now = scp_pep::authn::now_s() as i64;
    if let Some(d) = spec.exp_in {
        claims["exp"] = (now + d).into();
        claims["iat"] = (now + d - 300).into();
    }
    if let Some(d) = spec.nbf_in {
        claims["nbf"] = (now + d).into();
    }
    let obj = claims.as_object_mut().unwrap();
    for (k, v) in &spec.claims {
        let v = &match v {
            Value::String(s) => Value::String(s.replace("{{ISSUER_KE}}", &h.idp.issuer("ke"))),
            other => other.clone(),
        };
        if v.is_null() {
            obj.remove(k);
        } else {
            obj.insert(k.clone(), v.clone());
        }
    }
    let key = h.idp.keys.get(key_name);
    let mut header =
        serde_json::json!({"alg": format!("{:?}", key.alg), "typ": "JWT", "kid": key.kid});
    for (k, v) in &spec.header {
        if v.is_null() {
            header.as_object_mut().unwrap().remove(k);
        } else {
            header[k] = v.clone();
        }
    }
    match spec.forge.as_deref() {
        Some("none") => {
            header["alg"] = "none".into();
            format!(
                "{}.{}.",
                b64(&serde_json::to_vec(&header).unwrap()),
                b64(&serde_json::to_vec(&claims).unwrap())
            )
        }
        Some("hs256-public-key") => {
            // Algorithm confusion: HMAC keyed with the published public key.
            let secret = serde_json::to_vec(&key.public).unwrap();
            let mut hd = Header::new(jsonwebtoken::Algorithm::HS256);
            hd.kid = Some(key.kid.clone());
            jsonwebtoken::encode(&hd, &claims, &EncodingKey::from_secret(&secret)).unwrap()
        }
        Some("tamper-signature") | Some("tamper-payload") | None => {
            let token = if spec.header.is_empty() {
                key.sign(&claims)
            } else {
                let hd: Header = serde_json::from_value(header.clone()).expect("header");
                jsonwebtoken::encode(&hd, &claims, &key.encoding).unwrap()
            };
            let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
            match spec.forge.as_deref() {
                Some("tamper-signature") => {
                    let mut sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .decode(&parts[2])
                        .unwrap();
                    sig[0] ^= 0x01;
                    parts[2] = b64(&sig);
                }
                Some("tamper-payload") => {
                    let mut c = claims.clone();
                    c["integration_id"] = "int-ke-multi".into();
                    parts[1] = b64(&serde_json::to_vec(&c).unwrap());
                }
                _ => {}
            }
            parts.join(".")
        }
        Some(other) => panic!("unknown forge `{other}`"),
    }
}

fn input(h: &Harness, req: &Req, secrets: &mut Vec<String>) -> CheckInput {
    let mut headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (k, v) in &headers {
        if k == "x-api-key" {
            secrets.push(v.clone());
        }
    }
    if let Some(spec) = &req.token {
        let t = make_token(h, spec);
        if t.len() > 20 {
            secrets.push(t.clone());
        }
        headers.push(("authorization".into(), format!("Bearer {t}")));
    }
    let peer_certificate = req.client_cert.as_ref().map(|f| {
        let pem = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures")
                .join(f),
        )
        .expect("fixture certificate");
        percent_encoding::utf8_percent_encode(&pem, percent_encoding::NON_ALPHANUMERIC).to_string()
    });
    CheckInput {
        method: req.method.clone(),
        path: req.path.clone(),
        headers,
        source_ip: req.source_ip.clone(),
        peer_certificate,
        body: None,
    }
}

fn compare(case: &Case, v: &Value) -> Vec<String> {
    let e = &case.expect;
    let mut errs = Vec::new();
    if v["allowed"] != Value::Bool(e.allowed) {
        errs.push(format!(
            "allowed: expected {}, got {}",
            e.allowed, v["allowed"]
        ));
    }
    if v["status"].as_u64() != Some(e.status) {
        errs.push(format!(
            "status: expected {}, got {}",
            e.status, v["status"]
        ));
    }
    if v["code"].as_str() != Some(e.code.as_str()) {
        errs.push(format!(
            "code: expected {}, got {} ({})",
            e.code, v["code"], v["body"]["error"]["message"]
        ));
    }
    for (k, want) in &e.headers {
        let got = v["headers_set"][k].as_str();
        if got != Some(want.as_str()) {
            errs.push(format!("header {k}: expected `{want}`, got {got:?}"));
        }
    }
    let removed: Vec<String> = v["headers_removed"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    for r in &e.removed {
        if !removed.contains(r) {
            errs.push(format!(
                "header {r} should be removed; removed = {removed:?}"
            ));
        }
    }
    for r in &e.not_removed {
        if removed.contains(r) {
            errs.push(format!("header {r} must not be removed"));
        }
    }
    if let Some(w) = &e.www_authenticate {
        let got = v["headers_set"]["www-authenticate"].as_str();
        if got != Some(w.as_str()) {
            errs.push(format!("www-authenticate: expected `{w}`, got {got:?}"));
        }
    }
    if let Some(r) = e.retry_after {
        let got = v["headers_set"]["retry-after"]
            .as_str()
            .and_then(|s| s.parse::<u64>().ok());
        if r != got.is_some_and(|s| s >= 1) {
            errs.push(format!("retry-after: expected present={r}, got {got:?}"));
        }
    }
    if !e.allowed {
        let body = &v["body"]["error"];
        if body["code"].as_str() != Some(e.code.as_str())
            || body["decision_id"].as_str().is_none_or(str::is_empty)
            || !body["retryable"].is_boolean()
            || body["message"].as_str().is_none_or(str::is_empty)
        {
            errs.push(format!(
                "denial body does not have the documented shape: {body}"
            ));
        }
        // INT-4.6-3: the message is for the partner; internal requirement ids stay out of it.
        let msg = body["message"].as_str().unwrap_or_default();
        if internal_id(msg) {
            errs.push(format!("denial message carries an internal id: {msg}"));
        }
    }
    errs
}

/// Whether `s` holds something shaped like an internal requirement id (`INT-4.2-5`, `CON-27`,
/// `ONB-SEC-01`): two to four capitals, a hyphen, then a digit or more capitals and a digit.
fn internal_id(s: &str) -> bool {
    let b = s.as_bytes();
    (0..b.len()).any(|i| {
        let caps = b[i..].iter().take_while(|c| c.is_ascii_uppercase()).count();
        (i == 0 || !b[i - 1].is_ascii_alphanumeric())
            && (2..=4).contains(&caps)
            && b.get(i + caps) == Some(&b'-')
            && b[i + caps + 1..]
                .iter()
                .find(|c| !c.is_ascii_uppercase() && **c != b'-')
                .is_some_and(u8::is_ascii_digit)
    })
}

#[test]
fn internal_id_shape() {
    assert!(internal_id("never accepted alone (INT-4.2-5)"));
    assert!(internal_id("CON-27 applies"));
    assert!(internal_id("see ONB-SEC-01"));
    assert!(!internal_id(
        "bearer token required; an API key is never accepted alone"
    ));
    assert!(!internal_id("x-scp-tenant is set by scp-pep"));
    assert!(!internal_id("HTTP-based"));
}

/// Every case of the corpus: INT-4.1-1, INT-4.1-3, INT-4.2-1, INT-4.2-3, INT-4.2-4, INT-4.2-5,
/// INT-4.2-6, INT-4.2-7, INT-4.4-2, INT-4.4-3, INT-4.5-1, INT-4.6-1, INT-4.6-2, INT-4.6-3,
/// INT-4.6-4, INT-5.3-2, INT-6.2-2, INT-6.2-3, INT-6.2-4, INT-6.2-5, INT-9.4-1, ONB-SEC-01,
/// ONB-PRIV-01, EXT-3.3-1, EXT-5.2-1 (each case names its own IDs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corpus_cases_decide_as_expected() {
    let mut h = Harness::start(None).await;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no corpus files");
    let mut failures = Vec::new();
    let mut secrets = Vec::new();
    let mut total = 0;
    let mut sent = 0;
    for f in &files {
        let cases: Vec<Case> = serde_yaml_ng::from_str(&std::fs::read_to_string(f).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        for case in cases {
            total += 1;
            let inp = input(&h, &case.request, &mut secrets);
            let n = case.repeat.unwrap_or(1);
            let mut last = Value::Null;
            for i in 0..n {
                last = h.check(&inp).await;
                sent += 1;
                if i + 1 < n && last["allowed"] != Value::Bool(true) {
                    failures.push(format!(
                        "{} / {}: send {} of {} should be allowed, got {}",
                        f.file_name().unwrap().to_string_lossy(),
                        case.name,
                        i + 1,
                        n,
                        last["code"]
                    ));
                }
            }
            for e in compare(&case, &last) {
                failures.push(format!(
                    "{} / {} [{}]: {e}",
                    f.file_name().unwrap().to_string_lossy(),
                    case.name,
                    case.requirements.join(", ")
                ));
            }
        }
    }
    assert!(total >= 60, "corpus unexpectedly small: {total} cases");
    assert!(
        failures.is_empty(),
        "{} of {total} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // INT-8-1: one JSON line per decision with the documented fields.
    let lines = h.log_lines(sent).await;
    assert_eq!(lines.len(), sent, "one decision-log line per decision");
    for l in &lines {
        for field in [
            "decision_id",
            "time",
            "outcome",
            "tenant_id",
            "integration_id",
            "client_id",
            "route_id",
            "verticals",
            "data_categories",
            "stages",
            "latency_us",
            "method",
            "path",
        ] {
            assert!(
                l.get(field).is_some(),
                "decision log line lacks `{field}`: {l}"
            );
        }
        if l["outcome"] == "deny" {
            assert!(l["code"].is_string(), "deny lines carry the code: {l}");
        }
    }
    // No token, API key or certificate ever reaches the log.
    let text = std::fs::read_to_string(&h.log_path).unwrap();
    for s in &secrets {
        assert!(
            !text.contains(s.as_str()),
            "a secret reached the decision log"
        );
        if let Some(sig) = s.rsplit('.').next().filter(|s| s.len() > 16) {
            assert!(
                !text.contains(sig),
                "a token signature reached the decision log"
            );
        }
    }
    assert!(
        !text.contains("Bearer"),
        "an authorization header reached the decision log"
    );
    assert!(
        !text.contains("BEGIN CERTIFICATE"),
        "a certificate reached the decision log"
    );
    h.running.shutdown().await;
}
