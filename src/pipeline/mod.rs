//! The decision pipeline of DESIGN.md: request facts + policy snapshot → [`Decision`].
//!
//! [`Engine::decide`] runs the stages in order; the first denial wins and every stage that ran is
//! recorded. Stages 2–6b (6b: data residency) are the pure function [`authorize`] and stage 8
//! the pure [`minimize`] (no I/O, no transport types); stage 1 needs the issuer's JWKS (async,
//! cached), stage 7 the consent service (a bounded cache in front of the store,
//! [`Engine::with_consents`]) and stage 9 the per-replica rate-limit state. Stage 10 (the audit log) is the sink set with
//! [`Engine::with_audit`].
//!
//! Default deny: no token, no route, no integration, no snapshot → deny.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use base64::Engine as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::authn::{Authenticator, VerifiedToken};
use crate::consent::Consents;
use crate::decision::{
    ALL_CODES, Decision, Denial, DenyCode, Incident, MAX_RECORDED_PATH, Outcome, ShadowFinding,
    Stage,
};
use crate::limits::{Limits, SharedLimits};
use crate::path;
use crate::policy::snapshot::IntegrationEntry;
use crate::policy::{Action, IntegrationState, PersonLocation, PolicySnapshot, Route, RouteKind};
use crate::pseudonym::PersonRefKeys;
use crate::sink::DecisionSink;

mod factors;
mod persons;
pub mod stages;

pub use factors::client_cert_sha256;
use factors::second_factors;
pub use persons::persons_at;
use persons::persons_of;
pub use stages::{Authorized, apply_pack_masks, authorize, bearer, minimize};

/// What scp-pep knows about one request, independent of the transport (Envoy gRPC, HTTP mode).
#[derive(Debug, Clone, Default)]
pub struct RequestFacts {
    /// Upper-case method.
    pub method: String,
    /// Raw `:path` (path and query).
    pub path: String,
    /// Request headers, lower-case names (as Envoy reports them).
    pub headers: HashMap<String, String>,
    /// Downstream address as Envoy saw it (not `x-forwarded-for`).
    pub source_ip: Option<IpAddr>,
    /// Client certificate as Envoy reports it with `include_peer_certificate` (URL-encoded PEM).
    pub peer_certificate: Option<String>,
    /// Request body as Envoy buffered it (`with_request_body`), when it did.
    pub body: Option<Vec<u8>>,
    /// Envoy cut the body at `max_request_bytes` (`x-envoy-auth-partial-body: true`).
    pub body_truncated: bool,
    /// The proxy in front removes only a fixed list of headers (nginx `auth_request`, Traefik,
    /// Caddy: [`crate::http_authz::Mode::removes_fixed_headers`]): a client `x-scp-*` header
    /// scp-pep does not set cannot be removed, so stage 3 denies it.
    pub fixed_removals: bool,
}

/// Pipeline settings from configuration.
#[derive(Debug, Clone)]
pub struct PipelineSettings {
    /// Header carrying the API key (lower-case), e.g. `x-api-key`.
    pub api_key_header: String,
    /// Accept the XFCC `Hash` as the client certificate digest. Only safe when Envoy sanitizes
    /// XFCC (`forward_client_cert_details: SANITIZE_SET`).
    pub trust_xfcc: bool,
    /// Largest request body read for person ids, bytes.
    pub max_body_bytes: usize,
    /// Most persons one request may touch.
    pub max_persons: usize,
    /// Method-override headers (lower-case): removed always, denied when they disagree.
    pub method_override_headers: Vec<String>,
    /// Path-override headers (lower-case): removed always, denied when they disagree.
    pub path_override_headers: Vec<String>,
}

impl Default for PipelineSettings {
    fn default() -> Self {
        PipelineSettings {
            api_key_header: "x-api-key".into(),
            trust_xfcc: false,
            max_body_bytes: 1 << 20,
            max_persons: 1_000,
            method_override_headers: crate::config::RequestConfig::default()
                .method_override_headers,
            path_override_headers: crate::config::RequestConfig::default().path_override_headers,
        }
    }
}

/// The policy snapshot slot shared by the engine and the change feed.
pub type SnapshotSlot = Arc<ArcSwap<Option<Arc<PolicySnapshot>>>>;

