//! Outbound webhooks on the one durable outbox (INT-5.1-1, ONB-5, EXT-4.3-2, INT-9.2-1,
//! ONB-LOG-01, EXT-5.1-1). Consent notifications use the same `outbox` table (topic `consent`,
//! see `crate::consent::notify`); webhook deliveries are its rows of topic `webhook`.
//!
//! - **Events** ([`enqueue`]): `integration.state_changed` (every lifecycle transition),
//!   `credential.rotated` and `consent.withdrawn` (to integrations holding frozen shares of the
//!   person; the person only as its keyed `person_ref`). One row per subscription of the
//!   integration whose `events` list names the type. Body: `{type, version, id, timestamp,
//!   data}`. Integration events are written in the transaction of the change itself
//!   ([`Store::write_documents_with`]); `consent.withdrawn` right after the withdrawal commits
//!   (the consent write path is separate), so a crash between the two loses that event.
//! - **Delivery** ([`Deliverer::pass`]): claim (one replica per attempt), SSRF guard
//!   ([`guard`]), POST with the Standard Webhooks headers `webhook-id`, `webhook-timestamp`,
//!   `webhook-signature` (`v1,<base64 HMAC-SHA-256 of "{id}.{timestamp}.{body}">`, one per valid
//!   secret, space-separated during a rotation's overlap) and `Idempotency-Key`; no redirects,
//!   at most `max_response_bytes` of the answer read and dropped. Every attempt is logged in
//!   `outbox_attempts` (status, HTTP status, latency ms, error class; never the answer body).
//!   Failures retry after exponential backoff with jitter up to `max_attempts`; then the row is
//!   `failed` (the dead letter) until an admin replays it.
//! - **Circuit** per subscription: `degrade_after` consecutive 5xx/timeouts/connection failures
//!   mark the integration's health `degraded` (audit record + warning); `act_after` restrict or
//!   suspend it (tenant setting `webhook_circuit_action`, default restrict) through the lifecycle
//!   rules, audited as actor `webhooks`.
//!
//! Logs carry subscription and integration ids, never URLs' secrets, bodies or person ids.

pub mod guard;
pub mod store;

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use rand_core::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::audit::AuditLog;
use crate::audit::record::{AuditEvent, RecordKind};
use crate::pipeline::Engine;
use crate::store::{DocKind, Store, StoreError};
pub use store::{Secrets, WebhookAttempt, WebhookOutcome, WebhookRow};

/// Event types a subscription may select.
pub const EVENT_TYPES: [&str; 3] = [
    "integration.state_changed",
    "credential.rotated",
    "consent.withdrawn",
];

/// Version of the event body format.
pub const EVENT_VERSION: u32 = 1;

/// `[webhooks]`: delivery of outbound webhooks.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Attempts before a delivery is dead-lettered (EXT-4.3-2), ≥ 1.
    pub max_attempts: u32,
    /// First retry delay, ms; doubles per attempt (with jitter: a random delay in [d/2, d]).
    pub backoff_base_ms: u64,
    /// Longest retry delay, ms.
    pub backoff_max_ms: u64,
    /// Timeout of one call (connect to last byte read), ms.
    pub timeout_ms: u64,
    /// How often the outbox is polled for due deliveries, ms.
    pub interval_ms: u64,
    /// Consecutive 5xx/timeouts of a subscription that mark its integration `degraded`
    /// (ONB-LOG-01).
    pub degrade_after: u32,
    /// Consecutive 5xx/timeouts after which the integration is restricted or suspended.
    pub act_after: u32,
    /// How long the previous secret keeps signing after a rotation, s (EXT-5.1-1).
    pub secret_overlap_s: u64,
    /// At most this much of a receiver's answer is read (then dropped), bytes.
    pub max_response_bytes: usize,
    /// Deliveries in flight at once per replica.
    pub concurrency: usize,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        WebhooksConfig {
            max_attempts: 8,
            backoff_base_ms: 30_000,
            backoff_max_ms: 3_600_000,
            timeout_ms: 10_000,
            interval_ms: 1_000,
            degrade_after: 5,
            act_after: 20,
            secret_overlap_s: 86_400,
            max_response_bytes: 64 * 1024,
            concurrency: 8,
        }
    }
}

