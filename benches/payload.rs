//! Payload validation cost per KB of body (issue 15: INT-9.3-1). A plain `main`, not Criterion.
//!
//! For JSON bodies of 1, 4, 16, 64 and 256 KiB (arrays of immunization records, the schema of
//! `docs/policies.md`), measures in one run, on one thread:
//! - `serde`: `serde_json::from_slice::<Value>` (the parse every body-reading PEP pays; baseline);
//! - `strict`: `scp_pep::payload::parse_json` (duplicate keys and depth refused);
//! - `check`: `PayloadRules::check` (media type, strict parse and JSON Schema validation).
//!
//! Each figure is the median of `BENCH_ROUNDS` (5) rounds of ≥ `BENCH_ROUND_MS` (300) ms; prints
//! µs per body, µs per KiB and the ratio to `serde`. Run: `cargo bench --bench payload`.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use scp_pep::payload::{PayloadRules, parse_json};
use scp_pep::policy::Route;

const SCHEMA_ROUTE: &str = r#"
id: push
methods: [POST]
path: /v1/tenants/{tenant}/health/immunizations
verticals: [health]
action: write
resource: immunization
scope: health:immunization:write
kind: batch
content_types: [application/json]
body_schema:
  type: object
  required: [records]
  additionalProperties: false
  properties:
    records:
      type: array
      items:
        type: object
        required: [facility, vaccine, date, person_id]
        additionalProperties: false
        properties:
          person_id: {type: string, maxLength: 64}
          facility: {type: string, maxLength: 64}
          vaccine: {type: string, enum: [bcg, opv, dtp, mcv]}
          date: {type: string, pattern: "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"}
          dose: {type: integer, minimum: 1, maximum: 10}
"#;

fn body(kib: usize) -> Vec<u8> {
    let mut s = String::from(r#"{"records":["#);
    let mut i = 0;
    while s.len() < kib * 1024 - 100 {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!(
            r#"{{"person_id":"p-{i:07}","facility":"fac-{:03}","vaccine":"bcg","date":"2026-11-30","dose":{}}}"#,
            i % 997,
            i % 9 + 1
        ));
        i += 1;
    }
    s.push_str("]}");
    s.into_bytes()
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Median over rounds of the mean time of one call, ns.
fn measure(rounds: u64, round: Duration, mut f: impl FnMut()) -> f64 {
    let mut per = Vec::new();
    for _ in 0..rounds {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < round {
            for _ in 0..16 {
                f();
            }
            n += 16;
        }
        per.push(start.elapsed().as_nanos() as f64 / n as f64);
    }
    per.sort_by(|a, b| a.total_cmp(b));
    per[per.len() / 2]
}

fn main() {
    let rounds = env_u64("BENCH_ROUNDS", 5);
    let round = Duration::from_millis(env_u64("BENCH_ROUND_MS", 300));
    let route: Route = serde_yaml_ng::from_str(SCHEMA_ROUTE).expect("route");
    let rules = PayloadRules::compile(&route).expect("rules");
    println!(
        "{:>8} {:>12} {:>12} {:>12} {:>10} {:>10} {:>10} {:>8} {:>8}",
        "KiB",
        "serde µs",
        "strict µs",
        "check µs",
        "serde/KiB",
        "strict/KiB",
        "check/KiB",
        "strict×",
        "check×"
    );
    for kib in [1usize, 4, 16, 64, 256] {
        let b = body(kib);
        let mut headers = HashMap::new();
        headers.insert("content-type".to_owned(), "application/json".to_owned());
        headers.insert("content-length".to_owned(), b.len().to_string());
        assert!(rules.check(&headers, Some(&b), false, 1 << 20).is_ok());
        let real_kib = b.len() as f64 / 1024.0;
        let serde = measure(rounds, round, || {
            black_box(serde_json::from_slice::<serde_json::Value>(black_box(&b)).unwrap());
        });
        let strict = measure(rounds, round, || {
            black_box(parse_json(black_box(&b)).unwrap());
        });
        let check = measure(rounds, round, || {
            black_box(
                rules
                    .check(&headers, Some(black_box(&b)), false, 1 << 20)
                    .unwrap(),
            );
        });
        println!(
            "{:>8.1} {:>12.1} {:>12.1} {:>12.1} {:>10.2} {:>10.2} {:>10.2} {:>8.2} {:>8.2}",
            real_kib,
            serde / 1e3,
            strict / 1e3,
            check / 1e3,
            serde / 1e3 / real_kib,
            strict / 1e3 / real_kib,
            check / 1e3 / real_kib,
            strict / serde,
            check / serde
        );
    }
}
