//! Consent notification outbox tests (CON-33, CON-34, CON-36): the scanner and the delivery pass
//! against a real HTTP receiver on loopback, every body on SQLite and on PostgreSQL (a fresh
//! database on the local server; the test fails, never skips, when PostgreSQL is unreachable).
//! Time is a `ManualClock` moved across each boundary at the millisecond.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use scp_pep::consent::model::{CaptureMode, Change, ConsentVersion, DAY_MS, Recorded, grace_until};
use scp_pep::consent::notify::{HttpSender, deliver, scan};
use scp_pep::consent::store::OutboxRow;
use scp_pep::consent::{ConsentConfig, Consents, ManualClock, PersonRecord};
use scp_pep::policy::Tenant;
use scp_pep::policy::snapshot::TenantEntry;
use scp_pep::store::Store;
use serde_json::Value;

on_both_stores!(
    default_schedule_boundaries,
    tenant_schedule_override,
    catch_up_sends_only_the_nearest_reminder,
    every_channel_gets_a_row_and_is_sent,
    no_channel_is_suppressed_and_logged,
    inactive_and_archived_persons_are_suppressed,
    failures_are_logged_retried_with_backoff_then_failed,
    case_suspension_is_delivered,
    deliveries_are_append_only,
    claim_is_exclusive,
    run_scans_and_delivers,
    run_without_url_queues_but_keeps_pending,
);

/// 2026-01-01T00:00:00Z.
const T0: i64 = 1_767_225_600_000;

/// A receiver of notifications: records bodies and `Idempotency-Key` headers, answers `status`.
#[derive(Clone, Default)]
struct Receiver {
    bodies: Arc<Mutex<Vec<Value>>>,
    keys: Arc<Mutex<Vec<String>>>,
    status: Arc<AtomicU16>,
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: String) -> StatusCode {
    r.bodies
        .lock()
        .unwrap()
        .push(serde_json::from_str(&body).unwrap());
    if let Some(k) = headers.get("idempotency-key") {
        r.keys.lock().unwrap().push(k.to_str().unwrap().to_owned());
    }
    StatusCode::from_u16(r.status.load(Ordering::SeqCst)).unwrap()
}

impl Receiver {
    /// Starts on 127.0.0.1:0; returns the receiver and its URL.
    async fn start() -> (Receiver, String) {
        let r = Receiver::default();
        r.status.store(200, Ordering::SeqCst);
        let app = Router::new()
            .route("/notify", post(receive))
            .with_state(r.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (r, format!("http://{addr}/notify"))
    }

    fn bodies(&self) -> Vec<Value> {
        self.bodies.lock().unwrap().clone()
    }

    fn answer(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }
}

struct Env {
    store: Store,
    consents: Arc<Consents>,
    clock: Arc<ManualClock>,
    receiver: Receiver,
    sender: HttpSender,
}

impl Env {
    async fn new(url: &str, max_attempts: u32) -> Env {
        let (receiver, notify_url) = Receiver::start().await;
        Env::with(url, max_attempts, receiver, notify_url, 60).await
    }

    async fn with(
        url: &str,
        max_attempts: u32,
        receiver: Receiver,
        notify_url: String,
        interval_s: u64,
    ) -> Env {
        let store = Store::connect(url, 4, Duration::from_secs(5))
            .await
            .unwrap();
        let clock = ManualClock::new(T0);
        let consents = Consents::new(
            store.clone(),
            ConsentConfig {
                notify_url: Some(notify_url.clone()),
                notify_max_attempts: max_attempts,
                notify_interval_s: interval_s,
                ..Default::default()
            },
            clock.clone(),
        );
        Env {
            store,
            consents,
            clock,
            receiver,
            sender: HttpSender::new(&notify_url).unwrap(),
        }
    }

    async fn person(&self, id: &str, status: &str, channels: &[&str]) {
        self.store
            .consent_put_person(&PersonRecord {
                tenant_id: "ke".into(),
                person_id: id.into(),
                verification: "verified".into(),
                status: status.into(),
                channels: channels.iter().map(|c| (*c).to_owned()).collect(),
                updated_ms: T0,
            })
            .await
            .unwrap();
    }