/// Deliveries claimed per query.
const BATCH: i64 = 100;
/// How long a claimed delivery is left alone before another replica may retry it, ms.
const CLAIM_LEASE_MS: i64 = 120_000;

/// A new signing secret: `whsec_` + base64 of 32 random bytes (EXT-5.1-1).
pub fn new_secret() -> String {
    let mut k = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut k);
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(k)
    )
}

/// The Standard Webhooks signature `v1,<base64 HMAC-SHA-256>` of `"{id}.{timestamp}.{body}"`
/// under `secret` (`whsec_<base64 key>`; a secret without the prefix or not base64 is used as
/// raw bytes).
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    let raw = secret.strip_prefix("whsec_").unwrap_or(secret);
    let key_bytes = base64::engine::general_purpose::STANDARD
        .decode(raw)
        .unwrap_or_else(|_| raw.as_bytes().to_vec());
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &key_bytes);
    let mut ctx = aws_lc_rs::hmac::Context::with_key(&key);
    ctx.update(id.as_bytes());
    ctx.update(b".");
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(ctx.sign().as_ref())
    )
}

/// The `webhook-signature` header value: the current secret's signature, then the previous
/// secret's while `now_ms < previous_until_ms`, space-separated.
pub fn signature_header(s: &Secrets, id: &str, timestamp: i64, body: &[u8], now_ms: i64) -> String {
    let mut out = sign(&s.current, id, timestamp, body);
    if let (Some(p), Some(until)) = (&s.previous, s.previous_until_ms)
        && now_ms < until
    {
        out.push(' ');
        out.push_str(&sign(p, id, timestamp, body));
    }
    out
}

/// Retry delay after `attempt` (≥ 1) failed attempts, ms: `d = min(base · 2^(attempt−1), max)`,
/// then a random value in `[d/2, d]` (jitter spreads retries of many receivers).
pub fn backoff_ms(cfg: &WebhooksConfig, attempt: i32) -> i64 {
    let exp = u32::try_from(attempt.saturating_sub(1))
        .unwrap_or(0)
        .min(30);
    let d = cfg
        .backoff_base_ms
        .saturating_mul(1u64 << exp)
        .min(cfg.backoff_max_ms)
        .max(1);
    let half = d / 2;
    let jitter = rand_core::OsRng.next_u64() % (d - half + 1);
    i64::try_from(half + jitter).unwrap_or(i64::MAX)
}

/// The event body `{type, version, id, timestamp, data}` (id `evt_<uuidv7>`, RFC 3339 UTC ms).
pub fn event_body(event_type: &str, data: Value, now_ms: i64) -> Value {
    json!({
        "type": event_type,
        "version": EVENT_VERSION,
        "id": format!("evt_{}", uuid::Uuid::now_v7().simple()),
        "timestamp": crate::api::rfc3339(now_ms),
        "data": data,
    })
}

