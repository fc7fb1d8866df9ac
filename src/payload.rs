//! Payload validation of partner requests (INT-9.3-1, EXT-4.4-2, INT-5.2-1).
//!
//! Each route says which media types a request body may have (`content_types`; absent: JSON,
//! plus CSV on batch routes — XML, HL7, SDMX and the like only where a route lists them) and,
//! for push and write routes, a JSON Schema the body must satisfy (`body_schema`, draft 2020-12
//! unless the schema says otherwise). [`PayloadRules::compile`] turns both into a checker once
//! per policy snapshot; [`PayloadRules::check`] runs on every request that matched the route.
//!
//! What is refused, and how:
//!
//! - a body of a media type the route does not list, or a body without `content-type`: 415
//!   `MEDIA_TYPE_UNSUPPORTED`, naming the accepted types;
//! - a JSON body that is not UTF-8 JSON, repeats a key in one object (two parsers could read two
//!   different values: a parser differential), or nests deeper than [`MAX_DEPTH`]: 400
//!   `PAYLOAD_INVALID`;
//! - a body that fails the route's schema: 400 `PAYLOAD_INVALID` with the JSON pointer of the
//!   failing value and the schema keyword at fault (`required`, `type`, `maxLength`…), in the
//!   message and as `field`/`keyword` of the denial. Never the value itself, which may be personal
//!   data; pointer segments the schema does not name (keys of free-form objects, which may be
//!   person ids) are replaced by `*`;
//! - an XML body with a document type declaration (`<!DOCTYPE`, `<!ENTITY`: external entities and
//!   entity expansion bombs), or a CSV/XML body that is not UTF-8 or holds a NUL byte: 400
//!   `PAYLOAD_INVALID`;
//! - a route with a schema whose body is missing, was truncated by the proxy, is larger than
//!   `request.max_body_bytes`, or never reached scp-pep (a proxy that forwards no body): 400
//!   `PAYLOAD_INVALID`. The schema cannot be checked, so the request is refused (fail closed).
//!
//! Schemas are compiled without network or file access: a `$ref` to anything outside the schema is
//! a policy load error, never a fetch. Patterns use the linear-time `regex` engine (no
//! catastrophic backtracking on hostile input).

use std::collections::HashSet;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use crate::decision::{Denial, DenyCode};
use crate::policy::{Route, RouteKind};

/// Deepest nesting of arrays and objects accepted in a JSON body.
pub const MAX_DEPTH: usize = 64;

/// Longest JSON pointer reported in a denial, bytes.
const MAX_POINTER_BYTES: usize = 160;

/// The media types a route accepts when it lists none: JSON everywhere, CSV on batch routes.
pub fn default_content_types(kind: RouteKind) -> Vec<String> {
    match kind {
        RouteKind::Batch => vec!["application/json".into(), "text/csv".into()],
        _ => vec!["application/json".into()],
    }
}

/// How a body of one media type is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    /// `application/json` and `*/*+json`: parsed, duplicate keys refused, schema applied.
    Json,
    /// `*/xml` and `*/*+xml`: UTF-8, no NUL, no document type declaration.
    Xml,
    /// Anything else text-like the route lists (CSV, HL7 v2…): UTF-8 without NUL.
    Text,
}

fn family(essence: &str) -> Family {
    if essence == "application/json" || essence.ends_with("+json") {
        Family::Json
    } else if essence == "application/xml" || essence == "text/xml" || essence.ends_with("+xml") {
        Family::Xml
    } else {
        Family::Text
    }
}

/// The compiled body rules of one route.
#[derive(Debug)]
pub struct PayloadRules {
    /// Accepted media types (`type/subtype`, lower case), in the order the route lists them.
    content_types: Vec<String>,
    schema: Option<CompiledSchema>,
}

struct CompiledSchema {
    validator: jsonschema::Validator,
    /// Every property name the schema mentions: pointer segments that may be reported as is.
    names: HashSet<String>,
}

