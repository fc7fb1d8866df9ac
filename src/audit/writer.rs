//! The audit writer task: group commit, chain heads, checkpoints, tail fan-out.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc, watch};

use super::checkpoint::CheckpointSigner;
use super::record::{AuditEvent, Hash, RecordKind, genesis_hash, record_hash};
use super::store::{ChainRow, CheckpointRow, NewRecord, WriterConn};
use super::{AuditMode, AuditSettings, Entry, Item, TailItem};
use crate::store::Store;

/// The head of one of this writer's chains.
#[derive(Debug, Clone)]
struct Head {
    chain_id: Arc<str>,
    seq: u64,
    hash: Hash,
    /// Size covered by the last stored checkpoint.
    cp_seq: u64,
    cp_at: Instant,
}

struct WriterMetrics {
    records: HashMap<RecordKind, metrics::Counter>,
    batch_size: metrics::Histogram,
    commit_duration: metrics::Histogram,
    failures: metrics::Counter,
    checkpoints: metrics::Counter,
    checkpoint_failures: metrics::Counter,
    queue_depth: metrics::Gauge,
    lost: metrics::Counter,
}

pub(super) struct Writer {
    /// Where [`WriterConn::open`] connects to (the pool's options).
    store: Store,
    /// The writer's own connection; `None` until opened and after any failure (reopened before
    /// the next write, so a connection in an unknown state is never reused).
    conn: Option<WriterConn>,
    signer: CheckpointSigner,
    settings: AuditSettings,
    tail: broadcast::Sender<Arc<TailItem>>,
    heads: HashMap<String, Head>,
    /// Set after a failed or timed-out commit, whose outcome is unknown: heads are re-read from
    /// the store before the next write.
    resync: bool,
    http: Option<reqwest::Client>,
    /// Checkpoint POSTs in flight (awaited, bounded, when the writer stops).
    posts: Vec<tokio::task::JoinHandle<()>>,
    metrics: WriterMetrics,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Writer {
    pub(super) fn new(
        store: Store,
        signer: CheckpointSigner,
        settings: AuditSettings,
        tail: broadcast::Sender<Arc<TailItem>>,
    ) -> Self {
        let http = settings.checkpoint_url.as_ref().and_then(|_| {
            reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .ok()
        });
        Writer {
            store,
            conn: None,
            signer,
            settings,
            tail,
            heads: HashMap::new(),
            resync: false,
            http,
            posts: Vec::new(),
            metrics: WriterMetrics {
                records: RecordKind::ALL
                    .iter()
                    .map(|k| {
                        (
                            *k,
                            metrics::counter!("scp_pep_audit_records_total", "kind" => k.as_str()),
                        )
                    })
                    .collect(),
                batch_size: metrics::histogram!("scp_pep_audit_commit_batch_records"),
                commit_duration: metrics::histogram!("scp_pep_audit_commit_duration_seconds"),
                failures: metrics::counter!("scp_pep_audit_write_failures_total"),
                checkpoints: metrics::counter!("scp_pep_audit_checkpoints_total"),
                checkpoint_failures: metrics::counter!("scp_pep_audit_checkpoint_failures_total"),
                queue_depth: metrics::gauge!("scp_pep_audit_queue_depth"),
                lost: metrics::counter!("scp_pep_audit_records_lost_total"),
            },
        }
    }

    pub(super) async fn run(
        mut self,
        mut rx: mpsc::Receiver<Entry>,
        mut stop: watch::Receiver<bool>,
    ) {
        let tick_every = self
            .settings
            .checkpoint_interval
            .min(Duration::from_secs(1))
            .max(Duration::from_millis(50));
        let mut tick = tokio::time::interval(tick_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let wal = tokio::spawn(super::store::checkpoint_wal(
            self.store.clone(),
            Duration::from_millis(200),
            stop.clone(),
        ));
        let mut batch: Vec<Entry> = Vec::new();
        let mut backoff = Duration::from_millis(100);
        loop {
            // A retried batch (buffered mode) takes no new entries: what is in flight stays at
            // most `max_batch`, what is queued at most `queue_capacity`.
            let retrying = !batch.is_empty();
            if batch.is_empty() {
                tokio::select! {
                    // Queued decisions before checkpoints.
                    biased;
                    e = rx.recv() => match e {
                        Some(e) => batch.push(e),
                        None => break,
                    },
                    _ = tick.tick() => {
                        self.checkpoint_due(false).await;
                        continue;
                    }
                    _ = stopped(&mut stop) => break,
                }
            }
            let mut n: usize = batch.iter().map(|e| e.items.len()).sum();
            while !retrying && n < self.settings.max_batch {
                match rx.try_recv() {
                    Ok(e) => {
                        n += e.items.len();
                        batch.push(e);
                    }
                    Err(_) => break,
                }
            }
            self.metrics.queue_depth.set(rx.len() as f64);
            match self.write(&batch).await {
                Ok(()) => {
                    backoff = Duration::from_millis(100);
                    for e in batch.drain(..) {
                        if let Some(a) = e.ack {
                            let _ = a.send(Ok(()));
                        }
                    }
                    self.checkpoint_due(false).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, records = n, "audit write failed");
                    if self.settings.mode == AuditMode::Durable {
                        // Every waiting decision becomes AUDIT_UNAVAILABLE.
                        for e in batch.drain(..) {
                            if let Some(a) = e.ack {
                                let _ = a.send(Err(()));
                            }
                        }
                    } else {
                        // Buffered: keep the batch and retry; the queue fills meanwhile and new
                        // decisions are denied once it is full.
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = stopped(&mut stop) => {
                                self.metrics.lost.increment(n as u64);
                                tracing::error!(records = n, "audit writer stopping with unwritten buffered records");
                                batch.clear();
                                break;
                            }
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                    }
                }
            }
        }
        // Orderly stop: write what is queued, then close every chain.
        rx.close();
        let mut rest = Vec::new();
        while let Ok(e) = rx.try_recv() {
            rest.push(e);
        }
        for chunk in rest.chunks_mut(self.settings.max_batch.max(1)) {
            let ok = self.write(chunk).await.is_ok();
            for e in chunk.iter_mut() {
                if let Some(a) = e.ack.take() {
                    let _ = a.send(if ok { Ok(()) } else { Err(()) });
                }
            }
        }
        self.seal().await;
        wal.abort();
    }

    /// Writes `batch` in one statement (or one transaction when it opens a chain), opening
    /// chains as needed. On success the heads advance and the tail sees the records; on failure
    /// nothing changes, the connection is dropped and `resync` is set.
    async fn write(&mut self, batch: &[Entry]) -> Result<(), anyhow::Error> {
        // Everything (connecting, re-reading heads, opening chains, the statement) is bounded by
        // one deadline, so a store that hangs costs a decision at most `write_timeout`.
        let deadline = self.settings.write_timeout;
        match tokio::time::timeout(deadline, self.write_inner(batch)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                self.failed();
                Err(e)
            }
            Err(_) => {
                self.failed();
                anyhow::bail!("audit write timed out after {deadline:?}")
            }
        }
    }

