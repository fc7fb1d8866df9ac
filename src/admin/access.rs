//! The one admin-token check (ADM-1, EXT-5.3-1, EXT-6-1): who an admin caller is and what it may
//! do, for every REST surface (admin, consent, audit) and the live decision-log tail.
//!
//! [`Access::caller`] authenticates the bearer token ([`AdminAuth`]) and resolves the caller's
//! grants: the bootstrap claim mapping ([`super::auth::AdminConfig::claim_permissions`], least
//! privilege: an unmapped role grants nothing; the `admin.audit_roles` hold `audit.read`) plus
//! the role assignments held in the store ([`super::rbac::resolve`]), and the deny rules that
//! apply to the caller. [`Caller::require`] answers one question — may this caller do this
//! permission on this target — and says how (a grant, or the ROOT role, which callers record as
//! `root_bypass`).

use std::sync::Arc;

use axum::http::{HeaderMap, header};

use super::auth::{AdminAuth, AdminPrincipal};
use crate::api::ApiError;
use crate::pipeline::Engine;
use crate::store::Store;

/// Authenticates admin bearer tokens and resolves what their holders may do. Cheap to clone.
#[derive(Clone)]
pub struct Access {
    auth: AdminAuth,
    store: Store,
    engine: Arc<Engine>,
}

impl Access {
    /// `auth` checks tokens; `store` holds role assignments and `engine`'s snapshot the deny
    /// rules that apply to admin callers.
    pub fn new(auth: AdminAuth, store: Store, engine: Arc<Engine>) -> Self {
        Access {
            auth,
            store,
            engine,
        }
    }

    /// The token checker and its configuration (`admin.*`).
    pub fn auth(&self) -> &AdminAuth {
        &self.auth
    }

    /// [`Access::caller`] for the request's `authorization` header.
    ///
    /// Errors: as [`Access::caller`]; a non-ASCII header counts as absent (401).
    pub async fn caller_from(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let authz = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        self.caller(authz).await
    }

    /// The tenants of the enforced policy snapshot (empty before one is loaded).
    pub fn tenants(&self) -> Vec<String> {
        let snap = self.engine.snapshot().load_full();
        snap.as_ref()
            .as_ref()
            .map(|s| s.tenants.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Authenticates `authorization` (`Bearer <admin token>`, `None` when absent) and resolves
    /// the caller's grants (claim mapping plus stored assignments) and the deny rules against it.
    ///
    /// Errors: 401 `UNAUTHENTICATED` (missing, malformed, expired or untrusted token), 503
    /// `DEPENDENCY_UNAVAILABLE` (issuer keys or the policy store unreachable).
    pub async fn caller(&self, authorization: Option<&str>) -> Result<Caller, ApiError> {
        let principal = self.auth.authenticate(authorization).await?;
        super::ledger::caller(&principal.subject, &principal.tenant_id, principal.root);
        let mut grants = Vec::new();
        for role in &principal.roles {
            for perm in self.auth.config().claim_permissions(role) {
                grants.push(Grant {
                    permission: perm,
                    scope: Scope {
                        tenant_id: Some(principal.tenant_id.clone()),
                        ..Scope::default()
                    },
                    via: format!("claim:{role}"),
                });
            }
        }
        let now = crate::api::now_ms();
        let (stored, denies) = super::rbac::resolve(&self.store, &self.engine, &principal, now)
            .await
            .map_err(|e| ApiError::unavailable("policy store", &e))?;
        grants.extend(stored);
        Ok(Caller {
            principal,
            grants,
            denies,
        })
    }
}

/// The scope of a grant, an assignment or a deny rule (ADM-6): `None` matches anything.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(deny_unknown_fields)]
pub struct Scope {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub geo_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vertical_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program_id: Option<String>,
}

/// What an action touches: the tenant, every vertical, and optionally geo and program.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub tenant: &'a str,
    pub verticals: &'a [String],
    pub geo: Option<&'a str>,
    pub program: Option<&'a str>,
}

impl<'a> Target<'a> {
    /// A tenant-wide target.
    pub fn tenant(tenant: &'a str) -> Self {
        Target {
            tenant,
            verticals: &[],
            geo: None,
            program: None,
        }
    }

    /// A target touching `verticals` of `tenant`.
    pub fn verticals(tenant: &'a str, verticals: &'a [String]) -> Self {
        Target {
            verticals,
            ..Target::tenant(tenant)
        }
    }
}

impl Scope {
    /// Whether a grant with this scope covers `t`: tenant equal (a grant always names one);
    /// a vertical-scoped grant covers only targets whose verticals are all that vertical (and
    /// not tenant-wide targets); geo and program likewise.
    pub fn covers(&self, t: &Target) -> bool {
        self.tenant_id.as_deref() == Some(t.tenant)
            && self
                .vertical_id
                .as_ref()
                .is_none_or(|v| !t.verticals.is_empty() && t.verticals.iter().all(|x| x == v))
            && self.geo_id.as_deref().is_none_or(|g| t.geo == Some(g))
            && self
                .program_id
                .as_deref()
                .is_none_or(|p| t.program == Some(p))
    }
}

/// One permission the caller holds, with its scope and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub permission: String,
    pub scope: Scope,
    /// `claim:<role>` (bootstrap mapping) or `assignment:<id>`.
    pub via: String,
}

