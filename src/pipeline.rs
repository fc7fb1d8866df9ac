//! The decision pipeline of DESIGN.md: request facts + policy snapshot → [`Decision`].
//!
//! [`Engine::decide`] runs the stages in order; the first denial wins and every stage that ran is
//! recorded. Stages 2–6 are the pure function [`authorize`] and stage 8 the pure [`minimize`] (no
//! I/O, no transport types); stage 1 needs the issuer's JWKS (async, cached), stage 7 the consent
//! service (a bounded cache in front of the store, [`Engine::with_consents`]) and stage 9 the
//! per-replica rate-limit state. Stage 10 (the audit log) is the sink set with
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
    ALL_CODES, Decision, Denial, DenyCode, Incident, MAX_RECORDED_PATH, Outcome, Stage,
};
use crate::limits::Limits;
use crate::path;
use crate::policy::snapshot::IntegrationEntry;
use crate::policy::{Action, IntegrationState, PersonLocation, PolicySnapshot, Route, RouteKind};
use crate::pseudonym::PersonRefKeys;
use crate::sink::DecisionSink;

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
}

impl Default for PipelineSettings {
    fn default() -> Self {
        PipelineSettings {
            api_key_header: "x-api-key".into(),
            trust_xfcc: false,
            max_body_bytes: 1 << 20,
            max_persons: 1_000,
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
    incidents: [metrics::Counter; 3],
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
            incidents: [
                metrics::counter!("scp_pep_security_incidents_total", "kind" => "vertical_mis_scoped"),
                metrics::counter!("scp_pep_security_incidents_total", "kind" => "cross_tenant"),
                metrics::counter!("scp_pep_security_incidents_total", "kind" => "forged_headers"),
            ],
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
        for i in &d.incidents {
            let k = match i {
                Incident::VerticalMisScoped => 0,
                Incident::CrossTenant => 1,
                Incident::ForgedHeaders => 2,
            };
            self.incidents[k].increment(1);
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
        let start = Instant::now();
        let mut d = Decision::new(&facts.method, "", chrono::Utc::now());
        let allowed = self.run(facts, &mut d).await;
        if d.route_id.is_none() {
            // Denied before (or at) routing: the template if the path has one, else a bounded,
            // sanitized shape with the path's length and keyed hash (SEC-09).
            let guard = self.snapshot.load();
            recorded_path(guard.as_ref().as_deref(), facts, &self.refs, &mut d);
        }
        d.path_bytes = path_only(&facts.path).len();
        d.latency_us = start.elapsed().as_micros() as u64;
        if let Some(audit) = &self.audit
            && let Err(e) = audit.record(&d).await
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
        if snap
            .tenants
            .get(&verified.tenant_id)
            .is_some_and(|t| t.tenant.strip_authorization)
        {
            d.headers_to_remove.push("authorization".into());
        }

        // Stages 2–6.
        let Authorized {
            integration,
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
            d.stages.push(Stage::Consent);
            let Some(consents) = &self.consents else {
                d.outcome = Outcome::Deny(Denial::retry_after(
                    DenyCode::DependencyUnavailable,
                    "consent cannot be checked: no consent service",
                    1,
                ));
                return None;
            };
            let tenant = &integration.integration.tenant;
            let res = if route.kind == RouteKind::Aggregate && persons.is_empty() {
                consents
                    .check_aggregate(tenant, route, &mut d.consent_checks)
                    .await
                    .map(|()| None)
            } else {
                consents
                    .check_persons(tenant, route, &persons, &mut d.consent_checks)
                    .await
            };
            match res {
                Ok(f) => consent_fields = f,
                Err(denial) => {
                    d.outcome = Outcome::Deny(denial);
                    return None;
                }
            }
            d.purpose = route.consent_purpose.clone();
        }

        // Stage 8: data minimization.
        minimize(integration, route, consent_fields.as_deref(), d);
        apply_pack_masks(route, &pack_masks, d);

        // Stage 9: rate limit / quota.
        d.stages.push(Stage::RateLimit);
        if let Err(denial) = self
            .limits
            .check(&integration.integration, route.kind, d.time)
        {
            d.outcome = Outcome::Deny(denial);
            return None;
        }
        d.outcome = Outcome::Allow;
        if !persons.is_empty()
            && let Some(c) = &self.consents
        {
            c.record_shares(
                &integration.integration.tenant,
                &integration.integration.id,
                &d.consent_checks,
            );
        }
        Some((
            route.kind == RouteKind::Handshake,
            integration.integration.state,
        ))
    }
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

/// The bearer token of the `authorization` header (scheme case-insensitive), if any.
fn bearer(headers: &HashMap<String, String>) -> Option<&str> {
    let v = headers.get("authorization")?;
    let (scheme, token) = v.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// What stages 2–6 established: the integration, the route and the ids of the persons the request
/// touches (deduplicated, in request order; they never enter a log).
pub struct Authorized<'s> {
    pub integration: &'s IntegrationEntry,
    pub route: &'s Route,
    pub persons: Vec<String>,
    /// Fields the policy packs' determining permits mask (`@mask`), for stage 8.
    pub pack_masks: Vec<String>,
}

/// Stages 2–6, pure: integration, second factors, route (with the person ids it carries), tenant
/// and vertical, scope, deny rules. Fills `d` (route, verticals, scopes, incidents, stages) as it
/// goes. Stage 7 (consent, async) and 8 ([`minimize`]) follow.
///
/// Returns the integration, route and persons, or the first denial.
pub fn authorize<'s>(
    snap: &'s PolicySnapshot,
    facts: &RequestFacts,
    token: &VerifiedToken,
    settings: &PipelineSettings,
    d: &mut Decision,
) -> Result<Authorized<'s>, Denial> {
    // Stage 2: integration (INT-4.1-1, INT-4.1-2, INT-6.2-*).
    d.stages.push(Stage::Integration);
    let integ = snap
        .integrations
        .get(&token.integration_id)
        .ok_or_else(|| Denial::new(DenyCode::IntegrationUnknown, "unknown integration"))?;
    let i = &integ.integration;
    if i.tenant != token.tenant_id {
        d.incidents.push(Incident::CrossTenant);
        return Err(Denial::new(
            DenyCode::TenantMismatch,
            "the integration belongs to another tenant than the token",
        ));
    }
    if let Some(bound) = &i.client_id
        && token.client_id.as_deref() != Some(bound.as_str())
    {
        return Err(Denial::new(
            DenyCode::TokenClaimsInvalid,
            "the token's client is not bound to this integration",
        ));
    }
    // An approved integration that has its client may call handshake routes only (ONB-6): the
    // route is known at stage 3, where anything else is still `INTEGRATION_NOT_ACTIVE`.
    let handshake_only = i.state == IntegrationState::Approved && i.client_id.is_some();
    match i.state {
        IntegrationState::Active | IntegrationState::Restricted => {}
        IntegrationState::Approved if handshake_only => {}
        IntegrationState::Suspended => {
            return Err(Denial::new(
                DenyCode::IntegrationSuspended,
                "the integration is suspended",
            ));
        }
        s => {
            return Err(Denial::new(
                DenyCode::IntegrationNotActive,
                format!("the integration is {} and carries no traffic", s.as_str()),
            ));
        }
    }
    if let Some(v) = token
        .verticals
        .iter()
        .find(|v| !integ.verticals.contains(*v))
    {
        d.incidents.push(Incident::VerticalMisScoped);
        return Err(Denial::new(
            DenyCode::VerticalNotPermitted,
            format!("token vertical `{v}` is not declared by the integration"),
        ));
    }

    // Stage 1, second factors (they need the integration record): INT-4.2-5/6/7.
    d.stages.push(Stage::SecondFactor);
    second_factors(integ, facts, token, settings)?;

    // Stage 3: route.
    d.stages.push(Stage::Route);
    let norm = path::normalize(&facts.path).map_err(|e| {
        Denial::new(
            DenyCode::PathAmbiguous,
            format!("ambiguous path rejected: {e}"),
        )
    })?;
    let m = snap
        .match_route(&facts.method, &norm.segments)
        .ok_or_else(|| {
            Denial::new(
                DenyCode::RouteNotFound,
                "no route matches this method and path",
            )
        })?;
    let route = m.route;
    d.path = route_path(snap, route, m.param("tenant"));
    d.route_id = Some(route.id.clone());
    d.action = Some(route.action.as_str().to_owned());
    d.resource = Some(route.resource.clone());
    d.verticals = route.verticals.clone();
    d.data_categories = route.data_categories.clone();
    if handshake_only && route.kind != RouteKind::Handshake {
        return Err(Denial::new(
            DenyCode::IntegrationNotActive,
            "the integration is approved and may call handshake routes only until its first handshake",
        ));
    }
    if i.state == IntegrationState::Restricted && route.action == Action::Write {
        return Err(Denial::new(
            DenyCode::IntegrationRestricted,
            "the integration is restricted to reads",
        ));
    }
    let persons = persons_of(route, &m, &norm, facts, settings)?;
    d.persons = persons.len();

    // Stage 4: tenant and vertical (INT-4.5-1, INT-4.4-2, INT-9.4-1).
    d.stages.push(Stage::TenantVertical);
    if let Some(t) = m.param("tenant")
        && t != token.tenant_id
    {
        d.incidents.push(Incident::CrossTenant);
        return Err(Denial::new(
            DenyCode::TenantMismatch,
            "the path names another tenant than the token",
        ));
    }
    for v in &route.verticals {
        if !(integ.verticals.contains(v) && token.verticals.contains(v)) {
            d.incidents.push(Incident::VerticalMisScoped);
            return Err(Denial::new(
                DenyCode::VerticalNotPermitted,
                format!("vertical `{v}` is outside the integration's effective verticals"),
            ));
        }
    }

    // Stage 5: scope (ONB-2, ONB-PRIV-01).
    d.stages.push(Stage::Scope);
    if integ
        .routes
        .as_ref()
        .is_some_and(|r| !r.contains(&route.id))
    {
        return Err(Denial::new(
            DenyCode::ScopeViolation,
            "the route is not in the integration's contract",
        ));
    }
    if !integ.scopes.contains(&route.scope) || !token.scopes.contains(&route.scope) {
        return Err(Denial::new(
            DenyCode::ScopeViolation,
            format!(
                "scope `{}` must be granted by both the contract and the token",
                route.scope
            ),
        ));
    }
    let mut scopes: Vec<String> = token
        .scopes
        .iter()
        .filter(|s| integ.scopes.contains(*s))
        .cloned()
        .collect();
    scopes.sort();
    d.scopes = scopes;

    // Stage 6: deny rules (ADM-3).
    d.stages.push(Stage::DenyRules);
    if let Some(rules) = snap.traffic_denies.get(&i.tenant) {
        let now_ms = d.time.timestamp_millis();
        for r in rules {
            if r.in_window(now_ms) && deny_rule_hits(&r.rule, &i.id, route) {
                let r = &r.rule;
                return Err(Denial::new(
                    DenyCode::DenyRuleMatched,
                    format!("deny rule `{}`: {}", r.id, r.reason),
                ));
            }
        }
    }

    // Stage 6 (continued): the active policy packs of the route's verticals (Cedar; forbid
    // wins, no permit = deny, evaluation errors deny) (ADM-6).
    let pack_masks = snap
        .packs
        .check_partner(
            i,
            route,
            &d.scopes,
            persons.len(),
            &facts.method,
            d.time.timestamp_millis(),
            &mut d.reasons,
        )
        .map_err(|m| Denial::new(DenyCode::PolicyDenied, m))?;

    Ok(Authorized {
        integration: integ,
        route,
        persons,
        pack_masks,
    })
}

/// Stage 8 addition: fields the determining `@mask` permits of policy packs mask (only fields
/// the route has, when it lists them); they leave `allowed_fields` too.
pub fn apply_pack_masks(route: &Route, pack_masks: &[String], d: &mut Decision) {
    if pack_masks.is_empty() {
        return;
    }
    for f in pack_masks {
        if (route.fields.is_empty() || route.fields.contains(f)) && !d.masked_fields.contains(f) {
            d.masked_fields.push(f.clone());
        }
    }
    d.masked_fields.sort();
    if let Some(a) = &mut d.allowed_fields {
        a.retain(|f| !pack_masks.contains(f));
    }
}

/// Whether partner-traffic deny rule `r` (active, inside its window: the caller checks both)
/// denies integration `integration`'s request to `route` (stage 6, ADM-3): every matcher it
/// sets matches. Traffic carries no geo or program: a rule narrowed to one still applies (fail
/// closed).
fn deny_rule_hits(r: &crate::policy::DenyRule, integration: &str, route: &Route) -> bool {
    r.for_traffic()
        && r.integration.as_ref().is_none_or(|x| x == integration)
        && r.action.as_ref().is_none_or(|a| a == route.action.as_str())
        && r.resource.as_ref().is_none_or(|x| *x == route.resource)
        && r.scope.as_ref().is_none_or(|x| *x == route.scope)
        && r.vertical
            .as_ref()
            .is_none_or(|x| route.verticals.contains(x))
}

/// Stage 8, pure: allowed and masked fields from the integration's field policy, the route's
/// fields and field-level consent (`consent_fields`: fields every deciding consent allows; `None`
/// when no consent limits fields) (INT-5.3-1, INT-5.3-2, INT-4.3-5).
pub fn minimize(
    integ: &IntegrationEntry,
    route: &Route,
    consent_fields: Option<&[String]>,
    d: &mut Decision,
) {
    d.stages.push(Stage::DataMinimization);
    let fp = &integ.integration.field_policy;
    let mut masked: Vec<String> = Vec::new();
    let mut allowed: Option<Vec<String>> = None;
    if fp.allowed_fields.is_some() || consent_fields.is_some() {
        let mut a = Vec::new();
        for f in &route.fields {
            let ok = fp.allowed_fields.as_ref().is_none_or(|x| x.contains(f))
                && consent_fields.is_none_or(|x| x.contains(f))
                && !fp.masked_fields.contains(f);
            if ok {
                a.push(f.clone());
            } else {
                masked.push(f.clone());
            }
        }
        allowed = Some(a);
    }
    for f in &fp.masked_fields {
        if (route.fields.is_empty() || route.fields.contains(f)) && !masked.contains(f) {
            masked.push(f.clone());
        }
    }
    masked.sort();
    d.masked_fields = masked;
    d.allowed_fields = allowed;
}

/// The ids of the persons a request touches, from where the route says they are (stage 3).
///
/// Errors: `PERSON_ID_MISSING` (path, query, header without the id); `PAYLOAD_INVALID` (no body,
/// a body Envoy truncated, larger than `max_body_bytes`, not JSON, no string at the pointer, more
/// than `max_persons`).
fn persons_of(
    route: &Route,
    m: &crate::policy::snapshot::RouteMatch<'_, '_>,
    norm: &path::NormalizedPath,
    facts: &RequestFacts,
    settings: &PipelineSettings,
) -> Result<Vec<String>, Denial> {
    let one = |found: Option<String>| match found {
        Some(p) if !p.is_empty() => Ok(vec![p]),
        _ => Err(Denial::new(
            DenyCode::PersonIdMissing,
            "the route needs a person id and the request carries none",
        )),
    };
    match &route.person_id {
        None => Ok(Vec::new()),
        Some(PersonLocation::Path { name }) => one(m.param(name).map(str::to_owned)),
        Some(PersonLocation::Query { name }) => one(norm
            .query
            .as_deref()
            .and_then(|q| path::query_param(q, name))),
        Some(PersonLocation::Header { name }) => one(facts.headers.get(name).cloned()),
        Some(PersonLocation::Body { pointer }) => {
            let invalid = |m: &str| Err(Denial::new(DenyCode::PayloadInvalid, m.to_owned()));
            if facts.body_truncated {
                return invalid(
                    "the request body was truncated before it reached scp-pep; person ids cannot be checked",
                );
            }
            let Some(body) = facts.body.as_deref().filter(|b| !b.is_empty()) else {
                return invalid("the route needs a JSON body with person ids");
            };
            if body.len() > settings.max_body_bytes {
                return invalid("the request body is larger than scp-pep reads");
            }
            let Ok(json) = serde_json::from_slice::<serde_json::Value>(body) else {
                return invalid("the request body is not JSON");
            };
            match persons_at(&json, pointer, settings.max_persons) {
                Ok(p) if !p.is_empty() => Ok(p),
                Ok(_) => invalid("the request body carries no person id where the route says"),
                Err(m) => invalid(m),
            }
        }
    }
}

/// The strings at `pointer` in `doc` (RFC 6901, with `*` = every array element), deduplicated in
/// order. Errors when a value there is not a non-empty string, or there are more than `max`.
pub fn persons_at(
    doc: &serde_json::Value,
    pointer: &str,
    max: usize,
) -> Result<Vec<String>, &'static str> {
    let mut nodes = vec![doc];
    for raw in pointer.split('/').skip(1) {
        let seg = raw.replace("~1", "/").replace("~0", "~");
        let mut next = Vec::with_capacity(nodes.len());
        for n in nodes {
            match (seg.as_str(), n) {
                ("*", serde_json::Value::Array(a)) => next.extend(a.iter()),
                ("*", _) => return Err("the body has no array where the route's pointer has `*`"),
                (s, serde_json::Value::Object(o)) => match o.get(s) {
                    Some(v) => next.push(v),
                    None => return Err("the body lacks the field the route's pointer names"),
                },
                (s, serde_json::Value::Array(a)) => {
                    match s.parse::<usize>().ok().and_then(|i| a.get(i)) {
                        Some(v) => next.push(v),
                        None => return Err("the body lacks the array element the pointer names"),
                    }
                }
                _ => return Err("the body lacks the field the route's pointer names"),
            }
        }
        nodes = next;
    }
    let mut out: Vec<String> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut push = |v: &serde_json::Value| -> Result<(), &'static str> {
        match v.as_str() {
            Some(s) if !s.is_empty() && s.len() <= 256 => {
                if seen.insert(s.to_owned()) {
                    out.push(s.to_owned());
                }
                Ok(())
            }
            _ => Err("a person id in the body is not a non-empty string"),
        }
    };
    for n in nodes {
        match n {
            serde_json::Value::Array(a) => {
                for v in a {
                    push(v)?;
                }
            }
            v => push(v)?,
        }
    }
    if out.len() > max {
        return Err("the request touches more persons than scp-pep checks in one request");
    }
    Ok(out)
}

