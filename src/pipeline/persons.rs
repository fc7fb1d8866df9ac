//! The persons a request touches: where a route says each person id is (path, query, header or
//! JSON body pointer), read and bounded (INT-4.3-1).

use super::*;

/// The ids of the persons a request touches, from where the route says they are (stage 3).
///
/// `parsed`: the body as the payload stage already parsed it, if it did (else it is parsed here,
/// as strictly).
///
/// Errors: `PERSON_ID_MISSING` (path, query, header without the id); `PAYLOAD_INVALID` (no body,
/// a body Envoy truncated, larger than `max_body_bytes`, not JSON, a key repeated in one object,
/// no string at the pointer, more than `max_persons`).
pub(super) fn persons_of(
    route: &Route,
    m: &crate::policy::snapshot::RouteMatch<'_, '_>,
    norm: &path::NormalizedPath,
    facts: &RequestFacts,
    settings: &PipelineSettings,
    parsed: Option<&serde_json::Value>,
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
            let owned;
            let json = match parsed {
                Some(j) => j,
                None => match crate::payload::parse_json(body) {
                    Ok(j) => {
                        owned = j;
                        &owned
                    }
                    Err(m) => return invalid(m),
                },
            };
            match persons_at(json, pointer, settings.max_persons) {
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
