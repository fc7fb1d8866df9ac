//! The Keycloak client's `enabled` flag in step with the integration lifecycle (INT-6.2-3,
//! INT-6.2-4, INT-6.2-5), without ever making a transition wait for or fail on Keycloak.
//!
//! - Which states keep the client enabled: [`client_enabled`] — `approved` (handshake routes
//!   only, ONB-6), `active` and `restricted` (reads are still allowed, INT-6.2-2, so the client
//!   must still get tokens; scp-pep denies the writes). `suspended`, `deprecated` (no new data
//!   exchange, INT-6.2-4) and `archived` disable it; re-activating enables it again.
//! - A transition that changes the wanted flag writes, in the same audited transaction as the
//!   state, a [`SyncState`] `pending` into the integration's `client_secret` credential document
//!   (key `keycloak`). scp-pep itself denies the traffic from that commit on (pipeline stage 2);
//!   Keycloak is only a second line.
//! - [`sync_one`] runs right after the commit (spawned; the caller does not wait) and [`run`]
//!   retries every `admin.keycloak.sync_interval_s`, with exponential backoff per client
//!   (`interval × 2^(attempts−1)`, at most 32 intervals). Each attempt records `attempts`, the
//!   error class (`unavailable`, `client_missing`; never a message, never a secret) and the next
//!   attempt time; success records `synced` (audited: `admin_change`, action
//!   `integration.keycloak_sync`, actor `keycloak-sync`).
//! - Writes use the document version as a precondition: a newer transition meanwhile wins, and
//!   its own pending state is synced on the next pass. Replicas may race; setting the flag is
//!   idempotent.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::admin::http::AdminHttp;
use crate::admin::keycloak::{Provisioner, realm_of_issuer};
use crate::api::ApiError;
use crate::audit::AuditLog;
use crate::audit::record::{AuditEvent, RecordKind};
use crate::pipeline::Engine;
use crate::policy::{Integration, IntegrationState};
use crate::store::{DocChange, DocKind, Expect, Source, Store, StoredDoc};

/// Actor of the sync task's writes and audit records.
pub const SYNC_ACTOR: &str = "keycloak-sync";

/// Whether an integration in `state` keeps its Keycloak client enabled (see the module docs).
pub fn client_enabled(state: IntegrationState) -> bool {
    matches!(
        state,
        IntegrationState::Approved | IntegrationState::Active | IntegrationState::Restricted
    )
}

/// The sync state kept under `keycloak` in the `client_secret` credential document. Absent: the
/// client is as provisioned (enabled).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncState {
    /// The wanted `enabled` flag of the Keycloak client.
    pub enabled: bool,
    /// `pending` (not yet applied at Keycloak) or `synced`.
    pub state: String,
    /// Attempts made for the current wanted flag.
    pub attempts: u32,
    /// Class of the last failure (`unavailable`, `client_missing`), none after success.
    pub last_error: Option<String>,
    /// When the wanted flag changed, Unix milliseconds.
    pub changed_ms: i64,
    /// Earliest next attempt, Unix milliseconds (0: at once).
    pub next_attempt_ms: i64,
    /// When it was applied, Unix milliseconds.
    pub synced_ms: Option<i64>,
}

impl SyncState {
    /// A new `pending` state for `enabled`, changed at `now_ms`.
    pub fn pending(enabled: bool, now_ms: i64) -> Self {
        SyncState {
            enabled,
            state: "pending".into(),
            attempts: 0,
            last_error: None,
            changed_ms: now_ms,
            next_attempt_ms: 0,
            synced_ms: None,
        }
    }

    /// The read-only view shown in `GET /v1/integrations/{id}` (`keycloak_client`).
    pub fn view(&self) -> Value {
        json!({
            "enabled": self.enabled,
            "sync": self.state,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "changed_at": crate::api::rfc3339(self.changed_ms),
            "synced_at": crate::api::opt_time(self.synced_ms),
        })
    }
}

/// The id of an integration's client-secret credential document.
pub fn credential_id(integration_id: &str) -> String {
    format!("{integration_id}.client_secret")
}

/// The sync state stored in credential document `doc` (none: never changed since provisioning).
pub fn state_of(doc: &Value) -> Option<SyncState> {
    serde_json::from_value(doc.get("keycloak")?.clone()).ok()
}

/// The credential document change that marks the client of the integration `pending` for
/// `enabled`, or `None` when nothing changes (the recorded wanted flag is `enabled` already, or
/// there is no client credential). `cred`: the stored `client_secret` credential document.
pub fn mark_change(cred: &StoredDoc, enabled: bool, now_ms: i64) -> Option<(DocChange, SyncState)> {
    let mut v: Value = serde_json::from_str(&cred.doc).ok()?;
    if !v.is_object() {
        return None;
    }
    let wanted_now = state_of(&v).map(|s| s.enabled).unwrap_or(true);
    if wanted_now == enabled {
        return None;
    }
    let st = SyncState::pending(enabled, now_ms);
    v["keycloak"] = serde_json::to_value(&st).ok()?;
    Some((put(cred, &v), st))
}

