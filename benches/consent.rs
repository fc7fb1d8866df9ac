//! Consent benchmarks (issue 4: consent registry and stage 7). A plain `main`, not Criterion.
//!
//! Datasets, built once and reused by later runs:
//! - PostgreSQL: database `scp_pep_bench_consent` on the server of `BENCH_PG_URL` (default
//!   `postgres://root@127.0.0.1:5432/test`), `BENCH_CONSENT_ROWS` (10,000,000) persons `p-1` …
//!   `p-N` of tenant `ke`, each with one active, open-ended, vertical-wide consent for `health`
//!   (one row each in `consent_versions`, `consent_heads` and `consent_persons`). Built with
//!   `INSERT … SELECT … FROM generate_series` while the tables' indexes are dropped, then the
//!   indexes are rebuilt with the migration's names and definitions and the tables vacuumed. A
//!   marker table `bench_dataset` is written last; a database without it (an interrupted load) is
//!   dropped and rebuilt. Another row count uses `scp_pep_bench_consent_<N>`.
//! - SQLite: `target/bench-consent-<N>.db` (`BENCH_CONSENT_SQLITE` overrides the path) with
//!   `BENCH_CONSENT_SQLITE_ROWS` (1,000,000) persons, built in one transaction with a recursive
//!   CTE.
//!
//! Workload: person ranks drawn from Zipf(`BENCH_ZIPF_S`, default 1.0) over 1..=N by inverting a
//! precomputed CDF (binary search); rank r is person `p-((r-1)·A mod N + 1)` with A coprime to N,
//! so that the hot persons are spread over the table rather than being its first rows.
//!
//! Parts (`BENCH_CONSENT_PARTS`, default `hit,miss,e2e,memory`; `datasets` only builds both
//! datasets):
//! 1. `hit`: `Consents::heads` and `Consents::check_persons` (one person × one vertical) with a
//!    warm cache, `BENCH_HIT_ITERS` (1,000,000) calls: mean from an untimed loop, percentiles from
//!    a loop timing each call; then `check_persons` over `BENCH_HIT_KEYS` (100,000) cached keys
//!    drawn from Zipf.
//! 2. `miss`: `check_persons` after `Consents::invalidate` of the key, so every check reads the
//!    store, on each store of `BENCH_CONSENT_STORES` (`postgres,sqlite`), at the concurrencies of
//!    `BENCH_MISS_CONC` (`1,8`), `BENCH_MISS_SAMPLES` (30,000) checks each (plus 10 % warm-up);
//!    p50/p99/p99.9. The pool has the server's default 8 connections; the runtime 2 workers.
//! 3. `e2e`: two scp-pep servers in this process on a 2-worker runtime: one with the fixture
//!    policies on the `BENCH_E2E_STORE` (`postgres`) dataset (the route's person is in the path,
//!    so stage 7 checks it), one on a fresh SQLite file whose routes have no `person_id` (no
//!    stage 7). Both get the same requests, `GET /v1/tenants/ke/health/persons/<Zipf person>/record`
//!    from a pool of `BENCH_E2E_PATHS` (1,000,000) precomputed paths, from a current-thread
//!    client over `BENCH_CONNS` (4) connections. After a `BENCH_E2E_PREWARM_S` (20) s closed loop
//!    that fills the consent cache (default `consent.cache_entries`, 1,000,000, or
//!    `BENCH_E2E_CACHE`), closed loops of `BENCH_DURATION_S` (10) s after `BENCH_WARMUP_S` (2) s
//!    alternate between the two for `BENCH_ROUNDS` (3) rounds (order rotated every round) at each
//!    concurrency of `BENCH_CONC` (`32`). Prints throughput, the ratio, the consent cache hit rate
//!    and server CPU per check (server threads + PostgreSQL backends of `scp_pep_bench_*`).
//! 4. `memory`: for each capacity of `BENCH_MEM_CAPS` (`10000,100000,1000000`), a child process
//!    fills a `Consents` cache from the SQLite dataset with `BENCH_MEM_KEYS` (all its rows)
//!    distinct keys and prints RSS growth after `cap` keys and after all of them.
//! 5. `rss` (not in the default list): a child process runs one scp-pep in the default
//!    configuration (durable audit and consent on one SQLite store, a copy of the dataset;
//!    decision log on; default cache sizes), sends `BENCH_RSS_PERSONS` (300,000) distinct persons
//!    through gRPC once each (`BENCH_CONC`, 32, in flight) and prints the process RSS.
//!
//! Run: `cargo bench --bench consent` (first run: builds the datasets, about 10 minutes).

mod support;

/// The same allocator as the `scp-pep` binary (src/main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use envoy_types::ext_authz::v3::pb::{CheckRequest, HttpResponse};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use scp_pep::audit::AuditMode;
use scp_pep::check::build_request;
use scp_pep::consent::{ConsentConfig, Consents, SystemClock};
use scp_pep::policy::Route;
use scp_pep::store::Store;
use sqlx::Connection;
use support::{Bench, Options, StoreKind, pct};
use tonic::transport::{Channel, Endpoint};

const TENANT: &str = "ke";
const VERTICAL: &str = "health";
const PG_DB: &str = "scp_pep_bench_consent";
/// 2026-01-01T00:00:00Z, Unix ms: capture and change time of every seeded consent.
const SEEDED_MS: i64 = 1_767_225_600_000;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