/// How an allowed action was allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// An ordinary grant (the string is [`Grant::via`]).
    Grant(String),
    /// The ROOT role (break-glass, recorded as `root_bypass`).
    Root,
}

/// An authenticated admin caller and everything it may do.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: AdminPrincipal,
    pub grants: Vec<Grant>,
    /// Deny rules in force against this caller (its user id, groups, roles), ADM-3: they beat
    /// every grant; only ROOT passes them (recorded as `root_bypass`).
    pub denies: Vec<crate::policy::DenyRule>,
}

impl Caller {
    /// The caller's tenant (the tenant whose issuer signed the token).
    pub fn tenant(&self) -> &str {
        &self.principal.tenant_id
    }

    /// Allowed to do `permission` on `target`? ROOT may do everything on every tenant.
    ///
    /// Errors: 403 `FORBIDDEN` naming the permission (ADM-1).
    pub fn require(&self, permission: &str, target: &Target) -> Result<Via, ApiError> {
        if let Some(d) = self
            .denies
            .iter()
            .find(|d| super::rbac::deny_blocks(d, permission, target))
        {
            if self.principal.root {
                super::ledger::root_reached(target.tenant);
                return Ok(Via::Root);
            }
            return Err(ApiError::forbidden(format!(
                "deny rule `{}` forbids `{permission}` to this caller",
                d.id
            )));
        }
        if let Some(g) = self
            .grants
            .iter()
            .find(|g| g.permission == permission && g.scope.covers(target))
        {
            return Ok(Via::Grant(g.via.clone()));
        }
        if self.principal.root {
            super::ledger::root_reached(target.tenant);
            return Ok(Via::Root);
        }
        Err(ApiError::forbidden(format!(
            "this needs the permission `{permission}` for tenant `{}`{}",
            target.tenant,
            if target.verticals.is_empty() {
                String::new()
            } else {
                format!(" and vertical(s) {}", target.verticals.join(", "))
            }
        )))
    }

    /// Holds `permission` in some scope (or is ROOT)? Checked before a handler reads its body or
    /// looks a resource up, so a caller without the permission learns neither the body's field
    /// names nor which ids exist; [`Caller::require`] then checks the precise target.
    ///
    /// Errors: 403 `FORBIDDEN` naming the permission (ADM-1).
    pub fn require_some(&self, permission: &str) -> Result<(), ApiError> {
        if self.principal.root || self.grants.iter().any(|g| g.permission == permission) {
            return Ok(());
        }
        Err(ApiError::forbidden(format!(
            "this needs the permission `{permission}`"
        )))
    }

    /// Whether [`Caller::require`] would allow (no error built).
    pub fn may(&self, permission: &str, target: &Target) -> bool {
        self.require(permission, target).is_ok()
    }

    /// The tenant a request acts on: the caller's own, or any for ROOT (`requested`).
    ///
    /// Errors: 403 when a non-root caller names another tenant.
    pub fn tenant_for<'a>(&'a self, requested: Option<&'a str>) -> Result<&'a str, ApiError> {
        match requested {
            Some(t) if t != self.tenant() && !self.principal.root => {
                super::ledger::other_tenant_named();
                Err(ApiError::forbidden("callers act on their own tenant only"))
            }
            Some(t) => {
                if t != self.tenant() {
                    super::ledger::root_reached(t);
                }
                Ok(t)
            }
            None => Ok(self.tenant()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ErrorCode;
    use axum::http::StatusCode;

    // ADM-1: tenant-scoped grants stay in their tenant; vertical-scoped grants cover only targets
    // entirely inside their vertical; ROOT passes and says so.
    #[test]
    fn scopes_and_root() {
        let vs = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let tenant = Scope {
            tenant_id: Some("ke".into()),
            ..Scope::default()
        };
        let health = Scope {
            vertical_id: Some("health".into()),
            ..tenant.clone()
        };
        let h = vs(&["health"]);
        let he = vs(&["health", "education"]);
        assert!(tenant.covers(&Target::tenant("ke")));
        assert!(!tenant.covers(&Target::tenant("ug")));
        assert!(health.covers(&Target::verticals("ke", &h)));
        assert!(!health.covers(&Target::verticals("ke", &he)));
        assert!(!health.covers(&Target::tenant("ke")));
        let principal = AdminPrincipal {
            subject: "u".into(),
            tenant_id: "ke".into(),
            roles: vec![],
            root: false,
        };
        let mut c = Caller {
            principal,
            grants: vec![Grant {
                permission: "integrations.review".into(),
                scope: health,
                via: "assignment:a-1".into(),
            }],
            denies: vec![],
        };
        assert_eq!(
            c.require("integrations.review", &Target::verticals("ke", &h))
                .unwrap(),
            Via::Grant("assignment:a-1".into())
        );
        let e = c
            .require("integrations.review", &Target::verticals("ke", &he))
            .unwrap_err();
        assert_eq!(
            (e.status(), e.code),
            (StatusCode::FORBIDDEN, ErrorCode::Forbidden)
        );
        assert!(c.tenant_for(Some("ug")).is_err());
        c.principal.root = true;
        assert_eq!(
            c.require("roles.approve", &Target::tenant("ug")).unwrap(),
            Via::Root
        );
        assert_eq!(c.tenant_for(Some("ug")).unwrap(), "ug");
    }
}
