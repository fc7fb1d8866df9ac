//! Streaming export of a tenant's audit records for regulators (INT-8-2, EXT-4.1-1).
//!
//! An export holds, in order: a header (format, tenant, window, the verifier keys), then per chain
//! a `chain` row, its signed checkpoints (increasing size), a `purge` row when the chain was
//! purged, and its records; then an `end` row with the counts of chains, records and checkpoints
//! (a cut or edited file fails verification). Every field is checked by `verify` against signed or
//! hashed content, except the header's informational `exported_at`, `note` and window.
//! Writer names, chain creation times and purge reasons are in the `chain_start` and
//! `retention_purge` records themselves. Both formats carry the same rows:
//!
//! - JSON lines: one object per line, `{"type":"record","chain_id":…,"seq":…,"kind":…,
//!   "event_id":…,"time_ms":…,"prev_hash":hex,"hash":hex,"body":{…canonical body…}}`; the body is
//!   written byte for byte as hashed.
//! - CSV: columns [`super::verify::CSV_COLUMNS`]; `data` holds the body (records), the note
//!   (checkpoints) or a JSON object (header, end).
//!
//! A time window `[from, to)` selects records by their time; each chain's slice is widened to the
//! signed checkpoints around it, so every exported record is covered by a signature on both sides
//! (records just outside the window may therefore appear).

use std::io::Write;

use super::store as audit_store;
use super::verify::CSV_COLUMNS;
use crate::store::{Store, StoreError};

/// Export format.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Jsonl,
    Csv,
}

impl Format {
    /// MIME type of the format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Jsonl => "application/x-ndjson",
            Format::Csv => "text/csv; charset=utf-8",
        }
    }
}

/// What to export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportRequest {
    pub tenant: String,
    /// Unix milliseconds, inclusive.
    pub from_ms: i64,
    /// Unix milliseconds, exclusive.
    pub to_ms: i64,
    pub format: Format,
}

/// Counts written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ExportSummary {
    pub chains: u64,
    pub records: u64,
    pub checkpoints: u64,
}

/// Export failures.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("writing the export: {0}")]
    Io(#[from] std::io::Error),
}

/// Where export bytes go: a blocking writer (CLI) or a channel (HTTP streaming).
pub enum ExportSink {
    Write(Box<dyn Write + Send>),
    Channel(tokio::sync::mpsc::Sender<Result<bytes_chunk::Chunk, std::io::Error>>),
}

/// Chunk type of [`ExportSink::Channel`].
pub mod bytes_chunk {
    /// A piece of the export.
    pub type Chunk = Vec<u8>;
}

struct Out {
    buf: Vec<u8>,
    sink: ExportSink,
}

impl Out {
    const FLUSH_AT: usize = 64 * 1024;

    async fn maybe_flush(&mut self) -> std::io::Result<()> {
        if self.buf.len() >= Self::FLUSH_AT {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        match &mut self.sink {
            ExportSink::Write(w) => {
                w.write_all(&self.buf)?;
                w.flush()?;
                self.buf.clear();
            }
            ExportSink::Channel(tx) => {
                let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(Self::FLUSH_AT));
                tx.send(Ok(chunk)).await.map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::BrokenPipe, "download cancelled")
                })?;
            }
        }
        Ok(())
    }
}

