//! Policy packs: per (tenant, vertical) Cedar policy sets, compiled into the snapshot and
//! evaluated in pipeline stage 6 and by `POST /v1/authz/evaluate` (ADM-6).
//!
//! # Schema
//! Every pack is validated against the fixed schema [`SCHEMA_TEXT`] (namespace `Scp`, strict
//! mode) when it is submitted (create, patch, policy change) and again whenever the enforced set
//! is validated; `GET /v1/policies/schema` serves it.
//!
//! # Semantics
//! - The `active` (or `restricted`) pack of (tenant, vertical), inside its window
//!   `[active_from, active_until)`, decides every request touching that vertical. A request
//!   touching several verticals must pass the pack of every vertical that has one
//!   ([`CompiledPacks::check_partner`]); a vertical without a pack does not restrict traffic.
//! - Cedar's rules: a satisfied `forbid` wins; **no satisfied `permit` means deny**. A pack that
//!   should only forbid starts with `permit(principal, action, resource);`.
//! - The answer's `reasons` are the determining policies: their `@id("…")` annotation when there
//!   is one, else Cedar's id (`policy0`, `policy1`, … in text order). A deny without any matching
//!   policy reports [`DEFAULT_DENY`].
//! - `@mask("field1,field2")` on a determining `permit` masks those fields (merged into stage 8's
//!   masked fields). `@mask` on a `forbid` is rejected at submission.
//! - Fail closed: an evaluation error in any policy (e.g. reading an optional attribute without
//!   `has`), a pack whose text no longer compiles, or an unsupported principal type is a deny
//!   (reason [`EVALUATION_ERROR`] plus the erroring policy ids).
//! - `restricted` packs: enforced like `active`, and additionally every `write` is denied (reason
//!   [`RESTRICTED`]) — the same meaning as a restricted integration (INT-6.2-2), never looser
//!   than `active`.
//!
//! # Performance
//! Each pack is parsed once per policy snapshot; a request builds two small entities and a
//! context (no JSON parsing, no schema check at request time: the policies were validated).

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::{Arc, LazyLock};

use cedar_policy::{
    Authorizer, Context, Decision, Effect, Entities, Entity, EntityId, EntityTypeName, EntityUid,
    PolicyId, PolicySet, Request, RestrictedExpression, Schema, ValidationMode, Validator,
};
use serde_json::Value;

use super::model::{Integration, Mode, PackStatus, PolicyPack, Route};

mod request;
#[cfg(test)]
mod tests;

use request::*;

/// The Cedar schema every pack is validated against (namespace `Scp`).
///
/// - `Scp::Integration` (partner traffic; id = integration id): `tenant`, `verticals` (declared),
///   `scopes` (effective scopes of the request: contract ∩ token).
/// - `Scp::User` (`/v1/authz/evaluate`; id = subject): `tenant`, `roles`.
/// - `Scp::Resource` (id = route id, or the evaluated resource): `tenant`, `vertical` (the
///   vertical whose pack is deciding), `verticals` (every vertical the request touches), `name`
///   (the route's resource name), `route` (route id), `kind` (`real_time`, `batch`, `aggregate`,
///   `handshake`), `data_categories`.
/// - Actions `Scp::Action::"read"` and `Scp::Action::"write"`.
/// - Context: `scopes`, `verticals`, `persons` (number of persons the request touches), `hour`
///   (0–23, UTC), `method` (upper-case HTTP method), `purpose` (optional: the route's consent
///   purpose; test it with `context has purpose`).
pub const SCHEMA_TEXT: &str = r#"namespace Scp {
  entity Integration = {
    tenant: String,
    verticals: Set<String>,
    scopes: Set<String>,
  };
  entity User = {
    tenant: String,
    roles: Set<String>,
  };
  entity Resource = {
    tenant: String,
    vertical: String,
    verticals: Set<String>,
    name: String,
    route: String,
    kind: String,
    data_categories: Set<String>,
  };
  type RequestContext = {
    scopes: Set<String>,
    verticals: Set<String>,
    persons: Long,
    hour: Long,
    method: String,
    purpose?: String,
  };
  action read, write appliesTo {
    principal: [Integration, User],
    resource: [Resource],
    context: RequestContext,
  };
}
"#;

