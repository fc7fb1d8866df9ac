//! Verification of audit chains, from an export file or from the store (INT-8-2).
//!
//! For every chain: each record's sequence number follows the previous one, its `prev_hash` is the
//! previous record's hash (record 1: the chain's genesis hash; a chain that starts later must be
//! anchored by a signed checkpoint at the size just before it), its `hash` recomputes from
//! `(seq, prev_hash, body)`, its body names the chain's tenant and agrees with the stored columns,
//! and every signed checkpoint (signature against the trusted keys) matches the record at its size.
//! A checkpoint larger than the chain means records were cut off (truncation); a writer's next
//! chain records the size and head of its predecessor, so a cut tail of a dead chain shows too.
//! Verification stops at the first problem and names it ([`Failure`]).
//!
//! What cannot be detected: records appended after the last checkpoint of a chain and then removed
//! or rewritten together with their successors (the report counts such unsigned records), and
//! anything done by someone holding the checkpoint signing key.

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::checkpoint::TrustedKeys;
use super::record::{BodyHead, Hash, UNATTRIBUTED, genesis_hash, record_hash};
use super::store as audit_store;
use crate::store::{Store, StoreError};

/// What went wrong, as a stable machine code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Problem {
    /// The record's hash does not recompute from its body: the record was altered.
    HashMismatch,
    /// `prev_hash` is not the previous record's hash: a record was removed, inserted or moved.
    BrokenLink,
    /// Sequence numbers skip: records were removed.
    SequenceGap,
    /// Sequence numbers repeat or go back: records were duplicated or reordered.
    OutOfOrder,
    /// A checkpoint or a successor chain covers records that are not there: the chain was cut.
    Truncated,
    /// A signed checkpoint disagrees with the record at its size.
    CheckpointMismatch,
    /// A checkpoint's signature does not verify against the trusted keys, or it names another log.
    BadSignature,
    /// A chain starts after record 1 without a signed checkpoint (or recorded purge) before it.
    UnanchoredStart,
    /// The body disagrees with the record's columns (tenant, kind, event id, time).
    ColumnMismatch,
    /// The input is not a well-formed export.
    Malformed,
    /// A chain's `chain_start` names a predecessor head that the predecessor does not have.
    ChainLinkMismatch,
    /// A chain named by a successor is missing entirely.
    MissingChain,
    /// The export file ends early or its counts disagree with its content.
    ExportIncomplete,
}

/// The first problem found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    pub problem: Problem,
    pub chain_id: Option<String>,
    /// The record at fault (for truncation: the first missing one).
    pub seq: Option<u64>,
    /// 1-based line of the export file (CSV: record number including the header row).
    pub line: Option<u64>,
    pub message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.problem)?;
        if let Some(c) = &self.chain_id {
            write!(f, " chain {c}")?;
        }
        if let Some(s) = self.seq {
            write!(f, " record {s}")?;
        }
        if let Some(l) = self.line {
            write!(f, " (line {l})")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// The outcome of a verification.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub ok: bool,
    pub chains: u64,
    pub records: u64,
    pub checkpoints: u64,
    /// Records after the last checkpoint of their chain (authentic only as far as the chain goes).
    pub unsigned_records: u64,
    /// Signatures were checked against keys given by the verifier (not keys found in the data).
    pub keys_pinned: bool,
    pub warnings: Vec<String>,
    pub failure: Option<Failure>,
}

fn fail(problem: Problem, chain: &str, seq: Option<u64>, message: impl Into<String>) -> Failure {
    Failure {
        problem,
        chain_id: Some(chain.to_owned()),
        seq,
        line: None,
        message: message.into(),
    }
}

/// Link from a chain to its writer's previous chain (from its `chain_start` record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub from_chain: String,
    pub chain_id: String,
    pub size: u64,
    pub head: Option<Hash>,
}

/// Columns stored or exported beside the body, checked against it.
#[derive(Debug, Clone, Copy)]
pub struct Columns<'a> {
    pub kind: &'a str,
    pub event_id: &'a str,
    pub time_ms: i64,
}

/// Streaming verifier of one chain.
#[derive(Debug)]
pub struct ChainCheck {
    pub chain_id: String,
    pub tenant_id: String,
    /// Verified checkpoints: size → head.
    checkpoints: BTreeMap<u64, Hash>,
    /// Records `1..=purged_upto` were removed by a recorded purge.
    purged_upto: u64,
    last: Option<(u64, Hash)>,
    records: u64,
    link: Option<Link>,
    /// A `chain_end` record was seen: the chain is closed.
    ended: bool,
}

#[derive(Deserialize)]
struct ChainStartBody {
    detail: ChainStartDetail,
}

#[derive(Deserialize)]
struct ChainStartDetail {
    previous: Option<PreviousChain>,
}