fn json_str(out: &mut Vec<u8>, s: &str) {
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Rows in a format-neutral shape.
enum Line<'a> {
    Header(&'a serde_json::Value),
    Chain(&'a audit_store::ChainRow),
    Checkpoint(&'a audit_store::CheckpointRow),
    Purge(&'a audit_store::PurgeRow),
    Record(&'a super::record::ChainedRecord),
    End(&'a ExportSummary),
}

fn write_line(out: &mut Vec<u8>, format: Format, line: Line<'_>) {
    match format {
        Format::Jsonl => {
            match line {
                Line::Header(h) => {
                    let _ = serde_json::to_writer(&mut *out, h);
                }
                Line::Chain(c) => {
                    let _ = serde_json::to_writer(
                        &mut *out,
                        &serde_json::json!({"type": "chain", "chain_id": c.chain_id, "tenant_id": c.tenant_id}),
                    );
                }
                Line::Checkpoint(cp) => {
                    let _ = serde_json::to_writer(
                        &mut *out,
                        &serde_json::json!({"type": "checkpoint", "chain_id": cp.chain_id, "size": cp.size,
                            "time_ms": cp.time_ms, "note": cp.note}),
                    );
                }
                Line::Purge(p) => {
                    let _ = serde_json::to_writer(
                        &mut *out,
                        &serde_json::json!({"type": "purge", "chain_id": p.chain_id, "upto_seq": p.upto_seq}),
                    );
                }
                Line::Record(r) => {
                    out.extend_from_slice(b"{\"type\":\"record\",\"chain_id\":");
                    json_str(out, &r.chain_id);
                    let _ = write!(out, ",\"seq\":{},\"kind\":", r.seq);
                    json_str(out, &r.kind);
                    out.extend_from_slice(b",\"event_id\":");
                    json_str(out, &r.event_id);
                    let _ = write!(
                        out,
                        ",\"time_ms\":{},\"prev_hash\":\"{}\",\"hash\":\"{}\",\"body\":",
                        r.time_ms,
                        hex::encode(r.prev_hash),
                        hex::encode(r.hash)
                    );
                    out.extend_from_slice(r.body.as_bytes());
                    out.push(b'}');
                }
                Line::End(s) => {
                    let _ = serde_json::to_writer(
                        &mut *out,
                        &serde_json::json!({"type": "end", "chains": s.chains, "records": s.records,
                            "checkpoints": s.checkpoints}),
                    );
                }
            }
            out.push(b'\n');
        }
        Format::Csv => {
            let mut w = csv::WriterBuilder::new()
                .has_headers(false)
                .from_writer(&mut *out);
            let row: [String; 10] = match line {
                Line::Header(h) => [
                    "header".into(),
                    String::new(),
                    String::new(),
                    h["tenant_id"].as_str().unwrap_or("").into(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    h.to_string(),
                ],
                Line::Chain(c) => [
                    "chain".into(),
                    c.chain_id.clone(),
                    String::new(),
                    c.tenant_id.clone(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                ],
                Line::Checkpoint(cp) => [
                    "checkpoint".into(),
                    cp.chain_id.clone(),
                    cp.size.to_string(),
                    String::new(),
                    String::new(),
                    String::new(),
                    cp.time_ms.to_string(),
                    String::new(),
                    String::new(),
                    cp.note.clone(),
                ],
                Line::Purge(p) => [
                    "purge".into(),
                    p.chain_id.clone(),
                    p.upto_seq.to_string(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                ],
                Line::Record(r) => [
                    "record".into(),
                    r.chain_id.clone(),
                    r.seq.to_string(),
                    r.tenant_id.clone(),
                    r.kind.clone(),
                    r.event_id.clone(),
                    r.time_ms.to_string(),
                    hex::encode(r.prev_hash),
                    hex::encode(r.hash),
                    r.body.clone(),
                ],
                Line::End(s) => [
                    "end".into(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    serde_json::json!({"chains": s.chains, "records": s.records, "checkpoints": s.checkpoints})
                        .to_string(),
                ],
            };
            let _ = w.write_record(&row);
            let _ = w.flush();
        }
    }
}

/// Streams the export of `req` into `sink`. `keys`: verifier keys to list in the header besides
/// those named by the store's chains (e.g. the server's current key).
///
/// Errors: store failures, write failures (a cancelled download). A failed export leaves nothing
/// behind in the store (exports only read).
pub async fn export(
    store: &Store,
    req: &ExportRequest,
    keys: &[String],
    sink: ExportSink,
) -> Result<ExportSummary, ExportError> {
    let mut out = Out {
        buf: Vec::with_capacity(Out::FLUSH_AT * 2),
        sink,
    };
    let mut all_keys = audit_store::embedded_keys(store).await?;
    for k in keys {
        if !all_keys.contains(k) {
            all_keys.push(k.clone());
        }
    }
    let header = serde_json::json!({
        "type": "header",
        "format": super::verify::EXPORT_FORMAT,
        "tenant_id": req.tenant,
        "from_ms": req.from_ms,
        "to_ms": req.to_ms,
        "exported_at": super::record::format_time(chrono::Utc::now()),
        "keys": all_keys,
        "note": "each chain's slice is widened to the signed checkpoints around the window",
    });
    if req.format == Format::Csv {
        let mut w = csv::WriterBuilder::new().from_writer(&mut out.buf);
        let _ = w.write_record(CSV_COLUMNS);
        let _ = w.flush();
    }
    write_line(&mut out.buf, req.format, Line::Header(&header));
    let mut sum = ExportSummary::default();
    for c in audit_store::chains(store, Some(&req.tenant)).await? {
        let Some((lo, hi)) =
            audit_store::seq_range(store, &c.chain_id, req.from_ms, req.to_ms).await?
        else {
            continue;
        };
        let cps = audit_store::checkpoints(store, &c.chain_id).await?;
        let purged = audit_store::purges(store, &c.chain_id).await?;
        let purged_upto = purged.last().map(|p| p.upto_seq).unwrap_or(0);
        let mut start = cps
            .iter()
            .rev()
            .find(|cp| cp.size < lo)
            .map(|cp| cp.size + 1)
            .unwrap_or(1);
        if start <= purged_upto {
            start = purged_upto + 1;
        }
        let end = cps
            .iter()
            .find(|cp| cp.size >= hi)
            .map(|cp| cp.size)
            .unwrap_or(u64::MAX);
        write_line(&mut out.buf, req.format, Line::Chain(&c));
        sum.chains += 1;
        for cp in cps
            .iter()
            .filter(|cp| cp.size + 1 >= start && cp.size <= end)
        {
            write_line(&mut out.buf, req.format, Line::Checkpoint(cp));
            sum.checkpoints += 1;
        }
        if let Some(p) = purged.last() {
            write_line(&mut out.buf, req.format, Line::Purge(p));
        }
        let mut after = start - 1;
        loop {
            let page = audit_store::records_page(store, &c.chain_id, after, end, 5000).await?;
            if page.is_empty() {
                break;
            }
            for r in &page {
                write_line(&mut out.buf, req.format, Line::Record(r));
                sum.records += 1;
                after = r.seq;
                out.maybe_flush().await?;
            }
        }
    }
    write_line(&mut out.buf, req.format, Line::End(&sum));
    out.flush().await?;
    Ok(sum)
}
