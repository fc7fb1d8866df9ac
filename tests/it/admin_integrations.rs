//! Partner onboarding through the admin API, end to end over real HTTP, with persona tokens from
//! the test IdP, a local server speaking the Keycloak admin REST API, and real gRPC ext_authz
//! checks of the partner's traffic (INT-6.*, INT-4.5-2, ONB-*). Every scenario runs on SQLite and
//! on PostgreSQL.

use crate::common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use common::{Harness, fresh_pg_database};
use scp_pep::admin::keycloak::KeycloakConfig;
use scp_pep::check::CheckInput;
use scp_pep::store::{DocChange, DocKind, Source, Store};
use serde_json::{Value, json};

pub(crate) const KC_ADMIN_ID: &str = "scp-pep-admin-client";
pub(crate) const KC_ADMIN_SECRET: &str = "kc-admin-secret-0123";
const KC_TOKEN: &str = "kc-admin-access-token";

// ------------------------------------------------------------------------------------------
// A local server with the Keycloak admin REST endpoints scp-pep uses (JSON wire format).
// `keycloak_sync` reuses it (`down`, `admin_secret`, `PUT …/clients/{id}`).

#[derive(Default)]
pub(crate) struct Kc {
    /// (realm, representation with `id`)
    pub(crate) clients: Vec<(String, Value)>,
    /// internal id → secret
    pub(crate) secrets: HashMap<String, String>,
    pub(crate) tokens: usize,
    /// Requests with a missing or wrong admin token.
    pub(crate) unauthorized: usize,
    /// The admin client's secret the token endpoint accepts (`None`: [`KC_ADMIN_SECRET`]).
    pub(crate) admin_secret: Option<String>,
    /// Token requests refused for a wrong admin secret.
    pub(crate) bad_secret: usize,
    /// While set, every endpoint answers 503 (Keycloak down).
    pub(crate) down: bool,
    /// Client updates (`PUT …/clients/{id}`) applied.
    pub(crate) updates: usize,
}

pub(crate) type KcState = Arc<Mutex<Kc>>;

/// The `enabled` flag of client `client_id` in the fake, if it exists.
pub(crate) fn kc_enabled(kc: &KcState, client_id: &str) -> Option<bool> {
    kc.lock()
        .unwrap()
        .clients
        .iter()
        .find(|(_, c)| c["clientId"] == json!(client_id))
        .and_then(|(_, c)| c["enabled"].as_bool())
}

fn authorized(kc: &KcState, h: &HeaderMap) -> bool {
    let ok = h
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {KC_TOKEN}"));
    if !ok {
        kc.lock().unwrap().unauthorized += 1;
    }
    ok
}

async fn kc_token(State(kc): State<KcState>, body: String) -> impl IntoResponse {
    let expected = kc
        .lock()
        .unwrap()
        .admin_secret
        .clone()
        .unwrap_or_else(|| KC_ADMIN_SECRET.to_owned());
    let form: HashMap<String, String> = body
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| {
            (
                k.to_owned(),
                percent_encoding::percent_decode_str(v)
                    .decode_utf8_lossy()
                    .into_owned(),
            )
        })
        .collect();
    if form.get("grant_type").map(String::as_str) != Some("client_credentials")
        || form.get("client_id").map(String::as_str) != Some(KC_ADMIN_ID)
        || form.get("client_secret") != Some(&expected)
    {
        kc.lock().unwrap().bad_secret += 1;
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": "invalid_client"})),
        );
    }
    kc.lock().unwrap().tokens += 1;
    (
        StatusCode::OK,
        axum::Json(json!({"access_token": KC_TOKEN, "token_type": "Bearer", "expires_in": 60})),
    )
}

async fn kc_find(
    State(kc): State<KcState>,
    Path(realm): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    h: HeaderMap,
) -> impl IntoResponse {
    if !authorized(&kc, &h) {
        return (StatusCode::UNAUTHORIZED, axum::Json(json!({})));
    }
    let kc = kc.lock().unwrap();
    let found: Vec<Value> = kc
        .clients
        .iter()
        .filter(|(r, c)| {
            *r == realm
                && q.get("clientId")
                    .is_none_or(|id| c["clientId"] == json!(id))
        })
        .map(|(_, c)| c.clone())
        .collect();
    (StatusCode::OK, axum::Json(json!(found)))
}

async fn kc_create(
    State(kc): State<KcState>,
    Path(realm): Path<String>,
    h: HeaderMap,
    axum::Json(mut rep): axum::Json<Value>,
) -> impl IntoResponse {
    if !authorized(&kc, &h) {
        return (StatusCode::UNAUTHORIZED, HeaderMap::new());
    }
    let mut kc = kc.lock().unwrap();
    if kc
        .clients
        .iter()
        .any(|(r, c)| *r == realm && c["clientId"] == rep["clientId"])
    {
        return (StatusCode::CONFLICT, HeaderMap::new());
    }
    let id = uuid::Uuid::now_v7().to_string();
    rep["id"] = json!(id);
    kc.secrets.insert(
        id.clone(),
        format!("kc-secret-{}", uuid::Uuid::now_v7().simple()),
    );
    kc.clients.push((realm.clone(), rep));
    let mut headers = HeaderMap::new();
    headers.insert(
        "location",
        format!("/admin/realms/{realm}/clients/{id}")
            .parse()
            .unwrap(),
    );
    (StatusCode::CREATED, headers)
}

async fn kc_get_secret(
    State(kc): State<KcState>,
    Path((_realm, id)): Path<(String, String)>,
    h: HeaderMap,
) -> impl IntoResponse {
    if !authorized(&kc, &h) {
        return (StatusCode::UNAUTHORIZED, axum::Json(json!({})));
    }
    match kc.lock().unwrap().secrets.get(&id) {
        Some(s) => (
            StatusCode::OK,
            axum::Json(json!({"type": "secret", "value": s})),
        ),
        None => (StatusCode::NOT_FOUND, axum::Json(json!({}))),
    }
}

async fn kc_regenerate(
    State(kc): State<KcState>,
    Path((_realm, id)): Path<(String, String)>,
    h: HeaderMap,
) -> impl IntoResponse {
    if !authorized(&kc, &h) {
        return (StatusCode::UNAUTHORIZED, axum::Json(json!({})));
    }
    let mut kc = kc.lock().unwrap();
    if !kc.secrets.contains_key(&id) {
        return (StatusCode::NOT_FOUND, axum::Json(json!({})));
    }
    let s = format!("kc-secret-{}", uuid::Uuid::now_v7().simple());
    kc.secrets.insert(id, s.clone());
    (
        StatusCode::OK,
        axum::Json(json!({"type": "secret", "value": s})),
    )
}

async fn kc_update(
    State(kc): State<KcState>,
    Path((realm, id)): Path<(String, String)>,
    h: HeaderMap,
    axum::Json(rep): axum::Json<Value>,
) -> StatusCode {
    if !authorized(&kc, &h) {
        return StatusCode::UNAUTHORIZED;
    }
    let mut kc = kc.lock().unwrap();
    let Some((_, c)) = kc
        .clients
        .iter_mut()
        .find(|(r, c)| *r == realm && c["id"] == json!(id))
    else {
        return StatusCode::NOT_FOUND;
    };
    // Keycloak's update: the id and clientId stay; given fields replace the stored ones.
    if rep["id"] != c["id"] || rep["clientId"] != c["clientId"] {
        return StatusCode::BAD_REQUEST;
    }
    if let (Value::Object(stored), Value::Object(given)) = (c, rep) {
        stored.extend(given);
    }
    kc.updates += 1;
    StatusCode::NO_CONTENT
}

