//! Stage 1 of the pipeline: bearer-token authentication (INT-4.2-1, INT-4.2-3, INT-4.2-4,
//! ONB-SEC-01, EXT-5.2-1).
//!
//! [`Authenticator::authenticate`] turns the raw bearer value into a [`VerifiedToken`] or a
//! [`Denial`]. Verification: algorithm allow-list (never `none` or HS*), `kid` → key from the
//! issuer's JWKS ([`jwks::JwksCache`]), signature, `iss` exact per tenant, `aud`, `exp`/`nbf` with
//! leeway, then Keycloak's claim shapes (`aud` string or array, `azp`/`client_id`, `verticals`
//! array, `scope` space-separated) and the required claims `tenant_id`, `integration_id`,
//! `verticals`. Verified tokens are cached (key: SHA-256 of the token) until their `exp`.
//!
//! The only I/O is the JWKS fetch; everything else is pure.

pub mod jwks;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::decision::{Denial, DenyCode};
use crate::policy::PolicySnapshot;
use jwks::{JwksCache, KeyError};

/// The algorithms scp-pep accepts by default (asymmetric only).
pub const DEFAULT_ALGORITHMS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::PS256,
    Algorithm::ES256,
    Algorithm::EdDSA,
];

/// Parses an algorithm name from configuration; only asymmetric algorithms are accepted.
pub fn parse_algorithm(name: &str) -> Result<Algorithm, String> {
    let alg: Algorithm = name
        .parse()
        .map_err(|_| format!("unknown JWS algorithm `{name}`"))?;
    if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
        return Err(format!(
            "`{name}`: symmetric algorithms are never accepted (ONB-SEC-01)"
        ));
    }
    Ok(alg)
}

/// What a verified token says about its caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    /// The tenant whose issuer signed the token (equals the `tenant_id` claim).
    pub tenant_id: String,
    pub integration_id: String,
    /// The `verticals` claim.
    pub verticals: Vec<String>,
    /// The `scope` claim, split on spaces.
    pub scopes: HashSet<String>,
    /// `azp`, else `client_id`.
    pub client_id: Option<String>,
    /// `exp`, seconds since the epoch.
    pub exp: u64,
    /// `cnf.x5t#S256` (RFC 8705): base64url SHA-256 of the bound client certificate.
    pub cnf_x5t_s256: Option<String>,
    /// [`JwksCache::revocation_epoch`] when the signature was checked.
    pub key_epoch: u64,
}

#[derive(Deserialize)]
struct RawHeader {
    alg: Option<serde_json::Value>,
    kid: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct IssOnly {
    iss: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawClaims {
    exp: u64,
    tenant_id: Option<serde_json::Value>,
    integration_id: Option<serde_json::Value>,
    verticals: Option<serde_json::Value>,
    scope: Option<serde_json::Value>,
    azp: Option<String>,
    client_id: Option<String>,
    cnf: Option<Cnf>,
}

#[derive(Deserialize)]
struct Cnf {
    #[serde(rename = "x5t#S256")]
    x5t_s256: Option<String>,
}

/// Authentication settings.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// Clock-skew allowance for `exp`/`nbf`, seconds.
    pub leeway_s: u64,
    pub algorithms: Vec<Algorithm>,
    /// Verified-token cache size, entries.
    pub token_cache_entries: u64,
}

/// Verifies bearer tokens. Cheap to clone.
#[derive(Clone)]
pub struct Authenticator {
    jwks: JwksCache,
    cache: moka::sync::Cache<[u8; 32], Arc<VerifiedToken>>,
    settings: Arc<AuthSettings>,
    cache_hits: metrics::Counter,
    cache_misses: metrics::Counter,
}

struct UntilExp;

impl moka::Expiry<[u8; 32], Arc<VerifiedToken>> for UntilExp {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        value: &Arc<VerifiedToken>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(Duration::from_secs(value.exp.saturating_sub(now_s())))
    }
}