/// The decision engine: snapshot + authenticator + rate limits + sink.
pub struct Engine {
    snapshot: SnapshotSlot,
    auth: Authenticator,
    limits: Limits,
    /// Cluster-wide limits in Redis (`[rate_limit] backend = "redis"`); `None`: per replica only.
    shared_limits: Option<Arc<SharedLimits>>,
    sink: Arc<dyn DecisionSink>,
    /// Stage 10: the audit log, written before any other sink; its failure denies.
    audit: Option<Arc<dyn DecisionSink>>,
    settings: PipelineSettings,
    /// Stage 7: the consent service (`None`: routes that touch persons are denied, fail closed).
    consents: Option<Arc<Consents>>,
    /// Told about every allowed request ("last successful sync", handshakes; ONB-6, ONB-AUD-4).
    activity: Option<Arc<dyn ActivityObserver>>,
    /// Key of the path hashes of unrouted requests (the deployment's person_ref key).
    refs: Arc<PersonRefKeys>,
    metrics: DecisionMetrics,
}

/// Receives every allowed request after it was recorded (ONB-6, ONB-7, ONB-AUD-4). Called on the
/// request path: implementations must not block (queue and return).
pub trait ActivityObserver: Send + Sync {
    /// `integration` was allowed a request at `time_ms` (ms since the epoch); `handshake`: on a
    /// handshake route; `state`: the integration's state in the deciding snapshot.
    fn allowed(&self, integration: &str, handshake: bool, state: IntegrationState, time_ms: i64);
}

/// Metric handles registered once (a labelled `counter!` per call costs a registry lookup).
struct DecisionMetrics {
    allowed: metrics::Counter,
    /// One per [`ALL_CODES`] entry, same order.
    denied: Vec<metrics::Counter>,
    duration: metrics::Histogram,
    /// One per [`Incident::ALL`] entry, same order.
    incidents: [metrics::Counter; 4],
}

impl DecisionMetrics {
    fn register() -> Self {
        DecisionMetrics {
            allowed: metrics::counter!("scp_pep_decisions_total", "outcome" => "allow", "code" => "OK"),
            denied: ALL_CODES
                .iter()
                .map(|c| metrics::counter!("scp_pep_decisions_total", "outcome" => "deny", "code" => c.as_str()))
                .collect(),
            duration: metrics::histogram!("scp_pep_decision_duration_seconds"),
            incidents: Incident::ALL.map(
                |i| metrics::counter!("scp_pep_security_incidents_total", "kind" => i.as_str()),
            ),
        }
    }

    fn record(&self, d: &Decision) {
        match d.denial() {
            None => self.allowed.increment(1),
            Some(denial) => {
                if let Some(i) = ALL_CODES.iter().position(|c| *c == denial.code) {
                    self.denied[i].increment(1);
                }
            }
        }
        self.duration.record(d.latency_us as f64 / 1e6);
        // Shadow findings (issue 16): the document label is a policy id, never personal data.
        for f in &d.shadow {
            metrics::counter!(
                "scp_pep_shadow_decisions_total",
                "document" => f.document.clone(),
                "code" => f.code.as_str()
            )
            .increment(1);
        }
        for i in &d.incidents {
            if let Some(k) = Incident::ALL.iter().position(|x| x == i) {
                self.incidents[k].increment(1);
            }
        }
    }
}

impl Engine {
    pub fn new(
        snapshot: SnapshotSlot,
        auth: Authenticator,
        sink: Arc<dyn DecisionSink>,
        settings: PipelineSettings,
    ) -> Self {
        Engine {
            snapshot,
            auth,
            limits: Limits::new(),
            shared_limits: None,
            sink,
            audit: None,
            settings,
            consents: None,
            activity: None,
            refs: Arc::new(PersonRefKeys::ephemeral()),
            metrics: DecisionMetrics::register(),
        }
    }

    /// Sets the audit sink (stage 10): every decision is recorded there first; when it cannot be,
    /// the decision becomes a 503 `AUDIT_UNAVAILABLE` denial (never an unaudited allow).
    pub fn with_audit(mut self, audit: Arc<dyn DecisionSink>) -> Self {
        self.audit = Some(audit);
        self
    }

