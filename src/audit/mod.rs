//! The tamper-evident audit log (INT-8-1, INT-8-2, ONB-AUD-1, CON-19, CON-37, ADM-2, EXT-6-1).
//!
//! - **Records** ([`record`]): one per decision and per event (admin change, credential lifecycle,
//!   security incident, consent change, evidence access, frozen share, ROOT bypass…), as RFC 8785
//!   canonical JSON.
//! - **Hash chains**: one chain per (writer process, tenant). Each scp-pep process opens a new chain
//!   per tenant the first time it records for that tenant; its first record (`chain_start`) names
//!   the writer, the checkpoint key and the size and head of the same writer's previous chain for the
//!   tenant, so chains of one writer link up and a deleted tail of a dead chain is noticed. Replicas
//!   never contend on a shared head, and a tenant's export holds only that tenant's chains.
//! - **Group commit** ([`writer`]): decisions queue into a bounded channel; one writer task takes
//!   everything queued (up to `max_batch`) and writes it in one transaction. In `durable` mode
//!   [`AuditLog::record`] resolves only after that commit; in `buffered` mode it resolves once queued.
//!   A full queue or a failed commit is an `Err`, which the pipeline turns into `AUDIT_UNAVAILABLE`.
//! - **Signed checkpoints** ([`checkpoint`]): every `checkpoint_every` records or
//!   `checkpoint_interval_s` seconds per chain, an Ed25519 signed note, stored and optionally
//!   published to a directory and a URL outside the database.
//! - **Export and verification** ([`export`], [`verify`]), **retention** ([`retention`]) and the
//!   **live tail** ([`TailItem`], served by [`crate::tail`]).

pub mod checkpoint;
pub mod cmd;
pub mod export;
pub mod http;
pub mod record;
pub mod retention;
pub mod store;
pub mod verify;
mod writer;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::decision::Decision;
use crate::sink::{DecisionSink, SinkError, SinkFuture};
use crate::store::Store;

pub use checkpoint::CheckpointSigner;
pub use record::{AuditEvent, RecordKind, UNATTRIBUTED};

/// When a record counts as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditMode {
    /// A decision leaves scp-pep only after its record is committed (the default).
    Durable,
    /// A decision leaves once its record is queued; a crash loses at most the queue and the batch
    /// in flight (`queue_capacity + max_batch` records).
    Buffered,
    /// No audit log (benchmarks and development only; logged as a warning at start).
    Off,
}

/// Settings of the audit writer (from `[audit]` in the configuration).
#[derive(Debug, Clone)]
pub struct AuditSettings {
    pub mode: AuditMode,
    /// Writer name recorded in every chain (default: the host name).
    pub writer: String,
    /// Records queued at most before new decisions are denied with `AUDIT_UNAVAILABLE`.
    pub queue_capacity: usize,
    /// Records per transaction at most.
    pub max_batch: usize,
    /// Longest a transaction may take before it counts as failed.
    pub write_timeout: Duration,
    /// Checkpoint after this many new records of a chain…
    pub checkpoint_every: u64,
    /// …or this long after the last checkpoint when a chain has new records.
    pub checkpoint_interval: Duration,
    /// Latest checkpoint of every chain is also written to `<dir>/<tenant>/<chain id>.note`.
    pub checkpoint_dir: Option<PathBuf>,
    /// Every checkpoint is also POSTed (`text/plain`) to this URL.
    pub checkpoint_url: Option<String>,
    /// Tail events buffered per subscriber before that subscriber loses events.
    pub tail_capacity: usize,
}

impl Default for AuditSettings {
    fn default() -> Self {
        AuditSettings {
            mode: AuditMode::Durable,
            writer: "scp-pep".into(),
            queue_capacity: 65_536,
            max_batch: 4096,
            write_timeout: Duration::from_secs(2),
            checkpoint_every: 1000,
            checkpoint_interval: Duration::from_secs(10),
            checkpoint_dir: None,
            checkpoint_url: None,
            tail_capacity: 4096,
        }
    }
}