fn put(cred: &StoredDoc, v: &Value) -> DocChange {
    let status = v["status"].as_str().unwrap_or("active").to_owned();
    DocChange::put(
        DocKind::Credential,
        &cred.id,
        cred.tenant.as_deref(),
        v.to_string(),
    )
    .status(status)
    .expect(Expect::Version(cred.version))
}

/// Delay before attempt `attempts + 1` after a failure: `interval × 2^(attempts−1)`, at most 32
/// intervals.
pub fn backoff(interval: Duration, attempts: u32) -> Duration {
    interval.saturating_mul(1u32 << attempts.saturating_sub(1).min(5))
}

/// The Keycloak realm of `tenant` (from its issuer), per the installed snapshot.
fn realm_of(engine: &Engine, tenant: &str) -> Option<String> {
    let snap = engine.snapshot().load_full();
    let t = snap.as_ref().as_ref()?.tenants.get(tenant)?.clone();
    realm_of_issuer(&t.tenant.issuer).map(str::to_owned)
}

/// One attempt for credential document `id` when it is `pending` and due at `now_ms` (or
/// `force`): sets the flag at Keycloak and records the outcome. Returns whether it is synced now.
///
/// Errors: none surface; store and audit failures are logged and retried on the next pass.
pub async fn sync_one(
    store: &Store,
    audit: Option<&AuditLog>,
    engine: &Engine,
    provisioner: &dyn Provisioner,
    id: &str,
    interval: Duration,
    force: bool,
) -> bool {
    let doc = match store.document(DocKind::Credential, id).await {
        Ok(Some(d)) => d,
        Ok(None) => return false,
        Err(e) => {
            tracing::warn!(error = %e, "keycloak sync: credential not read");
            return false;
        }
    };
    let Ok(mut v) = serde_json::from_str::<Value>(&doc.doc) else {
        return false;
    };
    let Some(mut st) = state_of(&v) else {
        return true;
    };
    let now = crate::api::now_ms();
    if st.state != "pending" {
        return true;
    }
    if !force && st.next_attempt_ms > now {
        return false;
    }
    let (Some(client_id), Some(tenant), Some(integration)) = (
        v["client_id"].as_str().map(str::to_owned),
        v["tenant"].as_str().map(str::to_owned),
        v["integration_id"].as_str().map(str::to_owned),
    ) else {
        return false;
    };
    st.attempts = st.attempts.saturating_add(1);
    let result = match realm_of(engine, &tenant) {
        Some(realm) => provisioner
            .set_enabled(&realm, &client_id, st.enabled)
            .await
            .map_err(|e| e.class()),
        None => Err("realm_unknown"),
    };
    let ok = result.is_ok();
    match result {
        Ok(()) => {
            st.state = "synced".into();
            st.last_error = None;
            st.synced_ms = Some(now);
            st.next_attempt_ms = 0;
            if let Some(a) = audit {
                let ev = AuditEvent::new(
                    RecordKind::AdminChange,
                    Some(&tenant),
                    json!({"action": "integration.keycloak_sync", "client_id": client_id,
                           "enabled": st.enabled, "attempts": st.attempts}),
                )
                .actor(SYNC_ACTOR)
                .subject(integration.clone());
                if let Err(e) = a.record_event(&ev).await {
                    // Not recorded: the client is set, but the state stays pending and the next
                    // pass applies (idempotently) and records it again.
                    tracing::warn!(error = %e, "keycloak sync: audit unavailable");
                    return false;
                }
            }
        }
        Err(class) => {
            st.last_error = Some(class.to_owned());
            st.next_attempt_ms = now.saturating_add(
                i64::try_from(backoff(interval, st.attempts).as_millis()).unwrap_or(i64::MAX),
            );
            tracing::warn!(integration_id = %integration, error = class, attempts = st.attempts,
                "keycloak client not yet in step with the lifecycle; retrying");
        }
    }
    v["keycloak"] = serde_json::to_value(&st).unwrap_or(Value::Null);
    match store
        .write_documents(&[put(&doc, &v)], Source::Api, SYNC_ACTOR, None)
        .await
    {
        Ok(_) => ok,
        // A newer transition changed the wanted flag meanwhile: the next pass syncs that one.
        Err(crate::store::WriteError::Conflict { .. }) => false,
        Err(e) => {
            tracing::warn!(error = %e, "keycloak sync: state not recorded");
            false
        }
    }
}

/// For a transition of `i` (already in its new state): the credential change that marks its
/// client `pending` when the wanted flag changes. `None` without a configured provisioner,
/// without a client, or when the flag stays.
///
/// Errors: 503 `DEPENDENCY_UNAVAILABLE` (store unreachable).
pub(super) async fn mark(
    s: &AdminHttp,
    i: &Integration,
) -> Result<Option<(DocChange, SyncState)>, ApiError> {
    if s.provisioner.is_none() || i.client_id.is_none() {
        return Ok(None);
    }
    let cred = s
        .store
        .document(DocKind::Credential, &credential_id(&i.id))
        .await
        .map_err(|e| ApiError::unavailable("policy store", &e))?;
    Ok(cred.and_then(|c| mark_change(&c, client_enabled(i.state), crate::api::now_ms())))
}

