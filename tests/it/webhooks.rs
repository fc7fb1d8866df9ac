//! Outbound webhooks through the shared outbox, end to end over real HTTP: lifecycle events
//! signed per Standard Webhooks and checked with an independent HMAC, retries, dead letter and
//! replay, secret rotation overlap, the circuit (degraded → restricted, audited), the SSRF guard
//! and admin-only URLs (INT-5.1-1, ONB-5, EXT-4.3-1, EXT-4.3-2, INT-9.2-1, ONB-LOG-01,
//! EXT-5.1-1). Receivers are real axum servers on loopback; every scenario runs on SQLite and
//! PostgreSQL.

use crate::common;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use base64::Engine as _;
use common::Harness;
use scp_pep::store::{DocChange, DocKind, Expect, Source, Store};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

on_both_stores!(optional:
    webhook_signed_retried_rotated,
    webhook_dead_letter_and_replay,
    webhook_circuit_degrades_then_restricts,
    webhook_ssrf_refusals,
    webhook_urls_admin_only,
    webhook_and_consent_notice_share_the_outbox,
);

// ------------------------------------------------------------------------------------------
// A receiver: answers with the scripted statuses (then `fallback`), records what it got.

#[derive(Default)]
struct Rx {
    script: VecDeque<u16>,
    fallback: u16,
    /// Location header of 3xx answers.
    location: Option<String>,
    got: Vec<(HeaderMap, String)>,
}

type RxState = Arc<Mutex<Rx>>;

async fn receive(State(rx): State<RxState>, headers: HeaderMap, body: String) -> impl IntoResponse {
    let mut r = rx.lock().unwrap();
    r.got.push((headers, body));
    let code = r.script.pop_front().unwrap_or(r.fallback);
    let mut h = HeaderMap::new();
    if let Some(l) = &r.location {
        h.insert("location", l.parse().unwrap());
    }
    (StatusCode::from_u16(code).unwrap(), h, "x".repeat(100_000))
}

async fn receiver(script: &[u16], fallback: u16) -> (String, RxState) {
    let st: RxState = Arc::new(Mutex::new(Rx {
        script: script.iter().copied().collect(),
        fallback,
        ..Rx::default()
    }));
    let app = Router::new()
        .route("/hook", post(receive))
        .with_state(st.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (format!("http://127.0.0.1:{port}/hook"), st)
}

// ------------------------------------------------------------------------------------------
// HMAC-SHA-256 from SHA-256 alone (RFC 2104), independent of the server's aws-lc-rs HMAC.

fn hmac_sha256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(msg);
    let ih = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(ih);
    outer.finalize().to_vec()
}

/// The `v1,…` signature a Standard Webhooks receiver expects for `secret` (`whsec_<base64>`).
fn expected_sig(secret: &str, headers: &HeaderMap, body: &str) -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = b64.decode(secret.strip_prefix("whsec_").unwrap()).unwrap();
    let h = |n: &str| headers.get(n).unwrap().to_str().unwrap().to_owned();
    let msg = format!("{}.{}.{}", h("webhook-id"), h("webhook-timestamp"), body);
    format!("v1,{}", b64.encode(hmac_sha256(&key, msg.as_bytes())))
}

fn sigs(headers: &HeaderMap) -> Vec<String> {
    headers
        .get("webhook-signature")
        .unwrap()
        .to_str()
        .unwrap()
        .split(' ')
        .map(str::to_owned)
        .collect()
}

// ------------------------------------------------------------------------------------------
// Server and admin calls

async fn server(store_url: Option<String>, allow_loopback: bool) -> Harness {
    Harness::start_with(store_url, move |c| {
        c.admin.webhook_allow_http_loopback = allow_loopback;
        c.webhooks.interval_ms = 50;
        c.webhooks.backoff_base_ms = 50;
        c.webhooks.backoff_max_ms = 100;
        c.webhooks.max_attempts = 3;
        c.webhooks.degrade_after = 2;
        c.webhooks.act_after = 4;
        c.webhooks.timeout_ms = 5_000;
    })
    .await
}

struct Api<'a> {
    h: &'a Harness,
    http: reqwest::Client,
}

