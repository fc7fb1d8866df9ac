//! The compiled, immutable [`PolicySnapshot`]: what the decision pipeline reads on every request.
//!
//! Built once per policy version from a validated [`PolicySet`]; swapped atomically (`ArcSwap`) when
//! the change feed announces a new version, so a decision always sees one consistent version.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::{DenyRule, Integration, PolicySet, Route, Tenant};

/// One segment of a route template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    Param(String),
}

/// A parsed path template such as `/v1/tenants/{tenant}/persons/{person_id}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub segments: Vec<Segment>,
}

impl Template {
    /// True when the template has a `{name}` parameter.
    pub fn has_param(&self, name: &str) -> bool {
        self.segments
            .iter()
            .any(|s| matches!(s, Segment::Param(p) if p == name))
    }

    /// The matching shape: literals kept, parameters anonymous. Two templates with the same shape
    /// match exactly the same paths.
    pub fn shape(&self) -> Vec<Option<String>> {
        self.segments
            .iter()
            .map(|s| match s {
                Segment::Literal(l) => Some(l.clone()),
                Segment::Param(_) => None,
            })
            .collect()
    }
}

/// Parses a route template; the error message is for policy validation.
pub fn parse_template(path: &str) -> Result<Template, String> {
    if !path.starts_with('/') {
        return Err(format!("`{path}` must start with `/`"));
    }
    if path == "/" {
        return Ok(Template {
            segments: Vec::new(),
        });
    }
    let mut segments = Vec::new();
    let mut names = HashSet::new();
    for seg in path[1..].split('/') {
        if let Some(inner) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            if inner.is_empty()
                || !inner
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_')
            {
                return Err(format!("`{{{inner}}}` is not a valid parameter name"));
            }
            if !names.insert(inner.to_owned()) {
                return Err(format!("parameter `{{{inner}}}` appears twice"));
            }
            segments.push(Segment::Param(inner.to_owned()));
        } else {
            if seg.contains(['{', '}']) {
                return Err(format!(
                    "segment `{seg}`: a parameter must be a whole segment"
                ));
            }
            match crate::path::normalize(&format!("/{seg}")) {
                Ok(n) if n.segments.len() == 1 && n.segments[0] == seg => {}
                _ => return Err(format!("segment `{seg}` is not a canonical path segment")),
            }
            segments.push(Segment::Literal(seg.to_owned()));
        }
    }
    Ok(Template { segments })
}

/// A route compiled for matching.
#[derive(Debug)]
pub struct CompiledRoute {
    pub route: Route,
    pub template: Template,
    /// The route's body rules, compiled once per snapshot (INT-9.3-1).
    pub payload: crate::payload::PayloadRules,
    /// Number of literal segments before the first parameter etc.; higher sorts first.
    specificity: Vec<bool>,
}

/// The routes of one method and segment count, most specific first, with an index on the
/// segment position whose literals tell them apart best: a request is only compared with the
/// routes whose literal there equals its segment, or that have a parameter there. So matching
/// costs about the number of routes sharing that literal, not the number of routes (100,000
/// routes: one lookup instead of a walk over all of them).
#[derive(Debug, Default)]
struct RouteIndex {
    routes: Vec<Arc<CompiledRoute>>,
    /// The indexed segment position.
    pos: usize,
    /// Literal at `pos` → indices into `routes`, ascending.
    by_literal: HashMap<String, Vec<u32>>,
    /// Routes with a parameter at `pos`, ascending.
    wildcard: Vec<u32>,
}

impl RouteIndex {
    fn build(routes: Vec<Arc<CompiledRoute>>) -> RouteIndex {
        let len = routes.first().map_or(0, |r| r.template.segments.len());
        let distinct = |p: usize| {
            routes
                .iter()
                .filter_map(|r| match &r.template.segments[p] {
                    Segment::Literal(l) => Some(l.as_str()),
                    Segment::Param(_) => None,
                })
                .collect::<std::collections::HashSet<_>>()
                .len()
        };
        let pos = (0..len)
            .max_by_key(|p| (distinct(*p), usize::MAX - p))
            .unwrap_or(0);
        let mut ix = RouteIndex {
            pos,
            ..Default::default()
        };
        for (i, r) in routes.iter().enumerate() {
            match r.template.segments.get(pos) {
                Some(Segment::Literal(l)) => {
                    ix.by_literal.entry(l.clone()).or_default().push(i as u32)
                }
                _ => ix.wildcard.push(i as u32),
            }
        }
        ix.routes = routes;
        ix
    }

