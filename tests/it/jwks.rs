//! JWKS behaviour through the real server and a real HTTP JWKS endpoint: rotation, single-flight
//! rate-limited refetch on unknown `kid`, outage tolerance, revocation, fail-closed start.

use crate::common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::Harness;
use jsonwebtoken::Algorithm;
use scp_pep::policy::{JwksSource, PolicySet};
use scp_pep::signer::SigningKey;

const RECORD: &str = "/v1/tenants/ke/health/persons/p-1/record";

fn claims(h: &Harness) -> serde_json::Value {
    h.claims("ke", "int-ke-moh", &["health"], "health:person:read")
}

/// INT-4.2-1, EXT-5.2-1: a key published after start (rotation) is picked up on its first use,
/// and many concurrent first uses share one refetch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_is_followed_with_one_shared_refetch() {
    let mut h = Harness::start(None).await;
    let before = h.idp.fetches.load(Ordering::SeqCst);
    let new_key = SigningKey::generate(Algorithm::RS256, "ke-rotated").unwrap();
    let token = new_key.sign(&claims(&h));
    // Not yet published: unknown kid.
    assert_eq!(
        h.check(&Harness::get(RECORD, &token)).await["code"],
        "TOKEN_KEY_UNKNOWN"
    );
    h.idp.add_key("ke", new_key);
    tokio::time::sleep(Duration::from_millis(1100)).await; // past the 1 s refetch interval
    let fetches_before_burst = h.idp.fetches.load(Ordering::SeqCst);
    // A slow IdP: the other requests arrive while the shared refetch is in flight, and must wait
    // for it rather than fail.
    h.idp.delay_ms.store(300, Ordering::SeqCst);
    // 16 concurrent first uses of the new kid.
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let mut c = h.client.clone();
        let req = scp_pep::check::build_request(&Harness::get(RECORD, &token));
        tasks.push(tokio::spawn(async move {
            scp_pep::check::response_json(&c.check(req).await.unwrap().into_inner())
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap()["code"], "OK");
    }
    let burst_fetches = h.idp.fetches.load(Ordering::SeqCst) - fetches_before_burst;
    assert_eq!(
        burst_fetches, 1,
        "one shared refetch for 16 concurrent unknown-kid tokens"
    );
    assert!(h.idp.fetches.load(Ordering::SeqCst) > before);
    h.running.shutdown().await;
}

/// EXT-5.2-1: a flood of tokens with random unknown `kid`s triggers at most one refetch per
/// refetch interval (no amplification against the IdP).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kid_flood_is_rate_limited() {
    let mut h = Harness::start_with(None, |c| c.auth.jwks_refetch_min_interval_s = 30).await;
    // Warm: the prefetch at start counts as the last attempt.
    let start = h.idp.fetches.load(Ordering::SeqCst);
    let keys = h.idp.keys.clone();
    let rogue = keys.get("rogue-rs256");
    for i in 0..40 {
        let mut c = claims(&h);
        c["jti"] = format!("flood-{i}").into();
        let mut header = jsonwebtoken::Header::new(Algorithm::RS256);
        header.kid = Some(format!("random-kid-{i}"));
        let t = jsonwebtoken::encode(&header, &c, &rogue.encoding).unwrap();
        assert_eq!(
            h.check(&Harness::get(RECORD, &t)).await["code"],
            "TOKEN_KEY_UNKNOWN"
        );
    }
    let fetched = h.idp.fetches.load(Ordering::SeqCst) - start;
    assert!(
        fetched <= 1,
        "40 unknown kids caused {fetched} JWKS fetches"
    );
    h.running.shutdown().await;
}

/// EXT-3.3-2: when the IdP's JWKS endpoint fails, the previously fetched keys keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_outage_keeps_previous_keys() {
    let mut h = Harness::start_with(None, |c| c.auth.jwks_ttl_s = 1).await;
    h.idp.down.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1200)).await; // keys are stale now
    for key in ["ke-rs256", "ke-es256", "ke-eddsa"] {
        // Fresh (uncached) tokens must verify with the kept keys while refreshes fail.
        let t = h.sign(key, &claims(&h));
        assert_eq!(
            h.check(&Harness::get(RECORD, &t)).await["code"],
            "OK",
            "{key}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = h.metrics_text().await;
    assert!(
        metrics.contains("scp_pep_jwks_fetch_total{result=\"error\"}"),
        "failed refreshes are counted"
    );
    h.running.shutdown().await;
}

/// EXT-5.2-1: a key the IdP stopped publishing (revoked) no longer verifies tokens once the set
/// is refetched: neither new tokens nor tokens already verified and cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpublished_key_is_revoked_after_refetch() {
    let mut h = Harness::start(None).await;
    let cached = h.sign("ke-es256", &claims(&h));
    assert_eq!(h.check(&Harness::get(RECORD, &cached)).await["code"], "OK");
    assert_eq!(
        h.check(&Harness::get(RECORD, &cached)).await["code"],
        "OK",
        "served from the token cache"
    );
    h.idp.unpublish("ke", "ke-es256");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // An unknown kid forces the refetch that learns the new set.
    let rogue = h.sign("rogue-rs256", &claims(&h));
    assert_eq!(
        h.check(&Harness::get(RECORD, &rogue)).await["code"],
        "TOKEN_KEY_UNKNOWN"
    );
    let t = h.sign("ke-es256", &claims(&h));
    assert_eq!(
        h.check(&Harness::get(RECORD, &t)).await["code"],
        "TOKEN_KEY_UNKNOWN"
    );
    assert_eq!(
        h.check(&Harness::get(RECORD, &cached)).await["code"],
        "TOKEN_KEY_UNKNOWN",
        "a cached verification does not outlive its key"
    );
    h.running.shutdown().await;
}

