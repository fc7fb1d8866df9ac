//! Payload validation (stage 5b): media types per route, JSON Schema for push bodies, strict JSON,
//! hostile XML; through the real gRPC server (INT-5.2-1, INT-9.3-1, EXT-4.4-2).

use scp_pep::check::CheckInput;
use serde_json::Value;

use crate::common::Harness;

const PUSH: &str = "/v1/tenants/ke/health/immunizations";
const LAB: &str = "/v1/tenants/ke/health/lab-results";

fn token(h: &Harness, scope: &str) -> String {
    h.sign(
        "ke-rs256",
        &h.claims("ke", "int-ke-payload", &["health"], scope),
    )
}

fn post(path: &str, token: &str, content_type: Option<&str>, body: &str) -> CheckInput {
    let mut headers = vec![
        ("authorization".to_owned(), format!("Bearer {token}")),
        ("content-length".to_owned(), body.len().to_string()),
    ];
    if let Some(ct) = content_type {
        headers.push(("content-type".to_owned(), ct.to_owned()));
    }
    CheckInput {
        method: "POST".into(),
        path: path.into(),
        headers,
        body: Some(body.as_bytes().to_vec()),
        ..Default::default()
    }
}

const GOOD: &str = r#"{"records":[{"facility":"f-1","vaccine":"bcg","date":"2026-11-30"}]}"#;

/// INT-9.3-1, EXT-4.4-2: a body that fails the route's schema is 400 `PAYLOAD_INVALID` with the
/// JSON pointer and keyword at fault and never the value, in the answer and in the decision log;
/// keys the schema does not name are masked; a conforming body passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_failures_name_pointer_and_keyword_never_the_value() {
    let mut h = Harness::start(None).await;
    let t = token(&h, "health:immunization:write");
    let ok = h
        .check(&post(PUSH, &t, Some("application/json"), GOOD))
        .await;
    assert_eq!(ok["allowed"], true, "{ok}");

    let secret_value = "Wanjiru-Kamau-1984";
    let bad = format!(
        r#"{{"records":[{{"facility":"f-1","vaccine":"{secret_value}","date":"2026-11-30"}}]}}"#
    );
    let r = h
        .check(&post(PUSH, &t, Some("application/json"), &bad))
        .await;
    assert_eq!(r["code"], "PAYLOAD_INVALID", "{r}");
    assert_eq!(r["status"], 400);
    assert_eq!(r["body"]["error"]["field"], "/records/0/vaccine", "{r}");
    assert_eq!(r["body"]["error"]["keyword"], "enum", "{r}");
    assert!(!r.to_string().contains(secret_value), "{r}");

    let missing = r#"{"records":[{"facility":"f-1","date":"2026-11-30"}]}"#;
    let r = h
        .check(&post(PUSH, &t, Some("application/json"), missing))
        .await;
    assert_eq!(r["body"]["error"]["keyword"], "required", "{r}");
    assert_eq!(r["body"]["error"]["field"], "/records/0", "{r}");

    // A free-form key (it could be a person id) is never echoed.
    let keyed = format!(r#"{{"records":[],"tags":{{"{secret_value}":"x"}}}}"#);
    let r = h
        .check(&post(PUSH, &t, Some("application/json"), &keyed))
        .await;
    assert_eq!(r["body"]["error"]["field"], "/tags/*", "{r}");
    assert_eq!(r["body"]["error"]["keyword"], "type", "{r}");
    assert!(!r.to_string().contains(secret_value), "{r}");

    // A schema route with no body at all fails closed.
    let mut empty = post(PUSH, &t, Some("application/json"), "");
    empty.body = None;
    let r = h.check(&empty).await;
    assert_eq!(r["code"], "PAYLOAD_INVALID", "{r}");

    let lines = h.log_lines(5).await;
    let last: &Value = lines.last().unwrap();
    let stages: Vec<&str> = last["stages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(stages.contains(&"payload"), "{last}");
    for l in &lines {
        assert!(!l.to_string().contains(secret_value), "{l}");
    }
}

/// INT-5.2-1: JSON by default, other media types only where the route lists them; a body of
/// another type or without `content-type` is 415 `MEDIA_TYPE_UNSUPPORTED`; JSON must be UTF-8.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_types_follow_the_route() {
    let mut h = Harness::start(None).await;
    let t = token(&h, "health:immunization:write");
    for (ct, why) in [
        (Some("text/csv"), "csv on a JSON-only route"),
        (Some("application/xml"), "xml where not listed"),
        (
            Some("application/json; charset=iso-8859-1"),
            "non-UTF-8 JSON",
        ),
        (None, "no content-type"),
    ] {
        let r = h.check(&post(PUSH, &t, ct, GOOD)).await;
        assert_eq!(r["code"], "MEDIA_TYPE_UNSUPPORTED", "{why}: {r}");
        assert_eq!(r["status"], 415, "{why}: {r}");
        assert!(
            r["body"]["error"]["message"]
                .as_str()
                .unwrap()
                .contains("application/json"),
            "{r}"
        );
    }
    let r = h
        .check(&post(
            PUSH,
            &t,
            Some("Application/JSON; charset=UTF-8"),
            GOOD,
        ))
        .await;
    assert_eq!(r["allowed"], true, "{r}");

    let lab = token(&h, "health:lab:write");
    let xml = "<?xml version=\"1.0\"?><result><code>718-7</code></result>";
    let r = h
        .check(&post(LAB, &lab, Some("application/xml"), xml))
        .await;
    assert_eq!(r["allowed"], true, "{r}");
    let hl7 = "MSH|^~\\&|LAB|F1|SCP|KE|202612040830||ORU^R01|1|P|2.5\r";
    let r = h
        .check(&post(LAB, &lab, Some("application/hl7-v2"), hl7))
        .await;
    assert_eq!(r["allowed"], true, "{r}");
    let r = h
        .check(&post(LAB, &lab, Some("application/json"), "{}"))
        .await;
    assert_eq!(r["code"], "MEDIA_TYPE_UNSUPPORTED", "{r}");
}

