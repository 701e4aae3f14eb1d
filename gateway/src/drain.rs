//! Draining (docs/OPERATIONS.md "Draining"): on shutdown readiness turns 503, upgrades
//! are refused, and clients are closed 1001 in batches so they come back elsewhere
//! spread out, before the listener and the background tasks stop. Also the shedding of
//! clients after a long Redis outage (`close_clients`).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use roomcast_shared::CloseCode;
use tokio_util::sync::CancellationToken;

use crate::App;

/// Clients closed per batch when draining, and the pause between batches.
const DRAIN_BATCH: usize = 500;
const DRAIN_PAUSE: Duration = Duration::from_millis(20);
/// Between readiness turning 503 and the first close, so probes and load balancers see
/// the node leave before its clients come looking for another one.
const DRAIN_ANNOUNCE: Duration = Duration::from_millis(200);

/// On shutdown: readiness 503 at once, refuse upgrades, close clients with 1001 in
/// batches, then stop the listener and the background tasks.
pub(crate) async fn drain_on(
    shutdown: impl Future<Output = ()>,
    app: Arc<App>,
    stop_accepting: CancellationToken,
) {
    tokio::select! {
        _ = shutdown => {}
        // Something else stopped the server: nothing to drain.
        _ = stop_accepting.cancelled() => return,
    }
    app.start_draining();
    tracing::info!(clients = app.hub.client_count(), "draining");
    tokio::time::sleep(DRAIN_ANNOUNCE).await;
    close_clients(&app, || false).await;
    stop_accepting.cancel();
    // Connection tasks finish their leaves through the pumps; then background tasks end.
    let grace = app.config.shutdown_grace;
    let deadline = Instant::now() + grace;
    while app.hub.client_count() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.shutdown.cancel();
}

/// Closes every client with 1001 in batches (clients come back elsewhere, not all in one
/// instant), snapshotting again until none is left un-closed: a connection whose upgrade
/// raced the first snapshot registers after it. Stops early once `stop` says so.
pub(crate) async fn close_clients(app: &App, stop: impl Fn() -> bool) {
    loop {
        let open: Vec<_> = app
            .hub
            .clients()
            .into_iter()
            .filter(|c| !c.killed().is_cancelled())
            .collect();
        if open.is_empty() {
            return;
        }
        for batch in open.chunks(DRAIN_BATCH) {
            if stop() {
                return;
            }
            for client in batch {
                client.kill(CloseCode::GoingAway);
            }
            tokio::time::sleep(DRAIN_PAUSE).await;
        }
    }
}