fn second_factors(
    integ: &IntegrationEntry,
    facts: &RequestFacts,
    token: &VerifiedToken,
    settings: &PipelineSettings,
) -> Result<(), Denial> {
    let i = &integ.integration;
    if let Some(expected) = &integ.api_key_sha256 {
        let ok = facts
            .headers
            .get(&settings.api_key_header)
            .map(|k| {
                Sha256::digest(k.as_bytes())
                    .ct_eq(expected.as_slice())
                    .into()
            })
            .unwrap_or(false);
        if !ok {
            return Err(Denial::new(
                DenyCode::ApiKeyInvalid,
                "the integration requires its API key as a second factor",
            ));
        }
    }
    if integ.mtls_cert_sha256.is_some() || token.cnf_x5t_s256.is_some() {
        let presented = client_cert_sha256(facts, settings.trust_xfcc);
        let Some(presented) = presented else {
            return Err(Denial::new(
                DenyCode::ClientCertificateInvalid,
                "a client certificate is required",
            ));
        };
        if let Some(expected) = &integ.mtls_cert_sha256
            && !bool::from(presented.as_slice().ct_eq(expected.as_slice()))
        {
            return Err(Denial::new(
                DenyCode::ClientCertificateInvalid,
                "the client certificate is not the one bound to the integration",
            ));
        }
        if let Some(cnf) = &token.cnf_x5t_s256 {
            let thumb = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&presented);
            if !bool::from(thumb.as_bytes().ct_eq(cnf.as_bytes())) {
                return Err(Denial::new(
                    DenyCode::ClientCertificateInvalid,
                    "the client certificate does not match the token's `cnf.x5t#S256`",
                ));
            }
        }
    }
    if !i.ip_allowlist.is_empty() {
        let ok = facts
            .source_ip
            .is_some_and(|ip| i.ip_allowlist.iter().any(|n| n.contains(&ip)));
        if !ok {
            return Err(Denial::new(
                DenyCode::IpNotAllowed,
                "the source address is not in the integration's IP allowlist",
            ));
        }
    }
    Ok(())
}