/// Reason reported when no policy matched (Cedar's default deny).
pub const DEFAULT_DENY: &str = "default_deny";
/// Reason reported when evaluation failed (fail closed).
pub const EVALUATION_ERROR: &str = "evaluation_error";
/// Reason reported when a restricted pack refuses a write.
pub const RESTRICTED: &str = "pack_restricted";

static VALIDATOR: LazyLock<Option<Validator>> = LazyLock::new(|| {
    Schema::from_cedarschema_str(SCHEMA_TEXT)
        .ok()
        .map(|(s, _)| Validator::new(s))
});

/// Largest pack text accepted, bytes.
pub const MAX_POLICY_BYTES: usize = 32 * 1024;

/// Parses and validates a pack's Cedar text against [`SCHEMA_TEXT`] (strict mode).
///
/// Also checks: at least one policy, no templates, `@id` values unique and non-empty, `@mask`
/// only on `permit` policies.
///
/// Errors: a message for the pack's author (Cedar's own message, with the policy id).
pub fn check_policies(text: &str) -> Result<PolicySet, String> {
    if text.len() > MAX_POLICY_BYTES {
        return Err(format!("at most {MAX_POLICY_BYTES} bytes of Cedar text"));
    }
    let pset = PolicySet::from_str(text).map_err(|e| format!("Cedar syntax error: {e}"))?;
    if pset.templates().next().is_some() {
        return Err(
            "templates (`?principal`, `?resource` slots) are not supported in packs".into(),
        );
    }
    if pset.policies().next().is_none() {
        return Err("a policy pack holds at least one policy".into());
    }
    let mut ids = HashSet::new();
    for p in pset.policies() {
        if let Some(id) = p.annotation("id") {
            if id.trim().is_empty() {
                return Err(format!("policy `{}`: @id must not be empty", p.id()));
            }
            if !ids.insert(id.to_owned()) {
                return Err(format!("@id(\"{id}\") is used twice"));
            }
        }
        if p.annotation("mask").is_some() && p.effect() == Effect::Forbid {
            return Err(format!(
                "policy `{}`: @mask is only meaningful on permit policies",
                name_of(p.id(), p.annotation("id"))
            ));
        }
    }
    let Some(validator) = VALIDATOR.as_ref() else {
        return Err("the Cedar schema is unavailable".into());
    };
    let res = validator.validate(&pset, ValidationMode::Strict);
    if !res.validation_passed() {
        let msgs: Vec<String> = res
            .validation_errors()
            .map(|e| {
                let id = e.policy_id();
                let named = pset
                    .policy(id)
                    .and_then(|p| p.annotation("id"))
                    .map(str::to_owned);
                format!("policy `{}`: {e}", name_of(id, named.as_deref()))
            })
            .collect();
        return Err(format!(
            "does not validate against the Scp schema: {}",
            msgs.join("; ")
        ));
    }
    Ok(pset)
}

fn name_of(id: &PolicyId, annotated: Option<&str>) -> String {
    annotated.map_or_else(|| id.to_string(), str::to_owned)
}

/// A question to a vertical's policy pack.
///
/// `context` is a JSON object whose known keys feed the Cedar entities and context (missing keys
/// are empty / 0): `scopes`, `verticals`, `roles` (User), `resource_verticals`,
/// `data_categories` (arrays of strings), `route`, `kind`, `method`, `purpose` (strings),
/// `persons` (number).
#[derive(Debug, Clone)]
pub struct PackRequest<'a> {
    /// `Integration` (partner traffic) or `User` (admin / evaluate).
    pub principal_type: &'a str,
    pub principal_id: &'a str,
    /// `read` or `write`.
    pub action: &'a str,
    /// The resource name (a route's `resource`).
    pub resource: &'a str,
    pub tenant: &'a str,
    pub vertical: &'a str,
    /// Extra facts (see the type's documentation), a JSON object.
    pub context: serde_json::Value,
    /// Now, ms since the epoch (pack windows, `context.hour`).
    pub now_ms: i64,
}

