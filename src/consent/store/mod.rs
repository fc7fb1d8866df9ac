//! Consent tables on the policy store (SQLite or PostgreSQL; `migrations/*/0003_consent.sql`).
//!
//! Writes of a new version, its head and its change-feed row happen in one transaction: all of it
//! or nothing (a stale or concurrent change is [`ConsentStoreError::VersionConflict`], nothing written).
//! On PostgreSQL the transaction also sends `pg_notify('scp_pep_consent', …)` so other replicas
//! drop their cached entry at once; the `consent_changes` sequence is the reliable feed beside it.

use sqlx::Row;

use super::model::{
    CaptureMode, Change, ConsentVersion, Effective, Head, IdentityVerification, Recorded, effective,
};
use crate::store::{Store, StoreError, with_pool};

mod outbox;
mod shares;

pub use outbox::{AttemptRecord, DeliveryRow, ExpiringHead, OutboxRow};

/// PostgreSQL notification channel of consent changes (payload: the change's `seq`).
pub const CONSENT_CHANNEL: &str = "scp_pep_consent";

/// Consent store failures.
#[derive(Debug, thiserror::Error)]
pub enum ConsentStoreError {
    /// A capture while the key already has a pending or active consent (`CONSENT_EXISTS`).
    #[error("{0}")]
    Exists(String),
    /// A concurrent or stale change; nothing written (`VERSION_CONFLICT`).
    #[error("{0}")]
    VersionConflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for ConsentStoreError {
    fn from(e: sqlx::Error) -> Self {
        ConsentStoreError::Store(StoreError::Database(e))
    }
}

/// Verification and contact state of a person, as SCP's person registry reports it (CON-3,
/// CON-11, CON-34). Contact addresses are not kept here, only which channel kinds exist.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PersonRecord {
    pub tenant_id: String,
    pub person_id: String,
    /// `verified` or `provisional`.
    pub verification: String,
    /// `active`, `inactive` or `archived`.
    pub status: String,
    /// Channel kinds: `email`, `sms`.
    pub channels: Vec<String>,
    pub updated_ms: i64,
}

/// The columns [`version_from_row`] reads, in its order.
macro_rules! version_columns {
    () => {
        "v.consent_id, v.version, v.version_id, v.tenant_id, v.person_id, \
    v.vertical_id, v.purpose, v.status, v.active_from_ms, v.active_until_ms, v.grace_until_ms, \
    v.capture_mode, v.evidence_attachment_ids, v.verification_document_attachment_id, \
    v.identity_verification, v.fields, v.reason_code, v.reason_text, v.change, v.captured_by, \
    v.captured_at_ms, v.changed_by, v.changed_at_ms"
    };
}

fn json_list(s: Option<String>) -> Option<Vec<String>> {
    s.and_then(|s| serde_json::from_str(&s).ok())
}

fn bad(col: &str) -> sqlx::Error {
    sqlx::Error::ColumnDecode {
        index: col.to_owned(),
        source: "unexpected stored value".into(),
    }
}

fn version_from_row<R>(r: &R) -> Result<ConsentVersion, sqlx::Error>
where
    R: Row,
    usize: sqlx::ColumnIndex<R>,
    String: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    i64: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    Option<String>: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    Option<i64>: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let status: String = r.try_get(7)?;
    let mode: String = r.try_get(11)?;
    let change: String = r.try_get(18)?;
    let identity: Option<String> = r.try_get(14)?;
    Ok(ConsentVersion {
        consent_id: r.try_get(0)?,
        version: r.try_get(1)?,
        version_id: r.try_get(2)?,
        tenant_id: r.try_get(3)?,
        person_id: r.try_get(4)?,
        vertical_id: r.try_get(5)?,
        purpose: r.try_get(6)?,
        status: Recorded::parse(&status).ok_or_else(|| bad("status"))?,
        active_from_ms: r.try_get(8)?,
        active_until_ms: r.try_get(9)?,
        grace_until_ms: r.try_get(10)?,
        capture_mode: CaptureMode::parse(&mode).ok_or_else(|| bad("capture_mode"))?,
        evidence_attachment_ids: json_list(r.try_get(12)?).unwrap_or_default(),
        verification_document_attachment_id: r.try_get(13)?,
        identity_verification: identity
            .and_then(|s| serde_json::from_str::<IdentityVerification>(&s).ok()),
        fields: json_list(r.try_get(15)?),
        reason_code: r.try_get(16)?,
        reason_text: r.try_get(17)?,
        change: Change::parse(&change).ok_or_else(|| bad("change"))?,
        captured_by: r.try_get(19)?,
        captured_at_ms: r.try_get(20)?,
        changed_by: r.try_get(21)?,
        changed_at_ms: r.try_get(22)?,
    })
}