impl Api<'_> {
    fn token(&self, sub: &str, role: &str) -> String {
        self.h.staff_token("ke", sub, &[role], "scp-pep-admin")
    }
    fn manager(&self) -> String {
        self.token("alice", "scp-integration-manager")
    }
    fn admin(&self) -> String {
        self.token("tara", "scp-tenant-admin")
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method.parse().unwrap(), self.h.ops_url(path))
            .bearer_auth(token);
        if method != "GET" {
            let v = if path.contains("/webhooks") || path == "/v1/integrations" {
                None
            } else {
                let (_, i) =
                    Box::pin(self.call("GET", path.rsplit_once('/').unwrap().0, token, None)).await;
                i["version"].as_i64()
            };
            if let Some(v) = v {
                req = req.header("if-match", format!("\"{v}\""));
            }
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// A draft integration `id` of tenant `ke`.
    async fn draft(&self, id: &str) {
        let (st, b) = self
            .call(
                "POST",
                "/v1/integrations",
                &self.manager(),
                Some(json!({
                    "id": id,
                    "partner_name": "Acme Health Connector",
                    "legal_basis": "Data sharing agreement DSA-2026-17",
                    "technical_contacts": [{"name": "Ops", "email": "ops@acme.example", "role": "technical"}],
                    "verticals": ["health"],
                    "scopes": ["health:person:read"],
                })),
            )
            .await;
        assert_eq!(st, 201, "{b}");
    }

    /// A subscription of `id` to `events` at `url`: (subscription id, secret).
    async fn subscribe(&self, id: &str, url: &str, events: &[&str]) -> (String, String) {
        let (st, b) = self
            .call(
                "POST",
                &format!("/v1/integrations/{id}/webhooks"),
                &self.admin(),
                Some(json!({"url": url, "events": events})),
            )
            .await;
        assert_eq!(st, 201, "{b}");
        let secret = b["secret"].as_str().unwrap().to_owned();
        assert!(secret.starts_with("whsec_"));
        (b["id"].as_str().unwrap().to_owned(), secret)
    }

    async fn deliveries(&self, id: &str, sub: &str) -> Vec<Value> {
        let (st, b) = self
            .call(
                "GET",
                &format!("/v1/integrations/{id}/webhooks/{sub}/deliveries"),
                &self.admin(),
                None,
            )
            .await;
        assert_eq!(st, 200, "{b}");
        b["items"].as_array().unwrap().clone()
    }

    /// Waits until the newest delivery of `sub` satisfies `f`.
    async fn wait_delivery(&self, id: &str, sub: &str, f: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..200 {
            if let Some(d) = self.deliveries(id, sub).await.into_iter().next()
                && f(&d)
            {
                return d;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "delivery condition not reached: {:?}",
            self.deliveries(id, sub).await
        );
    }
}

fn api(h: &Harness) -> Api<'_> {
    Api {
        h,
        http: reqwest::Client::new(),
    }
}

async fn audit_bodies(store: &Store) -> Vec<String> {
    let q = "SELECT body FROM audit_records WHERE tenant_id = 'ke' ORDER BY time_ms, seq";
    match store {
        Store::Sqlite(p) => sqlx::query_scalar(q).fetch_all(p).await.unwrap(),
        Store::Postgres(p) => sqlx::query_scalar(q).fetch_all(p).await.unwrap(),
    }
}

// ------------------------------------------------------------------------------------------