/// The deliveries of event `event_type` with `data` to every active webhook subscription of
/// `integration` (tenant `tenant`) that selects the type (INT-5.1-1): one row per subscription,
/// all with the same body; `data` gets `integration_id`. Empty when nobody subscribes. Errors:
/// the store is unreachable.
pub async fn rows_for(
    store: &Store,
    tenant: &str,
    integration: &str,
    event_type: &str,
    mut data: Value,
    now_ms: i64,
) -> Result<Vec<WebhookRow>, StoreError> {
    let subs = store.documents(DocKind::Webhook, Some(tenant)).await?;
    data["integration_id"] = json!(integration);
    let body = event_body(event_type, data, now_ms);
    let event_id = body["id"].as_str().unwrap_or_default().to_owned();
    let payload = body.to_string();
    Ok(subs
        .iter()
        .filter(|d| d.status.as_deref().is_none_or(|s| s == "active"))
        .filter_map(|d| serde_json::from_str::<Value>(&d.doc).ok().map(|v| (d, v)))
        .filter(|(_, v)| v["integration_id"] == json!(integration))
        .filter(|(_, v)| {
            v["events"]
                .as_array()
                .is_some_and(|e| e.iter().any(|e| e == event_type))
        })
        .map(|(d, _)| WebhookRow {
            id: uuid::Uuid::now_v7().to_string(),
            dedup_key: format!("webhook:{event_id}:{}", d.id),
            tenant_id: tenant.to_owned(),
            integration_id: integration.to_owned(),
            target: d.id.clone(),
            event_type: event_type.to_owned(),
            payload: payload.clone(),
            status: "pending".into(),
            reason: None,
            attempts: 0,
            attempt_base: 0,
            next_attempt_ms: now_ms,
            created_ms: now_ms,
            updated_ms: now_ms,
        })
        .collect())
}

/// [`rows_for`] for an integration state change (`integration.state_changed`, INT-5.1-1),
/// for [`Store::write_documents_with`]. A store error is logged and yields no rows: the change
/// goes ahead without its event rather than failing.
pub async fn state_changed_rows(
    store: &Store,
    tenant: &str,
    integration: &str,
    data: Value,
) -> Vec<WebhookRow> {
    match rows_for(
        store,
        tenant,
        integration,
        "integration.state_changed",
        data,
        crate::api::now_ms(),
    )
    .await
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, integration_id = %integration, "webhook subscriptions unreadable; state change not announced");
            Vec::new()
        }
    }
}

/// Queues event `event_type` ([`rows_for`]) in its own transaction, for changes committed
/// elsewhere (consent withdrawal). Returns how many deliveries were queued. Errors: the store
/// is unreachable (nothing queued).
pub async fn enqueue(
    store: &Store,
    tenant: &str,
    integration: &str,
    event_type: &str,
    data: Value,
    now_ms: i64,
) -> Result<u64, StoreError> {
    let rows = rows_for(store, tenant, integration, event_type, data, now_ms).await?;
    let n = store.webhook_enqueue(&rows).await?;
    count_events(event_type, n);
    Ok(n)
}

/// Counts queued events (`scp_pep_webhook_events_total{type}`).
pub fn count_events(event_type: &str, n: u64) {
    if n > 0 {
        metrics::counter!("scp_pep_webhook_events_total", "type" => event_type.to_owned())
            .increment(n);
    }
}

/// [`enqueue`] for code paths that have committed their change already: a store error is logged
/// (the event is lost, the change stands).
pub async fn emit(store: &Store, tenant: &str, integration: &str, event_type: &str, data: Value) {
    if let Err(e) = enqueue(
        store,
        tenant,
        integration,
        event_type,
        data,
        crate::api::now_ms(),
    )
    .await
    {
        tracing::error!(error = %e, integration_id = %integration, event.kind = %event_type, "webhook event not queued");
    }
}

/// The result of one HTTP call.
struct Sent {
    http_status: Option<i32>,
    latency_ms: Option<i64>,
    /// `None`: 2xx.
    error_class: Option<&'static str>,
}

impl Sent {
    /// Counts toward the circuit: 5xx, timeouts, connection failures.
    fn trips(&self) -> bool {
        matches!(self.error_class, Some("http_5xx" | "timeout" | "connect"))
    }
}

/// Delivers due webhook rows (see the module docs).
pub struct Deliverer {
    store: Store,
    audit: Option<Arc<AuditLog>>,
    /// The policy engine: tenant settings and the reload after a circuit action (`None`:
    /// restrict, and the change feed reloads).
    engine: Option<Arc<Engine>>,
    audience: String,
    cfg: WebhooksConfig,
    allow_loopback: bool,
    http: reqwest::Client,
}

