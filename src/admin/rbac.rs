//! Roles, groups, role assignments, deny rules and `POST /v1/authz/evaluate` (ADM-6).

use crate::store::Store;

use super::auth::AdminPrincipal;
use super::http::Grant;

/// The grants `principal` holds through role assignments in the store at `now_ms`: active
/// assignments (to the user or to a group the user is an active member of) of active roles,
/// inside their effective windows, each permission carrying the assignment's scope.
///
/// Errors: the store is unreachable.
pub async fn stored_grants(
    _store: &Store,
    _principal: &AdminPrincipal,
    _now_ms: i64,
) -> Result<Vec<Grant>, sqlx::Error> {
    Ok(Vec::new())
}

/// The roles, groups, assignments, deny-rule and evaluate routes.
pub fn routes() -> axum::Router<super::http::AdminHttp> {
    axum::Router::new()
}

/// OpenAPI path items of [`routes`]: `(path, item)`.
pub fn openapi_paths() -> Vec<(String, serde_json::Value)> {
    Vec::new()
}
