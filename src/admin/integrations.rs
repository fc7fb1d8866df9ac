//! Placeholder: filled by the integrations work of issue 5.

use axum::Router;
use serde_json::Value;

use super::http::AdminHttp;

/// The integrations routes.
pub fn routes() -> Router<AdminHttp> {
    Router::new()
}

/// OpenAPI path items of [`routes`]: `(path, item)`.
pub fn openapi_paths() -> Vec<(String, Value)> {
    Vec::new()
}
