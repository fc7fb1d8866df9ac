//! Retention per tenant policy, with an audited, checkpointed purge (INT-8-2).
//!
//! A chain's records older than its tenant's retention (`audit_retention_days` in the tenant
//! policy, else `audit.retention_days`) are removed up to the largest signed checkpoint whose size
//! is at or below the last expired record, never beyond: what remains still starts at a signed
//! checkpoint, so it stays verifiable. Each purge is first recorded as a `retention_purge` audit
//! event (in the tenant's chain), then written to `audit_purges` and executed in one transaction;
//! the store's triggers refuse any other DELETE.

use std::collections::HashMap;

use super::AuditLog;
use super::record::{AuditEvent, RecordKind, UNATTRIBUTED};
use super::store::{self as audit_store, PurgeRow};
use crate::store::{Store, StoreError};

/// One purge done.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PurgeOutcome {
    pub chain_id: String,
    pub tenant_id: String,
    /// Records `1..=upto_seq` are gone.
    pub upto_seq: u64,
    pub deleted: u64,
}

/// Purge failures.
#[derive(Debug, thiserror::Error)]
pub enum PurgeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the purge could not be audited: {0}")]
    Audit(String),
}

/// Applies retention at `now_ms`. `days`: retention per tenant; `default_days` for the others
/// (and for unattributed records). `audit`: where purge events go; `None` only when the audit log
/// is off, in which case nothing is purged (an unaudited purge is not allowed).
pub async fn purge_expired(
    store: &Store,
    audit: Option<&AuditLog>,
    days: &HashMap<String, u32>,
    default_days: u32,
    now_ms: i64,
) -> Result<Vec<PurgeOutcome>, PurgeError> {
    let Some(audit) = audit else {
        return Ok(Vec::new());
    };
    let mut done = Vec::new();
    for c in audit_store::chains(store, None).await? {
        let keep_days = days.get(&c.tenant_id).copied().unwrap_or(default_days);
        let cutoff = now_ms - i64::from(keep_days) * 86_400_000;
        let Some(expired_upto) = audit_store::last_seq_before(store, &c.chain_id, cutoff).await?
        else {
            continue;
        };
        let already = audit_store::purges(store, &c.chain_id)
            .await?
            .last()
            .map(|p| p.upto_seq)
            .unwrap_or(0);
        let Some(upto) = audit_store::checkpoints(store, &c.chain_id)
            .await?
            .iter()
            .rev()
            .map(|cp| cp.size)
            .find(|s| *s <= expired_upto)
            .filter(|s| *s > already)
        else {
            continue;
        };
        let reason = format!("retention {keep_days} days");
        let ev = AuditEvent::new(
            RecordKind::RetentionPurge,
            (c.tenant_id != UNATTRIBUTED).then_some(c.tenant_id.as_str()),
            serde_json::json!({
                "chain_id": c.chain_id,
                "upto_seq": upto,
                "retention_days": keep_days,
                "cutoff_ms": cutoff,
            }),
        )
        .actor("scp-pep")
        .subject(c.chain_id.clone());
        audit
            .record_event(&ev)
            .await
            .map_err(|e| PurgeError::Audit(e.to_string()))?;
        let deleted = audit_store::purge(
            store,
            &PurgeRow {
                chain_id: c.chain_id.clone(),
                upto_seq: upto,
                time_ms: now_ms,
                reason,
            },
        )
        .await?;
        tracing::info!(chain_id = %c.chain_id, tenant = %c.tenant_id, upto, deleted, "audit retention purge");
        metrics::counter!("scp_pep_audit_purged_records_total").increment(deleted);
        done.push(PurgeOutcome {
            chain_id: c.chain_id,
            tenant_id: c.tenant_id,
            upto_seq: upto,
            deleted,
        });
    }
    Ok(done)
}
