//! JWKS cache: the signing keys of every tenant's issuer, fetched over HTTP(S) or read from a file.
//!
//! - Keys are cached per source for `ttl`; a stale set keeps serving while one background refresh
//!   runs (stale-while-revalidate).
//! - A token whose `kid` is unknown triggers **one shared** refetch (single-flight per source),
//!   at most once per `min_refetch_interval`, so a flood of tokens with random `kid`s cannot turn
//!   scp-pep into a traffic amplifier against the IdP.
//! - A failed fetch keeps the previous keys (a Keycloak outage must not log every partner out); it is
//!   counted in `scp_pep_jwks_fetch_total{result="error"}`.
//! - Only signature keys of the allowed algorithms are kept; HMAC (`oct`) keys are never loaded.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use dashmap::DashMap;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

use crate::policy::JwksSource;

/// When [`JwksCache::refresh`] fetches.
#[derive(Clone, Copy)]
enum Refresh {
    /// Stale set: fetch unless a refresh is already running (then return at once).
    Background,
    /// A `kid` is unknown (or nothing is loaded): wait for any running refresh; fetch only if no
    /// refresh completed since generation `seen` and the refetch interval has passed.
    Needed { seen: u64 },
    /// Start-up prefetch: fetch (after any running refresh).
    Force,
}

/// Largest JWKS document accepted, bytes.
pub const MAX_JWKS_BYTES: usize = 1 << 20;

/// One verification key from a JWKS.
pub struct VerifyKey {
    pub key: DecodingKey,
    /// The JWK's `alg`, when it names one; the token's `alg` must then be equal.
    pub alg: Option<Algorithm>,
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey").field("alg", &self.alg).finish()
    }
}

/// Why no key could be returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The key set is loaded but has no key with this `kid`.
    #[error("no key with this kid in the issuer's JWKS")]
    Unknown,
    /// No key set could ever be loaded for this source.
    #[error("issuer JWKS unavailable: {0}")]
    Unavailable(String),
}

#[derive(Default)]
struct KeySet {
    keys: HashMap<String, Arc<VerifyKey>>,
    fetched_at: Option<Instant>,
    last_error: Option<String>,
}

struct Entry {
    keys: ArcSwap<KeySet>,
    refresh: tokio::sync::Mutex<()>,
    /// Milliseconds since the cache's epoch of the last fetch attempt (0 = never).
    last_attempt_ms: AtomicU64,
    /// Bumped after every fetch attempt, so waiters can tell a refresh happened while they waited.
    generation: AtomicU64,
}

/// JWKS cache shared by all requests. Cheap to clone (`Arc` inside).
#[derive(Clone)]
pub struct JwksCache {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    entries: DashMap<JwksSource, Arc<Entry>>,
    ttl: Duration,
    min_refetch: Duration,
    allowed: Vec<Algorithm>,
    epoch: Instant,
    /// Bumped whenever a refresh drops a `kid` that was published before (key revocation).
    removals: AtomicU64,
}