    /// After a failed or abandoned write: its outcome is unknown, so the heads are re-read and
    /// the connection (possibly mid-statement) is replaced before the next write.
    fn failed(&mut self) {
        self.resync = true;
        self.conn = None;
        self.metrics.failures.increment(1);
    }

    /// The open connection, connecting first if there is none.
    async fn conn(&mut self) -> Result<&mut WriterConn, anyhow::Error> {
        if self.conn.is_none() {
            self.conn = Some(WriterConn::open(&self.store, self.settings.write_timeout).await?);
        }
        Ok(self.conn.as_mut().expect("set above"))
    }

    async fn write_inner(&mut self, batch: &[Entry]) -> Result<(), anyhow::Error> {
        let started = Instant::now();
        self.conn().await?;
        if self.resync {
            self.resync_heads().await?;
        }
        // Chains this batch opens (rare: a tenant's first record since start).
        let mut opened: Vec<(String, Head, ChainRow, Item)> = Vec::new();
        for e in batch {
            if !self.heads.contains_key(&e.tenant) && !opened.iter().any(|o| o.0 == e.tenant) {
                let (head, chain, start) = self.open_chain(&e.tenant).await?;
                opened.push((e.tenant.clone(), head, chain, start));
            }
        }
        // One cursor per tenant of the batch: chain id, next seq, head hash. Heads only advance
        // once the commit succeeded.
        let mut cursors: Vec<Cursor<'_>> = Vec::new();
        let mut rows: Vec<NewRecord<'_>> =
            Vec::with_capacity(batch.iter().map(|e| e.items.len()).sum::<usize>() + opened.len());
        let mut tail_refs: Vec<(usize, usize)> = Vec::new();
        for (ei, e) in batch.iter().enumerate() {
            let ci = match cursors.iter().position(|c| c.tenant == e.tenant) {
                Some(i) => i,
                None => {
                    let c = match self.heads.get(&e.tenant) {
                        Some(h) => Cursor {
                            tenant: &e.tenant,
                            chain_id: &h.chain_id,
                            seq: h.seq,
                            hash: h.hash,
                        },
                        None => {
                            let o = opened.iter().find(|o| o.0 == e.tenant).expect("opened");
                            let mut c = Cursor {
                                tenant: &e.tenant,
                                chain_id: &o.1.chain_id,
                                seq: o.1.seq,
                                hash: o.1.hash,
                            };
                            rows.push(c.chain(&o.3));
                            c
                        }
                    };
                    cursors.push(c);
                    cursors.len() - 1
                }
            };
            let c = &mut cursors[ci];
            for (ii, item) in e.items.iter().enumerate() {
                if ii == 0 && e.tail.is_some() {
                    tail_refs.push((ei, rows.len()));
                }
                rows.push(c.chain(item));
            }
        }
        let chains: Vec<ChainRow> = opened.iter().map(|o| o.2.clone()).collect();
        let conn = self.conn.as_mut().expect("opened above");
        conn.write_batch(&chains, &rows).await?;
        // Committed: advance the heads.
        let advanced: Vec<(String, u64, Hash)> = cursors
            .iter()
            .map(|c| (c.tenant.to_owned(), c.seq, c.hash))
            .collect();
        self.metrics.batch_size.record(rows.len() as f64);
        self.metrics
            .commit_duration
            .record(started.elapsed().as_secs_f64());
        for r in &rows {
            if let Some(c) =
                RecordKind::from_name(r.kind).and_then(|k| self.metrics.records.get(&k))
            {
                c.increment(1);
            }
        }
        if self.tail.receiver_count() > 0 {
            self.publish_tail(batch, &rows, &tail_refs);
        }
        drop(rows);
        drop(cursors);
        for (tenant, head, _, _) in opened {
            self.heads.insert(tenant, head);
        }
        for (tenant, seq, hash) in advanced {
            if let Some(h) = self.heads.get_mut(&tenant) {
                h.seq = seq;
                h.hash = hash;
            }
        }
        Ok(())
    }

