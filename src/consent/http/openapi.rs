//! The consent API OpenAPI document.

use super::*;

// ---------------------------------------------------------------------------------------------
// OpenAPI

/// `GET /v1/consents/openapi.json`: this API as an OpenAPI 3.0 document (any admin token).
pub(super) async fn openapi(State(s): State<ConsentHttp>, headers: HeaderMap) -> ApiResult {
    s.authenticate(&headers).await?;
    Ok(axum::Json(openapi_document()).into_response())
}

/// The OpenAPI 3.0 document of the consent API.
pub fn openapi_document() -> Value {
    let err = |d: &str| json!({"description": d, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let consent = |d: &str| json!({"description": d, "headers": {"ETag": {"schema": {"type": "string"}, "description": "\"<version>\""}}, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Consent"}}}});
    let body = |schema: &str| json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}});
    let id = json!({"name": "id", "in": "path", "required": true, "schema": {"type": "string"}});
    let if_match = json!({"name": "If-Match", "in": "header", "required": false, "schema": {"type": "string"}, "description": "\"<version>\": refuse with 412 when the consent is at another version"});
    let common = json!({
        "400": err("INVALID_REQUEST (field names the input)"),
        "401": err("UNAUTHENTICATED"),
        "403": err("FORBIDDEN"),
        "404": err("NOT_FOUND"),
        "503": err("AUDIT_UNAVAILABLE or DEPENDENCY_UNAVAILABLE"),
    });
    let merge = |extra: Value| {
        let mut m = common.clone();
        if let (Some(m), Some(e)) = (m.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                m.insert(k.clone(), v.clone());
            }
        }
        m
    };
    let change = |summary: &str, schema: Option<&str>, extra: Value| {
        let mut op = json!({
            "summary": summary,
            "parameters": [id, if_match],
            "responses": merge(json!({
                "200": consent("the new version"),
                "409": err("VERSION_CONFLICT, INVALID_TRANSITION, EVIDENCE_REQUIRED or RENEW_NOT_ALLOWED"),
                "412": err("PRECONDITION_FAILED"),
            })),
        });
        if let Some(s) = schema {
            op["requestBody"] = body(s);
        }
        if let (Some(r), Some(e)) = (op["responses"].as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                r.insert(k.clone(), v.clone());
            }
        }
        json!({"post": op})
    };
    let ts = json!({"type": "string", "format": "date-time"});
    let ts_null = json!({"type": "string", "format": "date-time", "nullable": true});
    let ids = json!({"type": "array", "items": {"type": "string"}, "maxItems": 32});
    let paths = json!({
        "/v1/consents": {
            "post": {
                "summary": "Capture consent (online: officer; offline: field agent)",
                "requestBody": body("CaptureRequest"),
                "responses": merge(json!({
                    "201": consent("captured (pending without evidence, and offline until verified)"),
                    "404": err("NOT_FOUND or PERSON_UNKNOWN"),
                    "409": err("PERSON_PROVISIONAL or CONSENT_EXISTS"),
                })),
            },
            "get": {
                "summary": "Current consents of a person (officer, tenant admin)",
                "parameters": [{"name": "person_id", "in": "query", "required": true, "schema": {"type": "string"}}],
                "responses": merge(json!({"200": {"description": "heads", "content": {"application/json": {"schema": {"type": "object", "properties": {"consents": {"type": "array", "items": {"$ref": "#/components/schemas/Consent"}}}}}}}})),
            },
        },
        "/v1/consents/{id}": {"get": {
            "summary": "Current view (evidence as a count only)",
            "parameters": [id],
            "responses": merge(json!({"200": consent("the current version")})),
        }},
        "/v1/consents/{id}/evidence": {
            "get": {
                "summary": "Evidence attachment ids (evidence viewer; masked unless audit-level); every access is audited",
                "parameters": [id],
                "responses": merge(json!({"200": {"description": "evidence", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Evidence"}}}}})),
            },
            "post": change("Attach evidence", Some("EvidenceRequest"), json!({}))["post"].clone(),
        },
        "/v1/consents/{id}/verify": change("Verify a pending consent (officer)", None, json!({})),
        "/v1/consents/{id}/reject": change("Reject a pending consent (officer)", Some("ReasonRequest"), json!({})),
        "/v1/consents/{id}/withdraw": change("Withdraw (officer; never field agents); answers with frozen_shares", Some("ReasonRequest"), json!({})),
        "/v1/consents/{id}/renew": change("Renew an active or in-grace consent (officer)", Some("RenewRequest"), json!({})),
        "/v1/consents/{id}/history": {"get": {
            "summary": "Every version (tenant admin, root)",
            "parameters": [id],
            "responses": merge(json!({"200": {"description": "versions, oldest first", "content": {"application/json": {"schema": {"type": "object", "properties": {"consent_id": {"type": "string"}, "versions": {"type": "array", "items": {"$ref": "#/components/schemas/Consent"}}}}}}}})),
        }},
        "/v1/consents/persons/{person_id}": {"put": {
            "summary": "Report a person's verification and contact state (registrar)",
            "parameters": [{"name": "person_id", "in": "path", "required": true, "schema": {"type": "string"}}],
            "requestBody": body("PersonRequest"),
            "responses": merge(json!({"200": {"description": "the person", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Person"}}}}})),
        }},
        "/v1/consents/aggregates/{route_id}/epoch": {"put": {
            "summary": "Declare an aggregate route's refresh epoch (registrar)",
            "parameters": [{"name": "route_id", "in": "path", "required": true, "schema": {"type": "string"}}],
            "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "additionalProperties": false, "required": ["epoch"], "properties": {"epoch": ts}}}}},
            "responses": merge(json!({"200": {"description": "stored", "content": {"application/json": {"schema": {"type": "object", "properties": {"route_id": {"type": "string"}, "epoch": ts}}}}}})),
        }},
        "/v1/consents/evaluate": {"post": {
            "summary": "Staff access decision (root bypasses, audited)",
            "requestBody": body("EvaluateRequest"),
            "responses": merge(json!({"200": {"description": "decision", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Decision"}}}}})),
        }},
        "/v1/consents/openapi.json": {"get": {
            "summary": "This document",
            "responses": {"200": {"description": "OpenAPI 3.0"}, "401": err("UNAUTHENTICATED")},
        }},
    });
    let consent_schema = json!({"type": "object", "properties": {
                    "consent_id": {"type": "string"}, "version": {"type": "integer"}, "version_id": {"type": "string"},
                    "tenant_id": {"type": "string"}, "person_id": {"type": "string"}, "vertical_id": {"type": "string"},
                    "purpose": {"type": "string", "nullable": true},
                    "status": {"type": "string", "enum": ["pending", "active", "expired", "rejected", "withdrawn"]},
                    "recorded_status": {"type": "string", "enum": ["pending", "active", "rejected", "withdrawn"]},
                    "in_grace": {"type": "boolean"},
                    "active_from": ts, "active_until": ts_null, "grace_until": ts_null,
                    "capture_mode": {"type": "string", "enum": ["online", "offline"]},
                    "evidence_count": {"type": "integer"}, "has_verification_document": {"type": "boolean"},
                    "identity_verification": {"type": "object", "nullable": true},
                    "fields": {"type": "array", "nullable": true, "items": {"type": "string"}},
                    "reason_code": {"type": "string", "nullable": true}, "reason_text": {"type": "string", "nullable": true},
                    "change": {"type": "string", "enum": ["capture", "evidence", "verify", "reject", "withdraw", "renew"]},
                    "captured_by": {"type": "string"}, "captured_at": ts, "changed_by": {"type": "string"}, "changed_at": ts,
                    "frozen_shares": {"type": "array", "items": {"type": "string"}, "description": "withdraw only"},
                    "case_suspension_queued": {"type": "boolean", "description": "withdraw only"}}});
    let mut schemas = json!({
        "Error": {"type": "object", "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "field": {"type": "string"}}}}},
        "CaptureRequest": {"type": "object", "additionalProperties": false,
            "required": ["person_id", "vertical_id", "active_from", "capture_mode"],
            "properties": {
                "person_id": {"type": "string"}, "vertical_id": {"type": "string"}, "purpose": {"type": "string"},
                "active_from": ts, "active_until": ts_null,
                "capture_mode": {"type": "string", "enum": ["online", "offline"]},
                "evidence_attachment_ids": ids,
                "verification_document_attachment_id": {"type": "string", "description": "required for offline capture"},
                "identity_verification": {"type": "object", "additionalProperties": false, "required": ["document_type"], "description": "required for offline capture",
                    "properties": {"document_type": {"type": "string"}, "verified_by": {"type": "string"}, "verified_at_ms": {"type": "integer", "format": "int64"}}},
                "fields": {"type": "array", "items": {"type": "string"}},
            }},
        "EvidenceRequest": {"type": "object", "additionalProperties": false, "required": ["evidence_attachment_ids"],
            "properties": {"evidence_attachment_ids": ids, "verification_document_attachment_id": {"type": "string"}}},
        "ReasonRequest": {"type": "object", "additionalProperties": false, "required": ["reason_code"],
            "properties": {"reason_code": {"type": "string", "description": format!("reject: {}; withdraw: {}", model::REJECTION_REASONS.join(", "), model::WITHDRAWAL_REASONS.join(", "))},
                "reason_text": {"type": "string", "description": "required for OTHER"}}},
        "RenewRequest": {"type": "object", "additionalProperties": false, "required": ["active_from", "evidence_attachment_ids"],
            "properties": {"active_from": ts, "active_until": ts_null, "evidence_attachment_ids": ids}},
        "PersonRequest": {"type": "object", "additionalProperties": false, "required": ["verification", "status"],
            "properties": {"verification": {"type": "string", "enum": ["verified", "provisional"]},
                "status": {"type": "string", "enum": ["active", "inactive", "archived"]},
                "channels": {"type": "array", "items": {"type": "string", "enum": ["email", "sms"]}}}},
        "Person": {"type": "object", "properties": {"tenant_id": {"type": "string"}, "person_id": {"type": "string"}, "verification": {"type": "string"}, "status": {"type": "string"}, "channels": {"type": "array", "items": {"type": "string"}}, "updated_at": ts}},
        "EvaluateRequest": {"type": "object", "additionalProperties": false, "required": ["person_id", "vertical_id", "action"],
            "properties": {"person_id": {"type": "string"}, "vertical_id": {"type": "string"}, "purpose": {"type": "string"}, "action": {"type": "string", "enum": ["read", "write", "export"]}}},
        "Decision": {"type": "object", "properties": {
            "decision": {"type": "string", "enum": ["allow", "deny"]},
            "status": {"type": "string", "enum": ["missing", "pending", "active", "expired", "rejected", "withdrawn"]},
            "in_grace": {"type": "boolean"},
            "reason": {"type": "string"}, "action": {"type": "string"},
            "consent_id": {"type": "string", "nullable": true}, "version": {"type": "integer", "nullable": true}}},
        "Evidence": {"type": "object", "properties": {
            "consent_id": {"type": "string"}, "version": {"type": "integer"},
            "evidence_attachment_ids": {"type": "array", "items": {"type": "string"}},
            "verification_document_attachment_id": {"type": "string", "nullable": true},
            "masked": {"type": "boolean"}}}
    });
    schemas["Consent"] = consent_schema;
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "scp-pep consent API",
            "version": "1",
            "description": "Per-person, per-vertical consent (SCP-SPEC-SEC-09). Every route needs an admin bearer token; the tenant is the token's. Changes are recorded as consent_change audit events before they are written.",
        },
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "schemas": schemas,
        },
    })
}
