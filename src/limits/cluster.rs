//! Cluster-wide rate limits and quotas in Redis (`[rate_limit] backend = "redis"`; INT-4.6-1,
//! INT-4.6-2, INT-4.6-4).
//!
//! Every replica runs the same GCRA as the local limiter (`per_second` sustained, `burst` at once;
//! the arithmetic of crate `governor`) in one Lua script on one Redis, so the replicas share one
//! budget per integration. The script reads the time from Redis (`TIME`), so replicas whose clocks
//! disagree still agree on the limit, and gives each key a TTL: an idle integration's key
//! disappears once its bucket is full again. Daily batch quotas are a second script: one counter
//! per integration and UTC day (Redis's day), expiring after the day ends.
//!
//! Each call is bounded by `timeout_ms`. When Redis fails or is slow, `on_redis_error` decides:
//! `local` falls back to this replica's own limiter ([`super::Limits`], the per-replica budget),
//! `deny` answers 503 `DEPENDENCY_UNAVAILABLE` with `retry-after` (never an allow). After a failure
//! Redis is skipped for `recheck_ms` (the fallback answers at once), then tried again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};

use super::Limits;
use crate::decision::{Denial, DenyCode};
use crate::policy::{Integration, RouteKind};

/// Where the rate limits and quotas are counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateBackend {
    /// Per replica, in memory (each replica enforces the whole limit on its own).
    #[default]
    Local,
    /// Cluster-wide, in Redis (all replicas share one budget).
    Redis,
}

/// What a Redis error or timeout does to the request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RedisErrorMode {
    /// Count the request in this replica's own limiter instead (per-replica limits while Redis
    /// is unreachable).
    #[default]
    Local,
    /// Deny with 503 `DEPENDENCY_UNAVAILABLE` and `retry-after`.
    Deny,
}

/// `[rate_limit]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// `local` (per replica) or `redis` (cluster-wide).
    pub backend: RateBackend,
    /// `redis://[user:password@]host:port[/db]` or `rediss://…` (TLS not compiled in: plain only).
    pub redis_url: String,
    /// Prefix of every key scp-pep writes (share one Redis between deployments with distinct
    /// prefixes).
    pub key_prefix: String,
    /// Whether an integration whose `rate_limit.shared` / `quota.shared` is absent is counted in
    /// Redis (`true`) or per replica (`false`).
    pub shared_by_default: bool,
    /// `local` or `deny`: see [`RedisErrorMode`].
    pub on_redis_error: RedisErrorMode,
    /// Milliseconds one Redis call may take before it counts as failed.
    pub timeout_ms: u64,
    /// Milliseconds Redis is skipped after a failure before it is tried again.
    pub recheck_ms: u64,
    /// `retry-after` of the 503 denial with `on_redis_error = "deny"`, seconds.
    pub deny_retry_after_s: u64,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            backend: RateBackend::Local,
            redis_url: "redis://127.0.0.1:6379".into(),
            key_prefix: "scp-pep:rl:".into(),
            shared_by_default: true,
            on_redis_error: RedisErrorMode::Local,
            timeout_ms: 20,
            recheck_ms: 500,
            deny_retry_after_s: 1,
        }
    }
}

/// GCRA in one step. KEYS[1]: the integration's key; ARGV: per_second, burst. Same arithmetic as
/// `governor` (emission interval T = 1 s / per_second, tolerance tau = T × (burst − 1), state =
/// the theoretical arrival time), in microseconds of Redis's clock. Returns {1, 0} (allowed) or
/// {0, milliseconds until the next request would be allowed}.
const GCRA_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = 1000000 / tonumber(ARGV[1])
local tau = interval * (tonumber(ARGV[2]) - 1)
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local earliest = tat - tau
if now < earliest then
  return {0, math.ceil((earliest - now) / 1000)}