    /// Counts rate limits and quotas in Redis, shared by all replicas (stage 9); the per-replica
    /// state stays the fallback.
    pub fn with_shared_limits(mut self, shared: Arc<SharedLimits>) -> Self {
        self.shared_limits = Some(shared);
        self
    }

    /// Sets the consent service of stage 7.
    pub fn with_consents(mut self, consents: Arc<Consents>) -> Self {
        self.consents = Some(consents);
        self
    }

    /// Sets the deployment's person_ref keys (path hashes of requests that match no route).
    pub fn with_person_refs(mut self, refs: Arc<PersonRefKeys>) -> Self {
        self.refs = refs;
        self
    }

    /// Sets the observer of allowed requests (last successful sync, handshakes).
    pub fn with_activity(mut self, activity: Arc<dyn ActivityObserver>) -> Self {
        self.activity = Some(activity);
        self
    }

    /// The consent service, if set.
    pub fn consents(&self) -> Option<&Arc<Consents>> {
        self.consents.as_ref()
    }

    /// The authenticator (its token cache is invalidated on policy changes).
    pub fn authenticator(&self) -> &Authenticator {
        &self.auth
    }

    /// The snapshot slot.
    pub fn snapshot(&self) -> &SnapshotSlot {
        &self.snapshot
    }

    /// Installs a new policy snapshot: swaps it in, drops cached token verifications and the rate
    /// state of integrations that no longer exist (ADM-4).
    pub fn install(&self, snap: Arc<PolicySnapshot>) {
        let keep: std::collections::HashSet<String> = snap.integrations.keys().cloned().collect();
        self.snapshot.store(Arc::new(Some(snap)));
        self.auth.invalidate_all();
        self.limits.retain(|id| keep.contains(id));
    }

    /// Decides one request, records it in the audit log (stage 10) and then in the other sinks.
    /// Never fails: every problem is a denial. `latency_us` is the time from entry to the last
    /// sink's acknowledgement, µs (the audit log sees the time spent deciding, before its write).
    pub async fn decide(&self, facts: &RequestFacts) -> Decision {
        use tracing::Instrument as _;
        let start = Instant::now();
        let mut d = Decision::new(&facts.method, "", chrono::Utc::now());
        // The decision's span (exported only when `[tracing]` is on), child of the request's
        // trace; its attributes are filled once decided and carry no personal data.
        let (span, trace_id) = crate::telemetry::in_trace(&facts.headers, || {
            tracing::info_span!(
                target: "scp_pep::trace",
                "ext_authz.check",
                decision_id = %d.decision_id,
                tenant_id = tracing::field::Empty,
                integration_id = tracing::field::Empty,
                route_id = tracing::field::Empty,
                code = tracing::field::Empty,
                allowed = tracing::field::Empty,
            )
        });
        d.trace_id = trace_id;
        let allowed = self.run(facts, &mut d).instrument(span.clone()).await;
        if d.route_id.is_none() {
            // Denied before (or at) routing: the template if the path has one, else a bounded,
            // sanitized shape with the path's length and keyed hash (SEC-09).
            let guard = self.snapshot.load();
            recorded_path(guard.as_ref().as_deref(), facts, &self.refs, &mut d);
        }
        d.path_bytes = path_only(&facts.path).len();
        d.latency_us = start.elapsed().as_micros() as u64;
        if let Some(audit) = &self.audit
            && let Err(e) = audit
                .record(&d)
                .instrument(
                    tracing::info_span!(target: "scp_pep::trace", parent: &span, "audit.commit"),
                )
                .await
        {
            // Fail closed: an unaudited allow never leaves scp-pep.
            tracing::error!(error = %e, "audit record not written; denying");
            d.outcome = Outcome::Deny(Denial::retry_after(
                DenyCode::AuditUnavailable,
                "the decision could not be recorded in the audit log",
                1,
            ));
        }
        if let Err(e) = self.sink.record(&d).await {
            tracing::error!(error = %e, "decision sink failed; denying");
            d.outcome = Outcome::Deny(Denial::retry_after(
                DenyCode::DependencyUnavailable,
                "the decision could not be recorded",
                1,
            ));
        }
        d.latency_us = start.elapsed().as_micros() as u64;
        if d.allowed()
            && let (Some(obs), Some((handshake, state)), Some(id)) =
                (&self.activity, allowed, d.integration_id.as_deref())
        {
            obs.allowed(id, handshake, state, d.time.timestamp_millis());
        }
        self.metrics.record(&d);
        span.record("tenant_id", d.tenant_id.as_deref().unwrap_or(""));
        span.record("integration_id", d.integration_id.as_deref().unwrap_or(""));
        span.record("route_id", d.route_id.as_deref().unwrap_or(""));
        span.record("code", d.code_str());
        span.record("allowed", d.allowed());
        tracing::debug!(
            decision_id = %d.decision_id,
            authz.decision = if d.allowed() { "allow" } else { "deny" },
            authz.code = d.code_str(),
            integration_id = d.integration_id.as_deref().unwrap_or(""),
            latency_us = d.latency_us,
            "decision"
        );
        d
    }

