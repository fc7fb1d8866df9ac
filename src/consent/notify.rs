//! Consent notifications on a durable outbox (CON-33, CON-34, CON-36).
//!
//! Two passes, each safe to run on every replica at once:
//!
//! - [`scan`] reads active heads whose `active_until` is near and queues, per consent version,
//!   the reminder of the nearest reminder day already crossed (CON-33; after downtime only that
//!   one, never a burst of older ones) or, from `active_until` on, the expiry notice — one row per
//!   contact channel the person has. A person without a valid channel, or inactive or archived,
//!   gets one `suppressed` row instead, which is the log of the suppression (CON-34). The
//!   outbox's `dedup_key` makes a notice queue once, whichever replica scans first.
//! - [`deliver`] claims due `pending` rows with a conditional update (one replica per attempt),
//!   sends them through a [`NotificationSender`] and logs every attempt in the append-only
//!   `outbox_attempts` (`sent` / `failed`, CON-34), retrying with exponential backoff up to
//!   `notify_max_attempts`. Case suspensions queued by the API on withdrawal (CON-36) go the same
//!   way.
//!
//! [`run`] does both every `notify_interval_s`. Delivery is at least once: a replica that dies
//! between the send and its record sends that attempt again after the claim lease; receivers
//! dedupe on the notification `id` (also sent as `Idempotency-Key`).
//!
//! Logs never carry a person id, only [`Consents::person_ref`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::Consents;
use super::model::{DAY_MS, DEFAULT_REMINDER_DAYS};
use super::store::{AttemptRecord, ConsentStoreError, ExpiringHead, OutboxRow, PersonRecord};
use crate::pipeline::SnapshotSlot;
use crate::policy::Tenant;
use crate::policy::snapshot::TenantEntry;

/// Contact channel kinds a notification can go out on (CON-33).
pub const CHANNELS: [&str; 2] = ["email", "sms"];

/// Heads read per scan query.
const SCAN_PAGE: i64 = 500;
/// Rows claimed per delivery query in [`run`].
const DELIVER_BATCH: i64 = 200;
/// How long a claimed row is left alone before another replica may retry it, ms (longer than
/// [`SEND_TIMEOUT`]).
const CLAIM_LEASE_MS: i64 = 60_000;
/// Timeout of one HTTP delivery.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// First retry delay, ms.
const BACKOFF_BASE_MS: i64 = 30_000;
/// Longest retry delay, ms.
const BACKOFF_MAX_MS: i64 = 3_600_000;
/// Longest error text kept per attempt, bytes.
const MAX_ERROR_LEN: usize = 500;

/// A notice due for one consent version at an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// The reminder `days` before `active_until`.
    Reminder(u32),
    /// The expiry notice (`now >= active_until`).
    Expiry,
}

/// The reminder days of a tenant, ascending, without duplicates or zero: its
/// `consent_reminder_days`, else [`DEFAULT_REMINDER_DAYS`] (CON-33; tenants change it without
/// umbrella approval). An empty list turns reminders off (expiry notices still go out).
pub fn reminder_schedule(tenant: Option<&Tenant>) -> Vec<u32> {
    let mut days: Vec<u32> = match tenant.and_then(|t| t.consent_reminder_days.as_ref()) {
        Some(d) => d.clone(),
        None => DEFAULT_REMINDER_DAYS.to_vec(),
    };
    days.retain(|d| *d > 0);
    days.sort_unstable();
    days.dedup();
    days
}

/// The notice due at `now_ms` for a consent active until `active_until_ms` (both Unix ms) under
/// `schedule` (days, ascending, as [`reminder_schedule`] gives):
///
/// - `now >= active_until` → [`Due::Expiry`];
/// - else the smallest `d` with `active_until - d days <= now` → [`Due::Reminder(d)`] (only the
///   nearest threshold crossed, so catching up after downtime sends one reminder, not four);
/// - else `None` (no threshold crossed yet).
pub fn due_notice(schedule: &[u32], active_until_ms: i64, now_ms: i64) -> Option<Due> {
    if now_ms >= active_until_ms {
        return Some(Due::Expiry);
    }
    schedule
        .iter()
        .copied()
        .find(|d| active_until_ms.saturating_sub(i64::from(*d) * DAY_MS) <= now_ms)
        .map(Due::Reminder)
}

