//! Roomcast gateway: stateless WebSocket and HTTP front-ends over Redis.
//!
//! Code map (see ARCHITECTURE.md for the data flow and invariants):
//! - [`config`]: typed configuration from flags and `ROOMCAST_*`.
//! - [`auth`]: JWT verification and minting.
//! - [`ids`]: validated session and user ids.
//! - [`http`]: the routers, health, metrics endpoint.
//! - [`problem`]: the problem+json error shape of every HTTP answer.
//! - [`publish`]: the one publish path of every surface.
//! - [`api`]: the REST API under `/api/v1` and its OpenAPI document.
//! - [`lifecycle`]: the inactivity and lifetime sweeper.
//! - [`ratelimit`]: sliding-window limits in Redis, token buckets in memory.
//! - [`net`]: client addresses (trusted proxies) and the HTTP accept loop.
//! - [`conn`]: WebSocket admission and the per-connection read loop.
//! - [`client`]: a client's bounded send queue and writer task.
//! - [`hub`]: local sessions and clients of this instance.
//! - [`session`]: the per-session pump, the single ordering point of delivery.
//! - [`bus`]: the pub/sub connection and its subscriptions.
//! - [`store`]: every Redis command and Lua script.
//! - [`webhooks`]: event delivery to application backends, and the join hook.
//! - [`keys`], [`envelope`]: Redis key names and internal encodings.
//! - [`metrics`], [`telemetry`]: Prometheus metrics and logging.
//!
//! [`run`] wires them: it owns start-up, the background tasks and graceful shutdown.

mod api;
pub mod auth;
mod bus;
pub mod client;
pub mod config;
mod conn;
mod demo;
pub mod envelope;
mod http;
mod hub;
pub mod ids;
mod keys;
mod lifecycle;
mod metrics;
mod net;
mod problem;
mod publish;
mod ratelimit;
mod session;
pub mod store;
pub mod telemetry;
pub mod util;
pub mod webhooks;

#[cfg(test)]
#[path = "../../testkit/src/redis.rs"]
mod test_redis;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::interfaces::{ClientLike, EventInterface};
use metrics_exporter_prometheus::PrometheusHandle;
use roomcast_shared::CloseCode;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Authenticator;
use crate::bus::Bus;
use crate::config::Config;
use crate::hub::Hub;
use crate::session::{PumpEnv, PumpSettings, Pumps};
use crate::store::{redis_builder, Store};
use crate::util::now_ms;

/// Clients closed per batch when draining, and the pause between batches.
const DRAIN_BATCH: usize = 500;
const DRAIN_PAUSE: Duration = Duration::from_millis(20);
/// Between readiness turning 503 and the first close, so probes and load balancers see
/// the node leave before its clients come looking for another one.
const DRAIN_ANNOUNCE: Duration = Duration::from_millis(200);

/// How often histogram samples are folded into their buckets between scrapes (the
/// exporter's own default for the recorders it installs itself).
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

/// Pub/sub messages buffered between the subscriber connection and the reader task.
const SUBSCRIBER_BUFFER: usize = 16 * 1024;

/// Everything shared by the tasks of one gateway instance.
pub struct App {
    pub config: Config,
    pub node_id: String,
    pub store: Arc<Store>,
    pub bus: Bus,
    pub hub: Hub,
    pub auth: Authenticator,
    /// Peers whose `X-Forwarded-For` names the client.
    pub proxies: net::TrustedProxies,
    /// Every spawned task and connection, so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Cancelled when background tasks must stop (after clients are closed).
    pub shutdown: CancellationToken,
    pub metrics: PrometheusHandle,
    /// Webhook delivery, when `ROOMCAST_WEBHOOK_URLS` is set.
    pub webhooks: Option<Arc<webhooks::Webhooks>>,
    /// The join hook, when `ROOMCAST_JOIN_HOOK_URL` is set.
    pub join_hook: Option<webhooks::hook::JoinHook>,
    pub started: Instant,
    draining: AtomicBool,
    redis_latency_us: AtomicU64,
}

impl App {
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn redis_ok(&self) -> bool {
        self.store.is_reachable()
    }

