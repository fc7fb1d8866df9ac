//! Keyed pseudonyms: the person references and path hashes that records carry instead of personal
//! data (SEC-09, INT-5.3-1, CON-18, INT-8-1).
//!
//! A person reference is `<key id>:<32 hex>`, the first 128 bits of
//! `HMAC-SHA-256(key, "scp-pep/person-ref/v2\n" ‖ tenant ‖ "\n" ‖ person id)`. Without the key a
//! guessable id (a national id, a phone number) cannot be brute-forced back from a record; two
//! deployments with different keys produce unrelated references. The key id is the first 8 hex
//! digits of `SHA-256("scp-pep/person-ref-key-id/v1\n" ‖ key)`, so a rotated key is told apart
//! without configuring a name.
//!
//! Rotation: the current key writes every new reference; previous keys are kept for lookups
//! ([`PersonRefKeys::lookup_refs`]: the share ledger behind frozen-share events finds rows
//! written under any of them, and under the unkeyed references of format-1 deployments).
//!
//! A path hash (`path_hash` of a decision record whose path matched no route) is the same
//! construction with the domain `scp-pep/path-hash/v1\n` over the path's bytes.

use std::fmt;

use aws_lc_rs::hmac;
use sha2::{Digest, Sha256};

/// Shortest accepted key, bytes.
pub const MIN_KEY_BYTES: usize = 32;

/// Name of the generated key in the store's secret table.
pub const STORED_KEY_NAME: &str = "person_ref_key";

const REF_DOMAIN: &[u8] = b"scp-pep/person-ref/v2\n";
const PATH_DOMAIN: &[u8] = b"scp-pep/path-hash/v1\n";
const KEY_ID_DOMAIN: &[u8] = b"scp-pep/person-ref-key-id/v1\n";

struct RefKey {
    id: String,
    key: hmac::Key,
}

impl RefKey {
    fn new(secret: &[u8]) -> Result<RefKey, String> {
        if secret.len() < MIN_KEY_BYTES {
            return Err(format!(
                "a person_ref key must be at least {MIN_KEY_BYTES} bytes (got {})",
                secret.len()
            ));
        }
        Ok(RefKey {
            id: key_id(secret),
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        })
    }

    fn tag(&self, domain: &[u8], parts: &[&[u8]]) -> String {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(domain);
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                ctx.update(b"\n");
            }
            ctx.update(p);
        }
        let tag = ctx.sign();
        let mut s = String::with_capacity(self.id.len() + 33);
        s.push_str(&self.id);
        s.push(':');
        s.push_str(&hex::encode(&tag.as_ref()[..16]));
        s
    }
}

/// The key id of `secret`: 8 hex digits of a domain-separated SHA-256 (not secret).
pub fn key_id(secret: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(KEY_ID_DOMAIN);
    h.update(secret);
    let mut s = hex::encode(h.finalize());
    s.truncate(8);
    s
}

/// The unkeyed reference of format-1 records (32 hex digits of SHA-256); only ever computed to
/// find share-ledger rows written before keyed references, never written anew.
pub fn legacy_person_ref(tenant: &str, person: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"scp-pep/person-ref/v1\n");
    h.update(tenant.as_bytes());
    h.update(b"\n");
    h.update(person.as_bytes());
    let mut s = hex::encode(h.finalize());
    s.truncate(32);
    s
}

/// The current person-reference key and the previous ones kept for lookups.
pub struct PersonRefKeys {
    current: RefKey,
    previous: Vec<RefKey>,
}