fn env_nums(name: &str, default: &str) -> Vec<u64> {
    env_list(name, default)
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Workload

/// splitmix64: small, fast, good enough for drawing ranks.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Zipf(s) over ranks 1..=n, mapped to person numbers by a multiplicative permutation.
struct Workload {
    /// `cdf[k-1]` = P(rank ≤ k).
    cdf: Vec<f64>,
    /// Multiplier of the rank → person permutation (coprime to n).
    a: u64,
    s: f64,
}

impl Workload {
    fn new(n: u64, s: f64) -> Workload {
        let n = n.max(1);
        let mut cdf = Vec::with_capacity(n as usize);
        let mut acc = 0.0f64;
        for k in 1..=n {
            acc += (k as f64).powf(-s);
            cdf.push(acc);
        }
        for c in &mut cdf {
            *c /= acc;
        }
        let mut a = 2_654_435_761 % n;
        while a == 0 || gcd(a, n) != 1 {
            a = (a + 1) % n.max(2);
        }
        Workload { cdf, a, s }
    }

    fn n(&self) -> u64 {
        self.cdf.len() as u64
    }

    /// A rank in 1..=n.
    fn rank(&self, rng: &mut Rng) -> u64 {
        let u = rng.unit();
        (self.cdf.partition_point(|&c| c < u) as u64 + 1).min(self.n())
    }

    /// The person number of rank `r`.
    fn person_of(&self, r: u64) -> u64 {
        ((r - 1) as u128 * self.a as u128 % self.n() as u128) as u64 + 1
    }

    /// A person number drawn from the workload.
    fn person(&self, rng: &mut Rng) -> u64 {
        self.person_of(self.rank(rng))
    }

    /// Probability mass of the `k` most frequent persons (the hit rate of an ideal cache of `k`).
    fn head_mass(&self, k: u64) -> f64 {
        if k == 0 {
            0.0
        } else {
            self.cdf[(k.min(self.n()) - 1) as usize]
        }
    }
}

/// The fixture route `health-person-record` (vertical `health`, person in the path, no purpose).
fn route() -> Route {
    serde_yaml_ng::from_str(
        "id: health-person-record\nmethods: [GET, HEAD]\n\
         path: /v1/tenants/{tenant}/health/persons/{person_id}/record\nverticals: [health]\n\
         action: read\nresource: person_health_record\nscope: health:person:read\n\
         person_id: {in: path, name: person_id}\n\
         data_categories: [identity.basic, health.clinical]\n\
         fields: [name, dob, sex, national_id, diagnosis_code, hiv_status]\nkind: real_time\n",
    )
    .expect("route yaml")
}

// ---------------------------------------------------------------------------------------------
// Datasets

async fn connect(url: &str) -> Store {
    Store::connect(url, 8, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("store {url}: {e}"))
}

async fn marker_rows(store: &Store) -> Option<i64> {
    let q = "SELECT rows FROM bench_dataset";
    match store {
        Store::Sqlite(p) => sqlx::query_scalar(q).fetch_one(p).await.ok(),
        Store::Postgres(p) => sqlx::query_scalar(q).fetch_one(p).await.ok(),
    }
}

/// The PostgreSQL dataset of `rows` persons (built if missing); returns the store and its URL.
async fn pg_dataset(rows: u64) -> (Store, String) {
    let admin = support::pg_admin_url();
    let name = if rows == 10_000_000 {
        PG_DB.to_owned()
    } else {
        format!("{PG_DB}_{rows}")
    };
    let base = admin
        .rsplit_once('/')
        .map(|(b, _)| b.to_owned())
        .unwrap_or_else(|| admin.clone());
    let url = format!("{base}/{name}");
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL must be reachable at {admin}: {e}"));
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut conn)
            .await
            .expect("pg_database");
    if exists {
        let store = connect(&url).await;
        match marker_rows(&store).await {
            Some(n) if n == rows as i64 => {
                println!("postgres dataset: reusing {name} ({rows} persons)");
                let _ = conn.close().await;
                return (store, url);
            }
            other => println!("postgres dataset: {name} incomplete ({other:?}); rebuilding"),
        }
        store.close().await;
        // `name` is built here from a constant and a number: no outside input.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&mut conn)
        .await
        .expect("drop dataset");
    }
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create dataset");
    let _ = conn.close().await;
    let store = connect(&url).await;
    load_pg(&store, rows).await;
    (store, url)
}

/// Runs `sqls` in order on one connection of `pool` (synchronous_commit off, big
/// maintenance_work_mem).
async fn pg_script(pool: &sqlx::PgPool, what: &str, sqls: &[&str], rows: u64) {
    let t = Instant::now();
    let mut c = pool.acquire().await.expect("acquire");
    for s in [
        "SET synchronous_commit = off",
        "SET maintenance_work_mem = '1GB'",
    ]
    .iter()
    .chain(sqls)
    {
        let q = sqlx::query(sqlx::AssertSqlSafe(*s));
        let q = if s.contains("$1") {
            q.bind(rows as i64)
        } else {
            q
        };
        q.execute(&mut *c)
            .await
            .unwrap_or_else(|e| panic!("{what}: {s}: {e}"));
    }
    println!("  {what}: {:.1} s", t.elapsed().as_secs_f64());
}

async fn load_pg(store: &Store, rows: u64) {
    let Store::Postgres(pool) = store else {
        unreachable!("postgres store")
    };
    println!("postgres dataset: loading {rows} persons");
    let t = Instant::now();
    pg_script(
        pool,
        "drop indexes",
        &[
            "ALTER TABLE consent_versions DROP CONSTRAINT consent_versions_pkey, \
             DROP CONSTRAINT consent_versions_version_id_key",
            "DROP INDEX consent_versions_person",
            "ALTER TABLE consent_heads DROP CONSTRAINT consent_heads_pkey",
            "DROP INDEX consent_heads_consent, consent_heads_expiry, consent_heads_vertical, \
             consent_heads_grace",
            "ALTER TABLE consent_persons DROP CONSTRAINT consent_persons_pkey",
        ],
        rows,
    )
    .await;
    // Consent and version ids are UUID-shaped text, as the API writes them, but derived from n
    // (md5) so that versions and heads agree without a join.
    let versions = pg_script(
        pool,
        "consent_versions",
        &[
            "INSERT INTO consent_versions (consent_id, version, version_id, tenant_id, person_id, \
             vertical_id, purpose, status, active_from_ms, active_until_ms, grace_until_ms, \
             capture_mode, evidence_attachment_ids, verification_document_attachment_id, \
             identity_verification, fields, reason_code, reason_text, change, captured_by, \
             captured_at_ms, changed_by, changed_at_ms) \
             SELECT md5('c' || n)::uuid::text, 1, md5('v' || n)::uuid::text, 'ke', 'p-' || n, \
             'health', '', 'active', 0, NULL, NULL, 'online', '[\"ev-1\"]', NULL, NULL, NULL, \
             NULL, NULL, 'capture', 'bench-officer', 1767225600000, 'bench-officer', \
             1767225600000 FROM generate_series(1, $1::bigint) AS n",
            "ALTER TABLE consent_versions ADD PRIMARY KEY (consent_id, version)",
            "ALTER TABLE consent_versions ADD UNIQUE (version_id)",
            "CREATE INDEX consent_versions_person ON consent_versions (tenant_id, person_id)",
            "VACUUM (ANALYZE) consent_versions",
        ],
        rows,
    );
    let heads = pg_script(
        pool,
        "consent_heads",
        &[
            "INSERT INTO consent_heads (tenant_id, person_id, vertical_id, purpose, consent_id, \
             version, status, active_from_ms, active_until_ms, grace_until_ms, changed_at_ms) \
             SELECT 'ke', 'p-' || n, 'health', '', md5('c' || n)::uuid::text, 1, 'active', 0, NULL, \
             NULL, 1767225600000 FROM generate_series(1, $1::bigint) AS n",
            "ALTER TABLE consent_heads ADD PRIMARY KEY (tenant_id, person_id, vertical_id, purpose)",
            "CREATE UNIQUE INDEX consent_heads_consent ON consent_heads (consent_id)",
            "CREATE INDEX consent_heads_expiry ON consent_heads (status, active_until_ms)",
            "CREATE INDEX consent_heads_vertical ON consent_heads \
             (tenant_id, vertical_id, status, changed_at_ms)",
            "CREATE INDEX consent_heads_grace ON consent_heads (tenant_id, vertical_id, grace_until_ms)",
            "VACUUM (ANALYZE) consent_heads",
        ],
        rows,
    );
    let persons = pg_script(
        pool,
        "consent_persons",
        &[
            "INSERT INTO consent_persons (tenant_id, person_id, verification, status, channels, \
             updated_ms) SELECT 'ke', 'p-' || n, 'verified', 'active', '[\"sms\"]', 1767225600000 \
             FROM generate_series(1, $1::bigint) AS n",
            "ALTER TABLE consent_persons ADD PRIMARY KEY (tenant_id, person_id)",
            "VACUUM (ANALYZE) consent_persons",
        ],
        rows,
    );
    tokio::join!(versions, heads, persons);
    pg_script(
        pool,
        "marker",
        &[
            "CREATE TABLE bench_dataset (rows BIGINT NOT NULL)",
            "INSERT INTO bench_dataset VALUES ($1::bigint)",
        ],
        rows,
    )
    .await;
    let size: String =
        sqlx::query_scalar("SELECT pg_size_pretty(pg_database_size(current_database()))")
            .fetch_one(pool)
            .await
            .unwrap_or_default();
    println!(
        "postgres dataset: {rows} persons loaded in {:.0} s; database size {size}",
        t.elapsed().as_secs_f64()
    );
}

