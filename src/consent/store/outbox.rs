//! The consent side of the shared outbox (`outbox`, topic `consent`; see `crate::webhooks` for the
//! webhook side): queued notices, claims, delivery attempts (CON-33, CON-34,
//! CON-36).

use super::*;

/// One row of the notification outbox (CON-33, CON-34, CON-36).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OutboxRow {
    /// UUIDv7.
    pub id: String,
    /// Idempotency key: the same notice is never queued twice (e.g. `reminder:<consent>:<version>:<days>:<channel>`).
    pub dedup_key: String,
    pub tenant_id: String,
    pub person_id: String,
    pub consent_id: String,
    pub consent_version: i64,
    pub vertical_id: String,
    /// `reminder`, `expiry` or `case_suspension`.
    pub kind: String,
    /// Reminders: days before expiry.
    pub days_before: Option<i32>,
    /// `email`, `sms`, `core` (case suspension to SCP core services) or `none` (suppressed).
    pub channel: String,
    /// `pending`, `sent`, `failed` or `suppressed`.
    pub status: String,
    /// Why suppressed or failed (`no_valid_channel`, `person_inactive`, `person_archived`, …).
    pub reason: Option<String>,
    pub attempts: i32,
    pub next_attempt_ms: i64,
    pub created_ms: i64,
    pub updated_ms: i64,
}

impl OutboxRow {
    /// The case-suspension event a withdrawal emits for the consent's (primary) vertical
    /// (CON-36), pending delivery to SCP core services.
    pub fn case_suspension(v: &ConsentVersion, now_ms: i64) -> OutboxRow {
        OutboxRow {
            id: uuid::Uuid::now_v7().to_string(),
            dedup_key: format!("case_suspension:{}:{}", v.consent_id, v.version),
            tenant_id: v.tenant_id.clone(),
            person_id: v.person_id.clone(),
            consent_id: v.consent_id.clone(),
            consent_version: v.version,
            vertical_id: v.vertical_id.clone(),
            kind: "case_suspension".into(),
            days_before: None,
            channel: "core".into(),
            status: "pending".into(),
            reason: None,
            attempts: 0,
            next_attempt_ms: now_ms,
            created_ms: now_ms,
            updated_ms: now_ms,
        }
    }
}

impl Store {
    /// Queues `rows` in one transaction; a row whose `dedup_key` is already queued is skipped.
    /// Returns how many were new.
    pub async fn consent_outbox_insert(
        &self,
        rows: &[OutboxRow],
    ) -> Result<u64, ConsentStoreError> {
        if rows.is_empty() {
            return Ok(0);
        }
        let n = with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let mut n = 0;
            for r in rows {
                n += sqlx::query(
                    "INSERT INTO outbox (id, dedup_key, tenant_id, person_id, consent_id, \
                     consent_version, vertical_id, kind, days_before, channel, status, reason, attempts, \
                     next_attempt_ms, created_ms, updated_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, \
                     $10, $11, $12, $13, $14, $15, $16) ON CONFLICT (dedup_key) DO NOTHING",
                )
                .bind(&r.id).bind(&r.dedup_key).bind(&r.tenant_id).bind(&r.person_id)
                .bind(&r.consent_id).bind(r.consent_version).bind(&r.vertical_id).bind(&r.kind)
                .bind(r.days_before).bind(&r.channel).bind(&r.status).bind(&r.reason)
                .bind(r.attempts).bind(r.next_attempt_ms).bind(r.created_ms).bind(r.updated_ms)
                .execute(&mut *tx).await?
                .rows_affected();
            }
            tx.commit().await?;
            n
        });
        Ok(n)
    }
}

/// An active head whose `active_until` falls in a scan window: what the notification scanner
/// reads (CON-33).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiringHead {
    pub tenant_id: String,
    pub person_id: String,
    pub vertical_id: String,
    pub consent_id: String,
    pub version: i64,
    /// Unix ms.
    pub active_until_ms: i64,
}

/// One delivery attempt of an outbox row (`outbox_attempts`, append-only; CON-34).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeliveryRow {
    pub outbox_id: String,
    /// 1, 2, 3… per outbox row.
    pub attempt: i32,
    /// `sent` or `failed`.
    pub status: String,
    /// Why the attempt failed (no URL, no credentials).
    pub error: Option<String>,
    /// Unix ms.
    pub time_ms: i64,
}