/// One committed record as the live tail sees it.
#[derive(Debug, Clone)]
pub struct TailItem {
    pub chain_id: Arc<str>,
    pub seq: u64,
    pub kind: RecordKind,
    /// The chain's tenant ([`UNATTRIBUTED`] when none is known).
    pub tenant_id: String,
    /// Decisions: the integration, when known.
    pub integration_id: Option<String>,
    /// Decisions: the route's policy id, when one matched.
    pub route_id: Option<String>,
    /// Decisions: `allow` or `deny`.
    pub outcome: Option<&'static str>,
    /// Decisions: `OK` or the denial code.
    pub code: Option<String>,
    /// Unix milliseconds.
    pub time_ms: i64,
    /// Decisions: time spent deciding before the audit write, µs.
    pub latency_us: Option<u64>,
    /// The canonical body.
    pub body: Arc<str>,
    /// Decisions: the shadow findings (issue 16); empty otherwise.
    pub shadow: Vec<crate::decision::ShadowFinding>,
}

/// One record waiting for the writer.
struct Item {
    kind: RecordKind,
    event_id: String,
    time_ms: i64,
    body: String,
}

/// What one `record` call queues: a decision with its incident events, or one event. All of an
/// entry's items land in the same transaction.
struct Entry {
    tenant: String,
    items: Vec<Item>,
    ack: Option<oneshot::Sender<Result<(), ()>>>,
    tail: Option<TailSummary>,
}

struct TailSummary {
    integration_id: Option<String>,
    route_id: Option<String>,
    outcome: &'static str,
    code: String,
    latency_us: u64,
    shadow: Vec<crate::decision::ShadowFinding>,
}

/// Metric handles, registered once.
pub(crate) struct AuditMetrics {
    rejected: metrics::Counter,
    queue_depth: metrics::Gauge,
}

/// The audit log: a [`DecisionSink`] and the entry point for events.
pub struct AuditLog {
    tx: mpsc::Sender<Entry>,
    mode: AuditMode,
    tail: broadcast::Sender<Arc<TailItem>>,
    closed: AtomicBool,
    /// Longest a durable decision waits for its commit: the commit in flight and its own, each
    /// bounded by `write_timeout`. Beyond it the decision is denied even if the writer is stuck
    /// inside a blocking SQLite call.
    ack_timeout: Duration,
    stop: watch::Sender<bool>,
    /// Resolves when the writer has stopped (its thread or task sends or drops it).
    done: std::sync::Mutex<Option<oneshot::Receiver<()>>>,
    signer: CheckpointSigner,
    metrics: AuditMetrics,
}

