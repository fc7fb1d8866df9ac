//! The consent cache: the heads of (tenant, vertical, person), bounded by entry count, with a
//! time to live.
//!
//! Built on `quick_cache` (S3-FIFO-like eviction, one hash table slot per entry, no background
//! threads) rather than moka, whose per-entry bookkeeping (access and write deques, entry info,
//! key `Arc`s) cost more than the heads themselves. One entry costs, measured in BENCHMARKS.md
//! ("Consent cache memory"): the table slot, one allocation for the key (`tenant`, `vertical` and
//! `person` in one string) and one shared allocation for the heads; persons with no consent share
//! one empty list.
//!
//! The time to live is checked on read: an entry older than `ttl_s` seconds is a miss and is
//! removed. Lookups borrow the caller's strings ([`KeyRef`]): a hit allocates nothing.

use std::hash::{Hash, Hasher};
use std::sync::{Arc, LazyLock};
use std::time::Instant;

use quick_cache::Equivalent;

use super::model::HeadState;

/// The heads of one (tenant, vertical, person); shared, so a hit costs a reference count.
pub type Heads = Arc<[HeadState]>;

/// The one empty list every person without consent shares.
static NO_HEADS: LazyLock<Heads> = LazyLock::new(|| Arc::from(Vec::new()));

/// `heads` as a cache value (an empty list is the shared [`NO_HEADS`]).
pub fn heads_of(heads: Vec<HeadState>) -> Heads {
    if heads.is_empty() {
        NO_HEADS.clone()
    } else {
        Arc::from(heads)
    }
}

/// An owned key: `tenant`, `vertical` and `person` in one allocation, with the two lengths that
/// split it back. Equality and hashing go by the three parts, never by the joined bytes.
#[derive(Clone, PartialEq, Eq)]
struct CacheKey {
    joined: Box<str>,
    tenant_len: u16,
    vertical_len: u16,
}

impl CacheKey {
    /// `None` when the tenant or vertical id is longer than 65,535 bytes (never cached).
    fn new(tenant: &str, vertical: &str, person: &str) -> Option<CacheKey> {
        let tenant_len = u16::try_from(tenant.len()).ok()?;
        let vertical_len = u16::try_from(vertical.len()).ok()?;
        let mut joined = String::with_capacity(tenant.len() + vertical.len() + person.len());
        joined.push_str(tenant);
        joined.push_str(vertical);
        joined.push_str(person);
        Some(CacheKey {
            joined: joined.into_boxed_str(),
            tenant_len,
            vertical_len,
        })
    }

    fn parts(&self) -> (&str, &str, &str) {
        let t = usize::from(self.tenant_len);
        let v = t + usize::from(self.vertical_len);
        (&self.joined[..t], &self.joined[t..v], &self.joined[v..])
    }
}

/// `str`'s `Hash` writes the bytes and a terminator, so the three parts hash unambiguously.
fn hash_parts<H: Hasher>(tenant: &str, vertical: &str, person: &str, state: &mut H) {
    tenant.hash(state);
    vertical.hash(state);
    person.hash(state);
}

impl Hash for CacheKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let (t, v, p) = self.parts();
        hash_parts(t, v, p, state);
    }
}

/// A borrowed key for lookups: hashes as the [`CacheKey`] it stands for.
struct KeyRef<'a> {
    tenant: &'a str,
    vertical: &'a str,
    person: &'a str,
}

impl Hash for KeyRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_parts(self.tenant, self.vertical, self.person, state);
    }
}

impl Equivalent<CacheKey> for KeyRef<'_> {
    fn equivalent(&self, key: &CacheKey) -> bool {
        key.parts() == (self.tenant, self.vertical, self.person)
    }
}

#[derive(Clone)]
struct Entry {
    /// Seconds after the cache's creation when the entry was loaded.
    loaded_s: u32,
    heads: Heads,
}

/// The cache. All methods are safe to call from any thread and never block on I/O.
pub struct HeadCache {
    inner: quick_cache::sync::Cache<CacheKey, Entry>,
    enabled: bool,
    ttl_s: u32,
    start: Instant,
}

impl HeadCache {
    /// A cache of at most `capacity` entries (0: caches nothing) whose entries live `ttl_s`
    /// seconds (at least 1).
    pub fn new(capacity: u64, ttl_s: u64) -> HeadCache {
        HeadCache {
            // quick_cache needs a positive capacity; capacity 0 is honoured in `insert`.
            inner: quick_cache::sync::Cache::new(
                usize::try_from(capacity.max(1)).unwrap_or(usize::MAX),
            ),
            enabled: capacity > 0,
            ttl_s: u32::try_from(ttl_s.max(1)).unwrap_or(u32::MAX),
            start: Instant::now(),
        }
    }

    fn now_s(&self) -> u32 {
        u32::try_from(self.start.elapsed().as_secs()).unwrap_or(u32::MAX)
    }

    /// The cached heads of (tenant, vertical, person), if present and younger than the TTL.
    pub fn get(&self, tenant: &str, vertical: &str, person: &str) -> Option<Heads> {
        let key = KeyRef {
            tenant,
            vertical,
            person,
        };
        let entry = self.inner.get(&key)?;
        if self.now_s().saturating_sub(entry.loaded_s) >= self.ttl_s {
            self.inner.remove(&key);
            return None;
        }
        Some(entry.heads)
    }

