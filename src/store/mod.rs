//! The policy store (sqlx): an embedded SQLite file by default, PostgreSQL for production and for
//! many replicas. Migrations ship inside the binary and run at start.
//!
//! Every change bumps `policy_state.version`; replicas follow it by polling and, on PostgreSQL, by
//! `LISTEN scp_pep_policy` (the store sends `pg_notify` in the same transaction).
//! `policy apply` writes a whole [`PolicySet`] in one transaction and is idempotent: applying the
//! same files twice leaves the version unchanged.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

use crate::policy::{PolicyError, PolicyErrors, PolicySet};

mod documents;
mod migrations;

pub use documents::*;
use migrations::*;

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyOutcome {
    /// Policy version after the call.
    pub version: i64,
    /// False when the store already held exactly this set (nothing written).
    pub changed: bool,
    /// File entries not written because the admin API owns them (`"<kind> <id>"`).
    pub skipped: Vec<String>,
}

const ENFORCED_SELECT: &str = "SELECT kind, id, doc FROM policy_documents \
     WHERE kind IN ('tenant', 'integration', 'route', 'deny_rule', 'policy_pack') ORDER BY kind, id";
const DOC_SELECT_ONE: &str = "SELECT kind, id, tenant_id, doc, source, version, status, created_at, updated_at \
     FROM policy_documents WHERE kind = $1 AND id = $2";
const DOC_SELECT_KIND: &str = "SELECT kind, id, tenant_id, doc, source, version, status, created_at, updated_at \
     FROM policy_documents WHERE kind = $1 AND (CAST($2 AS TEXT) IS NULL OR tenant_id = $2) ORDER BY id";

type DocRow = (
    String,
    String,
    Option<String>,
    String,
    String,
    i64,
    Option<String>,
    String,
    String,
);

fn stored_doc(r: DocRow) -> StoredDoc {
    let (kind, id, tenant, doc, source, version, status, created_at, updated_at) = r;
    StoredDoc {
        kind,
        id,
        tenant,
        doc,
        source,
        version,
        status,
        created_at,
        updated_at,
    }
}

