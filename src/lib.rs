//! # scp-pep
//!
//! The policy enforcement point of the Smart Community Platform: an Envoy external-authorization
//! server (`envoy.service.auth.v3.Authorization/Check`) that authenticates partner requests with
//! Keycloak-issued OIDC tokens and decides allow or deny from a policy store (INT-4.1-4).
//!
//! Layout (one module, one concern):
//! - [`decision`]: the denial-code catalogue and the `Decision` value.
//! - [`policy`]: policy documents, file loading and validation, the compiled snapshot.
//! - [`path`]: request-path normalization (ambiguous paths are rejected).
//! - [`authn`]: JWT verification and the JWKS cache.
//! - [`pipeline`]: the decision pipeline (DESIGN.md stages 1–9).
//! - [`consent`]: the consent registry, its REST API, stage-7 enforcement and notifications.
//! - [`limits`]: GCRA rate limits and daily quotas.
//! - [`sink`]: the `DecisionSink` seam and the JSON-lines decision log.
//! - [`store`]: SQLite / PostgreSQL policy store.
//! - [`audit`]: the tamper-evident audit log (hash chains, group commit, signed checkpoints,
//!   export, verification, retention); [`tail`]: its live gRPC tail; [`admin`]: admin callers.
//! - [`proto`]: generated code of scp-pep's own gRPC services (`proto/`).
//! - [`grpc`]: the Envoy ext_authz adapter.
//! - [`feed`]: the policy change feed (store → engine).
//! - [`server`]: wiring, HTTP ops endpoints; [`listen`]: connection limits and timeouts.
//! - [`config`], [`cli`], [`check`], [`demo`], [`signer`]: configuration and the command line.
#![forbid(unsafe_code)]

pub mod admin;
pub mod api;
pub mod audit;
pub mod authn;
pub mod check;
pub mod cli;
pub mod config;
pub mod consent;
pub mod decision;
pub mod demo;
pub mod explain;
pub mod feed;
pub mod fuzz;
pub mod grpc;
pub mod health;
pub mod http_authz;
pub mod impact;
pub mod limits;
pub mod listen;
pub mod path;
pub mod payload;
pub mod pipeline;
pub mod policy;
pub mod proto;
pub mod pseudonym;
pub mod server;
pub mod signer;
pub mod sink;
pub mod staff;
pub mod store;
pub mod tail;
pub mod telemetry;
pub mod time;
pub mod tls;
pub mod webhooks;
