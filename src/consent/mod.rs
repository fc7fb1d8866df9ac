//! Consent: the registry of per-person, per-vertical consent and its enforcement in pipeline
//! stage 7 (SEC-09 / every `CON-*` line; INT-4.3-*, INT-9.1-1).
//!
//! - [`model`]: the consent version, its recorded and effective statuses and the rules, as pure
//!   functions over an explicit "now".
//! - [`store`]: the tables (append-only versions, heads, change feed, shares, aggregate epochs).
//! - [`Consents`]: the service both the pipeline and the REST API use: a bounded cache of heads
//!   ([`cache`]) in front of the store, invalidated at once on this replica by every write and on the others by
//!   the change feed ([`Consents::follow`]); the stage-7 check ([`Consents::check_persons`],
//!   [`Consents::check_aggregate`]); the share ledger behind frozen-share events.
//! - [`http`]: the REST API under `/v1/consents`; [`notify`]: reminder and expiry notices and case
//!   suspensions on a durable outbox.
//!
//! Time comes from a [`Clock`], so tests can cross every boundary (CON-5).

pub mod cache;
pub mod http;
pub mod import;
pub mod model;
pub mod notify;
pub mod store;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use crate::decision::{ConsentCheck, Denial, DenyCode};
use crate::policy::Route;
use crate::store::Store;
use cache::{HeadCache, Heads, SeenSet, heads_of};
use model::{Effective, HeadState, HeadView};
pub use store::{ConsentStoreError, PersonRecord};

/// The source of "now" for consent evaluation, Unix milliseconds.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> i64;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        chrono::Utc::now().timestamp_millis()
    }
}