impl JwksCache {
    /// `ttl`: how long a fetched set is fresh; `min_refetch`: least time between two fetches
    /// triggered by unknown `kid`s (at least 1 s: 0 would let any caller make scp-pep fetch on every
    /// request); `fetch_timeout`: per HTTP request; `allowed`: algorithms whose keys are kept.
    pub fn new(
        ttl: Duration,
        min_refetch: Duration,
        fetch_timeout: Duration,
        allowed: Vec<Algorithm>,
    ) -> Self {
        let http = reqwest::Client::builder()
            .timeout(fetch_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        JwksCache {
            inner: Arc::new(Inner {
                http,
                entries: DashMap::new(),
                ttl,
                min_refetch: min_refetch.max(Duration::from_secs(1)),
                allowed,
                epoch: Instant::now(),
                removals: AtomicU64::new(0),
            }),
        }
    }

    fn entry(&self, source: &JwksSource) -> Arc<Entry> {
        if let Some(e) = self.inner.entries.get(source) {
            return e.clone();
        }
        self.inner
            .entries
            .entry(source.clone())
            .or_insert_with(|| {
                Arc::new(Entry {
                    keys: ArcSwap::from_pointee(KeySet::default()),
                    refresh: tokio::sync::Mutex::new(()),
                    last_attempt_ms: AtomicU64::new(0),
                    generation: AtomicU64::new(0),
                })
            })
            .clone()
    }

    /// The key `kid` of `source`, fetching or refetching as described in the module docs.
    ///
    /// Errors: [`KeyError::Unknown`] when the loaded set lacks `kid` (after at most one shared
    /// refetch); [`KeyError::Unavailable`] when no set was ever loaded.
    pub async fn key(&self, source: &JwksSource, kid: &str) -> Result<Arc<VerifyKey>, KeyError> {
        let entry = self.entry(source);
        // Read before the keys: a refresh stores its keys, then bumps the generation.
        let seen = entry.generation.load(Ordering::Acquire);
        let set = entry.keys.load();
        if set
            .fetched_at
            .is_some_and(|at| at.elapsed() > self.inner.ttl)
        {
            // Stale: serve what we have, refresh in the background (one at a time).
            let this = self.clone();
            let src = source.clone();
            let e = entry.clone();
            tokio::spawn(async move { this.refresh(&src, &e, Refresh::Background).await });
        }
        if let Some(k) = set.keys.get(kid) {
            return Ok(k.clone());
        }
        // Unknown kid, or nothing loaded yet: wait for an in-flight refresh, or make the one
        // shared, rate-limited refetch ourselves.
        self.refresh(source, &entry, Refresh::Needed { seen }).await;
        let set = entry.keys.load();
        if let Some(k) = set.keys.get(kid) {
            return Ok(k.clone());
        }
        if set.fetched_at.is_none() {
            return Err(KeyError::Unavailable(
                set.last_error
                    .clone()
                    .unwrap_or_else(|| "not fetched".into()),
            ));
        }
        Err(KeyError::Unknown)
    }

    /// Forces a fetch of `source` now (used at start-up to warm the cache). Returns the number of
    /// usable keys loaded, or the fetch error.
    pub async fn prefetch(&self, source: &JwksSource) -> Result<usize, String> {
        let entry = self.entry(source);
        self.refresh(source, &entry, Refresh::Force).await;
        let set = entry.keys.load();
        match (&set.last_error, set.fetched_at) {
            (Some(e), _) => Err(e.clone()),
            (None, Some(_)) => Ok(set.keys.len()),
            (None, None) => Err("not fetched".into()),
        }
    }

    /// A counter bumped every time a refresh removes a previously published `kid`. Verified
    /// tokens remember the value they were verified under; a changed value means "re-verify",
    /// so a revoked key stops working for cached tokens too.
    pub fn revocation_epoch(&self) -> u64 {
        self.inner.removals.load(Ordering::Acquire)
    }

    fn now_ms(&self) -> u64 {
        self.inner.epoch.elapsed().as_millis() as u64 + 1
    }

    /// Single-flight refresh (one fetch at a time per source); see [`Refresh`] for when it fetches.
    async fn refresh(&self, source: &JwksSource, entry: &Entry, mode: Refresh) {
        let _guard = match mode {
            Refresh::Background => match entry.refresh.try_lock() {
                Ok(g) => g,
                Err(_) => return,
            },
            Refresh::Needed { .. } | Refresh::Force => entry.refresh.lock().await,
        };
        if let Refresh::Needed { seen } = mode {
            if entry.generation.load(Ordering::Acquire) != seen {
                // A refresh completed since the caller looked: use its result.
                return;
            }
            let last = entry.last_attempt_ms.load(Ordering::Acquire);
            let min = self.inner.min_refetch.as_millis() as u64;
            if last != 0 && self.now_ms().saturating_sub(last) < min {
                // Rate-limited: unknown `kid`s must not make scp-pep hammer the IdP.
                return;
            }
        }
        entry
            .last_attempt_ms
            .store(self.now_ms(), Ordering::Release);
        let result = self.fetch(source).await;
        let old = entry.keys.load_full();
        let next = match result {
            Ok(keys) => {
                metrics::counter!("scp_pep_jwks_fetch_total", "result" => "ok").increment(1);
                if old.keys.keys().any(|kid| !keys.contains_key(kid)) {
                    self.inner.removals.fetch_add(1, Ordering::AcqRel);
                }
                KeySet {
                    keys,
                    fetched_at: Some(Instant::now()),
                    last_error: None,
                }
            }
            Err(e) => {
                metrics::counter!("scp_pep_jwks_fetch_total", "result" => "error").increment(1);
                tracing::warn!(source = %source_label(source), error = %e, "JWKS fetch failed; keeping previous keys");
                KeySet {
                    keys: old.keys.clone(),
                    // Keep the old freshness so a failed refresh is retried after the interval.
                    fetched_at: old.fetched_at,
                    last_error: Some(e),
                }
            }
        };
        entry.keys.store(Arc::new(next));
        entry.generation.fetch_add(1, Ordering::AcqRel);
    }

    #[tracing::instrument(target = "scp_pep::trace", name = "jwks.fetch", skip_all)]
    async fn fetch(&self, source: &JwksSource) -> Result<HashMap<String, Arc<VerifyKey>>, String> {
        let bytes = match source {
            JwksSource::Url(url) => {
                let mut resp = self
                    .inner
                    .http
                    .get(url)
                    .header("accept", "application/json")
                    .send()
                    .await
                    .map_err(|e| format!("GET {url}: {}", without_url(&e)))?;
                if !resp.status().is_success() {
                    return Err(format!("GET {url}: HTTP {}", resp.status().as_u16()));
                }
                let mut body = Vec::new();
                while let Some(chunk) = resp
                    .chunk()
                    .await
                    .map_err(|e| format!("GET {url}: {}", without_url(&e)))?
                {
                    if body.len() + chunk.len() > MAX_JWKS_BYTES {
                        return Err(format!(
                            "GET {url}: JWKS larger than {MAX_JWKS_BYTES} bytes"
                        ));
                    }
                    body.extend_from_slice(&chunk);
                }
                body
            }
            JwksSource::File(path) => {
                let b = tokio::fs::read(path)
                    .await
                    .map_err(|e| format!("read {path}: {e}"))?;
                if b.len() > MAX_JWKS_BYTES {
                    return Err(format!("{path}: JWKS larger than {MAX_JWKS_BYTES} bytes"));
                }
                b
            }
        };
        parse_jwks(&bytes, &self.inner.allowed)
    }
}

fn without_url(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    if let Some(u) = e.url() {
        s = s.replace(u.as_str(), "");
    }
    s
}

fn source_label(s: &JwksSource) -> String {
    match s {
        JwksSource::Url(u) => u.clone(),
        JwksSource::File(f) => format!("file:{f}"),
    }
}

/// Parses a JWKS document into `kid → key`, keeping only signature keys with a `kid` whose type
/// fits an allowed algorithm. Keys that fail to parse are skipped (and logged); a document that is
/// not a JWKS at all is an error.
pub fn parse_jwks(
    bytes: &[u8],
    allowed: &[Algorithm],
) -> Result<HashMap<String, Arc<VerifyKey>>, String> {
    let set: JwkSet = serde_json::from_slice(bytes).map_err(|e| format!("not a JWKS: {e}"))?;
    let mut out = HashMap::new();
    for jwk in &set.keys {
        let Some(kid) = jwk.common.key_id.clone() else {
            continue;
        };
        if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
            continue;
        }
        if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
            continue;
        }
        let alg = match jwk.common.key_algorithm {
            Some(ka) => match key_algorithm(ka) {
                Some(a) if allowed.contains(&a) => Some(a),
                _ => continue,
            },
            None => None,
        };
        match DecodingKey::from_jwk(jwk) {
            Ok(key) => {
                out.insert(kid, Arc::new(VerifyKey { key, alg }));
            }
            Err(e) => tracing::warn!(kid = %kid, error = %e, "skipping unusable JWK"),
        }
    }
    Ok(out)
}

/// The JWS algorithm a JWK's `alg` names, for the algorithms scp-pep can accept.
fn key_algorithm(ka: jsonwebtoken::jwk::KeyAlgorithm) -> Option<Algorithm> {
    use jsonwebtoken::jwk::KeyAlgorithm as K;
    Some(match ka {
        K::RS256 => Algorithm::RS256,
        K::RS384 => Algorithm::RS384,
        K::RS512 => Algorithm::RS512,
        K::PS256 => Algorithm::PS256,
        K::PS384 => Algorithm::PS384,
        K::PS512 => Algorithm::PS512,
        K::ES256 => Algorithm::ES256,
        K::ES384 => Algorithm::ES384,
        K::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}