    /// Sends the committed `rows` to live-tail subscribers: decisions with the summary their
    /// entry carries (`refs`: entry index, row index), every other record (events, chain starts)
    /// with its kind only. A decision queued while nobody was subscribed has no summary and is
    /// skipped.
    fn publish_tail(&self, batch: &[Entry], rows: &[NewRecord<'_>], refs: &[(usize, usize)]) {
        let mut refs = refs.iter().peekable();
        for (ri, r) in rows.iter().enumerate() {
            let summary = match refs.peek() {
                Some(&&(ei, i)) if i == ri => {
                    refs.next();
                    batch[ei].tail.as_ref()
                }
                _ => None,
            };
            let item = match summary {
                Some(t) => TailItem {
                    chain_id: Arc::from(r.chain_id),
                    seq: r.seq,
                    kind: RecordKind::Decision,
                    tenant_id: r.tenant_id.to_owned(),
                    integration_id: t.integration_id.clone(),
                    route_id: t.route_id.clone(),
                    outcome: Some(t.outcome),
                    code: Some(t.code.clone()),
                    time_ms: r.time_ms,
                    latency_us: Some(t.latency_us),
                    body: Arc::from(r.body),
                    shadow: t.shadow.clone(),
                },
                None => {
                    let Some(kind) = RecordKind::from_name(r.kind) else {
                        continue;
                    };
                    if kind == RecordKind::Decision {
                        continue;
                    }
                    TailItem {
                        chain_id: Arc::from(r.chain_id),
                        seq: r.seq,
                        kind,
                        tenant_id: r.tenant_id.to_owned(),
                        integration_id: None,
                        route_id: None,
                        outcome: None,
                        code: None,
                        time_ms: r.time_ms,
                        latency_us: None,
                        body: Arc::from(r.body),
                        shadow: Vec::new(),
                    }
                }
            };
            // No receivers or a lagging receiver never blocks the writer.
            let _ = self.tail.send(Arc::new(item));
        }
    }

    /// A new chain for `tenant`: its row, its head before the first record, and the
    /// `chain_start` item linking it to this writer's previous chain for the tenant.
    async fn open_chain(&mut self, tenant: &str) -> Result<(Head, ChainRow, Item), anyhow::Error> {
        let writer = self.settings.writer.clone();
        let previous = self.conn().await?.latest_chain(&writer, tenant).await?;
        let chain_id = uuid::Uuid::now_v7().to_string();
        let created_ms = now_ms();
        let row = ChainRow {
            chain_id: chain_id.clone(),
            tenant_id: tenant.to_owned(),
            writer: self.settings.writer.clone(),
            created_ms,
            key_id: self.signer.key_id(),
            verifier_key: self.signer.verifier_key().to_owned(),
        };
        let prev = previous.map(|(id, size, head)| {
            serde_json::json!({
                "chain_id": id,
                "size": size,
                "head": head.map(hex::encode),
            })
        });
        let mut ev = AuditEvent::new(
            RecordKind::ChainStart,
            (tenant != super::UNATTRIBUTED).then_some(tenant),
            serde_json::json!({
                "chain_id": chain_id,
                "writer": self.settings.writer,
                "verifier_key": self.signer.verifier_key(),
                "previous": prev,
                "version": env!("CARGO_PKG_VERSION"),
            }),
        )
        .actor("scp-pep")
        .subject(chain_id.clone());
        ev.time = chrono::DateTime::from_timestamp_millis(created_ms).unwrap_or(ev.time);
        let start = Item {
            kind: RecordKind::ChainStart,
            event_id: ev.event_id.clone(),
            time_ms: created_ms,
            body: String::from_utf8(ev.body()).unwrap_or_default(),
        };
        let head = Head {
            chain_id: Arc::from(chain_id.as_str()),
            seq: 0,
            hash: genesis_hash(&chain_id),
            cp_seq: 0,
            cp_at: Instant::now(),
        };
        Ok((head, row, start))
    }

    async fn resync_heads(&mut self) -> Result<(), anyhow::Error> {
        self.conn().await?;
        let conn = self.conn.as_mut().expect("opened above");
        for h in self.heads.values_mut() {
            match conn.chain_head(&h.chain_id).await? {
                Some((seq, hash)) => {
                    h.seq = seq;
                    h.hash = hash;
                }
                None => {
                    h.seq = 0;
                    h.hash = genesis_hash(&h.chain_id);
                }
            }
            h.cp_seq = h.cp_seq.min(h.seq);
        }
        self.resync = false;
        Ok(())
    }

    /// Signs and stores a checkpoint for every chain that is due (`all`: every chain with
    /// records not yet covered).
    async fn checkpoint_due(&mut self, all: bool) {
        if self.resync {
            // The store failed the last write: no checkpoint until a write succeeds again (a
            // checkpoint attempt would only hold up the queued decisions).
            return;
        }
        let every = self.settings.checkpoint_every.max(1);
        let interval = self.settings.checkpoint_interval;
        let due: Vec<String> = self
            .heads
            .iter()
            .filter(|(_, h)| {
                h.seq > h.cp_seq
                    && (all || h.seq - h.cp_seq >= every || h.cp_at.elapsed() >= interval)
            })
            .map(|(t, _)| t.clone())
            .collect();
        for tenant in due {
            let Some(h) = self.heads.get(&tenant).cloned() else {
                continue;
            };
            let time_ms = now_ms();
            let note = self
                .signer
                .sign(&tenant, &h.chain_id, h.seq, &h.hash, time_ms);
            let row = CheckpointRow {
                chain_id: h.chain_id.to_string(),
                size: h.seq,
                time_ms,
                note,
            };
            let timeout = self.settings.write_timeout;
            let stored = tokio::time::timeout(timeout, async {
                self.conn().await?.insert_checkpoint(&row).await?;
                Ok::<(), anyhow::Error>(())
            })
            .await
            .map_err(|_| anyhow::anyhow!("timed out"))
            .and_then(|r| r);
            if stored.is_err() {
                // Possibly mid-statement: never reuse it.
                self.conn = None;
            }
            match stored {
                Ok(()) => {
                    self.metrics.checkpoints.increment(1);
                    if let Some(hm) = self.heads.get_mut(&tenant) {
                        hm.cp_seq = h.seq;
                        hm.cp_at = Instant::now();
                    }
                    self.publish_checkpoint(&tenant, &row);
                }
                Err(e) => {
                    self.metrics.checkpoint_failures.increment(1);
                    tracing::warn!(error = %e, chain_id = %h.chain_id, "checkpoint not stored; will retry");
                }
            }
        }
    }

    /// Writes the checkpoint outside the database: `<dir>/<tenant>/<chain>.note` (atomic
    /// replace) and a POST to the configured URL. Failures are logged and counted, never fatal.
    fn publish_checkpoint(&mut self, tenant: &str, cp: &CheckpointRow) {
        if let Some(dir) = &self.settings.checkpoint_dir {
            let d = dir.join(tenant);
            let path = d.join(format!("{}.note", cp.chain_id));
            let res = std::fs::create_dir_all(&d).and_then(|_| {
                let mut tmp = tempfile::NamedTempFile::new_in(&d)?;
                std::io::Write::write_all(&mut tmp, cp.note.as_bytes())?;
                tmp.persist(&path).map(|_| ()).map_err(|e| e.error)
            });
            if let Err(e) = res {
                self.metrics.checkpoint_failures.increment(1);
                tracing::warn!(error = %e, path = %path.display(), "cannot publish checkpoint to file");
            }
        }
        if let (Some(url), Some(client)) = (&self.settings.checkpoint_url, &self.http) {
            let req = client
                .post(url)
                .header("content-type", "text/plain; charset=utf-8")
                .body(cp.note.clone());
            let failures = self.metrics.checkpoint_failures.clone();
            self.posts.retain(|h| !h.is_finished());
            self.posts.push(tokio::spawn(async move {
                match req.send().await {
                    Ok(r) if r.status().is_success() => {}
                    Ok(r) => {
                        failures.increment(1);
                        tracing::warn!(status = %r.status(), "checkpoint publication refused");
                    }
                    Err(e) => {
                        failures.increment(1);
                        tracing::warn!(error = %e, "checkpoint publication failed");
                    }
                }
            }));
        }
    }

    /// Closes every chain with a `chain_end` record and a final checkpoint.
    async fn seal(&mut self) {
        let tenants: Vec<String> = self.heads.keys().cloned().collect();
        let entries: Vec<Entry> = tenants
            .iter()
            .map(|t| {
                let ev = AuditEvent::new(
                    RecordKind::ChainEnd,
                    (t != super::UNATTRIBUTED).then_some(t.as_str()),
                    serde_json::json!({"reason": "shutdown"}),
                )
                .actor("scp-pep")
                .subject(self.heads[t].chain_id.to_string());
                Entry {
                    tenant: t.clone(),
                    items: vec![Item {
                        kind: RecordKind::ChainEnd,
                        event_id: ev.event_id.clone(),
                        time_ms: ev.time.timestamp_millis(),
                        body: String::from_utf8(ev.body()).unwrap_or_default(),
                    }],
                    ack: None,
                    tail: None,
                }
            })
            .collect();
        if !entries.is_empty()
            && let Err(e) = self.write(&entries).await
        {
            tracing::warn!(error = %e, "could not write chain_end records");
        }
        self.checkpoint_due(true).await;
        // The final checkpoints must leave the process too (each POST has a 5 s timeout).
        for h in self.posts.drain(..) {
            let _ = h.await;
        }
    }
}

/// Where one tenant's chain stands while a batch is built.
struct Cursor<'a> {
    tenant: &'a str,
    chain_id: &'a str,
    seq: u64,
    hash: Hash,
}

impl<'a> Cursor<'a> {
    /// Chains `item` onto the cursor and returns the row to insert (borrowing the item's body).
    fn chain<'b>(&mut self, item: &'b Item) -> NewRecord<'b>
    where
        'a: 'b,
    {
        let seq = self.seq + 1;
        let hash = record_hash(seq, &self.hash, item.body.as_bytes());
        let r = NewRecord {
            chain_id: self.chain_id,
            seq,
            tenant_id: self.tenant,
            time_ms: item.time_ms,
            kind: item.kind.as_str(),
            event_id: &item.event_id,
            prev_hash: self.hash,
            hash,
            body: &item.body,
        };
        self.seq = seq;
        self.hash = hash;
        r
    }
}

/// Resolves once `stop` turns true (the `watch::Ref` is not held across an await).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|v| *v).await;
}