#[derive(Deserialize)]
struct PreviousChain {
    chain_id: String,
    size: u64,
    head: Option<String>,
}

fn parse_time_ms(t: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(t)
        .ok()
        .map(|d| d.timestamp_millis())
}

impl ChainCheck {
    pub fn new(chain_id: &str, tenant_id: &str) -> Self {
        ChainCheck {
            chain_id: chain_id.to_owned(),
            tenant_id: tenant_id.to_owned(),
            checkpoints: BTreeMap::new(),
            purged_upto: 0,
            last: None,
            records: 0,
            link: None,
            ended: false,
        }
    }

    /// Verifies a signed checkpoint note and keeps it. Errors: bad signature, a checkpoint of
    /// another chain, or two checkpoints of one size with different heads (a fork).
    pub fn add_checkpoint(
        &mut self,
        note: &str,
        keys: &TrustedKeys,
    ) -> Result<super::checkpoint::Checkpoint, Failure> {
        let cp = keys.open(note).map_err(|e| {
            fail(
                Problem::BadSignature,
                &self.chain_id,
                None,
                format!("checkpoint: {e}"),
            )
        })?;
        if cp.chain_id != self.chain_id || cp.tenant_id != self.tenant_id {
            return Err(fail(
                Problem::BadSignature,
                &self.chain_id,
                Some(cp.size),
                format!(
                    "checkpoint belongs to {}/{}, not to this chain",
                    cp.tenant_id, cp.chain_id
                ),
            ));
        }
        if let Some(h) = self.checkpoints.get(&cp.size)
            && *h != cp.head
        {
            return Err(fail(
                Problem::CheckpointMismatch,
                &self.chain_id,
                Some(cp.size),
                "two signed checkpoints of the same size disagree (forked chain)",
            ));
        }
        if let Some((last, _)) = self.last {
            // Checkpoints arriving after records (incremental verification) must not be behind
            // records already checked without them.
            if cp.size <= last && !self.checkpoints.contains_key(&cp.size) {
                return Err(fail(
                    Problem::Malformed,
                    &self.chain_id,
                    Some(cp.size),
                    "checkpoint arrived after the records it covers",
                ));
            }
        }
        self.checkpoints.insert(cp.size, cp.head);
        Ok(cp)
    }

    /// Records `1..=upto` were removed by a recorded purge.
    pub fn set_purged(&mut self, upto: u64) {
        self.purged_upto = self.purged_upto.max(upto);
    }

    /// The last record checked: `(seq, hash)`.
    pub fn last(&self) -> Option<(u64, Hash)> {
        self.last
    }

