//! Cluster-wide rate limits and quotas in Redis (`[rate_limit] backend = "redis"`): two scp-pep
//! instances on one Redis share one budget; Redis failures follow `on_redis_error`
//! (INT-4.6-1, INT-4.6-2, INT-4.6-4).
//!
//! The shared tests use the machine's Redis (`SCP_PEP_TEST_REDIS`, default
//! `redis://127.0.0.1:6379`) with a key prefix of their own; the outage tests start and kill a
//! `redis-server` child of their own.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use scp_pep::check::{CheckInput, build_request, response_json};
use scp_pep::config::Config;
use scp_pep::limits::{RateBackend, RedisErrorMode};
use serde_json::Value;

use crate::common::{AuthorizationClient, Harness, ProxyMode, TcpProxy, free_port};

const RECORD: &str = "/v1/tenants/ke/health/persons/p-1/record";
const EXPORT: &str = "/v1/tenants/ke/welfare/beneficiaries/export";

fn redis_url() -> String {
    std::env::var("SCP_PEP_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A key prefix no other test run uses.
fn fresh_prefix() -> String {
    format!("scp-pep-test:{}:", uuid::Uuid::now_v7().simple())
}

/// Rewrites the limits of `int-ke-limited` (GCRA) and `int-ke-batch` (daily quota) in the
/// harness's policy files, and sets the Redis backend.
fn redis_backend(
    config: &mut Config,
    url: &str,
    prefix: &str,
    on_error: RedisErrorMode,
    rate: &str,
    quota: &str,
    timeout_ms: u64,
) {
    let dir = config.policy.dir.clone().unwrap();
    let path = dir.join("integrations.yaml");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("rate_limit: {per_second: 1, burst: 2}", rate)
        .replace("quota: {per_day: 2}", quota);
    std::fs::write(&path, text).unwrap();
    config.rate_limit.backend = RateBackend::Redis;
    config.rate_limit.redis_url = url.to_owned();
    config.rate_limit.key_prefix = prefix.to_owned();
    config.rate_limit.on_redis_error = on_error;
    config.rate_limit.recheck_ms = 200;
    // Tests run debug builds on a shared 2-core machine: the tests not about timeouts give Redis
    // room, so that a slow scheduler is not mistaken for a Redis failure.
    config.rate_limit.timeout_ms = timeout_ms;
    // Throughput for the load test; the audit log is not what is under test here.
    config.audit.mode = scp_pep::audit::AuditMode::Buffered;
    config.decision_log.enabled = false;
}

fn limited_input(h: &Harness) -> CheckInput {
    let token = h.sign(
        "ke-rs256",
        &h.claims("ke", "int-ke-limited", &["health"], "health:person:read"),
    );
    Harness::get(RECORD, &token)
}

fn batch_input(h: &Harness) -> CheckInput {
    let token = h.sign(
        "ke-rs256",
        &h.claims(
            "ke",
            "int-ke-batch",
            &["welfare"],
            "welfare:beneficiary:read",
        ),
    );
    Harness::get(EXPORT, &token)
}

fn retry_after(v: &Value) -> u64 {
    v["headers_set"]["retry-after"]
        .as_str()
        .unwrap_or_else(|| panic!("no retry-after: {v}"))
        .parse()
        .unwrap()
}

/// Sends `input` in `tasks` concurrent loops until `until`; returns (allowed, rate limited).
async fn hammer(
    client: AuthorizationClient<tonic::transport::Channel>,
    input: CheckInput,
    tasks: usize,
    until: Instant,
) -> (u64, u64) {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..tasks {
        let mut client = client.clone();
        let input = input.clone();
        set.spawn(async move {
            let (mut ok, mut limited) = (0u64, 0u64);
            while Instant::now() < until {
                let v = response_json(
                    &client
                        .check(build_request(&input))
                        .await
                        .unwrap()
                        .into_inner(),
                );
                if v["allowed"] == true {
                    ok += 1;
                } else {
                    assert_eq!(v["code"], "RATE_LIMITED", "{v}");
                    limited += 1;
                }
            }
            (ok, limited)
        });
    }
    let (mut ok, mut limited) = (0, 0);
    while let Some(r) = set.join_next().await {
        let (o, l) = r.unwrap();
        ok += o;
        limited += l;
    }
    (ok, limited)
}

/// INT-4.6-1, INT-4.6-4: two replicas on one Redis, both under load, allow together what ONE
/// limiter allows (burst + rate × window, within 5 %), not twice that; the GCRA key expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_rate_budget() {
    const RATE: u64 = 100;
    const BURST: u64 = 50;
    let url = redis_url();
    let prefix = fresh_prefix();
    let rate = format!("rate_limit: {{per_second: {RATE}, burst: {BURST}}}");
    let mut a = Harness::start_with(None, |c| {
        redis_backend(
            c,
            &url,
            &prefix,
            RedisErrorMode::Deny,
            &rate,
            "quota: {per_day: 2}",
            1000,
        )
    })
    .await;
    let mut b = Harness::start_with(None, |c| {
        redis_backend(
            c,
            &url,
            &prefix,
            RedisErrorMode::Deny,
            &rate,
            "quota: {per_day: 2}",
            1000,
        )
    })
    .await;
    // Warm both (token verification, connections) on another integration.
    let warm_a = {
        let t = a.sign(
            "ke-rs256",
            &a.claims("ke", "int-ke-moh", &["health"], "health:person:read"),
        );
        Harness::get(RECORD, &t)
    };
    let warm_b = {
        let t = b.sign(
            "ke-rs256",
            &b.claims("ke", "int-ke-moh", &["health"], "health:person:read"),
        );
        Harness::get(RECORD, &t)
    };
    assert_eq!(a.check(&warm_a).await["allowed"], true);
    assert_eq!(b.check(&warm_b).await["allowed"], true);

    let window = Duration::from_secs(3);
    let start = Instant::now();
    let until = start + window;
    let (ra, rb) = tokio::join!(
        hammer(a.client.clone(), limited_input(&a), 4, until),
        hammer(b.client.clone(), limited_input(&b), 4, until),
    );
    let elapsed = start.elapsed().as_secs_f64();
    let allowed = ra.0 + rb.0;
    let one_limiter = BURST as f64 + RATE as f64 * elapsed;
    let attempts = ra.0 + ra.1 + rb.0 + rb.1;
    eprintln!(
        "allowed {allowed} (a {}, b {}) of {attempts} in {elapsed:.3} s; one limiter: {one_limiter:.1}",
        ra.0, rb.0
    );
    assert!(
        attempts as f64 > 2.0 * one_limiter,
        "the load must exceed the limit: {attempts} attempts"
    );
    assert!(
        ra.0 > 0 && rb.0 > 0,
        "both replicas were allowed some: {ra:?} {rb:?}"
    );
    let deviation = (allowed as f64 - one_limiter).abs() / one_limiter;
    assert!(
        deviation <= 0.05,
        "allowed {allowed}, one limiter {one_limiter:.1}: {:.1} % off",
        deviation * 100.0
    );

    // The key carries a TTL (an idle integration's key disappears once its bucket is full).
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let ttl: i64 = redis::cmd("PTTL")
        .arg(format!("{prefix}gcra:ke:int-ke-limited"))
        .query(&mut conn)
        .unwrap();
    let full_ms = 1000 * BURST / RATE + 1000;
    assert!(ttl > 0 && ttl as u64 <= full_ms + 100, "PTTL {ttl}");
}

/// INT-4.6-2, INT-4.6-4: the daily batch quota is one count across replicas; over it, both deny
/// 429 `QUOTA_EXCEEDED` with `retry-after` until midnight UTC; the key expires after the day.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_daily_quota() {
    let url = redis_url();
    let prefix = fresh_prefix();
    let quota = "quota: {per_day: 5}";
    let rate = "rate_limit: {per_second: 1, burst: 2}";
    let mut a = Harness::start_with(None, |c| {
        redis_backend(c, &url, &prefix, RedisErrorMode::Deny, rate, quota, 1000)
    })
    .await;
    let mut b = Harness::start_with(None, |c| {
        redis_backend(c, &url, &prefix, RedisErrorMode::Deny, rate, quota, 1000)
    })
    .await;
    let (ia, ib) = (batch_input(&a), batch_input(&b));
    let mut allowed = 0;
    for i in 0..5 {
        let v = if i % 2 == 0 {
            a.check(&ia).await
        } else {
            b.check(&ib).await
        };
        assert_eq!(v["allowed"], true, "request {i}: {v}");
        allowed += 1;
    }
    assert_eq!(allowed, 5);
    let now = chrono::Utc::now().timestamp();
    let to_midnight = (now.div_euclid(86_400) + 1) * 86_400 - now;
    for v in [a.check(&ia).await, b.check(&ib).await] {
        assert_eq!(v["allowed"], false, "{v}");
        assert_eq!(v["status"], 429, "{v}");
        assert_eq!(v["code"], "QUOTA_EXCEEDED", "{v}");
        let ra = retry_after(&v) as i64;
        assert!(
            (ra - to_midnight).abs() <= 5,
            "retry-after {ra}, midnight in {to_midnight}"
        );
    }
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let key = format!("{prefix}quota:ke:int-ke-batch");
    let n: i64 = redis::cmd("HGET")
        .arg(&key)
        .arg("n")
        .query(&mut conn)
        .unwrap();
    assert_eq!(n, 5, "denied requests are not counted");
    let ttl: i64 = redis::cmd("TTL").arg(&key).query(&mut conn).unwrap();
    assert!(
        ttl > 0 && ttl <= to_midnight + 65,
        "TTL {ttl}, midnight in {to_midnight}"
    );
}