impl std::fmt::Debug for CompiledSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledSchema")
            .field("names", &self.names.len())
            .finish_non_exhaustive()
    }
}

/// A payload fault: the denial plus, for schema failures, where and which keyword.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadFault {
    pub code: DenyCode,
    pub message: String,
    /// JSON pointer of the failing value (segments the schema does not name are `*`).
    pub pointer: Option<String>,
    /// The schema keyword at fault, e.g. `required`.
    pub keyword: Option<String>,
}

impl PayloadFault {
    fn invalid(message: impl Into<String>) -> Self {
        PayloadFault {
            code: DenyCode::PayloadInvalid,
            message: message.into(),
            pointer: None,
            keyword: None,
        }
    }

    /// The denial of the Envoy contract (message bounded like every denial message).
    pub fn denial(&self) -> Denial {
        let mut d = Denial::new(self.code, self.message.clone());
        d.field = self.pointer.clone();
        d.keyword = self.keyword.clone();
        d
    }
}

impl PayloadRules {
    /// Compiles a route's `content_types` and `body_schema`.
    ///
    /// Errors (policy load errors, `(field, message)`): a media type that is not `type/subtype`,
    /// listed twice; a schema that is not a valid JSON Schema, or that refers outside itself.
    pub fn compile(route: &Route) -> Result<PayloadRules, (String, String)> {
        let listed = route
            .content_types
            .clone()
            .unwrap_or_else(|| default_content_types(route.kind));
        if listed.is_empty() {
            return Err((
                "content_types".into(),
                "must list at least one media type (omit it for the default)".into(),
            ));
        }
        let mut content_types = Vec::with_capacity(listed.len());
        for (k, t) in listed.iter().enumerate() {
            let field = format!("content_types[{k}]");
            let m: mime::Mime = t.parse().map_err(|_| {
                (
                    field.clone(),
                    "not a media type (`type/subtype`)".to_owned(),
                )
            })?;
            if m.params().next().is_some() || m.type_() == mime::STAR || m.subtype() == mime::STAR {
                return Err((
                    field,
                    "a plain `type/subtype`, without parameters or wildcards".into(),
                ));
            }
            let essence = m.essence_str().to_ascii_lowercase();
            if content_types.contains(&essence) {
                return Err((field, "listed twice".into()));
            }
            content_types.push(essence);
        }
        let schema = match &route.body_schema {
            None => None,
            Some(s) => {
                if !content_types.iter().any(|t| family(t) == Family::Json) {
                    return Err((
                        "body_schema".into(),
                        "a body schema needs a JSON media type in content_types".into(),
                    ));
                }
                let validator = jsonschema::options()
                    .with_pattern_options(jsonschema::PatternOptions::regex())
                    .build(s)
                    .map_err(|e| {
                        // The schema is the instance of the meta-schema: the instance path is
                        // where in the route's schema the problem is.
                        let why = match e.kind() {
                            jsonschema::error::ValidationErrorKind::Referencing(_) => {
                                "a `$ref` that does not resolve inside the schema (nothing is fetched)".to_owned()
                            }
                            k => format!("not a valid JSON Schema (meta-schema keyword `{}`)", k.keyword()),
                        };
                        (format!("body_schema{}", e.instance_path().as_str()), why)
                    })?;
                let mut names = HashSet::new();
                collect_names(s, &mut names);
                Some(CompiledSchema { validator, names })
            }
        };
        Ok(PayloadRules {
            content_types,
            schema,
        })
    }

    /// Whether a route has a body schema.
    pub fn has_schema(&self) -> bool {
        self.schema.is_some()
    }

