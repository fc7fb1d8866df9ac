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
//! Audit log (issue 3): `BENCH_AUDIT` (`off` (default, so figures (b) and (c) stay comparable) |
//! `buffered` | `durable`) and `BENCH_STORE` (`sqlite` (default, temp file) | `postgres` (fresh
//! database on the local server, dropped at the end)). With the audit log on, every scp-pep phase
//! also prints the group-commit figures read from the metrics registry that `/metrics` renders
//! (records, transactions, records per commit, mean commit time) and an `AUDIT_UNAVAILABLE`
//! denial is counted as an error and reported separately.
//!
//! Cluster-wide rate limits (issue 14): `BENCH_RATE_BACKEND` (`local` (default) | `redis`: the
//! `[rate_limit]` backend, Redis at `BENCH_REDIS_URL` or the local server; the bench's limits are
//! raised, so every check runs the GCRA script and is allowed). A list, `BENCH_RATE_BACKEND=local,redis`,
//! is a comparison like `BENCH_COMPARE` (one instance per backend, same audit mode);
//! `BENCH_OPEN_ROUNDS` (1) repeats the open loops, alternating the instances, and prints each
//! instance's median p50/p99 and its difference to the first.
//!
//! `BENCH_SELF_VERIFY_S` sets `audit.verify_interval_s` (0: self-verifier off; see `support`).
//!
//! Comparison mode, `BENCH_COMPARE=off,buffered,durable` (any list of modes): one scp-pep per mode,
//! all in this process on the same kind of store (each its own database), and no no-op servers.
//! For each concurrency the closed loop alternates between the instances for `BENCH_ROUNDS` (3)
//! rounds, rotating the order every round, and prints each mode's throughput and its ratio to the
//! first mode, per round and overall; after each phase it waits for the audit writer to drain
//! its queue (and reports how long that took). Then, unless `BENCH_OPEN=0`, the open loop runs
//! against every instance in turn.
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
use envoy_types::ext_authz::v3::pb::{CheckRequest, CheckResponse, HttpResponse};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use scp_pep::audit::AuditMode;
use scp_pep::check::build_request;
use scp_pep::limits::RateBackend;
use support::{AuditCounters, Bench, Options, audit_name, pct, start_noop};
use tonic::Status;
use tonic::transport::{Channel, Endpoint};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_IN_FLIGHT_OPEN_LOOP: u64 = 20_000;

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
    let compare: Vec<AuditMode> = std::env::var("BENCH_COMPARE")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .map(|v| v.split(',').map(support::parse_audit).collect())
        .unwrap_or_default();
    // `BENCH_RATE_BACKEND=local,redis` (issue 14): one scp-pep per rate-limit backend, compared
    // like `BENCH_COMPARE` (same audit mode); a single value just sets the backend.
    let backends: Vec<RateBackend> = std::env::var("BENCH_RATE_BACKEND")
        .ok()
        .filter(|v| v.contains(','))
        .map(|v| {
            v.split(',')
                .map(|b| match b.trim() {
                    "local" => RateBackend::Local,
                    "redis" => RateBackend::Redis,
                    o => panic!("BENCH_RATE_BACKEND: `{o}` is not local or redis"),
                })
                .collect()
        })
        .unwrap_or_default();
    assert!(
        compare.is_empty() || backends.is_empty(),
        "BENCH_COMPARE and a BENCH_RATE_BACKEND list cannot be combined"
    );
    let rounds = env_u64("BENCH_ROUNDS", 3).clamp(1, 20) as usize;
    let open_rounds = env_u64("BENCH_OPEN_ROUNDS", 1).clamp(1, 20) as usize;
    let open = std::env::var("BENCH_OPEN").map_or(true, |v| v != "0");
    let mut base_opts = Options::from_env();
    if decision_log {
        base_opts.decision_log = Some("decisions.jsonl".into());
    }

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
    let variants: Vec<Options> = if !backends.is_empty() {
        backends
            .iter()
            .map(|&rate_backend| Options {
                rate_backend,
                ..base_opts.clone()
            })
            .collect()
    } else if compare.is_empty() {
        vec![base_opts.clone()]
    } else {
        compare
            .iter()
            .map(|&audit| Options {
                audit,
                ..base_opts.clone()
            })
            .collect()
    };
    let comparing = variants.len() > 1 || !compare.is_empty();
    let benches: Vec<Bench> = variants
        .into_iter()
        .map(|o| srv_rt.block_on(Bench::start_with(o)))
        .collect();
    let check_req = build_request(&benches[0].check_input());
    let allow_response = {
        let d = srv_rt.block_on(
            benches[0]
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
    let mut peps = Vec::new();
    for b in &benches {
        // Every instance must allow the request (the token is per instance: each has its own IdP
        // key, so the check request is rebuilt for it).
        let req = build_request(&b.check_input());
        let d = srv_rt.block_on(
            b.running
                .engine
                .decide(&scp_pep::grpc::facts_from_check(req.clone())),
        );
        assert!(
            d.allowed(),
            "bench request must be allowed: {:?}",
            d.denial()
        );
        let label = if !backends.is_empty() {
            format!("pep-{:?}", b.options.rate_backend).to_lowercase()
        } else if b.options.audit == AuditMode::Off && compare.is_empty() {
            "scp-pep".to_string()
        } else {
            format!("pep-{}", audit_name(b.options.audit))
        };
        println!(
            "{label}: gRPC {}, {}",
            b.running.grpc_addr,
            srv_rt.block_on(b.describe())
        );
        peps.push(Target {
            label,
            addr: b.running.grpc_addr,
            req: Arc::new(req),
            audit: b.options.audit != AuditMode::Off,
        });
    }
    let noops = if !comparing {
        let (noop_addr, noop_stop) = srv_rt.block_on(start_noop(None));
        let (shaped_addr, shaped_stop) = srv_rt.block_on(start_noop(Some(allow_response)));
        println!("no-op {noop_addr}, no-op with scp-pep's response {shaped_addr}");
        Some(((noop_addr, noop_stop), (shaped_addr, shaped_stop)))
    } else {
        None
    };
    println!("RSS {} kB", support::rss_kb());
    let noop_addrs = noops.as_ref().map(|((a, _), (b, _))| (*a, *b));

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
            let p = Phases {
                conns,
                warmup,
                duration,
                rate,
            };
            match noop_addrs {
                Some((noop_addr, shaped_addr)) => rt.block_on(run_client(
                    [noop_addr, shaped_addr],
                    &peps[0],
                    check_req,
                    &concs,
                    &p,
                )),
                None => rt.block_on(run_compare(&peps, &concs, rounds, open, open_rounds, &p)),
            }
        })
        .expect("client thread");
    let ok = client.join().expect("client thread panicked");

    println!("RSS at end {} kB", support::rss_kb());
    if let Some(((_, noop_stop), (_, shaped_stop))) = noops {
        let _ = noop_stop.send(());
        let _ = shaped_stop.send(());
    }
    for b in benches {
        srv_rt.block_on(b.stop());
    }
    srv_rt.shutdown_timeout(Duration::from_secs(2));
    if !ok {
        eprintln!("load bench: errors occurred (see above)");
        std::process::exit(1);
    }
}

