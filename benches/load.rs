//! gRPC load benchmark (targets (b) and (c)). A plain `main`, not Criterion.
//!
//! One process, loopback only:
//! - a server runtime (multi-thread, 2 workers, threads `srv-*`) runs scp-pep (decision log off,
//!   rate limits raised), a no-op ext_authz server that answers every `Check` with OK (the
//!   baseline of target (b)), and a "shaped" no-op that answers with a canned copy of scp-pep's
//!   real allow response (same size and headers), to tell response size from decision cost;
//! - a client runtime (current-thread by default, thread `bench-client`) drives the load over a
//!   few HTTP/2 connections; a pacer thread (`bench-pacer`) times the open-loop sends.
//!
//! (i) Closed loop: C requests always in flight, for no-op, shaped no-op, scp-pep, same duration;
//!     prints checks/s, latency percentiles, CPU time of server and client threads, and the ratio.
//! (ii) Open loop: a fixed rate (5,000 checks/s) for a fixed duration against scp-pep; latency is
//!     measured from the request's scheduled send time (no coordinated omission) and from the
//!     actual dispatch; prints p50/p99/p99.9, the achieved rate and the error count.
//!
//! Every answer must be an allow (gRPC status OK in the `CheckResponse`); anything else counts as
//! an error. The run is bounded: every phase has a fixed length and stragglers are abandoned.
//!
//! Environment (all optional): `BENCH_DURATION_S` (10), `BENCH_WARMUP_S` (2), `BENCH_CONC`
//! ("32,64"), `BENCH_CONNS` (4), `BENCH_RATE` (5000), `BENCH_CLIENT_THREADS` (1),
//! `BENCH_SERVER_THREADS` (2), `BENCH_PROFILE` (`pep`, `noop` or `shaped`: only that
//! server's closed loops, for `perf record`), `BENCH_DECISION_LOG` (`1`: scp-pep writes its
//! JSON-lines decision log to a temp file, as production does by default; off otherwise).
//! `BENCH_CONC=` (empty) skips the closed loops.
//!
//! Run: `cargo bench --bench load`.

mod support;

/// The same allocator as the `scp-pep` binary (src/main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use envoy_types::ext_authz::v3::CheckResponseExt;
use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse, HttpResponse,
};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use scp_pep::check::build_request;
use support::{Bench, pct};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_IN_FLIGHT_OPEN_LOOP: u64 = 20_000;

/// A no-op ext_authz server. `None`: answers `CheckResponse::with_status(OK)` (the baseline of
/// target (b)); `Some(r)`: answers a clone of `r` (a real scp-pep allow response, to separate the
/// cost of the response's size from the cost of deciding).
struct Noop(Option<Arc<CheckResponse>>);