end
local nxt = tat + interval
redis.call('SET', KEYS[1], string.format('%.17g', nxt), 'PX', math.ceil((nxt - now) / 1000) + 1000)
return {1, 0}
"#;

/// Daily quota. KEYS[1]: the integration's key; ARGV: per_day. The day is Redis's UTC day; the
/// hash holds the day number and the count, and expires a minute after that day ends. Returns
/// {1, 0} (counted) or {0, milliseconds until midnight UTC}.
const QUOTA_LUA: &str = r#"
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local day = math.floor(tonumber(t[1]) / 86400)
local v = redis.call('HMGET', KEYS[1], 'd', 'n')
local n = 0
if tonumber(v[1]) == day then n = tonumber(v[2]) or 0 end
local midnight_ms = (day + 1) * 86400000
if n >= tonumber(ARGV[1]) then
  return {0, midnight_ms - now_ms}
end
redis.call('HSET', KEYS[1], 'd', day, 'n', n + 1)
redis.call('PEXPIREAT', KEYS[1], midnight_ms + 60000)
return {1, 0}
"#;

/// The Redis backend of one replica: a multiplexed, self-reconnecting connection and the two
/// scripts (EVALSHA, loaded on first use or after a Redis restart).
pub struct SharedLimits {
    conn: ConnectionManager,
    gcra: redis::Script,
    quota: redis::Script,
    config: RateLimitConfig,
    timeout: Duration,
    /// Milliseconds after `epoch` before which Redis is not tried (0: healthy).
    skip_until_ms: AtomicU64,
    epoch: Instant,
    /// Last state logged (`true`: failing), so an outage is logged once, not per request.
    failing: AtomicBool,
    metrics: SharedMetrics,
}

struct SharedMetrics {
    ok: metrics::Counter,
    error: metrics::Counter,
    timeout: metrics::Counter,
    skipped: metrics::Counter,
}

/// Why a Redis call gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {0} ms")]
    Timeout(u64),
    #[error("redis unexpected reply")]
    Reply,
    #[error("redis skipped after a recent failure")]
    Skipped,
}