/// Parses enforced `(kind, id, doc)` rows into an (unvalidated) set.
fn set_from_rows(rows: Vec<(String, String, String)>) -> Result<PolicySet, PolicyErrors> {
    let mut set = PolicySet::default();
    let mut errors = Vec::new();
    for (kind, id, doc) in rows {
        let parsed = match kind.as_str() {
            "tenant" => serde_json::from_str(&doc).map(|t| set.tenants.push(t)),
            "integration" => serde_json::from_str(&doc).map(|i| set.integrations.push(i)),
            "route" => serde_json::from_str(&doc).map(|r| set.routes.push(r)),
            "deny_rule" => serde_json::from_str(&doc).map(|d| set.deny_rules.push(d)),
            "policy_pack" => serde_json::from_str(&doc).map(|p| set.policy_packs.push(p)),
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
    if errors.is_empty() {
        Ok(set)
    } else {
        Err(PolicyErrors(errors))
    }
}

/// Runs the same statement body against whichever pool the store has (`Store` must be in scope
/// at the call site). The one definition; other store modules import it.
macro_rules! with_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match $store {
            Store::Sqlite($pool) => $body,
            Store::Postgres($pool) => $body,
        }
    };
}
pub(crate) use with_pool;

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
            migrator(SQLITE_MIGRATIONS).run(&pool).await?;
            Store::Sqlite(pool)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let opts = PgConnectOptions::from_str(url)?;
            let pool = PgPoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(acquire_timeout)
                .connect_with(opts)
                .await?;
            migrator(POSTGRES_MIGRATIONS).run(&pool).await?;
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

    /// The secret `name` of the `pep_secrets` table, if it was ever stored.
    pub async fn secret_get(&self, name: &str) -> Result<Option<String>, StoreError> {
        let v: Option<String> = with_pool!(self, p => {
            sqlx::query_scalar("SELECT value FROM pep_secrets WHERE name = $1")
                .bind(name).fetch_optional(p).await?
        });
        Ok(v)
    }

    /// The secret `name`, storing `value` first when there is none (the first writer wins, so
    /// replicas starting together agree).
    pub async fn secret_get_or_insert(
        &self,
        name: &str,
        value: &str,
    ) -> Result<String, StoreError> {
        let now = chrono::Utc::now().timestamp_millis();
        let v: String = with_pool!(self, p => {
            sqlx::query("INSERT INTO pep_secrets (name, value, created_ms) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING")
                .bind(name).bind(value).bind(now).execute(p).await?;
            sqlx::query_scalar("SELECT value FROM pep_secrets WHERE name = $1")
                .bind(name).fetch_one(p).await?
        });
        Ok(v)
    }

    /// The current policy version (0 before the first apply).
    pub async fn version(&self) -> Result<i64, StoreError> {
        let v: i64 = with_pool!(self, p => {
            sqlx::query_scalar("SELECT version FROM policy_state WHERE id = 1").fetch_one(p).await?
        });
        Ok(v)
    }

    /// Writes `set` as the file-managed policy through the same domain operation as the admin API
    /// ([`Store::write_documents`], source `file`): one transaction, all of it or nothing.
    ///
    /// - Idempotent: when the stored file digest equals `set.digest()`, nothing is written and
    ///   the version stays.
    /// - Only documents whose content changed are written; file documents no longer in `set` are
    ///   deleted.
    /// - A document the admin API has changed (source `api`) belongs to the API from then on: the
    ///   file entry is skipped and reported in [`ApplyOutcome::skipped`], so a restart never
    ///   undoes a suspension or a deny rule made through the API.
    pub async fn apply(&self, set: &PolicySet) -> Result<ApplyOutcome, StoreError> {
        let digest = set.digest();
        let mut desired: Vec<(DocKind, &str, Option<&str>, String)> = Vec::new();
        for t in &set.tenants {
            desired.push((DocKind::Tenant, &t.id, Some(&t.id), to_json(t)));
        }
        for i in &set.integrations {
            desired.push((DocKind::Integration, &i.id, Some(&i.tenant), to_json(i)));
        }
        for r in &set.routes {
            desired.push((DocKind::Route, &r.id, None, to_json(r)));
        }
        for d in &set.deny_rules {
            desired.push((DocKind::DenyRule, &d.id, Some(&d.tenant), to_json(d)));
        }
        for p in &set.policy_packs {
            desired.push((DocKind::PolicyPack, &p.id, Some(&p.tenant), to_json(p)));
        }
        // Two attempts: a concurrent API write between the read and the write is a conflict.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (version, stored_digest) = self.state().await?;
            if stored_digest.as_deref() == Some(digest.as_str()) {
                return Ok(ApplyOutcome {
                    version,
                    changed: false,
                    skipped: Vec::new(),
                });
            }
            let mut current: std::collections::HashMap<(DocKind, String), StoredDoc> =
                std::collections::HashMap::new();
            for kind in DocKind::ENFORCED {
                for d in self.documents(kind, None).await? {
                    current.insert((kind, d.id.clone()), d);
                }
            }
            let mut changes = Vec::new();
            let mut skipped = Vec::new();
            for (kind, id, tenant, doc) in &desired {
                match current.remove(&(*kind, (*id).to_owned())) {
                    Some(cur) if cur.source == "api" => {
                        skipped.push(format!("{} {id}", kind.as_str()));
                    }
                    Some(cur) if cur.doc == *doc => {}
                    Some(cur) => changes.push(
                        DocChange::put(*kind, id, *tenant, doc.clone())
                            .expect(Expect::Version(cur.version)),
                    ),
                    None => changes.push(
                        DocChange::put(*kind, id, *tenant, doc.clone()).expect(Expect::Absent),
                    ),
                }
            }
            for ((kind, id), cur) in current {
                if cur.source == "file" {
                    changes.push(DocChange::delete(kind, &id).expect(Expect::Version(cur.version)));
                }
            }
            changes.sort_by(|a, b| (a.kind, &a.id).cmp(&(b.kind, &b.id)));
            match self
                .write_documents(&changes, Source::File, "policy-files", Some(&digest))
                .await
            {
                Ok(w) => {
                    return Ok(ApplyOutcome {
                        version: w.policy_version,
                        changed: true,
                        skipped,
                    });
                }
                Err(WriteError::Conflict { .. }) if attempt < 2 => continue,
                Err(WriteError::Store(e)) => return Err(StoreError::Database(e)),
                Err(WriteError::Invalid(e)) => return Err(StoreError::Invalid(e)),
                Err(e) => {
                    return Err(StoreError::Invalid(PolicyErrors(vec![PolicyError {
                        file: "<store>".into(),
                        entry: "-".into(),
                        field: "-".into(),
                        message: e.to_string(),
                    }])));
                }
            }
        }
    }

    /// `(policy version, digest of the last applied policy files)`.
    async fn state(&self) -> Result<(i64, Option<String>), StoreError> {
        let row: (i64, Option<String>) = with_pool!(self, p => {
            sqlx::query_as("SELECT version, file_digest FROM policy_state WHERE id = 1")
                .fetch_one(p).await?
        });
        Ok(row)
    }

    /// The one write path for policy and admin documents (the admin API and `policy apply`
    /// alike; ADM-8): every change in `changes` or none, in one transaction.
    ///
    /// - Each change's [`Expect`] is checked against the stored version first; a mismatch is
    ///   [`WriteError::Conflict`] and nothing is written.
    /// - An archived document accepts no change ([`WriteError::Archived`], INT-6.2-5).
    /// - Each written document gets version = previous + 1 and a row in the append-only
    ///   `policy_document_versions` (with `actor`).
    /// - When an enforced kind ([`DocKind::ENFORCED`]) changes, the whole enforced set is read
    ///   back inside the transaction and validated ([`WriteError::Invalid`] rolls back), the
    ///   policy version is bumped and, on PostgreSQL, announced with `NOTIFY scp_pep_policy` in
    ///   the same transaction (ADM-3, ADM-4).
    /// - `file_digest`: recorded for [`Store::apply`]'s idempotence (file source only).
    ///
    /// Returns the new document versions (in `changes` order; 0 for deletions) and the policy
    /// version after the call.
    pub async fn write_documents(
        &self,
        changes: &[DocChange],
        source: Source,
        actor: &str,
        file_digest: Option<&str>,
    ) -> Result<Written, WriteError> {
        self.write_documents_with(changes, source, actor, file_digest, &[])
            .await
    }

    /// [`Store::write_documents`] that also queues `webhooks` (deliveries of the events the
    /// change causes, INT-5.1-1) on the shared outbox in the same transaction: the change and
    /// its events are written together or not at all. A delivery whose `dedup_key` is queued
    /// already is skipped.
    pub async fn write_documents_with(
        &self,
        changes: &[DocChange],
        source: Source,
        actor: &str,
        file_digest: Option<&str>,
        webhooks: &[crate::webhooks::WebhookRow],
    ) -> Result<Written, WriteError> {
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let enforced = changes.iter().any(|c| c.kind.enforced());
        let out = with_pool!(self, p => {
            let mut tx = p.begin().await?;
            // Serialize writers on the single state row.
            let version: i64 = if matches!(self, Store::Postgres(_)) {
                sqlx::query_scalar("SELECT version FROM policy_state WHERE id = 1 FOR UPDATE")
                    .fetch_one(&mut *tx).await?
            } else {
                sqlx::query("UPDATE policy_state SET version = version WHERE id = 1")
                    .execute(&mut *tx).await?;
                sqlx::query_scalar("SELECT version FROM policy_state WHERE id = 1")
                    .fetch_one(&mut *tx).await?
            };
            let mut versions = Vec::with_capacity(changes.len());
            for c in changes {
                let cur: Option<(i64, Option<String>)> = sqlx::query_as(
                    "SELECT version, status FROM policy_documents WHERE kind = $1 AND id = $2",
                )
                .bind(c.kind.as_str()).bind(&c.id)
                .fetch_optional(&mut *tx).await?;
                let ok = match (&c.expect, &cur) {
                    (Expect::Any, _) => true,
                    (Expect::Absent, None) => true,
                    (Expect::Version(v), Some((cv, _))) => v == cv,
                    _ => false,
                };
                if !ok {
                    tx.rollback().await?;
                    return Err(WriteError::Conflict {
                        kind: c.kind,
                        id: c.id.clone(),
                        current: cur.map(|(v, _)| v),
                    });
                }
                if let Some((_, Some(st))) = &cur
                    && st == "archived"
                {
                    tx.rollback().await?;
                    return Err(WriteError::Archived { kind: c.kind, id: c.id.clone() });
                }
                let next = cur.as_ref().map_or(1, |(v, _)| v + 1);
                match &c.doc {
                    Some(doc) => {
                        sqlx::query(
                            "INSERT INTO policy_documents \
                             (kind, id, tenant_id, doc, source, updated_at, version, status, created_at) \
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $6) \
                             ON CONFLICT (kind, id) DO UPDATE SET tenant_id = excluded.tenant_id, \
                             doc = excluded.doc, source = excluded.source, updated_at = excluded.updated_at, \
                             version = excluded.version, status = excluded.status",
                        )
                        .bind(c.kind.as_str()).bind(&c.id).bind(&c.tenant).bind(doc)
                        .bind(source.as_str()).bind(&now).bind(next).bind(&c.status)
                        .execute(&mut *tx).await?;
                        versions.push(next);
                    }
                    None => {
                        sqlx::query("DELETE FROM policy_documents WHERE kind = $1 AND id = $2")
                            .bind(c.kind.as_str()).bind(&c.id)
                            .execute(&mut *tx).await?;
                        versions.push(0);
                    }
                }
                if cur.is_some() || c.doc.is_some() {
                    sqlx::query(
                        "INSERT INTO policy_document_versions \
                         (kind, id, version, doc, status, source, actor, time) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    )
                    .bind(c.kind.as_str()).bind(&c.id).bind(next).bind(&c.doc).bind(&c.status)
                    .bind(source.as_str()).bind(actor).bind(&now)
                    .execute(&mut *tx).await?;
                }
            }
            let mut policy_version = version;
            if enforced {
                let rows: Vec<(String, String, String)> = sqlx::query_as(ENFORCED_SELECT)
                    .fetch_all(&mut *tx).await?;
                if let Err(e) = set_from_rows(rows).and_then(|s| s.validate()) {
                    tx.rollback().await?;
                    return Err(WriteError::Invalid(e));
                }
                policy_version = version + 1;
                sqlx::query("UPDATE policy_state SET version = $1, updated_at = $2 WHERE id = 1")
                    .bind(policy_version).bind(&now)
                    .execute(&mut *tx).await?;
                if matches!(self, Store::Postgres(_)) {
                    sqlx::query("SELECT pg_notify($1, $2)")
                        .bind(NOTIFY_CHANNEL).bind(policy_version.to_string())
                        .execute(&mut *tx).await?;
                }
            }
            if let Some(d) = file_digest {
                sqlx::query("UPDATE policy_state SET file_digest = $1, updated_at = $2 WHERE id = 1")
                    .bind(d).bind(&now)
                    .execute(&mut *tx).await?;
            }
            for r in webhooks {
                sqlx::query(crate::webhooks::store::INSERT_SQL)
                    .bind(&r.id).bind(&r.dedup_key).bind(&r.tenant_id).bind(&r.status)
                    .bind(&r.reason).bind(r.attempts).bind(r.next_attempt_ms).bind(r.created_ms)
                    .bind(r.updated_ms).bind(&r.target).bind(&r.integration_id).bind(&r.event_type)
                    .bind(&r.payload).bind(r.attempt_base)
                    .execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Written { policy_version, versions }
        });
        Ok(out)
    }

    /// One document by kind and id, or `None`.
    pub async fn document(
        &self,
        kind: DocKind,
        id: &str,
    ) -> Result<Option<StoredDoc>, sqlx::Error> {
        let row = with_pool!(self, p => {
            sqlx::query_as::<_, DocRow>(DOC_SELECT_ONE)
                .bind(kind.as_str()).bind(id)
                .fetch_optional(p).await?
                .map(stored_doc)
        });
        Ok(row)
    }

    /// Every document of `kind` (of `tenant` when given, else of every tenant), ordered by id.
    pub async fn documents(
        &self,
        kind: DocKind,
        tenant: Option<&str>,
    ) -> Result<Vec<StoredDoc>, sqlx::Error> {
        let rows = with_pool!(self, p => {
            sqlx::query_as::<_, DocRow>(DOC_SELECT_KIND)
                .bind(kind.as_str()).bind(tenant)
                .fetch_all(p).await?
                .into_iter()
                .map(stored_doc)
                .collect()
        });
        Ok(rows)
    }

    /// Every stored version of one document, oldest first (ADM-6 versions, audit trail).
    pub async fn document_versions(
        &self,
        kind: DocKind,
        id: &str,
    ) -> Result<Vec<DocVersion>, sqlx::Error> {
        type VersionRow = (i64, Option<String>, Option<String>, String, String, String);
        let rows: Vec<VersionRow> = with_pool!(self, p => {
            sqlx::query_as(
                "SELECT version, doc, status, source, actor, time FROM policy_document_versions \
                 WHERE kind = $1 AND id = $2 ORDER BY version",
            )
            .bind(kind.as_str()).bind(id)
            .fetch_all(p).await?
        });
        Ok(rows
            .into_iter()
            .map(|(version, doc, status, source, actor, time)| DocVersion {
                version,
                doc,
                status,
                source,
                actor,
                time,
            })
            .collect())
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
                sqlx::query_as(ENFORCED_SELECT).fetch_all(p).await?
            });
            let after = self.version().await?;
            if before != after {
                continue;
            }
            let set = set_from_rows(rows)
                .and_then(|s| s.validate())
                .map_err(StoreError::Invalid)?;
            return Ok((after, set));
        }
    }

    /// Records "last successful sync" times (ONB-AUD-4): for each `(integration, ms)`, the later
    /// of the stored and the given time. Rows are created on first use.
    pub async fn record_syncs(&self, syncs: &[(String, i64)]) -> Result<(), sqlx::Error> {
        if syncs.is_empty() {
            return Ok(());
        }
        let now = chrono::Utc::now().timestamp_millis();
        with_pool!(self, p => {
            let mut tx = p.begin().await?;
            for (id, ms) in syncs {
                sqlx::query(
                    "INSERT INTO integration_activity (integration_id, last_success_ms, updated_ms) \
                     VALUES ($1, $2, $3) ON CONFLICT (integration_id) DO UPDATE SET \
                     last_success_ms = CASE WHEN integration_activity.last_success_ms IS NULL \
                       OR integration_activity.last_success_ms < excluded.last_success_ms \
                       THEN excluded.last_success_ms ELSE integration_activity.last_success_ms END, \
                     updated_ms = excluded.updated_ms",
                )
                .bind(id).bind(ms).bind(now)
                .execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Records a successful handshake of `integration` at `ms` (ONB-6, ONB-7): health `healthy`,
    /// `last_handshake_ms` (and "last successful sync") at least `ms`.
    pub async fn record_handshake(&self, integration: &str, ms: i64) -> Result<(), sqlx::Error> {
        let now = chrono::Utc::now().timestamp_millis();
        with_pool!(self, p => {
            sqlx::query(
                "INSERT INTO integration_activity \
                 (integration_id, last_success_ms, last_handshake_ms, health, updated_ms) \
                 VALUES ($1, $2, $2, 'healthy', $3) ON CONFLICT (integration_id) DO UPDATE SET \
                 last_handshake_ms = CASE WHEN integration_activity.last_handshake_ms IS NULL \
                   OR integration_activity.last_handshake_ms < excluded.last_handshake_ms \
                   THEN excluded.last_handshake_ms ELSE integration_activity.last_handshake_ms END, \
                 last_success_ms = CASE WHEN integration_activity.last_success_ms IS NULL \
                   OR integration_activity.last_success_ms < excluded.last_success_ms \
                   THEN excluded.last_success_ms ELSE integration_activity.last_success_ms END, \
                 health = 'healthy', updated_ms = excluded.updated_ms",
            )
            .bind(integration).bind(ms).bind(now)
            .execute(p).await?;
        });
        Ok(())
    }

    /// The runtime activity of `integration` (ONB-7, ONB-AUD-4), `None` before its first request.
    pub async fn integration_activity(
        &self,
        integration: &str,
    ) -> Result<Option<IntegrationActivity>, sqlx::Error> {
        let row: Option<(Option<i64>, Option<i64>, String, i64)> = with_pool!(self, p => {
            sqlx::query_as(
                "SELECT last_success_ms, last_handshake_ms, health, webhook_failures \
                 FROM integration_activity WHERE integration_id = $1",
            )
            .bind(integration)
            .fetch_optional(p).await?
        });
        Ok(row.map(
            |(last_success_ms, last_handshake_ms, health, webhook_failures)| IntegrationActivity {
                last_success_ms,
                last_handshake_ms,
                health,
                webhook_failures,
            },
        ))
    }

    /// Wakes `notify` on every PostgreSQL `NOTIFY` on `channel` (a background task that reconnects
    /// after 1 s when the connection drops) until `stop` turns true. Nothing on SQLite: its
    /// followers rely on polling alone.
    pub fn spawn_listener(
        &self,
        channel: &'static str,
        notify: std::sync::Arc<tokio::sync::Notify>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let Store::Postgres(pool) = self else {
            return;
        };
        let pool = pool.clone();
        tokio::spawn(async move {
            loop {
                match sqlx::postgres::PgListener::connect_with(&pool).await {
                    Ok(mut l) => {
                        if l.listen(channel).await.is_ok() {
                            loop {
                                tokio::select! {
                                    r = l.recv() => match r {
                                        Ok(_) => notify.notify_one(),
                                        Err(_) => break,
                                    },
                                    _ = stop.wait_for(|v| *v) => return,
                                }
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, channel, "LISTEN failed; relying on polling")
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.wait_for(|v| *v) => return,
                }
            }
        });
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