/// A clock tests set by hand.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(now_ms: i64) -> Arc<Self> {
        Arc::new(ManualClock(AtomicI64::new(now_ms)))
    }
    pub fn set(&self, now_ms: i64) {
        self.0.store(now_ms, Ordering::SeqCst);
    }
    pub fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Consent settings (`[consent]`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ConsentConfig {
    /// Capacity of the consent cache, entries (one entry per (tenant, person, vertical)); bounds
    /// its memory (≈ 320 B per entry, measured in BENCHMARKS.md).
    pub cache_entries: u64,
    /// Longest an entry lives, seconds (a safety net; writes and the change feed invalidate).
    pub cache_ttl_s: u64,
    /// Most persons one request may touch (batch push); more → `PAYLOAD_INVALID`.
    pub max_persons: usize,
    /// Largest request body read for person ids, bytes (match Envoy's `with_request_body`).
    pub max_body_bytes: usize,
    /// Change-feed poll interval, milliseconds (PostgreSQL also wakes on NOTIFY).
    pub feed_poll_ms: u64,
    /// Change-feed rows older than this are pruned, seconds.
    pub feed_retention_s: u64,
    /// Default grace period after expiry, days, for tenants that set none (≤ 90, CON-27).
    pub default_grace_days: u32,
    /// Outbox: seconds between two scans for due reminders and expiry notices.
    pub notify_interval_s: u64,
    /// Outbox: where notifications are POSTed (JSON); none → they stay `pending`.
    pub notify_url: Option<String>,
    /// Outbox: delivery attempts before a notification is `failed`.
    pub notify_max_attempts: u32,
    /// Roles (admin token claim) of online consent officers: capture, verify, reject, withdraw,
    /// renew (CON-9).
    pub officer_roles: Vec<String>,
    /// Roles of field agents: offline capture only (CON-12).
    pub field_agent_roles: Vec<String>,
    /// Roles that may view consent evidence (masked unless also audit-level, CON-17).
    pub evidence_roles: Vec<String>,
    /// Roles of tenant admins: version history (CON-37).
    pub tenant_admin_roles: Vec<String>,
    /// Roles of SCP's person registry: report persons' verification and contact state, declare
    /// aggregate refresh epochs.
    pub registrar_roles: Vec<String>,
}

impl Default for ConsentConfig {
    fn default() -> Self {
        ConsentConfig {
            cache_entries: 1_000_000,
            cache_ttl_s: 300,
            max_persons: 1_000,
            max_body_bytes: 1 << 20,
            feed_poll_ms: 500,
            feed_retention_s: 86_400,
            default_grace_days: 30,
            notify_interval_s: 60,
            notify_url: None,
            notify_max_attempts: 5,
            officer_roles: vec!["scp-consent-officer".into()],
            field_agent_roles: vec!["scp-field-agent".into()],
            evidence_roles: vec!["scp-consent-evidence-viewer".into()],
            tenant_admin_roles: vec!["scp-tenant-admin".into()],
            registrar_roles: vec!["scp-person-registrar".into()],
        }
    }
}

/// The unkeyed format-1 reference (SHA-256 prefix). Kept only so lookups find share-ledger rows
/// written before references were keyed; records get [`Consents::person_ref`] (keyed, see
/// [`crate::pseudonym`]).
pub use crate::pseudonym::legacy_person_ref;

type Share = (String, String, String, String, i64);

enum ShareMsg {
    Share(Share),
    Flush(oneshot::Sender<()>),
}

/// The consent service: cache, checks, change feed, share ledger.
pub struct Consents {
    store: Store,
    clock: Arc<dyn Clock>,
    config: ConsentConfig,
    /// Heads per (tenant, vertical, person).
    cache: HeadCache,
    /// Bumped by every invalidation; a load that saw another value does not fill the cache, so a
    /// read that raced a withdrawal can never reinstate a stale allow.
    epoch: AtomicU64,
    /// `(tenant, vertical)` → (checked at, blocking since) for aggregate routes.
    blocking: moka::sync::Cache<(String, String), Option<i64>>,
    /// Recently recorded shares (skip the write when seen within 10 minutes).
    shares_seen: SeenSet,
    shares_tx: mpsc::Sender<ShareMsg>,
    shares_rx: std::sync::Mutex<Option<mpsc::Receiver<ShareMsg>>>,
    metrics: ConsentMetrics,
    /// Keys of the person references in records and the share ledger.
    refs: Arc<crate::pseudonym::PersonRefKeys>,
}

struct ConsentMetrics {
    hits: metrics::Counter,
    misses: metrics::Counter,
    invalidations: metrics::Counter,
    shares_dropped: metrics::Counter,
}

impl Consents {
    /// A service over `store` with `config`, taking time from `clock`, with a process-lifetime
    /// person_ref key (tests; the server uses [`Self::with_refs`]). Call [`Self::follow`] (the
    /// change feed) and [`Self::run_share_writer`] as tasks; `server::start` does.
    pub fn new(store: Store, config: ConsentConfig, clock: Arc<dyn Clock>) -> Arc<Self> {
        Self::with_refs(
            store,
            config,
            clock,
            Arc::new(crate::pseudonym::PersonRefKeys::ephemeral()),
        )
    }

    /// [`Self::new`] with the deployment's person_ref keys ([`crate::pseudonym::resolve`]).
    pub fn with_refs(
        store: Store,
        config: ConsentConfig,
        clock: Arc<dyn Clock>,
        refs: Arc<crate::pseudonym::PersonRefKeys>,
    ) -> Arc<Self> {
        let (tx, rx) = mpsc::channel(16_384);
        Arc::new(Consents {
            cache: HeadCache::new(config.cache_entries, config.cache_ttl_s),
            blocking: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(1))
                .build(),
            shares_seen: SeenSet::new(1_000_000, 600),
            epoch: AtomicU64::new(0),
            store,
            clock,
            config,
            refs,
            shares_tx: tx,
            shares_rx: std::sync::Mutex::new(Some(rx)),
            metrics: ConsentMetrics {
                hits: metrics::counter!("scp_pep_consent_cache_total", "result" => "hit"),
                misses: metrics::counter!("scp_pep_consent_cache_total", "result" => "miss"),
                invalidations: metrics::counter!("scp_pep_consent_cache_invalidations_total"),
                shares_dropped: metrics::counter!("scp_pep_consent_shares_dropped_total"),
            },
        })
    }

    /// The keyed reference of `person` of `tenant` in records (`<key id>:<32 hex>`).
    pub fn person_ref(&self, tenant: &str, person: &str) -> String {
        self.refs.person_ref(tenant, person)
    }

    /// The person_ref keys.
    pub fn refs(&self) -> &Arc<crate::pseudonym::PersonRefKeys> {
        &self.refs
    }

    /// Integrations that received data of `person` in `vertical` (share ledger, INT-4.3-3), found
    /// under the current key, every previous key and the unkeyed format-1 reference:
    /// `(integration, first_ms, last_ms)`, one row per integration.
    pub async fn shares_of(
        &self,
        tenant: &str,
        person: &str,
        vertical: &str,
    ) -> Result<Vec<(String, i64, i64)>, ConsentStoreError> {
        let mut merged: std::collections::BTreeMap<String, (i64, i64)> = Default::default();
        for r in self.refs.lookup_refs(tenant, person) {
            for (i, first, last) in self.store.consent_shares_of(tenant, &r, vertical).await? {
                let e = merged.entry(i).or_insert((first, last));
                e.0 = e.0.min(first);
                e.1 = e.1.max(last);
            }
        }
        Ok(merged.into_iter().map(|(i, (f, l))| (i, f, l)).collect())
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Now, Unix ms, from the service's clock.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// The settings.
    pub fn config(&self) -> &ConsentConfig {
        &self.config
    }

    /// The heads (one per purpose) of (tenant, person, vertical) as enforcement reads them,
    /// from the cache or the store.
    ///
    /// Errors: the store is unreachable on a miss (the caller denies: fail closed).
    pub async fn heads(
        &self,
        tenant: &str,
        person: &str,
        vertical: &str,
    ) -> Result<Heads, ConsentStoreError> {
        if let Some(v) = self.cache.get(tenant, vertical, person) {
            self.metrics.hits.increment(1);
            return Ok(v);
        }
        self.metrics.misses.increment(1);
        let before = self.epoch.load(Ordering::Acquire);
        let heads = heads_of(
            tracing::Instrument::instrument(
                self.store.consent_head_summaries(tenant, person, vertical),
                tracing::info_span!(target: "scp_pep::trace", "consent.lookup", persons = 1),
            )
            .await?
            .into_iter()
            .map(HeadState::from)
            .collect(),
        );
        if self.epoch.load(Ordering::Acquire) == before {
            self.cache.insert(tenant, vertical, person, heads.clone());
            // An invalidation between the check and the insert bumped the epoch first: undo.
            if self.epoch.load(Ordering::Acquire) != before {
                self.cache.remove(tenant, vertical, person);
            }
        }
        Ok(heads)
    }

    /// Fills the cache for the `persons` of `vertical` that are not cached, with one batched
    /// store read (same race protection as [`Self::heads`]).
    async fn prefetch(
        &self,
        tenant: &str,
        vertical: &str,
        persons: &[String],
    ) -> Result<(), ConsentStoreError> {
        let missing: Vec<&str> = persons
            .iter()
            .filter(|p| !self.cache.contains(tenant, vertical, p))
            .map(String::as_str)
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let before = self.epoch.load(Ordering::Acquire);
        let rows = tracing::Instrument::instrument(
            self.store
                .consent_head_summaries_many(tenant, vertical, &missing),
            tracing::info_span!(target: "scp_pep::trace", "consent.lookup", persons = missing.len()),
        )
        .await?;
        if self.epoch.load(Ordering::Acquire) != before {
            return Ok(());
        }
        let mut by_person: std::collections::HashMap<&str, Vec<HeadState>> =
            missing.iter().map(|p| (*p, Vec::new())).collect();
        for (p, h) in rows {
            if let Some(v) = by_person.get_mut(p.as_str()) {
                v.push(HeadState::from(h));
            }
        }
        let filled: Vec<&str> = by_person
            .into_iter()
            .map(|(p, heads)| {
                self.cache.insert(tenant, vertical, p, heads_of(heads));
                p
            })
            .collect();
        self.metrics.misses.increment(filled.len() as u64);
        if self.epoch.load(Ordering::Acquire) != before {
            for p in filled {
                self.cache.remove(tenant, vertical, p);
            }
        }
        Ok(())
    }

    /// Drops the cached entry of (tenant, person, vertical) on this replica at once.
    pub fn invalidate(&self, tenant: &str, person: &str, vertical: &str) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.cache.remove(tenant, vertical, person);
        self.blocking
            .invalidate(&(tenant.to_owned(), vertical.to_owned()));
        self.metrics.invalidations.increment(1);
    }

    /// Drops every cached entry (the change feed lost track).
    pub fn invalidate_all(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.cache.clear();
        self.blocking.invalidate_all();
        self.metrics.invalidations.increment(1);
    }

    /// Entries in the cache (approximate; for metrics and tests).
    pub fn cached_entries(&self) -> u64 {
        self.cache.len()
    }

    /// The effective consent of one person for one vertical and optional purpose at `now_ms`, and
    /// the version that decided it (CON-1, CON-2, CON-5, CON-22).
    ///
    /// Purpose rule: a withdrawn (or past-grace) vertical-wide consent blocks every purpose; else a
    /// purpose-specific consent decides its purpose; else the vertical-wide consent covers every
    /// purpose.
    pub fn decide<'h, H: HeadView>(
        heads: &'h [H],
        purpose: Option<&str>,
        now_ms: i64,
    ) -> (Effective, Option<&'h H>) {
        let general = heads.iter().find(|v| v.purpose().is_empty());
        let g = general.map(|v| (v.effective_at(now_ms), v));
        if let Some(p) = purpose.filter(|p| !p.is_empty()) {
            if let Some((Effective::Withdrawn, v)) = g {
                return (Effective::Withdrawn, Some(v));
            }
            if let Some(v) = heads.iter().find(|v| v.purpose() == p) {
                return (v.effective_at(now_ms), Some(v));
            }
        }
        match g {
            Some((e, v)) => (e, Some(v)),
            None => (Effective::Missing, None),
        }
    }

    /// Stage 7 for routes that touch persons: every person needs active consent for every
    /// vertical of the route (strictest intersection; integrations get no grace, CON-26). One miss
    /// denies the whole request. Appends one [`ConsentCheck`] per (person, vertical) checked and
    /// returns the fields every deciding consent allows (`None`: no field-level limit;
    /// INT-4.3-5). Records the shares of an allowed request later, with [`Self::record_shares`].
    ///
    /// Errors (denials): `CONSENT_MISSING`, `CONSENT_PENDING`, `CONSENT_EXPIRED`,
    /// `CONSENT_REJECTED`, `CONSENT_WITHDRAWN` (403); `DEPENDENCY_UNAVAILABLE` (503) when the
    /// store cannot be read on a cache miss.
    pub async fn check_persons(
        &self,
        tenant: &str,
        route: &Route,
        persons: &[String],
        checks: &mut Vec<ConsentCheck>,
    ) -> Result<Option<Vec<String>>, Denial> {
        let now = self.clock.now_ms();
        let purpose = route.consent_purpose.as_deref();
        let mut fields: Option<Vec<String>> = None;
        if persons.len() > 1 {
            // Batch pushes: one store read per vertical for every person not cached, instead of
            // one round trip per person (a push of 1,000 persons must fit Envoy's timeout).
            for vertical in &route.verticals {
                self.prefetch(tenant, vertical, persons).await.map_err(|e| {
                    tracing::warn!(error = %e, "consent store unavailable on a cache miss; denying");
                    Denial::retry_after(
                        DenyCode::DependencyUnavailable,
                        "consent cannot be checked right now",
                        1,
                    )
                })?;
            }
        }
        for person in persons {
            let pref = self.refs.person_ref(tenant, person);
            for vertical in &route.verticals {
                let heads = self.heads(tenant, person, vertical).await.map_err(|e| {
                    tracing::warn!(error = %e, "consent store unavailable on a cache miss; denying");
                    Denial::retry_after(
                        DenyCode::DependencyUnavailable,
                        "consent cannot be checked right now",
                        1,
                    )
                })?;
                let (status, version) = Self::decide(&heads, purpose, now);
                checks.push(ConsentCheck {
                    person_ref: pref.clone(),
                    purpose: purpose.map(str::to_owned),
                    result: status.as_str().to_owned(),
                    vertical: vertical.clone(),
                });
                let denial = |code, what: &str| {
                    Err(Denial::new(
                        code,
                        format!(
                            "consent of person {pref} for vertical `{vertical}` is {what}; the request is refused"
                        ),
                    ))
                };
                match status {
                    Effective::Active => {}
                    Effective::Missing => return denial(DenyCode::ConsentMissing, "missing"),
                    Effective::Pending => return denial(DenyCode::ConsentPending, "pending"),
                    Effective::Grace => {
                        return denial(
                            DenyCode::ConsentExpired,
                            "expired (grace periods are for staff, never for integrations)",
                        );
                    }
                    Effective::Rejected => return denial(DenyCode::ConsentRejected, "rejected"),
                    Effective::Withdrawn => {
                        let what =
                            if version.is_some_and(|v| v.status == model::Recorded::Withdrawn) {
                                "withdrawn"
                            } else {
                                "expired past its grace period, which counts as withdrawn"
                            };
                        return denial(DenyCode::ConsentWithdrawn, what);
                    }
                }
                if let Some(allowed) = version.and_then(|v| v.fields.as_deref()) {
                    fields = Some(match fields {
                        None => allowed.iter().map(|f| f.to_string()).collect(),
                        Some(prev) => prev
                            .into_iter()
                            .filter(|f| allowed.iter().any(|a| **a == **f))
                            .collect(),
                    });
                }
            }
        }
        Ok(fields)
    }

    /// Stage 7 for aggregate routes (INT-4.3-4, CON-23): denied with `CONSENT_WITHDRAWN` while any
    /// consent of a route vertical stopped counting (withdrawal, end of grace) after the refresh
    /// epoch the aggregate's producer declared (never declared: epoch 0, so any withdrawal
    /// blocks). Appends one check per vertical (`person_ref` `*`).
    pub async fn check_aggregate(
        &self,
        tenant: &str,
        route: &Route,
        checks: &mut Vec<ConsentCheck>,
    ) -> Result<(), Denial> {
        let unavailable = |e: ConsentStoreError| {
            tracing::warn!(error = %e, "consent store unavailable for an aggregate check; denying");
            Denial::retry_after(
                DenyCode::DependencyUnavailable,
                "consent cannot be checked right now",
                1,
            )
        };
        let now = self.clock.now_ms();
        let epoch = self
            .store
            .consent_aggregate_epoch(tenant, &route.id)
            .await
            .map_err(unavailable)?
            .unwrap_or(0);
        for vertical in &route.verticals {
            let key = (tenant.to_owned(), vertical.clone());
            let since = match self.blocking.get(&key) {
                Some(s) => s,
                None => {
                    let before = self.epoch.load(Ordering::Acquire);
                    let s = self
                        .store
                        .consent_vertical_blocking_since(tenant, vertical, now)
                        .await
                        .map_err(unavailable)?;
                    if self.epoch.load(Ordering::Acquire) == before {
                        self.blocking.insert(key.clone(), s);
                        if self.epoch.load(Ordering::Acquire) != before {
                            self.blocking.invalidate(&key);
                        }
                    }
                    s
                }
            };
            let blocked = since.is_some_and(|s| s > epoch);
            checks.push(ConsentCheck {
                person_ref: "*".into(),
                purpose: route.consent_purpose.clone(),
                result: if blocked { "withdrawn" } else { "active" }.into(),
                vertical: vertical.clone(),
            });
            if blocked {
                return Err(Denial::new(
                    DenyCode::ConsentWithdrawn,
                    format!(
                        "consent in vertical `{vertical}` was withdrawn after this aggregate's refresh epoch; the aggregate must be refreshed"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Notes that `integration` received data of the persons of `checks` (the stage-7 checks of
    /// an allowed request: one per person and vertical, with its keyed `person_ref`; aggregate
    /// checks, `*`, are skipped): the share ledger behind frozen-share events (INT-4.3-3). Reuses
    /// the checks' references (no second HMAC) and allocates only for a share not written in the
    /// last 10 minutes. Never blocks; a full queue drops the note and counts
    /// `scp_pep_consent_shares_dropped_total`.
    pub fn record_shares(&self, tenant: &str, integration: &str, checks: &[ConsentCheck]) {
        let now = self.clock.now_ms();
        for c in checks.iter().filter(|c| c.person_ref != "*") {
            let parts = [
                tenant,
                c.person_ref.as_str(),
                c.vertical.as_str(),
                integration,
            ];
            if !self.shares_seen.insert(&parts) {
                continue;
            }
            let share = (
                tenant.to_owned(),
                c.person_ref.clone(),
                c.vertical.clone(),
                integration.to_owned(),
                now,
            );
            if self.shares_tx.try_send(ShareMsg::Share(share)).is_err() {
                self.shares_seen.remove(&parts);
                self.metrics.shares_dropped.increment(1);
            }
        }
    }

    /// Waits until every share noted so far is in the store (used before frozen-share lookups).
    pub async fn flush_shares(&self) {
        let (tx, rx) = oneshot::channel();
        if self.shares_tx.send(ShareMsg::Flush(tx)).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(5), rx).await;
        }
    }

    /// Writes noted shares in batches until `stop`. Spawned once by `server::start`.
    pub async fn run_share_writer(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let Some(mut rx) = self.shares_rx.lock().ok().and_then(|mut g| g.take()) else {
            return;
        };
        let mut batch: Vec<Share> = Vec::new();
        let mut waiters: Vec<oneshot::Sender<()>> = Vec::new();
        loop {
            let msg = tokio::select! {
                m = rx.recv() => m,
                _ = stop.wait_for(|v| *v) => None,
            };
            let Some(msg) = msg else { break };
            let mut next = Some(msg);
            while let Some(m) = next.take() {
                match m {
                    ShareMsg::Share(s) => batch.push(s),
                    ShareMsg::Flush(w) => waiters.push(w),
                }
                if batch.len() < 512 {
                    next = rx.try_recv().ok();
                }
            }
            for attempt in 0..3 {
                match self.store.consent_record_shares(&batch).await {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, attempt, "share ledger write failed");
                        if attempt == 2 {
                            self.metrics.shares_dropped.increment(batch.len() as u64);
                            for (t, p, v, i, _) in &batch {
                                self.shares_seen.remove(&[
                                    t.as_str(),
                                    p.as_str(),
                                    v.as_str(),
                                    i.as_str(),
                                ]);
                            }
                        } else {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            }
            batch.clear();
            for w in waiters.drain(..) {
                let _ = w.send(());
            }
        }
    }

    /// Follows the change feed until `stop`: every consent written on another replica drops the
    /// cached entry here. PostgreSQL wakes it on NOTIFY; every backend polls every
    /// `feed_poll_ms`. When the feed cannot be read, or pruned rows were never seen, the whole
    /// cache is dropped (misses then read the store, or deny while it is away): no stale allow.
    pub async fn follow(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let notify = Arc::new(tokio::sync::Notify::new());
        self.store
            .spawn_listener(store::CONSENT_CHANNEL, notify.clone(), stop.clone());
        let every = Duration::from_millis(self.config.feed_poll_ms.max(10));
        let mut last: Option<i64> = None;
        let mut last_prune = std::time::Instant::now();
        loop {
            match self.poll_feed(last).await {
                Ok(seq) => last = Some(seq),
                Err(e) => {
                    if last.is_some() {
                        tracing::warn!(error = %e, "consent change feed unreadable; dropping the consent cache");
                    }
                    self.invalidate_all();
                    last = None;
                }
            }
            if last_prune.elapsed() >= Duration::from_secs(60) {
                last_prune = std::time::Instant::now();
                let before = self.clock.now_ms() - self.config.feed_retention_s as i64 * 1000;
                if let Err(e) = self.store.consent_prune_changes(before).await {
                    tracing::debug!(error = %e, "consent change feed prune failed");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = notify.notified() => {}
                _ = stop.wait_for(|v| *v) => return,
            }
        }
    }

    /// One pass of the feed after `last` (`None`: start from the current end, dropping the cache).
    /// Returns the new position.
    async fn poll_feed(&self, last: Option<i64>) -> Result<i64, ConsentStoreError> {
        let (lo, hi) = self.store.consent_change_bounds().await?;
        let Some(mut pos) = last else {
            self.invalidate_all();
            return Ok(hi);
        };
        if lo > pos + 1 && hi > pos {
            // Rows this replica never saw were pruned.
            self.invalidate_all();
            return Ok(hi);
        }
        loop {
            let rows = self.store.consent_changes_since(pos, 1000).await?;
            if rows.is_empty() {
                return Ok(pos);
            }
            for (seq, t, p, v) in &rows {
                self.invalidate(t, p, v);
                pos = *seq;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::model::*;
    use super::*;

    fn v(purpose: &str, status: Recorded, until: Option<i64>) -> Head {
        Head::from(&ConsentVersion {
            consent_id: format!("c-{purpose}"),
            version: 1,
            version_id: "x".into(),
            tenant_id: "ke".into(),
            person_id: "p".into(),
            vertical_id: "health".into(),
            purpose: purpose.into(),
            status,
            active_from_ms: 0,
            active_until_ms: until,
            grace_until_ms: grace_until(until, 0),
            capture_mode: CaptureMode::Online,
            evidence_attachment_ids: vec!["a".into()],
            verification_document_attachment_id: None,
            identity_verification: None,
            fields: None,
            reason_code: None,
            reason_text: None,
            change: Change::Capture,
            captured_by: "u".into(),
            captured_at_ms: 0,
            changed_by: "u".into(),
            changed_at_ms: 0,
        })
    }

    /// CON-2, CON-22: purpose-specific consent decides its purpose; a withdrawn vertical-wide
    /// consent blocks every purpose; a vertical-wide consent covers purposes without their own.
    #[test]
    fn purpose_rule() {
        let general = v("", Recorded::Active, None);
        let research = v("research", Recorded::Pending, None);
        let heads = vec![general.clone(), research.clone()];
        assert_eq!(
            Consents::decide(&heads, Some("research"), 5).0,
            Effective::Pending
        );
        assert_eq!(
            Consents::decide(&heads, Some("emergency_contact"), 5).0,
            Effective::Active
        );
        assert_eq!(Consents::decide(&heads, None, 5).0, Effective::Active);
        let withdrawn = vec![
            v("", Recorded::Withdrawn, None),
            v("research", Recorded::Active, None),
        ];
        assert_eq!(
            Consents::decide(&withdrawn, Some("research"), 5).0,
            Effective::Withdrawn
        );
        assert_eq!(Consents::decide(&[research], None, 5).0, Effective::Missing);
    }

    #[test]
    fn person_ref_is_stable_and_tenant_bound() {
        let k = crate::pseudonym::PersonRefKeys::ephemeral();
        assert_eq!(k.person_ref("ke", "p-1"), k.person_ref("ke", "p-1"));
        assert_ne!(k.person_ref("ke", "p-1"), k.person_ref("ug", "p-1"));
        assert_eq!(legacy_person_ref("ke", "p-1").len(), 32);
    }
}
