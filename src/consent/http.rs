//! The consent REST API under `/v1/consents` (placeholder until the API lands).

use std::sync::Arc;

use axum::Router;

use super::Consents;
use crate::admin::AdminAuth;
use crate::audit::AuditLog;
use crate::pipeline::SnapshotSlot;

/// State of the consent routes.
#[derive(Clone)]
pub struct ConsentHttp {
    pub consents: Arc<Consents>,
    pub audit: Option<Arc<AuditLog>>,
    pub admin: AdminAuth,
    pub snapshot: SnapshotSlot,
}

impl ConsentHttp {
    pub fn new(
        consents: Arc<Consents>,
        audit: Option<Arc<AuditLog>>,
        admin: AdminAuth,
        snapshot: SnapshotSlot,
    ) -> Self {
        ConsentHttp {
            consents,
            audit,
            admin,
            snapshot,
        }
    }

    /// The routes, to merge into the HTTP listener's router.
    pub fn router(self) -> Router {
        Router::new().with_state(self)
    }
}