/// The outcome of one delivery attempt, as [`Store::consent_outbox_record_attempt`] writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord<'a> {
    pub outbox_id: &'a str,
    /// The attempt number the claim gave (the row's `attempts` after the claim).
    pub attempt: i32,
    /// The attempt's status in `outbox_attempts`: `sent` or `failed`.
    pub delivery_status: &'a str,
    pub error: Option<&'a str>,
    /// The outbox row's next status: `sent`, `pending` (retry) or `failed`.
    pub outbox_status: &'a str,
    /// Outbox `reason` (set when `failed`).
    pub reason: Option<&'a str>,
    /// When a `pending` row is due again, Unix ms.
    pub next_attempt_ms: i64,
    pub now_ms: i64,
}

/// The columns [`outbox_from_row`] reads, in its order (table alias `o`).
macro_rules! outbox_columns {
    () => {
        "o.id, o.dedup_key, o.tenant_id, o.person_id, o.consent_id, o.consent_version, \
    o.vertical_id, o.kind, o.days_before, o.channel, o.status, o.reason, o.attempts, \
    o.next_attempt_ms, o.created_ms, o.updated_ms"
    };
}

fn outbox_from_row<R>(r: &R) -> Result<OutboxRow, sqlx::Error>
where
    R: Row,
    usize: sqlx::ColumnIndex<R>,
    String: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    i64: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    i32: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    Option<String>: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    Option<i32>: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(OutboxRow {
        id: r.try_get(0)?,
        dedup_key: r.try_get(1)?,
        tenant_id: r.try_get(2)?,
        person_id: r.try_get(3)?,
        consent_id: r.try_get(4)?,
        consent_version: r.try_get(5)?,
        vertical_id: r.try_get(6)?,
        kind: r.try_get(7)?,
        days_before: r.try_get(8)?,
        channel: r.try_get(9)?,
        status: r.try_get(10)?,
        reason: r.try_get(11)?,
        attempts: r.try_get(12)?,
        next_attempt_ms: r.try_get(13)?,
        created_ms: r.try_get(14)?,
        updated_ms: r.try_get(15)?,
    })
}