    /// Records checked.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Checks the next record.
    pub fn push(
        &mut self,
        seq: u64,
        prev: &Hash,
        hash: &Hash,
        body: &str,
        cols: Option<Columns<'_>>,
    ) -> Result<(), Failure> {
        if self.ended {
            return Err(fail(
                Problem::OutOfOrder,
                &self.chain_id,
                Some(seq),
                "record after the chain's chain_end record",
            ));
        }
        let prev_expected = match self.last {
            Some((last, h)) => {
                if seq <= last {
                    return Err(fail(
                        Problem::OutOfOrder,
                        &self.chain_id,
                        Some(seq),
                        format!("record {seq} follows record {last}"),
                    ));
                }
                if seq != last + 1 {
                    return Err(fail(
                        Problem::SequenceGap,
                        &self.chain_id,
                        Some(last + 1),
                        format!("records {}..{} are missing", last + 1, seq - 1),
                    ));
                }
                h
            }
            None if seq == 1 => genesis_hash(&self.chain_id),
            None => {
                // A later start must be anchored by a signed checkpoint at seq - 1.
                match self.checkpoints.get(&(seq - 1)) {
                    Some(h) => *h,
                    None => {
                        let problem = if seq - 1 <= self.purged_upto {
                            "the recorded purge is not at a signed checkpoint"
                        } else {
                            "records before it are missing and no signed checkpoint anchors it"
                        };
                        return Err(fail(
                            Problem::UnanchoredStart,
                            &self.chain_id,
                            Some(seq),
                            problem,
                        ));
                    }
                }
            }
        };
        if *prev != prev_expected {
            return Err(fail(
                Problem::BrokenLink,
                &self.chain_id,
                Some(seq),
                "prev_hash is not the hash of the record before it",
            ));
        }
        if record_hash(seq, prev, body.as_bytes()) != *hash {
            return Err(fail(
                Problem::HashMismatch,
                &self.chain_id,
                Some(seq),
                "the record's hash does not match its content (altered)",
            ));
        }
        let head: BodyHead<'_> = serde_json::from_str(body).map_err(|_| {
            fail(
                Problem::Malformed,
                &self.chain_id,
                Some(seq),
                "record body is not an audit body",
            )
        })?;
        if head.tenant_id.unwrap_or(UNATTRIBUTED) != self.tenant_id {
            return Err(fail(
                Problem::ColumnMismatch,
                &self.chain_id,
                Some(seq),
                "record body names another tenant than its chain",
            ));
        }
        if let Some(c) = cols {
            let id = head.decision_id.or(head.event_id).unwrap_or("");
            if c.kind != head.kind
                || c.event_id != id
                || Some(c.time_ms) != parse_time_ms(head.time)
            {
                return Err(fail(
                    Problem::ColumnMismatch,
                    &self.chain_id,
                    Some(seq),
                    "kind, event id or time column disagrees with the record body",
                ));
            }
        }
        if seq == 1
            && head.kind == "chain_start"
            && let Ok(b) = serde_json::from_str::<ChainStartBody>(body)
            && let Some(p) = b.detail.previous
        {
            let head = p.head.as_deref().and_then(parse_hash);
            self.link = Some(Link {
                from_chain: self.chain_id.clone(),
                chain_id: p.chain_id,
                size: p.size,
                head,
            });
        }
        if let Some(h) = self.checkpoints.get(&seq)
            && h != hash
        {
            return Err(fail(
                Problem::CheckpointMismatch,
                &self.chain_id,
                Some(seq),
                "a signed checkpoint names another hash for this record",
            ));
        }
        self.ended = head.kind == "chain_end";
        self.last = Some((seq, *hash));
        self.records += 1;
        Ok(())
    }

    /// Ends the chain: a checkpoint beyond the last record means truncation. Returns the number
    /// of records after the last checkpoint (unsigned).
    pub fn finish(&self) -> Result<u64, Failure> {
        let last = self.last.map(|l| l.0).unwrap_or(self.purged_upto);
        if let Some((&size, _)) = self.checkpoints.iter().next_back()
            && size > last
        {
            return Err(fail(
                Problem::Truncated,
                &self.chain_id,
                Some(last + 1),
                format!("a signed checkpoint covers {size} records; the chain ends at {last}"),
            ));
        }
        if self.last.is_none() && self.purged_upto == 0 && self.checkpoints.is_empty() {
            return Err(fail(
                Problem::Truncated,
                &self.chain_id,
                Some(1),
                "the chain has no records",
            ));
        }
        let signed = self
            .checkpoints
            .keys()
            .next_back()
            .copied()
            .unwrap_or(0)
            .max(self.purged_upto);
        Ok(last.saturating_sub(signed))
    }

    /// The link to the writer's previous chain, if this chain's `chain_start` names one.
    pub fn link(&self) -> Option<&Link> {
        self.link.as_ref()
    }
}

pub(crate) fn parse_hash(s: &str) -> Option<Hash> {
    let mut h = [0u8; 32];
    hex::decode_to_slice(s, &mut h).ok()?;
    Some(h)
}

/// Checks the links between chains. `ends`: chain id → last `(seq, hash)` of every chain verified;
/// `known`: chains that exist (verified or not, e.g. fully purged). `strict`: a predecessor that
/// is missing entirely is a failure (store), else a warning (an export window).
fn check_links(
    links: &[Link],
    ends: &HashMap<String, Option<(u64, Hash)>>,
    strict: bool,
    warnings: &mut Vec<String>,
) -> Result<(), Failure> {
    for l in links {
        match ends.get(&l.chain_id) {
            Some(end) => {
                let (last, last_hash) = end.map(|(s, h)| (s, Some(h))).unwrap_or((0, None));
                if l.size > last {
                    return Err(fail(
                        Problem::Truncated,
                        &l.chain_id,
                        Some(last + 1),
                        format!(
                            "successor chain {} records {} records here; the chain ends at {last}",
                            l.from_chain, l.size
                        ),
                    ));
                }
                if l.size == last && l.size > 0 && l.head != last_hash {
                    return Err(fail(
                        Problem::ChainLinkMismatch,
                        &l.chain_id,
                        Some(last),
                        format!("successor chain {} names another head", l.from_chain),
                    ));
                }
            }
            None if strict => {
                return Err(fail(
                    Problem::MissingChain,
                    &l.chain_id,
                    None,
                    format!("named by chain {} but not in the store", l.from_chain),
                ));
            }
            None => warnings.push(format!(
                "chain {} links to chain {} outside this export (not checked)",
                l.from_chain, l.chain_id
            )),
        }
    }
    Ok(())
}

