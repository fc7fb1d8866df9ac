//! SQL of the audit log, for SQLite and PostgreSQL (tables in `migrations/*/0002_audit.sql`).

use sqlx::Row;

use super::record::{ChainedRecord, Hash};
use crate::store::{Store, StoreError};

/// Runs the same statement body against whichever pool the store has.
macro_rules! with_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match $store {
            Store::Sqlite($pool) => $body,
            Store::Postgres($pool) => $body,
        }
    };
}

/// A chain's row.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChainRow {
    pub chain_id: String,
    pub tenant_id: String,
    pub writer: String,
    pub created_ms: i64,
    pub key_id: String,
    pub verifier_key: String,
}

/// A stored checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointRow {
    pub chain_id: String,
    pub size: u64,
    pub time_ms: i64,
    /// The signed note.
    pub note: String,
}

/// A recorded purge: records `1..=upto_seq` of the chain were removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurgeRow {
    pub chain_id: String,
    pub upto_seq: u64,
    pub time_ms: i64,
    pub reason: String,
}

fn to_hash(v: Vec<u8>) -> Hash {
    let mut h = [0u8; 32];
    if v.len() == 32 {
        h.copy_from_slice(&v);
    }
    h
}

fn record_from_row<R: Row>(r: &R) -> ChainedRecord
where
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    for<'q> String: sqlx::Decode<'q, R::Database> + sqlx::Type<R::Database>,
    for<'q> i64: sqlx::Decode<'q, R::Database> + sqlx::Type<R::Database>,
    for<'q> Vec<u8>: sqlx::Decode<'q, R::Database> + sqlx::Type<R::Database>,
{
    ChainedRecord {
        chain_id: r.get("chain_id"),
        seq: r.get::<i64, _>("seq") as u64,
        tenant_id: r.get("tenant_id"),
        time_ms: r.get("time_ms"),
        kind: r.get("kind"),
        event_id: r.get("event_id"),
        prev_hash: to_hash(r.get("prev_hash")),
        hash: to_hash(r.get("hash")),
        body: r.get("body"),
    }
}

const INSERT_CHAIN: &str = "INSERT INTO audit_chains (chain_id, tenant_id, writer, created_ms, key_id, verifier_key) VALUES ($1, $2, $3, $4, $5, $6)";

