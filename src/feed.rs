//! The policy change feed: the enforced policy of this replica follows the store's policy version
//! ([`reload`] after every admin change and on every notification or poll, [`change_feed`]).
//!
//! Glue between the store and the engine, used by the server (start-up, the feed) and the admin
//! API (a change is enforced by the answering replica before the call returns, ADM-3).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::pipeline::Engine;
use crate::policy::PolicySnapshot;
use crate::store::Store;

/// Loads the store's policy when its version differs from the installed snapshot's.
/// Returns the installed version, `None` for an empty store.
pub async fn reload(store: &Store, engine: &Engine, audience: &str) -> anyhow::Result<Option<i64>> {
    let current = engine
        .snapshot()
        .load()
        .as_ref()
        .as_ref()
        .map(|s| s.version);
    let version = store.version().await?;
    if version == 0 {
        return Ok(None);
    }
    if current == Some(version) {
        return Ok(current);
    }
    let (version, set) = store.load().await?;
    let snap = PolicySnapshot::compile(set, version, audience);
    engine.install(Arc::new(snap));
    metrics::gauge!("scp_pep_policy_version").set(version as f64);
    Ok(Some(version))
}

/// Follows the policy version until `stop`: LISTEN/NOTIFY on PostgreSQL plus polling every
/// `every` on every backend; a failed reload keeps the current snapshot.
pub async fn change_feed(
    store: Store,
    engine: Arc<Engine>,
    audience: String,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let notify = Arc::new(tokio::sync::Notify::new());
    store.spawn_listener(crate::store::NOTIFY_CHANNEL, notify.clone(), stop.clone());
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = notify.notified() => {}
            _ = stop.wait_for(|v| *v) => return,
        }
        if let Err(e) = reload(&store, &engine, &audience).await {
            tracing::warn!(error = %e, "policy reload failed; keeping the current snapshot");
        }
    }
}
