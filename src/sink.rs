//! The `DecisionSink` seam: where every decision goes after it is made (INT-8-1).
//!
//! Today: [`JsonLogSink`] writes one JSON line per decision (decision id, time, tenant, integration,
//! client, route, verticals, data categories, code, stages run, latency in µs). The tamper-evident
//! audit log ([`crate::audit::AuditLog`]) implements the same trait and is called first
//! ([`crate::pipeline::Engine::with_audit`]); its `record` resolves once the record is durable, and
//! an `Err` turns the decision into a denial (fail closed, never an unaudited allow).
//!
//! No token, API key, certificate or header value is ever part of a [`Decision`]'s serialized form.

use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

/// Writes decisions as JSON lines to stdout or a file.
///
/// Deciding threads serialize into a thread-local scratch buffer and append it to a shared,
/// bounded batch buffer under a short lock; a writer thread swaps the batch out every
/// [`JsonLogSink::BATCH_INTERVAL`] and writes it with one call. No allocation or wake-up per
/// decision, and a slow terminal never slows decisions: when the batch buffer is full, lines are
/// dropped and counted in `scp_pep_decision_log_dropped_total`. A line reaches the output about one
/// interval after its decision. (Durability is the audit log's job.)
pub struct JsonLogSink {
    shared: Arc<Shared>,
    dropped: metrics::Counter,
    writer: Option<std::thread::JoinHandle<()>>,
}

struct Shared {
    batch: Mutex<Vec<u8>>,
    /// Bytes the batch buffer may hold before lines are dropped.
    capacity: usize,
    closed: AtomicBool,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl JsonLogSink {
    /// Pause between two batches of the writer thread.
    pub const BATCH_INTERVAL: Duration = Duration::from_millis(5);

    /// Starts the writer thread. `out`: where lines go; `capacity`: bytes buffered at most
    /// between two batches.
    pub fn new(mut out: Box<dyn Write + Send>, capacity: usize) -> Self {
        let shared = Arc::new(Shared {
            batch: Mutex::new(Vec::with_capacity(64 * 1024)),
            capacity,
            closed: AtomicBool::new(false),
        });
        let writer = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("decision-log".into())
            .spawn(move || {
                let mut spare: Vec<u8> = Vec::with_capacity(64 * 1024);
                loop {
                    let closed = writer.closed.load(Ordering::Acquire);
                    if let Ok(mut batch) = writer.batch.lock() {
                        std::mem::swap(&mut *batch, &mut spare);
                    }
                    if !spare.is_empty() {
                        let _ = out.write_all(&spare);
                        let _ = out.flush();
                        spare.clear();
                    }
                    if closed {
                        return;
                    }
                    std::thread::sleep(Self::BATCH_INTERVAL);
                }
            });
        let writer = match spawned {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::error!(error = %e, "cannot start decision-log thread; decisions will not be logged");
                None
            }
        };
        JsonLogSink {
            shared,
            dropped: metrics::counter!("scp_pep_decision_log_dropped_total"),
            writer,
        }
    }

    /// A sink writing to standard output.
    pub fn stdout() -> Self {
        Self::new(Box::new(std::io::stdout()), 16 << 20)
    }

    /// A sink appending to `path`.
    pub fn file(path: &std::path::Path) -> std::io::Result<Self> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Self::new(Box::new(f), 16 << 20))
    }
}

impl Drop for JsonLogSink {
    /// Lets the writer write what is buffered, then waits for it (at most one batch interval
    /// plus the write).
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        if let Some(h) = self.writer.take() {
            let _ = h.join();
        }
    }
}

impl DecisionSink for JsonLogSink {
    fn record<'a>(&'a self, decision: &'a Decision) -> SinkFuture<'a> {
        SCRATCH.with_borrow_mut(|line| {
            line.clear();
            if serde_json::to_writer(&mut *line, decision).is_err() {
                return;
            }
            line.push(b'\n');
            let appended = match self.shared.batch.lock() {
                Ok(mut batch) if batch.len() + line.len() <= self.shared.capacity => {
                    batch.extend_from_slice(line);
                    true
                }
                _ => false,
            };
            if !appended {
                self.dropped.increment(1);
            }
        });
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