/// Verifies the chains in the store (all, or one tenant's). Keys: `trusted`, else the verifier keys
/// found in the chains' `chain_start` records (reported as not pinned). `external_dir`: also check
/// the checkpoints published to that directory (`<dir>/<tenant>/<chain>.note`).
///
/// Errors only for store failures; tampering is reported in the [`Report`].
pub async fn verify_store(
    store: &Store,
    tenant: Option<&str>,
    trusted: Option<&TrustedKeys>,
    external_dir: Option<&Path>,
) -> Result<Report, StoreError> {
    let mut report = Report::default();
    let embedded;
    let keys = match trusted {
        Some(k) => {
            report.keys_pinned = true;
            k
        }
        None => {
            embedded = TrustedKeys::new(&audit_store::embedded_keys(store).await?)
                .unwrap_or_else(|_| TrustedKeys::new::<&str>(&[]).expect("empty key list"));
            report.warnings.push(
                "signatures checked against keys found in the store; pass --key to pin the published key"
                    .into(),
            );
            &embedded
        }
    };
    let mut ends: HashMap<String, Option<(u64, Hash)>> = HashMap::new();
    let mut links = Vec::new();
    let all_chains = audit_store::chains(store, None).await?;
    for c in &all_chains {
        ends.insert(c.chain_id.clone(), None);
    }
    for c in all_chains
        .iter()
        .filter(|c| tenant.is_none_or(|t| c.tenant_id == t))
    {
        let mut cc = ChainCheck::new(&c.chain_id, &c.tenant_id);
        let res = verify_stored_chain(store, &mut cc, keys, external_dir, &mut report).await?;
        if let Err(f) = res {
            report.failure = Some(f);
            return Ok(report);
        }
        report.chains += 1;
        ends.insert(c.chain_id.clone(), cc.last());
        if let Some(l) = cc.link() {
            links.push(l.clone());
        }
    }
    if let Err(f) = check_links(&links, &ends, true, &mut report.warnings) {
        report.failure = Some(f);
        return Ok(report);
    }
    report.ok = true;
    Ok(report)
}

async fn verify_stored_chain(
    store: &Store,
    cc: &mut ChainCheck,
    keys: &TrustedKeys,
    external_dir: Option<&Path>,
    report: &mut Report,
) -> Result<Result<(), Failure>, StoreError> {
    for cp in audit_store::checkpoints(store, &cc.chain_id).await? {
        match cc.add_checkpoint(&cp.note, keys) {
            Ok(c) if c.size == cp.size && c.time_ms == cp.time_ms => {}
            Ok(_) => {
                return Ok(Err(fail(
                    Problem::ColumnMismatch,
                    &cc.chain_id,
                    Some(cp.size),
                    "checkpoint row disagrees with its signed note",
                )));
            }
            Err(f) => return Ok(Err(f)),
        }
        report.checkpoints += 1;
    }
    if let Some(dir) = external_dir {
        let p = dir
            .join(&cc.tenant_id)
            .join(format!("{}.note", cc.chain_id));
        if let Ok(note) = std::fs::read_to_string(&p) {
            if let Err(f) = cc.add_checkpoint(&note, keys) {
                return Ok(Err(f));
            }
            report.checkpoints += 1;
        }
    }
    if let Some(p) = audit_store::purges(store, &cc.chain_id).await?.last() {
        cc.set_purged(p.upto_seq);
    }
    let mut after = 0u64;
    loop {
        let page = audit_store::records_page(store, &cc.chain_id, after, u64::MAX, 5000).await?;
        if page.is_empty() {
            break;
        }
        for r in &page {
            let cols = Columns {
                kind: &r.kind,
                event_id: &r.event_id,
                time_ms: r.time_ms,
            };
            if let Err(f) = cc.push(r.seq, &r.prev_hash, &r.hash, &r.body, Some(cols)) {
                return Ok(Err(f));
            }
            if r.tenant_id != cc.tenant_id {
                return Ok(Err(fail(
                    Problem::ColumnMismatch,
                    &cc.chain_id,
                    Some(r.seq),
                    "tenant column disagrees with the chain",
                )));
            }
            report.records += 1;
            after = r.seq;
        }
    }
    match cc.finish() {
        Ok(unsigned) => report.unsigned_records += unsigned,
        Err(f) => return Ok(Err(f)),
    }
    Ok(Ok(()))
}

/// One line of a JSON-lines export (all fields optional; `type` says which apply).
#[derive(Deserialize)]
struct JsonLine<'a> {
    #[serde(rename = "type")]
    ty: &'a str,
    #[serde(default, borrow)]
    chain_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    tenant_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    prev_hash: Option<&'a str>,
    #[serde(default)]
    hash: Option<&'a str>,
    #[serde(default, borrow)]
    kind: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    event_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    time_ms: Option<i64>,
    #[serde(default, borrow)]
    body: Option<&'a serde_json::value::RawValue>,
    #[serde(default)]
    note: Option<String>,
    #[serde(default)]
    upto_seq: Option<u64>,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    format: Option<String>,
    #[serde(default)]
    keys: Option<Vec<String>>,
    #[serde(default)]
    records: Option<u64>,
    #[serde(default)]
    chains: Option<u64>,
    #[serde(default)]
    checkpoints: Option<u64>,
}

