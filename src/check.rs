//! `scp-pep check`: sends one real `CheckRequest` to a running scp-pep (or any ext_authz server)
//! and prints the decision as JSON — the tool for "why was this denied?".

use std::collections::HashMap;

use envoy_types::ext_authz::v3::pb::{CheckRequest, CheckResponse, HttpResponse};
use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address, socket_address};
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::google::protobuf::value::Kind;
use serde_json::{Value, json};

/// What to send.
#[derive(Debug, Clone, Default)]
pub struct CheckInput {
    pub method: String,
    /// Path with optional query.
    pub path: String,
    /// Header names are lower-cased before sending, as Envoy does.
    pub headers: Vec<(String, String)>,
    pub source_ip: Option<String>,
    /// URL-encoded PEM, as Envoy's `include_peer_certificate` sends it.
    pub peer_certificate: Option<String>,
    /// Request body, as Envoy's `with_request_body` (`pack_as_bytes`) sends it.
    pub body: Option<Vec<u8>>,
}

/// Builds the `CheckRequest` Envoy would send for `input`.
pub fn build_request(input: &CheckInput) -> CheckRequest {
    let mut headers: HashMap<String, String> = input
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    headers.insert(":method".into(), input.method.clone());
    headers.insert(":path".into(), input.path.clone());
    headers
        .entry(":authority".into())
        .or_insert_with(|| "scp.local".into());
    let source = Peer {
        address: input.source_ip.as_ref().map(|ip| Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: ip.clone(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(40000)),
                ..Default::default()
            })),
        }),
        certificate: input.peer_certificate.clone().unwrap_or_default(),
        ..Default::default()
    };
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(source),
            request: Some(Request {
                http: Some(HttpRequest {
                    id: uuid::Uuid::now_v7().to_string(),
                    method: input.method.clone(),
                    path: input.path.clone(),
                    host: "scp.local".into(),
                    scheme: "https".into(),
                    protocol: "HTTP/1.1".into(),
                    headers,
                    raw_body: input.body.clone().unwrap_or_default(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// Renders a `CheckResponse` as the JSON the CLI prints:
/// `{"allowed", "status", "code", "decision_id", "headers_set", "headers_removed", "body", "metadata"}`.
pub fn response_json(resp: &CheckResponse) -> Value {
    let grpc_code = resp.status.as_ref().map_or(-1, |s| s.code);
    let mut metadata = serde_json::Map::new();
    if let Some(md) = &resp.dynamic_metadata {
        for (k, v) in &md.fields {
            if let Some(Kind::StringValue(s)) = &v.kind {
                metadata.insert(k.clone(), Value::String(s.clone()));
            }
        }
    }
    let header_list = |hs: &[envoy_types::ext_authz::v3::pb::HeaderValueOption]| -> serde_json::Map<String, Value> {
        hs.iter()
            .filter_map(|h| h.header.as_ref())
            .map(|h| (h.key.clone(), Value::String(h.value.clone())))
            .collect()
    };
    match &resp.http_response {
        Some(HttpResponse::OkResponse(ok)) => json!({
            "allowed": grpc_code == 0,
            "status": 200,
            "code": metadata.get("code").cloned().unwrap_or(Value::Null),
            "decision_id": metadata.get("decision_id").cloned().unwrap_or(Value::Null),
            "headers_set": header_list(&ok.headers),
            "headers_removed": ok.headers_to_remove,
            "metadata": metadata,
        }),
        Some(HttpResponse::DeniedResponse(d)) => {
            let body: Value =
                serde_json::from_str(&d.body).unwrap_or(Value::String(d.body.clone()));
            json!({
                "allowed": false,
                "status": d.status.as_ref().map_or(403, |s| s.code),
                "code": body["error"]["code"].clone(),
                "decision_id": metadata.get("decision_id").cloned().unwrap_or(Value::Null),
                "headers_set": header_list(&d.headers),
                "body": body,
                "metadata": metadata,
            })
        }
        Some(HttpResponse::ErrorResponse(e)) => json!({
            "allowed": false,
            "status": e.status.as_ref().map_or(403, |s| s.code),
            "code": metadata.get("code").cloned().unwrap_or(Value::Null),
            "body": e.body,
            "metadata": metadata,
        }),
        None => {
            json!({"allowed": grpc_code == 0, "status": null, "code": null, "grpc_code": grpc_code})
        }
    }
}

/// Sends `input` to the ext_authz server at `server` (e.g. `http://127.0.0.1:9191`).
///
/// Errors: connection or transport failure (a denial is not an error).
pub async fn check(server: &str, input: &CheckInput) -> anyhow::Result<Value> {
    let mut client = AuthorizationClient::connect(server.to_owned()).await?;
    let resp = client.check(build_request(input)).await?.into_inner();
    Ok(response_json(&resp))
}
