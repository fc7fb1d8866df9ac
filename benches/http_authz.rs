//! HTTP authorization mode against gRPC ext_authz (issue 14): one scp-pep serving both, the same
//! allowed request (`GET /v1/tenants/ke/health/persons/p-1/record`, bearer token, 4 headers),
//! closed loop with `BENCH_CONC` (32) requests in flight, alternating gRPC and HTTP rounds of
//! `BENCH_DURATION_S` (5 s) for `BENCH_ROUNDS` (3) rounds each, after a warm-up. Prints per
//! mode: checks/s, p50 and p99 latency (µs), and HTTP's ratio to gRPC. Every answer must be an
//! allow (gRPC OK / HTTP 200); anything else is counted as an error.
//!
//! Clients: tonic over `BENCH_CONNS` (4) HTTP/2 connections; reqwest with an HTTP/1.1 keep-alive
//! pool (one connection per request in flight), as nginx or Envoy would hold to scp-pep. Both
//! run in this process, on the same 2 cores as the server.
//!
//! Run: `cargo bench --bench http_authz`.

mod support;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use scp_pep::check::build_request;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Grpc,
    Http,
}

struct Round {
    checks: u64,
    errors: u64,
    latencies_us: Vec<u64>,
    elapsed: Duration,
}

async fn round(
    kind: Kind,
    grpc: &[AuthorizationClient<tonic::transport::Channel>],
    http: &reqwest::Client,
    url: &str,
    bench: &support::Bench,
    conc: usize,
    dur: Duration,
) -> Round {
    let checks = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + dur;
    let mut tasks = Vec::new();
    for i in 0..conc {
        let checks = checks.clone();
        let errors = errors.clone();
        let mut client = grpc[i % grpc.len()].clone();
        let http = http.clone();
        let url = url.to_owned();
        let input = bench.check_input();
        let token = bench.token.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                let ok = match kind {
                    Kind::Grpc => client
                        .check(build_request(&input))
                        .await
                        .is_ok_and(|r| r.into_inner().status.is_some_and(|s| s.code == 0)),
                    Kind::Http => http
                        .get(&url)
                        .bearer_auth(&token)
                        .header("user-agent", "scp-pep-bench/1")
                        .header("accept", "application/json")
                        .header("x-request-id", "bench-0001")
                        .header("x-authz-client-ip", "10.20.1.2")
                        .send()
                        .await
                        .is_ok_and(|r| r.status() == 200),
                };
                lat.push(t.elapsed().as_micros() as u64);
                if ok {
                    checks.fetch_add(1, Ordering::Relaxed);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            lat
        }));
    }
    let mut latencies_us = Vec::new();
    for t in tasks {
        latencies_us.extend(t.await.unwrap());
    }
    latencies_us.sort_unstable();
    Round {
        checks: checks.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        latencies_us,
        elapsed: start.elapsed(),
    }
}

fn pct(v: &[u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let bench = support::Bench::start().await;
        let conc = env("BENCH_CONC", 32) as usize;
        let dur = Duration::from_secs(env("BENCH_DURATION_S", 5));
        let rounds = env("BENCH_ROUNDS", 3);
        let conns = env("BENCH_CONNS", 4) as usize;
        let mut grpc = Vec::new();
        for _ in 0..conns {
            grpc.push(
                AuthorizationClient::connect(format!("http://{}", bench.running.grpc_addr))
                    .await
                    .unwrap(),
            );
        }
        let http = reqwest::Client::builder()
            .http1_only()
            .pool_max_idle_per_host(conc)
            .build()
            .unwrap();
        let url = format!(
            "http://{}{}",
            bench.running.http_authz_addr.expect("http_authz listener"),
            support::PATH
        );
        println!(
            "http_authz bench: conc={conc} grpc_conns={conns} round={dur:?} rounds={rounds}; {}",
            bench.describe().await
        );
        for kind in [Kind::Grpc, Kind::Http] {
            round(
                kind,
                &grpc,
                &http,
                &url,
                &bench,
                conc,
                Duration::from_secs(2),
            )
            .await;
        }
        let mut totals = [
            (0u64, 0u64, Vec::new(), Duration::ZERO),
            (0, 0, Vec::new(), Duration::ZERO),
        ];
        for r in 0..rounds {
            let order = if r % 2 == 0 {
                [Kind::Grpc, Kind::Http]
            } else {
                [Kind::Http, Kind::Grpc]
            };
            for kind in order {
                let res = round(kind, &grpc, &http, &url, &bench, conc, dur).await;
                let name = if kind == Kind::Grpc { "grpc" } else { "http" };
                println!(
                    "round {r} {name:4}: {:>8.0} checks/s  p50 {:>5} µs  p99 {:>6} µs  errors {}",
                    res.checks as f64 / res.elapsed.as_secs_f64(),
                    pct(&res.latencies_us, 0.50),
                    pct(&res.latencies_us, 0.99),
                    res.errors
                );
                let t = &mut totals[if kind == Kind::Grpc { 0 } else { 1 }];
                t.0 += res.checks;
                t.1 += res.errors;
                t.2.extend(res.latencies_us);
                t.3 += res.elapsed;
            }
        }
        let rate = |t: &(u64, u64, Vec<u64>, Duration)| t.0 as f64 / t.3.as_secs_f64();
        for (name, t) in ["grpc", "http"].iter().zip(totals.iter_mut()) {
            t.2.sort_unstable();
            println!(
                "total {name}: {:>8.0} checks/s  p50 {} µs  p99 {} µs  errors {}",
                rate(t),
                pct(&t.2, 0.50),
                pct(&t.2, 0.99),
                t.1
            );
        }
        println!(
            "http / grpc throughput: {:.2}",
            rate(&totals[1]) / rate(&totals[0])
        );
        bench.stop().await;
    });
}