/// Delay before retrying a row after `attempts` (≥ 1) failed attempts, ms:
/// `min(30 s · 2^(attempts − 1), 1 h)` — 30 s, 60 s, 120 s, … , 1 h.
pub fn backoff_ms(attempts: i32) -> i64 {
    let exp = u32::try_from(attempts.saturating_sub(1))
        .unwrap_or(0)
        .min(20);
    (BACKOFF_BASE_MS << exp).min(BACKOFF_MAX_MS)
}

/// The outbox rows of one due notice (CON-33, CON-34): one `pending` row per valid channel of an
/// active person; otherwise one `suppressed` row on channel `none` with reason
/// `no_valid_channel` (person unknown, or no `email`/`sms` channel), `person_inactive` or
/// `person_archived`. A suppression uses channel `none` so a person reactivated before the next
/// notice still gets it.
fn notice_rows(
    head: &ExpiringHead,
    due: Due,
    person: Option<&PersonRecord>,
    now_ms: i64,
) -> Vec<OutboxRow> {
    let (kind, days_before, key_prefix) = match due {
        Due::Reminder(d) => (
            "reminder",
            Some(i32::try_from(d).unwrap_or(i32::MAX)),
            format!("reminder:{}:{}:{d}", head.consent_id, head.version),
        ),
        Due::Expiry => (
            "expiry",
            None,
            format!("expiry:{}:{}", head.consent_id, head.version),
        ),
    };
    let row = |channel: &str, status: &str, reason: Option<&str>| OutboxRow {
        id: uuid::Uuid::now_v7().to_string(),
        dedup_key: format!("{key_prefix}:{channel}"),
        tenant_id: head.tenant_id.clone(),
        person_id: head.person_id.clone(),
        consent_id: head.consent_id.clone(),
        consent_version: head.version,
        vertical_id: head.vertical_id.clone(),
        kind: kind.to_owned(),
        days_before,
        channel: channel.to_owned(),
        status: status.to_owned(),
        reason: reason.map(str::to_owned),
        attempts: 0,
        next_attempt_ms: now_ms,
        created_ms: now_ms,
        updated_ms: now_ms,
    };
    let suppressed = |reason| vec![row("none", "suppressed", Some(reason))];
    let Some(p) = person else {
        return suppressed("no_valid_channel");
    };
    match p.status.as_str() {
        "active" => {}
        "inactive" => return suppressed("person_inactive"),
        "archived" => return suppressed("person_archived"),
        _ => return suppressed("person_inactive"),
    }
    let channels: Vec<&str> = CHANNELS
        .iter()
        .copied()
        .filter(|c| p.channels.iter().any(|pc| pc == c))
        .collect();
    if channels.is_empty() {
        return suppressed("no_valid_channel");
    }
    channels
        .into_iter()
        .map(|c| row(c, "pending", None))
        .collect()
}

fn count(kind: &str, status: &'static str) {
    metrics::counter!(
        "scp_pep_consent_notifications_total",
        "kind" => kind.to_owned(),
        "status" => status
    )
    .increment(1);
}