impl fmt::Debug for PersonRefKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key material.
        f.debug_struct("PersonRefKeys")
            .field("current", &self.current.id)
            .field(
                "previous",
                &self.previous.iter().map(|k| &k.id).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl PersonRefKeys {
    /// Keys from secrets (each at least [`MIN_KEY_BYTES`]); previous keys equal to the current one
    /// or to each other are dropped.
    pub fn new(current: &[u8], previous: &[&[u8]]) -> Result<PersonRefKeys, String> {
        let current = RefKey::new(current)?;
        let mut prev: Vec<RefKey> = Vec::new();
        for p in previous {
            let k = RefKey::new(p)?;
            if k.id != current.id && !prev.iter().any(|x| x.id == k.id) {
                prev.push(k);
            }
        }
        Ok(PersonRefKeys {
            current,
            previous: prev,
        })
    }

    /// A random key that lives as long as the process (tests, tools that write no records).
    pub fn ephemeral() -> PersonRefKeys {
        let secret = random_secret();
        PersonRefKeys::new(secret.as_bytes(), &[]).expect("64 hex digits are a valid key")
    }

    /// The id of the current key (appears before `:` in every reference).
    pub fn key_id(&self) -> &str {
        &self.current.id
    }

    /// Ids of the previous keys.
    pub fn previous_key_ids(&self) -> Vec<&str> {
        self.previous.iter().map(|k| k.id.as_str()).collect()
    }

    /// The reference of `person` of `tenant` under the current key: `<key id>:<32 hex>`.
    pub fn person_ref(&self, tenant: &str, person: &str) -> String {
        self.current
            .tag(REF_DOMAIN, &[tenant.as_bytes(), person.as_bytes()])
    }

    /// Every reference `person` may have been recorded under: current key first, then the
    /// previous keys, then the unkeyed format-1 reference.
    pub fn lookup_refs(&self, tenant: &str, person: &str) -> Vec<String> {
        let mut v = Vec::with_capacity(self.previous.len() + 2);
        v.push(self.person_ref(tenant, person));
        for k in &self.previous {
            v.push(k.tag(REF_DOMAIN, &[tenant.as_bytes(), person.as_bytes()]));
        }
        v.push(legacy_person_ref(tenant, person));
        v
    }

    /// The keyed hash of a request path (records of paths that matched no route).
    pub fn path_hash(&self, path: &str) -> String {
        self.current.tag(PATH_DOMAIN, &[path.as_bytes()])
    }
}

/// 32 random bytes as 64 hex digits.
pub fn random_secret() -> String {
    use rand_core::RngCore;
    let mut b = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

fn read_key_file(p: &std::path::Path) -> anyhow::Result<String> {
    let s = std::fs::read_to_string(p)
        .map_err(|e| anyhow::anyhow!("audit.person_ref key file `{}`: {e}", p.display()))?;
    Ok(s.trim().to_owned())
}

/// The keys of this deployment (`[audit] person_ref_key`, `person_ref_key_file`,
/// `person_ref_previous_keys`, `person_ref_previous_key_files`; env
/// `SCP_PEP_AUDIT__PERSON_REF_KEY`).
///
/// Without a configured key, the key generated at the first start and kept in the store (table
/// `pep_secrets`) is used, so every replica on the store and every restart produce the same
/// references; a warning says production should configure one (whoever reads the store can read
/// that key). When a key is configured and the store also holds a generated one, the generated
/// one becomes a previous key, so rows written before still match.
pub async fn resolve(
    cfg: &crate::config::AuditConfig,
    store: &crate::store::Store,
) -> anyhow::Result<PersonRefKeys> {
    let configured = match (&cfg.person_ref_key, &cfg.person_ref_key_file) {
        (Some(_), Some(_)) => anyhow::bail!(
            "audit.person_ref_key and audit.person_ref_key_file are both set; set one"
        ),
        (Some(k), None) => Some(k.trim().to_owned()),
        (None, Some(f)) => Some(read_key_file(f)?),
        (None, None) => None,
    };
    let mut previous: Vec<String> = cfg
        .person_ref_previous_keys
        .iter()
        .map(|k| k.trim().to_owned())
        .collect();
    for f in &cfg.person_ref_previous_key_files {
        previous.push(read_key_file(f)?);
    }
    let current = match configured {
        Some(k) => {
            if let Some(stored) = store.secret_get(STORED_KEY_NAME).await? {
                previous.push(stored);
            }
            k
        }
        None => {
            let k = store
                .secret_get_or_insert(STORED_KEY_NAME, &random_secret())
                .await?;
            tracing::warn!(
                "no audit.person_ref_key configured: person references use a key generated on first start and kept in the store; production should configure one (audit.person_ref_key_file or SCP_PEP_AUDIT__PERSON_REF_KEY)"
            );
            k
        }
    };
    let prev: Vec<&[u8]> = previous.iter().map(|s| s.as_bytes()).collect();
    PersonRefKeys::new(current.as_bytes(), &prev).map_err(|e| anyhow::anyhow!("audit: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &[u8] = b"0123456789abcdef0123456789abcdef-one";
    const K2: &[u8] = b"0123456789abcdef0123456789abcdef-two";

    /// SEC-09, CON-18: references are keyed: different keys give different references, the key
    /// id prefixes every reference, the same key is stable, the tenant is bound.
    #[test]
    fn keyed_refs_differ_per_key_and_are_stable() {
        let a = PersonRefKeys::new(K1, &[]).unwrap();
        let b = PersonRefKeys::new(K2, &[]).unwrap();
        let ra = a.person_ref("ke", "pid-7f3a91c2");
        let rb = b.person_ref("ke", "pid-7f3a91c2");
        assert_ne!(ra, rb);
        assert_ne!(ra[9..], rb[9..]);
        assert_eq!(ra, a.person_ref("ke", "pid-7f3a91c2"));
        assert_ne!(ra, a.person_ref("ug", "pid-7f3a91c2"));
        assert!(ra.starts_with(&format!("{}:", a.key_id())));
        assert_eq!(ra.len(), 8 + 1 + 32);
        assert!(!ra.contains("pid-7f3a91c2"));
        assert_ne!(ra[9..], legacy_person_ref("ke", "pid-7f3a91c2"));
        assert_ne!(a.path_hash("/x"), b.path_hash("/x"));
        assert!(PersonRefKeys::new(b"short", &[]).is_err());
        assert!(!format!("{a:?}").contains("0123456789"));
    }

    /// SEC-09, CON-18: after a rotation the lookups still find references written under the
    /// previous key and the unkeyed format-1 reference.
    #[test]
    fn rotation_keeps_old_refs_findable() {
        let old = PersonRefKeys::new(K1, &[]).unwrap();
        let new = PersonRefKeys::new(K2, &[K1]).unwrap();
        let written = old.person_ref("ke", "p-1");
        let refs = new.lookup_refs("ke", "p-1");
        assert_eq!(refs[0], new.person_ref("ke", "p-1"));
        assert!(refs.contains(&written));
        assert!(refs.contains(&legacy_person_ref("ke", "p-1")));
        assert_eq!(new.previous_key_ids(), vec![old.key_id()]);
    }
}
