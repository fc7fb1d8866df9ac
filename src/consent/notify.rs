//! Consent notifications on a durable outbox (placeholder until the outbox lands).

use std::sync::Arc;

use tokio::sync::watch;

use super::Consents;
use crate::pipeline::SnapshotSlot;

/// Scans for due reminders and expiry notices and delivers the outbox until `stop`.
pub async fn run(consents: Arc<Consents>, snapshot: SnapshotSlot, mut stop: watch::Receiver<bool>) {
    let _ = (consents, snapshot);
    let _ = stop.wait_for(|v| *v).await;
}