/// One scp-pep instance under test.
struct Target {
    label: String,
    addr: SocketAddr,
    /// Its allowed request (signed by its own IdP key).
    req: Arc<CheckRequest>,
    /// Its audit log is on (print the group-commit figures).
    audit: bool,
}

/// Phase parameters shared by every loop.
struct Phases {
    conns: usize,
    warmup: Duration,
    duration: Duration,
    rate: u64,
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

/// True for a denial with code `AUDIT_UNAVAILABLE` (the audit log could not take the record).
fn audit_unavailable(resp: &CheckResponse) -> bool {
    matches!(&resp.http_response, Some(HttpResponse::DeniedResponse(d)) if d.body.contains("AUDIT_UNAVAILABLE"))
}

fn allowed(resp: &CheckResponse) -> bool {
    let status_ok = resp.status.as_ref().is_some_and(|s| s.code == 0);
    let not_denied = !matches!(
        resp.http_response,
        Some(HttpResponse::DeniedResponse(_) | HttpResponse::ErrorResponse(_))
    );
    status_ok && not_denied
}

async fn run_client(
    [noop_addr, shaped_addr]: [SocketAddr; 2],
    target: &Target,
    req: CheckRequest,
    concs: &[usize],
    ph: &Phases,
) -> bool {
    let (warmup, duration) = (ph.warmup, ph.duration);
    let mut all_ok = true;
    let req = Arc::new(req);
    let noop = connect(noop_addr, ph.conns).await;
    let shaped = connect(shaped_addr, ph.conns).await;
    let pep = connect(target.addr, ph.conns).await;
    let preq = &target.req;
    let name = target.label.as_str();
    let audit = target.audit;

    println!("\n== (i) closed loop ==");
    let mut summary = Vec::new();
    // For `perf record`: one server under closed-loop load only, no ratio, no open loop.
    let profile_only = std::env::var("BENCH_PROFILE").ok();
    for &c in concs {
        match profile_only.as_deref() {
            Some("pep") => {
                all_ok &= closed_loop(name, &pep, preq, c, warmup, duration, audit)
                    .await
                    .errors
                    == 0;
                continue;
            }
            Some("shaped") => {
                all_ok &= closed_loop("shaped", &shaped, &req, c, warmup, duration, false)
                    .await
                    .errors
                    == 0;
                continue;
            }
            Some("noop") => {
                all_ok &= closed_loop("noop", &noop, &req, c, warmup, duration, false)
                    .await
                    .errors
                    == 0;
                continue;
            }
            _ => {}
        }
        let n = closed_loop("noop", &noop, &req, c, warmup, duration, false).await;
        let sh = closed_loop("shaped", &shaped, &req, c, warmup, duration, false).await;
        let p = closed_loop(name, &pep, preq, c, warmup, duration, audit).await;
        all_ok &= n.errors == 0 && sh.errors == 0 && p.errors == 0;
        println!(
            "RESULT closed-loop C={c}: noop {:.0}/s, shaped no-op {:.0}/s, {name} {:.0}/s; \
             throughput ratio {name}/noop = {:.1}% ({name}/shaped {:.1}%); \
             server CPU/check noop {:.1}µs, shaped {:.1}µs, {name} {:.1}µs \
             (CPU capacity ratio noop/{name} {:.1}%)",
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
    println!("\n== (ii) open loop, {name} ==");
    let (o, _, _) = open_loop(name, &pep, preq, ph.rate, duration, audit).await;
    all_ok &= o;

    println!("\n== summary ==");
    for (c, n, sh, p) in &summary {
        println!(
            "C={c}: noop {:.0}/s (p99 {:.0}µs), shaped {:.0}/s (p99 {:.0}µs), {name} {:.0}/s (p99 {:.0}µs), \
             ratio {name}/noop {:.1}%",
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

/// Comparison mode: alternating closed-loop phases between the scp-pep instances (one per audit
/// mode), then an open loop against each.
async fn run_compare(
    targets: &[Target],
    concs: &[usize],
    rounds: usize,
    open: bool,
    open_rounds: usize,
    ph: &Phases,
) -> bool {
    let mut all_ok = true;
    let mut clients = Vec::new();
    for t in targets {
        clients.push(connect(t.addr, ph.conns).await);
    }
    let k = targets.len();
    let mut summary = Vec::new();
    for &c in concs {
        println!("\n== closed loop C={c}, {rounds} rounds alternating {k} instances ==");
        // rates[i][r]: instance i, round r.
        let mut rates = vec![Vec::new(); k];
        let mut p99 = vec![Vec::new(); k];
        let mut cpu = vec![Vec::new(); k];
        let mut foreign = vec![Vec::new(); k];
        for r in 0..rounds {
            for j in 0..k {
                let i = (j + r) % k;
                let t = &targets[i];
                let res = closed_loop(
                    &t.label,
                    &clients[i],
                    &t.req,
                    c,
                    ph.warmup,
                    ph.duration,
                    t.audit,
                )
                .await;
                all_ok &= res.errors == 0;
                rates[i].push(res.rate);
                p99[i].push(res.p99_us);
                cpu[i].push(res.server_cpu_us_per_check);
                foreign[i].push(res.foreign_pct);
                if t.audit {
                    let d = drain().await;
                    println!(
                        "{:>8} audit queue drained {:.0} ms after the phase",
                        t.label,
                        d * 1e3
                    );
                }
            }
            let line: Vec<String> = (1..k)
                .map(|i| {
                    format!(
                        "{}/{} {:.1}%",
                        targets[i].label,
                        targets[0].label,
                        rates[i][r] / rates[0][r] * 100.0
                    )
                })
                .collect();
            let others: Vec<String> = (0..k).map(|i| format!("{:.0}%", foreign[i][r])).collect();
            println!(
                "round {} C={c}: {}; other processes during the phases {} of a core",
                r + 1,
                line.join(", "),
                others.join("/")
            );
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        let range = |v: &[f64]| {
            let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            (lo, hi)
        };
        for i in 0..k {
            let (lo, hi) = range(&rates[i]);
            let mut ratios: Vec<f64> = (0..rounds)
                .map(|r| rates[i][r] / rates[0][r] * 100.0)
                .collect();
            let (rlo, rhi) = range(&ratios);
            ratios.sort_by(f64::total_cmp);
            let median = ratios[ratios.len() / 2];
            let cpu_ratio = mean(&cpu[0]) / mean(&cpu[i]) * 100.0;
            println!(
                "RESULT compare C={c} {:>13}: mean {:.0}/s (rounds {:.0}–{:.0}), p99 {:.0}µs (mean), \
                 server CPU/check {:.1}µs (rounds {}); vs {}: {:.1}% of mean throughput, per round {:.1}–{:.1}% \
                 (median {median:.1}%); CPU capacity ratio {:.1}%; other processes {:.0}% of a core (mean)",
                targets[i].label,
                mean(&rates[i]),
                lo,
                hi,
                mean(&p99[i]),
                mean(&cpu[i]),
                cpu[i]
                    .iter()
                    .map(|x| format!("{x:.0}"))
                    .collect::<Vec<_>>()
                    .join("/"),
                targets[0].label,
                mean(&rates[i]) / mean(&rates[0]) * 100.0,
                rlo,
                rhi,
                cpu_ratio,
                mean(&foreign[i]),
            );
            summary.push((
                c,
                i,
                mean(&rates[i]),
                mean(&rates[i]) / mean(&rates[0]) * 100.0,
                rlo,
                rhi,
                median,
                cpu_ratio,
            ));
        }
    }
    if open {
        // p50 and p99 (µs) per instance and open-loop round; the order rotates every round.
        let mut lat = vec![Vec::new(); k];
        for r in 0..open_rounds {
            for j in 0..k {
                let i = (j + r) % k;
                let t = &targets[i];
                println!("\n== open loop, {} (round {}) ==", t.label, r + 1);
                let (ok, p50, p99) =
                    open_loop(&t.label, &clients[i], &t.req, ph.rate, ph.duration, t.audit).await;
                all_ok &= ok;
                lat[i].push((p50, p99));
                if t.audit {
                    drain().await;
                }
            }
        }
        if open_rounds > 1 || k > 1 {
            let median = |mut v: Vec<f64>| {
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            };
            let p50_0 = median(lat[0].iter().map(|x| x.0).collect());
            let p99_0 = median(lat[0].iter().map(|x| x.1).collect());
            for i in 0..k {
                let p50s: Vec<String> = lat[i].iter().map(|x| format!("{:.0}", x.0)).collect();
                let p50 = median(lat[i].iter().map(|x| x.0).collect());
                let p99 = median(lat[i].iter().map(|x| x.1).collect());
                println!(
                    "RESULT open-loop compare {:>11}: median of {open_rounds} rounds p50 {p50:.0}µs (rounds {}), \
                     p99 {p99:.0}µs; vs {}: p50 {:+.0}µs, p99 {:+.0}µs",
                    targets[i].label,
                    p50s.join("/"),
                    targets[0].label,
                    p50 - p50_0,
                    p99 - p99_0,
                );
            }
        }
    }
    println!("\n== summary ==");
    for (c, i, rate, ratio, rlo, rhi, median, cpu_ratio) in summary {
        println!(
            "C={c} {}: {rate:.0}/s, {ratio:.1}% of {} (per round {rlo:.1}–{rhi:.1}%, median {median:.1}%; \
             CPU capacity ratio {cpu_ratio:.1}%)",
            targets[i].label, targets[0].label
        );
    }
    all_ok
}

/// Waits until the audit writer has committed everything queued (the committed-records counter
/// stops moving for 100 ms; at most 10 s); returns the seconds waited.
async fn drain() -> f64 {
    let t0 = Instant::now();
    let mut last = AuditCounters::read().records;
    let mut stable_since = Instant::now();
    while t0.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = AuditCounters::read().records;
        if now != last {
            last = now;
            stable_since = Instant::now();
        } else if stable_since.elapsed() >= Duration::from_millis(100) {
            break;
        }
    }
    (stable_since - t0).as_secs_f64()
}

struct ClosedResult {
    rate: f64,
    errors: u64,
    p99_us: f64,
    /// Server threads + SQLite worker threads + PostgreSQL backends, CPU µs per check.
    server_cpu_us_per_check: f64,
    /// CPU used by processes other than this one and its PostgreSQL backends, % of one core.
    foreign_pct: f64,
}

async fn closed_loop(
    name: &str,
    clients: &[AuthorizationClient<Channel>],
    req: &Arc<CheckRequest>,
    conc: usize,
    warmup: Duration,
    duration: Duration,
    audit: bool,
) -> ClosedResult {
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let audit_unavail = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(conc);
    for i in 0..conc {
        let mut client = clients[i % clients.len()].clone();
        let req = req.clone();
        let (stop, measuring, done, errors, audit_unavail) = (
            stop.clone(),
            measuring.clone(),
            done.clone(),
            errors.clone(),
            audit_unavail.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(1 << 16);
            while !stop.load(Ordering::Relaxed) {
                let r = (*req).clone();
                let t = Instant::now();
                let res = tokio::time::timeout(REQUEST_TIMEOUT, client.check(r)).await;
                let el = t.elapsed();
                let ok = matches!(&res, Ok(Ok(resp)) if allowed(resp.get_ref()));
                if !ok && matches!(&res, Ok(Ok(resp)) if audit_unavailable(resp.get_ref())) {
                    audit_unavail.fetch_add(1, Ordering::Relaxed);
                }
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
    let a0 = audit.then(AuditCounters::read);
    let t0 = Instant::now();
    measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(duration).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = t0.elapsed();
    let cpu1 = thread_cpu();
    let a1 = audit.then(AuditCounters::read);
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
    let sqlite = cpu.get("sqlite").copied().unwrap_or(0.0);
    let pg = cpu.get("pg").copied().unwrap_or(0.0);
    let other = cpu.get("other").copied().unwrap_or(0.0);
    let foreign = foreign_cpu(&cpu);
    let secs = elapsed.as_secs_f64();
    let us = |x: u64| x as f64 / 1000.0;
    println!(
        "{name:>8} C={conc:<3} checks={n} in {secs:.2}s → {rate:.0} checks/s, errors={errors} \
         (AUDIT_UNAVAILABLE {}); latency p50={:.0}µs p99={:.0}µs p99.9={:.0}µs; \
         CPU (% of one core): server {:.0} client {:.0} sqlite threads {:.0} postgres backends {:.0} \
         other threads {:.0}, other processes {:.0}; RSS {} kB",
        audit_unavail.load(Ordering::Relaxed),
        us(pct(&lat, 0.50)),
        us(pct(&lat, 0.99)),
        us(pct(&lat, 0.999)),
        srv / secs * 100.0,
        cli / secs * 100.0,
        sqlite / secs * 100.0,
        pg / secs * 100.0,
        other / secs * 100.0,
        foreign / secs * 100.0,
        support::rss_kb(),
    );
    if let (Some(a0), Some(a1)) = (a0, a1) {
        println!("{name:>8} C={conc:<3} {}", a1.since(&a0));
    }
    ClosedResult {
        rate,
        errors,
        p99_us: us(pct(&lat, 0.99)),
        server_cpu_us_per_check: (srv + sqlite + pg) * 1e6 / n.max(1) as f64,
        foreign_pct: foreign / secs * 100.0,
    }
}

/// Sends `rate` checks per second for `duration`, paced by a dedicated thread; returns false on errors.
async fn open_loop(
    name: &str,
    clients: &[AuthorizationClient<Channel>],
    req: &Arc<CheckRequest>,
    rate: u64,
    duration: Duration,
    audit: bool,
) -> (bool, f64, f64) {
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
    let a0 = audit.then(AuditCounters::read);
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
            let au = matches!(&res, Ok(Ok(resp)) if audit_unavailable(resp.get_ref()));
            (
                ok,
                au,
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
    let a1 = audit.then(AuditCounters::read);
    let abandoned = set.len() as u64;
    set.detach_all();

    let mut from_due = Vec::with_capacity(results.len());
    let mut from_send = Vec::with_capacity(results.len());
    let mut errors = shed + abandoned;
    let mut audit_unavail = 0u64;
    let mut last_end = start;
    for (ok, au, d, s, end) in results {
        if ok {
            from_due.push(d);
            from_send.push(s);
        } else {
            errors += 1;
            audit_unavail += u64::from(au);
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
        "open loop {name}: target {rate}/s for {}s: scheduled={total} completed_ok={completed} errors={errors} \
         (AUDIT_UNAVAILABLE {audit_unavail}, shed {shed}, abandoned {abandoned}); achieved {:.0} ok checks/s \
         (send window {:.2}s)",
        duration.as_secs(),
        completed as f64 / span.max(1e-9),
        send_span,
    );
    println!(
        "RESULT open-loop {name} {rate}/s latency from scheduled send: p50={:.0}µs p90={:.0}µs p99={:.0}µs p99.9={:.0}µs max={:.0}µs",
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
        "open-loop CPU (% of one core): server {:.0} client {:.0} sqlite threads {:.0} postgres backends {:.0} \
         pacer+other threads {:.0}, other processes {:.0}; RSS {} kB",
        cpu.get("srv").copied().unwrap_or(0.0) / secs * 100.0,
        cpu.get("client").copied().unwrap_or(0.0) / secs * 100.0,
        cpu.get("sqlite").copied().unwrap_or(0.0) / secs * 100.0,
        cpu.get("pg").copied().unwrap_or(0.0) / secs * 100.0,
        cpu.get("other").copied().unwrap_or(0.0) / secs * 100.0,
        foreign_cpu(&cpu) / secs * 100.0,
        support::rss_kb(),
    );
    if let (Some(a0), Some(a1)) = (a0, a1) {
        println!("open-loop {name} {}", a1.since(&a0));
    }
    (
        errors == 0,
        us(pct(&from_due, 0.50)),
        us(pct(&from_due, 0.99)),
    )
}

type OpenResult = (bool, bool, u64, u64, Instant);

fn unwrap_result(r: Result<OpenResult, tokio::task::JoinError>) -> OpenResult {
    r.unwrap_or((false, false, 0, 0, Instant::now()))
}

/// (busy, total) jiffies (1/100 s) of the whole machine, from the first line of `/proc/stat`.
fn machine_cpu() -> (u64, u64) {
    let Ok(s) = std::fs::read_to_string("/proc/stat") else {
        return (0, 0);
    };
    let v: Vec<u64> = s
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    // idle + iowait
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// CPU seconds spent by other processes (other engineers' builds and tests, PostgreSQL's own
/// background processes) in a [`cpu_delta`]: the machine's busy time minus this process's
/// threads and the benchmark's PostgreSQL backends.
fn foreign_cpu(d: &HashMap<&'static str, f64>) -> f64 {
    let own: f64 = ["srv", "client", "sqlite", "other", "pg"]
        .iter()
        .map(|k| d.get(k).copied().unwrap_or(0.0))
        .sum();
    (d.get("machine").copied().unwrap_or(0.0) - own).max(0.0)
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
        } else if comm.starts_with("sqlx-sqlite") {
            "sqlite"
        } else if comm.starts_with("bench-client") {
            "client"
        } else {
            "other"
        };
        *m.entry(group).or_insert(0.0) += cpu;
    }
    m.insert("pg", pg_bench_cpu());
    m.insert("machine", machine_cpu().0 as f64 / tick);
    m
}

/// CPU seconds of the PostgreSQL backends serving the benchmark's databases (their process
/// title names the database, `scp_pep_bench_*`); 0 on SQLite.
fn pg_bench_cpu() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    let mut total = 0.0;
    for e in dir.flatten() {
        let name = e.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        if !cmd.windows(14).any(|w| w == b"scp_pep_bench_") || !cmd.starts_with(b"postgres") {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let f: Vec<&str> = stat[close + 2..].split(' ').collect();
        if let (Some(u), Some(s)) = (f.get(11), f.get(12)) {
            total += (u.parse::<f64>().unwrap_or(0.0) + s.parse::<f64>().unwrap_or(0.0)) / 100.0;
        }
    }
    total
}

fn cpu_delta(
    a: &HashMap<&'static str, f64>,
    b: &HashMap<&'static str, f64>,
) -> HashMap<&'static str, f64> {
    b.iter()
        .map(|(k, v)| (*k, v - a.get(k).copied().unwrap_or(0.0)))
        .collect()
}