/// Queues the reminders and expiry notices due at `now_ms` (Unix ms) (CON-33, CON-34).
///
/// Reads heads with recorded status `active` whose `active_until` lies in
/// `[now − 1 day, now + the longest reminder day of any tenant]`; for each, the tenant (from the
/// head row) gives the schedule (`tenants[tenant].consent_reminder_days`, else 30, 7, 3, 1) and
/// [`due_notice`] the notice. An expiry missed for more than a day (downtime) is not sent late.
/// Rows are deduplicated by `reminder:<consent>:<version>:<days>:<channel>` /
/// `expiry:<consent>:<version>:<channel>`, so scanning again queues nothing new.
///
/// Returns how many rows were newly queued, suppressed ones included. Errors: the store is
/// unreachable (rows queued before the error stay queued).
pub async fn scan(
    consents: &Consents,
    tenants: &HashMap<String, Arc<TenantEntry>>,
    now_ms: i64,
) -> Result<usize, ConsentStoreError> {
    let store = consents.store();
    let horizon_days = tenants
        .values()
        .filter_map(|t| t.tenant.consent_reminder_days.as_ref())
        .flatten()
        .chain(DEFAULT_REMINDER_DAYS.iter())
        .copied()
        .max()
        .unwrap_or(0);
    let from = now_ms.saturating_sub(DAY_MS);
    let to = now_ms.saturating_add(i64::from(horizon_days) * DAY_MS);
    let mut schedules: HashMap<String, Vec<u32>> = HashMap::new();
    let mut persons: HashMap<(String, String), Option<PersonRecord>> = HashMap::new();
    let mut cursor = (i64::MIN, String::new());
    let mut queued = 0;
    loop {
        let heads = store
            .consent_expiring_heads(from, to, cursor.0, &cursor.1, SCAN_PAGE)
            .await?;
        for head in &heads {
            let schedule = schedules.entry(head.tenant_id.clone()).or_insert_with(|| {
                reminder_schedule(tenants.get(&head.tenant_id).map(|t| &t.tenant))
            });
            let Some(due) = due_notice(schedule, head.active_until_ms, now_ms) else {
                continue;
            };
            let key = (head.tenant_id.clone(), head.person_id.clone());
            let person = match persons.get(&key) {
                Some(p) => p.clone(),
                None => {
                    let p = store
                        .consent_person(&head.tenant_id, &head.person_id)
                        .await?;
                    persons.insert(key, p.clone());
                    p
                }
            };
            for row in notice_rows(head, due, person.as_ref(), now_ms) {
                if store
                    .consent_outbox_insert(std::slice::from_ref(&row))
                    .await?
                    == 0
                {
                    continue;
                }
                queued += 1;
                if row.status == "suppressed" {
                    count(&row.kind, "suppressed");
                    tracing::info!(
                        consent.kind = %row.kind,
                        consent.reason = row.reason.as_deref().unwrap_or(""),
                        consent_id = %row.consent_id,
                        person_ref = %consents.person_ref(&row.tenant_id, &row.person_id),
                        "consent notification suppressed (CON-34)"
                    );
                } else {
                    count(&row.kind, "queued");
                }
            }
        }
        match heads.last() {
            Some(last) if heads.len() as i64 == SCAN_PAGE => {
                cursor = (last.active_until_ms, last.consent_id.clone());
            }
            _ => break,
        }
    }
    Ok(queued)
}

/// The JSON body of one notification, as [`HttpSender`] POSTs it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Notification {
    /// The outbox row id (UUIDv7): receivers dedupe on it.
    pub id: String,
    /// `reminder`, `expiry` or `case_suspension`.
    pub kind: String,
    pub tenant_id: String,
    pub person_id: String,
    pub consent_id: String,
    pub consent_version: i64,
    pub vertical_id: String,
    /// `email`, `sms` or `core` (case suspension to SCP core services).
    pub channel: String,
    /// Reminders: days before expiry.
    pub days_before: Option<i32>,
    /// When the consent version expires, RFC 3339 UTC with milliseconds (`None`: open-ended).
    pub active_until: Option<String>,
}

impl Notification {
    /// The notification of an outbox row whose consent version is active until
    /// `active_until_ms` (Unix ms).
    pub fn from_row(row: &OutboxRow, active_until_ms: Option<i64>) -> Notification {
        Notification {
            id: row.id.clone(),
            kind: row.kind.clone(),
            tenant_id: row.tenant_id.clone(),
            person_id: row.person_id.clone(),
            consent_id: row.consent_id.clone(),
            consent_version: row.consent_version,
            vertical_id: row.vertical_id.clone(),
            channel: row.channel.clone(),
            days_before: row.days_before,
            active_until: active_until_ms
                .and_then(chrono::DateTime::from_timestamp_millis)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        }
    }
}

