//! The HTTP surface as one axum `Router` (`server::App::http_router`), driven with
//! `tower::ServiceExt::oneshot`: no socket between the test and the handlers, but the real
//! store, snapshot, audit log and admin-token check (keys from the test OpenID provider).
//!
//! Requirement tags: ADM-1 (every operation authorizes its caller, permission first), ADM-4
//! (writes guarded by their version: `If-Match`), INT-9.3-1 (malformed input gets a clear error).

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::common::{self, Harness};

/// An `App` assembled (not listening) on its own SQLite store, with `h`'s policies and keys.
async fn app(h: &Harness) -> axum::Router {
    let store = format!("sqlite:{}", h.dir.path().join("app.db").display());
    let config = common::test_config(&store, &h.policy_dir, &h.dir.path().join("app.jsonl"));
    scp_pep::server::App::assemble(config, None, Arc::new(scp_pep::consent::SystemClock))
        .await
        .expect("assembles")
        .http_router()
}

/// Sends one request through `router`: `(status, JSON body or Null, ETag)`.
async fn send(
    router: &axum::Router,
    method: Method,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> (StatusCode, Value, Option<String>) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = match body {
        Some(b) => req
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(b.to_string())),
        None => req.body(Body::empty()),
    }
    .unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let etag = resp
        .headers()
        .get(header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        etag,
    )
}

/// An unknown route answers 404 `NOT_FOUND` in the REST error shape; `/openapi.json` is the
/// generated document.
#[tokio::test]
async fn unknown_route_is_a_json_404_and_the_document_is_served() {
    let h = Harness::start(None).await;
    let router = app(&h).await;
    let (status, body, _) = send(&router, Method::GET, "/v1/no-such-thing", None, &[], None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "NOT_FOUND");
    let (status, doc, _) = send(&router, Method::GET, "/openapi.json", None, &[], None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        doc,
        serde_json::to_value(scp_pep::admin::http::openapi_document()).unwrap()
    );
    h.running.shutdown().await;
}

/// ADM-1: a caller without the permission gets 403 whatever the body (no field names leak,
/// no ids are confirmed); with it, the same body gets the validation error naming the field.
/// Covers every create route (policy packs and changes read the body before the permission
/// check until 0.1).
#[tokio::test]
async fn permission_is_checked_before_the_body() {
    let h = Harness::start(None).await;
    let router = app(&h).await;
    let nobody = h.staff_token("ke", "clerk-1", &["scp-unmapped-role"], "scp-pep-admin");
    // Root holds every permission: the body is then read and refused.
    let admin = h.staff_token("ke", "root-1", &["scp-root"], "scp-pep-admin");
    let creates = [
        "/v1/roles",
        "/v1/groups",
        "/v1/deny-rules",
        "/v1/users/u-1/roles",
        "/v1/authz/evaluate",
        "/v1/policies/packs",
        "/v1/policies/changes",
    ];
    for path in creates {
        for body in [json!([]), json!({"no_such_field": 1})] {
            let (status, err, _) = send(
                &router,
                Method::POST,
                path,
                Some(&nobody),
                &[],
                Some(body.clone()),
            )
            .await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {err}");
            assert_eq!(err["error"]["code"], "FORBIDDEN");
            assert!(err["error"]["field"].is_null(), "{path}: {err}");
            let (status, err, _) =
                send(&router, Method::POST, path, Some(&admin), &[], Some(body)).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {err}");
            assert_eq!(err["error"]["code"], "INVALID_REQUEST");
        }
    }
    // A change for a pack that does not exist: 403 for the caller without the permission, not
    // the 404 that would confirm the id is unknown.
    let change = json!({
        "policy_pack_id": "does-not-exist", "change_summary": "x", "policy_rules": "",
        "active_from": "2026-01-01T00:00:00Z"
    });
    let (status, err, _) = send(
        &router,
        Method::POST,
        "/v1/policies/changes",
        Some(&nobody),
        &[],
        Some(change),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{err}");
    h.running.shutdown().await;
}

/// ADM-4: an edit with a stale `If-Match` is 412 `PRECONDITION_FAILED` and changes nothing; the
/// current one succeeds and moves the ETag.
#[tokio::test]
async fn stale_if_match_is_412_and_changes_nothing() {
    let h = Harness::start(None).await;
    let router = app(&h).await;
    let admin = h.staff_token("ke", "admin-1", &["scp-tenant-admin"], "scp-pep-admin");
    let (status, role, etag) = send(
        &router,
        Method::POST,
        "/v1/roles",
        Some(&admin),
        &[],
        Some(json!({
            "role_name": "clerks", "scope_type": "tenant", "permission_ids": ["roles.read"],
            "active_from": "2026-01-01T00:00:00Z"
        })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{role}");
    let etag = etag.expect("ETag");
    let path = format!("/v1/roles/{}", role["role_id"].as_str().unwrap());
    let (status, err, _) = send(
        &router,
        Method::PATCH,
        &path,
        Some(&admin),
        &[("if-match", "\"999\"")],
        Some(json!({"role_name": "renamed"})),
    )
    .await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED, "{err}");
    assert_eq!(err["error"]["code"], "PRECONDITION_FAILED");
    let (_, now, same) = send(&router, Method::GET, &path, Some(&admin), &[], None).await;
    assert_eq!(now["role_name"], "clerks");
    assert_eq!(same.as_deref(), Some(etag.as_str()));
    let (status, now, moved) = send(
        &router,
        Method::PATCH,
        &path,
        Some(&admin),
        &[("if-match", &etag)],
        Some(json!({"role_name": "renamed"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{now}");
    assert_eq!(now["role_name"], "renamed");
    assert_ne!(moved.as_deref(), Some(etag.as_str()));
    h.running.shutdown().await;
}