/// Fail closed: a tenant whose JWKS was never loadable gets 503 `DEPENDENCY_UNAVAILABLE` with
/// `retry-after`, never an allow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_jwks_fails_closed() {
    let mut h = Harness::start(None).await;
    let mut set = PolicySet::load_dir(&h.policy_dir).unwrap();
    for t in &mut set.tenants {
        t.jwks = JwksSource::Url("http://127.0.0.1:9/never".into());
    }
    let store = scp_pep::store::Store::connect(&h.store_url, 1, Duration::from_secs(5))
        .await
        .unwrap();
    store.apply(&set).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await; // poll interval is 100 ms
    let t = h.sign("ke-rs256", &claims(&h));
    let v = h.check(&Harness::get(RECORD, &t)).await;
    assert_eq!(v["code"], "DEPENDENCY_UNAVAILABLE");
    assert_eq!(v["status"], 503);
    assert_eq!(v["headers_set"]["retry-after"], "5");
    assert_eq!(v["body"]["error"]["retryable"], true);
    h.running.shutdown().await;
}

/// JWKS from a file (`jwks: {file: …}`) works like a URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_from_file() {
    let mut h = Harness::start(None).await;
    let key = SigningKey::generate(Algorithm::ES256, "file-key").unwrap();
    let path = h.dir.path().join("jwks.json");
    std::fs::write(&path, scp_pep::signer::jwks_json(&[&key])).unwrap();
    let mut set = PolicySet::load_dir(&h.policy_dir).unwrap();
    set.tenants.iter_mut().find(|t| t.id == "ke").unwrap().jwks =
        JwksSource::File(path.display().to_string());
    let store = scp_pep::store::Store::connect(&h.store_url, 1, Duration::from_secs(5))
        .await
        .unwrap();
    store.apply(&set).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let t = key.sign(&claims(&h));
    assert_eq!(h.check(&Harness::get(RECORD, &t)).await["code"], "OK");
    h.running.shutdown().await;
}

/// EXT-3.3-2, EXT-5.2-1, INT-4.1-4 (fault injection on the JWKS endpoint): while the IdP answers
/// garbage, a 10 MB body, 503 or answers slower than the fetch timeout, tokens of known keys keep
/// working, a token of a key not seen yet is refused 401 `TOKEN_KEY_UNKNOWN` (never allowed) and
/// no check waits past the fetch timeout; when the IdP recovers, the new key is picked up
/// without a restart (the time to recover is printed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_faults_never_allow_and_recover() {
    let mut h = Harness::start_with(None, |c| c.auth.jwks_fetch_timeout_s = 1).await;
    let old = h.sign("ke-rs256", &claims(&h));
    assert_eq!(h.check(&Harness::get(RECORD, &old)).await["code"], "OK");
    type Inject = Box<dyn Fn(&common::Idp)>;
    let faults: [(&str, Inject); 4] = [
        (
            "garbage",
            Box::new(|i| *i.body.write().unwrap() = Some(b"<html>oops".to_vec())),
        ),
        (
            "10 MB body",
            Box::new(|i| *i.body.write().unwrap() = Some(vec![b' '; 10 << 20])),
        ),
        ("503", Box::new(|i| i.down.store(true, Ordering::SeqCst))),
        (
            "slower than the timeout",
            Box::new(|i| i.delay_ms.store(3000, Ordering::SeqCst)),
        ),
    ];
    for (n, (name, inject)) in faults.iter().enumerate() {
        let key = SigningKey::generate(Algorithm::RS256, format!("ke-new-{n}")).unwrap();
        let new = key.sign(&claims(&h));
        h.idp.add_key("ke", key);
        inject(&h.idp);
        tokio::time::sleep(Duration::from_millis(1100)).await; // past the refetch interval
        let t0 = std::time::Instant::now();
        let v = h.check(&Harness::get(RECORD, &new)).await;
        assert_eq!(v["code"], "TOKEN_KEY_UNKNOWN", "{name}: {v}");
        assert_eq!(v["status"], 401, "{name}");
        // Bounded by the 1 s fetch timeout (plus scheduling slack on a loaded machine).
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "{name}: {:?}",
            t0.elapsed()
        );
        assert_eq!(
            h.check(&Harness::get(RECORD, &old)).await["code"],
            "OK",
            "{name}"
        );
        // Recover: the IdP serves the real set again.
        *h.idp.body.write().unwrap() = None;
        h.idp.down.store(false, Ordering::SeqCst);
        h.idp.delay_ms.store(0, Ordering::SeqCst);
        let healed = std::time::Instant::now();
        loop {
            let v = h.check(&Harness::get(RECORD, &new)).await;
            if v["code"] == "OK" {
                break;
            }
            assert_eq!(v["code"], "TOKEN_KEY_UNKNOWN", "{name}: {v}");
            assert!(
                healed.elapsed() < Duration::from_secs(10),
                "{name}: no recovery"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!(
            "jwks fault `{name}`: recovered {:?} after the IdP did",
            healed.elapsed()
        );
    }
    h.running.shutdown().await;
}