impl Deliverer {
    /// A deliverer over `store`. `allow_loopback`: `admin.webhook_allow_http_loopback`. Errors:
    /// the HTTP client cannot be built (TLS set-up).
    pub fn new(
        store: Store,
        audit: Option<Arc<AuditLog>>,
        engine: Option<Arc<Engine>>,
        audience: String,
        cfg: WebhooksConfig,
        allow_loopback: bool,
    ) -> Result<Deliverer, reqwest::Error> {
        let timeout = Duration::from_millis(cfg.timeout_ms.max(1));
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(timeout)
            .connect_timeout(timeout)
            .dns_resolver(guard::GuardedResolver::shared(allow_loopback))
            .user_agent(concat!("scp-pep-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Deliverer {
            store,
            audit,
            engine,
            audience,
            cfg,
            allow_loopback,
            http,
        })
    }

    /// One delivery pass at `now_ms` (Unix ms): up to `limit` due rows, each claimed, sent and
    /// recorded (see the module docs). Returns how many rows were read. Errors: the store is
    /// unreachable (a claimed row is retried after its lease).
    pub async fn pass(&self, now_ms: i64, limit: i64) -> Result<usize, StoreError> {
        let due = self.store.webhook_due(now_ms, limit).await?;
        // `concurrency` deliveries at a time (the futures are collected first, so the pass
        // stays `Send`).
        for chunk in due.chunks(self.cfg.concurrency.max(1)) {
            let futs: Vec<_> = chunk
                .iter()
                .map(|row| self.claim_and_deliver(row, now_ms))
                .collect();
            for r in futures_util::future::join_all(futs).await {
                r?;
            }
        }
        Ok(due.len())
    }

    async fn claim_and_deliver(&self, row: &WebhookRow, now_ms: i64) -> Result<(), StoreError> {
        let claimed_ms = crate::api::now_ms().max(now_ms);
        let won = self
            .store
            .consent_outbox_claim(
                &row.id,
                row.attempts,
                claimed_ms + CLAIM_LEASE_MS,
                claimed_ms,
            )
            .await
            .map_err(|e| match e {
                crate::consent::store::ConsentStoreError::Store(s) => s,
                other => StoreError::Database(sqlx::Error::Protocol(other.to_string())),
            })?;
        if won {
            self.deliver_one(row, row.attempts + 1).await?;
        }
        Ok(())
    }

    async fn deliver_one(&self, row: &WebhookRow, attempt: i32) -> Result<(), StoreError> {
        let sub = self.store.document(DocKind::Webhook, &row.target).await?;
        let url = sub
            .as_ref()
            .filter(|d| d.status.as_deref().is_none_or(|s| s == "active"))
            .and_then(|d| serde_json::from_str::<Value>(&d.doc).ok())
            .and_then(|v| v["url"].as_str().and_then(|u| reqwest::Url::parse(u).ok()));
        let sent = match url {
            None => Sent {
                http_status: None,
                latency_ms: None,
                error_class: Some("subscription_gone"),
            },
            Some(url) => match self.store.webhook_secrets(&row.target).await? {
                None => Sent {
                    http_status: None,
                    latency_ms: None,
                    error_class: Some("no_secret"),
                },
                Some(secrets) => self.send(row, &url, &secrets).await,
            },
        };
        let now_ms = crate::api::now_ms();
        let max = i32::try_from(self.cfg.max_attempts.max(1)).unwrap_or(i32::MAX);
        let terminal = matches!(
            sent.error_class,
            Some("subscription_gone" | "no_secret" | "destination_refused")
        );
        let (next_status, reason, next_ms) = match sent.error_class {
            None => ("sent", None, now_ms),
            Some(c) if terminal => ("failed", Some(c), now_ms),
            Some(_) if attempt - row.attempt_base >= max => {
                ("failed", Some("max_attempts"), now_ms)
            }
            Some(_) => (
                "pending",
                None,
                now_ms + backoff_ms(&self.cfg, attempt - row.attempt_base),
            ),
        };
        self.store
            .webhook_record_attempt(&WebhookOutcome {
                outbox_id: &row.id,
                attempt,
                sent: sent.error_class.is_none(),
                http_status: sent.http_status,
                latency_ms: sent.latency_ms,
                error_class: sent.error_class,
                next_status,
                reason,
                next_attempt_ms: next_ms,
                now_ms,
            })
            .await?;
        let outcome = match next_status {
            "sent" => "sent",
            "failed" => "dead_letter",
            _ => "retry",
        };
        metrics::counter!("scp_pep_webhook_deliveries_total", "outcome" => outcome).increment(1);
        if let Some(c) = sent.error_class {
            tracing::warn!(
                webhook.subscription = %row.target,
                integration_id = %row.integration_id,
                webhook.delivery = %row.id,
                attempt,
                http_status = sent.http_status,
                latency_ms = sent.latency_ms,
                error_class = c,
                outcome,
                "webhook delivery failed (EXT-4.3-2)"
            );
        }
        if sent.error_class.is_none() || sent.trips() {
            self.circuit(row, sent.trips(), now_ms).await?;
        }
        Ok(())
    }