#[tonic::async_trait]
impl Authorization for Noop {
    async fn check(
        &self,
        _request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        Ok(Response::new(match &self.0 {
            None => CheckResponse::with_status(Status::ok("")),
            Some(r) => (**r).clone(),
        }))
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let duration = Duration::from_secs(env_u64("BENCH_DURATION_S", 10).clamp(1, 60));
    let warmup = Duration::from_secs(env_u64("BENCH_WARMUP_S", 2).clamp(0, 30));
    let conns = env_u64("BENCH_CONNS", 4).clamp(1, 64) as usize;
    let rate = env_u64("BENCH_RATE", 5000).clamp(1, 100_000);
    let client_threads = env_u64("BENCH_CLIENT_THREADS", 1).clamp(1, 8) as usize;
    let server_threads = env_u64("BENCH_SERVER_THREADS", 2).clamp(1, 8) as usize;
    let decision_log = std::env::var("BENCH_DECISION_LOG").is_ok_and(|v| v == "1");
    let concs: Vec<usize> = std::env::var("BENCH_CONC")
        .unwrap_or_else(|_| "32,64".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .filter(|&c| (1..=4096).contains(&c))
        .collect();

    println!(
        "load bench: duration={}s warmup={}s conns={conns} concurrency={concs:?} rate={rate}/s \
         client_threads={client_threads} server_threads={server_threads} decision_log={decision_log} nproc={}",
        duration.as_secs(),
        warmup.as_secs(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );

    // Servers.
    let srv_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(server_threads)
        .thread_name("srv-worker")
        .enable_all()
        .build()
        .expect("server runtime");
    let bench = srv_rt.block_on(Bench::start_with(decision_log.then_some("decisions.jsonl")));
    let pep_addr = bench.running.grpc_addr;
    let check_req = build_request(&bench.check_input());
    let allow_response = {
        let d = srv_rt.block_on(
            bench
                .running
                .engine
                .decide(&scp_pep::grpc::facts_from_check(check_req.clone())),
        );
        assert!(
            d.allowed(),
            "bench request must be allowed: {:?}",
            d.denial()
        );
        scp_pep::grpc::to_check_response(&d)
    };
    {
        use prost::Message;
        println!(
            "encoded sizes: CheckRequest {} B; scp-pep allow CheckResponse {} B; no-op CheckResponse {} B",
            check_req.encoded_len(),
            allow_response.encoded_len(),
            CheckResponse::with_status(Status::ok("")).encoded_len(),
        );
    }
    let (noop_addr, noop_stop) = srv_rt.block_on(start_noop(None));
    let (shaped_addr, shaped_stop) = srv_rt.block_on(start_noop(Some(allow_response)));
    println!(
        "scp-pep gRPC {pep_addr}, no-op {noop_addr}, no-op with scp-pep's response {shaped_addr}; RSS {} kB",
        support::rss_kb()
    );

    // Client on its own runtime and thread.
    let client = std::thread::Builder::new()
        .name("bench-client".into())
        .spawn(move || {
            let mut b = if client_threads == 1 {
                tokio::runtime::Builder::new_current_thread()
            } else {
                let mut b = tokio::runtime::Builder::new_multi_thread();
                b.worker_threads(client_threads).thread_name("bench-client");
                b
            };
            let rt = b.enable_all().build().expect("client runtime");
            rt.block_on(run_client(
                [noop_addr, shaped_addr, pep_addr],
                check_req,
                conns,
                &concs,
                warmup,
                duration,
                rate,
            ))
        })
        .expect("client thread");
    let ok = client.join().expect("client thread panicked");

    println!("RSS at end {} kB", support::rss_kb());
    let _ = noop_stop.send(());
    let _ = shaped_stop.send(());
    srv_rt.block_on(bench.running.shutdown());
    srv_rt.shutdown_timeout(Duration::from_secs(2));
    if !ok {
        eprintln!("load bench: errors occurred (see above)");
        std::process::exit(1);
    }
}

async fn start_noop(
    canned: Option<CheckResponse>,
) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(AuthorizationServer::new(Noop(canned.map(Arc::new))))
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = rx.await;
            })
            .await;
    });
    (addr, tx)
}

async fn connect(addr: SocketAddr, n: usize) -> Vec<AuthorizationClient<Channel>> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let ch = Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .tcp_nodelay(true)
            .connect()
            .await
            .expect("connect");
        v.push(AuthorizationClient::new(ch));
    }
    v
}

fn allowed(resp: &CheckResponse) -> bool {
    let status_ok = resp.status.as_ref().is_some_and(|s| s.code == 0);
    let not_denied = !matches!(
        resp.http_response,
        Some(HttpResponse::DeniedResponse(_) | HttpResponse::ErrorResponse(_))
    );
    status_ok && not_denied
}

