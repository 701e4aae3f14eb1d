//! The pub/sub side of Redis: one subscriber connection per instance.
//!
//! Owns which channels this instance is subscribed to. Session pumps ask for their channel
//! when they start and give it back when they retire; one manager task turns those requests
//! into SUBSCRIBE/UNSUBSCRIBE commands, in order and batched, with a reference count per
//! channel so that a retiring pump and its successor cannot race each other out of a
//! subscription. Never PSUBSCRIBE: each node receives only the sessions it serves.
//!
//! When the connection comes back after an outage the manager resubscribes everything and
//! then asks every pump to catch up from history, so nothing published meanwhile is lost.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fred::clients::SubscriberClient;
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use fred::types::Value;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::metrics as m;
use crate::session::Subscriptions;
use crate::store::StoreError;
use crate::App;

enum Op {
    Subscribe(String, oneshot::Sender<Result<(), StoreError>>),
    Unsubscribe(String),
    /// The connection came back: subscribe to everything again, then catch up.
    Resync,
}

pub struct Bus {
    subscriber: SubscriberClient,
    ops: Channels,
    ops_rx: std::sync::Mutex<Option<mpsc::UnboundedReceiver<Op>>>,
    /// Connected and subscribed to every channel we track.
    up: AtomicBool,
}

impl Bus {
    pub fn new(subscriber: SubscriberClient) -> Self {
        let (ops, ops_rx) = mpsc::unbounded_channel();
        Bus {
            subscriber,
            ops: Channels { ops },
            ops_rx: std::sync::Mutex::new(Some(ops_rx)),
            up: AtomicBool::new(false),
        }
    }

    /// A handle on the subscriptions, for session pumps.
    pub fn channels(&self) -> Channels {
        self.ops.clone()
    }

    /// Subscribes to a channel (or takes one more reference on it).
    pub async fn subscribe(&self, channel: String) -> Result<(), StoreError> {
        self.ops.subscribe(channel).await
    }

    /// Gives a channel reference back; the last one unsubscribes.
    pub fn unsubscribe(&self, channel: String) {
        self.ops.unsubscribe(channel);
    }

    /// Whether the subscriber is connected and subscribed.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire) && self.subscriber.is_connected()
    }

    /// Connects (waiting at most `wait`) and starts the manager, reader and watcher tasks.
    pub async fn start(app: &Arc<App>, wait: Duration) {
        let bus = &app.bus;
        let _connection = bus.subscriber.connect();
        match tokio::time::timeout(wait, bus.subscriber.wait_for_connect()).await {
            Ok(Ok(())) => bus.up.store(true, Ordering::Release),
            _ => tracing::warn!("pub/sub connection not up yet; retrying in the background"),
        }
        let ops_rx = bus.ops_rx.lock().ok().and_then(|mut g| g.take());
        let Some(ops_rx) = ops_rx else {
            tracing::error!("bus started twice");
            return;
        };
        let shutdown = app.shutdown.clone();
        app.tracker
            .spawn(manage(app.clone(), ops_rx, shutdown.clone()));
        app.tracker.spawn(read(
            app.clone(),
            bus.subscriber.message_rx(),
            shutdown.clone(),
        ));
        app.tracker.spawn(watch(app.clone(), shutdown));
    }

    /// Closes the subscriber connection (shutdown).
    pub async fn stop(&self) {
        let _ = self.subscriber.quit().await;
    }
}

/// The requesting side of the subscriptions: cheap to clone, it only queues requests for
/// the manager task.
#[derive(Clone)]
pub struct Channels {
    ops: mpsc::UnboundedSender<Op>,
}

