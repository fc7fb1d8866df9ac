//! In-process decision latency (target (a): p99 ≤ 20 µs with a cached token).
//!
//! Criterion benchmarks (means):
//! - `decide/cached_token`: `Engine::decide` for an allowed request whose token is in the
//!   verified-token cache (the steady state), decision log off.
//! - `decide/cached_token_json_log`: the same with the JSON-lines decision log to a file.
//! - `handler/cached_token`: what the gRPC handler does around it: `facts_from_check` →
//!   `decide` → `to_check_response` (no transport).
//! - `authorize/stages_2_8`: the pure function `pipeline::authorize`.
//! - `packs/check_partner`: stage 6's policy pack evaluation (one Cedar pack, permit + forbid).
//! - `authn/cold_verify_rs256`: an uncached token verification (JWS parse, key lookup, RS256
//!   signature, claims) through `Authenticator::authenticate` with its cache emptied each time.
//! - `authn/jsonwebtoken_decode_rs256`: the bare `jsonwebtoken::decode` for reference.
//!
//! Then a sampled loop (100,000 timed calls each, `std::time::Instant`) prints p50/p99/p99.9 of
//! `decide` and of the handler path, which is what target (a) is about.
//!
//! Run: `cargo bench --bench pipeline`. `BENCH_SAMPLED=decide,log,handler,cold,packs,rss` selects the
//! sampled loops (`rss`, off by default, measures memory growth over 2,000,000 decisions).
//! `BENCH_AUDIT` / `BENCH_STORE` (see `support`) choose the audit log (default off) and store.

mod support;

/// The same allocator as the `scp-pep` binary (src/main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion};
use jsonwebtoken::{DecodingKey, Validation};
use scp_pep::authn::{AuthSettings, Authenticator, DEFAULT_ALGORITHMS};
use scp_pep::check::build_request;
use scp_pep::decision::Decision;
use scp_pep::grpc::{facts_from_check, to_check_response};
use scp_pep::pipeline::{PipelineSettings, authorize, minimize};
use support::{Bench, pct};