/// EXT-4.4-2 (malicious content): duplicate JSON keys (a parser differential), XML entity
/// declarations, NUL bytes and deep nesting are refused with `PAYLOAD_INVALID`; a caller
/// without the route's scope learns nothing about its payload rules (scope is checked first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bodies_are_refused_after_authorization() {
    let mut h = Harness::start(None).await;
    let t = token(&h, "health:immunization:write");
    let dup =
        r#"{"records":[],"records":[{"facility":"f-1","vaccine":"bcg","date":"2026-11-30"}]}"#;
    let r = h
        .check(&post(PUSH, &t, Some("application/json"), dup))
        .await;
    assert_eq!(r["code"], "PAYLOAD_INVALID", "{r}");
    assert!(
        r["body"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("repeats a key"),
        "{r}"
    );
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let r = h
        .check(&post(PUSH, &t, Some("application/json"), &deep))
        .await;
    assert_eq!(r["code"], "PAYLOAD_INVALID", "{r}");

    let lab = token(&h, "health:lab:write");
    let bomb =
        "<?xml version=\"1.0\"?><!DOCTYPE r [<!ENTITY x SYSTEM \"file:///etc/passwd\">]><r>&x;</r>";
    let r = h
        .check(&post(LAB, &lab, Some("application/xml"), bomb))
        .await;
    assert_eq!(r["code"], "PAYLOAD_INVALID", "{r}");
    let r = h
        .check(&post(LAB, &lab, Some("application/xml"), "<r>\0</r>"))
        .await;
    assert_eq!(r["code"], "PAYLOAD_INVALID", "{r}");

    // The lab token lacks the push route's scope: scope first, the body is never looked at.
    let r = h.check(&post(PUSH, &lab, Some("text/csv"), "x")).await;
    assert_eq!(r["code"], "SCOPE_VIOLATION", "{r}");
}

/// INT-9.3-1: a route whose schema is not a usable JSON Schema, or refers outside itself, is a
/// policy load error naming the field; nothing is fetched.
#[test]
fn bad_schemas_are_load_errors() {
    let dir = tempfile::tempdir().unwrap();
    let base = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/policies/tenants.yaml"),
    )
    .unwrap()
    .replace("{{IDP}}", "https://idp.example");
    std::fs::write(dir.path().join("tenants.yaml"), base).unwrap();
    for (schema, field) in [
        ("{type: 5}", "body_schema/type: not a valid JSON Schema"),
        (
            "{$ref: 'https://169.254.169.254/s.json'}",
            "does not resolve inside the schema",
        ),
    ] {
        let route = format!(
            "routes:\n  - id: r\n    methods: [POST]\n    path: /v1/tenants/{{tenant}}/x\n    verticals: [health]\n    action: write\n    resource: x\n    scope: x:write\n    kind: real_time\n    body_schema: {schema}\n"
        );
        std::fs::write(dir.path().join("routes.yaml"), route).unwrap();
        let err = scp_pep::policy::PolicySet::load_dir(dir.path())
            .expect_err("an unusable schema is a load error")
            .to_string();
        assert!(err.contains(field), "{field}: {err}");
    }
}