/// A parsed export row, independent of the format.
enum Row<'a> {
    Header {
        keys: Vec<String>,
        tenant_id: Option<String>,
    },
    Chain {
        chain_id: &'a str,
        tenant_id: &'a str,
    },
    Checkpoint {
        chain_id: &'a str,
        note: &'a str,
        size: Option<u64>,
        time_ms: Option<i64>,
    },
    Purge {
        chain_id: &'a str,
        upto_seq: u64,
    },
    Record {
        chain_id: &'a str,
        /// CSV only: the tenant column.
        tenant_id: Option<&'a str>,
        seq: u64,
        prev: Hash,
        hash: Hash,
        cols: Columns<'a>,
        body: &'a str,
    },
    End {
        chains: u64,
        records: u64,
        checkpoints: u64,
    },
}

/// The file verifier's state machine.
struct FileState<'k> {
    trusted: Option<&'k TrustedKeys>,
    keys: Option<TrustedKeys>,
    report: Report,
    chain: Option<ChainCheck>,
    last_cp_size: Option<u64>,
    seen_chains: Vec<String>,
    ends: HashMap<String, Option<(u64, Hash)>>,
    links: Vec<Link>,
    ended: bool,
    header: bool,
    tenant: Option<String>,
}

impl<'k> FileState<'k> {
    fn close_chain(&mut self) -> Result<(), Failure> {
        if let Some(cc) = self.chain.take() {
            let unsigned = cc.finish()?;
            self.report.unsigned_records += unsigned;
            self.report.chains += 1;
            self.ends.insert(cc.chain_id.clone(), cc.last());
            if let Some(l) = cc.link() {
                self.links.push(l.clone());
            }
        }
        Ok(())
    }

    fn row(&mut self, row: Row<'_>) -> Result<(), Failure> {
        let malformed = |m: &str| Failure {
            problem: Problem::Malformed,
            chain_id: None,
            seq: None,
            line: None,
            message: m.to_owned(),
        };
        if self.ended {
            return Err(malformed("content after the end line"));
        }
        if !self.header && !matches!(row, Row::Header { .. }) {
            return Err(malformed("the export does not start with its header"));
        }
        match row {
            Row::Header { keys, tenant_id } => {
                if self.header {
                    return Err(malformed("second header"));
                }
                self.header = true;
                self.tenant = tenant_id;
                // Parsed even when keys are pinned: a malformed key is a damaged export.
                let listed = TrustedKeys::new(&keys)
                    .map_err(|_| malformed("header holds a malformed verifier key"))?;
                if self.trusted.is_none() {
                    self.keys = Some(listed);
                    self.report.warnings.push(
                        "signatures checked against the keys inside the export; pass --key to pin the published key"
                            .into(),
                    );
                } else {
                    self.report.keys_pinned = true;
                }
            }
            Row::Chain {
                chain_id,
                tenant_id,
            } => {
                self.close_chain()?;
                if self.tenant.as_deref() != Some(tenant_id) {
                    return Err(malformed("chain of another tenant than the header's"));
                }
                if self.seen_chains.iter().any(|c| c == chain_id) {
                    return Err(malformed("chain appears twice"));
                }
                self.seen_chains.push(chain_id.to_owned());
                self.chain = Some(ChainCheck::new(chain_id, tenant_id));
                self.last_cp_size = None;
            }
            Row::Checkpoint {
                chain_id,
                note,
                size: stated_size,
                time_ms: stated_time,
            } => {
                let keys = self.trusted.or(self.keys.as_ref()).expect("header seen");
                let last_cp = self.last_cp_size;
                let cc = self
                    .chain
                    .as_mut()
                    .filter(|c| c.chain_id == chain_id)
                    .ok_or_else(|| malformed("checkpoint outside its chain's section"))?;
                if cc.last().is_some() {
                    return Err(malformed("checkpoint after the chain's records"));
                }
                let cp = cc.add_checkpoint(note, keys)?;
                if stated_size != Some(cp.size) || stated_time != Some(cp.time_ms) {
                    return Err(Failure {
                        problem: Problem::ColumnMismatch,
                        chain_id: Some(chain_id.to_owned()),
                        seq: Some(cp.size),
                        line: None,
                        message: "checkpoint size or time disagrees with its signed note".into(),
                    });
                }
                let size = cc.checkpoints.keys().next_back().copied();
                if last_cp.is_some() && size <= last_cp {
                    return Err(malformed("checkpoints are not in increasing size order"));
                }
                self.last_cp_size = size;
                self.report.checkpoints += 1;
            }
            Row::Purge { chain_id, upto_seq } => {
                let cc = self
                    .chain
                    .as_mut()
                    .filter(|c| c.chain_id == chain_id)
                    .ok_or_else(|| malformed("purge outside its chain's section"))?;
                cc.set_purged(upto_seq);
            }
            Row::Record {
                chain_id,
                tenant_id,
                seq,
                prev,
                hash,
                cols,
                body,
            } => {
                let cc = self
                    .chain
                    .as_mut()
                    .filter(|c| c.chain_id == chain_id)
                    .ok_or_else(|| Failure {
                        problem: Problem::Malformed,
                        chain_id: Some(chain_id.to_owned()),
                        seq: Some(seq),
                        line: None,
                        message: "record outside its chain's section".into(),
                    })?;
                if tenant_id.is_some_and(|t| t != cc.tenant_id) {
                    return Err(fail(
                        Problem::ColumnMismatch,
                        chain_id,
                        Some(seq),
                        "tenant column disagrees with the chain",
                    ));
                }
                cc.push(seq, &prev, &hash, body, Some(cols))?;
                self.report.records += 1;
            }
            Row::End {
                chains,
                records,
                checkpoints,
            } => {
                self.close_chain()?;
                self.ended = true;
                if chains != self.report.chains
                    || records != self.report.records
                    || checkpoints != self.report.checkpoints
                {
                    return Err(Failure {
                        problem: Problem::ExportIncomplete,
                        chain_id: None,
                        seq: None,
                        line: None,
                        message: format!(
                            "the end line counts {chains} chains, {records} records, {checkpoints} checkpoints; the file holds {}, {}, {}",
                            self.report.chains, self.report.records, self.report.checkpoints
                        ),
                    });
                }
            }
        }
        Ok(())
    }
}