/// A pack's answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PackDecision {
    pub allowed: bool,
    /// The pack that answered.
    pub pack_id: String,
    /// Ids of the determining policies (`@id` or Cedar's), or [`DEFAULT_DENY`],
    /// [`EVALUATION_ERROR`], [`RESTRICTED`].
    pub reasons: Vec<String>,
    /// Fields the determining permit policies ask to mask (`@mask`), sorted, deduplicated.
    pub masked_fields: Vec<String>,
}

/// One compiled pack.
#[derive(Debug)]
struct CompiledPack {
    id: String,
    restricted: bool,
    from_ms: Option<i64>,
    until_ms: Option<i64>,
    /// `None`: the text no longer parses: every request of its vertical is denied.
    set: Option<PolicySet>,
    /// Cedar id → (reported id, masked fields).
    names: HashMap<PolicyId, (String, Vec<String>)>,
}

impl CompiledPack {
    fn in_window(&self, now_ms: i64) -> bool {
        self.from_ms.is_none_or(|f| now_ms >= f) && self.until_ms.is_none_or(|u| now_ms < u)
    }
}

/// Every enforced pack (`active` or `restricted`), compiled, by (tenant, vertical).
#[derive(Debug, Clone, Default)]
pub struct CompiledPacks {
    by_key: HashMap<(String, String), Vec<Arc<CompiledPack>>>,
    /// Cedar entities and ids of partner requests, per (integration, route, vertical, effective
    /// scopes): they depend only on the snapshot (this value lives as long as it) and on the
    /// token's scopes, so stage 6 builds them once, not per request. At most
    /// [`PREPARED_CAPACITY`] entries; beyond, requests build their own.
    prepared: Arc<dashmap::DashMap<String, Arc<Prepared>>>,
}

/// Entries of [`CompiledPacks`]' prepared-entity cache at most.
const PREPARED_CAPACITY: usize = 16_384;

/// The request-independent part of a Cedar request: principal, action, resource and entities.
#[derive(Debug)]
struct Prepared {
    principal: EntityUid,
    action: EntityUid,
    resource: EntityUid,
    entities: Entities,
    /// Partner contexts already built for this shape, by (persons, UTC hour, method, purpose
    /// present): at most [`CONTEXTS_PER_SHAPE`], most requests repeat one of a few.
    contexts: std::sync::RwLock<Vec<(usize, i64, String, Context)>>,
}

/// Cached contexts per [`Prepared`] at most.
const CONTEXTS_PER_SHAPE: usize = 32;

impl CompiledPacks {
    /// Compiles the enforced packs of a policy set: only `active` and `restricted` ones in mode
    /// `enforce` are kept. A pack whose text does not parse is kept as "deny everything" (fail
    /// closed).
    pub fn compile(packs: &[PolicyPack]) -> Self {
        Self::compile_mode(packs, Mode::Enforce)
    }

    /// Like [`Self::compile`], for the `active`/`restricted` packs in mode `mode`: the snapshot
    /// keeps the shadow packs ([`Mode::Shadow`]) in a second, separate value that only ever
    /// produces shadow findings (issue 16).
    pub fn compile_mode(packs: &[PolicyPack], mode: Mode) -> Self {
        let mut by_key: HashMap<(String, String), Vec<Arc<CompiledPack>>> = HashMap::new();
        for p in packs {
            if !matches!(p.status, PackStatus::Active | PackStatus::Restricted) || p.mode != mode {
                continue;
            }
            let set = PolicySet::from_str(&p.policies).ok();
            let mut names = HashMap::new();
            if let Some(set) = &set {
                for pol in set.policies() {
                    let masks = pol
                        .annotation("mask")
                        .map(|m| {
                            m.split(',')
                                .map(str::trim)
                                .filter(|f| !f.is_empty())
                                .map(str::to_owned)
                                .collect()
                        })
                        .unwrap_or_default();
                    names.insert(
                        pol.id().clone(),
                        (name_of(pol.id(), pol.annotation("id")), masks),
                    );
                }
            }
            by_key
                .entry((p.tenant.clone(), p.vertical.clone()))
                .or_default()
                .push(Arc::new(CompiledPack {
                    id: p.id.clone(),
                    restricted: p.status == PackStatus::Restricted,
                    from_ms: ms(p.active_from.as_deref()),
                    until_ms: ms(p.active_until.as_deref()),
                    set,
                    names,
                }));
        }
        CompiledPacks {
            by_key,
            prepared: Arc::default(),
        }
    }

