//! The OpenAPI operations of the policy pack and policy change routes.

use super::*;

/// OpenAPI path items of [`routes`]: `(path, item)`.
pub fn openapi_paths() -> Vec<(String, Value)> {
    let err = |d: &str| json!({"description": d, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let ok = |d: &str| json!({"description": d, "content": {"application/json": {"schema": {"type": "object"}}}});
    let std_errors = |extra: &[(&str, &str)]| {
        let mut m = Map::new();
        m.insert("401".into(), err("UNAUTHENTICATED"));
        m.insert(
            "403".into(),
            err("FORBIDDEN: the caller lacks the permission"),
        );
        m.insert(
            "503".into(),
            err("AUDIT_UNAVAILABLE or DEPENDENCY_UNAVAILABLE"),
        );
        for (k, v) in extra {
            m.insert((*k).into(), err(v));
        }
        m
    };
    let path_param = |name: &str| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}});
    let if_match = json!({"name": "If-Match", "in": "header", "required": false, "schema": {"type": "string"}, "description": "\"<version>\": 412 when stale"});
    let body = |props: Value, required: &[&str]| {
        let mut schema =
            json!({"type": "object", "additionalProperties": false, "properties": props});
        // OpenAPI 3.0: `required` must not be empty.
        if !required.is_empty() {
            schema["required"] = json!(required);
        }
        json!({"required": true, "content": {"application/json": {"schema": schema}}})
    };
    let reason_body = |c: &str, t: &str| {
        body(
            json!({c: {"type": "string", "description": "reason code (ADM-7)"}, t: {"type": "string", "description": "required when the code is OTHER"}}),
            &[c],
        )
    };
    let mut out = Vec::new();
    out.push((
        "/v1/policies/schema".to_owned(),
        json!({"get": {"summary": "The Cedar schema policy packs are validated against", "tags": ["policy packs"],
            "responses": merge(json!({"200": ok("schema text and semantics")}), std_errors(&[]))}}),
    ));
    let window_props = json!({
        "active_from": {"type": "string", "format": "date-time"},
        "active_until": {"type": "string", "format": "date-time", "nullable": true}
    });
    let mut create_props = json!({
        "policy_pack_id": {"type": "string"}, "tenant_id": {"type": "string", "description": "ROOT only"},
        "vertical_id": {"type": "string"}, "policy_rules": {"type": "string", "description": "Cedar policy text"}
    });
    extend(&mut create_props, &window_props);
    out.push((
        "/v1/policies/packs".to_owned(),
        json!({
            "get": {"summary": "List policy packs", "tags": ["policy packs"],
                "parameters": [
                    {"name": "vertical_id", "in": "query", "schema": {"type": "string"}},
                    {"name": "status", "in": "query", "schema": {"type": "string"}},
                    {"name": "tenant_id", "in": "query", "schema": {"type": "string"}, "description": "ROOT only"}
                ],
                "responses": merge(json!({"200": ok("items: policy_pack_id, vertical_id, status, version_id")}), std_errors(&[("400", "INVALID_REQUEST")]))},
            "post": {"summary": "Create a draft policy pack (Cedar validated against the schema)", "tags": ["policy packs"],
                "requestBody": body(create_props, &["vertical_id", "policy_rules", "active_from"]),
                "responses": merge(json!({"201": ok("the pack, status=draft")}), std_errors(&[("400", "INVALID_REQUEST or POLICY_INVALID (field policy_rules)"), ("409", "ALREADY_EXISTS")]))}
        }),
    ));
    let mut patch_props = json!({"policy_rules": {"type": "string"}});
    extend(&mut patch_props, &window_props);
    out.push((
        "/v1/policies/packs/{policy_pack_id}".to_owned(),
        json!({
            "parameters": [path_param("policy_pack_id")],
            "get": {"summary": "One policy pack", "tags": ["policy packs"],
                "responses": merge(json!({"200": ok("the pack (ETag)")}), std_errors(&[("404", "NOT_FOUND")]))},
            "patch": {"summary": "Edit a draft pack", "tags": ["policy packs"], "parameters": [if_match.clone()],
                "requestBody": body(patch_props, &[]),
                "responses": merge(json!({"200": ok("the pack, new version")}), std_errors(&[("400", "INVALID_REQUEST or POLICY_INVALID"), ("404", "NOT_FOUND"), ("409", "INVALID_TRANSITION or ARCHIVED"), ("412", "PRECONDITION_FAILED")]))}
        }),
    ));
    out.push((
        "/v1/policies/packs/{policy_pack_id}/versions".to_owned(),
        json!({"parameters": [path_param("policy_pack_id")],
            "get": {"summary": "Every stored version of a pack", "tags": ["policy packs"],
                "responses": merge(json!({"200": ok("items")}), std_errors(&[("404", "NOT_FOUND")]))}}),
    ));
    let transition_item = |kind: &str, idp: &str, t: &Transition| {
        let mut op = json!({
            "summary": format!("{kind} → {} (from {}; permission {})", t.to.as_str(),
                t.from.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "), t.permission),
            "tags": [if kind == "pack" {"policy packs"} else {"policy changes"}],
            "parameters": [if_match.clone()],
            "responses": merge(json!({"200": ok(&format!("status={}, {}", t.to.as_str(), t.stamp))}),
                std_errors(&[("400", "INVALID_REQUEST"), ("404", "NOT_FOUND"), ("409", "INVALID_TRANSITION or ARCHIVED"), ("412", "PRECONDITION_FAILED")])),
        });
        match t.input {
            Input::None => {}
            Input::Notes => {
                op["requestBody"] = json!({"required": false, "content": {"application/json": {"schema": {
                    "type": "object", "additionalProperties": false, "properties": {"review_notes": {"type": "string"}}}}}});
            }
            Input::Reason(c, tx) => op["requestBody"] = reason_body(c, tx),
        }
        json!({"parameters": [path_param(idp)], "post": op})
    };
    for t in PACK_TRANSITIONS {
        out.push((
            format!("/v1/policies/packs/{{policy_pack_id}}/{}", t.action),
            transition_item("pack", "policy_pack_id", t),
        ));
    }
    let mut change_props = json!({
        "policy_change_id": {"type": "string"}, "policy_pack_id": {"type": "string"},
        "change_summary": {"type": "string"}, "policy_rules": {"type": "string", "description": "the proposed Cedar text"}
    });
    extend(&mut change_props, &window_props);
    out.push((
        "/v1/policies/changes".to_owned(),
        json!({
            "get": {"summary": "List policy changes", "tags": ["policy changes"],
                "parameters": [
                    {"name": "policy_pack_id", "in": "query", "schema": {"type": "string"}},
                    {"name": "status", "in": "query", "schema": {"type": "string"}},
                    {"name": "tenant_id", "in": "query", "schema": {"type": "string"}, "description": "ROOT only"}
                ],
                "responses": merge(json!({"200": ok("items")}), std_errors(&[("400", "INVALID_REQUEST")]))},
            "post": {"summary": "Propose new rules for a pack (draft)", "tags": ["policy changes"],
                "requestBody": body(change_props, &["policy_pack_id", "change_summary", "policy_rules", "active_from"]),
                "responses": merge(json!({"201": ok("the change, status=draft")}), std_errors(&[("400", "INVALID_REQUEST or POLICY_INVALID (field policy_rules)"), ("404", "NOT_FOUND"), ("409", "ALREADY_EXISTS or ARCHIVED")]))}
        }),
    ));
    out.push((
        "/v1/policies/changes/{policy_change_id}".to_owned(),
        json!({"parameters": [path_param("policy_change_id")],
            "get": {"summary": "One policy change", "tags": ["policy changes"],
                "responses": merge(json!({"200": ok("the change (ETag)")}), std_errors(&[("404", "NOT_FOUND")]))}}),
    ));
    for t in CHANGE_TRANSITIONS {
        out.push((
            format!("/v1/policies/changes/{{policy_change_id}}/{}", t.action),
            transition_item("change", "policy_change_id", t),
        ));
    }
    out
}

pub(super) fn merge(a: Value, b: Map<String, Value>) -> Value {
    let mut m = match a {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    m.extend(b);
    Value::Object(m)
}

pub(super) fn extend(a: &mut Value, b: &Value) {
    if let (Value::Object(a), Value::Object(b)) = (a, b) {
        for (k, v) in b {
            a.insert(k.clone(), v.clone());
        }
    }
}