    /// Stages 1–9. Returns, for an allow, whether the route is a handshake route and the
    /// integration's state.
    async fn run(
        &self,
        facts: &RequestFacts,
        d: &mut Decision,
    ) -> Option<(bool, IntegrationState)> {
        // Headers only scp-pep may set, and the API key, never reach the upstream.
        for name in facts.headers.keys() {
            if name.starts_with("x-scp-") {
                d.headers_to_remove.push(name.clone());
            }
        }
        if !d.headers_to_remove.is_empty() {
            d.headers_to_remove.sort();
            d.incidents.push(Incident::ForgedHeaders);
        }
        if facts.headers.contains_key(&self.settings.api_key_header) {
            d.headers_to_remove
                .push(self.settings.api_key_header.clone());
        }
        // Method and path overrides never reach the upstream, whatever the decision (stage 3
        // denies the ones that disagree with the request).
        for name in self
            .settings
            .method_override_headers
            .iter()
            .chain(&self.settings.path_override_headers)
        {
            if !d.headers_to_remove.contains(name) {
                d.headers_to_remove.push(name.clone());
            }
        }

        let guard = self.snapshot.load();
        let Some(snap) = guard.as_ref().as_ref() else {
            d.outcome = Outcome::Deny(Denial::retry_after(
                DenyCode::DependencyUnavailable,
                "no policy loaded yet",
                1,
            ));
            return None;
        };

        d.policy_version = Some(snap.version);

        // Stage 1: authenticate.
        d.stages.push(Stage::Authenticate);
        let token = match bearer(&facts.headers) {
            Some(t) => t,
            None => {
                let msg = if facts.headers.contains_key(&self.settings.api_key_header) {
                    "bearer token required; an API key is never accepted alone"
                } else {
                    "bearer token required"
                };
                d.outcome = Outcome::Deny(Denial::new(DenyCode::TokenMissing, msg));
                return None;
            }
        };
        let verified = match self.auth.authenticate(snap, token).await {
            Ok(v) => v,
            Err(denial) => {
                d.outcome = Outcome::Deny(denial);
                return None;
            }
        };
        d.tenant_id = Some(verified.tenant_id.clone());
        d.integration_id = Some(verified.integration_id.clone());
        d.client_id = verified.client_id.clone();
        let mut token_scopes: Vec<String> = verified.scopes.iter().cloned().collect();
        token_scopes.sort();
        d.inputs = Some(crate::decision::DecisionInputs {
            scopes: token_scopes,
            verticals: verified.verticals.clone(),
        });
        if snap
            .tenants
            .get(&verified.tenant_id)
            .is_some_and(|t| t.tenant.strip_authorization)
        {
            d.headers_to_remove.push("authorization".into());
        }

        // Stages 2–6b.
        let Authorized {
            integration,
            tenant,
            route,
            persons,
            pack_masks,
        } = match authorize(snap, facts, &verified, &self.settings, d) {
            Ok(x) => x,
            Err(denial) => {
                d.outcome = Outcome::Deny(denial);
                return None;
            }
        };

        // Stage 7: consent (INT-4.3-*, CON-22, CON-23, CON-31: before any data is shared).
        let needs_consent = !persons.is_empty() || route.kind == RouteKind::Aggregate;
        let mut consent_fields = None;
        if needs_consent {
            let Some(consents) = &self.consents else {
                d.stages.push(Stage::Consent);
                d.outcome = Outcome::Deny(Denial::retry_after(
                    DenyCode::DependencyUnavailable,
                    "consent cannot be checked: no consent service",
                    1,
                ));
                return None;
            };
            match consent_stage(consents, tenant, route, &persons, d).await {
                Ok(f) => consent_fields = f,
                Err(denial) => {
                    d.outcome = Outcome::Deny(denial);
                    return None;
                }
            }
        }

        // Stage 8: data minimization.
        minimize(integration, route, consent_fields.as_deref(), d);
        apply_pack_masks(route, &pack_masks, d);

        // Stage 9: rate limit / quota.
        d.stages.push(Stage::RateLimit);
        let limited = match &self.shared_limits {
            None => self
                .limits
                .check(&integration.integration, route.kind, d.time),
            Some(shared) => {
                use tracing::Instrument as _;
                shared
                    .check(&self.limits, &integration.integration, route.kind, d.time)
                    .instrument(tracing::info_span!(target: "scp_pep::trace", "ratelimit.redis"))
                    .await
            }
        };
        if let Err(denial) = limited {
            d.outcome = Outcome::Deny(denial);
            return None;
        }
        // Stage 9, shadow (issue 16): a shadow limit counts in its own state and only reports.
        if let Some(f) = self
            .limits
            .check_shadow(&integration.integration, route.kind, d.time)
        {
            d.shadow.push(f);
        }
        d.outcome = Outcome::Allow;
        if !persons.is_empty()
            && let Some(c) = &self.consents
        {
            c.record_shares(tenant, &integration.integration.id, &d.consent_checks);
        }
        Some((
            route.kind == RouteKind::Handshake,
            integration.integration.state,
        ))
    }
}