impl AuditLog {
    /// Starts the writer on its own OS thread (`audit-writer`, a current-thread Tokio runtime),
    /// so its wake-ups after each commit never queue behind request tasks on the server's
    /// workers. Falls back to a task on the current runtime if the thread cannot be started.
    ///
    /// `signer`: checkpoint key; `settings.mode` must not be [`AuditMode::Off`] (callers skip the
    /// audit log entirely then).
    pub fn start(store: Store, signer: CheckpointSigner, settings: AuditSettings) -> Arc<AuditLog> {
        let (tx, rx) = mpsc::channel(settings.queue_capacity.max(1));
        let (tail, _) = broadcast::channel(settings.tail_capacity.max(16));
        let (stop, stop_rx) = watch::channel(false);
        let mode = settings.mode;
        let ack_timeout = settings.write_timeout * 2 + Duration::from_millis(100);
        let w = writer::Writer::new(store, signer.clone(), settings, tail.clone());
        let (done_tx, done_rx) = oneshot::channel::<()>();
        // The writer moves into the thread through a slot so that a failed spawn can hand it
        // back to the fallback.
        let slot = Arc::new(std::sync::Mutex::new(Some((w, rx, stop_rx, done_tx))));
        let moved = slot.clone();
        let spawned = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || {
                let Some((w, rx, stop_rx, done_tx)) = moved.lock().ok().and_then(|mut g| g.take())
                else {
                    return;
                };
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(w.run(rx, stop_rx)),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start the audit writer runtime; every audited decision is denied");
                    }
                }
                let _ = done_tx.send(());
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the audit-writer thread; running the writer on the server runtime");
            if let Some((w, rx, stop_rx, done_tx)) = slot.lock().ok().and_then(|mut g| g.take()) {
                tokio::spawn(async move {
                    w.run(rx, stop_rx).await;
                    let _ = done_tx.send(());
                });
            }
        }
        Arc::new(AuditLog {
            tx,
            mode,
            tail,
            closed: AtomicBool::new(false),
            ack_timeout,
            stop,
            done: std::sync::Mutex::new(Some(done_rx)),
            signer,
            metrics: AuditMetrics {
                rejected: metrics::counter!("scp_pep_audit_rejected_total"),
                queue_depth: metrics::gauge!("scp_pep_audit_queue_depth"),
            },
        })
    }

    /// The mode.
    pub fn mode(&self) -> AuditMode {
        self.mode
    }

    /// The checkpoint verifier key (`<name>+<id>+<base64>`).
    pub fn verifier_key(&self) -> &str {
        self.signer.verifier_key()
    }

    /// A live feed of committed records. A subscriber that falls more than `tail_capacity` events
    /// behind loses the oldest ones (`RecvError::Lagged`); the writer never waits for it.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<TailItem>> {
        self.tail.subscribe()
    }

    /// Records an event. Durable mode: resolves after the commit. Errors: queue full, writer
    /// stopped, commit failed.
    pub async fn record_event(&self, event: &AuditEvent) -> Result<(), SinkError> {
        let tenant = event
            .tenant_id
            .clone()
            .unwrap_or_else(|| UNATTRIBUTED.to_owned());
        let item = Item {
            kind: event.kind,
            event_id: event.event_id.clone(),
            time_ms: event.time.timestamp_millis(),
            body: String::from_utf8(event.body()).unwrap_or_default(),
        };
        self.enqueue(tenant, vec![item], None).await
    }

    async fn enqueue(
        &self,
        tenant: String,
        items: Vec<Item>,
        tail: Option<TailSummary>,
    ) -> Result<(), SinkError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(SinkError("audit log is closed".into()));
        }
        let (ack, done) = if self.mode == AuditMode::Durable {
            let (a, d) = oneshot::channel();
            (Some(a), Some(d))
        } else {
            (None, None)
        };
        let entry = Entry {
            tenant,
            items,
            ack,
            tail,
        };
        if self.tx.try_send(entry).is_err() {
            self.metrics.rejected.increment(1);
            return Err(SinkError("audit queue full or writer stopped".into()));
        }
        self.metrics
            .queue_depth
            .set((self.tx.max_capacity() - self.tx.capacity()) as f64);
        match done {
            None => Ok(()),
            Some(d) => match tokio::time::timeout(self.ack_timeout, d).await {
                Ok(Ok(Ok(()))) => Ok(()),
                Ok(_) => Err(SinkError("audit record not committed".into())),
                Err(_) => Err(SinkError("audit commit not acknowledged in time".into())),
            },
        }
    }

    /// Stops accepting records, writes what is queued, closes every chain with a `chain_end`
    /// record and a final checkpoint, and waits for the writer (at most `write_timeout` per
    /// attempt).
    pub async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let _ = self.stop.send(true);
        let done = self.done.lock().ok().and_then(|mut g| g.take());
        if let Some(d) = done {
            let _ = d.await;
        }
    }
}

impl DecisionSink for AuditLog {
    fn record<'a>(&'a self, d: &'a Decision) -> SinkFuture<'a> {
        let mut body = Vec::with_capacity(768);
        record::decision_body(d, &mut body);
        let time_ms = d.time.timestamp_millis();
        let mut items = Vec::with_capacity(1 + d.incidents.len());
        items.push(Item {
            kind: RecordKind::Decision,
            event_id: d.decision_id.clone(),
            time_ms,
            body: String::from_utf8(body).unwrap_or_default(),
        });
        for e in record::incident_events(d) {
            items.push(Item {
                kind: e.kind,
                event_id: e.event_id.clone(),
                time_ms,
                body: String::from_utf8(e.body()).unwrap_or_default(),
            });
        }
        let tenant = d
            .tenant_id
            .clone()
            .unwrap_or_else(|| UNATTRIBUTED.to_owned());
        let tail = (self.tail.receiver_count() > 0).then(|| TailSummary {
            integration_id: d.integration_id.clone(),
            route_id: d.route_id.clone(),
            outcome: if d.allowed() { "allow" } else { "deny" },
            code: d.code_str().to_owned(),
            latency_us: d.latency_us,
            shadow: d.shadow.clone(),
        });
        Box::pin(self.enqueue(tenant, items, tail))
    }
}

/// The default writer id of audit records (`audit.writer`): the host name, else `scp-pep`.
pub fn default_writer() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "scp-pep".into())
}