impl SharedLimits {
    /// Builds the client without connecting (the connection is made on first use and remade after
    /// failures, so scp-pep starts and serves while Redis is down). Errors: a malformed URL or
    /// settings.
    pub fn new(config: &RateLimitConfig) -> anyhow::Result<Arc<Self>> {
        if config.timeout_ms == 0 {
            anyhow::bail!("rate_limit.timeout_ms must be at least 1");
        }
        let client = redis::Client::open(config.redis_url.as_str())
            .map_err(|e| anyhow::anyhow!("rate_limit.redis_url: {}", e.category()))?;
        let timeout = Duration::from_millis(config.timeout_ms);
        let cm = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(config.timeout_ms.max(250))))
            .set_response_timeout(Some(timeout.max(Duration::from_millis(100))))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(200));
        let conn = ConnectionManager::new_lazy_with_config(client, cm)
            .map_err(|e| anyhow::anyhow!("rate_limit.redis_url: {}", e.category()))?;
        let c = |result: &'static str| metrics::counter!("scp_pep_rate_limit_redis_calls_total", "result" => result);
        Ok(Arc::new(SharedLimits {
            conn,
            gcra: redis::Script::new(GCRA_LUA),
            quota: redis::Script::new(QUOTA_LUA),
            config: config.clone(),
            timeout,
            skip_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            failing: AtomicBool::new(false),
            metrics: SharedMetrics {
                ok: c("ok"),
                error: c("error"),
                timeout: c("timeout"),
                skipped: c("skipped"),
            },
        }))
    }

    /// Whether the limit of `kind` of `integration` is counted in Redis (it has one, and it is
    /// shared explicitly or by default).
    pub fn applies(&self, integration: &Integration, kind: RouteKind) -> bool {
        let shared = match kind {
            RouteKind::Batch => integration
                .quota
                .filter(|q| q.mode.is_enforce())
                .map(|q| q.shared),
            _ => integration
                .rate_limit
                .filter(|r| r.mode.is_enforce())
                .map(|r| r.shared),
        };
        matches!(shared, Some(s) if s.unwrap_or(self.config.shared_by_default))
    }

    /// Stage 9 with the Redis backend: the limit of `kind` in Redis when [`Self::applies`], else
    /// (and on Redis failure with `on_redis_error = "local"`) `local`.
    pub async fn check(
        &self,
        local: &Limits,
        integration: &Integration,
        kind: RouteKind,
        now: DateTime<Utc>,
    ) -> Result<(), Denial> {
        if !self.applies(integration, kind) {
            return local.check(integration, kind, now);
        }
        match self.call(integration, kind).await {
            Ok(verdict) => verdict,
            Err(e) => match self.config.on_redis_error {
                RedisErrorMode::Local => {
                    tracing::debug!(error = %e, "shared rate limit unavailable; local limit applied");
                    local.check(integration, kind, now)
                }
                RedisErrorMode::Deny => Err(Denial::retry_after(
                    DenyCode::DependencyUnavailable,
                    "the cluster-wide rate limit cannot be checked",
                    self.config.deny_retry_after_s,
                )),
            },
        }
    }

    /// One script call (bounded by the timeout); `Ok` carries the limit's verdict.
    async fn call(
        &self,
        integration: &Integration,
        kind: RouteKind,
    ) -> Result<Result<(), Denial>, SharedError> {
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        if now_ms < self.skip_until_ms.load(Ordering::Relaxed) {
            self.metrics.skipped.increment(1);
            return Err(SharedError::Skipped);
        }
        let result = tokio::time::timeout(self.timeout, self.invoke(integration, kind)).await;
        let result = match result {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(SharedError::Timeout(self.config.timeout_ms)),
        };
        match &result {
            Ok(_) => {
                self.metrics.ok.increment(1);
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("redis reachable again: cluster-wide rate limits resumed");
                }
            }
            Err(e) => {
                match e {
                    SharedError::Timeout(_) => self.metrics.timeout.increment(1),
                    _ => self.metrics.error.increment(1),
                }
                self.skip_until_ms
                    .store(now_ms + self.config.recheck_ms, Ordering::Relaxed);
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        error = %e,
                        on_redis_error = ?self.config.on_redis_error,
                        "redis unavailable: cluster-wide rate limits suspended"
                    );
                }
            }
        }
        result
    }

    async fn invoke(
        &self,
        integration: &Integration,
        kind: RouteKind,
    ) -> Result<Result<(), Denial>, SharedError> {
        let mut conn = self.conn.clone();
        let prefix = &self.config.key_prefix;
        let (tenant, id) = (&integration.tenant, &integration.id);
        if kind == RouteKind::Batch {
            let Some(q) = integration.quota.filter(|q| q.mode.is_enforce()) else {
                return Ok(Ok(()));
            };
            let reply: Vec<i64> = self
                .quota
                .key(format!("{prefix}quota:{tenant}:{id}"))
                .arg(q.per_day)
                .invoke_async(&mut conn)
                .await?;
            verdict(&reply).map(|wait_ms| match wait_ms {
                None => Ok(()),
                Some(ms) => Err(Denial::retry_after(
                    DenyCode::QuotaExceeded,
                    format!("daily quota of {} batch requests exhausted", q.per_day),
                    ceil_s(ms),
                )),
            })
        } else {
            let Some(rl) = integration.rate_limit.filter(|r| r.mode.is_enforce()) else {
                return Ok(Ok(()));
            };
            let reply: Vec<i64> = self
                .gcra
                .key(format!("{prefix}gcra:{tenant}:{id}"))
                .arg(rl.per_second.max(1))
                .arg(rl.burst.max(1))
                .invoke_async(&mut conn)
                .await?;
            verdict(&reply).map(|wait_ms| match wait_ms {
                None => Ok(()),
                Some(ms) => Err(Denial::retry_after(
                    DenyCode::RateLimited,
                    format!(
                        "rate limit of {} requests/s (burst {}) exceeded",
                        rl.per_second, rl.burst
                    ),
                    ceil_s(ms),
                )),
            })
        }
    }
}