    /// Records an active consent (version 1) of `person` for `vertical`, active until `until`.
    async fn consent(&self, person: &str, vertical: &str, until: i64) -> ConsentVersion {
        let v = ConsentVersion {
            consent_id: uuid::Uuid::now_v7().to_string(),
            version: 1,
            version_id: uuid::Uuid::now_v7().to_string(),
            tenant_id: "ke".into(),
            person_id: person.into(),
            vertical_id: vertical.into(),
            purpose: String::new(),
            status: Recorded::Active,
            active_from_ms: T0 - DAY_MS,
            active_until_ms: Some(until),
            grace_until_ms: grace_until(Some(until), 30),
            capture_mode: CaptureMode::Online,
            evidence_attachment_ids: vec!["att-1".into()],
            verification_document_attachment_id: None,
            identity_verification: None,
            fields: None,
            reason_code: None,
            reason_text: None,
            change: Change::Capture,
            captured_by: "officer-1".into(),
            captured_at_ms: T0 - DAY_MS,
            changed_by: "officer-1".into(),
            changed_at_ms: T0 - DAY_MS,
        };
        self.store.consent_append(&v, T0).await.unwrap();
        v
    }

    async fn scan_at(&self, now: i64, tenants: &HashMap<String, Arc<TenantEntry>>) -> usize {
        self.clock.set(now);
        scan(&self.consents, tenants, self.consents.now_ms())
            .await
            .unwrap()
    }

    async fn deliver_at(&self, now: i64) -> usize {
        self.clock.set(now);
        deliver(&self.consents, &self.sender, self.consents.now_ms(), 100)
            .await
            .unwrap()
    }

