//! SQL of the audit log, for SQLite and PostgreSQL (tables in `migrations/*/0002_audit.sql`).

use sqlx::Row;

use super::record::{ChainedRecord, Hash};
use crate::store::{Store, StoreError, with_pool};

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

/// One record as the writer inserts it, borrowed from the queued entries (no copy per record).
#[derive(Debug, Clone, Copy)]
pub(crate) struct NewRecord<'a> {
    pub chain_id: &'a str,
    pub seq: u64,
    pub tenant_id: &'a str,
    /// Unix milliseconds.
    pub time_ms: i64,
    pub kind: &'a str,
    pub event_id: &'a str,
    pub prev_hash: Hash,
    pub hash: Hash,
    /// Canonical JSON.
    pub body: &'a str,
}

/// Writes chains and records, all or none, on a connection of its own: for tools and tests that
/// build a store directly (the audit writer keeps its [`WriterConn`] open instead).
pub async fn write_batch(
    store: &Store,
    chains: &[ChainRow],
    records: &[ChainedRecord],
) -> Result<(), StoreError> {
    let rows: Vec<NewRecord<'_>> = records
        .iter()
        .map(|r| NewRecord {
            chain_id: &r.chain_id,
            seq: r.seq,
            tenant_id: &r.tenant_id,
            time_ms: r.time_ms,
            kind: &r.kind,
            event_id: &r.event_id,
            prev_hash: r.prev_hash,
            hash: r.hash,
            body: &r.body,
        })
        .collect();
    WriterConn::open(store, std::time::Duration::from_secs(5))
        .await?
        .write_batch(chains, &rows)
        .await
}

/// Rows per SQLite `INSERT … VALUES (…),(…)` statement: 9 parameters a row, 4,608 per statement,
/// well under SQLite's 32,766 bound parameters.
const SQLITE_ROWS_PER_STATEMENT: usize = 512;

/// The audit writer's own connection, opened outside the pool and held for the writer's life
/// (reopened after a failure). Every SQL statement of the write path runs on it: a batch is one
/// multi-row statement (SQLite `VALUES` lists, PostgreSQL `UNNEST` arrays), prepared once per
/// shape and cached, in autocommit unless it also opens a chain or spans several statements.
/// Durability is set on the connection itself, whatever the server or pool default: SQLite
/// `synchronous=FULL` (WAL: the commit returns after the WAL fsync), PostgreSQL
/// `synchronous_commit=on` (INT-8-1).
///
/// SQLite goes through `rusqlite`, called directly on the writer's thread: a commit is one call
/// into SQLite and one fsync, with no hop to a driver worker thread and back (sqlx runs every
/// SQLite connection on a thread of its own). Such a call blocks the writer's thread, which runs
/// nothing else that is urgent; `busy_timeout` is the write timeout, and decisions never wait for
/// their acknowledgement beyond it ([`crate::audit::AuditLog`]).
pub(crate) enum WriterConn {
    Sqlite {
        conn: rusqlite::Connection,
        /// `INSERT` text per row count (index = rows − 1), built once.
        sql: Vec<Option<String>>,
    },
    Postgres(sqlx::PgConnection),
}

