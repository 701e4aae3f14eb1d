//! One gateway instance's shared state ([`App`]): its configuration, Redis clients, hub,
//! authenticator, webhook service and the task tracker every spawned task joins. It is
//! built from the configuration ([`App::build`]) and connected ([`App::connect`])
//! apart from serving, so the routers can be driven in process by tests.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::interfaces::ClientLike;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Authenticator;
use crate::background::{
    keep_running, metrics_upkeep, monitor, report_redis_errors, watch_connection,
};
use crate::bus::Bus;
use crate::config::{self, Config};
use crate::hub::Hub;
use crate::session::{PumpEnv, PumpSettings, Pumps};
use crate::store::{redis_builder, Store};
use crate::{check_config, lifecycle, metrics, net, webhooks, StartError};

/// Pub/sub messages buffered between the subscriber connection and the reader task.
const SUBSCRIBER_BUFFER: usize = 16 * 1024;

/// Everything shared by the tasks of one gateway instance.
pub(crate) struct App {
    pub(crate) config: Config,
    pub(crate) node_id: String,
    pub(crate) store: Arc<Store>,
    pub(crate) bus: Bus,
    pub(crate) hub: Hub,
    pub(crate) auth: Authenticator,
    /// Peers whose `X-Forwarded-For` names the client.
    pub(crate) proxies: net::TrustedProxies,
    /// Every spawned task and connection, so shutdown can wait for them.
    pub(crate) tracker: TaskTracker,
    /// Cancelled when background tasks must stop (after clients are closed).
    pub(crate) shutdown: CancellationToken,
    pub(crate) metrics: PrometheusHandle,
    /// Webhook delivery, when `ROOMCAST_WEBHOOK_URLS` is set.
    pub(crate) webhooks: Option<Arc<webhooks::Webhooks>>,
    /// The join hook, when `ROOMCAST_JOIN_HOOK_URL` is set.
    pub(crate) join_hook: Option<webhooks::hook::JoinHook>,
    pub(crate) started: Instant,
    draining: AtomicBool,
    redis_latency_us: AtomicU64,
}

impl App {
    /// Builds an instance from `config`: its Redis clients (not connected yet), the hub,
    /// the webhook service. Nothing runs until [`App::connect`].
    pub(crate) fn build(config: Config) -> Result<Arc<App>, StartError> {
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
        Ok(Arc::new(App {
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
        }))
    }

    /// Connects to Redis and starts the background tasks: the pool's connections (kept
    /// running), the subscriber, the readiness monitor, the lifecycle clock, webhook
    /// delivery. Never fails: a gateway started before Redis reports not-ready until it
    /// is reachable, instead of crash-looping.
    pub(crate) async fn connect(self: &Arc<Self>) {
        let wait = self.config.redis_timeout;
        for (client, connection) in self
            .store
            .pool()
            .clients()
            .iter()
            .zip(self.store.pool().connect_pool())
        {
            self.tracker.spawn(keep_running(
                self.shutdown.clone(),
                client.clone(),
                connection,
                || {},
            ));
        }
        if tokio::time::timeout(wait, self.store.pool().wait_for_connect())
            .await
            .is_err()
        {
            tracing::warn!("redis not reachable yet; retrying in the background");
        }
        // Ready only once a PING is answered (the monitor's first tick checks at once).
        self.store.set_reachable(false);
        Bus::start(self, wait).await;
        self.tracker.spawn(monitor(self.clone()));
        self.tracker.spawn(metrics_upkeep(self.clone()));
        self.tracker.spawn(report_redis_errors(self.clone()));
        for client in self.store.pool().clients() {
            self.tracker
                .spawn(watch_connection(self.clone(), client.clone()));
        }
        self.tracker.spawn(lifecycle::sweeper(self.clone()));
        if let Some(hooks) = &self.webhooks {
            hooks.start();
        }
    }

    /// Readiness 503 from now on, and no new upgrades: the node is draining.
    pub(crate) fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// The last PING's round trip, for `/health`.
    pub(crate) fn set_redis_latency(&self, latency: Duration) {
        self.redis_latency_us
            .store(latency.as_micros() as u64, Ordering::Relaxed);
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub(crate) fn redis_ok(&self) -> bool {
        self.store.is_reachable()
    }

    pub(crate) fn redis_latency_ms(&self) -> f64 {
        Duration::from_micros(self.redis_latency_us.load(Ordering::Relaxed)).as_secs_f64() * 1e3
    }

    /// Why `/health/ready` says no, if it does.
    pub(crate) fn not_ready_reason(&self) -> Option<&'static str> {
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
