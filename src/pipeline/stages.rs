//! The pure stages: 2–6b ([`authorize`]: integration, second factors, route, tenant and
//! vertical (with umbrella-approved cross-tenant access, INT-4.5-2), scope, deny rules and policy
//! packs, data residency (INT-4.5-3, INT-4.5-4)) and 8 ([`minimize`], [`apply_pack_masks`]: data
//! minimization). No I/O, no transport types.

use super::*;

/// The bearer token of the `authorization` header (scheme case-insensitive), if any.
pub fn bearer(headers: &HashMap<String, String>) -> Option<&str> {
    let v = headers.get("authorization")?;
    let (scheme, token) = v.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// What stages 2–6 established: the integration, the route and the ids of the persons the request
/// touches (deduplicated, in request order; they never enter a log).
pub struct Authorized<'s> {
    pub integration: &'s IntegrationEntry,
    /// The tenant the request reaches (`{tenant}` of the path, else the token's): the
    /// integration's own tenant, or a partner tenant it is approved for (INT-4.5-2). Consent
    /// (stage 7) is checked in this tenant.
    pub tenant: &'s str,
    pub route: &'s Route,
    pub persons: Vec<String>,
    /// Fields the policy packs' determining permits mask (`@mask`), for stage 8.
    pub pack_masks: Vec<String>,
}

/// Stages 2–6b, pure: integration, second factors, route, tenant and vertical, scope, the body
/// (with the person ids it carries), deny rules and policy packs, residency. Fills `d` (route,
/// target tenant, verticals, scopes, incidents, stages) as it goes. Stage 7 (consent, async) and
/// 8 ([`minimize`]) follow.
///
/// A request whose path names another tenant than the token's is cross-tenant: allowed on only
/// when the integration lists that tenant in `partner_tenants`, carries traffic (active or
/// restricted) and its approval is on record (`onboarding.approved_by` and
/// `onboarding.legal_document_id`: the umbrella authority approves cross-tenant integrations,
/// INT-4.5-2); every later stage then applies that target tenant's rules (deny rules of both
/// tenants, the target's policy packs, residency and consent). Anything else is 403
/// `TENANT_MISMATCH` with a `cross_tenant` incident.
///
/// Shadow mode (issue 16): after the enforced deny rules pass, partner-traffic deny rules in mode
/// `shadow` that would hit are appended to `d.shadow`; after the enforced packs allow, the shadow
/// pack of each vertical is evaluated the same way and a would-be denial is appended too. Shadow
/// documents never change the result, the masks or the headers, and only requests that reach
/// stage 6 get their findings (a request denied earlier gets none).
///
/// Returns the integration, target tenant, route and persons, or the first denial.
pub fn authorize<'s>(
    snap: &'s PolicySnapshot,
    facts: &RequestFacts,
    token: &VerifiedToken,
    settings: &PipelineSettings,
    d: &mut Decision,
) -> Result<Authorized<'s>, Denial> {
    let (integ, handshake_only) = integration_stage(snap, token, d)?;

    // Stage 1, second factors (they need the integration record): INT-4.2-5/6/7.
    d.stages.push(Stage::SecondFactor);
    second_factors(integ, facts, token, settings)?;

    // Stage 3: route.
    d.stages.push(Stage::Route);
    overrides_agree(facts, settings)?;
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
    route_stage(snap, integ, route, m.param("tenant"), handshake_only, d)?;
    let target = tenant_vertical_stage(snap, integ, route, m.param("tenant"), token, d)?;
    scope_stage(integ, route, token, d)?;

    // Stage 5b: the body against the route's media types and schema (INT-5.2-1, INT-9.3-1,
    // EXT-4.4-2), then the persons it names; only for callers the route is meant for, so a
    // caller without the scope learns nothing about the route's schema.
    let body_json = if m.payload.has_schema()
        || crate::payload::carries_body(&facts.headers, facts.body.as_deref())
    {
        d.stages.push(Stage::Payload);
        m.payload
            .check(
                &facts.headers,
                facts.body.as_deref(),
                facts.body_truncated,
                settings.max_body_bytes,
            )
            .map_err(|f| f.denial())?
    } else {
        None
    };
    let persons = persons_of(route, &m, &norm, facts, settings, body_json.as_ref())?;
    d.persons = persons.len();

    let pack_masks = deny_pack_stage(snap, integ, target, route, persons.len(), &facts.method, d)?;
    residency_stage(snap, integ, target, route, d)?;

    Ok(Authorized {
        integration: integ,
        tenant: target,
        route,
        persons,
        pack_masks,
    })
}