/// Hands a notification to whatever reaches the person (or SCP core services).
#[tonic::async_trait]
pub trait NotificationSender: Send + Sync {
    /// Sends `n`. `Ok` means the receiver accepted it; `Err` carries a short reason without
    /// secrets (no URL, no credentials), logged in `outbox_attempts`.
    async fn send(&self, n: &Notification) -> Result<(), String>;
}

/// POSTs notifications as JSON to `consent.notify_url` with `Idempotency-Key: <id>`, 10 s timeout;
/// any 2xx answer means sent.
pub struct HttpSender {
    http: reqwest::Client,
    url: String,
}

impl HttpSender {
    /// A sender to `url`. Errors: the HTTP client cannot be built (TLS set-up).
    pub fn new(url: &str) -> Result<HttpSender, reqwest::Error> {
        Ok(HttpSender {
            http: reqwest::Client::builder().timeout(SEND_TIMEOUT).build()?,
            url: url.to_owned(),
        })
    }
}

#[tonic::async_trait]
impl NotificationSender for HttpSender {
    async fn send(&self, n: &Notification) -> Result<(), String> {
        let resp = self
            .http
            .post(&self.url)
            .header("idempotency-key", &n.id)
            .json(n)
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    format!("timed out after {} s", SEND_TIMEOUT.as_secs())
                } else if e.is_connect() {
                    "connection to the receiver failed".to_owned()
                } else {
                    format!("request failed: {}", e.without_url())
                }
            })?;
        let status = resp.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("receiver answered HTTP {}", status.as_u16()))
        }
    }
}