    /// One signed POST; the answer's body is read up to the cap and dropped.
    async fn send(&self, row: &WebhookRow, url: &reqwest::Url, secrets: &Secrets) -> Sent {
        let refused = Sent {
            http_status: None,
            latency_ms: None,
            error_class: Some("destination_refused"),
        };
        if guard::check_url(url, self.allow_loopback).is_err() {
            return refused;
        }
        if guard::literal(url).is_none() {
            let host = url.host_str().unwrap_or_default();
            let port = url.port_or_known_default().unwrap_or(443);
            if guard::resolve(host, port, self.allow_loopback)
                .await
                .is_err()
            {
                return refused;
            }
        }
        let now_ms = crate::api::now_ms();
        let ts = now_ms / 1000;
        let body = row.payload.as_bytes();
        let sig = signature_header(secrets, &row.id, ts, body, now_ms);
        let start = Instant::now();
        let res = self
            .http
            .post(url.clone())
            .header("content-type", "application/json")
            .header("webhook-id", &row.id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", sig)
            .header("idempotency-key", &row.id)
            .body(row.payload.clone())
            .send()
            .await;
        let latency = i64::try_from(start.elapsed().as_millis()).unwrap_or(i64::MAX);
        match res {
            Err(e) => Sent {
                http_status: None,
                latency_ms: Some(latency),
                error_class: Some(if e.is_timeout() {
                    "timeout"
                } else if e.is_connect() {
                    "connect"
                } else {
                    "request"
                }),
            },
            Ok(mut resp) => {
                let status = resp.status().as_u16();
                // Read at most the cap, then drop the rest (and the connection with it).
                let mut read = 0usize;
                while read < self.cfg.max_response_bytes {
                    match resp.chunk().await {
                        Ok(Some(c)) => read += c.len(),
                        _ => break,
                    }
                }
                drop(resp);
                Sent {
                    http_status: Some(i32::from(status)),
                    latency_ms: Some(latency),
                    error_class: match status {
                        200..=299 => None,
                        300..=399 => Some("http_3xx"),
                        400..=499 => Some("http_4xx"),
                        _ => Some("http_5xx"),
                    },
                }
            }
        }
    }

    /// Moves the subscription's circuit (ONB-LOG-01): degrade at `degrade_after`, act at
    /// `act_after` consecutive failures.
    async fn circuit(&self, row: &WebhookRow, failed: bool, now_ms: i64) -> Result<(), StoreError> {
        let n = self
            .store
            .webhook_circuit(&row.target, &row.integration_id, failed, now_ms)
            .await?;
        if !failed {
            return Ok(());
        }
        if n == i64::from(self.cfg.degrade_after.max(1)) {
            self.store
                .webhook_degrade(&row.integration_id, now_ms)
                .await?;
            tracing::warn!(
                integration_id = %row.integration_id,
                webhook.subscription = %row.target,
                consecutive_failures = n,
                "integration degraded: consecutive webhook failures (ONB-LOG-01)"
            );
            if let Some(a) = &self.audit
                && let Err(e) = a
                    .record_event(
                        &AuditEvent::new(
                            RecordKind::AdminChange,
                            Some(&row.tenant_id),
                            json!({"action": "integration.webhook_degraded", "via": "webhooks",
                                   "subscription_id": row.target, "consecutive_failures": n}),
                        )
                        .actor("webhooks")
                        .subject(row.integration_id.clone()),
                    )
                    .await
            {
                tracing::error!(error = %e, integration_id = %row.integration_id, "degradation not audited");
            }
        }
        if n >= i64::from(self.cfg.act_after.max(1)) {
            match crate::admin::integrations::circuit_act(
                &self.store,
                self.audit.as_deref(),
                self.engine.as_deref(),
                &row.integration_id,
                &row.target,
                n,
            )
            .await
            {
                Ok(Some(to)) => {
                    tracing::warn!(
                        integration_id = %row.integration_id,
                        webhook.subscription = %row.target,
                        consecutive_failures = n,
                        to,
                        "integration restricted by the webhook circuit (ONB-LOG-01)"
                    );
                    if let Some(engine) = &self.engine
                        && let Err(e) =
                            crate::feed::reload(&self.store, engine, &self.audience).await
                    {
                        tracing::error!(error = %e, "policy reload after a circuit action failed; the change feed retries");
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(error = %e, integration_id = %row.integration_id, "circuit action failed; the next failure retries")
                }
            }
        }
        Ok(())
    }
}

/// Delivers every `webhooks.interval_ms` until `stop` turns true; keeps the gauge
/// `scp_pep_webhook_outbox_pending` and the counters `scp_pep_webhook_deliveries_total{outcome}`
/// and `scp_pep_webhook_events_total{type}`. Store errors are logged and retried on the next
/// tick.
pub async fn run(d: Arc<Deliverer>, mut stop: watch::Receiver<bool>) {
    let every = Duration::from_millis(d.cfg.interval_ms.max(10));
    let pending = metrics::gauge!("scp_pep_webhook_outbox_pending");
    loop {
        let pass = async {
            for _ in 0..50 {
                match d.pass(crate::api::now_ms(), BATCH).await {
                    Ok(n) if n as i64 == BATCH => {}
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "webhook delivery pass failed");
                        break;
                    }
                }
            }
            if let Ok(n) = d.store.webhook_pending().await {
                pending.set(n as f64);
            }
        };
        tokio::select! {
            _ = pass => {}
            _ = stop.wait_for(|v| *v) => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|v| *v) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // EXT-4.3-2: the delay doubles, is capped, and its jitter stays in [d/2, d].
    #[test]
    fn backoff_with_jitter() {
        let cfg = WebhooksConfig {
            backoff_base_ms: 1000,
            backoff_max_ms: 8000,
            ..WebhooksConfig::default()
        };
        for _ in 0..100 {
            let b1 = backoff_ms(&cfg, 1);
            assert!((500..=1000).contains(&b1), "{b1}");
            let b3 = backoff_ms(&cfg, 3);
            assert!((2000..=4000).contains(&b3), "{b3}");
            let b9 = backoff_ms(&cfg, 40);
            assert!((4000..=8000).contains(&b9), "{b9}");
        }
    }

    // EXT-5.1-1: both signatures during the overlap, one after it.
    #[test]
    fn overlap_signs_twice() {
        let s = Secrets {
            current: new_secret(),
            previous: Some(new_secret()),
            previous_until_ms: Some(2_000),
        };
        let h = signature_header(&s, "m", 1, b"{}", 1_000);
        assert_eq!(h.split(' ').count(), 2);
        assert!(h.starts_with(&sign(&s.current, "m", 1, b"{}")));
        let h = signature_header(&s, "m", 1, b"{}", 2_000);
        assert_eq!(h.split(' ').count(), 1);
        assert!(new_secret().starts_with("whsec_"));
    }
}
