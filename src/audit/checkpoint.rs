//! Signed checkpoints in the C2SP signed-note format (<https://c2sp.org/signed-note>), with the
//! checkpoint body of <https://c2sp.org/tlog-checkpoint> adapted to a hash chain:
//!
//! ```text
//! scp-pep/ke/0193a5c2-…          origin: <key name>/<tenant>/<chain id>
//! 1234                           size: records 1..=1234 are covered
//! 3q2+7w…=                       base64 of the hash of record 1234 (the chain head)
//! time 1763776236123             extension line: Unix milliseconds when it was signed
//!
//! — scp-pep AbCdEf…              signature line: key name, base64(key id ‖ Ed25519 signature)
//! ```
//!
//! Keys use the Go `note` encodings (`PRIVATE+KEY+<name>+<id>+<base64>` and
//! `<name>+<id>+<base64>`), so `golang.org/x/mod/sumdb/note` tools can verify our checkpoints.
//! Signing and note parsing are the `signed_note` crate's.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use signed_note::{Note, StandardSigner, StandardVerifier, VerifierList};

use super::record::Hash;

/// Errors reading keys or checkpoints. Messages never contain key material.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("malformed signer key (expected PRIVATE+KEY+<name>+<id>+<base64>)")]
    SignerKey,
    #[error("malformed verifier key (expected <name>+<id>+<base64>)")]
    VerifierKey,
    #[error("malformed checkpoint: {0}")]
    Malformed(&'static str),
    #[error("checkpoint signature does not verify against any trusted key")]
    BadSignature,
}

/// The Ed25519 signing key of checkpoints, with its public verifier key.
#[derive(Clone)]
pub struct CheckpointSigner {
    signer: StandardSigner,
    verifier_key: String,
    name: String,
}

impl std::fmt::Debug for CheckpointSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointSigner")
            .field("verifier_key", &self.verifier_key)
            .finish_non_exhaustive()
    }
}

impl CheckpointSigner {
    /// Parses a signer key in the Go note format (`PRIVATE+KEY+<name>+<hex id>+<base64>`).
    /// Surrounding whitespace is ignored.
    pub fn from_key(skey: &str) -> Result<Self, CheckpointError> {
        let skey = skey.trim();
        let signer = StandardSigner::new(skey).map_err(|_| CheckpointError::SignerKey)?;
        let mut parts = skey.splitn(5, '+');
        let (_, _, name, _, b64) = (
            parts.next(),
            parts.next(),
            parts.next().ok_or(CheckpointError::SignerKey)?,
            parts.next(),
            parts.next().ok_or(CheckpointError::SignerKey)?,
        );
        let raw = B64.decode(b64).map_err(|_| CheckpointError::SignerKey)?;
        let seed: [u8; 32] = raw
            .get(1..)
            .and_then(|s| s.try_into().ok())
            .ok_or(CheckpointError::SignerKey)?;
        let sk = ed25519_dalek::SigningKey::from_bytes(&seed);
        let verifier_key = signed_note::new_ed25519_verifier_key(name, &sk.verifying_key());
        Ok(CheckpointSigner {
            signer,
            verifier_key,
            name: name.to_owned(),
        })
    }

    /// A fresh key named `name` (a key name has no spaces and no `+`). Returns the signer and
    /// its private key string, which the caller stores or prints once.
    pub fn generate(name: &str) -> Result<(Self, String), CheckpointError> {
        if !signed_note::is_key_name_valid(name) {
            return Err(CheckpointError::SignerKey);
        }
        let (skey, _) = signed_note::generate_key(&mut rand_core::OsRng, name);
        Ok((Self::from_key(&skey)?, skey))
    }

    /// The public verifier key, `<name>+<hex id>+<base64>`: publish it; `audit verify --key` takes it.
    pub fn verifier_key(&self) -> &str {
        &self.verifier_key
    }

    /// The key name, also the first segment of every checkpoint origin.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The 4-byte key id as 8 hex digits.
    pub fn key_id(&self) -> String {
        format!("{:08x}", signed_note::Signer::key_id(&self.signer))
    }

    /// Signs a checkpoint of `tenant`'s chain `chain_id` at `size` records with head `head`.
    /// Returns the whole signed note (UTF-8 text ending in a newline).
    pub fn sign(
        &self,
        tenant: &str,
        chain_id: &str,
        size: u64,
        head: &Hash,
        time_ms: i64,
    ) -> String {
        let text = format!(
            "{}/{}/{}\n{}\n{}\ntime {}\n",
            self.name,
            tenant,
            chain_id,
            size,
            B64.encode(head),
            time_ms
        );
        let signed = Note::new(text.as_bytes(), &[]).and_then(|mut n| {
            n.add_sigs(&[&self.signer])?;
            Ok(n.to_bytes())
        });
        match signed {
            Ok(bytes) => String::from_utf8(bytes).unwrap_or_default(),
            // Note::new only fails on text that is not valid note text; ours always is.
            Err(_) => String::new(),
        }
    }
}

