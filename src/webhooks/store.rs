//! The webhook side of the shared outbox (`outbox` topic `webhook`, `outbox_attempts`) and the
//! per-subscription secrets and circuits (INT-5.1-1, INT-9.2-1, EXT-4.3-2, EXT-5.1-1,
//! ONB-LOG-01).

use sqlx::Row;

use crate::store::{Store, StoreError, with_pool};

/// One webhook delivery: an outbox row of topic `webhook` (one event to one subscription).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WebhookRow {
    /// UUIDv7: the `webhook-id` and `Idempotency-Key` of every attempt.
    pub id: String,
    /// `webhook:<event id>:<subscription>`: an event reaches a subscription once.
    pub dedup_key: String,
    pub tenant_id: String,
    pub integration_id: String,
    /// The subscription id (`wh-…`).
    pub target: String,
    /// e.g. `integration.state_changed`.
    pub event_type: String,
    /// The JSON body, signed as is.
    pub payload: String,
    /// `pending`, `sent` or `failed` (dead letter).
    pub status: String,
    /// Why `failed`: `max_attempts`, `destination_refused`, `subscription_gone`, `no_secret`.
    pub reason: Option<String>,
    pub attempts: i32,
    /// `attempts` at the last replay.
    pub attempt_base: i32,
    /// Unix ms.
    pub next_attempt_ms: i64,
    pub created_ms: i64,
    pub updated_ms: i64,
}

/// One logged attempt of a webhook delivery (`outbox_attempts`, append-only; EXT-4.3-2). Never
/// the response body.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WebhookAttempt {
    pub attempt: i32,
    /// `sent` or `failed`.
    pub status: String,
    /// The receiver's HTTP status, when it answered.
    pub http_status: Option<i32>,
    /// From the request start to the response headers (or the failure), ms.
    pub latency_ms: Option<i64>,
    /// `http_3xx` (redirects are not followed), `http_4xx`, `http_5xx`, `timeout`, `connect`,
    /// `destination_refused`, `subscription_gone`, `no_secret`, `request`.
    pub error_class: Option<String>,
    /// Unix ms.
    pub time_ms: i64,
}

/// The outcome of one webhook attempt, as [`Store::webhook_record_attempt`] writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookOutcome<'a> {
    pub outbox_id: &'a str,
    /// The attempt number the claim gave.
    pub attempt: i32,
    pub sent: bool,
    pub http_status: Option<i32>,
    pub latency_ms: Option<i64>,
    pub error_class: Option<&'a str>,
    /// The row's next status: `sent`, `pending` (retry) or `failed` (dead letter).
    pub next_status: &'a str,
    pub reason: Option<&'a str>,
    /// Unix ms.
    pub next_attempt_ms: i64,
    pub now_ms: i64,
}

/// The signing secrets of a subscription (EXT-5.1-1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Secrets {
    /// `whsec_<base64>`.
    pub current: String,
    /// The secret before the last rotation, signing too until `previous_until_ms`.
    pub previous: Option<String>,
    pub previous_until_ms: Option<i64>,
}

/// Inserts one webhook row (binds: id, dedup_key, tenant_id, status, reason, attempts,
/// next_attempt_ms, created_ms, updated_ms, target, integration_id, event_type, payload,
/// attempt_base); an existing `dedup_key` is skipped.
pub(crate) const INSERT_SQL: &str = "INSERT INTO outbox (id, dedup_key, tenant_id, kind, channel, \
     status, reason, attempts, next_attempt_ms, created_ms, updated_ms, topic, target, \
     integration_id, event_type, payload, attempt_base) VALUES ($1, $2, $3, 'webhook', 'webhook', \
     $4, $5, $6, $7, $8, $9, 'webhook', $10, $11, $12, $13, $14) ON CONFLICT (dedup_key) DO NOTHING";