fn truncate(mut s: String) -> String {
    if s.len() > MAX_ERROR_LEN {
        let mut end = MAX_ERROR_LEN;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// One delivery pass at `now_ms` (Unix ms) (CON-33, CON-34, CON-36): takes up to `limit`
/// `pending` rows due (`next_attempt_ms <= now`, oldest first), claims each (skipping rows another
/// replica claimed first), sends it with `sender` and logs the attempt in `outbox_attempts`.
/// Claims and attempts are timed at the later of `now_ms` and the service clock, as one pass can
/// outlast many sends.
/// The row becomes `sent`; or, on failure, `pending` again after [`backoff_ms`]; or `failed`
/// (reason `max_attempts`) once `notify_max_attempts` attempts failed.
///
/// Returns how many rows were read (claimed or not): fewer than `limit` means none are left due.
/// Errors: the store is unreachable (a claimed row is then retried after its lease).
pub async fn deliver(
    consents: &Consents,
    sender: &dyn NotificationSender,
    now_ms: i64,
    limit: i64,
) -> Result<usize, ConsentStoreError> {
    let store = consents.store();
    let max_attempts =
        i32::try_from(consents.config().notify_max_attempts.max(1)).unwrap_or(i32::MAX);
    let due = store.consent_outbox_due(now_ms, limit).await?;
    for (row, active_until_ms) in &due {
        // A slow receiver can make a pass long: claim, time and back off from the current time.
        let claimed_ms = consents.now_ms().max(now_ms);
        if !store
            .consent_outbox_claim(
                &row.id,
                row.attempts,
                claimed_ms + CLAIM_LEASE_MS,
                claimed_ms,
            )
            .await?
        {
            continue;
        }
        let attempt = row.attempts + 1;
        let result = sender
            .send(&Notification::from_row(row, *active_until_ms))
            .await
            .map_err(truncate);
        let now_ms = consents.now_ms().max(claimed_ms);
        let record = match &result {
            Ok(()) => AttemptRecord {
                outbox_id: &row.id,
                attempt,
                delivery_status: "sent",
                error: None,
                outbox_status: "sent",
                reason: None,
                next_attempt_ms: now_ms,
                now_ms,
            },
            Err(e) => {
                let last = attempt >= max_attempts;
                AttemptRecord {
                    outbox_id: &row.id,
                    attempt,
                    delivery_status: "failed",
                    error: Some(e),
                    outbox_status: if last { "failed" } else { "pending" },
                    reason: last.then_some("max_attempts"),
                    next_attempt_ms: if last {
                        now_ms
                    } else {
                        now_ms + backoff_ms(attempt)
                    },
                    now_ms,
                }
            }
        };
        store.consent_outbox_record_attempt(&record).await?;
        let status = match (&result, record.outbox_status) {
            (Ok(()), _) => "sent",
            (Err(_), "failed") => "failed",
            (Err(_), _) => "retry",
        };
        count(&row.kind, status);
        let pref = consents.person_ref(&row.tenant_id, &row.person_id);
        match &result {
            Ok(()) => tracing::info!(
                consent.kind = %row.kind,
                consent.channel = %row.channel,
                consent_id = %row.consent_id,
                person_ref = %pref,
                attempt,
                "consent notification sent"
            ),
            Err(e) => tracing::warn!(
                consent.kind = %row.kind,
                consent.channel = %row.channel,
                consent_id = %row.consent_id,
                person_ref = %pref,
                attempt,
                error = %e,
                outcome = status,
                "consent notification delivery failed"
            ),
        }
    }
    Ok(due.len())
}

/// Scans and delivers every `consent.notify_interval_s` until `stop` turns true (CON-33, CON-34,
/// CON-36). Tenant schedules come from the current policy snapshot (none loaded: the default
/// schedule). Without `consent.notify_url` rows are queued but stay `pending` (logged once at
/// start). Keeps the gauge `scp_pep_consent_outbox_pending` and the counter
/// `scp_pep_consent_notifications_total{kind,status}` (`queued`, `suppressed`, `sent`, `retry`,
/// `failed`). Store errors are logged and retried on the next tick.
pub async fn run(consents: Arc<Consents>, snapshot: SnapshotSlot, mut stop: watch::Receiver<bool>) {
    let every = Duration::from_secs(consents.config().notify_interval_s.max(1));
    let sender = match consents.config().notify_url.as_deref() {
        Some(url) => match HttpSender::new(url) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(
                    error = %e,
                    "consent notification sender unavailable; notifications stay pending"
                );
                None
            }
        },
        None => {
            tracing::info!(
                "consent.notify_url is not set: consent notifications are queued and stay pending"
            );
            None
        }
    };
    let pending = metrics::gauge!("scp_pep_consent_outbox_pending");
    loop {
        let pass = async {
            let snap = snapshot.load_full();
            let empty = HashMap::new();
            let tenants = (*snap).as_ref().map(|s| &s.tenants).unwrap_or(&empty);
            if let Err(e) = scan(&consents, tenants, consents.now_ms()).await {
                tracing::warn!(error = %e, "consent notification scan failed");
            }
            if let Some(s) = &sender {
                for _ in 0..50 {
                    match deliver(&consents, s, consents.now_ms(), DELIVER_BATCH).await {
                        Ok(n) if n as i64 == DELIVER_BATCH => {}
                        Ok(_) => break,
                        Err(e) => {
                            tracing::warn!(error = %e, "consent notification delivery pass failed");
                            break;
                        }
                    }
                }
            }
            match consents.store().consent_outbox_pending().await {
                Ok(n) => pending.set(n as f64),
                Err(e) => tracing::debug!(error = %e, "consent outbox count failed"),
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

    fn head() -> ExpiringHead {
        ExpiringHead {
            tenant_id: "ke".into(),
            person_id: "p-1".into(),
            vertical_id: "health".into(),
            consent_id: "c-1".into(),
            version: 2,
            active_until_ms: 100 * DAY_MS,
        }
    }

    fn person(status: &str, channels: &[&str]) -> PersonRecord {
        PersonRecord {
            tenant_id: "ke".into(),
            person_id: "p-1".into(),
            verification: "verified".into(),
            status: status.into(),
            channels: channels.iter().map(|c| (*c).to_owned()).collect(),
            updated_ms: 0,
        }
    }

    /// CON-33: every threshold of the default schedule at the millisecond; only the nearest one
    /// crossed is due; expiry from `active_until` on.
    #[test]
    fn due_notice_boundaries() {
        let s = reminder_schedule(None);
        assert_eq!(s, vec![1, 3, 7, 30]);
        let until = 100 * DAY_MS;
        assert_eq!(due_notice(&s, until, until - 30 * DAY_MS - 1), None);
        assert_eq!(
            due_notice(&s, until, until - 30 * DAY_MS),
            Some(Due::Reminder(30))
        );
        assert_eq!(
            due_notice(&s, until, until - 7 * DAY_MS - 1),
            Some(Due::Reminder(30))
        );
        assert_eq!(
            due_notice(&s, until, until - 7 * DAY_MS),
            Some(Due::Reminder(7))
        );
        assert_eq!(
            due_notice(&s, until, until - 2 * DAY_MS),
            Some(Due::Reminder(3))
        );
        assert_eq!(due_notice(&s, until, until - 1), Some(Due::Reminder(1)));
        assert_eq!(due_notice(&s, until, until), Some(Due::Expiry));
        assert_eq!(due_notice(&[], until, until - 1), None);
    }

    /// CON-33: a tenant's schedule replaces the default; zero and duplicates are dropped.
    #[test]
    fn tenant_schedule() {
        let t: Tenant = serde_json::from_value(serde_json::json!({
            "id": "ke", "residency_region": "africa-east", "issuer": "https://idp/realms/ke",
            "jwks": {"file": "jwks.json"}, "consent_reminder_days": [14, 0, 2, 14]
        }))
        .unwrap();
        assert_eq!(reminder_schedule(Some(&t)), vec![2, 14]);
    }

    #[test]
    fn backoff_doubles_up_to_an_hour() {
        assert_eq!(backoff_ms(1), 30_000);
        assert_eq!(backoff_ms(2), 60_000);
        assert_eq!(backoff_ms(3), 120_000);
        assert_eq!(backoff_ms(8), 3_600_000);
        assert_eq!(backoff_ms(i32::MAX), 3_600_000);
    }

    /// CON-33, CON-34: one row per channel; one suppressed `none` row otherwise.
    #[test]
    fn rows_per_channel_or_suppressed() {
        let h = head();
        let rows = notice_rows(
            &h,
            Due::Reminder(7),
            Some(&person("active", &["sms", "email", "fax"])),
            5,
        );
        let keys: Vec<_> = rows.iter().map(|r| r.dedup_key.as_str()).collect();
        assert_eq!(keys, ["reminder:c-1:2:7:email", "reminder:c-1:2:7:sms"]);
        assert!(
            rows.iter()
                .all(|r| r.status == "pending" && r.days_before == Some(7))
        );
        for (p, reason) in [
            (None, "no_valid_channel"),
            (Some(person("active", &[])), "no_valid_channel"),
            (Some(person("inactive", &["email"])), "person_inactive"),
            (Some(person("archived", &["email"])), "person_archived"),
        ] {
            let rows = notice_rows(&h, Due::Expiry, p.as_ref(), 5);
            assert_eq!(rows.len(), 1);
            assert_eq!(rows[0].dedup_key, "expiry:c-1:2:none");
            assert_eq!(rows[0].status, "suppressed");
            assert_eq!(rows[0].reason.as_deref(), Some(reason));
        }
    }

    #[test]
    fn active_until_is_rfc3339() {
        let rows = notice_rows(&head(), Due::Expiry, Some(&person("active", &["email"])), 5);
        let n = Notification::from_row(&rows[0], Some(0));
        assert_eq!(n.active_until.as_deref(), Some("1970-01-01T00:00:00.000Z"));
    }
}
