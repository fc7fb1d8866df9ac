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

mod chain;
mod export;
mod store;

pub use chain::{ChainCheck, Columns, Link};
use chain::{check_links, parse_hash};
pub use export::{CSV_COLUMNS, EXPORT_FORMAT, verify_export};
pub use store::{SelfVerifier, verify_store};

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