    async fn outbox(&self, v: &ConsentVersion) -> Vec<OutboxRow> {
        self.store.consent_outbox_of(&v.consent_id).await.unwrap()
    }
}

fn no_tenants() -> HashMap<String, Arc<TenantEntry>> {
    HashMap::new()
}

fn tenants_with_schedule(days: &[u32]) -> HashMap<String, Arc<TenantEntry>> {
    let tenant: Tenant = serde_json::from_value(serde_json::json!({
        "id": "ke",
        "residency_region": "africa-east",
        "issuer": "https://idp.example/realms/ke",
        "jwks": {"file": "jwks.json"},
        "consent_reminder_days": days,
    }))
    .unwrap();
    HashMap::from([(
        "ke".to_owned(),
        Arc::new(TenantEntry {
            tenant,
            audience: "scp".into(),
        }),
    )])
}

/// `(kind, days_before, channel, status)` of each row.
fn summary(rows: &[OutboxRow]) -> Vec<(String, Option<i32>, String, String)> {
    rows.iter()
        .map(|r| {
            (
                r.kind.clone(),
                r.days_before,
                r.channel.clone(),
                r.status.clone(),
            )
        })
        .collect()
}

fn row(
    kind: &str,
    days: Option<i32>,
    channel: &str,
    status: &str,
) -> (String, Option<i32>, String, String) {
    (kind.into(), days, channel.into(), status.into())
}

/// CON-33: the default schedule 30, 7, 3, 1 days, crossed at the millisecond; the expiry notice
/// at `active_until`; scanning again queues nothing new (dedup).
async fn default_schedule_boundaries(url: String) {
    let env = Env::new(&url, 5).await;
    env.person("p-1", "active", &["email"]).await;
    let until = T0 + 40 * DAY_MS;
    let v = env.consent("p-1", "health", until).await;
    let t = no_tenants();

    assert_eq!(env.scan_at(until - 30 * DAY_MS - 1, &t).await, 0);
    assert!(env.outbox(&v).await.is_empty());
    assert_eq!(env.scan_at(until - 30 * DAY_MS, &t).await, 1);
    assert_eq!(env.scan_at(until - 30 * DAY_MS, &t).await, 0, "dedup");
    assert_eq!(env.scan_at(until - 7 * DAY_MS - 1, &t).await, 0);
    assert_eq!(env.scan_at(until - 7 * DAY_MS, &t).await, 1);
    assert_eq!(env.scan_at(until - 3 * DAY_MS - 1, &t).await, 0);
    assert_eq!(env.scan_at(until - 3 * DAY_MS, &t).await, 1);
    assert_eq!(env.scan_at(until - DAY_MS - 1, &t).await, 0);
    assert_eq!(env.scan_at(until - DAY_MS, &t).await, 1);
    assert_eq!(env.scan_at(until - 1, &t).await, 0);
    assert_eq!(env.scan_at(until, &t).await, 1);
    assert_eq!(env.scan_at(until + 1, &t).await, 0, "dedup");
    let rows = env.outbox(&v).await;
    assert_eq!(
        summary(&rows),
        vec![
            row("reminder", Some(30), "email", "pending"),
            row("reminder", Some(7), "email", "pending"),
            row("reminder", Some(3), "email", "pending"),
            row("reminder", Some(1), "email", "pending"),
            row("expiry", None, "email", "pending"),
        ]
    );
    assert_eq!(
        rows[0].dedup_key,
        format!("reminder:{}:1:30:email", v.consent_id)
    );
    assert_eq!(
        rows[4].dedup_key,
        format!("expiry:{}:1:email", v.consent_id)
    );

    // Delivered in order, each once.
    assert_eq!(env.deliver_at(until + 2).await, 5);
    let bodies = env.receiver.bodies();
    assert_eq!(bodies.len(), 5);
    let expiry = &bodies[4];
    assert_eq!(expiry["kind"], "expiry");
    assert_eq!(expiry["days_before"], Value::Null);
    assert_eq!(bodies[0]["days_before"], 30);
    assert_eq!(env.deliver_at(until + 3).await, 0);
    assert_eq!(env.receiver.bodies().len(), 5);
}

/// CON-33: a tenant's own schedule (10, 2 days) replaces the default, with no umbrella step.
async fn tenant_schedule_override(url: String) {
    let env = Env::new(&url, 5).await;
    env.person("p-1", "active", &["sms"]).await;
    let until = T0 + 40 * DAY_MS;
    let v = env.consent("p-1", "health", until).await;
    let t = tenants_with_schedule(&[10, 2]);

    assert_eq!(env.scan_at(until - 30 * DAY_MS, &t).await, 0);
    assert_eq!(env.scan_at(until - 10 * DAY_MS - 1, &t).await, 0);
    assert_eq!(env.scan_at(until - 10 * DAY_MS, &t).await, 1);
    assert_eq!(env.scan_at(until - 7 * DAY_MS, &t).await, 0);
    assert_eq!(env.scan_at(until - 2 * DAY_MS, &t).await, 1);
    assert_eq!(env.scan_at(until - DAY_MS, &t).await, 0);
    assert_eq!(
        summary(&env.outbox(&v).await),
        vec![
            row("reminder", Some(10), "sms", "pending"),
            row("reminder", Some(2), "sms", "pending"),
        ]
    );
}

/// CON-33: after downtime only the nearest threshold crossed is queued, not every missed one.
async fn catch_up_sends_only_the_nearest_reminder(url: String) {
    let env = Env::new(&url, 5).await;
    env.person("p-1", "active", &["email"]).await;
    let until = T0 + 40 * DAY_MS;
    let v = env.consent("p-1", "health", until).await;
    let t = no_tenants();

    assert_eq!(env.scan_at(until - 2 * DAY_MS, &t).await, 1);
    assert_eq!(
        summary(&env.outbox(&v).await),
        vec![row("reminder", Some(3), "email", "pending")]
    );
    assert_eq!(env.scan_at(until - DAY_MS + 5, &t).await, 1);
    assert_eq!(env.deliver_at(until - DAY_MS + 6).await, 2);
    let days: Vec<_> = env
        .receiver
        .bodies()
        .iter()
        .map(|b| b["days_before"].clone())
        .collect();
    assert_eq!(days, vec![Value::from(3), Value::from(1)]);
}

/// CON-33, CON-34: every channel the person has gets its own row; a 2xx answer marks it `sent`
/// with one `sent` attempt row; the JSON body carries the notice.
async fn every_channel_gets_a_row_and_is_sent(url: String) {
    let env = Env::new(&url, 5).await;
    env.person("p-1", "active", &["email", "sms"]).await;
    let until = T0 + 40 * DAY_MS;
    let v = env.consent("p-1", "health", until).await;
    assert_eq!(env.scan_at(until, &no_tenants()).await, 2);
    assert_eq!(env.deliver_at(until + 1).await, 2);

    let rows = env.outbox(&v).await;
    assert_eq!(
        summary(&rows),
        vec![
            row("expiry", None, "email", "sent"),
            row("expiry", None, "sms", "sent"),
        ]
    );
    for r in &rows {
        assert_eq!(r.attempts, 1);
        let d = env.store.consent_deliveries_of(&r.id).await.unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].attempt, d[0].status.as_str()), (1, "sent"));
        assert_eq!(d[0].error, None);
        assert_eq!(d[0].time_ms, until + 1);
    }
    let bodies = env.receiver.bodies();
    assert_eq!(bodies.len(), 2);
    let b = &bodies[0];
    assert_eq!(b["id"], rows[0].id.as_str());
    assert_eq!(b["kind"], "expiry");
    assert_eq!(b["tenant_id"], "ke");
    assert_eq!(b["person_id"], "p-1");
    assert_eq!(b["consent_id"], v.consent_id.as_str());
    assert_eq!(b["consent_version"], 1);
    assert_eq!(b["vertical_id"], "health");
    assert_eq!(b["channel"], "email");
    assert_eq!(b["active_until"], "2026-02-10T00:00:00.000Z");
    assert_eq!(bodies[1]["channel"], "sms");
    assert_eq!(
        *env.receiver.keys.lock().unwrap(),
        vec![rows[0].id.clone(), rows[1].id.clone()]
    );
}