    /// Whether no pack is enforced at all (the pipeline then skips the pack step).
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// The answer of the enforced pack(s) of (`req.tenant`, `req.vertical`) whose window holds
    /// `req.now_ms`; `None` when there is none. Should several apply (validation prevents it),
    /// the first denial wins and allows merge their masks.
    pub fn evaluate(&self, req: &PackRequest) -> Option<PackDecision> {
        let packs = self
            .by_key
            .get(&(req.tenant.to_owned(), req.vertical.to_owned()))?;
        let prep = cedar_parts(req);
        let ctx = cedar_context(req);
        decide_packs(
            packs,
            req.now_ms,
            req.action,
            prep.as_ref(),
            ctx.as_ref(),
            false,
        )
    }

    /// Stage 6 for partner traffic: the packs of every vertical `route` touches, for
    /// `integration` with the request's effective `scopes`, `persons` count and `method`.
    ///
    /// Returns the fields the determining permits mask (sorted, deduplicated), or the denial
    /// message naming the pack and the determining policy ids (`POLICY_DENIED`). Either way the
    /// determining policies are appended to `reasons` as `<pack id>/<policy id>`.
    #[allow(clippy::too_many_arguments)]
    pub fn check_partner(
        &self,
        integration: &Integration,
        route: &Route,
        scopes: &[String],
        persons: usize,
        method: &str,
        now_ms: i64,
        reasons: &mut Vec<String>,
    ) -> Result<Vec<String>, String> {
        self.check_partner_in(
            &integration.tenant,
            integration,
            route,
            scopes,
            persons,
            method,
            now_ms,
            reasons,
        )
    }

    /// Every `active_from` / `active_until` of the compiled packs, ms since the epoch (unsorted,
    /// may repeat): between two of them, and within one UTC hour of day, a request decides
    /// alike (the impact preview's dedupe, ADM-6).
    pub fn window_bounds(&self) -> Vec<i64> {
        self.by_key
            .values()
            .flatten()
            .flat_map(|p| p.from_ms.into_iter().chain(p.until_ms))
            .collect()
    }

    /// [`Self::check_partner`] with the packs of `tenant`: the tenant the request reaches, which
    /// for a cross-tenant integration is a partner tenant rather than its own (INT-4.5-2).
    #[allow(clippy::too_many_arguments)]
    pub fn check_partner_in(
        &self,
        tenant: &str,
        integration: &Integration,
        route: &Route,
        scopes: &[String],
        persons: usize,
        method: &str,
        now_ms: i64,
        reasons: &mut Vec<String>,
    ) -> Result<Vec<String>, String> {
        self.decide_partner(
            tenant,
            integration,
            route,
            scopes,
            persons,
            method,
            now_ms,
            reasons,
        )
        .map_err(|(v, d)| {
            let prefix = format!("{}/", d.pack_id);
            let ids: Vec<&str> = d
                .reasons
                .iter()
                .map(|r| r.strip_prefix(&prefix).unwrap_or(r))
                .collect();
            format!(
                "policy pack `{}` (vertical `{v}`) denies this request: {}",
                d.pack_id,
                ids.join(", ")
            )
        })
    }

