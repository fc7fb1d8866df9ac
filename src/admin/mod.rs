//! The admin and security API (`spec/004_*`, ADM-*), the integration lifecycle (INT-6.*,
//! INT-4.5-2) and partner onboarding (ONB-*).
//!
//! - [`access`]: the one admin-token check: the caller, its grants and [`access::Caller::require`].
//! - [`auth`]: admin bearer tokens (OIDC, the tenants' issuers) and the bootstrap claim mapping.
//! - [`http`]: the shared state of the admin routes: caller resolution, the audited write path
//!   ([`http::AdminHttp::commit`]), the router and `/openapi.json`.
//! - [`integrations`]: partner integrations from draft to active, credentials, webhooks,
//!   schema mappings, handshake and health (INT-6.*, ONB-*).
//! - [`ledger`]: every root use and cross-tenant attempt of one admin request, recorded.
//! - [`keycloak`]: the provisioner that creates partners' Keycloak clients (ONB-4).

pub mod access;
pub mod auth;
pub mod http;
pub mod integrations;
pub mod keycloak;
pub mod ledger;
pub mod packs;
pub mod rbac;
pub mod tenants;

pub use auth::*;
