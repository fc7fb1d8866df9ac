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

use crate::decision::{Denial, DenyCode, ShadowFinding};
use crate::policy::{Integration, Quota, RateLimit, RouteKind};

/// GCRA state per integration: the limit it was built for and the limiter.
type GcraMap = DashMap<String, (RateLimit, Arc<DefaultDirectRateLimiter>)>;
/// Quota state per integration: (UTC day number, requests counted that day).
type QuotaMap = DashMap<String, (i64, u64)>;

/// Rate-limit state for all integrations of this replica.
///
/// Limits in mode `shadow` (issue 16) are counted in their own maps, never shared with the
/// enforced state, and only reported ([`Limits::check_shadow`]); they are always per replica,
/// also with the Redis backend.
#[derive(Default)]
pub struct Limits {
    gcra: GcraMap,
    quota: QuotaMap,
    shadow_gcra: GcraMap,
    shadow_quota: QuotaMap,
}

impl Limits {
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one request of `kind` for `integration` at `now` against its enforced limit; `Err`
    /// when the limit is exhausted (`RATE_LIMITED` or `QUOTA_EXCEEDED`, 429 with `retry-after`).
    /// Integrations without an enforced limit of the relevant kind (none, or one in mode
    /// `shadow`) always pass.
    pub fn check(
        &self,
        integration: &Integration,
        kind: RouteKind,
        now: DateTime<Utc>,
    ) -> Result<(), Denial> {
        match kind {
            RouteKind::Batch => match integration.quota.filter(|q| q.mode.is_enforce()) {
                Some(q) => check_quota(&self.quota, &integration.id, q, now),
                None => Ok(()),
            },
            RouteKind::RealTime | RouteKind::Aggregate | RouteKind::Handshake => {
                match integration.rate_limit.filter(|r| r.mode.is_enforce()) {
                    Some(rl) => check_gcra(&self.gcra, &integration.id, rl),
                    None => Ok(()),
                }
            }
        }
    }

    /// Stage 9, shadow (issue 16): counts one request of `kind` against `integration`'s limit of
    /// that kind when it is in mode `shadow`, in state of its own. Returns the finding
    /// (`rate_limit/<integration id>` `RATE_LIMITED`, or `quota/<integration id>`
    /// `QUOTA_EXCEEDED`) when it is exhausted; the request is never denied for it.
    pub fn check_shadow(
        &self,
        integration: &Integration,
        kind: RouteKind,
        now: DateTime<Utc>,
    ) -> Option<ShadowFinding> {
        let (document, denied) = match kind {
            RouteKind::Batch => {
                let q = integration.quota.filter(|q| q.mode.is_shadow())?;
                (
                    "quota",
                    check_quota(&self.shadow_quota, &integration.id, q, now).err()?,
                )
            }
            RouteKind::RealTime | RouteKind::Aggregate | RouteKind::Handshake => {
                let rl = integration.rate_limit.filter(|r| r.mode.is_shadow())?;
                (
                    "rate_limit",
                    check_gcra(&self.shadow_gcra, &integration.id, rl).err()?,
                )
            }
        };
        Some(ShadowFinding {
            code: denied.code,
            document: format!("{document}/{}", integration.id),
            reasons: Vec::new(),
        })
    }

    /// Forgets state of integrations that no longer exist.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.gcra.retain(|k, _| keep(k));
        self.quota.retain(|k, _| keep(k));
        self.shadow_gcra.retain(|k, _| keep(k));
        self.shadow_quota.retain(|k, _| keep(k));
    }
}

/// One request of integration `id` against GCRA limit `rl` in `map`.
fn check_gcra(map: &GcraMap, id: &str, rl: RateLimit) -> Result<(), Denial> {
    let limiter = match map.get(id) {
        Some(e) if e.0 == rl => e.1.clone(),
        _ => {
            // New integration or changed limit: start a fresh limiter.
            let per_second = NonZeroU32::new(rl.per_second).unwrap_or(NonZeroU32::MIN);
            let burst = NonZeroU32::new(rl.burst).unwrap_or(NonZeroU32::MIN);
            let l = Arc::new(RateLimiter::direct(
                GQuota::per_second(per_second).allow_burst(burst),
            ));
            map.insert(id.to_owned(), (rl, l.clone()));
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

/// One batch request of integration `id` against daily quota `q` in `map` at `now`.
fn check_quota(map: &QuotaMap, id: &str, q: Quota, now: DateTime<Utc>) -> Result<(), Denial> {
    let ts = now.timestamp();
    let day = ts.div_euclid(86_400);
    let mut e = map.entry(id.to_owned()).or_insert((day, 0));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{FieldPolicy, IntegrationState, Mode};

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
                mode: Mode::Enforce,
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

    /// Issue 16: a shadow limit is counted in its own state and only reported (the enforced
    /// check ignores it); a shadow quota likewise.
    #[test]
    fn shadow_limits_report_and_never_deny() {
        let l = Limits::new();
        let i = integ(
            Some(RateLimit {
                per_second: 1,
                burst: 1,
                shared: None,
                mode: Mode::Shadow,
            }),
            Some(Quota {
                per_day: 1,
                shared: None,
                mode: Mode::Shadow,
            }),
        );
        let t: DateTime<Utc> = "2026-11-21T12:00:00Z".parse().unwrap();
        for _ in 0..3 {
            assert!(l.check(&i, RouteKind::RealTime, t).is_ok());
            assert!(l.check(&i, RouteKind::Batch, t).is_ok());
        }
        assert_eq!(l.check_shadow(&i, RouteKind::RealTime, t), None);
        let f = l.check_shadow(&i, RouteKind::RealTime, t).unwrap();
        assert_eq!(
            (f.document.as_str(), f.code),
            ("rate_limit/i", DenyCode::RateLimited)
        );
        assert_eq!(l.check_shadow(&i, RouteKind::Batch, t), None);
        let f = l.check_shadow(&i, RouteKind::Batch, t).unwrap();
        assert_eq!(
            (f.document.as_str(), f.code),
            ("quota/i", DenyCode::QuotaExceeded)
        );
        // An enforced limit is not reported as shadow.
        let enforced = integ(
            Some(RateLimit {
                per_second: 1,
                burst: 1,
                shared: None,
                mode: Mode::Enforce,
            }),
            None,
        );
        assert!(l.check_shadow(&enforced, RouteKind::RealTime, t).is_none());
        assert!(l.check_shadow(&enforced, RouteKind::RealTime, t).is_none());
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
                mode: Mode::Enforce,
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