/// The SQLite dataset of `rows` persons (built if missing).
async fn sqlite_dataset(rows: u64) -> Store {
    let path = std::env::var("BENCH_CONSENT_SQLITE").map_or_else(
        |_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("target")
                .join(format!("bench-consent-{rows}.db"))
        },
        PathBuf::from,
    );
    let url = format!("sqlite:{}", path.display());
    if path.exists() {
        let store = connect(&url).await;
        if marker_rows(&store).await == Some(rows as i64) {
            println!(
                "sqlite dataset: reusing {} ({rows} persons)",
                path.display()
            );
            return store;
        }
        store.close().await;
        for ext in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{ext}", path.display()));
        }
    }
    let store = connect(&url).await;
    let Store::Sqlite(pool) = &store else {
        unreachable!("sqlite store")
    };
    println!("sqlite dataset: loading {rows} persons");
    let t = Instant::now();
    let mut tx = pool.begin().await.expect("begin");
    let cte = "WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < $1) ";
    let statements = [
        format!(
            "INSERT INTO consent_versions (consent_id, version, version_id, tenant_id, person_id, \
             vertical_id, purpose, status, active_from_ms, active_until_ms, grace_until_ms, \
             capture_mode, evidence_attachment_ids, verification_document_attachment_id, \
             identity_verification, fields, reason_code, reason_text, change, captured_by, \
             captured_at_ms, changed_by, changed_at_ms) {cte}\
             SELECT lower(hex(randomblob(16))), 1, lower(hex(randomblob(16))), 'ke', 'p-' || n, \
             'health', '', 'active', 0, NULL, NULL, 'online', '[\"ev-1\"]', NULL, NULL, NULL, \
             NULL, NULL, 'capture', 'bench-officer', {SEEDED_MS}, 'bench-officer', {SEEDED_MS} \
             FROM s"
        ),
        "INSERT INTO consent_heads (tenant_id, person_id, vertical_id, purpose, consent_id, \
         version, status, active_from_ms, active_until_ms, grace_until_ms, fields, changed_at_ms) \
         SELECT tenant_id, person_id, vertical_id, purpose, consent_id, version, status, \
         active_from_ms, active_until_ms, grace_until_ms, fields, changed_at_ms FROM consent_versions"
            .to_owned(),
        format!(
            "INSERT INTO consent_persons (tenant_id, person_id, verification, status, channels, \
             updated_ms) {cte}SELECT 'ke', 'p-' || n, 'verified', 'active', '[\"sms\"]', \
             {SEEDED_MS} FROM s"
        ),
        "CREATE TABLE bench_dataset (rows BIGINT NOT NULL)".to_owned(),
        "INSERT INTO bench_dataset VALUES ($1)".to_owned(),
    ];
    for s in &statements {
        let q = sqlx::query(sqlx::AssertSqlSafe(s.as_str()));
        let q = if s.contains("$1") {
            q.bind(rows as i64)
        } else {
            q
        };
        q.execute(&mut *tx)
            .await
            .unwrap_or_else(|e| panic!("sqlite load: {s}: {e}"));
    }
    tx.commit().await.expect("commit");
    sqlx::query("ANALYZE").execute(pool).await.expect("analyze");
    println!(
        "sqlite dataset: {rows} persons loaded in {:.0} s",
        t.elapsed().as_secs_f64()
    );
    store
}

// ---------------------------------------------------------------------------------------------
// Statistics

/// Latency summary of nanosecond samples.
fn summary(label: &str, lat: &mut [u64], wall: Option<Duration>) -> String {
    lat.sort_unstable();
    let n = lat.len().max(1) as f64;
    let mean = lat.iter().sum::<u64>() as f64 / n;
    let us = |x: u64| x as f64 / 1000.0;
    let rate = wall.map_or(String::new(), |w| {
        format!(", {:.0} checks/s", lat.len() as f64 / w.as_secs_f64())
    });
    format!(
        "{label}: n={} mean {:.2} µs, p50 {:.2}, p90 {:.2}, p99 {:.2}, p99.9 {:.2}, max {:.1} µs{rate}",
        lat.len(),
        mean / 1000.0,
        us(pct(lat, 0.50)),
        us(pct(lat, 0.90)),
        us(pct(lat, 0.99)),
        us(pct(lat, 0.999)),
        us(lat.last().copied().unwrap_or(0)),
    )
}