/// One immediate attempt for integration `id`, spawned (the caller does not wait); a failure
/// is due again at the background task's next pass.
pub(super) fn spawn_now(s: &AdminHttp, id: &str) {
    let Some(p) = s.provisioner.clone() else {
        return;
    };
    let (store, audit, engine, cid) = (
        s.store.clone(),
        s.audit.clone(),
        s.engine.clone(),
        credential_id(id),
    );
    tokio::spawn(async move {
        sync_one(
            &store,
            audit.as_deref(),
            &engine,
            p.as_ref(),
            &cid,
            Duration::ZERO,
            true,
        )
        .await;
    });
}

/// The `keycloak_client` view of `i`, when its sync state was ever recorded.
///
/// Errors: 503 `DEPENDENCY_UNAVAILABLE` (store unreachable).
pub(super) async fn current(s: &AdminHttp, i: &Integration) -> Result<Option<Value>, ApiError> {
    if i.client_id.is_none() {
        return Ok(None);
    }
    let cred = s
        .store
        .document(DocKind::Credential, &credential_id(&i.id))
        .await
        .map_err(|e| ApiError::unavailable("policy store", &e))?;
    Ok(cred
        .and_then(|c| serde_json::from_str::<Value>(&c.doc).ok())
        .and_then(|v| state_of(&v))
        .map(|st| st.view()))
}

/// Every pending credential document, once, each when due.
pub async fn pass(
    store: &Store,
    audit: Option<&AuditLog>,
    engine: &Engine,
    provisioner: &dyn Provisioner,
    interval: Duration,
) {
    let docs = match store.documents(DocKind::Credential, None).await {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "keycloak sync: credentials not read");
            return;
        }
    };
    for d in docs {
        let pending = serde_json::from_str::<Value>(&d.doc)
            .ok()
            .and_then(|v| state_of(&v))
            .is_some_and(|s| s.state == "pending");
        if pending {
            sync_one(store, audit, engine, provisioner, &d.id, interval, false).await;
        }
    }
}

/// The background task: a [`pass`] every `interval` until `shutdown`.
pub async fn run(
    store: Store,
    audit: Option<Arc<AuditLog>>,
    engine: Arc<Engine>,
    provisioner: Arc<dyn Provisioner>,
    interval: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let interval = interval.max(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.wait_for(|v| *v) => return,
        }
        pass(
            &store,
            audit.as_deref(),
            &engine,
            provisioner.as_ref(),
            interval,
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // INT-6.2-2, INT-6.2-3, INT-6.2-4, INT-6.2-5
    #[test]
    fn enabled_states() {
        use IntegrationState as S;
        for s in [S::Approved, S::Active, S::Restricted] {
            assert!(client_enabled(s), "{s:?}");
        }
        for s in [
            S::Draft,
            S::Requested,
            S::Reviewed,
            S::Suspended,
            S::Deprecated,
            S::Archived,
        ] {
            assert!(!client_enabled(s), "{s:?}");
        }
    }

    fn cred(doc: Value) -> StoredDoc {
        StoredDoc {
            kind: "credential".into(),
            id: "int-ke-x.client_secret".into(),
            tenant: Some("ke".into()),
            doc: doc.to_string(),
            source: "api".into(),
            version: 3,
            status: Some("active".into()),
            created_at: String::new(),
            updated_at: String::new(),
        }
    }

    // INT-6.2-3: only a change of the wanted flag is marked, with the version as precondition.
    #[test]
    fn marks_only_changes() {
        let fresh = cred(json!({"id": "int-ke-x.client_secret", "status": "active"}));
        assert!(
            mark_change(&fresh, true, 1).is_none(),
            "provisioned enabled"
        );
        let (c, st) = mark_change(&fresh, false, 7).unwrap();
        assert_eq!(st, SyncState::pending(false, 7));
        assert_eq!(c.expect, Expect::Version(3));
        let marked: Value = serde_json::from_str(c.doc.as_deref().unwrap()).unwrap();
        assert_eq!(state_of(&marked), Some(st));
        assert!(mark_change(&cred(marked.clone()), false, 8).is_none());
        assert!(mark_change(&cred(marked), true, 8).is_some());
        assert!(mark_change(&cred(json!("not an object")), false, 1).is_none());
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let i = Duration::from_secs(10);
        assert_eq!(backoff(i, 1), Duration::from_secs(10));
        assert_eq!(backoff(i, 2), Duration::from_secs(20));
        assert_eq!(backoff(i, 6), Duration::from_secs(320));
        assert_eq!(backoff(i, 60), Duration::from_secs(320));
    }
}