/// Seconds since the Unix epoch.
pub fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Authenticator {
    pub fn new(jwks: JwksCache, settings: AuthSettings) -> Self {
        let cache = moka::sync::Cache::builder()
            .max_capacity(settings.token_cache_entries)
            .expire_after(UntilExp)
            .build();
        Authenticator {
            jwks,
            cache,
            settings: Arc::new(settings),
            cache_hits: metrics::counter!("scp_pep_token_cache_total", "result" => "hit"),
            cache_misses: metrics::counter!("scp_pep_token_cache_total", "result" => "miss"),
        }
    }

    /// The JWKS cache (shared with start-up prefetch).
    pub fn jwks(&self) -> &JwksCache {
        &self.jwks
    }

    /// Drops every cached verification (called when the policy version changes, so a changed
    /// issuer or audience takes effect at once).
    pub fn invalidate_all(&self) {
        self.cache.invalidate_all();
    }

    /// Verifies `token` (the bearer value, without `Bearer `) against the tenants of `snapshot`.
    ///
    /// Returns the verified claims, or a denial with a `TOKEN_*` code (401) or
    /// `DEPENDENCY_UNAVAILABLE` (503) when the issuer's keys were never loadable.
    pub async fn authenticate(
        &self,
        snapshot: &PolicySnapshot,
        token: &str,
    ) -> Result<Arc<VerifiedToken>, Denial> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(v) = self.cache.get(&digest) {
            // The cache entry expires at `exp`; leeway is only ever granted at verification time.
            if v.exp + self.settings.leeway_s > now_s()
                && v.key_epoch == self.jwks.revocation_epoch()
                && snapshot.tenants.contains_key(&v.tenant_id)
            {
                self.cache_hits.increment(1);
                return Ok(v);
            }
        }
        self.cache_misses.increment(1);
        let verified = Arc::new(self.verify(snapshot, token).await?);
        self.cache.insert(digest, verified.clone());
        Ok(verified)
    }

    async fn verify(
        &self,
        snapshot: &PolicySnapshot,
        token: &str,
    ) -> Result<VerifiedToken, Denial> {
        let deny = |code, msg: &str| Denial::new(code, msg);
        let mut parts = token.split('.');
        let (Some(h), Some(_), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(deny(
                DenyCode::TokenMalformed,
                "bearer token is not a JWS compact serialization",
            ));
        };
        let header_bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(h)
            .map_err(|_| deny(DenyCode::TokenMalformed, "token header is not base64url"))?;
        let header: RawHeader = serde_json::from_slice(&header_bytes).map_err(|_| {
            deny(
                DenyCode::TokenMalformed,
                "token header is not a JSON object",
            )
        })?;
        let alg_name = header.alg.as_ref().and_then(|a| a.as_str()).unwrap_or("");
        let alg = alg_name
            .parse::<Algorithm>()
            .ok()
            .filter(|a| self.settings.algorithms.contains(a))
            .ok_or_else(|| {
                deny(
                    DenyCode::TokenAlgorithmNotAllowed,
                    "token algorithm is not allowed (accepted: asymmetric algorithms of the allow-list)",
                )
            })?;
        let kid = header
            .kid
            .as_ref()
            .and_then(|k| k.as_str())
            .filter(|k| !k.is_empty() && k.len() <= 256)
            .ok_or_else(|| deny(DenyCode::TokenMalformed, "token header has no `kid`"))?;

        // The issuer selects the tenant and so the key set; the signature check below then
        // requires the same `iss` exactly.
        let iss: IssOnly =
            jsonwebtoken::dangerous::insecure_decode_claims(token).map_err(|_| {
                deny(
                    DenyCode::TokenMalformed,
                    "token payload is not a JSON object",
                )
            })?;
        let iss = iss
            .iss
            .as_ref()
            .and_then(|i| i.as_str())
            .ok_or_else(|| deny(DenyCode::TokenIssuerUnknown, "token has no `iss`"))?;
        let tenant_id = snapshot.issuers.get(iss).ok_or_else(|| {
            deny(
                DenyCode::TokenIssuerUnknown,
                "token issuer is not a tenant's issuer",
            )
        })?;
        let tenant = snapshot.tenants.get(tenant_id).ok_or_else(|| {
            deny(
                DenyCode::TokenIssuerUnknown,
                "token issuer is not a tenant's issuer",
            )
        })?;

        // Read before the key: a revocation racing with this verification forces a re-check later.
        let key_epoch = self.jwks.revocation_epoch();
        let key = match self.jwks.key(&tenant.tenant.jwks, kid).await {
            Ok(k) => k,
            Err(KeyError::Unknown) => {
                return Err(deny(
                    DenyCode::TokenKeyUnknown,
                    "no key with the token's `kid` in the issuer's JWKS",
                ));
            }
            Err(KeyError::Unavailable(_)) => {
                return Err(Denial::retry_after(
                    DenyCode::DependencyUnavailable,
                    "the issuer's signing keys are unavailable",
                    5,
                ));
            }
        };
        if key.alg.is_some_and(|a| a != alg) {
            return Err(deny(
                DenyCode::TokenAlgorithmNotAllowed,
                "token algorithm does not match the key's `alg`",
            ));
        }

        let mut v = Validation::new(alg);
        v.leeway = self.settings.leeway_s;
        v.validate_exp = true;
        v.validate_nbf = true;
        v.set_issuer(&[iss]);
        v.set_audience(&[tenant.audience.as_str()]);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = jsonwebtoken::decode::<RawClaims>(token, &key.key, &v).map_err(|e| {
            let (code, msg) = match e.kind() {
                ErrorKind::ExpiredSignature => (DenyCode::TokenExpired, "token has expired"),
                ErrorKind::ImmatureSignature => (DenyCode::TokenNotYetValid, "token is not yet valid (`nbf`)"),
                ErrorKind::InvalidAudience => (DenyCode::TokenAudienceInvalid, "token audience does not include scp-pep"),
                ErrorKind::InvalidIssuer => (DenyCode::TokenIssuerUnknown, "token issuer mismatch"),
                ErrorKind::MissingRequiredClaim(c) if c == "aud" => {
                    (DenyCode::TokenAudienceInvalid, "token has no `aud`")
                }
                ErrorKind::MissingRequiredClaim(_) | ErrorKind::InvalidClaimFormat(_) | ErrorKind::Json(_) => {
                    (DenyCode::TokenClaimsMissing, "token lacks a required registered claim (`exp`, `iss`, `aud`) or has one of the wrong type")
                }
                ErrorKind::InvalidAlgorithm => (DenyCode::TokenAlgorithmNotAllowed, "token algorithm does not fit the key"),
                ErrorKind::InvalidSignature => (DenyCode::TokenSignatureInvalid, "token signature does not verify"),
                _ => (DenyCode::TokenMalformed, "token cannot be decoded"),
            };
            deny(code, msg)
        })?;
        let c = data.claims;

        let string_claim = |v: &Option<serde_json::Value>, name: &str| -> Result<String, Denial> {
            match v {
                Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(s.clone()),
                _ => Err(deny(
                    DenyCode::TokenClaimsMissing,
                    &format!("token lacks claim `{name}` (a non-empty string)"),
                )),
            }
        };
        let claim_tenant = string_claim(&c.tenant_id, "tenant_id")?;
        let integration_id = string_claim(&c.integration_id, "integration_id")?;
        let verticals = match &c.verticals {
            Some(serde_json::Value::Array(a)) if !a.is_empty() => a
                .iter()
                .map(|v| v.as_str().filter(|s| !s.is_empty()).map(str::to_owned))
                .collect::<Option<Vec<_>>>(),
            _ => None,
        }
        .ok_or_else(|| {
            deny(
                DenyCode::TokenClaimsMissing,
                "token lacks claim `verticals` (a non-empty array of strings)",
            )
        })?;
        if &claim_tenant != tenant_id {
            return Err(deny(
                DenyCode::TokenClaimsInvalid,
                "token `tenant_id` is not the tenant of its issuer",
            ));
        }
        let scopes = match &c.scope {
            Some(serde_json::Value::String(s)) => s
                .split(' ')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            None => HashSet::new(),
            Some(_) => {
                return Err(deny(
                    DenyCode::TokenClaimsInvalid,
                    "token `scope` is not a space-separated string",
                ));
            }
        };
        Ok(VerifiedToken {
            tenant_id: claim_tenant,
            integration_id,
            verticals,
            scopes,
            client_id: c.azp.or(c.client_id),
            exp: c.exp,
            cnf_x5t_s256: c.cnf.and_then(|c| c.x5t_s256),
            key_epoch,
        })
    }
}