// ---------------------------------------------------------------------------------------------
// 1. Cache hit

fn part_hit(store: &Store, wl: &Workload, results: &mut Vec<String>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let iters = env_u64("BENCH_HIT_ITERS", 1_000_000).max(1000);
    let keys = env_u64("BENCH_HIT_KEYS", 100_000).clamp(1, wl.n());
    let route = route();
    let consents = rt.block_on(async {
        Consents::new(
            store.clone(),
            ConsentConfig::default(),
            Arc::new(SystemClock),
        )
    });
    let person = vec![format!("p-{}", wl.person_of(1))];
    println!(
        "\n== (1) cache hit, {iters} calls each, person {} ==",
        person[0]
    );
    rt.block_on(async {
        let mut checks = Vec::new();
        consents
            .check_persons(TENANT, &route, &person, &mut checks)
            .await
            .expect("seeded person is allowed");
        assert_eq!(checks[0].result, "active");

        // heads(): mean from an untimed loop, then each call timed.
        let t = Instant::now();
        for _ in 0..iters {
            let h = consents.heads(TENANT, &person[0], VERTICAL).await;
            std::hint::black_box(h.expect("hit"));
        }
        let mean = t.elapsed().as_nanos() as f64 / iters as f64;
        let mut lat = Vec::with_capacity(iters as usize);
        for _ in 0..iters {
            let t = Instant::now();
            let h = consents.heads(TENANT, &person[0], VERTICAL).await;
            std::hint::black_box(h.expect("hit"));
            lat.push(t.elapsed().as_nanos() as u64);
        }
        let line = format!(
            "RESULT hit heads(): untimed-loop mean {:.3} µs; {}",
            mean / 1000.0,
            summary("timed", &mut lat, None)
        );
        println!("{line}");
        results.push(line);

        // check_persons(): one person × one vertical, a fresh checks vector per call as in the
        // pipeline (one per decision).
        let t = Instant::now();
        for _ in 0..iters {
            let mut checks = Vec::new();
            let r = consents
                .check_persons(TENANT, &route, &person, &mut checks)
                .await;
            std::hint::black_box((r.expect("allowed"), checks));
        }
        let mean = t.elapsed().as_nanos() as f64 / iters as f64;
        lat.clear();
        for _ in 0..iters {
            let t = Instant::now();
            let mut checks = Vec::new();
            let r = consents
                .check_persons(TENANT, &route, &person, &mut checks)
                .await;
            std::hint::black_box((r.expect("allowed"), checks));
            lat.push(t.elapsed().as_nanos() as u64);
        }
        let line = format!(
            "RESULT hit check_persons(1 person × 1 vertical): untimed-loop mean {:.3} µs; {}",
            mean / 1000.0,
            summary("timed", &mut lat, None)
        );
        println!("{line}");
        results.push(line);

        // Zipf over `keys` cached persons (a larger working set: CPU cache misses in moka).
        let t = Instant::now();
        let ids: Vec<String> = (1..=keys)
            .map(|r| format!("p-{}", wl.person_of(r)))
            .collect();
        for id in &ids {
            consents
                .heads(TENANT, id, VERTICAL)
                .await
                .expect("fill from the store");
        }
        println!(
            "filled {} keys from the store in {:.1} s; cache holds {}",
            keys,
            t.elapsed().as_secs_f64(),
            consents.cached_entries()
        );
        let zipf_keys = Workload::new(keys, wl.s);
        let mut rng = Rng(7);
        let draws: Vec<usize> = (0..iters)
            .map(|_| (zipf_keys.rank(&mut rng) - 1) as usize)
            .collect();
        lat.clear();
        let t0 = Instant::now();
        for &i in &draws {
            let p = std::slice::from_ref(&ids[i]);
            let t = Instant::now();
            let mut checks = Vec::new();
            let r = consents.check_persons(TENANT, &route, p, &mut checks).await;
            std::hint::black_box((r.expect("allowed"), checks));
            lat.push(t.elapsed().as_nanos() as u64);
        }
        let wall = t0.elapsed();
        let line = format!(
            "RESULT hit check_persons, Zipf(s={}) over {keys} cached keys: {}",
            wl.s,
            summary("timed", &mut lat, Some(wall))
        );
        println!("{line}");
        results.push(line);
    });
}

// ---------------------------------------------------------------------------------------------
// 2. Cache miss

fn part_miss(
    rt: &tokio::runtime::Runtime,
    name: &str,
    store: &Store,
    wl: &Arc<Workload>,
    results: &mut Vec<String>,
) {
    let samples = env_u64("BENCH_MISS_SAMPLES", 30_000).max(100);
    let route = Arc::new(route());
    let consents = rt.block_on(async {
        Consents::new(
            store.clone(),
            ConsentConfig {
                cache_entries: 10_000,
                ..ConsentConfig::default()
            },
            Arc::new(SystemClock),
        )
    });
    for conc in env_nums("BENCH_MISS_CONC", "1,8") {
        let conc = conc.clamp(1, 256) as usize;
        println!(
            "\n== (2) cache miss, {name} ({} persons), concurrency {conc}, {samples} checks ==",
            wl.n()
        );
        let (mut lat, wall) = rt.block_on(async {
            let mut all = Vec::new();
            let mut wall = Duration::ZERO;
            // Phase 0: warm-up (10 %, discarded); phase 1: measured.
            for phase in 0..2 {
                let per_task = if phase == 0 {
                    (samples / 10 / conc as u64).max(1)
                } else {
                    samples.div_ceil(conc as u64)
                };
                let t0 = Instant::now();
                let mut tasks = Vec::new();
                for i in 0..conc {
                    let (consents, wl, route) = (consents.clone(), wl.clone(), route.clone());
                    let seed = 1000 * phase as u64 + i as u64 + 1;
                    tasks.push(tokio::spawn(async move {
                        let mut rng = Rng(seed.wrapping_mul(0x2545_F491_4F6C_DD1D));
                        let mut lat = Vec::with_capacity(per_task as usize);
                        for _ in 0..per_task {
                            let person = vec![format!("p-{}", wl.person(&mut rng))];
                            consents.invalidate(TENANT, &person[0], VERTICAL);
                            let t = Instant::now();
                            let mut checks = Vec::new();
                            let r = consents
                                .check_persons(TENANT, &route, &person, &mut checks)
                                .await;
                            let el = t.elapsed();
                            r.expect("seeded person is allowed");
                            lat.push(el.as_nanos() as u64);
                        }
                        lat
                    }));
                }
                let mut got = Vec::new();
                for t in tasks {
                    got.extend(t.await.expect("miss task"));
                }
                if phase == 1 {
                    wall = t0.elapsed();
                    all = got;
                }
            }
            (all, wall)
        });
        let fast = lat.iter().filter(|&&x| x < 20_000).count();
        let line = format!(
            "RESULT miss {name} C={conc}: {} ({fast} samples under 20 µs)",
            summary("check_persons after invalidate", &mut lat, Some(wall))
        );
        println!("{line}");
        results.push(line);
    }
}