/// Stage 7 (INT-4.3-*, CON-22, CON-23, CON-31) for a request that touches persons or an
/// aggregate route, with `consents`: the persons' consent in `tenant` (the tenant the request
/// reaches: they are its persons, INT-4.5-2), or for an aggregate route without persons the
/// withdrawals against its refresh epoch. Appends the checks to `d.consent_checks`, and on
/// success sets `d.purpose`. Returns the fields every deciding consent allows (`None`: no
/// field-level limit), or the consent denial. Used by the engine and by `scp-pep explain`.
pub async fn consent_stage(
    consents: &Consents,
    tenant: &str,
    route: &Route,
    persons: &[String],
    d: &mut Decision,
) -> Result<Option<Vec<String>>, Denial> {
    d.stages.push(Stage::Consent);
    let fields = if route.kind == RouteKind::Aggregate && persons.is_empty() {
        consents
            .check_aggregate(tenant, route, &mut d.consent_checks)
            .await
            .map(|()| None)?
    } else {
        consents
            .check_persons(tenant, route, persons, &mut d.consent_checks)
            .await?
    };
    d.purpose = route.consent_purpose.clone();
    Ok(fields)
}

fn path_only(raw: &str) -> &str {
    raw.split(['?', '#']).next().unwrap_or("")
}

/// The recorded path of a matched route: its template, `{tenant}` filled when the path's value
/// names a tenant of the policy; every other parameter stays `{name}` (SEC-09).
pub fn route_path(snap: &PolicySnapshot, route: &Route, tenant: Option<&str>) -> String {
    match tenant {
        Some(t) if snap.tenants.contains_key(t) => route.path.replace("{tenant}", t),
        _ => route.path.clone(),
    }
}

/// Sets `d.path` (and `d.path_hash`) for a request that no route decided: the template of the
/// route its method and path match, if any (a request denied before routing); otherwise the
/// path's shape, each segment kept only when it is a literal of some route template or a tenant
/// id, else `{?}`, cut to [`MAX_RECORDED_PATH`] bytes, with the keyed hash of the path.
pub fn recorded_path(
    snap: Option<&PolicySnapshot>,
    facts: &RequestFacts,
    refs: &PersonRefKeys,
    d: &mut Decision,
) {
    let raw = path_only(&facts.path);
    if let Some(snap) = snap
        && raw.len() <= 8192
        && let Ok(norm) = path::normalize(&facts.path)
        && let Some(m) = snap.match_route(&facts.method, &norm.segments)
    {
        d.path = route_path(snap, m.route, m.param("tenant"));
        d.path_hash = None;
        return;
    }
    d.path = path_shape(snap, raw);
    d.path_hash = Some(refs.path_hash(raw));
}