impl Subscriptions for Channels {
    async fn subscribe(&self, channel: String) -> Result<(), StoreError> {
        let stopped = || StoreError::Unavailable("pub/sub manager stopped".into());
        let (tx, rx) = oneshot::channel();
        self.ops
            .send(Op::Subscribe(channel, tx))
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    fn unsubscribe(&self, channel: String) {
        let _ = self.ops.send(Op::Unsubscribe(channel));
    }
}

/// Applies subscription requests in order, batching whatever is queued.
async fn manage(app: Arc<App>, mut rx: mpsc::UnboundedReceiver<Op>, shutdown: CancellationToken) {
    let sub = &app.bus.subscriber;
    let mut refs: HashMap<String, usize> = HashMap::new();
    let mut subscribed: HashSet<String> = HashSet::new();
    let mut ops = Vec::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            n = rx.recv_many(&mut ops, 1024) => if n == 0 { return },
        }
        let mut waiters: Vec<(String, oneshot::Sender<Result<(), StoreError>>)> = Vec::new();
        let mut released: Vec<String> = Vec::new();
        let mut resync = false;
        for op in ops.drain(..) {
            match op {
                Op::Subscribe(channel, reply) => {
                    *refs.entry(channel.clone()).or_insert(0) += 1;
                    waiters.push((channel, reply));
                }
                Op::Unsubscribe(channel) => {
                    if let Some(count) = refs.get_mut(&channel) {
                        *count -= 1;
                        if *count == 0 {
                            refs.remove(&channel);
                            released.push(channel);
                        }
                    }
                }
                Op::Resync => resync = true,
            }
        }
        let to_unsub: Vec<String> = released
            .into_iter()
            .filter(|c| !refs.contains_key(c) && subscribed.remove(c))
            .collect();
        if !to_unsub.is_empty() {
            if let Err(e) = sub.unsubscribe(to_unsub).await {
                // At worst we keep receiving a channel nobody here wants; the hub drops it.
                tracing::debug!(error = %e, "unsubscribe failed");
            }
        }
        let mut to_sub: Vec<String> = waiters
            .iter()
            .map(|(c, _)| c.clone())
            .filter(|c| !subscribed.contains(c))
            .collect();
        to_sub.sort();
        to_sub.dedup();
        let result = if to_sub.is_empty() {
            Ok(())
        } else {
            sub.subscribe(to_sub.clone()).await
        };
        match result {
            Ok(()) => {
                subscribed.extend(to_sub);
                for (_, reply) in waiters {
                    let _ = reply.send(Ok(()));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "subscribe failed");
                for (channel, reply) in waiters {
                    if subscribed.contains(&channel) {
                        let _ = reply.send(Ok(()));
                        continue;
                    }
                    // The requester will not unsubscribe what it never got.
                    if let Some(count) = refs.get_mut(&channel) {
                        *count -= 1;
                        if *count == 0 {
                            refs.remove(&channel);
                        }
                    }
                    let _ = reply.send(Err(StoreError::from(e.clone())));
                }
            }
        }
        if resync {
            resubscribe(&app, &subscribed, &shutdown).await;
        }
        m::subscriptions(subscribed.len());
    }
}

/// Subscribes to every tracked channel again (retrying until it works or we shut down),
/// then has every pump read what pub/sub may have dropped.
async fn resubscribe(app: &Arc<App>, subscribed: &HashSet<String>, shutdown: &CancellationToken) {
    let channels: Vec<String> = subscribed.iter().cloned().collect();
    let mut delay = Duration::from_millis(50);
    loop {
        let result = if channels.is_empty() {
            Ok(())
        } else {
            app.bus.subscriber.subscribe(channels.clone()).await
        };
        match result {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(error = %e, "resubscribe failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(1));
            }
        }
    }
    app.bus.up.store(true, Ordering::Release);
    m::pubsub_reconnect();
    tracing::info!(
        channels = channels.len(),
        "pub/sub resubscribed; catching up from history"
    );
    app.hub.catch_up_all();
}

/// Routes pub/sub messages to session pumps.
async fn read(
    app: Arc<App>,
    mut rx: broadcast::Receiver<fred::types::Message>,
    shutdown: CancellationToken,
) {
    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => return,
            message = rx.recv() => message,
        };
        match message {
            Ok(message) => {
                let payload = match message.value {
                    Value::Bytes(b) => b,
                    Value::String(s) => s.into_inner(),
                    _ => {
                        m::pubsub_dropped("bad_payload", 1);
                        continue;
                    }
                };
                let keys = app.store.keys();
                if let Some(session) = keys.session_of_channel(&message.channel) {
                    app.hub.dispatch(session, payload);
                } else if let Some(user) = keys.user_of_channel(&message.channel) {
                    app.hub.dispatch_user(user, &payload);
                }
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                // We do not know which sessions lost messages: all of them check history.
                m::pubsub_dropped("lagged", n);
                tracing::warn!(
                    dropped = n,
                    "pub/sub reader lagged; catching up from history"
                );
                app.hub.catch_up_all();
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Marks the bus down on connection errors and triggers a resync on reconnect.
async fn watch(app: Arc<App>, shutdown: CancellationToken) {
    let mut errors = app.bus.subscriber.error_rx();
    let mut reconnects = app.bus.subscriber.reconnect_rx();
    // Also check on a clock: a first connection after a failed start reports no reconnect.
    let mut check = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = check.tick() => {
                if !app.bus.up.load(Ordering::Acquire) && app.bus.subscriber.is_connected() {
                    let _ = app.bus.ops.ops.send(Op::Resync);
                }
            }
            e = errors.recv() => match e {
                Ok((error, _)) => {
                    if app.bus.up.swap(false, Ordering::AcqRel) {
                        tracing::warn!(error = %error, "pub/sub connection lost");
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
            r = reconnects.recv() => match r {
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    app.bus.up.store(false, Ordering::Release);
                    let _ = app.bus.ops.ops.send(Op::Resync);
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}
