//! Stage 9: per-integration rate limits (INT-4.6-1, INT-4.6-2).
//!
//! - Real-time, aggregate and handshake routes: GCRA (crate `governor`), `per_second` sustained with
//!   `burst` at once, per integration, per replica.
//! - Batch routes: a daily quota per integration over the UTC calendar day, per replica.
//!
//! Denials carry `retry-after` in whole seconds (INT-4.6-4). This module is the per-replica state
//! (`[rate_limit] backend = "local"`, and the fallback of the Redis backend); [`cluster`] keeps the
//! same limits cluster-wide in Redis.

pub mod cluster;
pub use cluster::{RateBackend, RateLimitConfig, RedisErrorMode, SharedLimits};

use std::num::NonZeroU32;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota as GQuota, RateLimiter};

use crate::decision::{Denial, DenyCode};
use crate::policy::{Integration, RateLimit, RouteKind};

/// Rate-limit state for all integrations of this replica.
#[derive(Default)]
pub struct Limits {
    gcra: DashMap<String, (RateLimit, Arc<DefaultDirectRateLimiter>)>,
    /// integration → (UTC day number, requests counted that day)
    quota: DashMap<String, (i64, u64)>,
}

impl Limits {
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one request of `kind` for `integration` at `now`; `Err` when the limit is exhausted
    /// (`RATE_LIMITED` or `QUOTA_EXCEEDED`, 429 with `retry-after`). Integrations without a limit
    /// of the relevant kind always pass.
    pub fn check(
        &self,
        integration: &Integration,
        kind: RouteKind,
        now: DateTime<Utc>,
    ) -> Result<(), Denial> {
        match kind {
            RouteKind::Batch => self.check_quota(integration, now),
            RouteKind::RealTime | RouteKind::Aggregate | RouteKind::Handshake => {
                self.check_gcra(integration)
            }
        }
    }

    fn check_gcra(&self, integration: &Integration) -> Result<(), Denial> {
        let Some(rl) = integration.rate_limit else {
            return Ok(());
        };
        let limiter = match self.gcra.get(&integration.id) {
            Some(e) if e.0 == rl => e.1.clone(),
            _ => {
                // New integration or changed limit: start a fresh limiter.
                let per_second = NonZeroU32::new(rl.per_second).unwrap_or(NonZeroU32::MIN);
                let burst = NonZeroU32::new(rl.burst).unwrap_or(NonZeroU32::MIN);
                let l = Arc::new(RateLimiter::direct(
                    GQuota::per_second(per_second).allow_burst(burst),
                ));
                self.gcra.insert(integration.id.clone(), (rl, l.clone()));
                l
            }
        };
        limiter.check().map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            Denial::retry_after(
                DenyCode::RateLimited,
                format!(
                    "rate limit of {} requests/s (burst {}) exceeded",
                    rl.per_second, rl.burst
                ),
                secs,
            )
        })
    }

    fn check_quota(&self, integration: &Integration, now: DateTime<Utc>) -> Result<(), Denial> {
        let Some(q) = integration.quota else {
            return Ok(());
        };
        let ts = now.timestamp();
        let day = ts.div_euclid(86_400);
        let mut e = self.quota.entry(integration.id.clone()).or_insert((day, 0));
        if e.0 != day {
            *e = (day, 0);
        }
        if e.1 >= q.per_day {
            let until_midnight = (day + 1) * 86_400 - ts;
            return Err(Denial::retry_after(
                DenyCode::QuotaExceeded,
                format!("daily quota of {} batch requests exhausted", q.per_day),
                until_midnight.max(1) as u64,
            ));
        }
        e.1 += 1;
        Ok(())
    }

    /// Forgets state of integrations that no longer exist.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.gcra.retain(|k, _| keep(k));
        self.quota.retain(|k, _| keep(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{FieldPolicy, IntegrationState, Quota};

    fn integ(rl: Option<RateLimit>, q: Option<Quota>) -> Integration {
        Integration {
            id: "i".into(),
            tenant: "t".into(),
            partner_name: "p".into(),
            legal_basis: "l".into(),
            state: IntegrationState::Active,
            verticals: vec!["v".into()],
            scopes: vec![],
            routes: None,
            client_id: None,
            field_policy: FieldPolicy::default(),
            rate_limit: rl,
            quota: q,
            api_key_sha256: None,
            mtls_cert_sha256: None,
            ip_allowlist: vec![],
            technical_contacts: vec![],
            partner_tenants: vec![],
            onboarding: None,
        }
    }

    /// INT-4.6-1: a burst of N passes, N+1 is rate limited with retry-after ≥ 1 s.
    #[test]
    fn gcra_burst_then_deny() {
        let l = Limits::new();
        let i = integ(
            Some(RateLimit {
                per_second: 1,
                burst: 3,
                shared: None,
            }),
            None,
        );
        for _ in 0..3 {
            assert!(l.check(&i, RouteKind::RealTime, Utc::now()).is_ok());
        }
        let d = l.check(&i, RouteKind::RealTime, Utc::now()).unwrap_err();
        assert_eq!(d.code, DenyCode::RateLimited);
        assert!(d.retry_after_s.unwrap() >= 1);
    }

    /// INT-4.6-2: batch routes count against the daily quota, which resets at UTC midnight.
    #[test]
    fn quota_resets_daily() {
        let l = Limits::new();
        let i = integ(
            None,
            Some(Quota {
                per_day: 2,
                shared: None,
            }),
        );
        let t: DateTime<Utc> = "2026-11-21T23:59:00Z".parse().unwrap();
        assert!(l.check(&i, RouteKind::Batch, t).is_ok());
        assert!(l.check(&i, RouteKind::Batch, t).is_ok());
        let d = l.check(&i, RouteKind::Batch, t).unwrap_err();
        assert_eq!(d.code, DenyCode::QuotaExceeded);
        assert_eq!(d.retry_after_s, Some(60));
        // Real-time routes are not counted against the quota.
        assert!(l.check(&i, RouteKind::RealTime, t).is_ok());
        let next: DateTime<Utc> = "2026-11-22T00:00:01Z".parse().unwrap();
        assert!(l.check(&i, RouteKind::Batch, next).is_ok());
    }
}