    /// Checks one request's body against the route.
    ///
    /// Inputs: the request headers (lower-case names), the body as the proxy buffered it (`None`:
    /// none was sent to scp-pep), whether the proxy cut it, and the largest body read, bytes.
    /// Output: the parsed JSON body when there is one (so person ids are read from the same
    /// parse), or the fault.
    pub fn check(
        &self,
        headers: &std::collections::HashMap<String, String>,
        body: Option<&[u8]>,
        truncated: bool,
        max_body_bytes: usize,
    ) -> Result<Option<Value>, PayloadFault> {
        let body = body.filter(|b| !b.is_empty());
        if !carries_body(headers, body) {
            if self.schema.is_some() {
                return Err(PayloadFault::invalid(
                    "the route needs a JSON body and the request carries none",
                ));
            }
            return Ok(None);
        }
        let Some(ct) = headers.get("content-type") else {
            return Err(self.unsupported("the request body has no content-type"));
        };
        let Ok(m) = ct.parse::<mime::Mime>() else {
            return Err(self.unsupported("the request's content-type is not a media type"));
        };
        let essence = m.essence_str().to_ascii_lowercase();
        if !self.content_types.contains(&essence) {
            return Err(self.unsupported("the route does not accept this media type"));
        }
        let fam = family(&essence);
        if let Some(cs) = m.get_param(mime::CHARSET)
            && fam != Family::Text
            && !cs.as_str().eq_ignore_ascii_case("utf-8")
        {
            return Err(self.unsupported("JSON and XML bodies must be UTF-8"));
        }
        let needs_body = self.schema.is_some() && fam == Family::Json;
        let body = match body {
            Some(_) if truncated => {
                if needs_body {
                    return Err(PayloadFault::invalid(
                        "the request body was truncated before it reached scp-pep; it cannot be validated",
                    ));
                }
                return Ok(None);
            }
            Some(b) if b.len() > max_body_bytes => {
                if needs_body {
                    return Err(PayloadFault::invalid(
                        "the request body is larger than scp-pep validates",
                    ));
                }
                return Ok(None);
            }
            Some(b) => b,
            None => {
                if needs_body {
                    return Err(PayloadFault::invalid(
                        "the route's body schema needs the body, and the proxy sent none to scp-pep",
                    ));
                }
                return Ok(None);
            }
        };
        match fam {
            Family::Json => {
                let doc = parse_json(body).map_err(PayloadFault::invalid)?;
                if let Some(s) = &self.schema
                    && let Some(e) = s.validator.iter_errors(&doc).next()
                {
                    let pointer = s.report_pointer(e.instance_path().as_str());
                    let keyword = e.kind().keyword().to_owned();
                    let shown = if pointer.is_empty() { "/" } else { &pointer };
                    return Err(PayloadFault {
                        code: DenyCode::PayloadInvalid,
                        message: format!(
                            "the body fails the route's schema at `{shown}` (keyword `{keyword}`)"
                        ),
                        pointer: Some(pointer),
                        keyword: Some(keyword),
                    });
                }
                Ok(Some(doc))
            }
            Family::Xml | Family::Text => {
                let Ok(text) = std::str::from_utf8(body) else {
                    return Err(PayloadFault::invalid("the request body is not UTF-8"));
                };
                if text.contains('\0') {
                    return Err(PayloadFault::invalid("the request body holds a NUL byte"));
                }
                if fam == Family::Xml && has_doctype(text) {
                    return Err(PayloadFault::invalid(
                        "XML bodies must not declare a document type or entities",
                    ));
                }
                Ok(None)
            }
        }
    }

    fn unsupported(&self, why: &str) -> PayloadFault {
        PayloadFault {
            code: DenyCode::MediaTypeUnsupported,
            message: format!("{why}; the route accepts {}", self.content_types.join(", ")),
            pointer: None,
            keyword: None,
        }
    }
}

/// Whether a request carries a body: bytes from the proxy, a `content-length` above 0 or a
/// `transfer-encoding` (headers with lower-case names).
pub fn carries_body(
    headers: &std::collections::HashMap<String, String>,
    body: Option<&[u8]>,
) -> bool {
    body.is_some_and(|b| !b.is_empty())
        || headers
            .get("content-length")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|n| n > 0)
        || headers.contains_key("transfer-encoding")
}