fn hash_field(s: Option<&str>) -> Option<Hash> {
    s.and_then(parse_hash)
}

/// Verifies an export (JSON lines or CSV, detected from the first byte) read from `input`.
/// `trusted`: pinned verifier keys; without them the export's own keys are used (and the report
/// says so).
pub fn verify_export<R: BufRead>(mut input: R, trusted: Option<&TrustedKeys>) -> Report {
    let mut st = FileState {
        trusted,
        keys: None,
        report: Report::default(),
        chain: None,
        last_cp_size: None,
        seen_chains: Vec::new(),
        ends: HashMap::new(),
        links: Vec::new(),
        ended: false,
        header: false,
        tenant: None,
    };
    let csv = match input.fill_buf() {
        Ok(b) => b.first().is_some_and(|c| *c != b'{'),
        Err(_) => false,
    };
    let res = if csv {
        verify_csv(input, &mut st)
    } else {
        verify_jsonl(input, &mut st)
    };
    let res = res.and_then(|()| {
        if !st.ended {
            return Err(Failure {
                problem: Problem::ExportIncomplete,
                chain_id: st.chain.as_ref().map(|c| c.chain_id.clone()),
                seq: None,
                line: None,
                message: "the export ends without its end line (cut off)".into(),
            });
        }
        check_links(&st.links, &st.ends, false, &mut st.report.warnings)
    });
    match res {
        Ok(()) => st.report.ok = true,
        Err(f) => st.report.failure = Some(f),
    }
    st.report
}

fn verify_jsonl<R: BufRead>(mut input: R, st: &mut FileState<'_>) -> Result<(), Failure> {
    let mut line = String::new();
    let mut n: u64 = 0;
    loop {
        line.clear();
        match input.read_line(&mut line) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) => {
                return Err(Failure {
                    problem: Problem::Malformed,
                    chain_id: None,
                    seq: None,
                    line: Some(n + 1),
                    message: format!("read error: {e}"),
                });
            }
        }
        n += 1;
        let text = line.trim_end_matches(['\n', '\r']);
        let at = |mut f: Failure| {
            f.line = Some(n);
            f
        };
        let malformed = |m: &str| Failure {
            problem: Problem::Malformed,
            chain_id: None,
            seq: None,
            line: Some(n),
            message: m.to_owned(),
        };
        let l: JsonLine<'_> =
            serde_json::from_str(text).map_err(|_| malformed("not an export line"))?;
        let row = match l.ty {
            "header" if l.format.as_deref() != Some(EXPORT_FORMAT) => {
                return Err(malformed("not a scp-pep audit export header (format)"));
            }
            "header" => Row::Header {
                keys: l.keys.unwrap_or_default(),
                tenant_id: l.tenant_id.as_deref().map(str::to_owned),
            },
            "chain" => match (&l.chain_id, &l.tenant_id) {
                (Some(c), Some(t)) => Row::Chain {
                    chain_id: c,
                    tenant_id: t,
                },
                _ => return Err(malformed("chain line without chain_id/tenant_id")),
            },
            "checkpoint" => match (&l.chain_id, &l.note) {
                (Some(c), Some(note)) => Row::Checkpoint {
                    chain_id: c,
                    note,
                    size: l.size,
                    time_ms: l.time_ms,
                },
                _ => return Err(malformed("checkpoint line without chain_id/note")),
            },
            "purge" => match (&l.chain_id, l.upto_seq) {
                (Some(c), Some(u)) => Row::Purge {
                    chain_id: c,
                    upto_seq: u,
                },
                _ => return Err(malformed("purge line without chain_id/upto_seq")),
            },
            "record" => {
                match (
                    &l.chain_id,
                    l.seq,
                    hash_field(l.prev_hash),
                    hash_field(l.hash),
                    &l.kind,
                    &l.event_id,
                    l.time_ms,
                    l.body,
                ) {
                    (
                        Some(c),
                        Some(seq),
                        Some(prev),
                        Some(hash),
                        Some(kind),
                        Some(ev),
                        Some(t),
                        Some(body),
                    ) => Row::Record {
                        chain_id: c,
                        tenant_id: None,
                        seq,
                        prev,
                        hash,
                        cols: Columns {
                            kind,
                            event_id: ev,
                            time_ms: t,
                        },
                        body: body.get(),
                    },
                    _ => {
                        return Err(malformed(
                            "record line lacks a field or has a malformed hash",
                        ));
                    }
                }
            }
            "end" => Row::End {
                chains: l.chains.unwrap_or(u64::MAX),
                records: l.records.unwrap_or(u64::MAX),
                checkpoints: l.checkpoints.unwrap_or(u64::MAX),
            },
            _ => return Err(malformed("unknown line type")),
        };
        st.row(row).map_err(at)?;
    }
}