/// A checkpoint read back from its note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Key name of the origin line.
    pub origin_name: String,
    pub tenant_id: String,
    pub chain_id: String,
    pub size: u64,
    pub head: Hash,
    pub time_ms: i64,
}

/// The keys a verifier trusts.
pub struct TrustedKeys {
    verifiers: Vec<StandardVerifier>,
    keys: Vec<String>,
}

impl TrustedKeys {
    /// Parses verifier keys (`<name>+<hex id>+<base64>`).
    pub fn new<S: AsRef<str>>(keys: &[S]) -> Result<Self, CheckpointError> {
        let mut verifiers = Vec::new();
        let mut seen = Vec::new();
        for k in keys {
            let k = k.as_ref().trim();
            let v = StandardVerifier::new(k).map_err(|_| CheckpointError::VerifierKey)?;
            if !seen.iter().any(|s: &String| s == k) {
                seen.push(k.to_owned());
                verifiers.push(v);
            }
        }
        Ok(TrustedKeys {
            verifiers,
            keys: seen,
        })
    }

    /// The keys, as given.
    pub fn keys(&self) -> &[String] {
        &self.keys
    }

    /// Verifies `note`'s signature against the trusted keys and parses its checkpoint body.
    pub fn open(&self, note: &str) -> Result<Checkpoint, CheckpointError> {
        let n = Note::from_bytes(note.as_bytes())
            .map_err(|_| CheckpointError::Malformed("not a signed note"))?;
        let list = VerifierList::new(
            self.verifiers
                .iter()
                .map(|v| Box::new(v.clone()) as Box<dyn signed_note::Verifier>)
                .collect(),
        );
        n.verify(&list).map_err(|_| CheckpointError::BadSignature)?;
        parse_body(n.text())
    }
}

fn parse_body(text: &[u8]) -> Result<Checkpoint, CheckpointError> {
    let text = std::str::from_utf8(text).map_err(|_| CheckpointError::Malformed("not UTF-8"))?;
    let mut lines = text.lines();
    let origin = lines
        .next()
        .ok_or(CheckpointError::Malformed("no origin"))?;
    let mut o = origin.splitn(3, '/');
    let (name, tenant, chain) = match (o.next(), o.next(), o.next()) {
        (Some(n), Some(t), Some(c)) if !n.is_empty() && !t.is_empty() && !c.is_empty() => (n, t, c),
        _ => {
            return Err(CheckpointError::Malformed(
                "origin is not <name>/<tenant>/<chain>",
            ));
        }
    };
    let size = lines
        .next()
        .and_then(|l| l.parse::<u64>().ok())
        .ok_or(CheckpointError::Malformed("size"))?;
    let head: Hash = lines
        .next()
        .and_then(|l| B64.decode(l).ok())
        .and_then(|b| b.try_into().ok())
        .ok_or(CheckpointError::Malformed("head hash"))?;
    let time_ms = lines
        .find_map(|l| l.strip_prefix("time "))
        .and_then(|t| t.parse::<i64>().ok())
        .ok_or(CheckpointError::Malformed("time"))?;
    Ok(Checkpoint {
        origin_name: name.to_owned(),
        tenant_id: tenant.to_owned(),
        chain_id: chain.to_owned(),
        size,
        head,
        time_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Go `note` package's published test key pair (golang.org/x/mod/sumdb/note).
    const GO_SKEY: &str =
        "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const GO_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";

    #[test]
    fn go_note_keys_interoperate() {
        let s = CheckpointSigner::from_key(GO_SKEY).unwrap();
        assert_eq!(s.verifier_key(), GO_VKEY);
        assert_eq!(s.key_id(), "c74f20a3");
    }

    #[test]
    fn sign_then_open_round_trips_and_rejects_tampering() {
        let (s, skey) = CheckpointSigner::generate("scp-pep").unwrap();
        assert!(skey.starts_with("PRIVATE+KEY+scp-pep+"));
        let head = [7u8; 32];
        let note = s.sign("ke", "chain-1", 42, &head, 1_700_000_000_000);
        let keys = TrustedKeys::new(&[s.verifier_key()]).unwrap();
        let cp = keys.open(&note).unwrap();
        assert_eq!(
            (
                cp.tenant_id.as_str(),
                cp.chain_id.as_str(),
                cp.size,
                cp.head,
                cp.time_ms
            ),
            ("ke", "chain-1", 42, head, 1_700_000_000_000)
        );
        let forged = note.replacen("\n42\n", "\n41\n", 1);
        assert!(matches!(
            keys.open(&forged),
            Err(CheckpointError::BadSignature)
        ));
        let (other, _) = CheckpointSigner::generate("scp-pep").unwrap();
        let untrusted = TrustedKeys::new(&[other.verifier_key()]).unwrap();
        assert!(untrusted.open(&note).is_err());
    }

    #[test]
    fn malformed_keys_are_errors_without_key_material() {
        let e = CheckpointSigner::from_key("PRIVATE+KEY+x+00000000+AAAA").unwrap_err();
        assert!(!e.to_string().contains("AAAA"));
        assert!(TrustedKeys::new(&["nope"]).is_err());
    }
}
