//! Admin caller authentication for the audit endpoints (EXT-6-1, EXT-5.3-1).
//!
//! Admin callers present an OIDC bearer token from their tenant's issuer (the same JWKS machinery
//! as partner tokens, a separate audience: `admin.audience`). Their roles come from a configured
//! claim (`admin.roles_claim`, a dotted path such as Keycloak's `realm_access.roles`); this is the
//! bootstrap mapping of ADM role assignments, least privilege by default: a token without one of
//! the configured roles may do nothing.
//!
//! - `admin.audit_roles` (default `scp-auditor`, `scp-security`): these roles hold the
//!   `audit.read` permission in the token's own tenant (export, tail, unmasked consent reads);
//!   role assignments in the store can grant `audit.read` too, and deny rules can take it away.
//! - `admin.root_role` (default `scp-root`): break-glass, every tenant; every use is recorded as a
//!   `root_bypass` audit event by the caller.

use std::sync::Arc;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;

use crate::authn::jwks::{JwksCache, KeyError};
use crate::pipeline::SnapshotSlot;

/// Admin settings (`[admin]`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Audience admin tokens must carry.
    pub audience: String,
    /// Dotted path of the roles claim (an array of strings).
    pub roles_claim: String,
    /// Roles that hold `audit.read` (read their own tenant's audit log) through the claim mapping.
    pub audit_roles: Vec<String>,
    /// Break-glass role: every tenant, always audited.
    pub root_role: String,
    /// Bootstrap mapping of token roles to catalog permissions (EXT-5.3-1): a role not listed
    /// grants nothing. Keys are role names in the roles claim; values are permission ids of
    /// [`super::http::PERMISSIONS`]. The defaults map the SCP personas.
    pub claim_permissions: std::collections::BTreeMap<String, Vec<String>>,
    /// The Keycloak admin API integrations are provisioned through (ONB-4); `None`: provisioning
    /// and secret rotation answer 503 `PROVISIONER_UNAVAILABLE` (fail closed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keycloak: Option<super::keycloak::KeycloakConfig>,
    /// Accept `http://` webhook URLs to loopback hosts (local development and tests only); other
    /// webhook URLs must be `https://` (ONB-5).
    pub webhook_allow_http_loopback: bool,
}

/// The default bootstrap mapping: SCP personas → permissions.
fn default_claim_permissions() -> std::collections::BTreeMap<String, Vec<String>> {
    let m: &[(&str, &[&str])] = &[
        (
            "scp-integration-manager",
            &[
                "integrations.read",
                "integrations.create",
                "integrations.provision",
                "integrations.credentials",
                "integrations.mappings",
            ],
        ),
        (
            "scp-vertical-owner",
            &[
                "integrations.read",
                "integrations.review",
                "policy_packs.read",
                "policy_packs.write",
                "policy_packs.review",
            ],
        ),
        (
            "scp-tenant-admin",
            &[
                "integrations.read",
                "integrations.legal_review",
                "integrations.approve",
                "integrations.operate",
                "integrations.webhooks",
                "roles.read",
                "roles.write",
                "roles.review",
                "roles.approve",
                "groups.write",
                "assignments.write",
                "deny_rules.read",
                "deny_rules.write",
                "policy_packs.read",
                "policy_packs.approve",
                "policy_packs.operate",
                "authz.evaluate",
            ],
        ),
        (
            "scp-umbrella-authority",
            &[
                "integrations.read",
                "integrations.approve",
                "integrations.approve_cross_tenant",
                "tenants.consent_settings",
                "policy_packs.read",
                "policy_packs.approve",
            ],
        ),
        (
            "scp-security",
            &[
                "integrations.read",
                "integrations.operate",
                "deny_rules.read",
                "deny_rules.write",
                "roles.read",
                "policy_packs.read",
                "authz.evaluate",
                "audit.read",
            ],
        ),
        (
            "scp-auditor",
            &[
                "integrations.read",
                "roles.read",
                "deny_rules.read",
                "policy_packs.read",
                "audit.read",
            ],
        ),
    ];
    m.iter()
        .map(|(r, ps)| {
            (
                (*r).to_owned(),
                ps.iter().map(|p| (*p).to_owned()).collect(),
            )
        })
        .collect()
}

impl AdminConfig {
    /// Permissions the bootstrap mapping gives token role `role` (empty when unmapped); a role
    /// listed in `audit_roles` also holds `audit.read` (EXT-6-1).
    pub fn claim_permissions(&self, role: &str) -> Vec<String> {
        let mut perms = self
            .claim_permissions
            .get(role)
            .cloned()
            .unwrap_or_default();
        if self.audit_roles.iter().any(|r| r == role) && !perms.iter().any(|p| p == "audit.read") {
            perms.push("audit.read".to_owned());
        }
        perms
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            audience: "scp-pep-admin".into(),
            roles_claim: "realm_access.roles".into(),
            audit_roles: vec!["scp-auditor".into(), "scp-security".into()],
            root_role: "scp-root".into(),
            claim_permissions: default_claim_permissions(),
            keycloak: None,
            webhook_allow_http_loopback: false,
        }
    }
}

/// An authenticated admin caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminPrincipal {
    /// `sub` (else `preferred_username`).
    pub subject: String,
    /// The tenant whose issuer signed the token.
    pub tenant_id: String,
    pub roles: Vec<String>,
    /// Holds the root role.
    pub root: bool,
}

