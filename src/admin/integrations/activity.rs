//! Last successful sync and handshakes (ONB-6, ONB-7, ONB-AUD-4).

use super::*;

// ---------------------------------------------------------------------------------------------
// Activity: last successful sync and handshakes (ONB-6, ONB-7, ONB-AUD-4)

/// Coalesces allowed requests in memory and writes them off the request path (at most once per
/// integration per flush interval, 1 s); activates approved integrations on their first allowed
/// handshake.
#[derive(Default)]
pub struct Activity {
    /// integration → latest allowed request, ms. Sharded (`DashMap`): the request path takes
    /// one shard lock and allocates nothing once the integration has an entry.
    syncs: dashmap::DashMap<String, i64>,
    /// integration → (latest handshake ms, the integration was approved then).
    handshakes: Mutex<HashMap<String, (i64, bool)>>,
    wake: tokio::sync::Notify,
}

impl ActivityObserver for Activity {
    fn allowed(&self, integration: &str, handshake: bool, state: IntegrationState, time_ms: i64) {
        if handshake {
            let approved = state == IntegrationState::Approved;
            if let Ok(mut m) = self.handshakes.lock() {
                let e = m.entry(integration.to_owned()).or_insert((time_ms, false));
                e.0 = e.0.max(time_ms);
                e.1 |= approved;
            }
            if approved {
                self.wake.notify_one();
            }
        } else if let Some(mut e) = self.syncs.get_mut(integration) {
            *e = (*e).max(time_ms);
        } else {
            let mut e = self.syncs.entry(integration.to_owned()).or_insert(time_ms);
            *e = (*e).max(time_ms);
        }
    }
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Activity::default())
    }

    /// Writes what accumulated every second (or at once for a first handshake) until
    /// `shutdown`, then once more.
    pub async fn run(
        self: Arc<Self>,
        store: Store,
        audit: Option<Arc<AuditLog>>,
        engine: Arc<Engine>,
        audience: String,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            let stop = tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => false,
                _ = self.wake.notified() => false,
                _ = shutdown.wait_for(|v| *v) => true,
            };
            self.flush(&store, audit.as_deref(), &engine, &audience)
                .await;
            if stop {
                return;
            }
        }
    }

    /// Writes the pending syncs and handshakes; activates approved integrations that shook hands.
    pub async fn flush(
        &self,
        store: &Store,
        audit: Option<&AuditLog>,
        engine: &Engine,
        audience: &str,
    ) {
        // `remove` returns each entry's latest value atomically; a request landing after its
        // removal starts a new entry for the next flush.
        let keys: Vec<String> = self.syncs.iter().map(|e| e.key().clone()).collect();
        let syncs: Vec<(String, i64)> = keys
            .into_iter()
            .filter_map(|k| self.syncs.remove(&k))
            .collect();
        if let Err(e) = store.record_syncs(&syncs).await {
            tracing::warn!(error = %e, "last successful sync not recorded");
        }
        let hs: Vec<(String, (i64, bool))> = self
            .handshakes
            .lock()
            .map(|mut m| std::mem::take(&mut *m).into_iter().collect())
            .unwrap_or_default();
        let mut activated = false;
        for (id, (ms, approved)) in hs {
            if let Err(e) = store.record_handshake(&id, ms).await {
                tracing::warn!(error = %e, integration_id = %id, "handshake not recorded");
                continue;
            }
            if approved {
                match activate_on_handshake(store, audit, &id).await {
                    Ok(a) => activated |= a,
                    Err(e) => {
                        tracing::warn!(error = %e, integration_id = %id, "activation after handshake failed; the next handshake retries")
                    }
                }
            }
        }
        if activated && let Err(e) = crate::feed::reload(store, engine, audience).await {
            tracing::error!(error = %e, "policy reload after a handshake activation failed");
        }
    }
}

/// Marks `id` active after a successful handshake when it is still approved and provisioned
/// (ONB-7): audited first (`admin_change`, actor `handshake`), then written with a version
/// check. Returns whether it changed.
pub(super) async fn activate_on_handshake(
    store: &Store,
    audit: Option<&AuditLog>,
    id: &str,
) -> anyhow::Result<bool> {
    let Some(d) = store.document(DocKind::Integration, id).await? else {
        return Ok(false);
    };
    let mut i: Integration = serde_json::from_str(&d.doc)?;
    if i.state != IntegrationState::Approved || i.client_id.is_none() {
        return Ok(false);
    }
    if let Some(a) = audit {
        a.record_event(
            &AuditEvent::new(
                RecordKind::AdminChange,
                Some(&i.tenant),
                json!({"action": "integration.activate", "via": "handshake",
                       "from": "approved", "to": "active"}),
            )
            .actor("handshake")
            .subject(id),
        )
        .await
        .map_err(|e| anyhow::anyhow!("audit: {e}"))?;
    }
    i.state = IntegrationState::Active;
    i.onboarding
        .get_or_insert_with(Onboarding::default)
        .activated_by = Some("handshake".into());
    let events = crate::webhooks::state_changed_rows(
        store,
        &i.tenant,
        id,
        json!({"from": "approved", "to": "active", "action": "activate", "reason_code": null}),
    )
    .await;
    match store
        .write_documents_with(
            &[put_integration(&i, Expect::Version(d.version))],
            Source::Api,
            "handshake",
            None,
            &events,
        )
        .await
    {
        Ok(_) => Ok(true),
        // Someone else changed it meanwhile (another replica activated it, or an operator).
        Err(crate::store::WriteError::Conflict { .. }) => Ok(false),
        Err(e) => Err(anyhow::anyhow!("{e}")),
    }
}
