//! All integration tests in one binary, so the crate is linked once.
//!
//! Run them with `cargo nextest run` (what `scripts/test` does): nextest gives every test its own
//! process. Some tests read process-wide state — the Prometheus counters of `/metrics` (e.g. the
//! JWKS fetch count in `oidc_e2e`) and the captured process log in `pii` — and count exactly;
//! under plain `cargo test` all tests share one process and those counts can include other
//! tests' work.

#[path = "../common/mod.rs"]
#[macro_use]
mod common;

mod admin_api;
mod admin_integrations;
mod admin_isolation;
mod admin_ledger;
mod admin_packs;
mod admin_rbac;
mod audit;
mod audit_crash;
mod audit_http;
mod audit_outage;
mod audit_tail;
mod boundaries;
mod cli;
mod consent_api;
mod consent_enforce;
mod consent_notify;
mod consent_store;
mod corpus;
mod deploy;
mod envoy_e2e;
mod explain;
mod fuzz_api;
mod fuzz_corpus;
mod hardening;
mod health;
mod http_app;
mod http_authz_e2e;
mod impact;
mod jwks;
mod keycloak_sync;
mod oidc_e2e;
mod otel;
mod payload;
mod pii;
mod rate_limit_redis;
mod resources;
mod shadow;
mod staff;
mod store;
mod tls;
mod webhooks;
