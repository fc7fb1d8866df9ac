//! The OpenAPI operations of the integration routes.

use super::*;

// ---------------------------------------------------------------------------------------------
// OpenAPI

pub(super) fn op(
    summary: &str,
    permission: &str,
    body: Option<&str>,
    ok: &str,
    codes: &[&str],
) -> Value {
    let mut responses = serde_json::Map::new();
    responses.insert(ok.into(), json!({"description": "success"}));
    for c in codes {
        responses.insert(
            (*c).into(),
            json!({"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}),
        );
    }
    let mut o = json!({
        "summary": summary,
        "description": format!("Permission: `{permission}`."),
        "responses": responses,
    });
    if let Some(b) = body {
        o["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": {"type": "object", "description": b}}}});
    }
    o
}

/// OpenAPI path items of [`routes`]: `(path, item)`.
pub fn openapi_paths() -> Vec<(String, Value)> {
    let rd = &["401", "403", "404", "503"][..];
    let wr = &["400", "401", "403", "404", "409", "412", "503"][..];
    let id = json!([{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}]);
    // Parameters go on each operation (not on the path item) so every path-item key is a verb.
    let with_params = |mut v: Value, params: &Value| {
        if let Value::Object(ops) = &mut v {
            for op in ops.values_mut() {
                op["parameters"] = params.clone();
            }
        }
        v
    };
    let with_id = |v: Value| with_params(v, &id);
    let mut out = vec![
        (
            "/v1/integrations".to_owned(),
            json!({
                "post": op("Create a draft integration (ONB-1, ONB-2)", "integrations.create",
                    Some("partner_name, legal_basis, technical_contacts[{name,email,role}], verticals, scopes, field_policy, rate_limit, quota, ip_allowlist, mtls_cert_sha256, partner_tenants, routes, id?, tenant? (root)"),
                    "201", &["400", "401", "403", "409", "503"]),
                "get": op("List integrations (filter `state`)", "integrations.read", None, "200", &["400", "401", "403", "503"]),
            }),
        ),
        (
            "/v1/integrations/{id}".to_owned(),
            with_id(json!({
                "get": op("One integration", "integrations.read", None, "200", rd),
                "patch": op("Edit a draft (If-Match)", "integrations.create", Some("any create field except id and tenant"), "200", wr),
            })),
        ),
        (
            "/v1/integrations/{id}/history".to_owned(),
            with_id(json!({
            "get": op("Every version of the integration", "integrations.read", None, "200", rd)})),
        ),
        (
            "/v1/integrations/{id}/health".to_owned(),
            with_id(json!({
            "get": op("State, health, last successful sync, last handshake (ONB-7, ONB-AUD-4)", "integrations.read", None, "200", rd)})),
        ),
        (
            "/v1/integrations/{id}/provision".to_owned(),
            with_id(json!({
            "post": op("Create the Keycloak client; client_id and client_secret shown once (ONB-4)", "integrations.provision", Some("reason_code?, reason_text?"), "201", wr)})),
        ),
        (
            "/v1/integrations/{id}/credentials".to_owned(),
            with_id(json!({
            "get": op("Credentials with age_days and rotation_due (ONB-AUD-2)", "integrations.read", None, "200", rd)})),
        ),
        (
            "/v1/integrations/{id}/credentials/rotate".to_owned(),
            with_id(json!({
            "post": op("Rotate the client secret; the new one is shown once (ONB-AUD-2)", "integrations.credentials", Some("reason_code?, reason_text?"), "200", wr)})),
        ),
        (
            "/v1/integrations/{id}/api-key".to_owned(),
            with_id(json!({
                "post": op("Issue an API key (second factor, shown once, stored hashed; INT-4.2-5)", "integrations.credentials", Some("reason_code?, reason_text?"), "201", wr),
                "delete": op("Revoke the API key", "integrations.credentials", None, "200", wr),
            })),
        ),
    ];
    for r in RULES {
        let body = match r.action {
            "approve" => "legal_document_id (required, ONB-AUD-3), notes?",
            _ if r.reason => "reason_code (ADM-7), reason_text (required for OTHER)",
            _ => "notes?, reason_code?, reason_text?",
        };
        let perm = if r.action == "approve" {
            "integrations.approve (+ integrations.approve_cross_tenant when partner_tenants is set, INT-4.5-2)"
        } else {
            r.permission
        };
        out.push((
            format!("/v1/integrations/{{id}}/{}", r.action),
            with_id(json!({"post": op(
                &format!("Lifecycle: {} → {} (If-Match)", r.from.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("|"), r.to.as_str()),
                perm, Some(body), "200", wr)})),
        ));
    }
    for (seg, name, perm, body) in [
        (
            "webhooks",
            "webhook subscription",
            "integrations.webhooks",
            "url (https), events[], description?",
        ),
        (
            "schema-mappings",
            "schema mapping",
            "integrations.mappings",
            "name, direction (inbound|outbound), fields[{source,target}]",
        ),
    ] {
        out.push((
            format!("/v1/integrations/{{id}}/{seg}"),
            with_id(json!({
                "post": op(&format!("Create a {name} (ONB-5)"), perm, Some(body), "201", wr),
                "get": op(&format!("List {name}s"), "integrations.read", None, "200", rd),
            })),
        ));
        let item = json!({
            "get": op(&format!("One {name}"), "integrations.read", None, "200", rd),
            "put": op(&format!("Replace a {name} (If-Match)"), perm, Some(body), "200", wr),
            "delete": op(&format!("Delete a {name} (If-Match)"), perm, None, "204", wr),
        });
        let item = with_params(
            item,
            &json!([
                {"name": "id", "in": "path", "required": true, "schema": {"type": "string"}},
                {"name": "sub", "in": "path", "required": true, "schema": {"type": "string"}},
            ]),
        );
        out.push((format!("/v1/integrations/{{id}}/{seg}/{{sub}}"), item));
    }
    out
}