// ---------------------------------------------------------------------------------------------
// 3. End to end

/// The prometheus value of `scp_pep_consent_cache_total{result="<r>"}`.
fn cache_counter(result: &str) -> f64 {
    let Some(h) = scp_pep::server::prometheus() else {
        return 0.0;
    };
    let label = format!("result=\"{result}\"");
    h.render()
        .lines()
        .filter(|l| l.starts_with("scp_pep_consent_cache_total") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// CPU seconds of this process's server threads (`srv-*`) and of the PostgreSQL backends serving
/// `scp_pep_bench_*` databases, and of the whole machine (busy time).
fn cpu_now() -> (f64, f64, f64) {
    let stat_cpu = |stat: &str| -> f64 {
        let Some(close) = stat.rfind(')') else {
            return 0.0;
        };
        let f: Vec<&str> = stat[close + 2..].split(' ').collect();
        match (f.get(11), f.get(12)) {
            (Some(u), Some(s)) => {
                (u.parse::<f64>().unwrap_or(0.0) + s.parse::<f64>().unwrap_or(0.0)) / 100.0
            }
            _ => 0.0,
        }
    };
    let mut srv = 0.0;
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for e in dir.flatten() {
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            if stat.contains("(srv-") || stat.contains("(sqlx-sqlite") {
                srv += stat_cpu(&stat);
            }
        }
    }
    let mut pg = 0.0;
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            if !e
                .file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
            {
                continue;
            }
            let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
                continue;
            };
            if !cmd.starts_with(b"postgres") || !cmd.windows(14).any(|w| w == b"scp_pep_bench_") {
                continue;
            }
            if let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) {
                pg += stat_cpu(&stat);
            }
        }
    }
    let machine = std::fs::read_to_string("/proc/stat")
        .ok()
        .map(|s| {
            let v: Vec<f64> = s
                .lines()
                .next()
                .unwrap_or("")
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            let total: f64 = v.iter().take(8).sum();
            let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
            (total - idle) / 100.0
        })
        .unwrap_or(0.0);
    (srv, pg, machine)
}

fn allowed(resp: &envoy_types::ext_authz::v3::pb::CheckResponse) -> bool {
    resp.status.as_ref().is_some_and(|s| s.code == 0)
        && !matches!(
            resp.http_response,
            Some(HttpResponse::DeniedResponse(_) | HttpResponse::ErrorResponse(_))
        )
}

/// A copy of `template` for `path`.
fn with_path(template: &CheckRequest, path: &str) -> CheckRequest {
    let mut r = template.clone();
    if let Some(http) = r
        .attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|q| q.http.as_mut())
    {
        http.path = path.to_owned();
        http.headers.insert(":path".into(), path.to_owned());
    }
    r
}

struct Target {
    label: &'static str,
    clients: Vec<AuthorizationClient<Channel>>,
    template: Arc<CheckRequest>,
}

struct Phase {
    rate: f64,
    errors: u64,
    p99_us: f64,
    cpu_us_per_check: f64,
    hit_rate: Option<f64>,
    foreign_pct: f64,
}

async fn closed_loop(
    t: &Target,
    paths: &Arc<Vec<String>>,
    conc: usize,
    warmup: Duration,
    duration: Duration,
) -> Phase {
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    static CURSOR: AtomicU64 = AtomicU64::new(0);
    let mut tasks = Vec::with_capacity(conc);
    for i in 0..conc {
        let mut client = t.clients[i % t.clients.len()].clone();
        let (template, paths) = (t.template.clone(), paths.clone());
        let (stop, measuring, done, errors) = (
            stop.clone(),
            measuring.clone(),
            done.clone(),
            errors.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(1 << 16);
            while !stop.load(Ordering::Relaxed) {
                let k = CURSOR.fetch_add(1, Ordering::Relaxed) as usize % paths.len();
                let req = with_path(&template, &paths[k]);
                let t = Instant::now();
                let res = tokio::time::timeout(REQUEST_TIMEOUT, client.check(req)).await;
                let el = t.elapsed();
                let ok = matches!(&res, Ok(Ok(r)) if allowed(r.get_ref()));
                if !ok {
                    errors.fetch_add(1, Ordering::Relaxed);
                    if errors.load(Ordering::Relaxed) < 3 {
                        eprintln!("not allowed: {res:?}");
                    }
                }
                if measuring.load(Ordering::Relaxed) {
                    done.fetch_add(1, Ordering::Relaxed);
                    lat.push(el.as_nanos() as u64);
                }
            }
            lat
        }));
    }
    tokio::time::sleep(warmup).await;
    let (s0, p0, m0) = cpu_now();
    let (h0, x0) = (cache_counter("hit"), cache_counter("miss"));
    let t0 = Instant::now();
    measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(duration).await;
    measuring.store(false, Ordering::Relaxed);
    let secs = t0.elapsed().as_secs_f64();
    let (s1, p1, m1) = cpu_now();
    let (h1, x1) = (cache_counter("hit"), cache_counter("miss"));
    let n = done.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    for task in tasks {
        if let Ok(Ok(mut v)) = tokio::time::timeout(REQUEST_TIMEOUT * 2, task).await {
            lat.append(&mut v);
        }
    }
    lat.sort_unstable();
    let lookups = (h1 - h0) + (x1 - x0);
    // The client thread is not separated out: it counts in the "outside" figure.
    let own = (s1 - s0) + (p1 - p0);
    let phase = Phase {
        rate: n as f64 / secs,
        errors: errors.load(Ordering::Relaxed),
        p99_us: pct(&lat, 0.99) as f64 / 1000.0,
        cpu_us_per_check: ((s1 - s0) + (p1 - p0)) * 1e6 / n.max(1) as f64,
        hit_rate: (lookups > 0.0).then(|| (h1 - h0) / lookups),
        foreign_pct: ((m1 - m0) - own).max(0.0) / secs * 100.0,
    };
    println!(
        "{:>10} C={conc:<3} {n} checks in {secs:.2} s → {:.0} checks/s, errors={}; latency p50 {:.0} µs \
         p99 {:.0} µs; server+PG CPU {:.1} µs/check (server {:.0} %, PG backends {:.0} % of a core); \
         consent cache hit rate {}; machine busy outside server+PG {:.0} % of a core (includes the client); RSS {} kB",
        t.label,
        phase.rate,
        phase.errors,
        pct(&lat, 0.50) as f64 / 1000.0,
        phase.p99_us,
        phase.cpu_us_per_check,
        (s1 - s0) / secs * 100.0,
        (p1 - p0) / secs * 100.0,
        phase
            .hit_rate
            .map_or("-".to_string(), |h| format!("{:.1} %", h * 100.0)),
        phase.foreign_pct,
        support::rss_kb(),
    );
    phase
}