/// The sanitized shape of a raw path (no query): see [`recorded_path`].
pub fn path_shape(snap: Option<&PolicySnapshot>, raw: &str) -> String {
    const CUT: &str = "/{…}";
    let known = |seg: &str| snap.is_some_and(|s| s.is_literal(seg) || s.tenants.contains_key(seg));
    let mut out = String::with_capacity(64);
    let rest = match raw.strip_prefix('/') {
        Some(r) => r,
        None => {
            out.push_str("{?}");
            ""
        }
    };
    if raw == "/" {
        out.push('/');
    } else if !rest.is_empty() {
        for seg in rest.split('/') {
            let piece = if known(seg) { seg } else { "{?}" };
            if out.len() + 1 + piece.len() + CUT.len() > MAX_RECORDED_PATH {
                out.push_str(CUT);
                break;
            }
            out.push('/');
            out.push_str(piece);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SEC-09: an unrouted path keeps only route literals and tenant ids, is cut to 256 bytes,
    /// and never carries a person id.
    #[test]
    fn path_shape_is_sanitized_and_bounded() {
        let set = crate::policy::PolicySet {
            routes: vec![Route {
                id: "r".into(),
                methods: vec!["GET".into()],
                path: "/v1/tenants/{tenant}/health/persons/{person_id}/record".into(),
                verticals: vec!["health".into()],
                action: Action::Read,
                resource: "r".into(),
                scope: "s".into(),
                person_id: None,
                consent_purpose: None,
                data_categories: vec![],
                fields: vec![],
                kind: RouteKind::RealTime,
                content_types: None,
                body_schema: None,
                data_region: None,
            }],
            ..Default::default()
        };
        let snap = PolicySnapshot::compile(set, 3, "aud");
        assert_eq!(
            path_shape(Some(&snap), "/v1/tenants/ke/health/persons/pid-7f3a91c2/x"),
            "/v1/tenants/{?}/health/persons/{?}/{?}"
        );
        assert_eq!(path_shape(Some(&snap), "/"), "/");
        assert_eq!(path_shape(None, "/v1/x"), "/{?}/{?}");
        assert_eq!(path_shape(Some(&snap), "*"), "{?}");
        let huge = format!("/v1{}", "/pid-7f3a91c2".repeat(50_000));
        let s = path_shape(Some(&snap), &huge);
        assert!(s.len() <= MAX_RECORDED_PATH, "{}", s.len());
        assert!(s.ends_with("/{…}") && !s.contains("pid"));
        let keys = PersonRefKeys::ephemeral();
        let mut d = Decision::new("GET", "", chrono::Utc::now());
        let facts = RequestFacts {
            method: "GET".into(),
            path: "/v1/tenants/ke/health/persons/pid-7f3a91c2/record?x=1".into(),
            ..Default::default()
        };
        recorded_path(Some(&snap), &facts, &keys, &mut d);
        assert_eq!(
            d.path,
            "/v1/tenants/{tenant}/health/persons/{person_id}/record"
        );
        assert!(d.path_hash.is_none());
    }

    #[test]
    fn bearer_parsing() {
        let mut h = HashMap::new();
        h.insert("authorization".to_string(), "bearer abc".to_string());
        assert_eq!(bearer(&h), Some("abc"));
        h.insert("authorization".to_string(), "Basic abc".to_string());
        assert_eq!(bearer(&h), None);
        h.insert("authorization".to_string(), "Bearer ".to_string());
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn xfcc_hash_only_when_trusted() {
        let mut f = RequestFacts::default();
        let hash = "a".repeat(64);
        f.headers.insert(
            "x-forwarded-client-cert".into(),
            format!("By=spiffe://x;Hash={hash};Subject=\"CN=a\""),
        );
        assert!(client_cert_sha256(&f, false).is_none());
        assert_eq!(
            client_cert_sha256(&f, true).unwrap(),
            hex::decode(&hash).unwrap()
        );
    }
}
