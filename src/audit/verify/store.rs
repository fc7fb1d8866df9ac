//! The chains in the store: `scp-pep audit verify --store` and the running server's self-verification.

use super::*;

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