/// Why an admin call was refused. `code()` is the machine code of the JSON error body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminAuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("admin token rejected: {0}")]
    Invalid(&'static str),
    #[error("the issuer's signing keys are unavailable")]
    Unavailable,
    #[error("the caller lacks the role this needs")]
    Forbidden,
}

impl AdminAuthError {
    /// `UNAUTHENTICATED` (401), `FORBIDDEN` (403) or `DEPENDENCY_UNAVAILABLE` (503).
    pub fn code(&self) -> &'static str {
        match self {
            AdminAuthError::Missing | AdminAuthError::Invalid(_) => "UNAUTHENTICATED",
            AdminAuthError::Forbidden => "FORBIDDEN",
            AdminAuthError::Unavailable => "DEPENDENCY_UNAVAILABLE",
        }
    }

    /// HTTP status of [`Self::code`].
    pub fn http_status(&self) -> u16 {
        match self {
            AdminAuthError::Missing | AdminAuthError::Invalid(_) => 401,
            AdminAuthError::Forbidden => 403,
            AdminAuthError::Unavailable => 503,
        }
    }
}

/// Verifies admin tokens against the tenants of the current policy snapshot.
#[derive(Clone)]
pub struct AdminAuth {
    jwks: JwksCache,
    snapshot: SnapshotSlot,
    config: Arc<AdminConfig>,
    algorithms: Arc<Vec<Algorithm>>,
    leeway_s: u64,
}

#[derive(Deserialize)]
struct Header {
    alg: Option<String>,
    kid: Option<String>,
}

#[derive(Deserialize)]
struct Iss {
    iss: Option<String>,
}

impl AdminAuth {
    pub fn new(
        jwks: JwksCache,
        snapshot: SnapshotSlot,
        config: AdminConfig,
        algorithms: Vec<Algorithm>,
        leeway_s: u64,
    ) -> Self {
        AdminAuth {
            jwks,
            snapshot,
            config: Arc::new(config),
            algorithms: Arc::new(algorithms),
            leeway_s,
        }
    }

    /// The admin settings.
    pub fn config(&self) -> &AdminConfig {
        &self.config
    }

    /// Verifies an `authorization` header value (`Bearer <jwt>`), returning the caller.
    ///
    /// Errors: [`AdminAuthError::Missing`] / [`AdminAuthError::Invalid`] (401),
    /// [`AdminAuthError::Unavailable`] (503). What the caller may do is
    /// [`super::access::Access::caller`]'s business.
    pub async fn authenticate(
        &self,
        authorization: Option<&str>,
    ) -> Result<AdminPrincipal, AdminAuthError> {
        let token = authorization
            .and_then(|h| {
                let (scheme, rest) = h.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .filter(|t| !t.is_empty())
            .ok_or(AdminAuthError::Missing)?;
        let inv = AdminAuthError::Invalid;
        let h = token.split('.').next().ok_or(inv("malformed"))?;
        let header: Header = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(inv("malformed header"))?;
        let alg = header
            .alg
            .as_deref()
            .and_then(|a| a.parse::<Algorithm>().ok())
            .filter(|a| self.algorithms.contains(a))
            .ok_or(inv("algorithm not allowed"))?;
        let kid = header
            .kid
            .filter(|k| !k.is_empty() && k.len() <= 256)
            .ok_or(inv("no kid"))?;
        let iss = jsonwebtoken::dangerous::insecure_decode_claims::<Iss>(token)
            .ok()
            .and_then(|c| c.iss)
            .ok_or(inv("no iss"))?;
        let snap = self.snapshot.load_full();
        let snap = snap.as_ref().as_ref().ok_or(AdminAuthError::Unavailable)?;
        let tenant_id = snap.issuers.get(&iss).ok_or(inv("unknown issuer"))?.clone();
        let tenant = snap.tenants.get(&tenant_id).ok_or(inv("unknown issuer"))?;
        let key = match self.jwks.key(&tenant.tenant.jwks, &kid).await {
            Ok(k) => k,
            Err(KeyError::Unknown) => return Err(inv("unknown kid")),
            Err(KeyError::Unavailable(_)) => return Err(AdminAuthError::Unavailable),
        };
        if key.alg.is_some_and(|a| a != alg) {
            return Err(inv("algorithm does not fit the key"));
        }
        let mut v = Validation::new(alg);
        v.leeway = self.leeway_s;
        v.validate_nbf = true;
        v.set_issuer(&[iss.as_str()]);
        v.set_audience(&[self.config.audience.as_str()]);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        let claims = jsonwebtoken::decode::<serde_json::Value>(token, &key.key, &v)
            .map_err(|_| inv("signature, audience or validity"))?
            .claims;
        let subject = claims
            .get("sub")
            .or_else(|| claims.get("preferred_username"))
            .and_then(|s| s.as_str())
            .filter(|s| !s.is_empty())
            .ok_or(inv("no sub"))?
            .to_owned();
        let mut node = Some(&claims);
        for part in self.config.roles_claim.split('.') {
            node = node.and_then(|n| n.get(part));
        }
        let roles: Vec<String> = node
            .and_then(|r| r.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|r| r.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let root = roles.iter().any(|r| *r == self.config.root_role);
        Ok(AdminPrincipal {
            subject,
            tenant_id,
            roles,
            root,
        })
    }
}