/// The `format` of an export header.
pub const EXPORT_FORMAT: &str = "scp-pep-audit-export/v1";

/// CSV columns of an export, in order.
pub const CSV_COLUMNS: &[&str] = &[
    "type",
    "chain_id",
    "seq",
    "tenant_id",
    "kind",
    "event_id",
    "time_ms",
    "prev_hash",
    "hash",
    "data",
];

fn verify_csv<R: BufRead>(input: R, st: &mut FileState<'_>) -> Result<(), Failure> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(input);
    let malformed = |n: u64, m: &str| Failure {
        problem: Problem::Malformed,
        chain_id: None,
        seq: None,
        line: Some(n),
        message: m.to_owned(),
    };
    match rdr.headers() {
        Ok(h) if h.iter().eq(CSV_COLUMNS.iter().copied()) => {}
        _ => return Err(malformed(1, "CSV header row is not the export's")),
    }
    let mut rec = csv::StringRecord::new();
    let mut n: u64 = 1;
    loop {
        match rdr.read_record(&mut rec) {
            Ok(false) => return Ok(()),
            Ok(true) => {}
            Err(_) => return Err(malformed(n + 1, "not a CSV record of the export")),
        }
        n += 1;
        let f = |i: usize| rec.get(i).unwrap_or("");
        let num = |i: usize| f(i).parse::<u64>().ok();
        let row = match f(0) {
            "header" => {
                let v: serde_json::Value = serde_json::from_str(f(9))
                    .map_err(|_| malformed(n, "header data is not JSON"))?;
                if v["type"] != "header" || v["format"] != EXPORT_FORMAT {
                    return Err(malformed(n, "not a scp-pep audit export header"));
                }
                if v["tenant_id"].as_str() != Some(f(3)) {
                    return Err(malformed(n, "header tenant column disagrees with its data"));
                }
                Row::Header {
                    tenant_id: v["tenant_id"].as_str().map(str::to_owned),
                    keys: v["keys"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|k| k.as_str().map(str::to_owned))
                                .collect()
                        })
                        .unwrap_or_default(),
                }
            }
            "chain" => Row::Chain {
                chain_id: f(1),
                tenant_id: f(3),
            },
            "checkpoint" => Row::Checkpoint {
                chain_id: f(1),
                note: f(9),
                size: num(2),
                time_ms: f(6).parse().ok(),
            },
            "purge" => Row::Purge {
                chain_id: f(1),
                upto_seq: num(2).ok_or_else(|| malformed(n, "purge without seq"))?,
            },
            "record" => Row::Record {
                chain_id: f(1),
                tenant_id: Some(f(3)),
                seq: num(2).ok_or_else(|| malformed(n, "record without seq"))?,
                prev: parse_hash(f(7)).ok_or_else(|| malformed(n, "malformed prev_hash"))?,
                hash: parse_hash(f(8)).ok_or_else(|| malformed(n, "malformed hash"))?,
                cols: Columns {
                    kind: f(4),
                    event_id: f(5),
                    time_ms: f(6)
                        .parse()
                        .map_err(|_| malformed(n, "malformed time_ms"))?,
                },
                body: f(9),
            },
            "end" => {
                let v: serde_json::Value =
                    serde_json::from_str(f(9)).map_err(|_| malformed(n, "end data is not JSON"))?;
                Row::End {
                    chains: v["chains"].as_u64().unwrap_or(u64::MAX),
                    records: v["records"].as_u64().unwrap_or(u64::MAX),
                    checkpoints: v["checkpoints"].as_u64().unwrap_or(u64::MAX),
                }
            }
            _ => return Err(malformed(n, "unknown row type")),
        };
        st.row(row).map_err(|mut e| {
            e.line = Some(n);
            e
        })?;
    }
}