#[allow(clippy::too_many_arguments)]
async fn run_client(
    [noop_addr, shaped_addr, pep_addr]: [SocketAddr; 3],
    req: CheckRequest,
    conns: usize,
    concs: &[usize],
    warmup: Duration,
    duration: Duration,
    rate: u64,
) -> bool {
    let mut all_ok = true;
    let req = Arc::new(req);
    let noop = connect(noop_addr, conns).await;
    let shaped = connect(shaped_addr, conns).await;
    let pep = connect(pep_addr, conns).await;

    println!("\n== (i) closed loop ==");
    let mut summary = Vec::new();
    // For `perf record`: one server under closed-loop load only, no ratio, no open loop.
    let profile_only = std::env::var("BENCH_PROFILE").ok();
    for &c in concs {
        match profile_only.as_deref() {
            Some("pep") => {
                all_ok &= closed_loop("scp-pep", &pep, &req, c, warmup, duration)
                    .await
                    .errors
                    == 0;
                continue;
            }
            Some("shaped") => {
                all_ok &= closed_loop("shaped", &shaped, &req, c, warmup, duration)
                    .await
                    .errors
                    == 0;
                continue;
            }
            Some("noop") => {
                all_ok &= closed_loop("noop", &noop, &req, c, warmup, duration)
                    .await
                    .errors
                    == 0;
                continue;
            }
            _ => {}
        }
        let n = closed_loop("noop", &noop, &req, c, warmup, duration).await;
        let sh = closed_loop("shaped", &shaped, &req, c, warmup, duration).await;
        let p = closed_loop("scp-pep", &pep, &req, c, warmup, duration).await;
        all_ok &= n.errors == 0 && sh.errors == 0 && p.errors == 0;
        println!(
            "RESULT closed-loop C={c}: noop {:.0}/s, shaped no-op {:.0}/s, scp-pep {:.0}/s; \
             throughput ratio scp-pep/noop = {:.1}% (scp-pep/shaped {:.1}%); \
             server CPU/check noop {:.1}µs, shaped {:.1}µs, scp-pep {:.1}µs \
             (CPU capacity ratio noop/scp-pep {:.1}%)",
            n.rate,
            sh.rate,
            p.rate,
            p.rate / n.rate * 100.0,
            p.rate / sh.rate * 100.0,
            n.server_cpu_us_per_check,
            sh.server_cpu_us_per_check,
            p.server_cpu_us_per_check,
            n.server_cpu_us_per_check / p.server_cpu_us_per_check * 100.0,
        );
        summary.push((c, n, sh, p));
    }

    if profile_only.is_some() {
        return all_ok;
    }
    println!("\n== (ii) open loop, scp-pep ==");
    let o = open_loop(&pep, &req, rate, duration).await;
    all_ok &= o;

    println!("\n== summary ==");
    for (c, n, sh, p) in &summary {
        println!(
            "C={c}: noop {:.0}/s (p99 {:.0}µs), shaped {:.0}/s (p99 {:.0}µs), scp-pep {:.0}/s (p99 {:.0}µs), \
             ratio scp-pep/noop {:.1}%",
            n.rate,
            n.p99_us,
            sh.rate,
            sh.p99_us,
            p.rate,
            p.p99_us,
            p.rate / n.rate * 100.0
        );
    }
    all_ok
}

struct ClosedResult {
    rate: f64,
    errors: u64,
    p99_us: f64,
    server_cpu_us_per_check: f64,
}