    /// The candidates for `segments`, in the routes' order (most specific first).
    fn candidates<'a>(
        &'a self,
        segments: &[String],
    ) -> impl Iterator<Item = &'a Arc<CompiledRoute>> {
        let lit: &[u32] = segments
            .get(self.pos)
            .and_then(|s| self.by_literal.get(s))
            .map_or(&[], Vec::as_slice);
        let (mut a, mut b) = (lit.iter().peekable(), self.wildcard.iter().peekable());
        std::iter::from_fn(move || {
            let next = match (a.peek(), b.peek()) {
                (Some(x), Some(y)) if x < y => a.next(),
                (Some(_), Some(_)) => b.next(),
                (Some(_), None) => a.next(),
                (None, _) => b.next(),
            }?;
            Some(&self.routes[*next as usize])
        })
    }
}

/// The result of matching a request to a route: the route and the values of its parameters.
#[derive(Debug)]
pub struct RouteMatch<'a, 's> {
    pub route: &'a Route,
    /// The route's compiled body rules.
    pub payload: &'a crate::payload::PayloadRules,
    /// `(name, decoded value)` for every `{param}`.
    pub params: Vec<(&'a str, &'s str)>,
}

impl RouteMatch<'_, '_> {
    /// The value of path parameter `name`, if the template has it.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
    }
}

/// A tenant with its derived audience.
#[derive(Debug)]
pub struct TenantEntry {
    pub tenant: Tenant,
    /// The audience tokens for this tenant must carry.
    pub audience: String,
}

/// An integration with precomputed sets for the hot path.
#[derive(Debug)]
pub struct IntegrationEntry {
    pub integration: Integration,
    pub verticals: HashSet<String>,
    pub scopes: HashSet<String>,
    pub routes: Option<HashSet<String>>,
    /// Decoded API key digest (32 bytes), compared in constant time.
    pub api_key_sha256: Option<Vec<u8>>,
    /// Decoded certificate digest (32 bytes).
    pub mtls_cert_sha256: Option<Vec<u8>>,
}

/// An immutable, compiled policy version.
#[derive(Debug, Default)]
pub struct PolicySnapshot {
    /// Store version this snapshot was built from (0 = built from files, not from a store).
    pub version: i64,
    pub tenants: HashMap<String, Arc<TenantEntry>>,
    /// Exact issuer → tenant id.
    pub issuers: HashMap<String, String>,
    pub integrations: HashMap<String, Arc<IntegrationEntry>>,
    /// Per method and segment count, routes most specific first, indexed by one segment.
    routes: HashMap<String, HashMap<usize, RouteIndex>>,
    /// Every literal segment of every route template: what a recorded path shape may keep
    /// verbatim (no person id is a template literal).
    literals: HashSet<String>,
    /// Deny rules per tenant.
    pub deny_rules: HashMap<String, Vec<DenyRule>>,
    /// The partner-traffic deny rules per tenant that are active (status), with their windows
    /// parsed once here instead of on every request (stage 6).
    pub traffic_denies: HashMap<String, Vec<TrafficDeny>>,
    /// Active policy packs in mode `enforce`, compiled (stage 6).
    pub packs: super::cedar::CompiledPacks,
    /// Partner-traffic deny rules in mode `shadow` per tenant, active (status): evaluated after
    /// the enforced ones, only ever recorded as shadow findings (issue 16).
    pub shadow_denies: HashMap<String, Vec<TrafficDeny>>,
    /// Active policy packs in mode `shadow`, compiled separately from [`Self::packs`]: only ever
    /// recorded as shadow findings, their masks never applied (issue 16).
    pub shadow_packs: super::cedar::CompiledPacks,
    /// The set it was compiled from.
    pub set: PolicySet,
}

