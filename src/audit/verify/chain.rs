//! One chain: sequence, links, hashes, checkpoints and the links between a writer's chains.

use super::*;

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
    pub(super) checkpoints: BTreeMap<u64, Hash>,
    /// Records `1..=purged_upto` were removed by a recorded purge.
    pub(super) purged_upto: u64,
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
    ) -> Result<crate::audit::checkpoint::Checkpoint, Failure> {
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
pub(super) fn check_links(
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