/// A head row as the append reads it: consent id, version, status, active until, grace until.
type HeadRow = (String, i64, String, Option<i64>, Option<i64>);

/// True when a head row blocks a new capture for its key: pending, or active and not yet past
/// its grace period.
fn head_is_live(status: &str, grace_until: Option<i64>, until: Option<i64>, now_ms: i64) -> bool {
    match Recorded::parse(status) {
        Some(Recorded::Pending) => true,
        Some(Recorded::Active) => !matches!(
            effective(Recorded::Active, i64::MIN, until, grace_until, now_ms),
            Effective::Withdrawn
        ),
        _ => false,
    }
}

impl Store {
    /// Creates or replaces a person's verification and contact state.
    pub async fn consent_put_person(&self, p: &PersonRecord) -> Result<(), ConsentStoreError> {
        let channels = serde_json::to_string(&p.channels).unwrap_or_else(|_| "[]".into());
        with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO consent_persons (tenant_id, person_id, verification, status, channels, updated_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (tenant_id, person_id) DO UPDATE SET verification = excluded.verification, \
                 status = excluded.status, channels = excluded.channels, updated_ms = excluded.updated_ms",
            )
            .bind(&p.tenant_id).bind(&p.person_id).bind(&p.verification).bind(&p.status)
            .bind(&channels).bind(p.updated_ms)
            .execute(pool).await?;
        });
        Ok(())
    }

    /// A person's state, `None` when SCP never reported the person.
    pub async fn consent_person(
        &self,
        tenant: &str,
        person: &str,
    ) -> Result<Option<PersonRecord>, ConsentStoreError> {
        let row: Option<(String, String, String, i64)> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT verification, status, channels, updated_ms FROM consent_persons \
                 WHERE tenant_id = $1 AND person_id = $2",
            )
            .bind(tenant).bind(person)
            .fetch_optional(pool).await?
        });
        Ok(row.map(
            |(verification, status, channels, updated_ms)| PersonRecord {
                tenant_id: tenant.to_owned(),
                person_id: person.to_owned(),
                verification,
                status,
                channels: serde_json::from_str(&channels).unwrap_or_default(),
                updated_ms,
            },
        ))
    }

    /// The head versions (one per purpose) of (tenant, person, vertical): what enforcement reads.
    pub async fn consent_heads(
        &self,
        tenant: &str,
        person: &str,
        vertical: &str,
    ) -> Result<Vec<ConsentVersion>, ConsentStoreError> {
        let sql: &str = concat!(
            "SELECT ",
            version_columns!(),
            " FROM consent_heads h JOIN consent_versions v \
             ON v.consent_id = h.consent_id AND v.version = h.version \
             WHERE h.tenant_id = $1 AND h.person_id = $2 AND h.vertical_id = $3 ORDER BY h.purpose"
        );
        let out = with_pool!(self, pool => {
            let rows = sqlx::query(sql).bind(tenant).bind(person).bind(vertical)
                .fetch_all(pool).await?;
            rows.iter().map(version_from_row).collect::<Result<Vec<_>, _>>()?
        });
        Ok(out)
    }

    /// What enforcement needs of the heads of (tenant, person, vertical), one per purpose: one
    /// narrow index read of `consent_heads`, no join (the consent cache's miss path).
    pub async fn consent_head_summaries(
        &self,
        tenant: &str,
        person: &str,
        vertical: &str,
    ) -> Result<Vec<Head>, ConsentStoreError> {
        type Row = (
            String,
            i64,
            String,
            String,
            i64,
            Option<i64>,
            Option<i64>,
            Option<String>,
            i64,
        );
        let rows: Vec<Row> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT consent_id, version, purpose, status, active_from_ms, active_until_ms, grace_until_ms, \
                 fields, changed_at_ms FROM consent_heads \
                 WHERE tenant_id = $1 AND person_id = $2 AND vertical_id = $3",
            )
            .bind(tenant).bind(person).bind(vertical)
            .fetch_all(pool).await?
        });
        rows.into_iter()
            .map(
                |(consent_id, version, purpose, status, from, until, grace, fields, changed)| {
                    Ok(Head {
                        consent_id,
                        version,
                        purpose,
                        status: Recorded::parse(&status).ok_or_else(|| bad("status"))?,
                        active_from_ms: from,
                        active_until_ms: until,
                        grace_until_ms: grace,
                        fields: json_list(fields),
                        changed_at_ms: changed,
                    })
                },
            )
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// [`Self::consent_head_summaries`] of many persons of one vertical, in one statement per 500
    /// persons: `(person_id, head)` pairs (persons without consent have none).
    pub async fn consent_head_summaries_many(
        &self,
        tenant: &str,
        vertical: &str,
        persons: &[&str],
    ) -> Result<Vec<(String, Head)>, ConsentStoreError> {
        type Row = (
            String,
            String,
            i64,
            String,
            String,
            i64,
            Option<i64>,
            Option<i64>,
            Option<String>,
            i64,
        );
        let mut out = Vec::with_capacity(persons.len());
        for chunk in persons.chunks(500) {
            let rows: Vec<Row> = with_pool!(self, pool => {
                let mut qb = sqlx::QueryBuilder::new(
                    "SELECT person_id, consent_id, version, purpose, status, active_from_ms, \
                     active_until_ms, grace_until_ms, fields, changed_at_ms FROM consent_heads \
                     WHERE tenant_id = ",
                );
                qb.push_bind(tenant).push(" AND vertical_id = ").push_bind(vertical);
                qb.push(" AND person_id IN (");
                let mut sep = qb.separated(", ");
                for p in chunk {
                    sep.push_bind(*p);
                }
                qb.push(")");
                qb.build_query_as().fetch_all(pool).await?
            });
            for (
                person,
                consent_id,
                version,
                purpose,
                status,
                from,
                until,
                grace,
                fields,
                changed,
            ) in rows
            {
                out.push((
                    person,
                    Head {
                        consent_id,
                        version,
                        purpose,
                        status: Recorded::parse(&status).ok_or_else(|| bad("status"))?,
                        active_from_ms: from,
                        active_until_ms: until,
                        grace_until_ms: grace,
                        fields: json_list(fields),
                        changed_at_ms: changed,
                    },
                ));
            }
        }
        Ok(out)
    }

    /// Every head of a person, all verticals and purposes (the API's list by person).
    pub async fn consent_heads_of_person(
        &self,
        tenant: &str,
        person: &str,
    ) -> Result<Vec<ConsentVersion>, ConsentStoreError> {
        let sql: &str = concat!(
            "SELECT ",
            version_columns!(),
            " FROM consent_heads h JOIN consent_versions v \
             ON v.consent_id = h.consent_id AND v.version = h.version \
             WHERE h.tenant_id = $1 AND h.person_id = $2 ORDER BY h.vertical_id, h.purpose"
        );
        let out = with_pool!(self, pool => {
            let rows = sqlx::query(sql).bind(tenant).bind(person).fetch_all(pool).await?;
            rows.iter().map(version_from_row).collect::<Result<Vec<_>, _>>()?
        });
        Ok(out)
    }

    /// The newest version of a consent, `None` when unknown.
    pub async fn consent_latest(
        &self,
        consent_id: &str,
    ) -> Result<Option<ConsentVersion>, ConsentStoreError> {
        let sql: &str = concat!(
            "SELECT ",
            version_columns!(),
            " FROM consent_versions v WHERE v.consent_id = $1 \
             ORDER BY v.version DESC LIMIT 1"
        );
        let out = with_pool!(self, pool => {
            match sqlx::query(sql).bind(consent_id).fetch_optional(pool).await? {
                Some(r) => Some(version_from_row(&r)?),
                None => None,
            }
        });
        Ok(out)
    }

    /// Every version of a consent, oldest first (CON-8).
    pub async fn consent_history(
        &self,
        consent_id: &str,
    ) -> Result<Vec<ConsentVersion>, ConsentStoreError> {
        let sql: &str = concat!(
            "SELECT ",
            version_columns!(),
            " FROM consent_versions v WHERE v.consent_id = $1 ORDER BY v.version"
        );
        let out = with_pool!(self, pool => {
            let rows = sqlx::query(sql).bind(consent_id).fetch_all(pool).await?;
            rows.iter().map(version_from_row).collect::<Result<Vec<_>, _>>()?
        });
        Ok(out)
    }

    /// Appends `v` and moves its key's head to it, in one transaction (CON-7).
    ///
    /// - `v.version == 1` (a capture): refused with `CONSENT_EXISTS` while the key's head is a
    ///   different consent that is pending or active (not past grace) at `now_ms`.
    /// - `v.version > 1`: the head must still be `(v.consent_id, v.version - 1)`, else
    ///   `VERSION_CONFLICT` (a concurrent change won; nothing is written).
    ///
    /// Returns the change-feed sequence number of the write.
    pub async fn consent_append(
        &self,
        v: &ConsentVersion,
        now_ms: i64,
    ) -> Result<i64, ConsentStoreError> {
        let evidence = serde_json::to_string(&v.evidence_attachment_ids).unwrap_or_default();
        let identity = v
            .identity_verification
            .as_ref()
            .and_then(|i| serde_json::to_string(i).ok());
        let fields = v
            .fields
            .as_ref()
            .and_then(|f| serde_json::to_string(f).ok());
        let pg = matches!(self, Store::Postgres(_));
        let seq = with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            if !pg {
                // Take SQLite's write lock first: the head check below must see the last writer.
                sqlx::query("UPDATE policy_state SET version = version WHERE id = 1")
                    .execute(&mut *tx).await?;
            }
            const HEAD: &str = "SELECT consent_id, version, status, active_until_ms, grace_until_ms \
                FROM consent_heads WHERE tenant_id = $1 AND person_id = $2 AND vertical_id = $3 AND purpose = $4";
            const HEAD_LOCKED: &str = concat!(
                "SELECT consent_id, version, status, active_until_ms, grace_until_ms ",
                "FROM consent_heads WHERE tenant_id = $1 AND person_id = $2 AND vertical_id = $3 AND purpose = $4 ",
                "FOR UPDATE"
            );
            let head: Option<HeadRow> = sqlx::query_as(if pg { HEAD_LOCKED } else { HEAD })
            .bind(&v.tenant_id).bind(&v.person_id).bind(&v.vertical_id).bind(&v.purpose)
            .fetch_optional(&mut *tx).await?;
            if v.version == 1 {
                if let Some((cid, _, status, until, grace)) = &head
                    && *cid != v.consent_id
                    && head_is_live(status, *grace, *until, now_ms)
                {
                    return Err(ConsentStoreError::Exists(
                        format!("consent {cid} is already pending or active for this person, vertical and purpose; renew or withdraw it"),
                    ));
                }
            } else {
                let ok = head.as_ref().is_some_and(|(cid, ver, ..)| *cid == v.consent_id && *ver == v.version - 1);
                if !ok {
                    return Err(ConsentStoreError::VersionConflict(
                        "the consent changed since it was read; read it again".into(),
                    ));
                }
            }
            let inserted = sqlx::query(
                "INSERT INTO consent_versions (consent_id, version, version_id, tenant_id, person_id, \
                 vertical_id, purpose, status, active_from_ms, active_until_ms, grace_until_ms, \
                 capture_mode, evidence_attachment_ids, verification_document_attachment_id, \
                 identity_verification, fields, reason_code, reason_text, change, captured_by, \
                 captured_at_ms, changed_by, changed_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, \
                 $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(&v.consent_id).bind(v.version).bind(&v.version_id).bind(&v.tenant_id)
            .bind(&v.person_id).bind(&v.vertical_id).bind(&v.purpose).bind(v.status.as_str())
            .bind(v.active_from_ms).bind(v.active_until_ms).bind(v.grace_until_ms)
            .bind(v.capture_mode.as_str()).bind(&evidence).bind(&v.verification_document_attachment_id)
            .bind(&identity).bind(&fields).bind(&v.reason_code).bind(&v.reason_text)
            .bind(v.change.as_str()).bind(&v.captured_by).bind(v.captured_at_ms)
            .bind(&v.changed_by).bind(v.changed_at_ms)
            .execute(&mut *tx).await?;
            if inserted.rows_affected() != 1 {
                return Err(ConsentStoreError::VersionConflict(
                    "this version was already written by a concurrent change".into(),
                ));
            }
            sqlx::query(
                "INSERT INTO consent_heads (tenant_id, person_id, vertical_id, purpose, consent_id, \
                 version, status, active_from_ms, active_until_ms, grace_until_ms, fields, changed_at_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
                 ON CONFLICT (tenant_id, person_id, vertical_id, purpose) DO UPDATE SET \
                 consent_id = excluded.consent_id, version = excluded.version, status = excluded.status, \
                 active_from_ms = excluded.active_from_ms, active_until_ms = excluded.active_until_ms, \
                 grace_until_ms = excluded.grace_until_ms, fields = excluded.fields, \
                 changed_at_ms = excluded.changed_at_ms",
            )
            .bind(&v.tenant_id).bind(&v.person_id).bind(&v.vertical_id).bind(&v.purpose)
            .bind(&v.consent_id).bind(v.version).bind(v.status.as_str())
            .bind(v.active_from_ms).bind(v.active_until_ms).bind(v.grace_until_ms).bind(&fields)
            .bind(v.changed_at_ms)
            .execute(&mut *tx).await?;
            let seq: i64 = sqlx::query_scalar(
                "INSERT INTO consent_changes (tenant_id, person_id, vertical_id, time_ms) \
                 VALUES ($1, $2, $3, $4) RETURNING seq",
            )
            .bind(&v.tenant_id).bind(&v.person_id).bind(&v.vertical_id).bind(v.changed_at_ms)
            .fetch_one(&mut *tx).await?;
            if pg {
                sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(CONSENT_CHANNEL).bind(seq.to_string())
                    .execute(&mut *tx).await?;
            }
            tx.commit().await?;
            seq
        });
        Ok(seq)
    }

    /// Change-feed rows after `after` (at most `limit`), oldest first: `(seq, tenant, person,
    /// vertical)`.
    pub async fn consent_changes_since(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<(i64, String, String, String)>, ConsentStoreError> {
        let rows = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT seq, tenant_id, person_id, vertical_id FROM consent_changes WHERE seq > $1 \
                 ORDER BY seq LIMIT $2",
            )
            .bind(after).bind(limit)
            .fetch_all(pool).await?
        });
        Ok(rows)
    }

    /// `(min, max)` sequence numbers of the change feed (`(0, 0)` when empty).
    pub async fn consent_change_bounds(&self) -> Result<(i64, i64), ConsentStoreError> {
        let (lo, hi): (Option<i64>, Option<i64>) = with_pool!(self, pool => {
            sqlx::query_as("SELECT min(seq), max(seq) FROM consent_changes").fetch_one(pool).await?
        });
        Ok((lo.unwrap_or(0), hi.unwrap_or(0)))
    }

    /// Deletes change-feed rows older than `before_ms` (replicas that fall further behind drop
    /// their whole cache, see `ConsentCache::follow`).
    pub async fn consent_prune_changes(&self, before_ms: i64) -> Result<u64, ConsentStoreError> {
        let n = with_pool!(self, pool => {
            sqlx::query("DELETE FROM consent_changes WHERE time_ms < $1")
                .bind(before_ms).execute(pool).await?.rows_affected()
        });
        Ok(n)
    }
}