/// Keycloak down: 503 for every request while `down` is set.
async fn kc_down(
    State(kc): State<KcState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if kc.lock().unwrap().down {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    next.run(req).await
}

async fn kc_delete(
    State(kc): State<KcState>,
    Path((_realm, id)): Path<(String, String)>,
    h: HeaderMap,
) -> StatusCode {
    if !authorized(&kc, &h) {
        return StatusCode::UNAUTHORIZED;
    }
    let mut kc = kc.lock().unwrap();
    kc.clients.retain(|(_, c)| c["id"] != json!(id));
    kc.secrets.remove(&id);
    StatusCode::NO_CONTENT
}

pub(crate) async fn start_kc() -> (String, KcState) {
    let kc: KcState = Arc::default();
    let app = Router::new()
        .route(
            "/realms/{realm}/protocol/openid-connect/token",
            post(kc_token),
        )
        .route(
            "/admin/realms/{realm}/clients",
            get(kc_find).post(kc_create),
        )
        .route(
            "/admin/realms/{realm}/clients/{id}",
            axum::routing::delete(kc_delete).put(kc_update),
        )
        .route(
            "/admin/realms/{realm}/clients/{id}/client-secret",
            get(kc_get_secret).post(kc_regenerate),
        )
        .layer(axum::middleware::from_fn_with_state(kc.clone(), kc_down))
        .with_state(kc.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), kc)
}

// ------------------------------------------------------------------------------------------
// Helpers

pub(crate) struct Env {
    pub(crate) h: Harness,
    pub(crate) kc: KcState,
    http: reqwest::Client,
}

async fn env(store_url: Option<String>, keycloak: bool) -> Env {
    env_with(store_url, keycloak, |_| {}).await
}

/// [`env`] with `tweak` applied to the Keycloak settings (secret file, sync interval).
pub(crate) async fn env_with(
    store_url: Option<String>,
    keycloak: bool,
    tweak: impl FnOnce(&mut KeycloakConfig),
) -> Env {
    let (kc_base, kc) = start_kc().await;
    let h = Harness::start_with(store_url, move |c| {
        if keycloak {
            let mut k = KeycloakConfig {
                base_url: kc_base,
                admin_realm: "master".into(),
                client_id: KC_ADMIN_ID.into(),
                client_secret: KC_ADMIN_SECRET.into(),
                client_secret_file: None,
                timeout_s: 5,
                sync_interval_s: 10,
            };
            tweak(&mut k);
            c.admin.keycloak = Some(k);
        }
    })
    .await;
    // A handshake route (ONB-6), written through the store's one write path; the change feed
    // installs it.
    let route = json!({
        "id": "health-handshake", "methods": ["GET"], "path": "/v1/tenants/{tenant}/health/handshake",
        "verticals": ["health"], "action": "read", "resource": "handshake",
        "scope": "health:handshake", "kind": "handshake"
    });
    h.running
        .store
        .write_documents(
            &[DocChange::put(
                DocKind::Route,
                "health-handshake",
                None,
                route.to_string(),
            )],
            Source::Api,
            "test",
            None,
        )
        .await
        .expect("handshake route");
    let want = h.running.store.version().await.unwrap();
    wait_for(|| {
        h.running
            .engine
            .snapshot()
            .load()
            .as_ref()
            .as_ref()
            .is_some_and(|s| s.version >= want)
    })
    .await;
    Env {
        h,
        kc,
        http: reqwest::Client::new(),
    }
}

