//! The policy store (sqlx): an embedded SQLite file by default, PostgreSQL for production and for
//! many replicas. Migrations ship inside the binary and run at start.
//!
//! Every change bumps `policy_state.version`; replicas follow it by polling and, on PostgreSQL, by
//! `LISTEN scp_pep_policy` (the store sends `pg_notify` in the same transaction).
//! `policy apply` writes a whole [`PolicySet`] in one transaction and is idempotent: applying the
//! same files twice leaves the version unchanged.

use std::str::FromStr;
use std::time::Duration;

use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

use crate::policy::{PolicyError, PolicyErrors, PolicySet};

/// PostgreSQL notification channel announcing a new policy version.
pub const NOTIFY_CHANNEL: &str = "scp_pep_policy";

/// Store failures. Messages never contain passwords (URLs are not echoed).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported store URL (expected `sqlite:` or `postgres://`)")]
    UnsupportedUrl,
    #[error("store unavailable: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored policy is invalid: {0}")]
    Invalid(PolicyErrors),
}

/// A connected store.
#[derive(Clone, Debug)]
pub enum Store {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Result of [`Store::apply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApplyOutcome {
    /// Policy version after the call.
    pub version: i64,
    /// False when the store already held exactly this set (nothing written).
    pub changed: bool,
}

/// Runs the same statement body against whichever pool the store has.
macro_rules! with_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match $store {
            Store::Sqlite($pool) => $body,
            Store::Postgres($pool) => $body,
        }
    };
}

impl Store {
    /// Connects to `url` (`sqlite:PATH`, `sqlite://PATH`, `sqlite::memory:`, `postgres://…`),
    /// creating the SQLite file if needed, and applies pending migrations.
    ///
    /// `max_connections`: pool size; `acquire_timeout`: how long a query waits for a connection.
    pub async fn connect(
        url: &str,
        max_connections: u32,
        acquire_timeout: Duration,
    ) -> Result<Store, StoreError> {
        let store = if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(Duration::from_secs(5));
            let pool = SqlitePoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(acquire_timeout)
                .connect_with(opts)
                .await?;
            sqlx::migrate!("migrations/sqlite").run(&pool).await?;
            Store::Sqlite(pool)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let opts = PgConnectOptions::from_str(url)?;
            let pool = PgPoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(acquire_timeout)
                .connect_with(opts)
                .await?;
            sqlx::migrate!("migrations/postgres").run(&pool).await?;
            Store::Postgres(pool)
        } else {
            return Err(StoreError::UnsupportedUrl);
        };
        Ok(store)
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn backend(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    /// The current policy version (0 before the first apply).
    pub async fn version(&self) -> Result<i64, StoreError> {
        let v: i64 = with_pool!(self, p => {
            sqlx::query_scalar("SELECT version FROM policy_state WHERE id = 1").fetch_one(p).await?
        });
        Ok(v)
    }

    /// Writes `set` as the file-managed policy, in one transaction: all of it or nothing.
    /// Documents created through the admin API (`source = 'api'`) are left alone.
    ///
    /// Idempotent: when the stored file digest equals `set.digest()`, nothing is written and the
    /// version stays. Otherwise the version is bumped and announced.
    pub async fn apply(&self, set: &PolicySet) -> Result<ApplyOutcome, StoreError> {
        let digest = set.digest();
        let now = chrono::Utc::now().to_rfc3339();
        let mut docs: Vec<(&str, &str, Option<&str>, String)> = Vec::new();
        for t in &set.tenants {
            docs.push(("tenant", &t.id, Some(&t.id), to_json(t)));
        }
        for i in &set.integrations {
            docs.push(("integration", &i.id, Some(&i.tenant), to_json(i)));
        }
        for r in &set.routes {
            docs.push(("route", &r.id, None, to_json(r)));
        }
        for d in &set.deny_rules {
            docs.push(("deny_rule", &d.id, Some(&d.tenant), to_json(d)));
        }
        let outcome = with_pool!(self, p => {
            let mut tx = p.begin().await?;
            // Serialize writers on the single state row.
            let (version, stored): (i64, Option<String>) = if matches!(self, Store::Postgres(_)) {
                sqlx::query_as("SELECT version, file_digest FROM policy_state WHERE id = 1 FOR UPDATE")
                    .fetch_one(&mut *tx).await?
            } else {
                sqlx::query("UPDATE policy_state SET version = version WHERE id = 1")
                    .execute(&mut *tx).await?;
                sqlx::query_as("SELECT version, file_digest FROM policy_state WHERE id = 1")
                    .fetch_one(&mut *tx).await?
            };
            if stored.as_deref() == Some(digest.as_str()) {
                tx.rollback().await?;
                ApplyOutcome { version, changed: false }
            } else {
                sqlx::query("DELETE FROM policy_documents WHERE source = 'file'")
                    .execute(&mut *tx).await?;
                for (kind, id, tenant, doc) in &docs {
                    sqlx::query(
                        "INSERT INTO policy_documents (kind, id, tenant_id, doc, source, updated_at) \
                         VALUES ($1, $2, $3, $4, 'file', $5)",
                    )
                    .bind(*kind).bind(*id).bind(*tenant).bind(doc).bind(&now)
                    .execute(&mut *tx).await?;
                }
                let next = version + 1;
                sqlx::query("UPDATE policy_state SET version = $1, file_digest = $2, updated_at = $3 WHERE id = 1")
                    .bind(next).bind(&digest).bind(&now)
                    .execute(&mut *tx).await?;
                if matches!(self, Store::Postgres(_)) {
                    sqlx::query("SELECT pg_notify($1, $2)")
                        .bind(NOTIFY_CHANNEL).bind(next.to_string())
                        .execute(&mut *tx).await?;
                }
                tx.commit().await?;
                ApplyOutcome { version: next, changed: true }
            }
        });
        Ok(outcome)
    }

    /// Reads the whole policy and its version consistently (the version is read before and after
    /// the documents; a concurrent change makes it retry).
    ///
    /// Errors: [`StoreError::Invalid`] when stored documents do not form a valid set (the caller
    /// keeps its previous snapshot).
    pub async fn load(&self) -> Result<(i64, PolicySet), StoreError> {
        loop {
            let before = self.version().await?;
            let rows: Vec<(String, String, String)> = with_pool!(self, p => {
                sqlx::query("SELECT kind, id, doc FROM policy_documents ORDER BY kind, id")
                    .fetch_all(p).await?
                    .into_iter()
                    .map(|r| (r.get::<String, _>(0), r.get::<String, _>(1), r.get::<String, _>(2)))
                    .collect()
            });
            let after = self.version().await?;
            if before != after {
                continue;
            }
            let mut set = PolicySet::default();
            let mut errors = Vec::new();
            for (kind, id, doc) in rows {
                let parsed = match kind.as_str() {
                    "tenant" => serde_json::from_str(&doc).map(|t| set.tenants.push(t)),
                    "integration" => serde_json::from_str(&doc).map(|i| set.integrations.push(i)),
                    "route" => serde_json::from_str(&doc).map(|r| set.routes.push(r)),
                    "deny_rule" => serde_json::from_str(&doc).map(|d| set.deny_rules.push(d)),
                    _ => Ok(()),
                };
                if let Err(e) = parsed {
                    errors.push(PolicyError {
                        file: "<store>".into(),
                        entry: format!("{kind} ({id})"),
                        field: "doc".into(),
                        message: e.to_string(),
                    });
                }
            }
            if !errors.is_empty() {
                return Err(StoreError::Invalid(PolicyErrors(errors)));
            }
            let set = set.validate().map_err(StoreError::Invalid)?;
            return Ok((after, set));
        }
    }

    /// A cheap round trip, for `/readyz`.
    pub async fn ping(&self) -> Result<(), StoreError> {
        with_pool!(self, p => { sqlx::query("SELECT 1").execute(p).await?; });
        Ok(())
    }

    /// Closes the pool.
    pub async fn close(&self) {
        with_pool!(self, p => p.close().await)
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}