async fn closed_loop(
    name: &str,
    clients: &[AuthorizationClient<Channel>],
    req: &Arc<CheckRequest>,
    conc: usize,
    warmup: Duration,
    duration: Duration,
) -> ClosedResult {
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(conc);
    for i in 0..conc {
        let mut client = clients[i % clients.len()].clone();
        let req = req.clone();
        let (stop, measuring, done, errors) = (
            stop.clone(),
            measuring.clone(),
            done.clone(),
            errors.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(1 << 16);
            while !stop.load(Ordering::Relaxed) {
                let r = (*req).clone();
                let t = Instant::now();
                let res = tokio::time::timeout(REQUEST_TIMEOUT, client.check(r)).await;
                let el = t.elapsed();
                let ok = matches!(&res, Ok(Ok(resp)) if allowed(resp.get_ref()));
                if measuring.load(Ordering::Relaxed) {
                    done.fetch_add(1, Ordering::Relaxed);
                    if ok {
                        lat.push(el.as_nanos() as u64);
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                } else if !ok {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            lat
        }));
    }
    tokio::time::sleep(warmup).await;
    let cpu0 = thread_cpu();
    let t0 = Instant::now();
    measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(duration).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = t0.elapsed();
    let cpu1 = thread_cpu();
    let n = done.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    for t in tasks {
        if let Ok(Ok(mut v)) = tokio::time::timeout(REQUEST_TIMEOUT * 2, t).await {
            lat.append(&mut v);
        }
    }
    lat.sort_unstable();
    let errors = errors.load(Ordering::Relaxed);
    let rate = n as f64 / elapsed.as_secs_f64();
    let cpu = cpu_delta(&cpu0, &cpu1);
    let srv = cpu.get("srv").copied().unwrap_or(0.0);
    let cli = cpu.get("client").copied().unwrap_or(0.0);
    let other = cpu.get("other").copied().unwrap_or(0.0);
    let secs = elapsed.as_secs_f64();
    let us = |x: u64| x as f64 / 1000.0;
    println!(
        "{name:>8} C={conc:<3} checks={n} in {secs:.2}s → {rate:.0} checks/s, errors={errors}; \
         latency p50={:.0}µs p99={:.0}µs p99.9={:.0}µs; \
         CPU: server {:.0}% client {:.0}% other {:.0}% of one core; RSS {} kB",
        us(pct(&lat, 0.50)),
        us(pct(&lat, 0.99)),
        us(pct(&lat, 0.999)),
        srv / secs * 100.0,
        cli / secs * 100.0,
        other / secs * 100.0,
        support::rss_kb(),
    );
    ClosedResult {
        rate,
        errors,
        p99_us: us(pct(&lat, 0.99)),
        server_cpu_us_per_check: srv * 1e6 / n.max(1) as f64,
    }
}

/// Sends `rate` checks per second for `duration`, paced by a dedicated thread; returns false on errors.
async fn open_loop(
    clients: &[AuthorizationClient<Channel>],
    req: &Arc<CheckRequest>,
    rate: u64,
    duration: Duration,
) -> bool {
    // Warm the connections.
    for c in clients {
        let mut c = c.clone();
        let r = c.check((**req).clone()).await.expect("warm-up check");
        assert!(allowed(r.get_ref()));
    }
    let total = rate * duration.as_secs();
    let interval = Duration::from_nanos(1_000_000_000 / rate);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u64, Instant)>();
    let start = Instant::now() + Duration::from_millis(50);
    let pacer = std::thread::Builder::new()
        .name("bench-pacer".into())
        .spawn(move || {
            for i in 0..total {
                let due = start + interval * i as u32;
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                if tx.send((i, due)).is_err() {
                    break;
                }
            }
        })
        .expect("pacer thread");

    let in_flight = Arc::new(AtomicU64::new(0));
    let mut set = tokio::task::JoinSet::new();
    let mut shed = 0u64;
    let mut results: Vec<OpenResult> = Vec::with_capacity(total as usize);
    let cpu0 = thread_cpu();
    while let Some((i, due)) = rx.recv().await {
        if in_flight.load(Ordering::Relaxed) >= MAX_IN_FLIGHT_OPEN_LOOP {
            shed += 1;
            continue;
        }
        let mut client = clients[i as usize % clients.len()].clone();
        let r = (**req).clone();
        let in_flight = in_flight.clone();
        in_flight.fetch_add(1, Ordering::Relaxed);
        set.spawn(async move {
            let sent = Instant::now();
            let res = tokio::time::timeout(REQUEST_TIMEOUT, client.check(r)).await;
            let end = Instant::now();
            in_flight.fetch_sub(1, Ordering::Relaxed);
            let ok = matches!(&res, Ok(Ok(resp)) if allowed(resp.get_ref()));
            (
                ok,
                (end - due).as_nanos() as u64,
                (end - sent).as_nanos() as u64,
                end,
            )
        });
        // Reap finished tasks as we go so the set stays small.
        while let Some(r) = set.try_join_next() {
            results.push(unwrap_result(r));
        }
    }
    let _ = pacer.join();
    let send_end = Instant::now();
    // Stragglers: bounded wait.
    let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT * 2;
    while !set.is_empty() {
        match tokio::time::timeout_at(deadline, set.join_next()).await {
            Ok(Some(r)) => results.push(unwrap_result(r)),
            Ok(None) => break,
            Err(_) => {
                set.abort_all();
                break;
            }
        }
    }
    let cpu1 = thread_cpu();
    let abandoned = set.len() as u64;
    set.detach_all();

    let mut from_due = Vec::with_capacity(results.len());
    let mut from_send = Vec::with_capacity(results.len());
    let mut errors = shed + abandoned;
    let mut last_end = start;
    for (ok, d, s, end) in results {
        if ok {
            from_due.push(d);
            from_send.push(s);
        } else {
            errors += 1;
        }
        last_end = last_end.max(end);
    }
    from_due.sort_unstable();
    from_send.sort_unstable();
    let completed = from_due.len() as u64;
    let span = last_end.saturating_duration_since(start).as_secs_f64();
    let send_span = send_end.saturating_duration_since(start).as_secs_f64();
    let cpu = cpu_delta(&cpu0, &cpu1);
    let us = |x: u64| x as f64 / 1000.0;
    println!(
        "open loop: target {rate}/s for {}s: scheduled={total} completed_ok={completed} errors={errors} \
         (shed {shed}, abandoned {abandoned}); achieved {:.0} ok checks/s (send window {:.2}s)",
        duration.as_secs(),
        completed as f64 / span.max(1e-9),
        send_span,
    );
    println!(
        "RESULT open-loop {rate}/s latency from scheduled send: p50={:.0}µs p90={:.0}µs p99={:.0}µs p99.9={:.0}µs max={:.0}µs",
        us(pct(&from_due, 0.50)),
        us(pct(&from_due, 0.90)),
        us(pct(&from_due, 0.99)),
        us(pct(&from_due, 0.999)),
        us(*from_due.last().unwrap_or(&0)),
    );
    println!(
        "open-loop latency from dispatch: p50={:.0}µs p90={:.0}µs p99={:.0}µs p99.9={:.0}µs max={:.0}µs",
        us(pct(&from_send, 0.50)),
        us(pct(&from_send, 0.90)),
        us(pct(&from_send, 0.99)),
        us(pct(&from_send, 0.999)),
        us(*from_send.last().unwrap_or(&0)),
    );
    let secs = span.max(1e-9);
    println!(
        "open-loop CPU: server {:.0}% client {:.0}% pacer+other {:.0}% of one core; RSS {} kB",
        cpu.get("srv").copied().unwrap_or(0.0) / secs * 100.0,
        cpu.get("client").copied().unwrap_or(0.0) / secs * 100.0,
        cpu.get("other").copied().unwrap_or(0.0) / secs * 100.0,
        support::rss_kb(),
    );
    errors == 0
}