fn part_e2e(
    pg_url: Option<String>,
    sqlite_rows: u64,
    wl: Arc<Workload>,
    results: &mut Vec<String>,
) {
    let duration = Duration::from_secs(env_u64("BENCH_DURATION_S", 10).clamp(1, 120));
    let warmup = Duration::from_secs(env_u64("BENCH_WARMUP_S", 2).clamp(0, 30));
    let prewarm = Duration::from_secs(env_u64("BENCH_E2E_PREWARM_S", 20).clamp(0, 600));
    let conns = env_u64("BENCH_CONNS", 4).clamp(1, 64) as usize;
    let rounds = env_u64("BENCH_ROUNDS", 3).clamp(1, 20) as usize;
    let concs: Vec<usize> = env_nums("BENCH_CONC", "32")
        .into_iter()
        .map(|c| c.clamp(1, 4096) as usize)
        .collect();
    let cache = std::env::var("BENCH_E2E_CACHE")
        .ok()
        .and_then(|v| v.parse().ok());
    let n_paths = env_u64("BENCH_E2E_PATHS", 1_000_000).max(1);

    let srv_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("srv-worker")
        .enable_all()
        .build()
        .expect("server runtime");
    let (store_kind, store_url, store_name) = match &pg_url {
        Some(u) => (StoreKind::Postgres, u.clone(), "postgres"),
        None => {
            let p = std::env::var("BENCH_CONSENT_SQLITE").unwrap_or_else(|_| {
                format!(
                    "{}/target/bench-consent-{sqlite_rows}.db",
                    env!("CARGO_MANIFEST_DIR")
                )
            });
            (StoreKind::Sqlite, format!("sqlite:{p}"), "sqlite")
        }
    };
    let base = Options {
        decision_log: None,
        audit: AuditMode::Off,
        store: StoreKind::Sqlite,
        self_verify_s: Some(0),
        store_url: None,
        routes_without_person_id: false,
        consent_cache_entries: cache,
        rate_backend: scp_pep::limits::RateBackend::Local,
    };
    let with = srv_rt.block_on(Bench::start_with(Options {
        store: store_kind,
        store_url: Some(store_url),
        ..base.clone()
    }));
    let without = srv_rt.block_on(Bench::start_with(Options {
        routes_without_person_id: true,
        ..base
    }));
    let cache_entries = with.running.consents.config().cache_entries;
    println!(
        "\n== (3) end to end: {store_name} dataset ({} persons), consent cache {cache_entries} entries \
         (ideal hit rate under Zipf(s={}): {:.1} %) ==",
        wl.n(),
        wl.s,
        wl.head_mass(cache_entries) * 100.0
    );
    let mut rng = Rng(42);
    let paths: Arc<Vec<String>> = Arc::new(
        (0..n_paths)
            .map(|_| {
                format!(
                    "/v1/tenants/ke/health/persons/p-{}/record",
                    wl.person(&mut rng)
                )
            })
            .collect(),
    );
    let mut targets = Vec::new();
    for (label, b) in [("consent", &with), ("no-consent", &without)] {
        let template = build_request(&b.check_input());
        // Both must allow a person of the dataset; the first must check consent, the second not.
        let d = srv_rt.block_on(b.running.engine.decide(&scp_pep::grpc::facts_from_check(
            with_path(&template, &paths[0]),
        )));
        assert!(d.allowed(), "{label}: must be allowed: {:?}", d.denial());
        assert_eq!(
            d.consent_checks.len(),
            usize::from(label == "consent"),
            "{label}: consent checks {:?}",
            d.consent_checks
        );
        println!(
            "{label}: gRPC {}, {}",
            b.running.grpc_addr,
            srv_rt.block_on(b.describe())
        );
        targets.push((label, b.running.grpc_addr, Arc::new(template)));
    }

    let ok_lines = std::thread::Builder::new()
        .name("bench-client".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("client runtime");
            rt.block_on(async move {
                let mut ts = Vec::new();
                for (label, addr, template) in targets {
                    let mut clients = Vec::new();
                    for _ in 0..conns {
                        let ch = Endpoint::from_shared(format!("http://{addr}"))
                            .expect("endpoint")
                            .tcp_nodelay(true)
                            .connect()
                            .await
                            .expect("connect");
                        clients.push(AuthorizationClient::new(ch));
                    }
                    ts.push(Target {
                        label,
                        clients,
                        template,
                    });
                }
                let mut lines = Vec::new();
                let mut errors = 0;
                if !prewarm.is_zero() {
                    println!("pre-warm: {} s closed loop against `consent`", prewarm.as_secs());
                    let c = concs.first().copied().unwrap_or(32);
                    let p = closed_loop(&ts[0], &paths, c, Duration::ZERO, prewarm).await;
                    errors += p.errors;
                }
                for &c in &concs {
                    println!("\n-- C={c}, {rounds} rounds alternating --");
                    let mut rates = [Vec::new(), Vec::new()];
                    let mut cpu = [Vec::new(), Vec::new()];
                    let mut p99 = [Vec::new(), Vec::new()];
                    let mut hits = Vec::new();
                    let mut foreign = Vec::new();
                    for r in 0..rounds {
                        for j in 0..2 {
                            let i = (j + r) % 2;
                            let p = closed_loop(&ts[i], &paths, c, warmup, duration).await;
                            errors += p.errors;
                            rates[i].push(p.rate);
                            cpu[i].push(p.cpu_us_per_check);
                            p99[i].push(p.p99_us);
                            foreign.push(p.foreign_pct);
                            if let Some(h) = p.hit_rate {
                                hits.push(h);
                            }
                        }
                        println!(
                            "round {} C={c}: consent / no-consent = {:.1} %",
                            r + 1,
                            rates[0][r] / rates[1][r] * 100.0
                        );
                    }
                    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
                    let per_round: Vec<String> = (0..rounds)
                        .map(|r| format!("{:.1}", rates[0][r] / rates[1][r] * 100.0))
                        .collect();
                    let line = format!(
                        "RESULT e2e {store_name} C={c}: consent {:.0}/s (p99 {:.0} µs, CPU {:.1} µs/check, \
                         cache hit rate {:.1} %), no-consent {:.0}/s (p99 {:.0} µs, CPU {:.1} µs/check); \
                         ratio {:.1} % (rounds {} %); CPU capacity ratio {:.1} %; other load {:.0} % of a core (mean)",
                        mean(&rates[0]),
                        mean(&p99[0]),
                        mean(&cpu[0]),
                        mean(&hits) * 100.0,
                        mean(&rates[1]),
                        mean(&p99[1]),
                        mean(&cpu[1]),
                        mean(&rates[0]) / mean(&rates[1]) * 100.0,
                        per_round.join(" / "),
                        mean(&cpu[1]) / mean(&cpu[0]) * 100.0,
                        mean(&foreign),
                    );
                    println!("{line}");
                    lines.push(line);
                }
                if errors > 0 {
                    lines.push(format!("e2e: {errors} requests were not allowed"));
                }
                lines
            })
        })
        .expect("client thread")
        .join()
        .expect("client thread panicked");
    results.extend(ok_lines);
    println!("RSS at end {} kB", support::rss_kb());
    srv_rt.block_on(with.stop());
    srv_rt.block_on(without.stop());
    srv_rt.shutdown_timeout(Duration::from_secs(2));
}