macro_rules! webhook_columns {
    () => {
        "id, dedup_key, tenant_id, integration_id, target, event_type, payload, status, reason, \
         attempts, attempt_base, next_attempt_ms, created_ms, updated_ms"
    };
}

fn row_of<R>(r: &R) -> Result<WebhookRow, sqlx::Error>
where
    R: Row,
    usize: sqlx::ColumnIndex<R>,
    String: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    i64: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    i32: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    Option<String>: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(WebhookRow {
        id: r.try_get(0)?,
        dedup_key: r.try_get(1)?,
        tenant_id: r.try_get(2)?,
        integration_id: r.try_get::<Option<String>, _>(3)?.unwrap_or_default(),
        target: r.try_get::<Option<String>, _>(4)?.unwrap_or_default(),
        event_type: r.try_get::<Option<String>, _>(5)?.unwrap_or_default(),
        payload: r.try_get::<Option<String>, _>(6)?.unwrap_or_default(),
        status: r.try_get(7)?,
        reason: r.try_get(8)?,
        attempts: r.try_get(9)?,
        attempt_base: r.try_get(10)?,
        next_attempt_ms: r.try_get(11)?,
        created_ms: r.try_get(12)?,
        updated_ms: r.try_get(13)?,
    })
}

impl Store {
    /// Queues webhook deliveries in one transaction; a row whose `dedup_key` is queued already
    /// is skipped. Returns how many were new. Errors: the store is unreachable (nothing queued).
    pub async fn webhook_enqueue(&self, rows: &[WebhookRow]) -> Result<u64, StoreError> {
        if rows.is_empty() {
            return Ok(0);
        }
        let n = with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let mut n = 0;
            for r in rows {
                n += sqlx::query(INSERT_SQL)
                .bind(&r.id).bind(&r.dedup_key).bind(&r.tenant_id).bind(&r.status)
                .bind(&r.reason).bind(r.attempts).bind(r.next_attempt_ms).bind(r.created_ms)
                .bind(r.updated_ms).bind(&r.target).bind(&r.integration_id).bind(&r.event_type)
                .bind(&r.payload).bind(r.attempt_base)
                .execute(&mut *tx).await?
                .rows_affected();
            }
            tx.commit().await?;
            n
        });
        Ok(n)
    }

    /// Webhook rows `pending` and due at `now_ms`, oldest due first, at most `limit`.
    pub async fn webhook_due(
        &self,
        now_ms: i64,
        limit: i64,
    ) -> Result<Vec<WebhookRow>, StoreError> {
        let sql: &str = concat!(
            "SELECT ",
            webhook_columns!(),
            " FROM outbox WHERE topic = 'webhook' AND status = 'pending' AND next_attempt_ms <= $1 \
             ORDER BY next_attempt_ms, created_ms, id LIMIT $2"
        );
        let out = with_pool!(self, pool => {
            let rows = sqlx::query(sql).bind(now_ms).bind(limit).fetch_all(pool).await?;
            rows.iter().map(row_of).collect::<Result<Vec<_>, _>>()?
        });
        Ok(out)
    }

    /// One webhook row by id.
    pub async fn webhook_row(&self, id: &str) -> Result<Option<WebhookRow>, StoreError> {
        let sql: &str = concat!(
            "SELECT ",
            webhook_columns!(),
            " FROM outbox WHERE topic = 'webhook' AND id = $1"
        );
        let out = with_pool!(self, pool => {
            match sqlx::query(sql).bind(id).fetch_optional(pool).await? {
                Some(r) => Some(row_of(&r)?),
                None => None,
            }
        });
        Ok(out)
    }

    /// The newest `limit` deliveries of subscription `target`, newest first.
    pub async fn webhook_rows_of(
        &self,
        target: &str,
        limit: i64,
    ) -> Result<Vec<WebhookRow>, StoreError> {
        let sql: &str = concat!(
            "SELECT ",
            webhook_columns!(),
            " FROM outbox WHERE topic = 'webhook' AND target = $1 \
             ORDER BY created_ms DESC, id DESC LIMIT $2"
        );
        let out = with_pool!(self, pool => {
            let rows = sqlx::query(sql).bind(target).bind(limit).fetch_all(pool).await?;
            rows.iter().map(row_of).collect::<Result<Vec<_>, _>>()?
        });
        Ok(out)
    }

    /// The attempts of a delivery, in order.
    pub async fn webhook_attempts(
        &self,
        outbox_id: &str,
    ) -> Result<Vec<WebhookAttempt>, StoreError> {
        type R = (i32, String, Option<i32>, Option<i64>, Option<String>, i64);
        let rows: Vec<R> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT attempt, status, http_status, latency_ms, error_class, time_ms \
                 FROM outbox_attempts WHERE outbox_id = $1 ORDER BY attempt",
            )
            .bind(outbox_id).fetch_all(pool).await?
        });
        Ok(rows
            .into_iter()
            .map(
                |(attempt, status, http_status, latency_ms, error_class, time_ms)| WebhookAttempt {
                    attempt,
                    status,
                    http_status,
                    latency_ms,
                    error_class,
                    time_ms,
                },
            )
            .collect())
    }

    /// Logs an attempt in `outbox_attempts` and moves the row on, in one transaction. The row
    /// moves only while it still holds this attempt's claim; returns whether it did.
    pub async fn webhook_record_attempt(&self, o: &WebhookOutcome<'_>) -> Result<bool, StoreError> {
        let n = with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "INSERT INTO outbox_attempts (outbox_id, attempt, status, error, time_ms, \
                 http_status, latency_ms, error_class) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(o.outbox_id).bind(o.attempt).bind(if o.sent { "sent" } else { "failed" })
            .bind(o.error_class).bind(o.now_ms).bind(o.http_status).bind(o.latency_ms)
            .bind(o.error_class)
            .execute(&mut *tx).await?;
            let n = sqlx::query(
                "UPDATE outbox SET status = $3, reason = $4, next_attempt_ms = $5, updated_ms = $6 \
                 WHERE id = $1 AND attempts = $2 AND status = 'pending'",
            )
            .bind(o.outbox_id).bind(o.attempt).bind(o.next_status).bind(o.reason)
            .bind(o.next_attempt_ms).bind(o.now_ms)
            .execute(&mut *tx).await?
            .rows_affected();
            tx.commit().await?;
            n
        });
        Ok(n == 1)
    }

    /// Puts a dead-lettered delivery back in the queue (due at `now_ms`, a fresh retry budget).
    /// Returns false when it is not `failed`.
    pub async fn webhook_replay(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let n = with_pool!(self, pool => {
            sqlx::query(
                "UPDATE outbox SET status = 'pending', reason = NULL, attempt_base = attempts, \
                 next_attempt_ms = $2, updated_ms = $2 \
                 WHERE id = $1 AND topic = 'webhook' AND status = 'failed'",
            )
            .bind(id).bind(now_ms).execute(pool).await?.rows_affected()
        });
        Ok(n == 1)
    }

    /// Webhook deliveries still `pending` (the gauge).
    pub async fn webhook_pending(&self) -> Result<i64, StoreError> {
        let n: i64 = with_pool!(self, pool => {
            sqlx::query_scalar("SELECT count(*) FROM outbox WHERE topic = 'webhook' AND status = 'pending'")
                .fetch_one(pool).await?
        });
        Ok(n)
    }

    /// Stores the first secret of a new subscription. Errors: one exists already (a unique
    /// violation) or the store is unreachable.
    pub async fn webhook_secret_create(
        &self,
        subscription: &str,
        secret: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO webhook_secrets (subscription_id, secret, updated_ms) VALUES ($1, $2, $3)",
            )
            .bind(subscription).bind(secret).bind(now_ms).execute(pool).await?;
        });
        Ok(())
    }

    /// Rotates a subscription's secret: `secret` becomes current, the old one keeps signing until
    /// `previous_until_ms`. Returns false when the subscription has no secret.
    pub async fn webhook_secret_rotate(
        &self,
        subscription: &str,
        secret: &str,
        previous_until_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let n = with_pool!(self, pool => {
            sqlx::query(
                "UPDATE webhook_secrets SET previous = secret, previous_until_ms = $3, secret = $2, \
                 updated_ms = $4 WHERE subscription_id = $1",
            )
            .bind(subscription).bind(secret).bind(previous_until_ms).bind(now_ms)
            .execute(pool).await?.rows_affected()
        });
        Ok(n == 1)
    }

    /// The secrets of a subscription.
    pub async fn webhook_secrets(&self, subscription: &str) -> Result<Option<Secrets>, StoreError> {
        let r: Option<(String, Option<String>, Option<i64>)> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT secret, previous, previous_until_ms FROM webhook_secrets WHERE subscription_id = $1",
            )
            .bind(subscription).fetch_optional(pool).await?
        });
        Ok(r.map(|(current, previous, previous_until_ms)| Secrets {
            current,
            previous,
            previous_until_ms,
        }))
    }

    /// Counts one more consecutive 5xx/timeout of a subscription (or resets the count when
    /// `failed` is false) and returns the new count (ONB-LOG-01). The integration's
    /// `integration_activity.webhook_failures` follows; a reset turns a `degraded` health back
    /// to `healthy`.
    pub async fn webhook_circuit(
        &self,
        subscription: &str,
        integration: &str,
        failed: bool,
        now_ms: i64,
    ) -> Result<i64, StoreError> {
        let n = with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let n: i64 = if failed {
                sqlx::query_scalar(
                    "INSERT INTO webhook_circuits (subscription_id, integration_id, \
                     consecutive_failures, updated_ms) VALUES ($1, $2, 1, $3) \
                     ON CONFLICT (subscription_id) DO UPDATE SET consecutive_failures = \
                     webhook_circuits.consecutive_failures + 1, updated_ms = excluded.updated_ms \
                     RETURNING consecutive_failures",
                )
                .bind(subscription).bind(integration).bind(now_ms)
                .fetch_one(&mut *tx).await?
            } else {
                sqlx::query(
                    "UPDATE webhook_circuits SET consecutive_failures = 0, updated_ms = $2 \
                     WHERE subscription_id = $1 AND consecutive_failures <> 0",
                )
                .bind(subscription).bind(now_ms).execute(&mut *tx).await?;
                0
            };
            if failed {
                sqlx::query(
                    "INSERT INTO integration_activity (integration_id, webhook_failures, updated_ms) \
                     VALUES ($1, $2, $3) ON CONFLICT (integration_id) DO UPDATE SET \
                     webhook_failures = excluded.webhook_failures, updated_ms = excluded.updated_ms",
                )
                .bind(integration).bind(n).bind(now_ms).execute(&mut *tx).await?;
            } else {
                sqlx::query(
                    "UPDATE integration_activity SET webhook_failures = 0, health = CASE WHEN \
                     health = 'degraded' THEN 'healthy' ELSE health END, updated_ms = $2 \
                     WHERE integration_id = $1 AND (webhook_failures <> 0 OR health = 'degraded')",
                )
                .bind(integration).bind(now_ms).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            n
        });
        Ok(n)
    }

    /// Marks an integration's health `degraded` (ONB-LOG-01).
    pub async fn webhook_degrade(&self, integration: &str, now_ms: i64) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO integration_activity (integration_id, health, updated_ms) \
                 VALUES ($1, 'degraded', $2) ON CONFLICT (integration_id) DO UPDATE SET \
                 health = 'degraded', updated_ms = excluded.updated_ms",
            )
            .bind(integration).bind(now_ms).execute(pool).await?;
        });
        Ok(())
    }
}