impl CompiledSchema {
    /// `pointer` with every segment that is neither an array index nor a property name the
    /// schema mentions replaced by `*`, cut to [`MAX_POINTER_BYTES`].
    fn report_pointer(&self, pointer: &str) -> String {
        let mut out = String::new();
        for seg in pointer.split('/').skip(1) {
            let raw = seg.replace("~1", "/").replace("~0", "~");
            let keep = seg.bytes().all(|b| b.is_ascii_digit()) || self.names.contains(&raw);
            out.push('/');
            out.push_str(if keep { seg } else { "*" });
            if out.len() > MAX_POINTER_BYTES {
                out.truncate(MAX_POINTER_BYTES);
                out.push('…');
                break;
            }
        }
        out
    }
}

/// Collects the property names a schema mentions (`properties`, `required`, `dependentRequired`,
/// `dependentSchemas` keys), at any depth.
fn collect_names(v: &Value, names: &mut HashSet<String>) {
    match v {
        Value::Object(o) => {
            for (k, child) in o {
                match (k.as_str(), child) {
                    ("properties" | "dependentSchemas" | "dependentRequired", Value::Object(p)) => {
                        names.extend(p.keys().cloned());
                    }
                    ("required", Value::Array(a)) => {
                        names.extend(a.iter().filter_map(|s| s.as_str().map(str::to_owned)));
                    }
                    _ => {}
                }
                collect_names(child, names);
            }
        }
        Value::Array(a) => a.iter().for_each(|c| collect_names(c, names)),
        _ => {}
    }
}

/// Whether an XML text declares a document type or an entity (ASCII case-insensitive).
fn has_doctype(text: &str) -> bool {
    let b = text.as_bytes();
    b.windows(9).any(|w| w.eq_ignore_ascii_case(b"<!doctype"))
        || b.windows(8).any(|w| w.eq_ignore_ascii_case(b"<!entity"))
}

/// Parses a JSON body strictly: UTF-8, at most [`MAX_DEPTH`] levels, no key twice in one object.
/// The error names the problem, never a value.
pub fn parse_json(body: &[u8]) -> Result<Value, &'static str> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let v = StrictValue { depth: 0 }.deserialize(&mut de).map_err(|e| {
        let m = e.to_string();
        if m.contains(DUPLICATE) {
            "the JSON body repeats a key in one object"
        } else if m.contains(TOO_DEEP) || m.contains("recursion limit") {
            "the JSON body nests too deeply"
        } else {
            "the request body is not JSON"
        }
    })?;
    de.end().map_err(|_| "the request body is not JSON")?;
    Ok(v)
}

const DUPLICATE: &str = "scp-pep: duplicate key";
const TOO_DEEP: &str = "scp-pep: too deep";

/// A `serde_json::Value` seed that refuses duplicate keys and deep nesting.
#[derive(Clone, Copy)]
struct StrictValue {
    depth: usize,
}

impl<'de> de::DeserializeSeed<'de> for StrictValue {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl StrictValue {
    fn deserialize<'de, D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        de::DeserializeSeed::deserialize(self, d)
    }

    fn nested<E: de::Error>(self) -> Result<StrictValue, E> {
        if self.depth >= MAX_DEPTH {
            return Err(E::custom(TOO_DEEP));
        }
        Ok(StrictValue {
            depth: self.depth + 1,
        })
    }
}