/// Notification scanner and outbox delivery (CON-33, CON-34, CON-36; see `consent::notify`).
impl Store {
    /// Heads with recorded status `active` and `from_ms <= active_until_ms <= to_ms` (Unix ms),
    /// ordered by `(active_until_ms, consent_id)`, at most `limit`, strictly after the keyset
    /// cursor `(after_until_ms, after_consent)` (start with `(i64::MIN, "")`). Served by the
    /// `(status, active_until_ms)` index.
    pub async fn consent_expiring_heads(
        &self,
        from_ms: i64,
        to_ms: i64,
        after_until_ms: i64,
        after_consent: &str,
        limit: i64,
    ) -> Result<Vec<ExpiringHead>, ConsentStoreError> {
        let rows: Vec<(String, String, String, String, i64, i64)> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT tenant_id, person_id, vertical_id, consent_id, version, active_until_ms \
                 FROM consent_heads WHERE status = 'active' AND active_until_ms IS NOT NULL \
                 AND active_until_ms >= $1 AND active_until_ms <= $2 \
                 AND (active_until_ms > $3 OR (active_until_ms = $3 AND consent_id > $4)) \
                 ORDER BY active_until_ms, consent_id LIMIT $5",
            )
            .bind(from_ms).bind(to_ms).bind(after_until_ms).bind(after_consent).bind(limit)
            .fetch_all(pool).await?
        });
        Ok(rows
            .into_iter()
            .map(
                |(tenant_id, person_id, vertical_id, consent_id, version, active_until_ms)| {
                    ExpiringHead {
                        tenant_id,
                        person_id,
                        vertical_id,
                        consent_id,
                        version,
                        active_until_ms,
                    }
                },
            )
            .collect())
    }

    /// Outbox rows `pending` with `next_attempt_ms <= now_ms`, oldest due first, at most `limit`,
    /// each with the `active_until_ms` of its consent version (`None`: open-ended or unknown).
    pub async fn consent_outbox_due(
        &self,
        now_ms: i64,
        limit: i64,
    ) -> Result<Vec<(OutboxRow, Option<i64>)>, ConsentStoreError> {
        let sql: &str = concat!(
            "SELECT ",
            outbox_columns!(),
            ", v.active_until_ms FROM outbox o LEFT JOIN consent_versions v \
             ON v.consent_id = o.consent_id AND v.version = o.consent_version \
             WHERE o.topic = 'consent' AND o.status = 'pending' AND o.next_attempt_ms <= $1 \
             ORDER BY o.next_attempt_ms, o.created_ms, o.id LIMIT $2"
        );
        let out = with_pool!(self, pool => {
            let rows = sqlx::query(sql).bind(now_ms).bind(limit).fetch_all(pool).await?;
            rows.iter()
                .map(|r| Ok((outbox_from_row(r)?, r.try_get::<Option<i64>, _>(16)?)))
                .collect::<Result<Vec<_>, sqlx::Error>>()?
        });
        Ok(out)
    }

    /// Claims a due row for one delivery attempt: `attempts + 1`, due again at `lease_until_ms`
    /// (so a replica that dies mid-send leaves the row to be retried), only while it is still
    /// `pending` with `attempts` as read. True when this caller won; two replicas never send the
    /// same attempt.
    pub async fn consent_outbox_claim(
        &self,
        id: &str,
        attempts: i32,
        lease_until_ms: i64,
        now_ms: i64,
    ) -> Result<bool, ConsentStoreError> {
        let n = with_pool!(self, pool => {
            sqlx::query(
                "UPDATE outbox SET attempts = attempts + 1, next_attempt_ms = $3, \
                 updated_ms = $4 WHERE id = $1 AND status = 'pending' AND attempts = $2",
            )
            .bind(id).bind(attempts).bind(lease_until_ms).bind(now_ms)
            .execute(pool).await?
            .rows_affected()
        });
        Ok(n == 1)
    }

    /// Logs a delivery attempt in `outbox_attempts` and moves the outbox row on, in one
    /// transaction (CON-34). The row is only moved while it still holds this attempt's claim;
    /// returns false when it did not (the attempt is logged regardless).
    pub async fn consent_outbox_record_attempt(
        &self,
        a: &AttemptRecord<'_>,
    ) -> Result<bool, ConsentStoreError> {
        let n = with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "INSERT INTO outbox_attempts (outbox_id, attempt, status, error, time_ms) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(a.outbox_id).bind(a.attempt).bind(a.delivery_status).bind(a.error).bind(a.now_ms)
            .execute(&mut *tx).await?;
            let n = sqlx::query(
                "UPDATE outbox SET status = $3, reason = $4, next_attempt_ms = $5, \
                 updated_ms = $6 WHERE id = $1 AND attempts = $2 AND status = 'pending'",
            )
            .bind(a.outbox_id).bind(a.attempt).bind(a.outbox_status).bind(a.reason)
            .bind(a.next_attempt_ms).bind(a.now_ms)
            .execute(&mut *tx).await?
            .rows_affected();
            tx.commit().await?;
            n
        });
        Ok(n == 1)
    }

    /// Every outbox row of a consent (all versions), oldest first.
    pub async fn consent_outbox_of(
        &self,
        consent_id: &str,
    ) -> Result<Vec<OutboxRow>, ConsentStoreError> {
        let sql: &str = concat!(
            "SELECT ",
            outbox_columns!(),
            " FROM outbox o WHERE o.consent_id = $1 ORDER BY o.created_ms, o.id"
        );
        let out = with_pool!(self, pool => {
            let rows = sqlx::query(sql).bind(consent_id).fetch_all(pool).await?;
            rows.iter().map(outbox_from_row).collect::<Result<Vec<_>, _>>()?
        });
        Ok(out)
    }

    /// The delivery attempts of an outbox row, in attempt order.
    pub async fn consent_deliveries_of(
        &self,
        outbox_id: &str,
    ) -> Result<Vec<DeliveryRow>, ConsentStoreError> {
        let rows: Vec<(String, i32, String, Option<String>, i64)> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT outbox_id, attempt, status, error, time_ms FROM outbox_attempts \
                 WHERE outbox_id = $1 ORDER BY attempt",
            )
            .bind(outbox_id)
            .fetch_all(pool).await?
        });
        Ok(rows
            .into_iter()
            .map(|(outbox_id, attempt, status, error, time_ms)| DeliveryRow {
                outbox_id,
                attempt,
                status,
                error,
                time_ms,
            })
            .collect())
    }

    /// Outbox rows still `pending` (the outbox gauge).
    pub async fn consent_outbox_pending(&self) -> Result<i64, ConsentStoreError> {
        let n: i64 = with_pool!(self, pool => {
            sqlx::query_scalar("SELECT count(*) FROM outbox WHERE topic = 'consent' AND status = 'pending'")
                .fetch_one(pool).await?
        });
        Ok(n)
    }
}
