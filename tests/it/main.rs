//! All integration tests in one binary, so the crate is linked once (`cargo nextest run` runs
//! each test in its own process; `cargo test` runs them as threads of this one).

#[path = "../common/mod.rs"]
#[macro_use]
mod common;

mod admin_api;
mod admin_integrations;
mod admin_packs;
mod admin_rbac;
mod audit;
mod audit_crash;
mod audit_http;
mod audit_outage;
mod audit_tail;
mod cli;
mod consent_api;
mod consent_enforce;
mod consent_notify;
mod consent_store;
mod corpus;
mod envoy_e2e;
mod jwks;
mod oidc_e2e;
mod pii;
mod store;