/// Stage 2, the policy part of [`authorize`] (INT-4.1-1, INT-4.1-2, INT-6.2-*): the token's
/// integration exists, belongs to the token's tenant, is bound to the token's client, carries
/// traffic, and declares every vertical of the token. Pushes [`Stage::Integration`].
///
/// Returns the integration and whether it may call handshake routes only (approved, ONB-6), or
/// the denial. Reused by the impact preview ([`crate::impact`]).
pub fn integration_stage<'s>(
    snap: &'s PolicySnapshot,
    token: &VerifiedToken,
    d: &mut Decision,
) -> Result<(&'s IntegrationEntry, bool), Denial> {
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

    Ok((integ, handshake_only))
}

/// Stage 3, the policy part of [`authorize`] once `route` matched (`tenant_param`: the path's
/// `{tenant}`, if any): records the route in `d` and denies an approved integration's
/// non-handshake request (ONB-6) and a restricted integration's write (INT-6.2-2). Reused by
/// the impact preview ([`crate::impact`]).
pub fn route_stage(
    snap: &PolicySnapshot,
    integ: &IntegrationEntry,
    route: &Route,
    tenant_param: Option<&str>,
    handshake_only: bool,
    d: &mut Decision,
) -> Result<(), Denial> {
    let i = &integ.integration;
    d.path = route_path(snap, route, tenant_param);
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

    Ok(())
}

/// Stage 4 of [`authorize`] (INT-4.5-1, INT-4.5-2, INT-4.4-2, INT-9.4-1): the tenant the request
/// reaches (`tenant_param`, the path's `{tenant}`, else the integration's own) must be the
/// integration's or an approved partner tenant, and every vertical of `route` must be the
/// integration's and the token's. Returns the reached tenant. Reused by [`crate::impact`].
pub fn tenant_vertical_stage<'s>(
    snap: &'s PolicySnapshot,
    integ: &'s IntegrationEntry,
    route: &Route,
    tenant_param: Option<&str>,
    token: &VerifiedToken,
    d: &mut Decision,
) -> Result<&'s str, Denial> {
    let i = &integ.integration;
    // Stage 4: tenant and vertical (INT-4.5-1, INT-4.5-2, INT-4.4-2, INT-9.4-1).
    d.stages.push(Stage::TenantVertical);
    let target: &'s str = match tenant_param {
        Some(t) if t != token.tenant_id => {
            // Only a tenant of the policy is recorded: the path segment is request input.
            let known = snap.tenants.get_key_value(t).map(|(k, _)| k.as_str());
            if let Some(k) = known {
                d.target_tenant_id = Some(k.to_owned());
            }
            match known {
                Some(k) if cross_tenant_approved(i, k) => k,
                _ => {
                    d.incidents.push(Incident::CrossTenant);
                    let msg = if known.is_some_and(|k| i.partner_tenants.iter().any(|p| p == k)) {
                        "the integration's access to this partner tenant is not approved and active (INT-4.5-2)"
                    } else {
                        "the path names another tenant than the token"
                    };
                    return Err(Denial::new(DenyCode::TenantMismatch, msg));
                }
            }
        }
        _ => i.tenant.as_str(),
    };
    for v in &route.verticals {
        if !(integ.verticals.contains(v) && token.verticals.contains(v)) {
            d.incidents.push(Incident::VerticalMisScoped);
            return Err(Denial::new(
                DenyCode::VerticalNotPermitted,
                format!("vertical `{v}` is outside the integration's effective verticals"),
            ));
        }
    }

    Ok(target)
}

/// Stage 5 of [`authorize`] (ONB-2, ONB-PRIV-01): the route is in the integration's contract
/// and its scope is granted by both the contract and the token; records the effective scopes
/// in `d`. Reused by [`crate::impact`].
pub fn scope_stage(
    integ: &IntegrationEntry,
    route: &Route,
    token: &VerifiedToken,
    d: &mut Decision,
) -> Result<(), Denial> {
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

    Ok(())
}