impl WriterConn {
    /// Opens a connection with the options of `store`'s pool (same file or server, same
    /// credentials). Call it on the runtime that will use the connection.
    pub(crate) async fn open(
        store: &Store,
        busy_timeout: std::time::Duration,
    ) -> Result<WriterConn, StoreError> {
        match store {
            Store::Sqlite(p) => {
                use rusqlite::OpenFlags;
                let opts = p.connect_options();
                let file = opts.get_filename().to_string_lossy().into_owned();
                // sqlx names a shared in-memory database `file:sqlx-in-memory-N`; open the same.
                let conn = if file.starts_with("file:sqlx-in-memory-") {
                    rusqlite::Connection::open_with_flags(
                        format!("{file}?mode=memory&cache=shared"),
                        OpenFlags::SQLITE_OPEN_READ_WRITE
                            | OpenFlags::SQLITE_OPEN_URI
                            | OpenFlags::SQLITE_OPEN_SHARED_CACHE
                            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                    )
                } else {
                    rusqlite::Connection::open_with_flags(
                        &file,
                        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                    )
                }
                .map_err(sqlite_err)?;
                conn.busy_timeout(busy_timeout).map_err(sqlite_err)?;
                // WAL is a property of the file (set by the pool); synchronous is per connection.
                // The writer's commits do not run WAL checkpoints (copying WAL pages into the
                // database file and fsyncing it) unless the WAL passes 32 MiB: the
                // checkpointer ([`checkpoint_wal`]) does that beside it, so a commit costs about
                // one WAL fsync.
                conn.execute_batch(
                    "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA wal_autocheckpoint = 8192;",
                )
                .map_err(sqlite_err)?;
                conn.set_prepared_statement_cache_capacity(64);
                Ok(WriterConn::Sqlite {
                    conn,
                    sql: vec![None; SQLITE_ROWS_PER_STATEMENT],
                })
            }
            Store::Postgres(p) => {
                use sqlx::Connection;
                let opts = (*p.connect_options()).clone();
                let mut conn = sqlx::PgConnection::connect_with(&opts).await?;
                sqlx::query("SET synchronous_commit = on")
                    .execute(&mut conn)
                    .await?;
                Ok(WriterConn::Postgres(conn))
            }
        }
    }