    /// [`Self::check_partner_in`] without side effects on a decision, for the shadow packs
    /// (issue 16): `None` when they allow (or none applies), else the denying pack's answer
    /// (`pack_id`, `reasons` as `<pack id>/<policy id>`). Masks are discarded: a shadow pack
    /// never masks.
    #[allow(clippy::too_many_arguments)]
    pub fn shadow_denial(
        &self,
        tenant: &str,
        integration: &Integration,
        route: &Route,
        scopes: &[String],
        persons: usize,
        method: &str,
        now_ms: i64,
    ) -> Option<PackDecision> {
        let mut ignored = Vec::new();
        self.decide_partner(
            tenant,
            integration,
            route,
            scopes,
            persons,
            method,
            now_ms,
            &mut ignored,
        )
        .err()
        .map(|(_, d)| d)
    }

    /// Stage 6's evaluation: the masks, or the vertical and the denying pack's answer.
    #[allow(clippy::too_many_arguments)]
    fn decide_partner(
        &self,
        tenant: &str,
        integration: &Integration,
        route: &Route,
        scopes: &[String],
        persons: usize,
        method: &str,
        now_ms: i64,
        reasons: &mut Vec<String>,
    ) -> Result<Vec<String>, (String, PackDecision)> {
        if self.is_empty() {
            return Ok(Vec::new());
        }
        let mut masks = Vec::new();
        for v in &route.verticals {
            let Some(packs) = self.by_key.get(&(tenant.to_owned(), v.clone())) else {
                continue;
            };
            let req = PackRequest {
                principal_type: "Integration",
                principal_id: &integration.id,
                action: route.action.as_str(),
                resource: &route.resource,
                tenant,
                vertical: v,
                context: serde_json::Value::Null,
                now_ms,
            };
            let key = format!(
                "{}\u{0}{}\u{0}{}\u{0}{}\u{0}{}",
                tenant,
                integration.id,
                route.id,
                v,
                scopes.join(" ")
            );
            let prep = match self.prepared.get(&key) {
                Some(p) => Some(p.clone()),
                None => {
                    // First request of this shape in this snapshot: build the entities.
                    let with_ctx = PackRequest {
                        context: serde_json::json!({
                            "scopes": scopes,
                            "verticals": integration.verticals,
                            "resource_verticals": route.verticals,
                            "data_categories": route.data_categories,
                            "route": route.id,
                            "kind": kind_str(route),
                        }),
                        ..req.clone()
                    };
                    let p = cedar_parts(&with_ctx).map(Arc::new);
                    if let Some(p) = &p
                        && self.prepared.len() < PREPARED_CAPACITY
                    {
                        self.prepared.insert(key, p.clone());
                    }
                    p
                }
            };
            // The context depends on the shape (scopes, verticals, purpose) and on the
            // request's person count, hour and method: reuse one built before when it matches.
            let hour = now_ms.div_euclid(3_600_000).rem_euclid(24);
            let cached = prep.as_ref().and_then(|p| {
                p.contexts.read().ok().and_then(|c| {
                    c.iter()
                        .find(|(n, h, m, _)| *n == persons && *h == hour && m == method)
                        .map(|(_, _, _, ctx)| ctx.clone())
                })
            });
            let cedar_ctx = cached.or_else(|| {
                let ctx = partner_context(
                    scopes,
                    &integration.verticals,
                    persons,
                    now_ms,
                    method,
                    route.consent_purpose.as_deref(),
                )?;
                if let Some(p) = &prep
                    && let Ok(mut c) = p.contexts.write()
                    && c.len() < CONTEXTS_PER_SHAPE
                {
                    c.push((persons, hour, method.to_owned(), ctx.clone()));
                }
                Some(ctx)
            });
            if let Some(d) = decide_packs(
                packs,
                now_ms,
                req.action,
                prep.as_deref(),
                cedar_ctx.as_ref(),
                true,
            ) {
                reasons.extend(d.reasons.iter().cloned());
                if !d.allowed {
                    return Err((v.clone(), d));
                }
                masks.extend(d.masked_fields);
            }
        }
        masks.sort();
        masks.dedup();
        Ok(masks)
    }
}

