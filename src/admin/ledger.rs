//! What one admin-plane request did that must be recorded whatever its handler returns: every use
//! of the root role (ADM-2: recorded as `root_bypass` in each tenant whose data it touched) and
//! every attempt to touch another tenant's objects (a `cross_tenant` security incident, INT-9.4-1,
//! INT-4.5-1).
//!
//! [`record_request`] wraps every admin, consent and audit-export request in a [`Ledger`] (a
//! tokio task-local); the one caller check ([`super::access::Access::caller`]), the tenant and
//! permission checks of [`super::access::Caller`] and the document loader note into it; when the
//! handler has answered, the ledger is written to the audit log. A root request whose record
//! cannot be written is answered 503 `AUDIT_UNAVAILABLE` instead of its response (a read's data
//! never leaves unrecorded; a write's own `root_bypass` record was written before the write).
//! Records name the route template and method, never a path or an id from it.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::api::ApiError;
use crate::audit::{AuditEvent, AuditLog, RecordKind};

#[derive(Debug, Default)]
struct Notes {
    /// The root caller's (subject, tenant), once authenticated.
    root: Option<(String, String)>,
    /// Tenants whose data the root role reached.
    touched: BTreeSet<String>,
    /// Tenants whose `root_bypass` record the handler already wrote (writes, export links).
    recorded: BTreeSet<String>,
    /// The authenticated non-root caller's (subject, tenant).
    caller: Option<(String, String)>,
    /// Tenants whose existing objects a non-root caller of another tenant named.
    cross_tenant: BTreeSet<String>,
    /// A non-root caller named another tenant (refused 403); recorded in its own tenant.
    named_other_tenant: bool,
}

/// The notes of one request.
#[derive(Debug, Default, Clone)]
pub struct Ledger(Arc<Mutex<Notes>>);

tokio::task_local! {
    static LEDGER: Ledger;
}

fn with(f: impl FnOnce(&mut Notes)) {
    let _ = LEDGER.try_with(|l| {
        if let Ok(mut n) = l.0.lock() {
            f(&mut n)
        }
    });
}

/// An authenticated caller: `root` when it holds the root role.
pub fn caller(subject: &str, tenant: &str, root: bool) {
    with(|n| {
        let who = Some((subject.to_owned(), tenant.to_owned()));
        if root {
            n.root = who;
        } else {
            n.caller = who;
        }
    });
}

/// The root role was what let the caller reach `tenant`'s data.
pub fn root_reached(tenant: &str) {
    with(|n| {
        n.touched.insert(tenant.to_owned());
    });
}

/// The handler itself wrote the `root_bypass` record for `tenant` (before a write).
pub fn root_recorded(tenant: &str) {
    with(|n| {
        n.recorded.insert(tenant.to_owned());
    });
}

/// A non-root caller named an existing object of `tenant`, not its own (answered 404 as for a
/// random id; recorded as an incident in `tenant`).
pub fn cross_tenant(tenant: &str) {
    with(|n| {
        if n.caller.as_ref().is_some_and(|(_, own)| own != tenant) {
            n.cross_tenant.insert(tenant.to_owned());
        }
    });
}

/// A non-root caller named a tenant not its own (refused 403 `FORBIDDEN`); recorded as an
/// incident in the caller's own tenant (the named tenant may not exist).
pub fn other_tenant_named() {
    with(|n| n.named_other_tenant = true);
}

/// Middleware of the admin, consent and audit routes: runs the handler inside a fresh
/// [`Ledger`], then records one `root_bypass` event per tenant the root role reached (the
/// caller's own tenant when it reached none: every request with a root token is a root use)
/// and one `security_incident` (`cross_tenant`, `plane: admin`) per tenant whose objects a
/// caller of another tenant named.
///
/// Output: the handler's response, or 503 `AUDIT_UNAVAILABLE` when a `root_bypass` record
/// could not be written.
pub async fn record_request(
    State(audit): State<Option<Arc<AuditLog>>>,
    req: Request,
    next: Next,
) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_default();
    let method = req.method().as_str().to_owned();
    let ledger = Ledger::default();
    let resp = LEDGER.scope(ledger.clone(), next.run(req)).await;
    let notes = match ledger.0.lock() {
        Ok(mut n) => std::mem::take(&mut *n),
        Err(_) => return resp,
    };
    let Some(audit) = audit else { return resp };
    let status = resp.status().as_u16();
    let mut incidents: Vec<(String, &str)> = notes
        .cross_tenant
        .iter()
        .map(|t| (t.clone(), "object_of_other_tenant"))
        .collect();
    if notes.named_other_tenant
        && let Some((_, own)) = &notes.caller
    {
        incidents.push((own.clone(), "other_tenant_named"));
    }
    for (tenant, what) in &incidents {
        metrics::counter!("scp_pep_security_incidents_total", "kind" => "cross_tenant")
            .increment(1);
        let (subject, own) = notes.caller.clone().unwrap_or_default();
        let ev = AuditEvent::new(
            RecordKind::SecurityIncident,
            Some(tenant),
            json!({"incident": "cross_tenant", "plane": "admin", "attempt": what,
                   "method": method, "route": route, "status": status, "caller_tenant": own}),
        )
        .actor(subject);
        if let Err(e) = audit.record_event(&ev).await {
            tracing::warn!(error = %e, "admin cross-tenant incident not recorded");
        }
    }
    let Some((subject, own)) = notes.root else {
        return resp;
    };
    let mut tenants = notes.touched;
    if tenants.is_empty() {
        tenants.insert(own.clone());
    }
    for tenant in tenants.difference(&notes.recorded) {
        let ev = AuditEvent::new(
            RecordKind::RootBypass,
            Some(tenant),
            json!({"method": method, "route": route, "status": status, "caller_tenant": own}),
        )
        .actor(subject.clone());
        if let Err(e) = audit.record_event(&ev).await {
            tracing::warn!(error = %e, "root_bypass record not written; withholding the response");
            return ApiError::audit_unavailable().into_response();
        }
    }
    resp
}
