//! The background tasks of an instance: Redis clients kept running after fred gives one
//! up, lost connections reported at once, Redis errors logged once each, the metrics
//! upkeep, and the monitor (readiness PING, node heartbeat, shedding clients after a long
//! outage).

use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::interfaces::EventInterface;
use tokio_util::sync::CancellationToken;

use crate::drain::close_clients;
use crate::util::now_ms;
use crate::{metrics, App};

/// How often histogram samples are folded into their buckets between scrapes (the
/// exporter's own default for the recorders it installs itself).
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

/// Restarts a Redis client whose connection task ended while the gateway runs. fred ends
/// a client's routing task for good on some errors (an `ASKING` that runs out of attempts
/// during a slot migration is one), after which every command sent to it would time out;
/// connecting it again makes it a blink instead. `stopped` runs first (the subscriber marks
/// the bus down, so it resubscribes once connected).
pub(crate) async fn keep_running<C, F>(
    shutdown: CancellationToken,
    client: C,
    mut connection: fred::types::ConnectHandle,
    stopped: F,
) where
    C: fred::interfaces::ClientLike + Clone + Send + Sync + 'static,
    F: Fn() + Send + 'static,
{
    loop {
        let ended = tokio::select! {
            _ = shutdown.cancelled() => return,
            ended = &mut connection => ended,
        };
        if shutdown.is_cancelled() {
            return;
        }
        let reason = match ended {
            Ok(Ok(())) => "closed".to_string(),
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        tracing::warn!(
            client = %client.id(),
            reason = %reason,
            "redis client stopped; connecting it again"
        );
        metrics::redis_client_restart();
        stopped();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        connection = client.connect();
    }
}

/// Marks Redis unreachable as soon as a pool connection reports an error, so that requests
/// fail at once while the readiness PING confirms it (the subscriber usually notices a
/// dead Redis first: readiness is 503 at once, and commands must not wait out their
/// timeout meanwhile).
pub(crate) async fn watch_connection(app: Arc<App>, client: fred::clients::Client) {
    let mut errors = client.error_rx();
    loop {
        tokio::select! {
            _ = app.shutdown.cancelled() => return,
            e = errors.recv() => match e {
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    app.store.connection_lost();
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

/// Says why Redis cannot be reached (refused, a TLS certificate that does not verify,
/// authentication), once per distinct error and at most every 10 s: without it a wrong
/// TLS setting shows only as a 503.
pub(crate) async fn report_redis_errors(app: Arc<App>) {
    let Some(client) = app.store.pool().clients().first().cloned() else {
        return;
    };
    let mut errors = client.error_rx();
    let mut last: Option<(String, Instant)> = None;
    loop {
        let error = tokio::select! {
            _ = app.shutdown.cancelled() => return,
            e = errors.recv() => match e {
                Ok((error, _)) => error.to_string(),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
        };
        let repeated = last
            .as_ref()
            .is_some_and(|(seen, at)| *seen == error && at.elapsed() < Duration::from_secs(10));
        if !repeated {
            tracing::warn!(error = %error, "redis connection failed");
            last = Some((error, Instant::now()));
        }
    }
}

/// Drains the Prometheus recorder's histogram samples every few seconds. Each observation
/// is held until a scrape (or this upkeep) folds it into the buckets: without it a node
/// that nobody scrapes grew by every latency it recorded (`make soak` found 4 MB a minute).
pub(crate) async fn metrics_upkeep(app: Arc<App>) {
    let mut tick = tokio::time::interval(METRICS_UPKEEP);
    loop {
        tokio::select! {
            _ = app.shutdown.cancelled() => return,
            _ = tick.tick() => app.metrics.run_upkeep(),
        }
    }
}

/// Background health: Redis PING (readiness and `redis_up`) and the node heartbeat.
pub(crate) async fn monitor(app: Arc<App>) {
    let period = Duration::from_millis(500).min(app.config.heartbeat);
    let ping_timeout = app.config.redis_timeout.min(Duration::from_secs(1));
    let mut tick = tokio::time::interval(period);
    let mut last_node_beat: Option<Instant> = None;
    // Since when Redis has not answered, and whether this outage's clients were shed.
    let mut lost_since: Option<Instant> = None;
    let mut shed = false;
    loop {
        tokio::select! {
            _ = app.shutdown.cancelled() => return,
            _ = tick.tick() => {}
            // A lost connection: confirm (or clear) it now rather than at the next tick.
            _ = app.store.recheck_requested() => {}
        }
        let started = Instant::now();
        let ok = app.store.ping(ping_timeout).await.is_ok();
        if ok {
            app.set_redis_latency(started.elapsed());
        }
        if app.store.set_reachable(ok) != ok {
            if ok {
                tracing::info!("redis reachable");
            } else {
                tracing::warn!("redis unreachable");
            }
        }
        metrics::redis_up(ok);
        if ok {
            (lost_since, shed) = (None, false);
        } else {
            let since = *lost_since.get_or_insert_with(Instant::now);
            let grace = app.config.redis_lost_grace;
            if !shed && !grace.is_zero() && since.elapsed() >= grace {
                // This node cannot serve its sessions: gap fill after the outage needs
                // the missed messages to be still in history, so clients resume on a
                // node that can reach Redis now rather than after a long outage here.
                shed = true;
                tracing::warn!(
                    clients = app.hub.client_count(),
                    "redis unreachable for {grace:?}: closing clients with 1001"
                );
                let app = app.clone();
                app.tracker.clone().spawn(async move {
                    close_clients(&app, || app.store.is_reachable()).await;
                });
            }
        }
        let heartbeat = app.config.heartbeat;
        if ok && last_node_beat.is_none_or(|t| t.elapsed() >= heartbeat) {
            last_node_beat = Some(Instant::now());
            if let Err(e) = app
                .store
                .node_heartbeat(&app.node_id, now_ms(), app.config.node_alive_for())
                .await
            {
                tracing::debug!(error = %e, "node heartbeat failed");
            }
            if let Err(e) = app
                .store
                .node_connections(&app.node_id, app.hub.client_count())
                .await
            {
                tracing::debug!(error = %e, "node connection count failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use fred::interfaces::ClientLike;

    use super::*;
    use crate::{config, store, test_redis};

    /// A Redis client whose connection task ended while the gateway runs is connected
    /// again, after `stopped` ran once; once the gateway shuts down, it is left alone.
    #[tokio::test]
    async fn a_redis_client_whose_connection_ended_is_connected_again() {
        let redis = test_redis::Redis::start();
        let config =
            config::Config::from_pairs(&[("redis-url", &redis.url()), ("auth", "off")]).unwrap();
        let client = store::redis_builder(&config, 16).unwrap().build().unwrap();
        let connection = client.connect();
        client.wait_for_connect().await.unwrap();
        let shutdown = CancellationToken::new();
        let (stops, mut stopped) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(keep_running(
            shutdown.clone(),
            client.clone(),
            connection,
            move || {
                let _ = stops.send(());
            },
        ));
        // QUIT ends the client's connection task, as fred's own give-ups do.
        client.quit().await.unwrap();
        let within = Duration::from_secs(10);
        tokio::time::timeout(within, stopped.recv())
            .await
            .expect("`stopped` ran")
            .expect("once");
        tokio::time::timeout(within, client.wait_for_connect())
            .await
            .expect("connected again")
            .unwrap();
        let _: String = client.ping(None).await.unwrap();
        shutdown.cancel();
        tokio::time::timeout(within, task)
            .await
            .expect("keep_running returns on shutdown")
            .unwrap();
        assert!(stopped.try_recv().is_err(), "`stopped` ran more than once");
    }
}
