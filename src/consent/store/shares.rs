//! Shares (which integration received which person's data, for frozen-share events) and the
//! refresh epochs of aggregate routes (INT-4.3-3, INT-4.3-4).

use super::*;

impl Store {
    /// Records that `integration` received data of the person `person_ref` in `vertical` at
    /// `time_ms` (the input of frozen-share events, INT-4.3-3). Idempotent.
    pub async fn consent_record_shares(
        &self,
        shares: &[(String, String, String, String, i64)],
    ) -> Result<(), ConsentStoreError> {
        // One row per key (a statement may not touch a row twice), newest time kept.
        let mut rows: std::collections::HashMap<(&str, &str, &str, &str), i64> =
            std::collections::HashMap::with_capacity(shares.len());
        for (t, p, v, i, ms) in shares {
            let e = rows
                .entry((t.as_str(), p.as_str(), v.as_str(), i.as_str()))
                .or_insert(*ms);
            *e = (*e).max(*ms);
        }
        if rows.is_empty() {
            return Ok(());
        }
        let rows: Vec<_> = rows.into_iter().collect();
        // One multi-row statement per 500 shares (5 parameters each).
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            for chunk in rows.chunks(500) {
                let mut qb = sqlx::QueryBuilder::new(
                    "INSERT INTO consent_shares (tenant_id, person_ref, vertical_id, integration_id, first_ms, last_ms) ",
                );
                qb.push_values(chunk, |mut b, ((t, p, v, i), ms)| {
                    b.push_bind(*t).push_bind(*p).push_bind(*v).push_bind(*i).push_bind(*ms).push_bind(*ms);
                });
                qb.push(
                    " ON CONFLICT (tenant_id, person_ref, vertical_id, integration_id) \
                     DO UPDATE SET last_ms = excluded.last_ms",
                );
                qb.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Integrations that received data of `person_ref` in `vertical`: `(integration, first_ms,
    /// last_ms)`.
    pub async fn consent_shares_of(
        &self,
        tenant: &str,
        person_ref: &str,
        vertical: &str,
    ) -> Result<Vec<(String, i64, i64)>, ConsentStoreError> {
        let rows = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT integration_id, first_ms, last_ms FROM consent_shares \
                 WHERE tenant_id = $1 AND person_ref = $2 AND vertical_id = $3 ORDER BY integration_id",
            )
            .bind(tenant).bind(person_ref).bind(vertical)
            .fetch_all(pool).await?
        });
        Ok(rows)
    }

    /// Sets the refresh epoch of an aggregate route (INT-4.3-4).
    pub async fn consent_set_aggregate_epoch(
        &self,
        tenant: &str,
        route: &str,
        epoch_ms: i64,
        by: &str,
        now_ms: i64,
    ) -> Result<(), ConsentStoreError> {
        with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO consent_aggregate_epochs (tenant_id, route_id, epoch_ms, updated_by, updated_ms) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant_id, route_id) DO UPDATE SET \
                 epoch_ms = excluded.epoch_ms, updated_by = excluded.updated_by, updated_ms = excluded.updated_ms",
            )
            .bind(tenant).bind(route).bind(epoch_ms).bind(by).bind(now_ms)
            .execute(pool).await?;
        });
        Ok(())
    }

    /// The refresh epoch of an aggregate route, `None` when never declared.
    pub async fn consent_aggregate_epoch(
        &self,
        tenant: &str,
        route: &str,
    ) -> Result<Option<i64>, ConsentStoreError> {
        let v = with_pool!(self, pool => {
            sqlx::query_scalar(
                "SELECT epoch_ms FROM consent_aggregate_epochs WHERE tenant_id = $1 AND route_id = $2",
            )
            .bind(tenant).bind(route)
            .fetch_optional(pool).await?
        });
        Ok(v)
    }

    /// The newest instant at which any consent of `vertical` stopped counting (withdrawal, or end
    /// of grace at or before `now_ms`); `None` when none did (CON-23, CON-28).
    pub async fn consent_vertical_blocking_since(
        &self,
        tenant: &str,
        vertical: &str,
        now_ms: i64,
    ) -> Result<Option<i64>, ConsentStoreError> {
        let (w, g): (Option<i64>, Option<i64>) = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT (SELECT max(changed_at_ms) FROM consent_heads WHERE tenant_id = $1 \
                 AND vertical_id = $2 AND status = 'withdrawn'), \
                 (SELECT max(grace_until_ms) FROM consent_heads WHERE tenant_id = $1 \
                 AND vertical_id = $2 AND status = 'active' AND grace_until_ms <= $3)",
            )
            .bind(tenant).bind(vertical).bind(now_ms)
            .fetch_one(pool).await?
        });
        Ok(w.max(g))
    }
}