/// A `redis-server` child on its own port, nothing on disk; killed on drop.
struct RedisChild {
    port: u16,
    child: Option<Child>,
}

impl RedisChild {
    fn start(port: u16) -> RedisChild {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        let started = Instant::now();
        let url = format!("redis://127.0.0.1:{port}");
        loop {
            if let Ok(mut c) = redis::Client::open(url.as_str()).unwrap().get_connection()
                && redis::cmd("PING").query::<String>(&mut c).is_ok()
            {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        RedisChild {
            port,
            child: Some(child),
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn exists(&self, key: &str) -> bool {
        let mut c = redis::Client::open(self.url().as_str())
            .unwrap()
            .get_connection()
            .unwrap();
        redis::cmd("EXISTS").arg(key).query::<i64>(&mut c).unwrap() == 1
    }
}

impl Drop for RedisChild {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Checks once, asserting the answer came within `bound` (no hang on a dead Redis).
async fn timed_check(h: &mut Harness, input: &CheckInput, bound: Duration) -> Value {
    let t = Instant::now();
    let v = h.check(input).await;
    assert!(t.elapsed() < bound, "check took {:?}", t.elapsed());
    v
}

/// INT-4.6-1, INT-4.6-4: `on_redis_error = "local"`: with Redis killed, each replica keeps
/// limiting with its own limiter (burst then 429), answers never wait beyond the timeout, and the
/// shared limit resumes when Redis is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_falls_back_to_local_limit() {
    let mut redis = RedisChild::start(free_port());
    let prefix = fresh_prefix();
    let key = format!("{prefix}gcra:ke:int-ke-limited");
    let rate = "rate_limit: {per_second: 1, burst: 3}";
    let url = redis.url();
    let mut h = Harness::start_with(None, |c| {
        redis_backend(
            c,
            &url,
            &prefix,
            RedisErrorMode::Local,
            rate,
            "quota: {per_day: 2}",
            200,
        )
    })
    .await;
    let input = limited_input(&h);
    let bound = Duration::from_millis(1000);
    // Redis up: the shared burst of 3, then 429.
    for i in 0..3 {
        let v = timed_check(&mut h, &input, bound).await;
        assert_eq!(v["allowed"], true, "request {i}: {v}");
    }
    assert_eq!(
        timed_check(&mut h, &input, bound).await["code"],
        "RATE_LIMITED"
    );
    assert!(redis.exists(&key), "the limit was counted in Redis");

    // Redis down: the local limiter (untouched so far) takes over: its burst of 3, then 429.
    redis.kill();
    let mut codes = Vec::new();
    for _ in 0..5 {
        let v = timed_check(&mut h, &input, bound).await;
        codes.push(if v["allowed"] == true {
            "OK".to_owned()
        } else {
            v["code"].as_str().unwrap().to_owned()
        });
    }
    assert_eq!(codes, ["OK", "OK", "OK", "RATE_LIMITED", "RATE_LIMITED"]);

    // Redis back (empty): the shared limit is used again.
    redis = RedisChild::start(redis.port);
    let started = Instant::now();
    loop {
        timed_check(&mut h, &input, bound).await;
        if redis.exists(&key) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "shared limit did not resume"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// INT-4.6-4: `on_redis_error = "deny"`: with Redis killed, every check is 503
/// `DEPENDENCY_UNAVAILABLE` with `retry-after` (never an allow) within the timeout; service resumes
/// when Redis is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_denies_when_configured() {
    let mut redis = RedisChild::start(free_port());
    let prefix = fresh_prefix();
    let rate = "rate_limit: {per_second: 1000, burst: 1000}";
    let url = redis.url();
    let mut h = Harness::start_with(None, |c| {
        redis_backend(
            c,
            &url,
            &prefix,
            RedisErrorMode::Deny,
            rate,
            "quota: {per_day: 1000}",
            200,
        )
    })
    .await;
    let (input, batch) = (limited_input(&h), batch_input(&h));
    let bound = Duration::from_millis(1000);
    assert_eq!(timed_check(&mut h, &input, bound).await["allowed"], true);
    assert_eq!(timed_check(&mut h, &batch, bound).await["allowed"], true);

    redis.kill();
    for i in 0..20 {
        let which = if i % 2 == 0 { &input } else { &batch };
        let v = timed_check(&mut h, which, bound).await;
        assert_eq!(v["allowed"], false, "request {i}: {v}");
        assert_eq!(v["status"], 503, "{v}");
        assert_eq!(v["code"], "DEPENDENCY_UNAVAILABLE", "{v}");
        assert!(retry_after(&v) >= 1);
    }

    // Long enough for the client's reconnection attempts to run out: it must still come back.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let v = timed_check(&mut h, &input, bound).await;
    assert_eq!(v["code"], "DEPENDENCY_UNAVAILABLE", "{v}");

    redis = RedisChild::start(redis.port);
    let started = Instant::now();
    loop {
        let v = timed_check(&mut h, &input, bound).await;
        if v["allowed"] == true {
            break;
        }
        assert_eq!(v["code"], "DEPENDENCY_UNAVAILABLE", "{v}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "service did not resume"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(timed_check(&mut h, &batch, bound).await["allowed"], true);
    drop(redis);

    // The outage is visible in the metrics.
    let text = h.metrics_text().await;
    let count = |result: &str| {
        text.lines()
            .filter(|l| {
                l.starts_with("scp_pep_rate_limit_redis_calls_total")
                    && l.contains(&format!("result=\"{result}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    assert!(count("ok") >= 3.0, "{text}");
    assert!(count("error") + count("timeout") >= 1.0, "{text}");
    assert!(count("skipped") >= 1.0, "{text}");
}

/// INT-4.6-4: a Redis that accepts connections but never answers (a black hole, not a refusal)
/// costs at most `timeout_ms` per check: with `on_redis_error = "deny"` every check is a prompt
/// 503, with `"local"` a prompt local decision; both recover when Redis answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_redis_is_bounded_by_the_timeout() {
    let upstream = redis_url();
    let upstream = upstream
        .trim_start_matches("redis://")
        .trim_end_matches('/');
    let proxy = TcpProxy::start(upstream).await;
    let url = format!("redis://{}", proxy.addr);
    let rate = "rate_limit: {per_second: 1000, burst: 1000}";
    let (p1, p2) = (fresh_prefix(), fresh_prefix());
    let mut deny = Harness::start_with(None, |c| {
        redis_backend(
            c,
            &url,
            &p1,
            RedisErrorMode::Deny,
            rate,
            "quota: {per_day: 1000}",
            50,
        )
    })
    .await;
    let mut local = Harness::start_with(None, |c| {
        redis_backend(
            c,
            &url,
            &p2,
            RedisErrorMode::Local,
            rate,
            "quota: {per_day: 1000}",
            50,
        )
    })
    .await;
    let (di, li) = (limited_input(&deny), limited_input(&local));
    let bound = Duration::from_millis(1000);
    allowed_within(&mut deny, &di, Duration::from_secs(5)).await;
    assert_eq!(timed_check(&mut local, &li, bound).await["allowed"], true);

    proxy.set_mode(ProxyMode::Blackhole).await;
    // 50 ms timeout, then Redis is skipped for 200 ms: no check waits for the silent Redis
    // beyond the timeout (the bound leaves room for a debug build on a busy machine).
    let prompt = Duration::from_millis(400);
    for _ in 0..10 {
        let v = timed_check(&mut deny, &di, prompt).await;
        assert_eq!(v["code"], "DEPENDENCY_UNAVAILABLE", "{v}");
        let v = timed_check(&mut local, &li, prompt).await;
        assert_eq!(v["allowed"], true, "{v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    proxy.set_mode(ProxyMode::Up).await;
    allowed_within(&mut deny, &di, Duration::from_secs(10)).await;
}

/// Checks until allowed (every answer in between a 503 `DEPENDENCY_UNAVAILABLE`), at most `limit`.
async fn allowed_within(h: &mut Harness, input: &CheckInput, limit: Duration) {
    let started = Instant::now();
    loop {
        let v = timed_check(h, input, Duration::from_millis(1000)).await;
        if v["allowed"] == true {
            return;
        }
        assert_eq!(v["code"], "DEPENDENCY_UNAVAILABLE", "{v}");
        assert!(
            started.elapsed() < limit,
            "not allowed within {limit:?}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