/// The answer of the `packs` of one (tenant, vertical) whose window holds `now_ms` to the request
/// made of `prep` and `context` (either missing: every pack denies with `EVALUATION_ERROR`).
/// The first denial wins; allows merge their reasons and masks (sorted, deduplicated). With
/// `qualify`, each reason names its pack (`<pack id>/<policy id>`). `None`: no pack is in its
/// window.
fn decide_packs(
    packs: &[Arc<CompiledPack>],
    now_ms: i64,
    action: &str,
    prep: Option<&Prepared>,
    context: Option<&Context>,
    qualify: bool,
) -> Option<PackDecision> {
    let mut out: Option<PackDecision> = None;
    for p in packs.iter().filter(|p| p.in_window(now_ms)) {
        let mut d = match (prep, context) {
            (Some(prep), Some(c)) => evaluate_pack(p, action, prep, c.clone()),
            _ => deny(p, vec![EVALUATION_ERROR.into()]),
        };
        if qualify {
            for r in &mut d.reasons {
                *r = format!("{}/{r}", p.id);
            }
        }
        if !d.allowed {
            return Some(d);
        }
        match &mut out {
            Some(o) => {
                o.reasons.extend(d.reasons);
                o.masked_fields.extend(d.masked_fields);
                o.masked_fields.sort();
                o.masked_fields.dedup();
            }
            None => out = Some(d),
        }
    }
    out
}

fn kind_str(route: &Route) -> &'static str {
    use super::model::RouteKind::*;
    match route.kind {
        RealTime => "real_time",
        Batch => "batch",
        Aggregate => "aggregate",
        Handshake => "handshake",
    }
}

fn deny(pack: &CompiledPack, reasons: Vec<String>) -> PackDecision {
    PackDecision {
        allowed: false,
        pack_id: pack.id.clone(),
        reasons,
        masked_fields: Vec::new(),
    }
}

/// One pack's answer to the request made of `prep` and `context`; `action` is `read` or `write`
/// (restricted packs allow reads only).
fn evaluate_pack(
    pack: &CompiledPack,
    action: &str,
    prep: &Prepared,
    context: Context,
) -> PackDecision {
    let Some(set) = &pack.set else {
        return deny(pack, vec![EVALUATION_ERROR.into()]);
    };
    if pack.restricted && action != "read" {
        return deny(pack, vec![RESTRICTED.into()]);
    }
    let Ok(request) = Request::new(
        prep.principal.clone(),
        prep.action.clone(),
        prep.resource.clone(),
        context,
        None,
    ) else {
        return deny(pack, vec![EVALUATION_ERROR.into()]);
    };
    let resp = Authorizer::new().is_authorized(&request, set, &prep.entities);
    let diag = resp.diagnostics();
    let name = |id: &PolicyId| {
        pack.names
            .get(id)
            .map_or_else(|| id.to_string(), |(n, _)| n.clone())
    };
    let errors: Vec<String> = diag
        .errors()
        .map(|e| match e {
            cedar_policy::AuthorizationError::PolicyEvaluationError(pe) => name(pe.policy_id()),
        })
        .collect();
    if !errors.is_empty() {
        // An erroring policy is skipped by Cedar; a skipped forbid would fail open.
        let mut reasons = vec![EVALUATION_ERROR.to_owned()];
        reasons.extend(errors);
        return deny(pack, reasons);
    }
    let mut reasons: Vec<String> = diag.reason().map(name).collect();
    reasons.sort();
    match resp.decision() {
        Decision::Allow => {
            let mut masked: Vec<String> = diag
                .reason()
                .filter_map(|id| pack.names.get(id))
                .flat_map(|(_, m)| m.iter().cloned())
                .collect();
            masked.sort();
            masked.dedup();
            PackDecision {
                allowed: true,
                pack_id: pack.id.clone(),
                reasons,
                masked_fields: masked,
            }
        }
        Decision::Deny => {
            if reasons.is_empty() {
                reasons.push(DEFAULT_DENY.into());
            }
            deny(pack, reasons)
        }
    }
}
