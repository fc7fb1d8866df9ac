//! The admin API as a whole (ADM-1, ADM-2, ADM-4, ADM-7, ADM-8): every operation of the served
//! OpenAPI document refuses callers without a token or without a role, and the tenant consent
//! settings (the umbrella authority's grace period, CON-27) go through the audited write path.
//! Real HTTP against a real server, on SQLite and PostgreSQL.

use crate::common;

use common::Harness;
use reqwest::Method;
use serde_json::{Value, json};

on_both_stores!(
    optional:
    every_operation_needs_a_token_and_a_role,
    tenant_consent_settings
);

fn admin_token(h: &Harness, tenant: &str, sub: &str, roles: &[&str]) -> String {
    h.staff_token(tenant, sub, roles, "scp-pep-admin")
}

async fn call(
    h: &Harness,
    method: Method,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> (u16, Value, Option<String>) {
    let mut req = reqwest::Client::new().request(method, h.ops_url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let etag = resp
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (status, resp.json().await.unwrap_or(Value::Null), etag)
}

/// ADM-1, EXT-5.3-1: walks every operation of the served `/openapi.json` (admin, security and
/// consent routes). Without a token each answers 401 `UNAUTHENTICATED`; with a valid admin token
/// whose roles map to nothing (least privilege) each answers 403 `FORBIDDEN` or 404 (a resource
/// that does not exist is not revealed) — never a success, never a server error.
async fn every_operation_needs_a_token_and_a_role(store: Option<String>) {
    let h = Harness::start(store).await;
    let (status, doc, _) = call(&h, Method::GET, "/openapi.json", None, &[], None).await;
    assert_eq!(status, 200, "the OpenAPI document is public");
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().expect("paths");
    assert!(
        paths.contains_key("/v1/consents"),
        "the consent API is in the document"
    );
    assert!(paths.contains_key("/v1/tenants/{tenant_id}/consent-settings"));
    let nobody = admin_token(&h, "ke", "nobody", &["some-unmapped-role"]);
    let mut operations = 0;
    for (path, item) in paths {
        if path.ends_with("openapi.json") {
            continue;
        }
        // Path parameters get plausible but unknown values; the tenant is the caller's own.
        let concrete: String = path
            .split('/')
            .map(|seg| match seg {
                "{tenant_id}" | "{tenant}" => "ke".to_owned(),
                s if s.starts_with('{') => "does-not-exist".to_owned(),
                s => s.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("/");
        for (verb, op) in item.as_object().unwrap() {
            // Path items may also hold `parameters`, `summary`…: only operations are walked.
            if !["get", "put", "post", "delete", "patch"].contains(&verb.as_str()) {
                continue;
            }
            // No public operation: every one needs a bearer token (the audit download too: its
            // link is bound to the caller it was issued to).
            assert_ne!(op["security"], json!([{}]), "{path} is public");
            let method: Method = verb.to_uppercase().parse().unwrap();
            let body = (method != Method::GET).then(|| json!({}));
            let (status, err, _) =
                call(&h, method.clone(), &concrete, None, &[], body.clone()).await;
            assert_eq!(status, 401, "{verb} {path} without a token: {err}");
            assert_eq!(err["error"]["code"], "UNAUTHENTICATED", "{verb} {path}");
            let (status, err, _) =
                call(&h, method.clone(), &concrete, Some(&nobody), &[], body).await;
            assert!(
                status == 403
                    || status == 404
                    || (status == 400 && err["error"]["code"] == "INVALID_REQUEST"),
                "{verb} {path} with a role-less token answered {status}: {err}"
            );
            operations += 1;
        }
    }
    assert!(
        operations >= 95,
        "the document lists every admin, consent and audit operation ({operations})"
    );
    h.running.shutdown().await;
}

/// CON-27, ADM-2, ADM-4, ADM-7, ADM-8: only the umbrella authority sets a tenant's consent grace
/// period; ≤ 90 days; a reason code, OTHER with a text; a stale `If-Match` is 412 and changes
/// nothing; the change is in the replica's snapshot when the call returns, recorded as an
/// `admin_change` audit event, and the tenant document keeps its version history.
async fn tenant_consent_settings(store: Option<String>) {
    let h = Harness::start(store).await;
    let umbrella = admin_token(&h, "ke", "umbrella-1", &["scp-umbrella-authority"]);
    let tenant_admin = admin_token(&h, "ke", "admin-1", &["scp-tenant-admin"]);
    let path = "/v1/tenants/ke/consent-settings";

    let (status, t, etag) = call(
        &h,
        Method::GET,
        "/v1/tenants/ke",
        Some(&tenant_admin),
        &[],
        None,
    )
    .await;
    assert_eq!(status, 200, "{t}");
    let etag = etag.expect("ETag");
    assert_eq!(etag, format!("\"{}\"", t["version"]));

    let body = json!({"consent_grace_days": 60, "reason_code": "COMPLIANCE"});
    let (status, err, _) = call(
        &h,
        Method::PATCH,
        path,
        Some(&tenant_admin),
        &[],
        Some(body.clone()),
    )
    .await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (403, Some("FORBIDDEN")),
        "{err}"
    );

    let (status, err, _) = call(
        &h,
        Method::PATCH,
        path,
        Some(&umbrella),
        &[],
        Some(json!({"consent_grace_days": 91, "reason_code": "COMPLIANCE"})),
    )
    .await;
    assert_eq!(
        (status, err["error"]["field"].as_str()),
        (400, Some("consent_grace_days"))
    );
    let (status, err, _) = call(
        &h,
        Method::PATCH,
        path,
        Some(&umbrella),
        &[],
        Some(json!({"consent_grace_days": 60, "reason_code": "OTHER"})),
    )
    .await;
    assert_eq!(
        (status, err["error"]["field"].as_str()),
        (400, Some("reason_text"))
    );
    let (status, err, _) = call(
        &h,
        Method::PATCH,
        path,
        Some(&umbrella),
        &[("if-match", "\"999\"")],
        Some(body.clone()),
    )
    .await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (412, Some("PRECONDITION_FAILED"))
    );
    let grace = |h: &Harness| {
        h.running
            .engine
            .snapshot()
            .load_full()
            .as_ref()
            .as_ref()
            .and_then(|s| {
                s.tenants
                    .get("ke")
                    .and_then(|t| t.tenant.consent_grace_days)
            })
    };
    let before = grace(&h);
    assert_ne!(before, Some(60));

    let (status, t2, etag2) = call(
        &h,
        Method::PATCH,
        path,
        Some(&umbrella),
        &[("if-match", &etag)],
        Some(body),
    )
    .await;
    assert_eq!(status, 200, "{t2}");
    assert_eq!(t2["consent_grace_days"], 60);
    assert_eq!(t2["version"], t["version"].as_i64().unwrap() + 1);
    assert_eq!(etag2.unwrap(), format!("\"{}\"", t2["version"]));
    assert_eq!(
        grace(&h),
        Some(60),
        "in the snapshot when the call returns (ADM-4)"
    );

    // The same If-Match again is now stale.
    let (status, _, _) = call(
        &h,
        Method::PATCH,
        path,
        Some(&umbrella),
        &[("if-match", &etag)],
        Some(json!({"consent_grace_days": 10, "reason_code": "COMPLIANCE"})),
    )
    .await;
    assert_eq!(status, 412);
    assert_eq!(grace(&h), Some(60), "nothing changed");

    // Another tenant's settings are not visible to a non-root caller.
    let (status, _, _) = call(
        &h,
        Method::GET,
        "/v1/tenants/ug",
        Some(&tenant_admin),
        &[],
        None,
    )
    .await;
    assert_eq!(status, 404);

    // Audited (ADM-2) and versioned.
    let store = &h.running.store;
    let hist = store
        .document_versions(scp_pep::store::DocKind::Tenant, "ke")
        .await
        .unwrap();
    assert_eq!(hist.last().unwrap().actor, "umbrella-1");
    assert!(hist.len() >= 2);
    // Durable audit mode: the record committed before the change was written.
    let n = common::count_audit_events(store, "admin_change", "tenant.consent_settings").await;
    assert_eq!(n, 1, "one admin_change record for the one applied change");
    h.running.shutdown().await;
}

/// The served document is valid OpenAPI 3.1 (checked by `openapi-spec-validator`, which
/// `scripts/test` installs from PyPI), lists the audit export routes, and its error schema names
/// every REST error code.
#[test]
fn openapi_document_is_valid_openapi_3_1() {
    let doc = serde_json::to_value(scp_pep::admin::http::openapi_document()).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.contains_key("/v1/audit/exports"));
    assert!(paths.contains_key("/v1/audit/exports/download"));
    // Every route is an operation of the document (one per lifecycle step).
    let operations: usize = paths
        .values()
        .map(|item| {
            ["get", "put", "post", "delete", "patch"]
                .iter()
                .filter(|m| item.get(**m).is_some())
                .count()
        })
        .sum();
    eprintln!("operations: {operations}");
    assert!(operations >= 96, "{operations} operations");
    assert_eq!(
        doc["components"]["schemas"]["Error"]["properties"]["error"]["$ref"],
        "#/components/schemas/ErrorDetail"
    );
    let codes = doc["components"]["schemas"]["ErrorDetail"]["properties"]["code"]["enum"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(codes, scp_pep::api::ErrorCode::ALL.len());
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), serde_json::to_vec(&doc).unwrap()).unwrap();
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import json, sys\n\
             from openapi_spec_validator import OpenAPIV31SpecValidator\n\
             errs = list(OpenAPIV31SpecValidator(json.load(open(sys.argv[1]))).iter_errors())\n\
             [print(list(e.path), e.message[:300]) for e in errs]\n\
             sys.exit(1 if errs else 0)",
        ])
        .arg(file.path())
        .output()
        .expect("python3 runs (scripts/test installs openapi-spec-validator)");
    assert!(
        out.status.success(),
        "/openapi.json is not valid OpenAPI 3.1 (or openapi-spec-validator is missing: \
         `python3 -m pip install openapi-spec-validator`):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
