//! Webhooks and the join hook: how application backends hear a room and decide who joins
//! (docs/WEBHOOKS.md).
//!
//! Owns the delivery of recorded events: every instance runs a [`Webhooks`] service that
//! delivers the sessions whose events it just recorded (at once, from the store's
//! notification), and reads the delivery requests of the shared consumer group (the safety
//! net: a request filed before a script that recorded events, and then left by an
//! instance that died, is claimed by another after `ROOMCAST_WEBHOOK_CLAIM_IDLE`). One
//! session's events go to one endpoint in order, under a lease (`deliver`); the HTTP
//! client, signatures (`sign`), bodies (`event`) and the join hook (`hook`) are here too.
//! The settings are `config::webhooks`; the recording itself is in the Lua scripts
//! (`redis/events.lua`).

mod deliver;
pub mod event;
pub mod hook;
pub mod sign;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::config::webhooks::WebhookConfig;
pub(crate) use deliver::{Endpoint, EndpointState};

use crate::keys::INDEX_BUCKETS;
use crate::store::Store;
use crate::util::now_ms;
use sign::Signer;

/// The HTTP client of webhooks and the join hook: HTTP/1.1, http or https (rustls, the
/// system's roots), pooled connections.
pub(crate) type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Events claimed per step of a session's delivery.
const BATCH: u32 = 100;
/// Delivery requests read per bucket per poll.
const KICKS_PER_READ: u64 = 200;

pub(crate) fn http_client() -> Result<HttpClient, String> {
    let provider = Arc::new(fred::rustls::crypto::ring::default_provider());
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(provider)
        .map_err(|e| format!("TLS roots: {e}"))?
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .build(https))
}