const SAMPLED_ITERS: usize = 100_000;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let bench = rt.block_on(Bench::start());
    let logged = rt.block_on(Bench::start_with(support::Options {
        decision_log: Some("decisions.jsonl".into()),
        ..support::Options::from_env()
    }));
    let engine = bench.running.engine.clone();
    let engine_logged = logged.running.engine.clone();
    let facts = bench.facts();
    let facts_logged = logged.facts();

    // Setup checks: a benchmark of denials would be meaningless.
    for (e, f) in [(&engine, &facts), (&engine_logged, &facts_logged)] {
        let d = rt.block_on(e.decide(f));
        assert!(
            d.allowed(),
            "bench request must be allowed: {:?}",
            d.denial()
        );
    }
    let check_req = build_request(&bench.check_input());
    {
        let f = facts_from_check(check_req.clone());
        let d = rt.block_on(engine.decide(&f));
        assert!(
            d.allowed(),
            "gRPC-shaped request must be allowed: {:?}",
            d.denial()
        );
    }

    let snap_guard = engine.snapshot().load_full();
    let snap = snap_guard
        .as_ref()
        .as_ref()
        .expect("policy snapshot")
        .clone();
    let verified = rt
        .block_on(engine.authenticator().authenticate(&snap, &bench.token))
        .expect("token verifies");
    let settings = PipelineSettings::default();
    {
        let mut d = Decision::new("GET", support::PATH, chrono::Utc::now());
        let a = authorize(&snap, &facts, &verified, &settings, &mut d).expect("stages 2-6 allow");
        minimize(a.integration, a.route, None, &mut d);
    }

    // A second authenticator sharing the (prefetched) JWKS cache but not the token cache.
    let cold = Authenticator::new(
        engine.authenticator().jwks().clone(),
        AuthSettings {
            leeway_s: 30,
            algorithms: DEFAULT_ALGORITHMS.to_vec(),
            token_cache_entries: 1_000,
        },
    );
    rt.block_on(cold.authenticate(&snap, &bench.token))
        .expect("cold verification succeeds");

    let mut c = Criterion::default()
        .sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();

    c.bench_function("decide/cached_token", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(engine.decide(&facts).await) })
    });
    c.bench_function("decide/cached_token_json_log", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(engine_logged.decide(&facts_logged).await) })
    });
    let eng = &engine;
    c.bench_function("handler/cached_token", |b| {
        b.to_async(&rt).iter_batched(
            || check_req.clone(),
            |req| async move {
                let f = facts_from_check(req);
                let d = eng.decide(&f).await;
                black_box(to_check_response(&d))
            },
            BatchSize::SmallInput,
        )
    });
    let template = Decision::new("GET", support::PATH, chrono::Utc::now());
    // Stage 6 policy pack (Cedar): one active pack of the route's vertical, a permit with
    // @mask and a forbid that does not match, evaluated as in the pipeline.
    let (pack_integ, pack_route, pack_scopes) = {
        let mut d = template.clone();
        let a = authorize(&snap, &facts, &verified, &settings, &mut d).expect("stages 2-6 allow");
        (
            a.integration.integration.clone(),
            a.route.clone(),
            d.scopes.clone(),
        )
    };
    let packs = scp_pep::policy::cedar::CompiledPacks::compile(&[scp_pep::policy::PolicyPack {
        id: "bench-pack".into(),
        tenant: pack_integ.tenant.clone(),
        vertical: pack_route.verticals[0].clone(),
        status: scp_pep::policy::PackStatus::Active,
        policies: r#"@id("readers") @mask("dob") permit(principal is Scp::Integration, action == Scp::Action::"read", resource) when { principal.scopes.containsAny(context.scopes) };
            @id("night") forbid(principal, action, resource) when { context.hour > 30 };"#
            .into(),
        active_from: None,
        active_until: None,
        mode: Default::default(),
    }]);
    let now_ms = chrono::Utc::now().timestamp_millis();
    assert!(
        packs
            .check_partner(
                &pack_integ,
                &pack_route,
                &pack_scopes,
                1,
                "GET",
                now_ms,
                &mut Vec::new()
            )
            .is_ok()
    );
    c.bench_function("packs/check_partner", |b| {
        b.iter(|| {
            black_box(packs.check_partner(
                &pack_integ,
                &pack_route,
                &pack_scopes,
                1,
                "GET",
                now_ms,
                &mut Vec::new(),
            ))
        })
    });
    c.bench_function("authorize/stages_2_8", |b| {
        b.iter_batched_ref(
            || template.clone(),
            |d| {
                let r = authorize(&snap, &facts, &verified, &settings, d)
                    .map(|a| minimize(a.integration, a.route, None, d));
                black_box(r.is_ok())
            },
            BatchSize::SmallInput,
        )
    });
    c.bench_function("authn/cold_verify_rs256", |b| {
        b.to_async(&rt).iter(|| async {
            cold.invalidate_all();
            black_box(cold.authenticate(&snap, &bench.token).await.is_ok())
        })
    });
    let dk = DecodingKey::from_jwk(&bench.key.public).expect("decoding key");
    let mut validation = Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_issuer(&[format!("{}/realms/ke", bench.idp_base)]);
    validation.set_audience(&["scp-pep"]);
    jsonwebtoken::decode::<serde_json::Value>(&bench.token, &dk, &validation).expect("decodes");
    c.bench_function("authn/jsonwebtoken_decode_rs256", |b| {
        b.iter(|| {
            black_box(jsonwebtoken::decode::<serde_json::Value>(
                black_box(&bench.token),
                &dk,
                &validation,
            ))
        })
    });

    // Sampled loops for percentiles (criterion reports means and confidence intervals only).
    // `BENCH_SAMPLED=decide,log,handler,cold,packs,rss` selects loops (for profiling); default: all
    // but `rss`.
    let only =
        std::env::var("BENCH_SAMPLED").unwrap_or_else(|_| "decide,log,handler,cold,packs".into());
    let run = |name: &str| only.split(',').any(|s| s.trim() == name);
    if run("decide") {
        let decide_ns = rt.block_on(async {
            let mut v = Vec::with_capacity(SAMPLED_ITERS);
            let mut denied = 0usize;
            for _ in 0..SAMPLED_ITERS {
                let t = Instant::now();
                let d = engine.decide(&facts).await;
                v.push(t.elapsed().as_nanos() as u64);
                denied += usize::from(!d.allowed());
            }
            assert_eq!(denied, 0, "denials in the sampled loop");
            v
        });
        report("decide (cached token, log off)", decide_ns);
    }

    // Stages 2-8 of an allowed request on a vertical with an active policy pack: `authorize`,
    // `minimize` and the pack evaluation of stage 6, as the pipeline runs them (issue 11 target:
    // p99 <= 8 us).
    if run("packs") {
        let mut v = Vec::with_capacity(SAMPLED_ITERS);
        for _ in 0..SAMPLED_ITERS {
            let mut d = template.clone();
            let t = Instant::now();
            let ok = authorize(&snap, &facts, &verified, &settings, &mut d)
                .map(|a| minimize(a.integration, a.route, None, &mut d))
                .is_ok()
                && packs
                    .check_partner(
                        &pack_integ,
                        &pack_route,
                        &d.scopes,
                        1,
                        "GET",
                        now_ms,
                        &mut Vec::new(),
                    )
                    .is_ok();
            v.push(t.elapsed().as_nanos() as u64);
            assert!(ok, "stages 2-8 allow");
        }
        report("stages 2-8 with an active policy pack", v);
    }

    if run("log") {
        let logged_ns = rt.block_on(async {
            let mut v = Vec::with_capacity(SAMPLED_ITERS);
            for _ in 0..SAMPLED_ITERS {
                let t = Instant::now();
                let d = engine_logged.decide(&facts_logged).await;
                v.push(t.elapsed().as_nanos() as u64);
                assert!(d.allowed());
            }
            v
        });
        report("decide (cached token, JSON log to file)", logged_ns);
    }

    if run("handler") {
        let handler_ns = rt.block_on(async {
            let mut v = Vec::with_capacity(SAMPLED_ITERS);
            for _ in 0..SAMPLED_ITERS {
                let req = check_req.clone();
                let t = Instant::now();
                let f = facts_from_check(req);
                let d = engine.decide(&f).await;
                let resp = to_check_response(&d);
                v.push(t.elapsed().as_nanos() as u64);
                assert!(d.allowed());
                black_box(resp);
            }
            v
        });
        report(
            "handler: facts_from_check+decide+to_check_response",
            handler_ns,
        );
    }

    // Not in the default set: memory growth over 2,000,000 decisions (the Prometheus histogram
    // buckets are only drained by a scrape or an upkeep task).
    if run("rss") {
        let before = support::rss_kb();
        rt.block_on(async {
            for _ in 0..2_000_000 {
                black_box(engine.decide(&facts).await);
            }
        });
        let after = support::rss_kb();
        println!(
            "RSS over 2,000,000 decisions: {before} kB -> {after} kB (+{} kB, {:.1} bytes/decision)",
            after.saturating_sub(before),
            after.saturating_sub(before) as f64 * 1024.0 / 2e6
        );
        if let Some(h) = scp_pep::server::prometheus() {
            let t = Instant::now();
            let text = h.render();
            println!(
                "first /metrics render after that: {:.1} ms, {} bytes; RSS {} kB",
                t.elapsed().as_secs_f64() * 1e3,
                text.len(),
                support::rss_kb()
            );
        }
    }

    if run("cold") {
        let cold_ns = rt.block_on(async {
            let n = 2_000;
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                let t = Instant::now();
                cold.invalidate_all();
                let ok = cold.authenticate(&snap, &bench.token).await.is_ok();
                v.push(t.elapsed().as_nanos() as u64);
                assert!(ok);
            }
            v
        });
        report("cold RS256 verification (2,000 samples)", cold_ns);
    }

    c.final_summary();
    rt.block_on(async {
        bench.stop().await;
        logged.stop().await;
    });
}

fn report(name: &str, mut ns: Vec<u64>) {
    ns.sort_unstable();
    let us = |x: u64| x as f64 / 1000.0;
    let mean = ns.iter().sum::<u64>() as f64 / ns.len() as f64 / 1000.0;
    println!(
        "SAMPLED {name}: n={} mean={mean:.2}µs p50={:.2}µs p90={:.2}µs p99={:.2}µs p99.9={:.2}µs max={:.2}µs",
        ns.len(),
        us(pct(&ns, 0.50)),
        us(pct(&ns, 0.90)),
        us(pct(&ns, 0.99)),
        us(pct(&ns, 0.999)),
        us(*ns.last().unwrap_or(&0)),
    );
}
