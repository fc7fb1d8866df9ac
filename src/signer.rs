//! A throwaway token issuer for `scp-pep demo`, tests and benchmarks: in-memory key pairs
//! (RS256, PS256, ES256, EdDSA), their public JWKS, and tokens with Keycloak's claim shapes.
//!
//! Keys are generated with `aws-lc-rs` at run time and never written to disk. This is not an IdP:
//! production tokens come from the tenant's Keycloak realm.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair};
use base64::Engine as _;
use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

/// A signing key with its `kid`.
pub struct SigningKey {
    pub kid: String,
    pub alg: Algorithm,
    pub encoding: EncodingKey,
    pub public: Jwk,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish()
    }
}

/// Errors from key generation.
#[derive(Debug, thiserror::Error)]
#[error("key generation failed: {0}")]
pub struct KeyGenError(String);

impl SigningKey {
    /// Generates a fresh key for `alg` (RS256/PS256: RSA 2048; ES256: P-256; EdDSA: Ed25519).
    pub fn generate(alg: Algorithm, kid: impl Into<String>) -> Result<SigningKey, KeyGenError> {
        let err = |e: &dyn std::fmt::Display| KeyGenError(e.to_string());
        let encoding = match alg {
            Algorithm::RS256 | Algorithm::PS256 => {
                let kp =
                    aws_lc_rs::rsa::KeyPair::generate(KeySize::Rsa2048).map_err(|e| err(&e))?;
                let der =
                    AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&kp).map_err(|e| err(&e))?;
                // jsonwebtoken wants PKCS#1 DER; its PEM reader unwraps PKCS#8.
                let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
                let lines: Vec<&str> = b64
                    .as_bytes()
                    .chunks(64)
                    .map(|c| std::str::from_utf8(c).unwrap_or(""))
                    .collect();
                let pem = format!(
                    "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
                    lines.join("\n")
                );
                EncodingKey::from_rsa_pem(pem.as_bytes()).map_err(|e| err(&e))?
            }
            Algorithm::ES256 => {
                let rng = aws_lc_rs::rand::SystemRandom::new();
                let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                    .map_err(|e| err(&e))?;
                EncodingKey::from_ec_der(doc.as_ref())
            }
            Algorithm::EdDSA => {
                // PKCS#8 v1: jsonwebtoken derives the public key from the v1 layout.
                let kp = Ed25519KeyPair::generate().map_err(|e| err(&e))?;
                let doc = kp.to_pkcs8v1().map_err(|e| err(&e))?;
                EncodingKey::from_ed_der(doc.as_ref())
            }
            other => return Err(KeyGenError(format!("{other:?} is not supported"))),
        };
        let kid = kid.into();
        let mut public = Jwk::from_encoding_key(&encoding, alg).map_err(|e| err(&e))?;
        public.common.key_id = Some(kid.clone());
        public.common.public_key_use = Some(PublicKeyUse::Signature);
        public.common.key_algorithm = Some(match alg {
            Algorithm::RS256 => KeyAlgorithm::RS256,
            Algorithm::PS256 => KeyAlgorithm::PS256,
            Algorithm::ES256 => KeyAlgorithm::ES256,
            _ => KeyAlgorithm::EdDSA,
        });
        Ok(SigningKey {
            kid,
            alg,
            encoding,
            public,
        })
    }

    /// Signs `claims` with this key (`kid` and `typ: JWT` in the header).
    pub fn sign(&self, claims: &serde_json::Value) -> String {
        let mut h = Header::new(self.alg);
        h.kid = Some(self.kid.clone());
        h.typ = Some("JWT".into());
        jsonwebtoken::encode(&h, claims, &self.encoding).unwrap_or_default()
    }
}

/// The public JWKS document for `keys`.
pub fn jwks_json(keys: &[&SigningKey]) -> String {
    let set = JwkSet {
        keys: keys.iter().map(|k| k.public.clone()).collect(),
    };
    serde_json::to_string(&set).unwrap_or_default()
}

/// What goes into a Keycloak-style client-credentials token.
#[derive(Debug, Clone)]
pub struct ClaimsSpec<'a> {
    pub issuer: &'a str,
    pub audience: &'a str,
    pub client_id: &'a str,
    pub tenant_id: &'a str,
    pub integration_id: &'a str,
    pub verticals: &'a [&'a str],
    /// Space-separated scopes.
    pub scope: &'a str,
    /// Lifetime from now, seconds.
    pub ttl_s: u64,
}

impl ClaimsSpec<'_> {
    /// Claims as Keycloak's client-credentials tokens carry them: `iss`, `aud` (array, like Keycloak
    /// with an audience mapper), `azp`, `exp`, `iat`, `jti`, `tenant_id`, `integration_id`,
    /// `verticals` (array), `scope` (space-separated).
    pub fn claims(&self) -> serde_json::Value {
        let now = crate::authn::now_s();
        serde_json::json!({
            "iss": self.issuer,
            "aud": [self.audience, "account"],
            "azp": self.client_id,
            "sub": format!("service-account-{}", self.client_id),
            "typ": "Bearer",
            "iat": now,
            "exp": now + self.ttl_s,
            "jti": uuid::Uuid::now_v7().to_string(),
            "tenant_id": self.tenant_id,
            "integration_id": self.integration_id,
            "verticals": self.verticals,
            "scope": self.scope,
        })
    }
}