type OpenResult = (bool, u64, u64, Instant);

fn unwrap_result(r: Result<OpenResult, tokio::task::JoinError>) -> OpenResult {
    r.unwrap_or((false, 0, 0, Instant::now()))
}

/// CPU seconds (user + system) per thread group, from `/proc/self/task/*/stat`.
fn thread_cpu() -> HashMap<&'static str, f64> {
    let mut m = HashMap::new();
    let tick = 100.0; // USER_HZ on Linux
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return m;
    };
    for e in dir.flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        // After `comm`: field 3 is state (index 0); utime is field 14 (index 11), stime 15 (12).
        let (Some(u), Some(s)) = (fields.get(11), fields.get(12)) else {
            continue;
        };
        let cpu = (u.parse::<f64>().unwrap_or(0.0) + s.parse::<f64>().unwrap_or(0.0)) / tick;
        let group = if comm.starts_with("srv-") {
            "srv"
        } else if comm.starts_with("bench-client") {
            "client"
        } else {
            "other"
        };
        *m.entry(group).or_insert(0.0) += cpu;
    }
    m
}

fn cpu_delta(
    a: &HashMap<&'static str, f64>,
    b: &HashMap<&'static str, f64>,
) -> HashMap<&'static str, f64> {
    b.iter()
        .map(|(k, v)| (*k, v - a.get(k).copied().unwrap_or(0.0)))
        .collect()
}
