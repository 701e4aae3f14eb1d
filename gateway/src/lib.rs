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
//! - [`app`]: the shared state of an instance, built and connected apart from serving.
//! - [`background`]: the readiness monitor, Redis clients kept running, the metrics upkeep.
//! - [`drain`]: graceful shutdown and the shedding of clients after a long outage.
//!
//! [`run`] wires them: build and connect an [`App`], serve, drain, stop.

mod api;
mod app;
pub mod auth;
mod background;
mod bus;
pub mod client;
pub mod config;
mod conn;
mod demo;
mod drain;
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
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub(crate) use crate::app::App;
use crate::config::Config;
use crate::drain::drain_on;

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
    let app = App::build(config)?;
    app.connect().await;

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