impl PolicySnapshot {
    /// Compiles a validated set. `default_audience` applies to tenants without their own.
    /// Infallible for a set that passed validation; templates that fail to parse are skipped.
    pub fn compile(set: PolicySet, version: i64, default_audience: &str) -> PolicySnapshot {
        let mut snap = PolicySnapshot {
            version,
            packs: super::cedar::CompiledPacks::compile(&set.policy_packs),
            shadow_packs: super::cedar::CompiledPacks::compile_mode(
                &set.policy_packs,
                super::model::Mode::Shadow,
            ),
            ..Default::default()
        };
        for t in &set.tenants {
            snap.issuers.insert(t.issuer.clone(), t.id.clone());
            snap.tenants.insert(
                t.id.clone(),
                Arc::new(TenantEntry {
                    audience: t
                        .audience
                        .clone()
                        .unwrap_or_else(|| default_audience.to_owned()),
                    tenant: t.clone(),
                }),
            );
        }
        for i in &set.integrations {
            snap.integrations.insert(
                i.id.clone(),
                Arc::new(IntegrationEntry {
                    verticals: i.verticals.iter().cloned().collect(),
                    scopes: i.scopes.iter().cloned().collect(),
                    routes: i.routes.as_ref().map(|r| r.iter().cloned().collect()),
                    api_key_sha256: i.api_key_sha256.as_ref().and_then(|h| hex::decode(h).ok()),
                    mtls_cert_sha256: i
                        .mtls_cert_sha256
                        .as_ref()
                        .and_then(|h| hex::decode(h).ok()),
                    integration: i.clone(),
                }),
            );
        }
        let mut lists: HashMap<(String, usize), Vec<Arc<CompiledRoute>>> = HashMap::new();
        for r in &set.routes {
            let Ok(template) = parse_template(&r.path) else {
                continue;
            };
            for s in &template.segments {
                if let Segment::Literal(l) = s {
                    snap.literals.insert(l.clone());
                }
            }
            let specificity = template
                .segments
                .iter()
                .map(|s| matches!(s, Segment::Literal(_)))
                .collect();
            // Validation compiled the same rules; a failure here skips the route (fail closed).
            let Ok(payload) = crate::payload::PayloadRules::compile(r) else {
                continue;
            };
            let compiled = Arc::new(CompiledRoute {
                route: r.clone(),
                template,
                payload,
                specificity,
            });
            for m in &r.methods {
                lists
                    .entry((m.clone(), compiled.template.segments.len()))
                    .or_default()
                    .push(compiled.clone());
            }
        }
        for ((method, len), mut list) in lists {
            // Literal beats parameter, segment by segment (ties cannot match the same path:
            // validation rejects equal shapes).
            list.sort_by(|a, b| b.specificity.cmp(&a.specificity));
            snap.routes
                .entry(method)
                .or_default()
                .insert(len, RouteIndex::build(list));
        }
        for d in &set.deny_rules {
            snap.deny_rules
                .entry(d.tenant.clone())
                .or_default()
                .push(d.clone());
            if d.for_traffic() && d.status == super::model::DenyStatus::Active {
                let map = if d.mode.is_shadow() {
                    &mut snap.shadow_denies
                } else {
                    &mut snap.traffic_denies
                };
                map.entry(d.tenant.clone())
                    .or_default()
                    .push(TrafficDeny::new(d.clone()));
            }
        }
        snap.set = set;
        snap
    }

    /// True when `segment` is a literal segment of some route template.
    pub fn is_literal(&self, segment: &str) -> bool {
        self.literals.contains(segment)
    }

    /// Finds the most specific route for `method` and normalized `segments`; `None` = default deny.
    pub fn match_route<'a, 's>(
        &'a self,
        method: &str,
        segments: &'s [String],
    ) -> Option<RouteMatch<'a, 's>> {
        let index = self.routes.get(method)?.get(&segments.len())?;
        'routes: for c in index.candidates(segments) {
            let mut params = Vec::new();
            for (t, s) in c.template.segments.iter().zip(segments) {
                match t {
                    Segment::Literal(l) if l == s => {}
                    Segment::Literal(_) => continue 'routes,
                    Segment::Param(p) => params.push((p.as_str(), s.as_str())),
                }
            }
            return Some(RouteMatch {
                route: &c.route,
                payload: &c.payload,
                params,
            });
        }
        None
    }
}