    pub fn redis_latency_ms(&self) -> f64 {
        Duration::from_micros(self.redis_latency_us.load(Ordering::Relaxed)).as_secs_f64() * 1e3
    }

    /// Why `/health/ready` says no, if it does.
    pub fn not_ready_reason(&self) -> Option<&'static str> {
        if self.is_draining() {
            Some("draining")
        } else if !self.redis_ok() {
            Some("redis unreachable")
        } else if !self.bus.is_up() {
            Some("pub/sub not subscribed")
        } else {
            None
        }
    }
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("redis client: {0}")]
    Redis(String),
    #[error("metrics: {0}")]
    Metrics(String),
    #[error("server: {0}")]
    Serve(#[from] std::io::Error),
}

/// Everything a start checks before it binds: the configuration's own rules, then the
/// Redis TLS files (read and parsed), so a setting the gateway cannot honour stops it with
/// exit 64 rather than at its first connection.
pub fn check_config(config: &Config) -> Result<(), config::ConfigError> {
    config.validate()?;
    store::tls::client_config(config)
        .map(|_| ())
        .map_err(config::ConfigError)
}

/// Runs a gateway on `listener` until `shutdown` resolves, then drains
/// (docs/OPERATIONS.md "Draining") and returns.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    check_config(&config)?;
    let auth = Authenticator::from_config(&config)?;
    if auth.is_off() {
        tracing::warn!("AUTHENTICATION IS OFF (ROOMCAST_AUTH=off): anyone can connect as anyone; development only");
    }
    let node_id = config.resolve_node_id();
    let redis_error = |e: &dyn std::fmt::Display| StartError::Redis(e.to_string());
    let pool = redis_builder(&config, 32)
        .map_err(|e| redis_error(&e))?
        .build_pool(config.redis_pool)
        .map_err(|e| redis_error(&e))?;
    let subscriber = redis_builder(&config, SUBSCRIBER_BUFFER)
        .map_err(|e| redis_error(&e))?
        .build_subscriber_client()
        .map_err(|e| redis_error(&e))?;
    let metrics = metrics::install().map_err(StartError::Metrics)?;
    let store = Arc::new(Store::new(pool, &config));
    let bus = Bus::new(subscriber);
    let tracker = TaskTracker::new();
    let shutdown_token = CancellationToken::new();
    let hooks = webhooks::Webhooks::new(
        &config,
        store.clone(),
        &node_id,
        tracker.clone(),
        shutdown_token.clone(),
    )
    .map_err(|e| StartError::Config(config::ConfigError(e)))?;
    let join_hook = webhooks::hook::JoinHook::new(&config.webhooks)
        .map_err(|e| StartError::Config(config::ConfigError(e)))?;
    let pumps = PumpEnv::new(
        store.clone(),
        bus.channels(),
        PumpSettings::from_config(&config),
    );
    let app = Arc::new(App {
        hub: Hub::new(Pumps::new(pumps, tracker.clone())),
        store,
        bus,
        auth,
        proxies: net::TrustedProxies::parse(&config.trusted_proxies)
            .map_err(|e| StartError::Config(config::ConfigError(e)))?,
        node_id,
        tracker,
        shutdown: shutdown_token,
        metrics,
        webhooks: hooks,
        join_hook,
        started: Instant::now(),
        draining: AtomicBool::new(false),
        redis_latency_us: AtomicU64::new(0),
        config,
    });

    // Connect without failing: a gateway started before Redis reports not-ready until it
    // is reachable, instead of crash-looping.
    let wait = app.config.redis_timeout;
    for (client, connection) in app
        .store
        .pool()
        .clients()
        .iter()
        .zip(app.store.pool().connect_pool())
    {
        app.tracker.spawn(keep_running(
            app.shutdown.clone(),
            client.clone(),
            connection,
            || {},
        ));
    }
    if tokio::time::timeout(wait, app.store.pool().wait_for_connect())
        .await
        .is_err()
    {
        tracing::warn!("redis not reachable yet; retrying in the background");
    }
    // Ready only once a PING is answered (the monitor's first tick checks at once).
    app.store.set_reachable(false);
    Bus::start(&app, wait).await;
    app.tracker.spawn(monitor(app.clone()));
    app.tracker.spawn(metrics_upkeep(app.clone()));
    app.tracker.spawn(report_redis_errors(app.clone()));
    for client in app.store.pool().clients() {
        app.tracker
            .spawn(watch_connection(app.clone(), client.clone()));
    }
    app.tracker.spawn(lifecycle::sweeper(app.clone()));
    if let Some(hooks) = &app.webhooks {
        hooks.start();
    }

    // The ops listener is bound (and announced) before the main one is.
    let ops_listener = match app.config.ops_listen {
        Some(addr) => {
            let ops = TcpListener::bind(addr).await?;
            tracing::info!(addr = %ops.local_addr()?, "ops listening");
            Some(ops)
        }
        None => None,
    };
    let addr = listener.local_addr()?;
    tracing::info!(addr = %addr, node = %app.node_id, "listening");

    let stop_accepting = CancellationToken::new();
    app.tracker
        .spawn(drain_on(shutdown, app.clone(), stop_accepting.clone()));
    // The client listener holds the descriptor budget; the ops listener has a small share
    // of the reserve, no per-address cap (probes and scrapers come from few addresses),
    // and the same idle timeout.
    let capacity = net::Capacity::from_rlimit();
    tracing::info!(
        budget = capacity.budget(),
        "connection budget (open-files limit less a reserve)"
    );
    let edge = net::EdgeConfig {
        header_timeout: app.config.header_timeout,
        max_pending_per_ip: app.config.max_pending_per_ip,
        proxies: app.proxies.clone(),
    };
    let ops = match ops_listener {
        Some(ops) => {
            let ops_edge = net::EdgeConfig {
                max_pending_per_ip: 0,
                ..edge.clone()
            };
            let serving = net::serve(
                ops,
                http::ops_router(app.clone()),
                ops_edge,
                net::Capacity::fixed(net::OPS_CONNECTIONS),
                stop_accepting.clone(),
            );
            Some(tokio::spawn(serving))
        }
        None => None,
    };
    let router = http::router(app.clone());
    let http = net::serve(listener, router, edge, capacity, stop_accepting.clone()).await;
    if let Some(ops) = ops {
        if let Ok(ops) = ops.await {
            let _ = tokio::time::timeout(Duration::from_secs(1), ops.wait()).await;
        }
    }

    // The listener is closed; let in-flight HTTP requests finish, then wait for
    // connections and pumps.
    let grace = app.config.shutdown_grace;
    if tokio::time::timeout(grace, http.wait()).await.is_err() {
        tracing::warn!("HTTP requests still running after the grace period");
    }
    app.tracker.close();
    if tokio::time::timeout(grace, app.tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(grace = ?grace, "tasks still running after the grace period; exiting anyway");
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), app.store.node_remove(&app.node_id)).await;
    app.bus.stop().await;
    tracing::info!("stopped");
    Ok(())
}

/// On shutdown: readiness 503 at once, refuse upgrades, close clients with 1001 in
/// batches, then stop the listener and the background tasks.
async fn drain_on(
    shutdown: impl Future<Output = ()>,
    app: Arc<App>,
    stop_accepting: CancellationToken,
) {
    tokio::select! {
        _ = shutdown => {}
        // Something else stopped the server: nothing to drain.
        _ = stop_accepting.cancelled() => return,
    }
    app.draining.store(true, Ordering::Release);
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
async fn close_clients(app: &App, stop: impl Fn() -> bool) {
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
async fn watch_connection(app: Arc<App>, client: fred::clients::Client) {
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
async fn report_redis_errors(app: Arc<App>) {
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
async fn metrics_upkeep(app: Arc<App>) {
    let mut tick = tokio::time::interval(METRICS_UPKEEP);
    loop {
        tokio::select! {
            _ = app.shutdown.cancelled() => return,
            _ = tick.tick() => app.metrics.run_upkeep(),
        }
    }
}

/// Background health: Redis PING (readiness and `redis_up`) and the node heartbeat.
async fn monitor(app: Arc<App>) {
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
            app.redis_latency_us
                .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
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

    use super::*;

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