/// Writes new chains and records in one transaction: all of them or none.
pub async fn write_batch(
    store: &Store,
    chains: &[ChainRow],
    records: &[ChainedRecord],
) -> Result<(), StoreError> {
    match store {
        Store::Sqlite(p) => {
            let mut tx = p.begin().await?;
            for c in chains {
                sqlx::query(INSERT_CHAIN)
                    .bind(&c.chain_id)
                    .bind(&c.tenant_id)
                    .bind(&c.writer)
                    .bind(c.created_ms)
                    .bind(&c.key_id)
                    .bind(&c.verifier_key)
                    .execute(&mut *tx)
                    .await?;
            }
            for r in records {
                sqlx::query(
                    "INSERT INTO audit_records (chain_id, seq, tenant_id, time_ms, kind, event_id, prev_hash, hash, body) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                )
                .bind(&r.chain_id)
                .bind(r.seq as i64)
                .bind(&r.tenant_id)
                .bind(r.time_ms)
                .bind(&r.kind)
                .bind(&r.event_id)
                .bind(&r.prev_hash[..])
                .bind(&r.hash[..])
                .bind(&r.body)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
        }
        Store::Postgres(p) => {
            let mut tx = p.begin().await?;
            for c in chains {
                sqlx::query(INSERT_CHAIN)
                    .bind(&c.chain_id)
                    .bind(&c.tenant_id)
                    .bind(&c.writer)
                    .bind(c.created_ms)
                    .bind(&c.key_id)
                    .bind(&c.verifier_key)
                    .execute(&mut *tx)
                    .await?;
            }
            let n = records.len();
            let mut chain_ids = Vec::with_capacity(n);
            let mut seqs = Vec::with_capacity(n);
            let mut tenants = Vec::with_capacity(n);
            let mut times = Vec::with_capacity(n);
            let mut kinds = Vec::with_capacity(n);
            let mut events = Vec::with_capacity(n);
            let mut prevs = Vec::with_capacity(n);
            let mut hashes = Vec::with_capacity(n);
            let mut bodies = Vec::with_capacity(n);
            for r in records {
                chain_ids.push(r.chain_id.as_str());
                seqs.push(r.seq as i64);
                tenants.push(r.tenant_id.as_str());
                times.push(r.time_ms);
                kinds.push(r.kind.as_str());
                events.push(r.event_id.as_str());
                prevs.push(&r.prev_hash[..]);
                hashes.push(&r.hash[..]);
                bodies.push(r.body.as_str());
            }
            sqlx::query(
                "INSERT INTO audit_records (chain_id, seq, tenant_id, time_ms, kind, event_id, prev_hash, hash, body) \
                 SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::bigint[], $5::text[], $6::text[], $7::bytea[], $8::bytea[], $9::text[])",
            )
            .bind(&chain_ids)
            .bind(&seqs)
            .bind(&tenants)
            .bind(&times)
            .bind(&kinds)
            .bind(&events)
            .bind(&prevs)
            .bind(&hashes)
            .bind(&bodies)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        }
    }
    Ok(())
}

/// The newest chain of `writer` for `tenant`, with its size and head hash (size 0 and the
/// genesis hash when it has no record left).
pub async fn latest_chain(
    store: &Store,
    writer: &str,
    tenant: &str,
) -> Result<Option<(String, u64, Option<Hash>)>, StoreError> {
    let id: Option<String> = with_pool!(store, p => {
        sqlx::query_scalar(
            "SELECT chain_id FROM audit_chains WHERE writer = $1 AND tenant_id = $2 \
             ORDER BY created_ms DESC, chain_id DESC LIMIT 1",
        )
        .bind(writer).bind(tenant)
        .fetch_optional(p).await?
    });
    let Some(id) = id else { return Ok(None) };
    let head = chain_head(store, &id).await?;
    Ok(Some(match head {
        Some((seq, h)) => (id, seq, Some(h)),
        None => (id, 0, None),
    }))
}

/// The last record of a chain: `(seq, hash)`.
pub async fn chain_head(store: &Store, chain_id: &str) -> Result<Option<(u64, Hash)>, StoreError> {
    let row: Option<(i64, Vec<u8>)> = with_pool!(store, p => {
        sqlx::query_as("SELECT seq, hash FROM audit_records WHERE chain_id = $1 ORDER BY seq DESC LIMIT 1")
            .bind(chain_id)
            .fetch_optional(p).await?
    });
    Ok(row.map(|(s, h)| (s as u64, to_hash(h))))
}

/// Stores a signed checkpoint.
pub async fn insert_checkpoint(store: &Store, cp: &CheckpointRow) -> Result<(), StoreError> {
    with_pool!(store, p => {
        sqlx::query("INSERT INTO audit_checkpoints (chain_id, size, time_ms, note) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING")
            .bind(&cp.chain_id).bind(cp.size as i64).bind(cp.time_ms).bind(&cp.note)
            .execute(p).await?;
    });
    Ok(())
}

/// Chains, optionally of one tenant, oldest first.
pub async fn chains(store: &Store, tenant: Option<&str>) -> Result<Vec<ChainRow>, StoreError> {
    type Cols = (String, String, String, i64, String, String);
    let rows: Vec<Cols> = with_pool!(store, p => {
        match tenant {
            Some(t) => sqlx::query_as("SELECT chain_id, tenant_id, writer, created_ms, key_id, verifier_key FROM audit_chains WHERE tenant_id = $1 ORDER BY created_ms, chain_id")
                .bind(t).fetch_all(p).await?,
            None => sqlx::query_as("SELECT chain_id, tenant_id, writer, created_ms, key_id, verifier_key FROM audit_chains ORDER BY created_ms, chain_id")
                .fetch_all(p).await?,
        }
    });
    Ok(rows
        .into_iter()
        .map(
            |(chain_id, tenant_id, writer, created_ms, key_id, verifier_key)| ChainRow {
                chain_id,
                tenant_id,
                writer,
                created_ms,
                key_id,
                verifier_key,
            },
        )
        .collect())
}

/// A chain's checkpoints, smallest size first.
pub async fn checkpoints(store: &Store, chain_id: &str) -> Result<Vec<CheckpointRow>, StoreError> {
    let rows: Vec<(i64, i64, String)> = with_pool!(store, p => {
        sqlx::query_as("SELECT size, time_ms, note FROM audit_checkpoints WHERE chain_id = $1 ORDER BY size")
            .bind(chain_id).fetch_all(p).await?
    });
    Ok(rows
        .into_iter()
        .map(|(size, time_ms, note)| CheckpointRow {
            chain_id: chain_id.to_owned(),
            size: size as u64,
            time_ms,
            note,
        })
        .collect())
}

/// A chain's recorded purges, smallest first.
pub async fn purges(store: &Store, chain_id: &str) -> Result<Vec<PurgeRow>, StoreError> {
    let rows: Vec<(i64, i64, String)> = with_pool!(store, p => {
        sqlx::query_as("SELECT upto_seq, time_ms, reason FROM audit_purges WHERE chain_id = $1 ORDER BY upto_seq")
            .bind(chain_id).fetch_all(p).await?
    });
    Ok(rows
        .into_iter()
        .map(|(upto, time_ms, reason)| PurgeRow {
            chain_id: chain_id.to_owned(),
            upto_seq: upto as u64,
            time_ms,
            reason,
        })
        .collect())
}

/// Up to `limit` records of a chain with `seq > after` and `seq <= upto`, in sequence order.
pub async fn records_page(
    store: &Store,
    chain_id: &str,
    after: u64,
    upto: u64,
    limit: i64,
) -> Result<Vec<ChainedRecord>, StoreError> {
    const SQL: &str = "SELECT chain_id, seq, tenant_id, time_ms, kind, event_id, prev_hash, hash, body \
                       FROM audit_records WHERE chain_id = $1 AND seq > $2 AND seq <= $3 ORDER BY seq LIMIT $4";
    let upto = upto.min(i64::MAX as u64) as i64;
    let recs = with_pool!(store, p => {
        sqlx::query(SQL)
            .bind(chain_id).bind(after as i64).bind(upto).bind(limit)
            .fetch_all(p).await?
            .iter()
            .map(record_from_row)
            .collect::<Vec<_>>()
    });
    Ok(recs)
}

/// The smallest and largest `seq` of a chain's records with `from_ms <= time_ms < to_ms`.
pub async fn seq_range(
    store: &Store,
    chain_id: &str,
    from_ms: i64,
    to_ms: i64,
) -> Result<Option<(u64, u64)>, StoreError> {
    let row: (Option<i64>, Option<i64>) = with_pool!(store, p => {
        sqlx::query_as("SELECT MIN(seq), MAX(seq) FROM audit_records WHERE chain_id = $1 AND time_ms >= $2 AND time_ms < $3")
            .bind(chain_id).bind(from_ms).bind(to_ms)
            .fetch_one(p).await?
    });
    Ok(match row {
        (Some(a), Some(b)) => Some((a as u64, b as u64)),
        _ => None,
    })
}

/// The largest `seq` of a chain's records older than `before_ms`.
pub async fn last_seq_before(
    store: &Store,
    chain_id: &str,
    before_ms: i64,
) -> Result<Option<u64>, StoreError> {
    let v: Option<i64> = with_pool!(store, p => {
        sqlx::query_scalar("SELECT MAX(seq) FROM audit_records WHERE chain_id = $1 AND time_ms < $2")
            .bind(chain_id).bind(before_ms)
            .fetch_one(p).await?
    });
    Ok(v.map(|v| v as u64))
}

/// Records the purge of records `1..=upto_seq` of `chain_id` and deletes them, in one transaction.
/// Returns the number of records deleted.
pub async fn purge(store: &Store, row: &PurgeRow) -> Result<u64, StoreError> {
    let n = with_pool!(store, p => {
        let mut tx = p.begin().await?;
        sqlx::query("INSERT INTO audit_purges (chain_id, upto_seq, time_ms, reason) VALUES ($1, $2, $3, $4)")
            .bind(&row.chain_id).bind(row.upto_seq as i64).bind(row.time_ms).bind(&row.reason)
            .execute(&mut *tx).await?;
        let n = sqlx::query("DELETE FROM audit_records WHERE chain_id = $1 AND seq <= $2")
            .bind(&row.chain_id).bind(row.upto_seq as i64)
            .execute(&mut *tx).await?
            .rows_affected();
        tx.commit().await?;
        n
    });
    Ok(n)
}

/// The record of a decision or event id, if stored.
pub async fn record_by_event(
    store: &Store,
    event_id: &str,
) -> Result<Option<ChainedRecord>, StoreError> {
    const SQL: &str = "SELECT chain_id, seq, tenant_id, time_ms, kind, event_id, prev_hash, hash, body \
                       FROM audit_records WHERE event_id = $1 LIMIT 1";
    let r = with_pool!(store, p => {
        sqlx::query(SQL).bind(event_id).fetch_optional(p).await?.as_ref().map(record_from_row)
    });
    Ok(r)
}

/// The checkpoint verifier keys the store's chains name (deduplicated). These come from the
/// database itself: a verifier should pin the published key instead.
pub async fn embedded_keys(store: &Store) -> Result<Vec<String>, StoreError> {
    let keys: Vec<String> = with_pool!(store, p => {
        sqlx::query_scalar("SELECT DISTINCT verifier_key FROM audit_chains ORDER BY verifier_key")
            .fetch_all(p).await?
    });
    Ok(keys)
}