/// A short stable name of an endpoint: its cursors, leases and metric labels use it, so
/// reordering `ROOMCAST_WEBHOOK_URLS` changes nothing.
pub fn endpoint_id(url: &str) -> String {
    let digest = Sha256::digest(url.trim().as_bytes());
    digest[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// Delivery requests by (bucket, request id).
type Requests = Vec<(u16, String)>;
/// A settled session's check: its requests, and whether nothing was left anywhere.
type Checked = (String, Requests, bool);

/// The delivery service of one instance.
pub struct Webhooks {
    store: Arc<Store>,
    config: WebhookConfig,
    endpoints: Vec<Arc<Endpoint>>,
    endpoint_ids: Vec<String>,
    signer: Signer,
    client: HttpClient,
    /// This process's lease owner token.
    owner: String,
    /// Local deliveries in progress per (session, endpoint index); `true` asks the
    /// running one to look again before it stops.
    active: DashMap<(String, usize), bool>,
    lease: Duration,
    settle: Duration,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks")
            .field("endpoints", &self.endpoint_ids)
            .finish()
    }
}

impl Webhooks {
    /// The service, when webhooks are configured (`None` otherwise).
    pub(crate) fn new(
        config: &crate::config::Config,
        store: Arc<Store>,
        node_id: &str,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<Option<Arc<Self>>, String> {
        let w = &config.webhooks;
        if !w.enabled() {
            return Ok(None);
        }
        let keys = w.keys().map_err(|e| e.0)?;
        let endpoints: Vec<Arc<Endpoint>> = w
            .urls
            .iter()
            .map(|u| Endpoint::new(u, w).map(Arc::new))
            .collect::<Result<_, _>>()?;
        Ok(Some(Arc::new(Webhooks {
            endpoint_ids: endpoints.iter().map(|e| e.id.clone()).collect(),
            endpoints,
            signer: Signer::new(keys),
            client: http_client()?,
            owner: format!("{node_id}:{}", crate::util::random_id(8)),
            active: DashMap::new(),
            lease: w.claim_idle,
            settle: store.events_settle(),
            store,
            config: w.clone(),
            tracker,
            shutdown,
        })))
    }

    /// Starts the two loops: this instance's own recordings, and the shared requests.
    pub(crate) fn start(self: &Arc<Self>) {
        if let Some(mut recorded) = self.store.take_recorded() {
            let me = self.clone();
            self.tracker.spawn(async move {
                loop {
                    let session = tokio::select! {
                        s = recorded.recv() => match s { Some(s) => s, None => return },
                        _ = me.shutdown.cancelled() => return,
                    };
                    for endpoint in 0..me.endpoints.len() {
                        me.clone().spawn_delivery(session.clone(), endpoint);
                    }
                }
            });
        }
        let me = self.clone();
        self.tracker.spawn(async move { me.consume().await });
    }

    /// Each endpoint's state on this instance (the admin route).
    pub(crate) fn endpoint_states(&self) -> Vec<deliver::EndpointState> {
        self.endpoints.iter().map(|e| e.state()).collect()
    }

    /// Delivers `session` to one endpoint unless this instance already is: then the
    /// running delivery is asked to look again before it stops.
    fn spawn_delivery(self: Arc<Self>, session: String, endpoint: usize) {
        if !self.enter(&session, endpoint) {
            return;
        }
        let me = self.clone();
        self.tracker.spawn(async move {
            let _ = me.run_delivery(&session, endpoint).await;
        });
    }

    /// Names a (session, endpoint) delivery in `active`: true when this caller is to run
    /// it, false when one runs already (which is then asked to look again before it stops).
    fn enter(&self, session: &str, endpoint: usize) -> bool {
        use dashmap::mapref::entry::Entry;
        match self.active.entry((session.to_string(), endpoint)) {
            Entry::Occupied(mut o) => {
                *o.get_mut() = true;
                false
            }
            Entry::Vacant(v) => {
                v.insert(false);
                true
            }
        }
    }

    /// Runs one (session, endpoint) delivery that `active` already names, until it has
    /// nothing left (`Ok(true)`), or another owner holds it, or it stopped (`Ok(false)`).
    async fn run_delivery(
        &self,
        session: &str,
        endpoint: usize,
    ) -> Result<bool, crate::store::StoreError> {
        let ep = &self.endpoints[endpoint];
        ep.pending(1);
        let result = loop {
            let outcome = self.drain(session, ep).await;
            if !matches!(outcome, Ok(deliver::Drained::Empty)) {
                // Held elsewhere, stopped, or Redis failed: whoever holds the request
                // (or the lease) goes on; nothing of ours is lost.
                self.active.remove(&(session.to_string(), endpoint));
                break outcome.map(|_| false);
            }
            // Nothing left: stop unless someone asked to look again meanwhile.
            use dashmap::mapref::entry::Entry;
            match self.active.entry((session.to_string(), endpoint)) {
                Entry::Occupied(mut o) if *o.get() => {
                    *o.get_mut() = false;
                }
                Entry::Occupied(o) => {
                    o.remove();
                    break Ok(true);
                }
                Entry::Vacant(_) => break Ok(true),
            }
        };
        ep.pending(-1);
        result
    }

    /// The shared delivery requests: read new ones and those left idle by others, and
    /// once a request has settled, deliver its session everywhere and acknowledge it.
    async fn consume(self: Arc<Self>) {
        let poll = (self.settle / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        let mut prepared = false;
        let mut last_claim: Option<Instant> = None;
        // Session → when its requests may be acknowledged, and which they are.
        let mut waiting: HashMap<String, (Instant, Vec<(u16, String)>)> = HashMap::new();
        let mut checking: tokio::task::JoinSet<Checked> = tokio::task::JoinSet::new();
        let mut busy: std::collections::HashSet<String> = std::collections::HashSet::new();
        let mut ticker = tokio::time::interval(poll);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                Some(done) = checking.join_next(), if !checking.is_empty() => {
                    if let Ok((session, ids, finished)) = done {
                        busy.remove(&session);
                        if finished {
                            self.acknowledge(ids).await;
                        } else {
                            // Held by another owner or interrupted: look again later.
                            let again = Instant::now() + self.lease / 3;
                            let entry = waiting.entry(session).or_insert((again, Vec::new()));
                            entry.0 = entry.0.max(again);
                            entry.1.extend(ids);
                        }
                    }
                    continue;
                }
                _ = self.shutdown.cancelled() => return,
            }
            if !prepared {
                prepared = self.store.kicks_prepare().await.is_ok();
                if !prepared {
                    continue;
                }
            }
            self.store.events_forget_marks();
            let claim = last_claim.is_none_or(|at| at.elapsed() >= self.lease / 2);
            if claim {
                last_claim = Some(Instant::now());
            }
            for bucket in 0..INDEX_BUCKETS {
                let mut found = match self
                    .store
                    .kicks_read(bucket, &self.owner, KICKS_PER_READ)
                    .await
                {
                    Ok(found) => found,
                    Err(_) => continue,
                };
                if claim {
                    if let Ok(stale) = self
                        .store
                        .kicks_autoclaim(bucket, &self.owner, self.lease, KICKS_PER_READ)
                        .await
                    {
                        found.extend(stale);
                    }
                }
                for (id, session) in found {
                    let due = self.settled_at(&id);
                    let entry = waiting.entry(session).or_insert((due, Vec::new()));
                    entry.0 = entry.0.max(due);
                    entry.1.push((bucket, id));
                }
            }
            let now = Instant::now();
            let due: Vec<String> = waiting
                .iter()
                .filter(|(s, (at, _))| *at <= now && !busy.contains(*s))
                .map(|(s, _)| s.clone())
                .collect();
            for session in due {
                let Some((_, ids)) = waiting.remove(&session) else {
                    continue;
                };
                busy.insert(session.clone());
                let me = self.clone();
                checking.spawn(async move {
                    let finished = me.deliver_everywhere(&session).await;
                    (session, ids, finished)
                });
            }
        }
    }

    /// When a request filed at its stream id's time has settled: no script it announced
    /// can still be running after that.
    fn settled_at(&self, request_id: &str) -> Instant {
        let filed = request_id
            .split('-')
            .next()
            .and_then(|ms| ms.parse::<u64>().ok())
            .unwrap_or(0);
        let age = Duration::from_millis(now_ms().saturating_sub(filed));
        Instant::now() + self.settle.saturating_sub(age)
    }

    /// Delivers a session to every endpoint here; true when nothing was left anywhere.
    async fn deliver_everywhere(&self, session: &str) -> bool {
        let mut finished = true;
        for endpoint in 0..self.endpoints.len() {
            // This instance is on it already: not finished yet.
            if !self.enter(session, endpoint) {
                finished = false;
                continue;
            }
            finished &= matches!(self.run_delivery(session, endpoint).await, Ok(true));
        }
        finished
    }

    async fn acknowledge(&self, ids: Vec<(u16, String)>) {
        let mut by_bucket: HashMap<u16, Vec<String>> = HashMap::new();
        for (bucket, id) in ids {
            by_bucket.entry(bucket).or_default().push(id);
        }
        for (bucket, ids) in by_bucket {
            if let Err(e) = self.store.kicks_ack(bucket, ids).await {
                tracing::debug!(error = %e, "webhook delivery requests not acknowledged yet");
            }
        }
    }
}