impl<'de> Visitor<'de> for StrictValue {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let inner = self.nested()?;
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(inner)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let inner = self.nested()?;
        let mut out = serde_json::Map::new();
        while let Some(k) = map.next_key::<String>()? {
            if out.contains_key(&k) {
                return Err(de::Error::custom(DUPLICATE));
            }
            let v = map.next_value_seed(inner)?;
            out.insert(k, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn route(kind: RouteKind, types: Option<&[&str]>, schema: Option<Value>) -> Route {
        let mut r: Route = serde_yaml_ng::from_str(
            "id: r\nmethods: [POST]\npath: /v1/tenants/{tenant}/x\nverticals: [health]\naction: write\nresource: x\nscope: x.write\nkind: real_time\n",
        )
        .unwrap();
        r.kind = kind;
        r.content_types = types.map(|t| t.iter().map(|s| s.to_string()).collect());
        r.body_schema = schema;
        r
    }

    fn headers(ct: Option<&str>, len: usize) -> HashMap<String, String> {
        let mut h = HashMap::new();
        if let Some(ct) = ct {
            h.insert("content-type".into(), ct.into());
        }
        h.insert("content-length".into(), len.to_string());
        h
    }

    fn check(
        rules: &PayloadRules,
        ct: Option<&str>,
        body: &str,
    ) -> Result<Option<Value>, PayloadFault> {
        rules.check(
            &headers(ct, body.len()),
            Some(body.as_bytes()),
            false,
            1 << 20,
        )
    }

    fn schema() -> Value {
        serde_json::json!({
            "type": "object",
            "required": ["records"],
            "properties": {
                "records": {"type": "array", "items": {
                    "type": "object",
                    "required": ["person_id", "age"],
                    "properties": {"person_id": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
                    "additionalProperties": false
                }},
                "extra": {"type": "object", "additionalProperties": {"type": "integer"}}
            }
        })
    }

    /// INT-5.2-1: JSON by default, CSV on batch routes, XML only where listed.
    #[test]
    fn default_and_listed_media_types() {
        let rt = PayloadRules::compile(&route(RouteKind::RealTime, None, None)).unwrap();
        assert!(check(&rt, Some("application/json; charset=utf-8"), "{}").is_ok());
        let e = check(&rt, Some("text/csv"), "a,b\n").unwrap_err();
        assert_eq!(e.code, DenyCode::MediaTypeUnsupported);
        assert!(e.message.contains("application/json"), "{}", e.message);
        assert_eq!(
            check(&rt, Some("application/xml"), "<a/>")
                .unwrap_err()
                .code,
            DenyCode::MediaTypeUnsupported
        );
        assert_eq!(
            check(&rt, None, "{}").unwrap_err().code,
            DenyCode::MediaTypeUnsupported
        );
        assert_eq!(
            check(&rt, Some("application/json; charset=latin1"), "{}")
                .unwrap_err()
                .code,
            DenyCode::MediaTypeUnsupported
        );
        let batch = PayloadRules::compile(&route(RouteKind::Batch, None, None)).unwrap();
        assert!(check(&batch, Some("text/csv"), "a,b\n1,2\n").is_ok());
        let xml = PayloadRules::compile(&route(
            RouteKind::RealTime,
            Some(&["application/xml"]),
            None,
        ))
        .unwrap();
        assert!(check(&xml, Some("application/xml"), "<a>1</a>").is_ok());
        assert_eq!(
            check(&xml, Some("application/json"), "{}")
                .unwrap_err()
                .code,
            DenyCode::MediaTypeUnsupported
        );
        // No body: no media type needed.
        assert!(
            rt.check(&HashMap::new(), None, false, 1024)
                .unwrap()
                .is_none()
        );
    }

    /// EXT-4.4-2: malicious content: duplicate keys, deep nesting, XML entities, NUL bytes.
    #[test]
    fn hostile_bodies_are_refused() {
        let rt = PayloadRules::compile(&route(RouteKind::RealTime, None, None)).unwrap();
        let e = check(
            &rt,
            Some("application/json"),
            r#"{"person_id":"a","person_id":"b"}"#,
        )
        .unwrap_err();
        assert_eq!(e.code, DenyCode::PayloadInvalid);
        assert!(e.message.contains("repeats a key"), "{}", e.message);
        let deep = "[".repeat(MAX_DEPTH + 2) + &"]".repeat(MAX_DEPTH + 2);
        assert!(
            check(&rt, Some("application/json"), &deep)
                .unwrap_err()
                .message
                .contains("deeply")
        );
        assert!(check(&rt, Some("application/json"), "{\"a\":1} x").is_err());
        let xml = PayloadRules::compile(&route(
            RouteKind::RealTime,
            Some(&["application/xml"]),
            None,
        ))
        .unwrap();
        let bomb = "<?xml version=\"1.0\"?><!DOCTYPE l [<!ENTITY a \"aaaa\">]><l>&a;</l>";
        assert_eq!(
            check(&xml, Some("application/xml"), bomb).unwrap_err().code,
            DenyCode::PayloadInvalid
        );
        assert_eq!(
            check(&xml, Some("application/xml"), "<a>\0</a>")
                .unwrap_err()
                .code,
            DenyCode::PayloadInvalid
        );
    }

    /// INT-9.3-1: a failing body names the pointer and keyword, never the value; keys the schema
    /// does not name are masked.
    #[test]
    fn schema_failures_name_pointer_and_keyword_only() {
        let r = PayloadRules::compile(&route(RouteKind::RealTime, None, Some(schema()))).unwrap();
        assert!(
            check(
                &r,
                Some("application/json"),
                r#"{"records":[{"person_id":"p-1","age":4}]}"#
            )
            .unwrap()
            .is_some()
        );
        let e = check(
            &r,
            Some("application/json"),
            r#"{"records":[{"person_id":"p-1","age":-7}]}"#,
        )
        .unwrap_err();
        assert_eq!(e.pointer.as_deref(), Some("/records/0/age"));
        assert_eq!(e.keyword.as_deref(), Some("minimum"));
        assert!(!e.message.contains("-7"), "{}", e.message);
        let e = check(
            &r,
            Some("application/json"),
            r#"{"records":[{"person_id":"Jane Doe"}]}"#,
        )
        .unwrap_err();
        assert_eq!(e.keyword.as_deref(), Some("required"));
        assert!(!e.message.contains("Jane"), "{}", e.message);
        let e = check(
            &r,
            Some("application/json"),
            r#"{"records":[],"extra":{"Jane Doe":"x"}}"#,
        )
        .unwrap_err();
        assert_eq!(e.pointer.as_deref(), Some("/extra/*"));
        assert!(!e.message.contains("Jane"), "{}", e.message);
        // A schema route without a body, or with a body the proxy did not send, fails closed.
        assert_eq!(
            r.check(&HashMap::new(), None, false, 1024)
                .unwrap_err()
                .code,
            DenyCode::PayloadInvalid
        );
        assert_eq!(
            r.check(&headers(Some("application/json"), 10), None, false, 1024)
                .unwrap_err()
                .code,
            DenyCode::PayloadInvalid
        );
        assert_eq!(
            r.check(
                &headers(Some("application/json"), 10),
                Some(b"{\"records\""),
                true,
                1024
            )
            .unwrap_err()
            .code,
            DenyCode::PayloadInvalid
        );
    }

    /// Policy load errors name the field.
    #[test]
    fn bad_rules_are_load_errors() {
        let e =
            PayloadRules::compile(&route(RouteKind::RealTime, Some(&["json"]), None)).unwrap_err();
        assert_eq!(e.0, "content_types[0]");
        let e = PayloadRules::compile(&route(
            RouteKind::RealTime,
            Some(&["text/csv"]),
            Some(schema()),
        ))
        .unwrap_err();
        assert_eq!(e.0, "body_schema");
        let e = PayloadRules::compile(&route(
            RouteKind::RealTime,
            None,
            Some(serde_json::json!({"type": "object", "properties": {"a": {"type": 5}}})),
        ))
        .unwrap_err();
        assert!(e.0.starts_with("body_schema"), "{e:?}");
        // No remote fetch: an outside $ref is a load error.
        let e = PayloadRules::compile(&route(
            RouteKind::RealTime,
            None,
            Some(serde_json::json!({"$ref": "https://169.254.169.254/schema.json"})),
        ))
        .unwrap_err();
        assert!(e.0.starts_with("body_schema"), "{e:?}");
    }
}