    /// Whether (tenant, vertical, person) is cached and fresh.
    pub fn contains(&self, tenant: &str, vertical: &str, person: &str) -> bool {
        self.get(tenant, vertical, person).is_some()
    }

    /// Caches `heads` for (tenant, vertical, person), replacing any entry.
    pub fn insert(&self, tenant: &str, vertical: &str, person: &str, heads: Heads) {
        if !self.enabled {
            return;
        }
        if let Some(key) = CacheKey::new(tenant, vertical, person) {
            let loaded_s = self.now_s();
            self.inner.insert(key, Entry { loaded_s, heads });
        }
    }

    /// Drops the entry of (tenant, vertical, person).
    pub fn remove(&self, tenant: &str, vertical: &str, person: &str) {
        self.inner.remove(&KeyRef {
            tenant,
            vertical,
            person,
        });
    }

    /// Drops every entry.
    pub fn clear(&self) {
        self.inner.clear();
    }

    /// Entries held (some may be past their TTL until read).
    pub fn len(&self) -> u64 {
        self.inner.len() as u64
    }

    /// Whether the cache holds no entry.
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }
}

/// A set of recently seen tuples of strings, each kept as a 128-bit keyed hash for `ttl_s`
/// seconds (the share ledger's "written within 10 minutes" filter): about 40 bytes an entry
/// whatever the strings. The two SipHash keys are random per process, so ids chosen by a caller
/// cannot be made to collide; an accidental collision (p ≈ n² / 2¹²⁹) would only skip a write.
pub struct SeenSet {
    inner: quick_cache::sync::Cache<u128, u32>,
    hashers: (std::hash::RandomState, std::hash::RandomState),
    ttl_s: u32,
    start: Instant,
}

impl SeenSet {
    /// A set of at most `capacity` (≥ 1) tuples, each remembered `ttl_s` (≥ 1) seconds.
    pub fn new(capacity: u64, ttl_s: u64) -> SeenSet {
        SeenSet {
            inner: quick_cache::sync::Cache::new(
                usize::try_from(capacity.max(1)).unwrap_or(usize::MAX),
            ),
            hashers: (std::hash::RandomState::new(), std::hash::RandomState::new()),
            ttl_s: u32::try_from(ttl_s.max(1)).unwrap_or(u32::MAX),
            start: Instant::now(),
        }
    }

    fn key(&self, parts: &[&str]) -> u128 {
        use std::hash::BuildHasher;
        let a = self.hashers.0.hash_one(parts);
        let b = self.hashers.1.hash_one(parts);
        (u128::from(a) << 64) | u128::from(b)
    }

    fn now_s(&self) -> u32 {
        u32::try_from(self.start.elapsed().as_secs()).unwrap_or(u32::MAX)
    }

    /// Marks `parts` as seen now; `false` when it already was within the TTL.
    pub fn insert(&self, parts: &[&str]) -> bool {
        let k = self.key(parts);
        let now = self.now_s();
        if let Some(at) = self.inner.get(&k)
            && now.saturating_sub(at) < self.ttl_s
        {
            return false;
        }
        self.inner.insert(k, now);
        true
    }

    /// Forgets `parts` (its write failed: the next sighting tries again).
    pub fn remove(&self, parts: &[&str]) {
        self.inner.remove(&self.key(parts));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consent::model::Recorded;

    fn state(purpose: &str) -> HeadState {
        HeadState {
            purpose: purpose.into(),
            status: Recorded::Active,
            active_from_ms: 0,
            active_until_ms: None,
            grace_until_ms: None,
            fields: None,
        }
    }

    /// The three parts decide the key: ("ab","c") and ("a","bc") never meet.
    #[test]
    fn parts_not_joined_bytes_decide_the_key() {
        let c = HeadCache::new(100, 60);
        c.insert("ke", "health", "p-1", heads_of(vec![state("")]));
        assert!(c.get("ke", "health", "p-1").is_some());
        assert!(c.get("k", "ehealth", "p-1").is_none());
        assert!(c.get("ke", "healthp", "-1").is_none());
        assert!(c.get("ke", "health", "p-10").is_none());
        c.remove("ke", "health", "p-1");
        assert!(c.get("ke", "health", "p-1").is_none());
    }

    /// A seen tuple is seen until removed; the parts, not their concatenation, decide.
    #[test]
    fn seen_set_remembers_tuples() {
        let s = SeenSet::new(100, 600);
        assert!(s.insert(&["ke", "r1", "health", "i-1"]));
        assert!(!s.insert(&["ke", "r1", "health", "i-1"]));
        assert!(s.insert(&["ke", "r1h", "ealth", "i-1"]));
        s.remove(&["ke", "r1", "health", "i-1"]);
        assert!(s.insert(&["ke", "r1", "health", "i-1"]));
    }

    /// Persons with no consent share one allocation; capacity 0 caches nothing.
    #[test]
    fn empty_lists_are_shared_and_zero_capacity_caches_nothing() {
        let a = heads_of(Vec::new());
        let b = heads_of(Vec::new());
        assert!(Arc::ptr_eq(&a, &b));
        let c = HeadCache::new(0, 60);
        c.insert("ke", "health", "p-1", a);
        assert!(c.get("ke", "health", "p-1").is_none());
        assert!(c.is_empty());
    }
}