/// CON-34: no valid contact channel (none recorded, or person unknown to the registry) → one
/// `suppressed` row (`no_valid_channel`, channel `none`) logs it; nothing is sent.
async fn no_channel_is_suppressed_and_logged(url: String) {
    let env = Env::new(&url, 5).await;
    env.person("p-1", "active", &[]).await;
    let until = T0 + 40 * DAY_MS;
    let v1 = env.consent("p-1", "health", until).await;
    let v2 = env.consent("p-unknown", "health", until).await;
    assert_eq!(env.scan_at(until - 30 * DAY_MS, &no_tenants()).await, 2);
    assert_eq!(env.scan_at(until - 30 * DAY_MS, &no_tenants()).await, 0);
    assert_eq!(env.deliver_at(until - 30 * DAY_MS + 1).await, 0);
    for v in [&v1, &v2] {
        let rows = env.outbox(v).await;
        assert_eq!(
            summary(&rows),
            vec![row("reminder", Some(30), "none", "suppressed")]
        );
        assert_eq!(rows[0].reason.as_deref(), Some("no_valid_channel"));
        assert!(
            env.store
                .consent_deliveries_of(&rows[0].id)
                .await
                .unwrap()
                .is_empty()
        );
    }
    assert!(env.receiver.bodies().is_empty());
}

/// CON-34: no reminders or expiry notices for inactive or archived persons: suppressed, logged,
/// never sent.
async fn inactive_and_archived_persons_are_suppressed(url: String) {
    let env = Env::new(&url, 5).await;
    env.person("p-in", "inactive", &["email", "sms"]).await;
    env.person("p-ar", "archived", &["email"]).await;
    let until = T0 + 40 * DAY_MS;
    let vi = env.consent("p-in", "health", until).await;
    let va = env.consent("p-ar", "health", until).await;
    assert_eq!(env.scan_at(until - 7 * DAY_MS, &no_tenants()).await, 2);
    assert_eq!(env.scan_at(until, &no_tenants()).await, 2);
    assert_eq!(env.deliver_at(until + 1).await, 0);
    for (v, reason) in [(&vi, "person_inactive"), (&va, "person_archived")] {
        let rows = env.outbox(v).await;
        assert_eq!(
            summary(&rows),
            vec![
                row("reminder", Some(7), "none", "suppressed"),
                row("expiry", None, "none", "suppressed"),
            ]
        );
        assert!(rows.iter().all(|r| r.reason.as_deref() == Some(reason)));
    }
    assert!(env.receiver.bodies().is_empty());
}

