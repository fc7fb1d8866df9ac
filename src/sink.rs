//! The `DecisionSink` seam: where every decision goes after it is made (INT-8-1).
//!
//! Today: [`JsonLogSink`] writes one JSON line per decision (decision id, time, tenant, integration,
//! client, route, verticals, data categories, code, stages run, latency in µs). The tamper-evident
//! audit log plugs in here as another sink; its `record` resolves only once the record is durable,
//! and an `Err` turns the decision into a denial (fail closed, never an unrecorded allow).
//!
//! No token, API key, certificate or header value is ever part of a [`Decision`]'s serialized form.

use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::mpsc::{SyncSender, TrySendError};

use crate::decision::Decision;

/// A boxed future returned by sinks.
pub type SinkFuture<'a> = Pin<Box<dyn Future<Output = Result<(), SinkError>> + Send + 'a>>;

/// The sink could not take the decision; the pipeline then denies.
#[derive(Debug, Clone, thiserror::Error)]
#[error("decision sink unavailable: {0}")]
pub struct SinkError(pub String);

/// Receives every decision before the answer leaves scp-pep.
pub trait DecisionSink: Send + Sync + 'static {
    /// Records `decision`. Must not block the executor; a sink that needs I/O awaits it here.
    fn record<'a>(&'a self, decision: &'a Decision) -> SinkFuture<'a>;
}

/// Writes decisions as JSON lines to stdout or a file from a dedicated thread, through a bounded
/// queue. A full queue drops the line and counts it in `scp_pep_decision_log_dropped_total`; a slow
/// terminal never slows decisions. (Durability is the audit log's job.)
///
/// The writer drains the queue in batches every [`JsonLogSink::BATCH_INTERVAL`] and flushes once
/// per batch, so deciding threads rarely have to wake it; a line reaches the output at most about
/// one interval after its decision.
pub struct JsonLogSink {
    tx: SyncSender<String>,
    dropped: metrics::Counter,
}

impl JsonLogSink {
    /// Pause between two batches of the writer thread.
    pub const BATCH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(5);

    /// Starts the writer thread. `out`: where lines go; `capacity`: queued lines at most.
    pub fn new(out: Box<dyn Write + Send>, capacity: usize) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel::<String>(capacity);
        let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
        let spawned = std::thread::Builder::new()
            .name("decision-log".into())
            .spawn(move || {
                while let Ok(line) = rx.recv() {
                    let _ = out.write_all(line.as_bytes());
                    while let Ok(more) = rx.try_recv() {
                        let _ = out.write_all(more.as_bytes());
                    }
                    let _ = out.flush();
                    std::thread::sleep(Self::BATCH_INTERVAL);
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start decision-log thread; decisions will not be logged");
        }
        JsonLogSink {
            tx,
            dropped: metrics::counter!("scp_pep_decision_log_dropped_total"),
        }
    }

    /// A sink writing to standard output.
    pub fn stdout() -> Self {
        Self::new(Box::new(std::io::stdout()), 65_536)
    }

    /// A sink appending to `path`.
    pub fn file(path: &std::path::Path) -> std::io::Result<Self> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Self::new(Box::new(f), 65_536))
    }
}

impl DecisionSink for JsonLogSink {
    fn record<'a>(&'a self, decision: &'a Decision) -> SinkFuture<'a> {
        let mut line = serde_json::to_string(decision).unwrap_or_default();
        line.push('\n');
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(line) {
            self.dropped.increment(1);
        }
        Box::pin(std::future::ready(Ok(())))
    }
}

/// Sends every decision to several sinks in order; the first error wins.
pub struct FanoutSink(pub Vec<Arc<dyn DecisionSink>>);

impl DecisionSink for FanoutSink {
    fn record<'a>(&'a self, decision: &'a Decision) -> SinkFuture<'a> {
        Box::pin(async move {
            for s in &self.0 {
                s.record(decision).await?;
            }
            Ok(())
        })
    }
}

/// Discards decisions (benchmarks).
pub struct NullSink;

impl DecisionSink for NullSink {
    fn record<'a>(&'a self, _decision: &'a Decision) -> SinkFuture<'a> {
        Box::pin(std::future::ready(Ok(())))
    }
}