pub(crate) async fn wait_for(mut f: impl FnMut() -> bool) {
    for _ in 0..100 {
        if f() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("condition not reached within 5 s");
}

/// An admin token of `tenant` for `sub` with `roles` (aud `scp-pep-admin`).
pub(crate) fn admin(h: &Harness, tenant: &str, sub: &str, roles: &[&str]) -> String {
    h.staff_token(tenant, sub, roles, "scp-pep-admin")
}

pub(crate) struct Personas {
    pub(crate) manager: String,
    pub(crate) owner: String,
    pub(crate) tenant_admin: String,
    pub(crate) umbrella: String,
    pub(crate) security: String,
    pub(crate) auditor: String,
    pub(crate) nobody: String,
    pub(crate) other_tenant: String,
}

pub(crate) fn personas(h: &Harness) -> Personas {
    Personas {
        manager: admin(h, "ke", "alice", &["scp-integration-manager"]),
        owner: admin(h, "ke", "victor", &["scp-vertical-owner"]),
        tenant_admin: admin(h, "ke", "tara", &["scp-tenant-admin"]),
        umbrella: admin(h, "ke", "uma", &["scp-umbrella-authority"]),
        security: admin(h, "ke", "sam", &["scp-security"]),
        auditor: admin(h, "ke", "audrey", &["scp-auditor"]),
        nobody: admin(h, "ke", "nemo", &["some-unmapped-role"]),
        other_tenant: admin(
            h,
            "ug",
            "ursula",
            &["scp-tenant-admin", "scp-integration-manager"],
        ),
    }
}

/// An HTTP answer: status, `ETag` version, `Cache-Control`, JSON body and raw text.
pub(crate) struct Answer {
    pub(crate) status: u16,
    etag: Option<String>,
    pub(crate) cache: Option<String>,
    pub(crate) body: Value,
    pub(crate) text: String,
}

impl Env {
    pub(crate) async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        if_match: Option<i64>,
        body: Option<Value>,
    ) -> Answer {
        let mut req = self
            .http
            .request(method.parse().unwrap(), self.h.ops_url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(v) = if_match {
            req = req.header("if-match", format!("\"{v}\""));
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let header = |n: &str| {
            resp.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let etag = header("etag");
        let cache = header("cache-control");
        let text = resp.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Answer {
            status,
            etag,
            cache,
            body,
            text,
        }
    }

    pub(crate) async fn version(&self, id: &str, token: &str) -> i64 {
        let a = self
            .call(
                "GET",
                &format!("/v1/integrations/{id}"),
                Some(token),
                None,
                None,
            )
            .await;
        assert_eq!(a.status, 200, "{}", a.text);
        a.body["version"].as_i64().unwrap()
    }

    /// `POST /v1/integrations/{id}/{action}` with the current version as `If-Match`.
    pub(crate) async fn act(&self, id: &str, action: &str, token: &str, body: Value) -> Answer {
        let v = self.version(id, &self.p().tenant_admin).await;
        self.call(
            "POST",
            &format!("/v1/integrations/{id}/{action}"),
            Some(token),
            Some(v),
            Some(body),
        )
        .await
    }

    pub(crate) fn p(&self) -> Personas {
        personas(&self.h)
    }

    pub(crate) async fn partner(
        &mut self,
        path: &str,
        token: &str,
        api_key: Option<&str>,
    ) -> Value {
        let mut input: CheckInput = Harness::get(path, token);
        if let Some(k) = api_key {
            input.headers.push(("x-api-key".into(), k.into()));
        }
        self.h.check(&input).await
    }

    pub(crate) async fn audit_kinds(&self, subject: &str) -> Vec<String> {
        let q = "SELECT body FROM audit_records WHERE tenant_id = 'ke' ORDER BY time_ms, seq";
        let bodies: Vec<String> = match &self.h.running.store {
            Store::Sqlite(p) => sqlx::query_scalar(q).fetch_all(p).await.unwrap(),
            Store::Postgres(p) => sqlx::query_scalar(q).fetch_all(p).await.unwrap(),
        };
        bodies
            .iter()
            .filter_map(|b| serde_json::from_str::<Value>(b).ok())
            .filter(|b| b["subject"] == json!(subject))
            .filter_map(|b| b["kind"].as_str().map(str::to_owned))
            .collect()
    }
}

pub(crate) fn draft(id: &str) -> Value {
    json!({
        "id": id,
        "partner_name": "Acme Health Connector",
        "legal_basis": "Data sharing agreement DSA-2026-17, art. 6(1)(e)",
        "technical_contacts": [{"name": "Ops Desk", "email": "ops@acme.example", "role": "technical"}],
        "verticals": ["health"],
        "scopes": ["health:person:read", "health:handshake"],
        "field_policy": {"masked_fields": ["national_id"]},
        "rate_limit": {"per_second": 100, "burst": 100},
        "quota": {"per_day": 10000},
        "ip_allowlist": ["192.0.2.0/24"],
    })
}

pub(crate) fn partner_token(h: &Harness, integration: &str, client_id: &str) -> String {
    let claims = scp_pep::signer::ClaimsSpec {
        issuer: &h.idp.issuer("ke"),
        audience: "scp-pep",
        client_id,
        tenant_id: "ke",
        integration_id: integration,
        verticals: &["health"],
        scope: "health:person:read health:handshake",
        ttl_s: 300,
    }
    .claims();
    h.sign("ke-rs256", &claims)
}

pub(crate) const DATA: &str = "/v1/tenants/ke/health/persons/p-1/record";
pub(crate) const HANDSHAKE: &str = "/v1/tenants/ke/health/handshake";

// ------------------------------------------------------------------------------------------
// The whole onboarding

// INT-6.1-1, INT-6.2-1, INT-6.2-3, INT-6.2-5, ONB-1, ONB-2, ONB-3, ONB-4, ONB-6, ONB-7, ONB-AUD-1, ONB-AUD-3, ONB-AUD-4, ADM-8
async fn onboarding_walkthrough(store_url: Option<String>) {
    let mut e = env(store_url, true).await;
    let p = e.p();
    let id = "int-ke-acme";

    // 401 without a token.
    let a = e
        .call("POST", "/v1/integrations", None, None, Some(draft(id)))
        .await;
    assert_eq!(a.status, 401, "{}", a.text);
    assert_eq!(a.body["error"]["code"], "UNAUTHENTICATED");

    // Bad input: 400 with the field at fault, nothing written.
    let mut bad = draft(id);
    bad["scopes"] = json!(["health:*"]);
    let a = e
        .call(
            "POST",
            "/v1/integrations",
            Some(&p.manager),
            None,
            Some(bad),
        )
        .await;
    assert_eq!(
        (a.status, a.body["error"]["field"].as_str()),
        (400, Some("scopes[0]")),
        "{}",
        a.text
    );
    let mut bad = draft(id);
    bad["technical_contacts"] = json!([]);
    let a = e
        .call(
            "POST",
            "/v1/integrations",
            Some(&p.manager),
            None,
            Some(bad),
        )
        .await;
    assert_eq!(
        (a.status, a.body["error"]["field"].as_str()),
        (400, Some("technical_contacts")),
        "{}",
        a.text
    );
    let mut bad = draft(id);
    bad["technical_contacts"][0]["email"] = json!("not-an-address");
    let a = e
        .call(
            "POST",
            "/v1/integrations",
            Some(&p.manager),
            None,
            Some(bad),
        )
        .await;
    assert_eq!(
        a.body["error"]["field"], "technical_contacts[0].email",
        "{}",
        a.text
    );
    let mut bad = draft(id);
    bad["surprise"] = json!(1);
    let a = e
        .call(
            "POST",
            "/v1/integrations",
            Some(&p.manager),
            None,
            Some(bad),
        )
        .await;
    assert_eq!(
        (a.status, a.body["error"]["field"].as_str()),
        (400, Some("surprise")),
        "{}",
        a.text
    );
    let a = e
        .call(
            "GET",
            &format!("/v1/integrations/{id}"),
            Some(&p.manager),
            None,
            None,
        )
        .await;
    assert_eq!(a.status, 404);

    // Create (ONB-1, ONB-2): a draft.
    let a = e
        .call(
            "POST",
            "/v1/integrations",
            Some(&p.manager),
            None,
            Some(draft(id)),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.text);
    assert_eq!(a.body["state"], "draft");
    assert_eq!(a.etag.as_deref(), Some("\"1\""));
    assert_eq!(a.body["technical_contacts"][0]["email"], "ops@acme.example");
    assert_eq!(a.body["onboarding"]["created_by"], "alice");
    let a = e
        .call(
            "POST",
            "/v1/integrations",
            Some(&p.manager),
            None,
            Some(draft(id)),
        )
        .await;
    assert_eq!(
        (a.status, a.body["error"]["code"].as_str()),
        (409, Some("ALREADY_EXISTS"))
    );

    // A draft carries no traffic (the token is not even bound yet).
    let tok = partner_token(&e.h, id, "scp-int-ke-acme");
    let r = e.partner(DATA, &tok, None).await;
    assert_eq!(r["code"], "INTEGRATION_NOT_ACTIVE", "{r}");

    // PATCH while draft, If-Match (ADM-8): stale → 412 and nothing changed.
    let a = e
        .call(
            "PATCH",
            &format!("/v1/integrations/{id}"),
            Some(&p.manager),
            Some(7),
            Some(json!({"partner_name": "Renamed"})),
        )
        .await;
    assert_eq!(
        (a.status, a.body["error"]["code"].as_str()),
        (412, Some("PRECONDITION_FAILED"))
    );
    let a = e
        .call(
            "GET",
            &format!("/v1/integrations/{id}"),
            Some(&p.auditor),
            None,
            None,
        )
        .await;
    assert_eq!(
        (a.body["version"].as_i64(), a.body["partner_name"].as_str()),
        (Some(1), Some("Acme Health Connector"))
    );
    let a = e
        .call(
            "PATCH",
            &format!("/v1/integrations/{id}"),
            Some(&p.manager),
            Some(1),
            Some(json!({"partner_name": "Acme Health"})),
        )
        .await;
    assert_eq!(
        (a.status, a.body["version"].as_i64()),
        (200, Some(2)),
        "{}",
        a.text
    );

    // Lifecycle. Submit.
    let a = e.act(id, "submit", &p.manager, json!({})).await;
    assert_eq!(
        (a.status, a.body["state"].as_str()),
        (200, Some("requested")),
        "{}",
        a.text
    );
    let a = e
        .call(
            "PATCH",
            &format!("/v1/integrations/{id}"),
            Some(&p.manager),
            None,
            Some(json!({"partner_name": "Too late"})),
        )
        .await;
    assert_eq!(
        (a.status, a.body["error"]["code"].as_str()),
        (409, Some("INVALID_TRANSITION"))
    );
    // Wrong order → 409 INVALID_TRANSITION.
    let a = e
        .act(
            id,
            "approve",
            &p.tenant_admin,
            json!({"legal_document_id": "DSA-2026-17"}),
        )
        .await;
    assert_eq!(
        (a.status, a.body["error"]["code"].as_str()),
        (409, Some("INVALID_TRANSITION")),
        "{}",
        a.text
    );
    // Review: the vertical owner only.
    let a = e.act(id, "review", &p.manager, json!({})).await;
    assert_eq!(a.status, 403, "{}", a.text);
    let a = e
        .act(
            id,
            "review",
            &p.owner,
            json!({"notes": "scopes fit the health vertical"}),
        )
        .await;
    assert_eq!(
        (a.status, a.body["state"].as_str()),
        (200, Some("reviewed")),
        "{}",
        a.text
    );
    // Approval needs the legal review first.
    let a = e
        .act(
            id,
            "approve",
            &p.tenant_admin,
            json!({"legal_document_id": "DSA-2026-17"}),
        )
        .await;
    assert_eq!(
        (a.status, a.body["error"]["code"].as_str()),
        (409, Some("LEGAL_REVIEW_REQUIRED")),
        "{}",
        a.text
    );
    let a = e.act(id, "legal-review", &p.owner, json!({})).await;
    assert_eq!(a.status, 403);
    let a = e
        .act(
            id,
            "legal-review",
            &p.tenant_admin,
            json!({"notes": "consent basis checked"}),
        )
        .await;
    assert_eq!(
        (a.status, a.body["onboarding"]["legal_reviewed_by"].as_str()),
        (200, Some("tara")),
        "{}",
        a.text
    );
    // Approve: the document id is required (ONB-AUD-3); the creator may not approve.
    let a = e.act(id, "approve", &p.tenant_admin, json!({})).await;
    assert_eq!(
        (a.status, a.body["error"]["field"].as_str()),
        (400, Some("legal_document_id")),
        "{}",
        a.text
    );
    let a = e
        .act(
            id,
            "approve",
            &p.manager,
            json!({"legal_document_id": "DSA-2026-17"}),
        )
        .await;
    assert_eq!(a.status, 403);
    let alice_admin = admin(&e.h, "ke", "alice", &["scp-tenant-admin"]);
    let a = e
        .act(
            id,
            "approve",
            &alice_admin,
            json!({"legal_document_id": "DSA-2026-17"}),
        )
        .await;
    assert_eq!(
        (a.status, a.body["error"]["code"].as_str()),
        (403, Some("SEPARATION_OF_DUTIES")),
        "{}",
        a.text
    );
    let a = e
        .act(
            id,
            "approve",
            &p.tenant_admin,
            json!({"legal_document_id": "DSA-2026-17"}),
        )
        .await;
    assert_eq!(
        (a.status, a.body["state"].as_str()),
        (200, Some("approved")),
        "{}",
        a.text
    );
    assert_eq!(a.body["onboarding"]["legal_document_id"], "DSA-2026-17");
    assert_eq!(a.body["onboarding"]["approved_by"], "tara");

    // Approved but not provisioned: still no traffic, not even a handshake.
    let r = e.partner(HANDSHAKE, &tok, None).await;
    assert_eq!(r["code"], "INTEGRATION_NOT_ACTIVE", "{r}");
    let a = e.act(id, "activate", &p.tenant_admin, json!({})).await;
    assert_eq!(
        (a.status, a.body["error"]["code"].as_str()),
        (409, Some("NOT_PROVISIONED")),
        "{}",
        a.text
    );

    // Provision (ONB-4): the fake Keycloak receives a correct client; the secret is shown once.
    let a = e.act(id, "provision", &p.auditor, json!({})).await;
    assert_eq!(a.status, 403);
    let a = e.act(id, "provision", &p.manager, json!({})).await;
    assert_eq!(a.status, 201, "{}", a.text);
    assert_eq!(a.cache.as_deref(), Some("no-store"));
    let client_id = a.body["credentials"]["client_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let secret = a.body["credentials"]["client_secret"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(client_id, "scp-int-ke-acme");
    assert_eq!(a.body["client_id"], client_id.as_str());
    {
        let kc = e.kc.lock().unwrap();
        assert_eq!(kc.clients.len(), 1);
        assert_eq!(kc.unauthorized, 0);
        assert!(kc.tokens >= 1);
        let (realm, c) = &kc.clients[0];
        assert_eq!(realm, "ke", "the realm comes from the tenant's issuer");
        assert_eq!(c["clientId"], client_id.as_str());
        assert_eq!(c["publicClient"], false);
        assert_eq!(c["serviceAccountsEnabled"], true);
        assert_eq!(c["standardFlowEnabled"], false);
        assert_eq!(c["clientAuthenticatorType"], "client-secret");
        let mappers = c["protocolMappers"].as_array().unwrap();
        let hardcoded = |claim: &str| {
            mappers
                .iter()
                .find(|m| {
                    m["protocolMapper"] == "oidc-hardcoded-claim-mapper"
                        && m["config"]["claim.name"] == claim
                })
                .unwrap_or_else(|| panic!("no mapper for {claim}: {c}"))
                .clone()
        };
        assert_eq!(hardcoded("tenant_id")["config"]["claim.value"], "ke");
        assert_eq!(hardcoded("integration_id")["config"]["claim.value"], id);
        let v = hardcoded("verticals");
        assert_eq!(v["config"]["jsonType.label"], "JSON");
        assert_eq!(v["config"]["claim.value"], "[\"health\"]");
        let aud = mappers
            .iter()
            .find(|m| m["protocolMapper"] == "oidc-audience-mapper")
            .expect("audience mapper");
        assert_eq!(aud["config"]["included.custom.audience"], "scp-pep");
        assert_eq!(kc.secrets.values().next().unwrap(), &secret);
    }
    let a = e.act(id, "provision", &p.manager, json!({})).await;
    assert_eq!(
        (a.status, a.body["error"]["code"].as_str()),
        (409, Some("ALREADY_PROVISIONED")),
        "{}",
        a.text
    );
    // Never shown again, never stored in clear.
    for path in [
        format!("/v1/integrations/{id}"),
        format!("/v1/integrations/{id}/credentials"),
        format!("/v1/integrations/{id}/history"),
    ] {
        let a = e
            .call("GET", &path, Some(&p.tenant_admin), None, None)
            .await;
        assert_eq!(a.status, 200, "{path}");
        assert!(!a.text.contains(&secret), "{path} shows the secret");
    }
    let all_docs =
        e.h.running
            .store
            .documents(DocKind::Credential, None)
            .await
            .unwrap();
    assert!(all_docs.iter().all(|d| !d.doc.contains(&secret)));
    let a = e
        .call(
            "GET",
            &format!("/v1/integrations/{id}/credentials"),
            Some(&p.auditor),
            None,
            None,
        )
        .await;
    let creds = a.body["credentials"].as_array().unwrap();
    assert_eq!(creds.len(), 1, "{}", a.text);
    assert_eq!(
        (
            creds[0]["type"].as_str(),
            creds[0]["age_days"].as_i64(),
            creds[0]["rotation_due"].as_bool()
        ),
        (Some("client_secret"), Some(0), Some(false))
    );
    assert!(
        e.audit_kinds(id)
            .await
            .contains(&"credential_issued".to_owned())
    );

    // The partner's token (azp = the client): a data route is still refused, the handshake
    // route is allowed (ONB-6)…
    let tok = partner_token(&e.h, id, &client_id);
    let r = e.partner(DATA, &tok, None).await;
    assert_eq!(r["code"], "INTEGRATION_NOT_ACTIVE", "{r}");
    let wrong_client = partner_token(&e.h, id, "someone-else");
    let r = e.partner(HANDSHAKE, &wrong_client, None).await;
    assert_eq!(r["allowed"], false, "{r}");
    let r = e.partner(HANDSHAKE, &tok, None).await;
    assert_eq!(r["allowed"], true, "{r}");
    // …which makes it ACTIVE/HEALTHY (ONB-7).
    let mut health = Value::Null;
    for _ in 0..100 {
        health = e
            .call(
                "GET",
                &format!("/v1/integrations/{id}/health"),
                Some(&p.auditor),
                None,
                None,
            )
            .await
            .body;
        if health["state"] == "active" && health["health"] == "healthy" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        (health["state"].as_str(), health["health"].as_str()),
        (Some("active"), Some("healthy")),
        "{health}"
    );
    assert!(health["last_handshake"].is_string(), "{health}");
    let a = e
        .call(
            "GET",
            &format!("/v1/integrations/{id}"),
            Some(&p.auditor),
            None,
            None,
        )
        .await;
    assert_eq!(a.body["onboarding"]["activated_by"], "handshake");
    let hist =
        e.h.running
            .store
            .document_versions(DocKind::Integration, id)
            .await
            .unwrap();
    assert_eq!(hist.last().unwrap().actor, "handshake");
    // The activated snapshot reaches this replica.
    let mut r = Value::Null;
    for _ in 0..100 {
        r = e.partner(DATA, &tok, None).await;
        if r["allowed"] == true {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(r["allowed"], true, "{r}");
    // Last successful sync (ONB-AUD-4), written off the request path.
    let before = health["last_successful_sync"].as_str().map(str::to_owned);
    let mut sync = Value::Null;
    for _ in 0..100 {
        sync = e
            .call(
                "GET",
                &format!("/v1/integrations/{id}/health"),
                Some(&p.auditor),
                None,
                None,
            )
            .await
            .body;
        if sync["last_successful_sync"].is_string()
            && sync["last_successful_sync"].as_str().map(str::to_owned) != before
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(sync["last_successful_sync"].is_string(), "{sync}");

    // Suspend (INT-6.2-3): a reason is required; denied immediately; configuration retained.
    let a = e.act(id, "suspend", &p.security, json!({})).await;
    assert_eq!(
        (a.status, a.body["error"]["field"].as_str()),
        (400, Some("reason_code")),
        "{}",
        a.text
    );
    let a = e
        .act(id, "suspend", &p.security, json!({"reason_code": "OTHER"}))
        .await;
    assert_eq!(
        (a.status, a.body["error"]["field"].as_str()),
        (400, Some("reason_text")),
        "{}",
        a.text
    );
    let a = e
        .act(
            id,
            "suspend",
            &p.manager,
            json!({"reason_code": "SECURITY_INCIDENT"}),
        )
        .await;
    assert_eq!(a.status, 403);
    let a = e
        .act(
            id,
            "suspend",
            &p.security,
            json!({"reason_code": "SECURITY_INCIDENT"}),
        )
        .await;
    assert_eq!(
        (a.status, a.body["state"].as_str()),
        (200, Some("suspended")),
        "{}",
        a.text
    );
    let r = e.partner(DATA, &tok, None).await;
    assert_eq!(r["code"], "INTEGRATION_SUSPENDED", "{r}");
    let r = e.partner(HANDSHAKE, &tok, None).await;
    assert_eq!(r["code"], "INTEGRATION_SUSPENDED", "{r}");
    assert_eq!(a.body["client_id"], client_id.as_str());
    assert_eq!(
        a.body["scopes"],
        json!(["health:person:read", "health:handshake"])
    );

    // Archive (INT-6.2-5): immutable afterwards.
    let a = e
        .act(
            id,
            "archive",
            &p.tenant_admin,
            json!({"reason_code": "CONTRACT_ENDED"}),
        )
        .await;
    assert_eq!(
        (a.status, a.body["state"].as_str()),
        (200, Some("archived")),
        "{}",
        a.text
    );
    let v = a.body["version"].as_i64().unwrap();
    let a = e
        .call(
            "PATCH",
            &format!("/v1/integrations/{id}"),
            Some(&p.manager),
            Some(v),
            Some(json!({"partner_name": "x"})),
        )
        .await;
    assert_eq!(
        (a.status, a.body["error"]["code"].as_str()),
        (409, Some("ARCHIVED")),
        "{}",
        a.text
    );
    for action in ["activate", "suspend", "archive"] {
        let a = e
            .act(
                id,
                action,
                &p.tenant_admin,
                json!({"reason_code": "COMPLIANCE"}),
            )
            .await;
        assert_eq!(
            (a.status, a.body["error"]["code"].as_str()),
            (409, Some("ARCHIVED")),
            "{action}: {}",
            a.text
        );
    }
    let a = e.act(id, "api-key", &p.manager, json!({})).await;
    assert_eq!(
        (a.status, a.body["error"]["code"].as_str()),
        (409, Some("ARCHIVED")),
        "{}",
        a.text
    );
    // The store refuses too, whatever the caller.
    let doc =
        e.h.running
            .store
            .document(DocKind::Integration, id)
            .await
            .unwrap()
            .unwrap();
    let err =
        e.h.running
            .store
            .write_documents(
                &[DocChange::put(
                    DocKind::Integration,
                    id,
                    Some("ke"),
                    doc.doc.clone(),
                )],
                Source::Api,
                "x",
                None,
            )
            .await;
    assert!(matches!(
        err,
        Err(scp_pep::store::WriteError::Archived { .. })
    ));

    // History: every step, with its actor.
    let a = e
        .call(
            "GET",
            &format!("/v1/integrations/{id}/history"),
            Some(&p.auditor),
            None,
            None,
        )
        .await;
    let states: Vec<&str> = a.body["versions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["state"].as_str())
        .collect();
    assert_eq!(
        states,
        [
            "draft",
            "draft",
            "requested",
            "reviewed",
            "reviewed",
            "approved",
            "approved",
            "active",
            "suspended",
            "archived"
        ],
        "{}",
        a.text
    );
    let kinds = e.audit_kinds(id).await;
    assert!(
        kinds.iter().filter(|k| *k == "admin_change").count() >= 8,
        "{kinds:?}"
    );
}

#[tokio::test]
async fn onboarding_walkthrough_sqlite() {
    onboarding_walkthrough(None).await;
}

#[tokio::test]
async fn onboarding_walkthrough_postgres() {
    onboarding_walkthrough(Some(fresh_pg_database().await)).await;
}

/// Walks a fresh integration to `approved` (with a legal review), as the right personas.
pub(crate) async fn to_approved(e: &Env, body: Value, approver: &str) -> Answer {
    let p = e.p();
    let id = body["id"].as_str().unwrap().to_owned();
    let a = e
        .call(
            "POST",
            "/v1/integrations",
            Some(&p.manager),
            None,
            Some(body),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.text);
    for (action, who) in [
        ("submit", &p.manager),
        ("review", &p.owner),
        ("legal-review", &p.tenant_admin),
    ] {
        let a = e.act(&id, action, who, json!({})).await;
        assert_eq!(a.status, 200, "{action}: {}", a.text);
    }
    e.act(
        &id,
        "approve",
        approver,
        json!({"legal_document_id": "DSA-1"}),
    )
    .await
}

// INT-4.5-2, ONB-3
async fn cross_tenant_needs_umbrella(store_url: Option<String>) {
    let e = env(store_url, true).await;
    let p = e.p();
    let mut body = draft("int-ke-cross");
    body["partner_tenants"] = json!(["ug"]);
    let a = to_approved(&e, body, &p.tenant_admin).await;
    assert_eq!(a.status, 403, "{}", a.text);
    assert!(
        a.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("approve_cross_tenant")
    );
    let a = e
        .act(
            "int-ke-cross",
            "approve",
            &p.umbrella,
            json!({"legal_document_id": "MOU-KE-UG-3"}),
        )
        .await;
    assert_eq!(
        (a.status, a.body["state"].as_str()),
        (200, Some("approved")),
        "{}",
        a.text
    );
    assert_eq!(a.body["cross_tenant"], true);
    // Unknown or own tenant as partner: 400.
    let mut bad = draft("int-ke-cross2");
    bad["partner_tenants"] = json!(["ke"]);
    let a = e
        .call(
            "POST",
            "/v1/integrations",
            Some(&p.manager),
            None,
            Some(bad),
        )
        .await;
    assert_eq!(
        (a.status, a.body["error"]["field"].as_str()),
        (400, Some("partner_tenants[0]")),
        "{}",
        a.text
    );
    // A single-tenant integration is approved by the tenant admin.
    let a = to_approved(&e, draft("int-ke-single"), &p.tenant_admin).await;
    assert_eq!(a.status, 200, "{}", a.text);
}

#[tokio::test]
async fn cross_tenant_needs_umbrella_sqlite() {
    cross_tenant_needs_umbrella(None).await;
}

#[tokio::test]
async fn cross_tenant_needs_umbrella_postgres() {
    cross_tenant_needs_umbrella(Some(fresh_pg_database().await)).await;
}

// ONB-AUD-1, ONB-AUD-2, INT-4.2-5, ONB-5, ADM-8
async fn credentials_webhooks_mappings(store_url: Option<String>) {
    let mut e = env(store_url, true).await;
    let p = e.p();
    let id = "int-ke-creds";
    let a = to_approved(&e, draft(id), &p.tenant_admin).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let a = e.act(id, "provision", &p.manager, json!({})).await;
    assert_eq!(a.status, 201, "{}", a.text);
    let first = a.body["credentials"]["client_secret"]
        .as_str()
        .unwrap()
        .to_owned();
    let client_id = a.body["credentials"]["client_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let a = e.act(id, "activate", &p.tenant_admin, json!({})).await;
    assert_eq!(
        (a.status, a.body["state"].as_str()),
        (200, Some("active")),
        "{}",
        a.text
    );

    // Rotate the client secret (ONB-AUD-2): new one shown once, Keycloak has it, age restarts.
    let a = e
        .call(
            "POST",
            &format!("/v1/integrations/{id}/credentials/rotate"),
            Some(&p.auditor),
            None,
            Some(json!({})),
        )
        .await;
    assert_eq!(a.status, 403);
    let a = e
        .call(
            "POST",
            &format!("/v1/integrations/{id}/credentials/rotate"),
            Some(&p.manager),
            None,
            Some(json!({"reason_code": "ROUTINE_REVIEW"})),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.cache.as_deref(), Some("no-store"));
    let second = a.body["client_secret"].as_str().unwrap().to_owned();
    assert_ne!(first, second);
    assert!(e.kc.lock().unwrap().secrets.values().any(|s| *s == second));
    let a = e
        .call(
            "GET",
            &format!("/v1/integrations/{id}/credentials"),
            Some(&p.auditor),
            None,
            None,
        )
        .await;
    assert!(!a.text.contains(&second) && !a.text.contains(&first));
    assert_eq!(a.body["credentials"][0]["rotation_due"], false);
    assert!(
        e.audit_kinds(id)
            .await
            .contains(&"credential_rotated".to_owned())
    );

    // Age tracking: a credential created 91 days ago is due (ONB-AUD-2).
    let cred =
        e.h.running
            .store
            .document(DocKind::Credential, &format!("{id}.client_secret"))
            .await
            .unwrap()
            .unwrap();
    let mut doc: Value = serde_json::from_str(&cred.doc).unwrap();
    doc["created_ms"] = json!(chrono::Utc::now().timestamp_millis() - 91 * 86_400_000);
    e.h.running
        .store
        .write_documents(
            &[
                DocChange::put(DocKind::Credential, &cred.id, Some("ke"), doc.to_string())
                    .status("active"),
            ],
            Source::Api,
            "test",
            None,
        )
        .await
        .unwrap();
    let a = e
        .call(
            "GET",
            &format!("/v1/integrations/{id}/credentials"),
            Some(&p.auditor),
            None,
            None,
        )
        .await;
    assert_eq!(
        (
            a.body["credentials"][0]["age_days"].as_i64(),
            a.body["credentials"][0]["rotation_due"].as_bool()
        ),
        (Some(91), Some(true)),
        "{}",
        a.text
    );

    // API key (INT-4.2-5): shown once, stored hashed, a second factor only.
    let tok = partner_token(&e.h, id, &client_id);
    let r = e.partner(DATA, &tok, None).await;
    assert_eq!(r["allowed"], true, "{r}");
    let a = e.act(id, "api-key", &p.manager, json!({})).await;
    assert_eq!(a.status, 201, "{}", a.text);
    let key = a.body["api_key"].as_str().unwrap().to_owned();
    assert!(key.len() >= 43);
    let a = e
        .call(
            "GET",
            &format!("/v1/integrations/{id}"),
            Some(&p.auditor),
            None,
            None,
        )
        .await;
    assert!(!a.text.contains(&key));
    assert_eq!(a.body["api_key"], true);
    let r = e.partner(DATA, &tok, None).await;
    assert_eq!(r["code"], "API_KEY_INVALID", "{r}");
    let r = e.partner(DATA, &tok, Some(&key)).await;
    assert_eq!(r["allowed"], true, "{r}");
    let v = e.version(id, &p.auditor).await;
    let a = e
        .call(
            "DELETE",
            &format!("/v1/integrations/{id}/api-key"),
            Some(&p.manager),
            Some(v - 1),
            None,
        )
        .await;
    assert_eq!(a.status, 412);
    let a = e
        .call(
            "DELETE",
            &format!("/v1/integrations/{id}/api-key"),
            Some(&p.manager),
            Some(v),
            Some(json!({"reason_code": "PARTNER_REQUEST"})),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["api_key"], false);
    let r = e.partner(DATA, &tok, Some(&key)).await;
    assert_eq!(r["allowed"], true, "{r}");
    let kinds = e.audit_kinds(id).await;
    assert!(
        kinds.contains(&"credential_revoked".to_owned()),
        "{kinds:?}"
    );
    assert!(
        kinds.iter().filter(|k| *k == "credential_issued").count() >= 2,
        "{kinds:?}"
    );

    // Webhooks (ONB-5): admins only, https only.
    let hooks = format!("/v1/integrations/{id}/webhooks");
    let hook = json!({"url": "https://partner.example/hooks/scp", "events": ["consent.revoked", "integration.state_changed"]});
    let a = e
        .call("POST", &hooks, Some(&p.manager), None, Some(hook.clone()))
        .await;
    assert_eq!(
        a.status, 403,
        "integration managers do not configure webhook URLs"
    );
    let a = e
        .call(
            "POST",
            &hooks,
            Some(&p.tenant_admin),
            None,
            Some(json!({"url": "http://partner.example/h", "events": ["consent.revoked"]})),
        )
        .await;
    assert_eq!(
        (a.status, a.body["error"]["field"].as_str()),
        (400, Some("url")),
        "{}",
        a.text
    );
    let a = e
        .call(
            "POST",
            &hooks,
            Some(&p.tenant_admin),
            None,
            Some(json!({"url": "https://u:p@partner.example/h", "events": ["consent.revoked"]})),
        )
        .await;
    assert_eq!(
        (a.status, a.body["error"]["field"].as_str()),
        (400, Some("url")),
        "{}",
        a.text
    );
    let a = e
        .call(
            "POST",
            &hooks,
            Some(&p.tenant_admin),
            None,
            Some(json!({"url": "https://partner.example/h", "events": ["*"]})),
        )
        .await;
    assert_eq!(
        (a.status, a.body["error"]["field"].as_str()),
        (400, Some("events[0]")),
        "{}",
        a.text
    );
    let a = e
        .call(
            "POST",
            &hooks,
            Some(&p.tenant_admin),
            None,
            Some(hook.clone()),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.text);
    let wh = a.body["id"].as_str().unwrap().to_owned();
    let a = e
        .call(
            "PUT",
            &format!("{hooks}/{wh}"),
            Some(&p.tenant_admin),
            Some(9),
            Some(json!({"url": "https://partner.example/v2", "events": ["consent.revoked"]})),
        )
        .await;
    assert_eq!(a.status, 412);
    let a = e
        .call(
            "GET",
            &format!("{hooks}/{wh}"),
            Some(&p.auditor),
            None,
            None,
        )
        .await;
    assert_eq!(
        (a.body["url"].as_str(), a.body["version"].as_i64()),
        (Some("https://partner.example/hooks/scp"), Some(1))
    );
    let a = e
        .call(
            "PUT",
            &format!("{hooks}/{wh}"),
            Some(&p.tenant_admin),
            Some(1),
            Some(json!({"url": "https://partner.example/v2", "events": ["consent.revoked"]})),
        )
        .await;
    assert_eq!(
        (a.status, a.body["version"].as_i64()),
        (200, Some(2)),
        "{}",
        a.text
    );
    let a = e.call("GET", &hooks, Some(&p.auditor), None, None).await;
    assert_eq!(a.body["items"].as_array().unwrap().len(), 1);
    let a = e
        .call(
            "DELETE",
            &format!("{hooks}/{wh}"),
            Some(&p.tenant_admin),
            Some(2),
            None,
        )
        .await;
    assert_eq!(a.status, 204);
    let a = e
        .call(
            "GET",
            &format!("{hooks}/{wh}"),
            Some(&p.auditor),
            None,
            None,
        )
        .await;
    assert_eq!(a.status, 404);

    // Schema mappings (ONB-5).
    let maps = format!("/v1/integrations/{id}/schema-mappings");
    let m = json!({"name": "patient v1", "direction": "inbound", "fields": [{"source": "patientName", "target": "name"}, {"source": "birthDate", "target": "dob"}]});
    let a = e
        .call("POST", &maps, Some(&p.auditor), None, Some(m.clone()))
        .await;
    assert_eq!(a.status, 403);
    let a = e.call("POST", &maps, Some(&p.manager), None, Some(json!({"name": "x", "direction": "sideways", "fields": [{"source": "a", "target": "b"}]}))).await;
    assert_eq!(
        (a.status, a.body["error"]["field"].as_str()),
        (400, Some("direction"))
    );
    let a = e.call("POST", &maps, Some(&p.manager), None, Some(json!({"name": "x", "direction": "inbound", "fields": [{"source": "a", "target": "b"}, {"source": "c", "target": "b"}]}))).await;
    assert_eq!(
        (a.status, a.body["error"]["field"].as_str()),
        (400, Some("fields[1].target"))
    );
    let a = e.call("POST", &maps, Some(&p.manager), None, Some(m)).await;
    assert_eq!(a.status, 201, "{}", a.text);
    let sm = a.body["id"].as_str().unwrap().to_owned();
    let a = e
        .call("GET", &format!("{maps}/{sm}"), Some(&p.owner), None, None)
        .await;
    assert_eq!(
        (a.status, a.body["fields"][1]["target"].as_str()),
        (200, Some("dob"))
    );
    let hist =
        e.h.running
            .store
            .document_versions(DocKind::SchemaMapping, &sm)
            .await
            .unwrap();
    assert_eq!(hist.len(), 1);
}

#[tokio::test]
async fn credentials_webhooks_mappings_sqlite() {
    credentials_webhooks_mappings(None).await;
}

#[tokio::test]
async fn credentials_webhooks_mappings_postgres() {
    credentials_webhooks_mappings(Some(fresh_pg_database().await)).await;
}

// ADM-1, INT-6.1-1, ONB-3, ONB-4, ONB-5: every endpoint refuses personas without the permission
// (403), callers of another tenant see nothing (404) and requests without a token are 401.
async fn unauthorized_everywhere(store_url: Option<String>) {
    let e = env(store_url, true).await;
    let p = e.p();
    let id = "int-ke-authz";
    let a = e
        .call(
            "POST",
            "/v1/integrations",
            Some(&p.manager),
            None,
            Some(draft(id)),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.text);
    let hook = e
        .call(
            "POST",
            &format!("/v1/integrations/{id}/webhooks"),
            Some(&p.tenant_admin),
            None,
            Some(json!({"url": "https://partner.example/h", "events": ["consent.revoked"]})),
        )
        .await;
    let wh = hook.body["id"].as_str().unwrap().to_owned();
    let map = e.call("POST", &format!("/v1/integrations/{id}/schema-mappings"), Some(&p.manager), None,
        Some(json!({"name": "m", "direction": "outbound", "fields": [{"source": "a", "target": "b"}]}))).await;
    let sm = map.body["id"].as_str().unwrap().to_owned();
    let i = format!("/v1/integrations/{id}");
    let reads = [
        ("GET", "/v1/integrations".to_owned()),
        ("GET", i.clone()),
        ("GET", format!("{i}/history")),
        ("GET", format!("{i}/health")),
        ("GET", format!("{i}/credentials")),
        ("GET", format!("{i}/webhooks")),
        ("GET", format!("{i}/webhooks/{wh}")),
        ("GET", format!("{i}/schema-mappings")),
        ("GET", format!("{i}/schema-mappings/{sm}")),
    ];
    let writes: Vec<(&str, String, Value, &str)> = vec![
        (
            "POST",
            "/v1/integrations".into(),
            draft("int-ke-x"),
            "auditor",
        ),
        ("PATCH", i.clone(), json!({"partner_name": "x"}), "auditor"),
        ("POST", format!("{i}/submit"), json!({}), "auditor"),
        ("POST", format!("{i}/review"), json!({}), "manager"),
        ("POST", format!("{i}/legal-review"), json!({}), "manager"),
        (
            "POST",
            format!("{i}/approve"),
            json!({"legal_document_id": "d"}),
            "manager",
        ),
        ("POST", format!("{i}/provision"), json!({}), "tenant_admin"),
        ("POST", format!("{i}/activate"), json!({}), "manager"),
        (
            "POST",
            format!("{i}/restrict"),
            json!({"reason_code": "COMPLIANCE"}),
            "manager",
        ),
        (
            "POST",
            format!("{i}/suspend"),
            json!({"reason_code": "COMPLIANCE"}),
            "manager",
        ),
        (
            "POST",
            format!("{i}/deprecate"),
            json!({"reason_code": "COMPLIANCE"}),
            "auditor",
        ),
        (
            "POST",
            format!("{i}/archive"),
            json!({"reason_code": "COMPLIANCE"}),
            "owner",
        ),
        (
            "POST",
            format!("{i}/credentials/rotate"),
            json!({}),
            "tenant_admin",
        ),
        ("POST", format!("{i}/api-key"), json!({}), "tenant_admin"),
        ("DELETE", format!("{i}/api-key"), json!({}), "security"),
        (
            "POST",
            format!("{i}/webhooks"),
            json!({"url": "https://p.example/h", "events": ["a.b"]}),
            "manager",
        ),
        (
            "PUT",
            format!("{i}/webhooks/{wh}"),
            json!({"url": "https://p.example/h", "events": ["a.b"]}),
            "manager",
        ),
        ("DELETE", format!("{i}/webhooks/{wh}"), json!({}), "owner"),
        (
            "POST",
            format!("{i}/schema-mappings"),
            json!({"name": "m", "direction": "inbound", "fields": [{"source": "a", "target": "b"}]}),
            "tenant_admin",
        ),
        (
            "PUT",
            format!("{i}/schema-mappings/{sm}"),
            json!({"name": "m", "direction": "inbound", "fields": [{"source": "a", "target": "b"}]}),
            "security",
        ),
        (
            "DELETE",
            format!("{i}/schema-mappings/{sm}"),
            json!({}),
            "auditor",
        ),
    ];
    fn token<'a>(p: &'a Personas, who: &str) -> &'a str {
        match who {
            "auditor" => &p.auditor,
            "manager" => &p.manager,
            "tenant_admin" => &p.tenant_admin,
            "owner" => &p.owner,
            "security" => &p.security,
            _ => unreachable!(),
        }
    }
    let before =
        e.h.running
            .store
            .document(DocKind::Integration, id)
            .await
            .unwrap()
            .unwrap()
            .version;
    for (m, path) in &reads {
        let a = e.call(m, path, None, None, None).await;
        assert_eq!(a.status, 401, "{m} {path} without token");
        let a = e.call(m, path, Some(&p.nobody), None, None).await;
        assert_eq!(
            a.status, 403,
            "{m} {path} by a role without permissions: {}",
            a.text
        );
        if path != "/v1/integrations" {
            let a = e.call(m, path, Some(&p.other_tenant), None, None).await;
            assert_eq!(a.status, 404, "{m} {path} from another tenant: {}", a.text);
        }
    }
    for (m, path, body, who) in &writes {
        let a = e.call(m, path, None, None, Some(body.clone())).await;
        assert_eq!(a.status, 401, "{m} {path} without token");
        for t in [token(&p, who), p.nobody.as_str()] {
            let a = e.call(m, path, Some(t), None, Some(body.clone())).await;
            assert_eq!(a.status, 403, "{m} {path} by {who}/nobody: {}", a.text);
            assert_eq!(a.body["error"]["code"], "FORBIDDEN");
        }
        if path != "/v1/integrations" {
            // Another tenant's caller gets 404, or 403 when it lacks the permission anywhere
            // (checked first), and exactly what an unknown id gets: existence is not revealed.
            let a = e
                .call(m, path, Some(&p.other_tenant), None, Some(body.clone()))
                .await;
            assert!(
                a.status == 404 || a.status == 403,
                "{m} {path} from another tenant: {}",
                a.text
            );
            let unknown = path.replace(id, "int-does-not-exist");
            let b = e
                .call(m, &unknown, Some(&p.other_tenant), None, Some(body.clone()))
                .await;
            assert_eq!(
                (a.status, a.body["error"]["code"].clone()),
                (b.status, b.body["error"]["code"].clone()),
                "{m} {path} from another tenant answers like an unknown id"
            );
        }
    }
    // The other tenant's list does not show it.
    let a = e
        .call("GET", "/v1/integrations", Some(&p.other_tenant), None, None)
        .await;
    assert!(!a.text.contains(id));
    // Nothing changed.
    let after =
        e.h.running
            .store
            .document(DocKind::Integration, id)
            .await
            .unwrap()
            .unwrap()
            .version;
    assert_eq!(before, after);
    // A vertical-scoped list filter: `state`.
    let a = e
        .call(
            "GET",
            "/v1/integrations?state=draft",
            Some(&p.auditor),
            None,
            None,
        )
        .await;
    assert!(
        a.body["integrations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["id"] == id)
    );
    let a = e
        .call(
            "GET",
            "/v1/integrations?state=active",
            Some(&p.auditor),
            None,
            None,
        )
        .await;
    assert!(
        !a.body["integrations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["id"] == id)
    );
    let a = e
        .call(
            "GET",
            "/v1/integrations?state=bogus",
            Some(&p.auditor),
            None,
            None,
        )
        .await;
    assert_eq!(
        (a.status, a.body["error"]["field"].as_str()),
        (400, Some("state"))
    );
}

#[tokio::test]
async fn unauthorized_everywhere_sqlite() {
    unauthorized_everywhere(None).await;
}

#[tokio::test]
async fn unauthorized_everywhere_postgres() {
    unauthorized_everywhere(Some(fresh_pg_database().await)).await;
}

// ONB-4: without `admin.keycloak`, provisioning fails closed (503) and nothing changes; an
// unreachable Keycloak likewise.
async fn provisioner_unavailable(store_url: Option<String>) {
    let e = env(store_url, false).await;
    let p = e.p();
    let id = "int-ke-noidp";
    let a = to_approved(&e, draft(id), &p.tenant_admin).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let v = e.version(id, &p.auditor).await;
    let a = e.act(id, "provision", &p.manager, json!({})).await;
    assert_eq!(
        (a.status, a.body["error"]["code"].as_str()),
        (503, Some("PROVISIONER_UNAVAILABLE")),
        "{}",
        a.text
    );
    assert_eq!(e.version(id, &p.auditor).await, v);
    let a = e
        .call(
            "GET",
            &format!("/v1/integrations/{id}"),
            Some(&p.auditor),
            None,
            None,
        )
        .await;
    assert!(a.body["client_id"].is_null());
    // The OpenAPI document lists the routes.
    let a = e.call("GET", "/openapi.json", None, None, None).await;
    for path in [
        "/v1/integrations",
        "/v1/integrations/{id}/provision",
        "/v1/integrations/{id}/approve",
        "/v1/integrations/{id}/health",
        "/v1/integrations/{id}/webhooks/{sub}",
        "/v1/integrations/{id}/api-key",
    ] {
        assert!(
            a.body["paths"][path].is_object(),
            "{path} missing from /openapi.json"
        );
    }
}

#[tokio::test]
async fn provisioner_unavailable_sqlite() {
    provisioner_unavailable(None).await;
}

#[tokio::test]
async fn provisioner_unavailable_postgres() {
    provisioner_unavailable(Some(fresh_pg_database().await)).await;
}