/// Verification of the store by a running server: every `verify_interval_s` it checks the records
/// added since the last pass, up to each chain's latest signed checkpoint (so a checkpoint is
/// always known before the records it covers); every `full_verify_interval_s` it starts over and
/// re-checks everything (an edit of an already-checked record shows there). Problems are logged
/// and counted in `scp_pep_audit_verify_failures_total`; a chain that failed is skipped until the
/// next full pass.
pub struct SelfVerifier {
    own_key: String,
    chains: HashMap<String, SelfChain>,
    failures: metrics::Counter,
    verified: metrics::Counter,
}

struct SelfChain {
    check: ChainCheck,
    /// Largest checkpoint size already added.
    cp_seen: u64,
    failed: bool,
}

impl SelfVerifier {
    /// `own_key`: this server's verifier key (other writers' keys are read from the store).
    pub fn new(own_key: &str) -> Self {
        SelfVerifier {
            own_key: own_key.to_owned(),
            chains: HashMap::new(),
            failures: metrics::counter!("scp_pep_audit_verify_failures_total"),
            verified: metrics::counter!("scp_pep_audit_verified_records_total"),
        }
    }

    /// One pass; `full`: forget progress and re-check every chain from its start. Returns the
    /// problems found in this pass (already logged and counted).
    pub async fn run_once(
        &mut self,
        store: &Store,
        full: bool,
    ) -> Result<Vec<Failure>, StoreError> {
        if full {
            self.chains.clear();
        }
        let mut keys = audit_store::embedded_keys(store).await?;
        keys.push(self.own_key.clone());
        let keys = TrustedKeys::new(&keys)
            .or_else(|_| TrustedKeys::new(&[self.own_key.as_str()]))
            .map_err(|e| StoreError::Database(sqlx::Error::Protocol(e.to_string())))?;
        let mut found = Vec::new();
        for c in audit_store::chains(store, None).await? {
            let entry = self
                .chains
                .entry(c.chain_id.clone())
                .or_insert_with(|| SelfChain {
                    check: ChainCheck::new(&c.chain_id, &c.tenant_id),
                    cp_seen: 0,
                    failed: false,
                });
            if entry.failed {
                continue;
            }
            let res = Self::advance(store, entry, &keys).await?;
            match res {
                Ok(n) => self.verified.increment(n),
                Err(f) => {
                    entry.failed = true;
                    self.failures.increment(1);
                    tracing::error!(failure = %f, "audit self-verification found a problem");
                    found.push(f);
                }
            }
        }
        Ok(found)
    }

    async fn advance(
        store: &Store,
        e: &mut SelfChain,
        keys: &TrustedKeys,
    ) -> Result<Result<u64, Failure>, StoreError> {
        if e.check.last().is_none()
            && let Some(p) = audit_store::purges(store, &e.check.chain_id).await?.last()
        {
            e.check.set_purged(p.upto_seq);
        }
        for cp in audit_store::checkpoints(store, &e.check.chain_id).await? {
            if cp.size <= e.cp_seen {
                continue;
            }
            if let Err(f) = e.check.add_checkpoint(&cp.note, keys) {
                return Ok(Err(f));
            }
            e.cp_seen = cp.size;
        }
        let mut after = e.check.last().map(|l| l.0).unwrap_or_else(|| {
            // A purged chain starts after its purge point.
            e.check.purged_upto
        });
        let mut n = 0;
        while after < e.cp_seen {
            let page =
                audit_store::records_page(store, &e.check.chain_id, after, e.cp_seen, 5000).await?;
            if page.is_empty() {
                // Checkpoint beyond the stored records: truncation.
                return Ok(Err(fail(
                    Problem::Truncated,
                    &e.check.chain_id,
                    Some(after + 1),
                    format!(
                        "a signed checkpoint covers {} records; the chain ends at {after}",
                        e.cp_seen
                    ),
                )));
            }
            for r in &page {
                let cols = Columns {
                    kind: &r.kind,
                    event_id: &r.event_id,
                    time_ms: r.time_ms,
                };
                if let Err(f) = e
                    .check
                    .push(r.seq, &r.prev_hash, &r.hash, &r.body, Some(cols))
                {
                    return Ok(Err(f));
                }
                after = r.seq;
                n += 1;
            }
        }
        Ok(Ok(n))
    }
}