// INT-5.1-1, ONB-5, EXT-5.1-1, EXT-4.3-2, INT-9.2-1: a lifecycle transition reaches the
// subscriber signed (verified with an independent HMAC), a 503 is retried and logged, rotation
// sends both signatures during the overlap.
async fn webhook_signed_retried_rotated(store_url: Option<String>) {
    let h = server(store_url, true).await;
    let a = api(&h);
    let (url, rx) = receiver(&[503], 200).await;
    let id = "int-ke-hooks";
    a.draft(id).await;
    let (sub, secret) = a.subscribe(id, &url, &["integration.state_changed"]).await;
    // The subscription view never shows the secret.
    let (_, view) = a
        .call(
            "GET",
            &format!("/v1/integrations/{id}/webhooks/{sub}"),
            &a.admin(),
            None,
        )
        .await;
    assert!(view.get("secret").is_none(), "{view}");

    let (st, b) = a
        .call(
            "POST",
            &format!("/v1/integrations/{id}/submit"),
            &a.manager(),
            Some(json!({})),
        )
        .await;
    assert_eq!(st, 200, "{b}");
    let d = a.wait_delivery(id, &sub, |d| d["status"] == "sent").await;
    let attempts = d["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{d}");
    assert_eq!(attempts[0]["status"], "failed");
    assert_eq!(attempts[0]["http_status"], 503);
    assert_eq!(attempts[0]["error_class"], "http_5xx");
    assert!(attempts[0]["latency_ms"].as_i64().is_some());
    assert_eq!(attempts[1]["status"], "sent");
    assert_eq!(attempts[1]["http_status"], 200);
    assert_eq!(d["event_type"], "integration.state_changed");

    let got = rx.lock().unwrap().got.clone();
    assert_eq!(got.len(), 2);
    for (headers, body) in &got {
        assert_eq!(sigs(headers), vec![expected_sig(&secret, headers, body)]);
        assert_eq!(
            headers.get("idempotency-key"),
            headers.get("webhook-id"),
            "Idempotency-Key = webhook-id"
        );
        assert_eq!(
            headers["webhook-id"].to_str().unwrap(),
            d["id"].as_str().unwrap()
        );
        let ev: Value = serde_json::from_str(body).unwrap();
        assert_eq!(ev["type"], "integration.state_changed");
        assert_eq!(ev["version"], 1);
        assert!(ev["id"].as_str().unwrap().starts_with("evt_"));
        assert!(ev["timestamp"].as_str().is_some());
        assert_eq!(
            ev["data"],
            json!({"integration_id": id, "from": "draft", "to": "requested",
                   "action": "submit", "reason_code": null})
        );
    }
    // A tampered body does not verify.
    let (h0, b0) = &got[0];
    assert_ne!(
        sigs(h0)[0],
        expected_sig(&secret, h0, &b0.replace("draft", "drafx"))
    );

    // Rotation: the new secret once, both signatures during the overlap.
    let (st, r) = a
        .call(
            "POST",
            &format!("/v1/integrations/{id}/webhooks/{sub}/rotate-secret"),
            &a.admin(),
            None,
        )
        .await;
    assert_eq!(st, 200, "{r}");
    let new_secret = r["secret"].as_str().unwrap().to_owned();
    assert_ne!(new_secret, secret);
    let owner = a.token("victor", "scp-vertical-owner");
    let (st, b) = a
        .call(
            "POST",
            &format!("/v1/integrations/{id}/review"),
            &owner,
            Some(json!({})),
        )
        .await;
    assert_eq!(st, 200, "{b}");
    a.wait_delivery(id, &sub, |d| {
        d["status"] == "sent" && d["attempts"].as_array().unwrap().len() == 1
    })
    .await;
    let (headers, body) = rx.lock().unwrap().got.last().unwrap().clone();
    assert_eq!(
        sigs(&headers),
        vec![
            expected_sig(&new_secret, &headers, &body),
            expected_sig(&secret, &headers, &body)
        ]
    );
    let audit = audit_bodies(&h.running.store).await;
    assert!(audit.iter().any(|b| b.contains("webhook.rotate_secret")));
    assert!(
        !audit
            .iter()
            .any(|b| b.contains(&new_secret) || b.contains(&secret))
    );
}

// EXT-4.3-2, INT-9.2-1: after `max_attempts` failures the delivery is a dead letter; an admin's
// replay (audited) delivers it; a non-admin cannot replay.
async fn webhook_dead_letter_and_replay(store_url: Option<String>) {
    let h = server(store_url, true).await;
    let a = api(&h);
    let (url, rx) = receiver(&[], 500).await;
    let id = "int-ke-dead";
    a.draft(id).await;
    let (sub, _) = a.subscribe(id, &url, &["integration.state_changed"]).await;
    let (st, _) = a
        .call(
            "POST",
            &format!("/v1/integrations/{id}/submit"),
            &a.manager(),
            Some(json!({})),
        )
        .await;
    assert_eq!(st, 200);
    let d = a
        .wait_delivery(id, &sub, |d| d["status"] == "dead_letter")
        .await;
    assert_eq!(d["reason"], "max_attempts");
    assert_eq!(d["attempts"].as_array().unwrap().len(), 3, "{d}");
    assert_eq!(rx.lock().unwrap().got.len(), 3);
    let replay = format!(
        "/v1/integrations/{id}/webhooks/{sub}/deliveries/{}/replay",
        d["id"].as_str().unwrap()
    );
    let (st, _) = a.call("POST", &replay, &a.manager(), None).await;
    assert_eq!(st, 403, "integration managers do not replay");
    rx.lock().unwrap().fallback = 204;
    let (st, b) = a.call("POST", &replay, &a.admin(), None).await;
    assert_eq!(st, 202, "{b}");
    let d = a.wait_delivery(id, &sub, |d| d["status"] == "sent").await;
    assert_eq!(d["attempts"].as_array().unwrap().len(), 4, "{d}");
    let (st, b) = a.call("POST", &replay, &a.admin(), None).await;
    assert_eq!(
        (st, b["error"]["code"].as_str()),
        (409, Some("INVALID_TRANSITION")),
        "{b}"
    );
    let audit = audit_bodies(&h.running.store).await;
    assert!(audit.iter().any(|b| b.contains("webhook.replay")));
}