/// Stage 6 of [`authorize`]: deny rules (ADM-3) of the integration's tenant and the reached
/// tenant `target`, then the policy packs (Cedar) of the route's verticals in `target` with
/// `persons` (count), `method` and `d.time` (ADM-6, INT-4.5-2). Returns the fields the
/// determining permits mask; the determining policies go to `d.reasons`. Reused by
/// [`crate::impact`].
pub fn deny_pack_stage(
    snap: &PolicySnapshot,
    integ: &IntegrationEntry,
    target: &str,
    route: &Route,
    persons: usize,
    method: &str,
    d: &mut Decision,
) -> Result<Vec<String>, Denial> {
    let i = &integ.integration;
    // Stage 6: deny rules (ADM-3): the integration's own tenant's and, cross-tenant, the target
    // tenant's (INT-4.5-2).
    d.stages.push(Stage::DenyRules);
    let now_ms = d.time.timestamp_millis();
    let tenants = std::iter::once(i.tenant.as_str()).chain((target != i.tenant).then_some(target));
    for rules in tenants.filter_map(|t| snap.traffic_denies.get(t)) {
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

    // Stage 6, shadow (issue 16): shadow deny rules in their window that would hit are recorded,
    // never enforced (only reached when no enforced rule denied).
    for rules in std::iter::once(i.tenant.as_str())
        .chain((target != i.tenant).then_some(target))
        .filter_map(|t| snap.shadow_denies.get(t))
    {
        for r in rules {
            if r.in_window(now_ms) && deny_rule_hits(&r.rule, &i.id, route) {
                d.shadow.push(ShadowFinding {
                    code: DenyCode::DenyRuleMatched,
                    document: format!("deny_rule/{}", r.rule.id),
                    reasons: Vec::new(),
                });
            }
        }
    }

    // Stage 6 (continued): the active policy packs of the route's verticals in the tenant the
    // request reaches (Cedar; forbid wins, no permit = deny, evaluation errors deny) (ADM-6,
    // INT-4.5-2).
    let pack_masks = snap
        .packs
        .check_partner_in(
            target,
            i,
            route,
            &d.scopes,
            persons,
            method,
            d.time.timestamp_millis(),
            &mut d.reasons,
        )
        .map_err(|m| Denial::new(DenyCode::PolicyDenied, m))?;
    // Shadow packs (issue 16), only when the enforced packs allowed: a would-be denial is a
    // finding; their masks are never applied.
    if !snap.shadow_packs.is_empty()
        && let Some(p) = snap.shadow_packs.shadow_denial(
            target,
            i,
            route,
            &d.scopes,
            persons,
            method,
            d.time.timestamp_millis(),
        )
    {
        d.shadow.push(ShadowFinding {
            code: DenyCode::PolicyDenied,
            document: format!("policy_pack/{}", p.pack_id),
            reasons: p.reasons,
        });
    }
    Ok(pack_masks)
}

/// Stage 6b of [`authorize`] (INT-4.5-3, INT-4.5-4): [`residency`] of the route's data for the
/// reached tenant `target`, with a `residency_violation` incident on denial. Reused by
/// [`crate::impact`].
pub fn residency_stage(
    snap: &PolicySnapshot,
    integ: &IntegrationEntry,
    target: &str,
    route: &Route,
    d: &mut Decision,
) -> Result<(), Denial> {
    let i = &integ.integration;
    // Stage 6b: data residency (INT-4.5-3, INT-4.5-4), before any consent lookup or data flow.
    d.stages.push(Stage::Residency);
    if let Err(denial) = residency(snap, &i.tenant, target, route) {
        d.incidents.push(Incident::ResidencyViolation);
        return Err(denial);
    }

    Ok(())
}

/// Stage 4: whether integration `i` may reach partner tenant `target` (INT-4.5-2): `target` is
/// in its `partner_tenants`, it carries traffic (active or restricted; an approved integration
/// awaiting its first handshake does not) and its approval is on record with the document it
/// rests on (`onboarding.approved_by`, `onboarding.legal_document_id`; the admin API lets only
/// the umbrella authority approve an integration that has partner tenants).
fn cross_tenant_approved(i: &crate::policy::Integration, target: &str) -> bool {
    i.partner_tenants.iter().any(|t| t == target)
        && matches!(
            i.state,
            IntegrationState::Active | IntegrationState::Restricted
        )
        && i.onboarding.as_ref().is_some_and(|o| {
            o.approved_by
                .as_deref()
                .is_some_and(|a| !a.trim().is_empty())
                && o.legal_document_id
                    .as_deref()
                    .is_some_and(|l| !l.trim().is_empty())
        })
}

/// Stage 6b (INT-4.5-3, INT-4.5-4): the regions a request to `route` moves tenant `target`'s
/// data to must be allowed by `target`'s residency rules for the route's data class. Those
/// regions are the route's `data_region` (absent: `target`'s residency region, in-region) and,
/// for a cross-tenant request, the residency region of the integration's home tenant `home`.
/// Allowed: `target`'s `residency_region`, its `allowed_export_regions` and, when the route
/// carries no raw personal data ([`Route::carries_personal_data`]), its
/// `aggregate_export_regions`.
///
/// Errors: 403 `RESIDENCY_VIOLATION` naming the route, region and data class (no request
/// data); a tenant missing from the snapshot denies too (fail closed).
pub fn residency(
    snap: &PolicySnapshot,
    home: &str,
    target: &str,
    route: &Route,
) -> Result<(), Denial> {
    let region_of = |t: &str| {
        snap.tenants
            .get(t)
            .map(|e| e.tenant.residency_region.as_str())
    };
    let (Some(t), Some(home_region)) = (snap.tenants.get(target), region_of(home)) else {
        return Err(Denial::new(
            DenyCode::ResidencyViolation,
            "the tenant's residency rules are not in the policy",
        ));
    };
    let t = &t.tenant;
    let personal = route.carries_personal_data();
    let allowed = |r: &str| {
        r == t.residency_region
            || t.allowed_export_regions.iter().any(|x| x == r)
            || (!personal && t.aggregate_export_regions.iter().any(|x| x == r))
    };
    let class = if personal {
        "raw personal data"
    } else {
        "aggregate data"
    };
    let region = route.data_region.as_deref().unwrap_or(&t.residency_region);
    if !allowed(region) {
        return Err(Denial::new(
            DenyCode::ResidencyViolation,
            format!(
                "route `{}` serves {class} from region `{region}`, outside tenant `{target}`'s residency rules",
                route.id
            ),
        ));
    }
    if home != target && !allowed(home_region) {
        return Err(Denial::new(
            DenyCode::ResidencyViolation,
            format!(
                "{class} of tenant `{target}` may not go to region `{home_region}` of the partner's tenant `{home}`"
            ),
        ));
    }
    Ok(())
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

/// Stage 3, request smuggling: a method-override header (`x-http-method-override`…) whose value
/// is not the request's own method, or a path-override header (`x-original-url`…) whose value is
/// not its own path (with or without the query), makes the request mean two things: the route
/// scp-pep authorized and the one an upstream framework would run. Denied 400
/// `REQUEST_AMBIGUOUS`, naming the header but never echoing its value. Headers that agree are
/// allowed (and removed upstream by the caller).
fn overrides_agree(facts: &RequestFacts, settings: &PipelineSettings) -> Result<(), Denial> {
    if facts.fixed_removals {
        let mut reserved: Vec<&String> = facts
            .headers
            .keys()
            .filter(|k| {
                k.starts_with("x-scp-") && !crate::grpc::UPSTREAM_HEADERS.contains(&k.as_str())
            })
            .collect();
        reserved.sort();
        if let Some(name) = reserved.first() {
            return Err(Denial::new(
                DenyCode::RequestAmbiguous,
                format!(
                    "header `{name}` is reserved for scp-pep and the proxy in front cannot remove it"
                ),
            ));
        }
    }
    for name in &settings.method_override_headers {
        if let Some(v) = facts.headers.get(name)
            && !v.trim().eq_ignore_ascii_case(&facts.method)
        {
            return Err(Denial::new(
                DenyCode::RequestAmbiguous,
                format!("header `{name}` names another method than the request's"),
            ));
        }
    }
    let path_only = facts.path.split('?').next().unwrap_or("");
    for name in &settings.path_override_headers {
        if let Some(v) = facts.headers.get(name)
            && v != &facts.path
            && v != path_only
        {
            return Err(Denial::new(
                DenyCode::RequestAmbiguous,
                format!("header `{name}` names another path than the request's"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap() -> PolicySnapshot {
        let yaml = "tenants:\n  - {id: ke, residency_region: africa-east, issuer: 'https://idp.example/realms/ke', jwks: {url: 'https://idp.example/ke'}, aggregate_export_regions: [eu-west]}\n  - {id: ug, residency_region: africa-east, issuer: 'https://idp.example/realms/ug', jwks: {url: 'https://idp.example/ug'}, allowed_export_regions: [africa-west]}\n  - {id: tz, residency_region: africa-south, issuer: 'https://idp.example/realms/tz', jwks: {url: 'https://idp.example/tz'}}\n";
        let f = crate::policy::PolicySet::parse_file("t.yaml", yaml).unwrap();
        let set = crate::policy::PolicySet::from_files(vec![("t.yaml".into(), f)]).unwrap();
        PolicySnapshot::compile(set, 1, "aud")
    }

    fn route(kind: RouteKind, person: bool, region: Option<&str>) -> Route {
        Route {
            id: "r".into(),
            methods: vec!["GET".into()],
            path: "/v1/tenants/{tenant}/x".into(),
            verticals: vec!["health".into()],
            action: Action::Read,
            resource: "r".into(),
            scope: "s".into(),
            person_id: person.then(|| PersonLocation::Query { name: "pid".into() }),
            consent_purpose: None,
            data_categories: vec![],
            fields: vec![],
            kind,
            content_types: None,
            body_schema: None,
            data_region: region.map(str::to_owned),
        }
    }

    /// INT-4.5-3, INT-4.5-4: stage 6b allows the tenant's own region and its export regions per
    /// data class; only aggregate routes without a person id are aggregate; a cross-tenant
    /// request also needs the partner's home region allowed.
    #[test]
    fn residency_by_data_class_and_home_region() {
        let s = snap();
        let code = |r: Result<(), Denial>| r.err().map(|d| d.code);
        let bad = Some(DenyCode::ResidencyViolation);
        for kind in [
            RouteKind::RealTime,
            RouteKind::Batch,
            RouteKind::Handshake,
            RouteKind::Aggregate,
        ] {
            // No data_region and the tenant's own region: always allowed.
            assert_eq!(
                code(residency(&s, "ke", "ke", &route(kind, true, None))),
                None
            );
            let own = route(kind, false, Some("africa-east"));
            assert_eq!(code(residency(&s, "ke", "ke", &own)), None);
        }
        let eu_aggr = route(RouteKind::Aggregate, false, Some("eu-west"));
        assert_eq!(code(residency(&s, "ke", "ke", &eu_aggr)), None);
        assert_eq!(code(residency(&s, "ug", "ug", &eu_aggr)), bad);
        for personal in [
            route(RouteKind::Aggregate, true, Some("eu-west")),
            route(RouteKind::RealTime, false, Some("eu-west")),
            route(RouteKind::Handshake, false, Some("eu-west")),
        ] {
            assert!(personal.carries_personal_data());
            assert_eq!(code(residency(&s, "ke", "ke", &personal)), bad);
        }
        let west = route(RouteKind::RealTime, true, Some("africa-west"));
        assert_eq!(code(residency(&s, "ug", "ug", &west)), None);
        assert_eq!(
            code(residency(&s, "ke", "ug", &west)),
            None,
            "ke is in africa-east too"
        );
        assert_eq!(code(residency(&s, "ke", "ke", &west)), bad);
        // Cross-tenant into tz: ke's partner receives the data in africa-east.
        let local = route(RouteKind::RealTime, true, None);
        assert_eq!(code(residency(&s, "tz", "tz", &local)), None);
        assert_eq!(code(residency(&s, "ke", "tz", &local)), bad);
        // A tenant missing from the snapshot denies (fail closed).
        assert_eq!(code(residency(&s, "ke", "zz", &local)), bad);
    }
}