// ---------------------------------------------------------------------------------------------
// 4. Memory

fn part_memory(sqlite_rows: u64, results: &mut Vec<String>) {
    let exe = std::env::current_exe().expect("current exe");
    for cap in env_nums("BENCH_MEM_CAPS", "10000,100000,1000000") {
        println!("\n== (4) memory, cache_entries = {cap} (child process) ==");
        let out = std::process::Command::new(&exe)
            .env("BENCH_CONSENT_PARTS", "memory-child")
            .env("BENCH_MEM_CAP", cap.to_string())
            .env("BENCH_CONSENT_SQLITE_ROWS", sqlite_rows.to_string())
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("memory child");
        let text = String::from_utf8_lossy(&out.stdout);
        print!("{text}");
        results.extend(
            text.lines()
                .filter(|l| l.starts_with("RESULT"))
                .map(str::to_owned),
        );
    }
}

fn memory_child(sqlite_rows: u64) {
    let cap = env_u64("BENCH_MEM_CAP", 100_000);
    let keys = env_u64("BENCH_MEM_KEYS", sqlite_rows).clamp(1, sqlite_rows);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let store = rt.block_on(sqlite_dataset(sqlite_rows));
    let consents = rt.block_on(async {
        Consents::new(
            store.clone(),
            ConsentConfig {
                cache_entries: cap,
                ..ConsentConfig::default()
            },
            Arc::new(SystemClock),
        )
    });
    // Warm every pooled connection and its SQLite page cache (≤ 2 MiB each) with direct store
    // reads of persons outside the measured range, so that RSS growth is the cache's.
    rt.block_on(async {
        let mut tasks = Vec::new();
        for t in 0..8u64 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..2_000u64 {
                    let k = sqlite_rows.saturating_sub(t * 2_000 + i).max(1);
                    let _ = store
                        .consent_head_summaries(TENANT, &format!("p-{k}"), VERTICAL)
                        .await;
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
    let fill = |from: u64, to: u64| {
        rt.block_on(async {
            let conc = 8u64;
            let mut tasks = Vec::new();
            for t in 0..conc {
                let c = consents.clone();
                tasks.push(tokio::spawn(async move {
                    let mut k = from + t;
                    while k <= to {
                        c.heads(TENANT, &format!("p-{k}"), VERTICAL)
                            .await
                            .expect("fill");
                        k += conc;
                    }
                }));
            }
            for t in tasks {
                t.await.expect("fill task");
            }
        })
    };
    let rss0 = support::rss_kb();
    let t = Instant::now();
    let first = cap.min(keys);
    fill(1, first);
    let (rss1, n1) = (support::rss_kb(), consents.cached_entries());
    fill(first + 1, keys);
    let (rss2, n2) = (support::rss_kb(), consents.cached_entries());
    let per_entry = (rss1.saturating_sub(rss0)) as f64 * 1024.0 / n1.max(1) as f64;
    println!(
        "RESULT memory cache_entries={cap}: RSS {rss0} kB before; {rss1} kB (+{:.1} MB) after {first} keys \
         ({n1} cached, {per_entry:.0} B/entry); {rss2} kB (+{:.1} MB) after {keys} keys ({n2} cached); \
         fill {:.1} s",
        (rss1.saturating_sub(rss0)) as f64 / 1024.0,
        (rss2.saturating_sub(rss0)) as f64 / 1024.0,
        t.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------------
// 5. RSS of the default configuration

fn part_rss(results: &mut Vec<String>) {
    println!("\n== (5) RSS of the default configuration (child process) ==");
    let out = std::process::Command::new(std::env::current_exe().expect("own path"))
        .env("BENCH_CONSENT_PARTS", "rss-child")
        .output()
        .expect("rss child");
    let text = String::from_utf8_lossy(&out.stdout);
    print!("{text}");
    if !out.status.success() {
        print!("{}", String::from_utf8_lossy(&out.stderr));
        panic!("rss child failed");
    }
    results.extend(
        text.lines()
            .filter(|l| l.starts_with("RESULT"))
            .map(str::to_owned),
    );
}

/// One scp-pep in its default configuration (durable audit and consent on one SQLite store,
/// decision log on, default cache sizes) on a copy of the SQLite dataset, driven through gRPC
/// with `BENCH_RSS_PERSONS` (300,000) distinct persons, each once; prints the process RSS.
fn rss_child(sqlite_rows: u64) {
    let persons = env_u64("BENCH_RSS_PERSONS", 300_000).clamp(1, sqlite_rows);
    let conc = env_u64("BENCH_CONC", 32).clamp(1, 1024) as usize;
    let src = std::env::var("BENCH_CONSENT_SQLITE").unwrap_or_else(|_| {
        format!(
            "{}/target/bench-consent-{sqlite_rows}.db",
            env!("CARGO_MANIFEST_DIR")
        )
    });
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = tmp.path().join("rss.db");
    std::fs::copy(&src, &db).expect("copy the SQLite dataset");
    let srv_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("srv-worker")
        .enable_all()
        .build()
        .expect("server runtime");
    let b = srv_rt.block_on(Bench::start_with(Options {
        decision_log: Some("decisions.jsonl".into()),
        audit: AuditMode::Durable,
        store: StoreKind::Sqlite,
        self_verify_s: None,
        store_url: Some(format!("sqlite:{}", db.display())),
        routes_without_person_id: false,
        // Diagnostic: BENCH_RSS_CACHE overrides the consent cache capacity (0 = no cache).
        consent_cache_entries: std::env::var("BENCH_RSS_CACHE")
            .ok()
            .and_then(|v| v.parse().ok()),
        rate_backend: scp_pep::limits::RateBackend::Local,
    }));
    let template = Arc::new(build_request(&b.check_input()));
    let addr = b.running.grpc_addr;
    let rss_idle = support::rss_kb();
    let t = Instant::now();
    let errors = std::thread::Builder::new()
        .name("bench-client".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("client runtime");
            rt.block_on(async move {
                let ch = Endpoint::from_shared(format!("http://{addr}"))
                    .expect("endpoint")
                    .tcp_nodelay(true)
                    .connect()
                    .await
                    .expect("connect");
                let next = Arc::new(AtomicU64::new(1));
                let errors = Arc::new(AtomicU64::new(0));
                let mut tasks = Vec::new();
                for _ in 0..conc {
                    let mut client = AuthorizationClient::new(ch.clone());
                    let (next, errors, template) = (next.clone(), errors.clone(), template.clone());
                    tasks.push(tokio::spawn(async move {
                        loop {
                            let k = next.fetch_add(1, Ordering::Relaxed);
                            if k > persons {
                                break;
                            }
                            let path = format!("/v1/tenants/ke/health/persons/p-{k}/record");
                            let res = tokio::time::timeout(
                                REQUEST_TIMEOUT,
                                client.check(with_path(&template, &path)),
                            )
                            .await;
                            if !matches!(&res, Ok(Ok(r)) if allowed(r.get_ref())) {
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }));
                }
                for t in tasks {
                    t.await.expect("client task");
                }
                errors.load(Ordering::Relaxed)
            })
        })
        .expect("client thread")
        .join()
        .expect("client thread panicked");
    let secs = t.elapsed().as_secs_f64();
    let cached = b.running.consents.cached_entries();
    let rss_after = support::rss_kb();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let split: Vec<&str> = status
        .lines()
        .filter(|l| {
            l.starts_with("RssAnon") || l.starts_with("RssFile") || l.starts_with("RssShmem")
        })
        .collect();
    println!(
        "RSS split: {}",
        split
            .join("; ")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "RESULT rss default configuration (durable SQLite audit, decision log on, consent cache {} entries): \
         RSS {rss_idle} kB after start; {rss_after} kB ({:.1} MB) after {persons} distinct persons \
         ({cached} cached, {:.0} checks/s, {errors} not allowed)",
        b.running.consents.config().cache_entries,
        rss_after as f64 / 1024.0,
        persons as f64 / secs,
    );
    srv_rt.block_on(b.stop());
    srv_rt.shutdown_timeout(Duration::from_secs(2));
}

// ---------------------------------------------------------------------------------------------

fn main() {
    let parts = env_list("BENCH_CONSENT_PARTS", "hit,miss,e2e,memory");
    let pg_rows = env_u64("BENCH_CONSENT_ROWS", 10_000_000).max(1);
    let sqlite_rows = env_u64("BENCH_CONSENT_SQLITE_ROWS", 1_000_000).max(1);
    let s: f64 = std::env::var("BENCH_ZIPF_S")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    if parts.iter().any(|p| p == "memory-child") {
        memory_child(sqlite_rows);
        return;
    }
    if parts.iter().any(|p| p == "rss-child") {
        rss_child(sqlite_rows);
        return;
    }
    let stores = env_list("BENCH_CONSENT_STORES", "postgres,sqlite");
    let e2e_store = std::env::var("BENCH_E2E_STORE").unwrap_or_else(|_| "postgres".into());
    let has = |p: &str| parts.iter().any(|x| x == p);
    println!(
        "consent bench: parts={parts:?} postgres rows={pg_rows} sqlite rows={sqlite_rows} zipf s={s} nproc={}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let need_pg = has("datasets")
        || (has("miss") && stores.iter().any(|s| s == "postgres"))
        || (has("e2e") && e2e_store == "postgres");
    let pg = need_pg.then(|| rt.block_on(pg_dataset(pg_rows)));
    let sqlite = rt.block_on(sqlite_dataset(sqlite_rows));
    let wl_sqlite = Arc::new(Workload::new(sqlite_rows, s));
    let wl_pg = pg.as_ref().map(|_| Arc::new(Workload::new(pg_rows, s)));
    let mut results = Vec::new();

    if has("hit") {
        part_hit(&sqlite, &wl_sqlite, &mut results);
    }
    if has("miss") {
        for st in &stores {
            match (st.as_str(), &pg, &wl_pg) {
                ("postgres", Some((store, _)), Some(wl)) => {
                    part_miss(&rt, "postgres", store, wl, &mut results)
                }
                ("sqlite", _, _) => part_miss(&rt, "sqlite", &sqlite, &wl_sqlite, &mut results),
                (o, _, _) => panic!("BENCH_CONSENT_STORES: unknown store {o}"),
            }
        }
    }
    if let Some((store, _)) = &pg {
        rt.block_on(store.close());
    }
    rt.block_on(sqlite.close());
    if has("e2e") {
        match (e2e_store.as_str(), &pg, &wl_pg) {
            ("postgres", Some((_, url)), Some(wl)) => {
                part_e2e(Some(url.clone()), sqlite_rows, wl.clone(), &mut results)
            }
            ("sqlite", _, _) => part_e2e(None, sqlite_rows, wl_sqlite.clone(), &mut results),
            (o, _, _) => panic!("BENCH_E2E_STORE: unknown store {o}"),
        }
    }
    if has("memory") {
        part_memory(sqlite_rows, &mut results);
    }
    if has("rss") {
        part_rss(&mut results);
    }
    println!("\n== summary ==");
    for l in &results {
        println!("{l}");
    }
}