/// CON-34: a receiver answering 500 → each attempt logged separately as `failed`, the row retried
/// after 30 s then 60 s (not before), and `failed` after `notify_max_attempts` (3); nothing is
/// retried after that.
async fn failures_are_logged_retried_with_backoff_then_failed(url: String) {
    let env = Env::new(&url, 3).await;
    env.receiver.answer(500);
    env.person("p-1", "active", &["email"]).await;
    let until = T0 + 40 * DAY_MS;
    let v = env.consent("p-1", "health", until).await;
    let t1 = until - 30 * DAY_MS;
    assert_eq!(env.scan_at(t1, &no_tenants()).await, 1);

    assert_eq!(env.deliver_at(t1).await, 1);
    let r = &env.outbox(&v).await[0];
    assert_eq!((r.status.as_str(), r.attempts), ("pending", 1));
    assert_eq!(r.next_attempt_ms, t1 + 30_000);
    assert_eq!(env.deliver_at(t1 + 29_999).await, 0);

    let t2 = t1 + 30_000;
    assert_eq!(env.deliver_at(t2).await, 1);
    let r = &env.outbox(&v).await[0];
    assert_eq!((r.status.as_str(), r.attempts), ("pending", 2));
    assert_eq!(r.next_attempt_ms, t2 + 60_000);
    assert_eq!(env.deliver_at(t2 + 59_999).await, 0);

    let t3 = t2 + 60_000;
    assert_eq!(env.deliver_at(t3).await, 1);
    let r = env.outbox(&v).await[0].clone();
    assert_eq!((r.status.as_str(), r.attempts), ("failed", 3));
    assert_eq!(r.reason.as_deref(), Some("max_attempts"));

    let d = env.store.consent_deliveries_of(&r.id).await.unwrap();
    assert_eq!(d.len(), 3);
    for (i, (a, at)) in d.iter().zip([t1, t2, t3]).enumerate() {
        assert_eq!(a.attempt, i as i32 + 1);
        assert_eq!(a.status, "failed");
        assert_eq!(a.error.as_deref(), Some("receiver answered HTTP 500"));
        assert_eq!(a.time_ms, at);
    }
    assert_eq!(env.receiver.bodies().len(), 3);

    env.receiver.answer(200);
    assert_eq!(env.deliver_at(t3 + 10 * DAY_MS).await, 0);
    assert_eq!(env.receiver.bodies().len(), 3);
}

/// CON-36: the case-suspension event a withdrawal queues (channel `core`) is delivered by the
/// same sender, logged as `sent`.
async fn case_suspension_is_delivered(url: String) {
    let env = Env::new(&url, 5).await;
    let v = env.consent("p-1", "health", T0 + 40 * DAY_MS).await;
    let mut w = v.clone();
    w.version = 2;
    w.version_id = uuid::Uuid::now_v7().to_string();
    w.status = Recorded::Withdrawn;
    w.change = Change::Withdraw;
    w.reason_code = Some("USER_REQUEST".into());
    w.changed_at_ms = T0;
    env.store.consent_append(&w, T0).await.unwrap();
    let n = env
        .store
        .consent_outbox_insert(&[OutboxRow::case_suspension(&w, T0)])
        .await
        .unwrap();
    assert_eq!(n, 1);
    // A withdrawn head gets no reminder.
    assert_eq!(env.scan_at(T0 + 10 * DAY_MS, &no_tenants()).await, 0);

    assert_eq!(env.deliver_at(T0 + 10 * DAY_MS).await, 1);
    let rows = env.outbox(&v).await;
    assert_eq!(
        summary(&rows),
        vec![row("case_suspension", None, "core", "sent")]
    );
    let d = env.store.consent_deliveries_of(&rows[0].id).await.unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].status, "sent");
    let bodies = env.receiver.bodies();
    assert_eq!(bodies.len(), 1);
    assert_eq!(bodies[0]["kind"], "case_suspension");
    assert_eq!(bodies[0]["channel"], "core");
    assert_eq!(bodies[0]["consent_version"], 2);
    assert_eq!(bodies[0]["vertical_id"], "health");
}

/// CON-34: `outbox_attempts` (formerly `consent_deliveries`) is append-only: UPDATE and DELETE are refused by the store.
async fn deliveries_are_append_only(url: String) {
    let env = Env::new(&url, 5).await;
    env.person("p-1", "active", &["email"]).await;
    let until = T0 + 40 * DAY_MS;
    let v = env.consent("p-1", "health", until).await;
    env.scan_at(until, &no_tenants()).await;
    assert_eq!(env.deliver_at(until).await, 1);
    let id = env.outbox(&v).await[0].id.clone();

    const UPDATE: &str = "UPDATE outbox_attempts SET status = 'failed' WHERE outbox_id = $1";
    const DELETE: &str = "DELETE FROM outbox_attempts WHERE outbox_id = $1";
    for sql in [UPDATE, DELETE] {
        let refused = match &env.store {
            Store::Sqlite(p) => sqlx::query(sql).bind(&id).execute(p).await.is_err(),
            Store::Postgres(p) => sqlx::query(sql).bind(&id).execute(p).await.is_err(),
        };
        assert!(refused, "`{sql}` must be refused");
    }
    let d = env.store.consent_deliveries_of(&id).await.unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].status, "sent");
}

