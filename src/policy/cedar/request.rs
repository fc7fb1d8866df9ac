//! One request in Cedar's terms: the principal and resource entities and the context a pack is
//! evaluated against, built from a [`PackRequest`] (no JSON parsing at request time).

use super::*;

pub(super) fn ms(t: Option<&str>) -> Option<i64> {
    t.and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.timestamp_millis())
}

pub(super) fn strings(ctx: &Value, key: &str) -> Vec<String> {
    ctx.get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

pub(super) fn text(ctx: &Value, key: &str) -> String {
    ctx.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

pub(super) fn set(v: Vec<String>) -> RestrictedExpression {
    RestrictedExpression::new_set(v.into_iter().map(RestrictedExpression::new_string))
}

pub(super) fn s(v: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(v.to_owned())
}

pub(super) fn uid(ty: &str, id: &str) -> Option<EntityUid> {
    let t = EntityTypeName::from_str(ty).ok()?;
    Some(EntityUid::from_type_name_and_id(t, EntityId::new(id)))
}

/// Builds the request-independent part of the Cedar request for `req` (principal, action,
/// resource, entities); `None` when the principal type or ids cannot be expressed (the caller
/// denies).
pub(super) fn cedar_parts(req: &PackRequest) -> Option<Prepared> {
    let ctx = &req.context;
    let principal = uid(&format!("Scp::{}", req.principal_type), req.principal_id)?;
    let principal_attrs: HashMap<String, RestrictedExpression> = match req.principal_type {
        "Integration" => HashMap::from([
            ("tenant".into(), s(req.tenant)),
            ("verticals".into(), set(strings(ctx, "verticals"))),
            ("scopes".into(), set(strings(ctx, "scopes"))),
        ]),
        "User" => HashMap::from([
            ("tenant".into(), s(req.tenant)),
            ("roles".into(), set(strings(ctx, "roles"))),
        ]),
        _ => return None,
    };
    let resource_id = {
        let r = text(ctx, "route");
        if r.is_empty() {
            req.resource.to_owned()
        } else {
            r
        }
    };
    let resource = uid("Scp::Resource", &resource_id)?;
    let mut rv = strings(ctx, "resource_verticals");
    if rv.is_empty() {
        rv.push(req.vertical.to_owned());
    }
    let resource_attrs = HashMap::from([
        ("tenant".to_owned(), s(req.tenant)),
        ("vertical".to_owned(), s(req.vertical)),
        ("verticals".to_owned(), set(rv)),
        ("name".to_owned(), s(req.resource)),
        ("route".to_owned(), s(&text(ctx, "route"))),
        ("kind".to_owned(), s(&text(ctx, "kind"))),
        (
            "data_categories".to_owned(),
            set(strings(ctx, "data_categories")),
        ),
    ]);
    let entities = Entities::from_entities(
        [
            Entity::new(principal.clone(), principal_attrs, HashSet::new()).ok()?,
            Entity::new(resource.clone(), resource_attrs, HashSet::new()).ok()?,
        ],
        None,
    )
    .ok()?;
    let action = uid("Scp::Action", req.action)?;
    Some(Prepared {
        principal,
        action,
        resource,
        entities,
        contexts: Default::default(),
    })
}

/// The per-request Cedar context of a partner request, built directly from its facts (the same
/// pairs as [`cedar_context`]).
pub(super) fn partner_context(
    scopes: &[String],
    verticals: &[String],
    persons: usize,
    now_ms: i64,
    method: &str,
    purpose: Option<&str>,
) -> Option<Context> {
    let hour = now_ms.div_euclid(3_600_000).rem_euclid(24);
    let strs = |v: &[String]| {
        RestrictedExpression::new_set(v.iter().cloned().map(RestrictedExpression::new_string))
    };
    let mut pairs = vec![
        ("scopes".to_owned(), strs(scopes)),
        ("verticals".to_owned(), strs(verticals)),
        (
            "persons".to_owned(),
            RestrictedExpression::new_long(persons as i64),
        ),
        ("hour".to_owned(), RestrictedExpression::new_long(hour)),
        ("method".to_owned(), s(method)),
    ];
    if let Some(p) = purpose {
        pairs.push(("purpose".to_owned(), s(p)));
    }
    Context::from_pairs(pairs).ok()
}

/// The per-request Cedar context of `req`: `scopes`, `verticals`, `persons`, `hour` (UTC),
/// `method` and `purpose` when the route has one.
pub(super) fn cedar_context(req: &PackRequest) -> Option<Context> {
    let ctx = &req.context;
    let hour = req.now_ms.div_euclid(3_600_000).rem_euclid(24);
    let persons = ctx.get("persons").and_then(Value::as_i64).unwrap_or(0);
    let mut pairs = vec![
        ("scopes".to_owned(), set(strings(ctx, "scopes"))),
        ("verticals".to_owned(), set(strings(ctx, "verticals"))),
        (
            "persons".to_owned(),
            RestrictedExpression::new_long(persons),
        ),
        ("hour".to_owned(), RestrictedExpression::new_long(hour)),
        ("method".to_owned(), s(&text(ctx, "method"))),
    ];
    if let Some(p) = ctx.get("purpose").and_then(Value::as_str) {
        pairs.push(("purpose".to_owned(), s(p)));
    }
    Context::from_pairs(pairs).ok()
}