    /// Writes new chains and records: all of them or none. One statement (autocommit) when the
    /// batch opens no chain and fits one statement; otherwise one transaction.
    pub(crate) async fn write_batch(
        &mut self,
        chains: &[ChainRow],
        records: &[NewRecord<'_>],
    ) -> Result<(), StoreError> {
        use sqlx::Connection;
        match self {
            WriterConn::Sqlite { conn, sql } => {
                let chunks = records.chunks(SQLITE_ROWS_PER_STATEMENT);
                if chains.is_empty() && records.len() <= SQLITE_ROWS_PER_STATEMENT {
                    for c in chunks {
                        sqlite_insert(conn, sql, c)?;
                    }
                    return Ok(());
                }
                let tx = conn.transaction().map_err(sqlite_err)?;
                for c in chains {
                    tx.prepare_cached(INSERT_CHAIN_SQLITE)
                        .and_then(|mut st| {
                            st.execute(rusqlite::params![
                                c.chain_id,
                                c.tenant_id,
                                c.writer,
                                c.created_ms,
                                c.key_id,
                                c.verifier_key
                            ])
                        })
                        .map_err(sqlite_err)?;
                }
                for c in chunks {
                    sqlite_insert(&tx, sql, c)?;
                }
                tx.commit().map_err(sqlite_err)?;
            }
            WriterConn::Postgres(conn) => {
                if chains.is_empty() {
                    pg_insert(conn, records).await?;
                    return Ok(());
                }
                let mut tx = conn.begin().await?;
                for c in chains {
                    insert_chain_pg(&mut tx, c).await?;
                }
                pg_insert(&mut tx, records).await?;
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// The newest chain of `writer` for `tenant`, with its size and head hash (size 0 and no
    /// head when it has no record left).
    pub(crate) async fn latest_chain(
        &mut self,
        writer: &str,
        tenant: &str,
    ) -> Result<Option<(String, u64, Option<Hash>)>, StoreError> {
        const SQL: &str = "SELECT chain_id FROM audit_chains WHERE writer = $1 AND tenant_id = $2 \
                           ORDER BY created_ms DESC, chain_id DESC LIMIT 1";
        let id: Option<String> = match self {
            WriterConn::Sqlite { conn, .. } => {
                use rusqlite::OptionalExtension;
                conn.prepare_cached(SQL)
                    .and_then(|mut st| st.query_row([writer, tenant], |r| r.get(0)).optional())
                    .map_err(sqlite_err)?
            }
            WriterConn::Postgres(conn) => {
                sqlx::query_scalar(SQL)
                    .bind(writer)
                    .bind(tenant)
                    .fetch_optional(conn)
                    .await?
            }
        };
        let Some(id) = id else { return Ok(None) };
        let head = self.chain_head(&id).await?;
        Ok(Some(match head {
            Some((seq, h)) => (id, seq, Some(h)),
            None => (id, 0, None),
        }))
    }

    /// The last record of a chain: `(seq, hash)`.
    pub(crate) async fn chain_head(
        &mut self,
        chain_id: &str,
    ) -> Result<Option<(u64, Hash)>, StoreError> {
        const SQL: &str =
            "SELECT seq, hash FROM audit_records WHERE chain_id = $1 ORDER BY seq DESC LIMIT 1";
        let row: Option<(i64, Vec<u8>)> = match self {
            WriterConn::Sqlite { conn, .. } => {
                use rusqlite::OptionalExtension;
                conn.prepare_cached(SQL)
                    .and_then(|mut st| {
                        st.query_row([chain_id], |r| Ok((r.get(0)?, r.get(1)?)))
                            .optional()
                    })
                    .map_err(sqlite_err)?
            }
            WriterConn::Postgres(conn) => {
                sqlx::query_as(SQL)
                    .bind(chain_id)
                    .fetch_optional(conn)
                    .await?
            }
        };
        Ok(row.map(|(s, h)| (s as u64, to_hash(h))))
    }

    /// Stores a signed checkpoint (a repeated one is ignored).
    pub(crate) async fn insert_checkpoint(&mut self, cp: &CheckpointRow) -> Result<(), StoreError> {
        const SQL: &str = "INSERT INTO audit_checkpoints (chain_id, size, time_ms, note) \
                           VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING";
        match self {
            WriterConn::Sqlite { conn, .. } => {
                conn.prepare_cached(SQL)
                    .and_then(|mut st| {
                        st.execute(rusqlite::params![
                            cp.chain_id,
                            cp.size as i64,
                            cp.time_ms,
                            cp.note
                        ])
                    })
                    .map_err(sqlite_err)?;
            }
            WriterConn::Postgres(conn) => {
                sqlx::query(SQL)
                    .bind(&cp.chain_id)
                    .bind(cp.size as i64)
                    .bind(cp.time_ms)
                    .bind(&cp.note)
                    .execute(conn)
                    .await?;
            }
        }
        Ok(())
    }
}

/// SQLite: runs a passive WAL checkpoint every `every` until `stop` turns true, on a connection
/// of its own (a passive checkpoint never blocks the writer's commits). Errors are logged; the
/// writer's own `wal_autocheckpoint` bounds the WAL if this stops. Nothing on PostgreSQL.
pub(crate) async fn checkpoint_wal(
    store: Store,
    every: std::time::Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use sqlx::Connection;
    let Store::Sqlite(p) = &store else { return };
    let opts = (*p.connect_options()).clone();
    let mut conn: Option<sqlx::SqliteConnection> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|v| *v) => return,
        }
        if conn.is_none() {
            match sqlx::SqliteConnection::connect_with(&opts).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    tracing::warn!(error = %e, "WAL checkpointer cannot connect");
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&mut *c)
            .await
        {
            tracing::warn!(error = %e, "WAL checkpoint failed");
            conn = None;
        }
    }
}

const INSERT_CHAIN_SQLITE: &str = "INSERT INTO audit_chains (chain_id, tenant_id, writer, created_ms, key_id, verifier_key) VALUES (?1, ?2, ?3, ?4, ?5, ?6)";

/// A rusqlite error as a store error (the message names no value).
fn sqlite_err(e: rusqlite::Error) -> StoreError {
    StoreError::Database(sqlx::Error::Protocol(format!("sqlite: {e}")))
}

async fn insert_chain_pg(c: &mut sqlx::PgConnection, row: &ChainRow) -> Result<(), StoreError> {
    sqlx::query(INSERT_CHAIN)
        .bind(&row.chain_id)
        .bind(&row.tenant_id)
        .bind(&row.writer)
        .bind(row.created_ms)
        .bind(&row.key_id)
        .bind(&row.verifier_key)
        .execute(c)
        .await?;
    Ok(())
}

/// One multi-row `INSERT` of `rows` (at most [`SQLITE_ROWS_PER_STATEMENT`]); its text is built
/// once per row count and the prepared statement is cached.
fn sqlite_insert(
    c: &rusqlite::Connection,
    sql: &mut [Option<String>],
    rows: &[NewRecord<'_>],
) -> Result<(), StoreError> {
    let text = sql[rows.len() - 1].get_or_insert_with(|| {
        let mut s = String::with_capacity(120 + rows.len() * 20);
        s.push_str(
            "INSERT INTO audit_records (chain_id, seq, tenant_id, time_ms, kind, event_id, prev_hash, hash, body) VALUES ",
        );
        for i in 0..rows.len() {
            if i > 0 {
                s.push(',');
            }
            s.push_str("(?,?,?,?,?,?,?,?,?)");
        }
        s
    });
    let mut st = c.prepare_cached(text).map_err(sqlite_err)?;
    let mut i = 1;
    for r in rows {
        let bind = |st: &mut rusqlite::CachedStatement<'_>| -> rusqlite::Result<()> {
            st.raw_bind_parameter(i, r.chain_id)?;
            st.raw_bind_parameter(i + 1, r.seq as i64)?;
            st.raw_bind_parameter(i + 2, r.tenant_id)?;
            st.raw_bind_parameter(i + 3, r.time_ms)?;
            st.raw_bind_parameter(i + 4, r.kind)?;
            st.raw_bind_parameter(i + 5, r.event_id)?;
            st.raw_bind_parameter(i + 6, &r.prev_hash[..])?;
            st.raw_bind_parameter(i + 7, &r.hash[..])?;
            st.raw_bind_parameter(i + 8, r.body)
        };
        bind(&mut st).map_err(sqlite_err)?;
        i += 9;
    }
    st.raw_execute().map_err(sqlite_err)?;
    Ok(())
}

/// One `INSERT … SELECT FROM UNNEST(…)` of every row: one statement, one round trip.
async fn pg_insert(
    c: &mut sqlx::PgConnection,
    records: &[NewRecord<'_>],
) -> Result<(), StoreError> {
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
        chain_ids.push(r.chain_id);
        seqs.push(r.seq as i64);
        tenants.push(r.tenant_id);
        times.push(r.time_ms);
        kinds.push(r.kind);
        events.push(r.event_id);
        prevs.push(&r.prev_hash[..]);
        hashes.push(&r.hash[..]);
        bodies.push(r.body);
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
    .execute(c)
    .await?;
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

/// The canonical bodies of `tenant`'s denied decisions with `from_ms <= time_ms < to_ms`, at
/// most `limit`, newest first (the staff view's denial counts, EXT-6-1).
///
/// The SQL filter (`kind = 'decision'`, a compact body naming `"outcome":"deny"`) only narrows
/// the scan; callers re-check the parsed body. Errors: the store's.
pub async fn denied_decision_bodies(
    store: &Store,
    tenant: &str,
    from_ms: i64,
    to_ms: i64,
    limit: i64,
) -> Result<Vec<String>, StoreError> {
    const SQL: &str = "SELECT body FROM audit_records WHERE tenant_id = $1 AND time_ms >= $2 \
                       AND time_ms < $3 AND kind = 'decision' AND body LIKE '%\"outcome\":\"deny\"%' \
                       ORDER BY time_ms DESC LIMIT $4";
    let rows: Vec<String> = with_pool!(store, p => {
        sqlx::query_scalar(SQL)
            .bind(tenant).bind(from_ms).bind(to_ms).bind(limit)
            .fetch_all(p).await?
    });
    Ok(rows)
}