/// CON-34: the claim is a conditional update: of two replicas reading the same due row, only one
/// may send the attempt; a claimed row is left alone for its lease.
async fn claim_is_exclusive(url: String) {
    let env = Env::new(&url, 5).await;
    env.person("p-1", "active", &["email"]).await;
    let until = T0 + 40 * DAY_MS;
    let v = env.consent("p-1", "health", until).await;
    env.scan_at(until, &no_tenants()).await;
    let r = env.outbox(&v).await[0].clone();
    let claim = |s: Store, id: String| async move {
        s.consent_outbox_claim(&id, 0, until + 60_000, until)
            .await
            .unwrap()
    };
    let (a, b) = tokio::join!(
        claim(env.store.clone(), r.id.clone()),
        claim(env.store.clone(), r.id.clone())
    );
    assert!(a ^ b, "exactly one claim wins: {a} {b}");
    // Claimed: not due again before the lease ends (a replica dying mid-send is retried after it).
    assert_eq!(env.deliver_at(until + 59_999).await, 0);
    assert_eq!(env.deliver_at(until + 60_000).await, 1);
    let r = env.outbox(&v).await[0].clone();
    assert_eq!((r.status.as_str(), r.attempts), ("sent", 2));
    let d = env.store.consent_deliveries_of(&r.id).await.unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].attempt, 2);
}

/// CON-33, CON-34: the background task scans and delivers on its own every `notify_interval_s`
/// and stops when told.
async fn run_scans_and_delivers(url: String) {
    let (receiver, notify_url) = Receiver::start().await;
    let env = Env::with(&url, 5, receiver, notify_url, 1).await;
    env.person("p-1", "active", &["email", "sms"]).await;
    let until = T0 + 2 * DAY_MS;
    let v = env.consent("p-1", "health", until).await;
    let slot: scp_pep::pipeline::SnapshotSlot = Arc::new(arc_swap::ArcSwap::from_pointee(None));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(scp_pep::consent::notify::run(
        env.consents.clone(),
        slot,
        stop_rx,
    ));
    // Wait until both deliveries are marked sent, not merely received: the receiver answers
    // before the task records the attempt, and a stop in between leaves the row to the next
    // lease (at-least-once), which is not what this test is about.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while env.receiver.bodies().len() < 2 || env.outbox(&v).await.iter().any(|r| r.status != "sent")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "run did not deliver both notices"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
    let rows = env.outbox(&v).await;
    assert_eq!(
        summary(&rows),
        vec![
            row("reminder", Some(3), "email", "sent"),
            row("reminder", Some(3), "sms", "sent"),
        ]
    );
}

/// CON-33: without `notify_url` the task still queues notices, which stay `pending` (nothing is
/// lost; they go out once a URL is configured).
async fn run_without_url_queues_but_keeps_pending(url: String) {
    let store = Store::connect(&url, 4, Duration::from_secs(5))
        .await
        .unwrap();
    let clock = ManualClock::new(T0);
    let consents = Consents::new(
        store.clone(),
        ConsentConfig {
            notify_interval_s: 1,
            ..Default::default()
        },
        clock,
    );
    let env = Env::new(&url, 5).await;
    env.person("p-1", "active", &["email"]).await;
    let v = env.consent("p-1", "health", T0 + 2 * DAY_MS).await;
    let slot: scp_pep::pipeline::SnapshotSlot = Arc::new(arc_swap::ArcSwap::from_pointee(None));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(scp_pep::consent::notify::run(consents, slot, stop_rx));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while store.consent_outbox_pending().await.unwrap() < 1 {
        assert!(tokio::time::Instant::now() < deadline, "run queued nothing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        summary(&env.outbox(&v).await),
        vec![row("reminder", Some(3), "email", "pending")]
    );
    assert!(env.receiver.bodies().is_empty());
}