/// SHA-256 of the client certificate's DER: from Envoy's peer certificate (URL-encoded PEM) or,
/// when trusted, from the XFCC header's `Hash` (hex) of its last element.
pub fn client_cert_sha256(facts: &RequestFacts, trust_xfcc: bool) -> Option<Vec<u8>> {
    if let Some(pem) = facts.peer_certificate.as_deref().filter(|p| !p.is_empty()) {
        let pem = percent_encoding::percent_decode_str(pem)
            .decode_utf8()
            .ok()?;
        let der = pem_to_der(&pem)?;
        return Some(Sha256::digest(&der).to_vec());
    }
    if trust_xfcc {
        let xfcc = facts.headers.get("x-forwarded-client-cert")?;
        let last = xfcc.rsplit(',').next()?;
        for kv in last.split(';') {
            if let Some((k, v)) = kv.split_once('=')
                && k.trim().eq_ignore_ascii_case("hash")
            {
                let h = hex::decode(v.trim().trim_matches('"')).ok()?;
                return (h.len() == 32).then_some(h);
            }
        }
    }
    None
}

/// Decodes the first `CERTIFICATE` block of a PEM text.
fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    let begin = "-----BEGIN CERTIFICATE-----";
    let end = "-----END CERTIFICATE-----";
    let start = pem.find(begin)? + begin.len();
    let stop = pem[start..].find(end)? + start;
    let b64: String = pem[start..stop]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
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