/// `{1, 0}` → `None` (allowed); `{0, ms}` → `Some(ms)`.
fn verdict(reply: &[i64]) -> Result<Option<i64>, SharedError> {
    match reply {
        [1, _] => Ok(None),
        [0, ms] => Ok(Some(*ms)),
        _ => Err(SharedError::Reply),
    }
}

/// Milliseconds → whole seconds, rounded up (at least 1).
fn ceil_s(ms: i64) -> u64 {
    (ms.max(1) as u64).div_ceil(1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn integ(rl: Option<Option<bool>>, q: Option<Option<bool>>) -> Integration {
        let mut i: Integration = serde_yaml_ng::from_str(
            "{id: i, tenant: t, partner_name: p, legal_basis: l, state: active, verticals: [v], scopes: []}",
        )
        .unwrap();
        i.rate_limit = rl.map(|shared| crate::policy::RateLimit {
            per_second: 1,
            burst: 1,
            shared,
            mode: Default::default(),
        });
        i.quota = q.map(|shared| crate::policy::Quota {
            per_day: 1,
            shared,
            mode: Default::default(),
        });
        i
    }

    /// Scope: a limit is counted in Redis when it exists and is shared explicitly or by default.
    #[tokio::test]
    async fn which_limits_are_shared() {
        let on = SharedLimits::new(&RateLimitConfig::default()).unwrap();
        let off = SharedLimits::new(&RateLimitConfig {
            shared_by_default: false,
            ..RateLimitConfig::default()
        })
        .unwrap();
        let rt = RouteKind::RealTime;
        assert!(on.applies(&integ(Some(None), None), rt));
        assert!(!on.applies(&integ(Some(Some(false)), None), rt));
        assert!(!off.applies(&integ(Some(None), None), rt));
        assert!(off.applies(&integ(Some(Some(true)), None), rt));
        assert!(
            !on.applies(&integ(None, Some(None)), rt),
            "no rate limit: nothing to count"
        );
        assert!(on.applies(&integ(None, Some(None)), RouteKind::Batch));
        assert!(!on.applies(&integ(Some(None), Some(Some(false))), RouteKind::Batch));
        assert!(on.applies(&integ(Some(None), None), RouteKind::Aggregate));
    }

    /// A malformed URL or a zero timeout stops the start (the message never echoes the URL).
    #[tokio::test]
    async fn bad_settings_are_errors() {
        let e = SharedLimits::new(&RateLimitConfig {
            redis_url: "http://user:secret@host".into(),
            ..RateLimitConfig::default()
        })
        .err()
        .unwrap()
        .to_string();
        assert!(
            e.contains("rate_limit.redis_url") && !e.contains("secret"),
            "{e}"
        );
        let e = SharedLimits::new(&RateLimitConfig {
            timeout_ms: 0,
            ..RateLimitConfig::default()
        })
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("timeout_ms"), "{e}");
        // TLS to Redis is not compiled in: refused at start, not silently plain.
        assert!(
            SharedLimits::new(&RateLimitConfig {
                redis_url: "rediss://redis.example:6380".into(),
                ..RateLimitConfig::default()
            })
            .is_err()
        );
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(ceil_s(1), 1);
        assert_eq!(ceil_s(1000), 1);
        assert_eq!(ceil_s(1001), 2);
        assert_eq!(ceil_s(-5), 1);
        assert_eq!(verdict(&[1, 0]).unwrap(), None);
        assert_eq!(verdict(&[0, 250]).unwrap(), Some(250));
        assert!(verdict(&[]).is_err());
    }
}