// ONB-LOG-01, EXT-4.3-2: consecutive 5xx mark the integration degraded, then restrict it through
// the lifecycle (audited, actor `webhooks`), and the subscriber hears of it.
async fn webhook_circuit_degrades_then_restricts(store_url: Option<String>) {
    let h = server(store_url, true).await;
    let a = api(&h);
    let (url, _rx) = receiver(&[], 502).await;
    let id = "int-ke-circuit";
    a.draft(id).await;
    let (sub, _) = a
        .subscribe(
            id,
            &url,
            &["credential.rotated", "integration.state_changed"],
        )
        .await;
    // Make it active directly in the store (provisioning is another test's subject).
    let store = &h.running.store;
    let d = store
        .document(DocKind::Integration, id)
        .await
        .unwrap()
        .unwrap();
    let mut doc: Value = serde_json::from_str(&d.doc).unwrap();
    doc["state"] = json!("active");
    doc["client_id"] = json!("acme-client");
    store
        .write_documents(
            &[
                DocChange::put(DocKind::Integration, id, Some("ke"), doc.to_string())
                    .status("active")
                    .expect(Expect::Version(d.version)),
            ],
            Source::Api,
            "test",
            None,
        )
        .await
        .unwrap();
    // Two events × 3 attempts = 6 consecutive 5xx ≥ act_after (4).
    for _ in 0..2 {
        scp_pep::webhooks::enqueue(
            store,
            "ke",
            id,
            "credential.rotated",
            json!({"credential": "client_secret"}),
            scp_pep::api::now_ms(),
        )
        .await
        .unwrap();
    }
    let mut state = String::new();
    for _ in 0..200 {
        let (_, i) = a
            .call("GET", &format!("/v1/integrations/{id}"), &a.admin(), None)
            .await;
        state = i["state"].as_str().unwrap_or_default().to_owned();
        if state == "restricted" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(state, "restricted");
    let (_, health) = a
        .call(
            "GET",
            &format!("/v1/integrations/{id}/health"),
            &a.admin(),
            None,
        )
        .await;
    assert_eq!(health["health"], "degraded", "{health}");
    assert!(
        health["webhook_failures"].as_i64().unwrap() >= 4,
        "{health}"
    );
    let audit = audit_bodies(store).await;
    assert!(
        audit
            .iter()
            .any(|b| b.contains("integration.webhook_degraded"))
    );
    let restrict: Vec<&String> = audit
        .iter()
        .filter(|b| b.contains("integration.restrict") && b.contains("webhook_failures"))
        .collect();
    assert_eq!(restrict.len(), 1, "{audit:?}");
    assert!(restrict[0].contains("\"webhooks\""));
    // The restriction itself is an event to the subscriber.
    a.wait_delivery(id, &sub, |d| d["event_type"] == "integration.state_changed")
        .await;
}

// INT-5.1-1: private IP literals refused at configuration; a hostname resolving to loopback
// refused at delivery without the development flag (nothing sent); redirects not followed.
async fn webhook_ssrf_refusals(store_url: Option<String>) {
    // Without the development flag.
    let h = server(store_url.clone(), false).await;
    let a = api(&h);
    let id = "int-ke-ssrf";
    a.draft(id).await;
    for url in [
        "https://10.1.2.3/hook",
        "https://169.254.169.254/latest",
        "https://[fd00:ec2::254]/x",
        "https://100.64.0.1/x",
        "https://127.0.0.1/x",
        "http://127.0.0.1:9/x",
    ] {
        let (st, b) = a
            .call(
                "POST",
                &format!("/v1/integrations/{id}/webhooks"),
                &a.admin(),
                Some(json!({"url": url, "events": ["integration.state_changed"]})),
            )
            .await;
        assert_eq!(
            (st, b["error"]["field"].as_str()),
            (400, Some("url")),
            "{url}: {b}"
        );
    }
    let (plain, rx) = receiver(&[], 200).await;
    let port = plain
        .rsplit(':')
        .next()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let (sub, _) = a
        .subscribe(
            id,
            &format!("https://localhost:{port}/hook"),
            &["integration.state_changed"],
        )
        .await;
    let (st, _) = a
        .call(
            "POST",
            &format!("/v1/integrations/{id}/submit"),
            &a.manager(),
            Some(json!({})),
        )
        .await;
    assert_eq!(st, 200);
    let d = a
        .wait_delivery(id, &sub, |d| d["status"] == "dead_letter")
        .await;
    assert_eq!(d["reason"], "destination_refused", "{d}");
    assert_eq!(d["attempts"][0]["error_class"], "destination_refused");
    assert_eq!(
        rx.lock().unwrap().got.len(),
        0,
        "nothing reached the loopback receiver"
    );
    assert!(
        scp_pep::webhooks::guard::resolve("localhost", 443, false)
            .await
            .is_err()
    );
    assert!(
        scp_pep::webhooks::guard::resolve("localhost", 443, true)
            .await
            .is_ok()
    );
    drop(h);

    // Redirects are not followed (with the flag, so plain-http loopback receivers work).
    let h = server(None, true).await;
    let a = api(&h);
    let id = "int-ke-redirect";
    a.draft(id).await;
    let (target, target_rx) = receiver(&[], 200).await;
    let (url, rx) = receiver(&[], 307).await;
    rx.lock().unwrap().location = Some(target);
    let (sub, _) = a.subscribe(id, &url, &["integration.state_changed"]).await;
    let (st, _) = a
        .call(
            "POST",
            &format!("/v1/integrations/{id}/submit"),
            &a.manager(),
            Some(json!({})),
        )
        .await;
    assert_eq!(st, 200);
    let d = a
        .wait_delivery(id, &sub, |d| d["status"] == "dead_letter")
        .await;
    assert_eq!(d["attempts"][0]["http_status"], 307, "{d}");
    assert_eq!(d["attempts"][0]["error_class"], "http_3xx");
    assert_eq!(rx.lock().unwrap().got.len(), 3);
    assert_eq!(
        target_rx.lock().unwrap().got.len(),
        0,
        "the redirect was not followed"
    );
}

// EXT-4.3-1, ONB-5: only admins set webhook URLs; an integration manager or a caller without a
// mapped role gets 403, and nothing is stored.
async fn webhook_urls_admin_only(store_url: Option<String>) {
    let h = server(store_url, true).await;
    let a = api(&h);
    let id = "int-ke-perm";
    a.draft(id).await;
    let hook = json!({"url": "https://partner.example/hook", "events": ["consent.withdrawn"]});
    let path = format!("/v1/integrations/{id}/webhooks");
    for token in [a.manager(), a.token("nemo", "some-unmapped-role")] {
        let (st, b) = a.call("POST", &path, &token, Some(hook.clone())).await;
        assert_eq!(st, 403, "{b}");
        assert_eq!(b["error"]["code"], "FORBIDDEN", "{b}");
    }
    let (_, list) = a.call("GET", &path, &a.admin(), None).await;
    assert_eq!(list["items"], json!([]));
    let (sub, _) = a
        .subscribe(id, "https://partner.example/hook", &["consent.withdrawn"])
        .await;
    let (st, _) = a
        .call(
            "POST",
            &format!("{path}/{sub}/rotate-secret"),
            &a.manager(),
            None,
        )
        .await;
    assert_eq!(st, 403);
}

// INT-9.2-1, CON-34, CON-36, INT-5.1-1: one outbox: a consent notice and a webhook delivery queued
// side by side are each delivered by their own sender, each attempt logged in `outbox_attempts`.
async fn webhook_and_consent_notice_share_the_outbox(store_url: Option<String>) {
    let dir = tempfile::tempdir().unwrap();
    let url =
        store_url.unwrap_or_else(|| format!("sqlite:{}", dir.path().join("store.db").display()));
    let store = Store::connect(&url, 4, Duration::from_secs(5))
        .await
        .unwrap();
    let now = scp_pep::api::now_ms();
    let (hook, hook_rx) = receiver(&[], 200).await;
    let (notify, notify_rx) = receiver(&[], 200).await;

    // A webhook subscription (written as the admin API stores it) and one event.
    let doc = json!({"id": "wh-1", "integration_id": "int-ke-one", "tenant": "ke", "url": hook,
                     "events": ["consent.withdrawn"], "description": null});
    store
        .write_documents(
            &[
                DocChange::put(DocKind::Webhook, "wh-1", Some("ke"), doc.to_string())
                    .status("active"),
            ],
            Source::Api,
            "test",
            None,
        )
        .await
        .unwrap();
    store
        .webhook_secret_create("wh-1", &scp_pep::webhooks::new_secret(), now)
        .await
        .unwrap();
    let n = scp_pep::webhooks::enqueue(
        &store,
        "ke",
        "int-ke-one",
        "consent.withdrawn",
        json!({"consent_id": "c-1", "consent_version": 2, "vertical_id": "health", "person_ref": "ref-1"}),
        now,
    )
    .await
    .unwrap();
    assert_eq!(n, 1);
    // A consent case suspension (CON-36) in the same table.
    let consent_row = scp_pep::consent::store::OutboxRow {
        id: uuid::Uuid::now_v7().to_string(),
        dedup_key: "case_suspension:c-1:2".into(),
        tenant_id: "ke".into(),
        person_id: "p-1".into(),
        consent_id: "c-1".into(),
        consent_version: 2,
        vertical_id: "health".into(),
        kind: "case_suspension".into(),
        days_before: None,
        channel: "core".into(),
        status: "pending".into(),
        reason: None,
        attempts: 0,
        next_attempt_ms: now,
        created_ms: now,
        updated_ms: now,
    };
    assert_eq!(
        store
            .consent_outbox_insert(std::slice::from_ref(&consent_row))
            .await
            .unwrap(),
        1
    );

    // Each side sees only its own rows.
    let consents = scp_pep::consent::Consents::new(
        store.clone(),
        scp_pep::consent::ConsentConfig {
            notify_url: Some(notify.clone()),
            ..Default::default()
        },
        Arc::new(scp_pep::consent::SystemClock),
    );
    let sender = scp_pep::consent::notify::HttpSender::new(&notify).unwrap();
    let later = scp_pep::api::now_ms();
    assert_eq!(
        scp_pep::consent::notify::deliver(&consents, &sender, later, 10)
            .await
            .unwrap(),
        1
    );
    let d = scp_pep::webhooks::Deliverer::new(
        store.clone(),
        None,
        None,
        "scp-pep".into(),
        scp_pep::webhooks::WebhooksConfig::default(),
        true,
    )
    .unwrap();
    assert_eq!(d.pass(later, 10).await.unwrap(), 1);
    assert_eq!(d.pass(scp_pep::api::now_ms(), 10).await.unwrap(), 0);

    let notices = notify_rx.lock().unwrap().got.clone();
    assert_eq!(notices.len(), 1);
    assert!(notices[0].1.contains("case_suspension"));
    let hooks = hook_rx.lock().unwrap().got.clone();
    assert_eq!(hooks.len(), 1);
    let ev: Value = serde_json::from_str(&hooks[0].1).unwrap();
    assert_eq!(ev["type"], "consent.withdrawn");
    assert_eq!(ev["data"]["person_ref"], "ref-1");
    assert!(
        !hooks[0].1.contains("p-1"),
        "no person id in a webhook body"
    );

    let rows = store.consent_outbox_of("c-1").await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, "sent");
    assert_eq!(
        store
            .consent_deliveries_of(&rows[0].id)
            .await
            .unwrap()
            .len(),
        1
    );
    let w = store.webhook_rows_of("wh-1", 10).await.unwrap();
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].status, "sent");
    let a = store.webhook_attempts(&w[0].id).await.unwrap();
    assert_eq!((a.len(), a[0].http_status), (1, Some(200)));
    let q = "SELECT count(*) FROM outbox";
    let total: i64 = match &store {
        Store::Sqlite(p) => sqlx::query_scalar(q).fetch_one(p).await.unwrap(),
        Store::Postgres(p) => sqlx::query_scalar(q).fetch_one(p).await.unwrap(),
    };
    assert_eq!(total, 2, "one table for both");
}
