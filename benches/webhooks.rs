//! Webhook delivery benchmark (issue 15). A plain `main`, not Criterion.
//!
//! For each store of `BENCH_WEBHOOK_STORES` (`postgres,sqlite`; PostgreSQL: a fresh database on
//! the server of `BENCH_PG_URL`, default `postgres://root@127.0.0.1:5432/test`; SQLite: a fresh
//! file), one webhook subscription to a local receiver (axum on loopback, `200` to everything,
//! HTTP/1.1 keep-alive) and a [`Deliverer`] with the default `[webhooks]` settings except
//! `interval_ms`:
//!
//! 1. `drain`: `BENCH_WEBHOOK_EVENTS` (5,000) events queued at once (untimed), then
//!    `Deliverer::pass` until none is left: deliveries/s = events / drain time. Each delivery is
//!    a claim, two reads (subscription, secrets), the signed POST and the attempt record.
//! 2. `latency`: the delivery loop (`webhooks::run`, `BENCH_WEBHOOK_INTERVAL_MS`, 100) while
//!    events are queued one by one at `BENCH_WEBHOOK_RATE` (200) per second for
//!    `BENCH_WEBHOOK_SECONDS` (10) s. Enqueue → delivered is measured at the receiver from the
//!    enqueue instant carried in the event data (so it includes the poll interval); p50, p99,
//!    max.
//!
//! Run: `cargo bench --bench webhooks`.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use scp_pep::store::{DocChange, DocKind, Source, Store};
use scp_pep::webhooks::{Deliverer, WebhooksConfig};
use serde_json::{Value, json};

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

type Lat = Arc<Mutex<Vec<u64>>>;

async fn receive(State(lat): State<Lat>, body: String) -> &'static str {
    let t = now_us();
    if let Ok(v) = serde_json::from_str::<Value>(&body)
        && let Some(sent) = v["data"]["t_us"].as_i64()
    {
        lat.lock()
            .unwrap()
            .push(u64::try_from(t - sent).unwrap_or(0));
    }
    "ok"
}

async fn receiver() -> (String, Lat) {
    let lat: Lat = Arc::default();
    let app = Router::new()
        .route("/hook", post(receive))
        .with_state(lat.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (format!("http://127.0.0.1:{port}/hook"), lat)
}

async fn subscribe(store: &Store, url: &str) {
    let doc = json!({"id": "wh-bench", "integration_id": "int-ke-bench", "tenant": "ke",
                     "url": url, "events": ["bench.event"], "description": null});
    store
        .write_documents(
            &[
                DocChange::put(DocKind::Webhook, "wh-bench", Some("ke"), doc.to_string())
                    .status("active"),
            ],
            Source::Api,
            "bench",
            None,
        )
        .await
        .expect("subscription");
    store
        .webhook_secret_create(
            "wh-bench",
            &scp_pep::webhooks::new_secret(),
            scp_pep::api::now_ms(),
        )
        .await
        .expect("secret");
}

async fn enqueue(store: &Store, seq: u64) {
    scp_pep::webhooks::enqueue(
        store,
        "ke",
        "int-ke-bench",
        "bench.event",
        json!({"seq": seq, "t_us": now_us()}),
        scp_pep::api::now_ms(),
    )
    .await
    .expect("enqueue");
}

async fn run_store(name: &str, url: &str) {
    let store = Store::connect(url, 8, Duration::from_secs(30))
        .await
        .expect("store");
    let (hook, lat) = receiver().await;
    subscribe(&store, &hook).await;
    let cfg = WebhooksConfig {
        interval_ms: env("BENCH_WEBHOOK_INTERVAL_MS", 100),
        ..WebhooksConfig::default()
    };
    let d = Arc::new(
        Deliverer::new(
            store.clone(),
            None,
            None,
            "scp-pep".into(),
            cfg.clone(),
            true,
        )
        .expect("deliverer"),
    );

    // 1. drain
    let n: u64 = env("BENCH_WEBHOOK_EVENTS", 5_000);
    for i in 0..n {
        enqueue(&store, i).await;
    }
    let t = Instant::now();
    loop {
        let read = d.pass(scp_pep::api::now_ms(), 100).await.expect("pass");
        if read == 0 {
            break;
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let got = lat.lock().unwrap().len();
    assert_eq!(got as u64, n, "every event delivered");
    println!(
        "{name:8} drain: {n} deliveries in {secs:.2} s = {:.0} deliveries/s (concurrency {})",
        n as f64 / secs,
        cfg.concurrency
    );
    lat.lock().unwrap().clear();

    // 2. latency
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(scp_pep::webhooks::run(d.clone(), stop_rx));
    let rate: u64 = env("BENCH_WEBHOOK_RATE", 200);
    let seconds: u64 = env("BENCH_WEBHOOK_SECONDS", 10);
    let total = rate * seconds;
    let start = Instant::now();
    for i in 0..total {
        let due = start + Duration::from_micros(i * 1_000_000 / rate);
        tokio::time::sleep_until(due.into()).await;
        enqueue(&store, i).await;
    }
    for _ in 0..600 {
        if lat.lock().unwrap().len() as u64 >= total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop_tx.send(true);
    let _ = task.await;
    let mut v = lat.lock().unwrap().clone();
    v.sort_unstable();
    println!(
        "{name:8} latency at {rate}/s for {seconds} s (interval {} ms): {} delivered, enqueue→delivered p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        cfg.interval_ms,
        v.len(),
        support::pct(&v, 0.50) as f64 / 1000.0,
        support::pct(&v, 0.99) as f64 / 1000.0,
        v.last().copied().unwrap_or(0) as f64 / 1000.0,
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let stores =
            std::env::var("BENCH_WEBHOOK_STORES").unwrap_or_else(|_| "postgres,sqlite".into());
        for s in stores.split(',') {
            match s {
                "postgres" => {
                    let (url, admin, db) = support::fresh_pg_database().await;
                    run_store("postgres", &url).await;
                    support::drop_pg_database(&admin, &db).await;
                }
                "sqlite" => {
                    let dir = tempfile::tempdir().unwrap();
                    let url = format!("sqlite:{}", dir.path().join("bench.db").display());
                    run_store("sqlite", &url).await;
                }
                other => eprintln!("unknown store `{other}`"),
            }
        }
    });
}