/// A partner-traffic deny rule (no subject, or subject type `integration`) whose window bounds
/// are parsed once per snapshot. An unparsable bound is ignored, so the rule stays in force
/// (fail closed, as [`DenyRule::in_force`]; validation rejects such documents anyway).
#[derive(Debug, Clone)]
pub struct TrafficDeny {
    pub rule: DenyRule,
    /// `active_from`, ms since the epoch.
    pub from_ms: Option<i64>,
    /// `active_until`, ms since the epoch (exclusive).
    pub until_ms: Option<i64>,
}

impl TrafficDeny {
    fn new(rule: DenyRule) -> Self {
        let ms = |t: &Option<String>| {
            t.as_deref()
                .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
                .map(|t| t.timestamp_millis())
        };
        TrafficDeny {
            from_ms: ms(&rule.active_from),
            until_ms: ms(&rule.active_until),
            rule,
        }
    }

    /// Inside its window at `now_ms` (ms since the epoch); the status was checked when the
    /// snapshot was built.
    pub fn in_window(&self, now_ms: i64) -> bool {
        self.from_ms.is_none_or(|f| f <= now_ms) && self.until_ms.is_none_or(|u| now_ms < u)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Action, RouteKind};

    fn route(id: &str, path: &str) -> Route {
        Route {
            id: id.into(),
            methods: vec!["GET".into()],
            path: path.into(),
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
        }
    }

    #[test]
    fn literal_beats_parameter() {
        let set = PolicySet {
            routes: vec![route("param", "/v1/{x}/a"), route("lit", "/v1/me/a")],
            ..Default::default()
        };
        let snap = PolicySnapshot::compile(set, 1, "aud");
        let segs: Vec<String> = ["v1", "me", "a"].iter().map(|s| s.to_string()).collect();
        assert_eq!(snap.match_route("GET", &segs).unwrap().route.id, "lit");
        let segs: Vec<String> = ["v1", "you", "a"].iter().map(|s| s.to_string()).collect();
        let m = snap.match_route("GET", &segs).unwrap();
        assert_eq!(m.route.id, "param");
        assert_eq!(m.param("x"), Some("you"));
        assert!(snap.match_route("POST", &segs).is_none());
    }

    /// INT-4.1-3: the route index (here on the second segment, which tells `b` and `d` apart)
    /// gives the same answer as walking every route: the most specific match, a parameter
    /// route where no literal fits, and default deny.
    #[test]
    fn indexed_matching_keeps_the_most_specific_route() {
        let set = PolicySet {
            routes: vec![
                route("param-mid", "/a/{x}/c"),
                route("b", "/a/b/{y}"),
                route("d", "/a/d/{y}"),
            ],
            ..Default::default()
        };
        let snap = PolicySnapshot::compile(set, 1, "aud");
        let m = |p: &[&str]| {
            let segs: Vec<String> = p.iter().map(|s| s.to_string()).collect();
            snap.match_route("GET", &segs).map(|m| m.route.id.clone())
        };
        assert_eq!(m(&["a", "b", "c"]).as_deref(), Some("b"));
        assert_eq!(m(&["a", "d", "c"]).as_deref(), Some("d"));
        assert_eq!(m(&["a", "e", "c"]).as_deref(), Some("param-mid"));
        assert_eq!(m(&["a", "b", "z"]).as_deref(), Some("b"));
        assert_eq!(m(&["a", "e", "z"]), None);
        assert_eq!(m(&["a", "b"]), None);
    }

    #[test]
    fn templates_are_checked() {
        assert!(parse_template("/v1/{a}/{a}").is_err());
        assert!(parse_template("/v1/x{a}").is_err());
        assert!(parse_template("/v1/../x").is_err());
        assert!(parse_template("v1").is_err());
        assert!(
            parse_template("/v1/{tenant}/x")
                .unwrap()
                .has_param("tenant")
        );
    }
}
