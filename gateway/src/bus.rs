//! The pub/sub side of Redis: sharded pub/sub (SSUBSCRIBE), one subscriber connection per
//! Redis primary that hosts a channel this instance needs (one in all on a standalone).
//!
//! Owns which channels this instance is subscribed to. Session pumps ask for their channel
//! when they start and give it back when they retire; one manager task turns those requests
//! into SSUBSCRIBE/SUNSUBSCRIBE commands, in order and batched by hash slot, with a
//! reference count per channel so that a retiring pump and its successor cannot race each
//! other out of a subscription. Never a pattern: each node receives only the sessions it
//! serves. The scripts SPUBLISH on the session's own slot, so on Redis Cluster a message
//! travels only within the shard that owns the session.
//!
//! When the connection comes back after an outage the manager resubscribes everything and
//! then asks every pump to catch up from history, so nothing published meanwhile is lost.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fred::clients::SubscriberClient;
use fred::interfaces::ClusterInterface;
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use fred::types::config::Server;
use fred::types::Value;
use fred::util::redis_keyslot;
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
    /// Redis Cluster: see whether a subscribed slot moved to another primary.
    CheckSlots,
}

/// How often a clustered instance compares the owners of its subscribed slots with the
/// cluster's slot map. A slot migration unsubscribes us on the old owner with a push that
/// the client library swallows, so this check (and the redirections the command pool
/// meets, which trigger it at once) is what notices it; it bounds how long a session's live
/// feed pauses after a move. History fills what was published meanwhile.
const SLOT_CHECK_EVERY: Duration = Duration::from_millis(250);

pub(crate) struct Bus {
    subscriber: SubscriberClient,
    ops: Channels,
    ops_rx: std::sync::Mutex<Option<mpsc::UnboundedReceiver<Op>>>,
    /// Connected and subscribed to every channel we track.
    up: AtomicBool,
}

impl Bus {
    pub(crate) fn new(subscriber: SubscriberClient) -> Self {
        let (ops, ops_rx) = mpsc::unbounded_channel();
        Bus {
            subscriber,
            ops: Channels { ops },
            ops_rx: std::sync::Mutex::new(Some(ops_rx)),
            up: AtomicBool::new(false),
        }
    }

    /// A handle on the subscriptions, for session pumps.
    pub(crate) fn channels(&self) -> Channels {
        self.ops.clone()
    }

    /// Subscribes to a channel (or takes one more reference on it).
    pub(crate) async fn subscribe(&self, channel: String) -> Result<(), StoreError> {
        self.ops.subscribe(channel).await
    }

    /// Gives a channel reference back; the last one unsubscribes.
    pub(crate) fn unsubscribe(&self, channel: String) {
        self.ops.unsubscribe(channel);
    }

    /// Whether the subscriber is connected and subscribed.
    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire) && self.subscriber.is_connected()
    }

    /// Connects (waiting at most `wait`) and starts the manager, reader and watcher tasks.
    pub(crate) async fn start(app: &Arc<App>, wait: Duration) {
        let bus = &app.bus;
        let connection = bus.subscriber.connect();
        let marker = app.clone();
        app.tracker.spawn(crate::background::keep_running(
            app.shutdown.clone(),
            bus.subscriber.clone(),
            connection,
            move || marker.bus.up.store(false, Ordering::Release),
        ));
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
        if bus.subscriber.is_clustered() {
            for client in app.store.pool().clients() {
                app.tracker
                    .spawn(on_cluster_change(app.clone(), client.cluster_change_rx()));
            }
        }
        app.tracker.spawn(watch(app.clone(), shutdown));
    }

    /// Closes the subscriber connection (shutdown).
    pub(crate) async fn stop(&self) {
        let _ = self.subscriber.quit().await;
    }
}

/// The requesting side of the subscriptions: cheap to clone, it only queues requests for
/// the manager task.
#[derive(Clone)]
pub(crate) struct Channels {
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
    let mut owners = SlotOwners::default();
    let mut ops = Vec::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            n = rx.recv_many(&mut ops, 1024) => if n == 0 { return },
        }
        let mut waiters: Vec<(String, oneshot::Sender<Result<(), StoreError>>)> = Vec::new();
        let mut released: Vec<String> = Vec::new();
        let mut resync = false;
        let mut check_slots = false;
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
                Op::CheckSlots => check_slots = true,
            }
        }
        let to_unsub: Vec<String> = released
            .into_iter()
            .filter(|c| !refs.contains_key(c) && subscribed.remove(c))
            .collect();
        for (_, result) in by_slot(sub, to_unsub, Sharded::Unsubscribe).await {
            if let Err(e) = result {
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
        let mut failed: HashMap<String, fred::error::Error> = HashMap::new();
        for (channels, result) in by_slot(sub, to_sub, Sharded::Subscribe).await {
            match result {
                Ok(()) => {
                    owners.record(sub, &channels);
                    subscribed.extend(channels);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "subscribe failed");
                    failed.extend(channels.into_iter().map(|c| (c, e.clone())));
                }
            }
        }
        for (channel, reply) in waiters {
            match failed.get(&channel) {
                Some(e) if !subscribed.contains(&channel) => {
                    // The requester will not unsubscribe what it never got.
                    if let Some(count) = refs.get_mut(&channel) {
                        *count -= 1;
                        if *count == 0 {
                            refs.remove(&channel);
                        }
                    }
                    let _ = reply.send(Err(StoreError::from(e.clone())));
                }
                _ => {
                    let _ = reply.send(Ok(()));
                }
            }
        }
        if resync {
            resubscribe(&app, &subscribed, &shutdown).await;
            owners.reset(sub, &subscribed);
        } else if check_slots {
            owners.follow(&app, &subscribed).await;
        }
        m::subscriptions(subscribed.len());
    }
}

/// Subscribes to every tracked channel again (retrying until it works or we shut down),
/// then has every pump read what pub/sub may have dropped.
async fn resubscribe(app: &Arc<App>, subscribed: &HashSet<String>, shutdown: &CancellationToken) {
    let mut pending: Vec<String> = subscribed.iter().cloned().collect();
    let total = pending.len();
    let mut delay = Duration::from_millis(50);
    loop {
        let mut error = None;
        let mut retry = Vec::new();
        for (channels, result) in by_slot(&app.bus.subscriber, pending, Sharded::Subscribe).await {
            if let Err(e) = result {
                retry.extend(channels);
                error = Some(e);
            }
        }
        pending = retry;
        match error {
            None => break,
            Some(e) => {
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
        channels = total,
        "pub/sub resubscribed; catching up from history"
    );
    app.hub.catch_up_all();
}

/// Redis Cluster: the primary each subscribed slot was subscribed on. Empty on a
/// standalone server, where nothing moves.
#[derive(Default)]
struct SlotOwners {
    owners: HashMap<u16, Option<Server>>,
}

impl SlotOwners {
    /// Notes where `channels` were just subscribed (the client's current slot map, which
    /// it refreshes when it follows a MOVED).
    fn record<'a>(
        &mut self,
        sub: &SubscriberClient,
        channels: impl IntoIterator<Item = &'a String>,
    ) {
        let Some(state) = sub.cached_cluster_state() else {
            return;
        };
        for channel in channels {
            let slot = redis_keyslot(channel.as_bytes());
            self.owners.insert(slot, state.get_server(slot).cloned());
        }
    }

    /// After a full resubscribe: every slot was subscribed where the map now says.
    fn reset(&mut self, sub: &SubscriberClient, subscribed: &HashSet<String>) {
        self.owners.clear();
        self.record(sub, subscribed);
    }

    /// Refreshes the slot map; every subscribed slot whose owner changed (a migration, a
    /// failover) is subscribed again on its new owner, and its sessions catch up from
    /// history, so their members see no gap. A failed attempt is retried on the next check.
    async fn follow(&mut self, app: &App, subscribed: &HashSet<String>) {
        let sub = &app.bus.subscriber;
        if let Err(e) = sub.sync_cluster().await {
            tracing::debug!(error = %e, "cluster slot map refresh failed");
            return;
        }
        let Some(state) = sub.cached_cluster_state() else {
            return;
        };
        let mut live: HashSet<u16> = HashSet::with_capacity(self.owners.len());
        let mut moved: Vec<String> = Vec::new();
        for channel in subscribed {
            let slot = redis_keyslot(channel.as_bytes());
            live.insert(slot);
            if self.owners.get(&slot).and_then(Option::as_ref) != state.get_server(slot) {
                moved.push(channel.clone());
            }
        }
        self.owners.retain(|slot, _| live.contains(slot));
        if moved.is_empty() {
            return;
        }
        for (channels, result) in by_slot(sub, moved, Sharded::Subscribe).await {
            let slot = channels
                .first()
                .map(|c| redis_keyslot(c.as_bytes()))
                .unwrap_or_default();
            let owner = state.get_server(slot).cloned();
            let shard = owner.as_ref().map(ToString::to_string).unwrap_or_default();
            match result {
                Ok(()) => {
                    tracing::info!(
                        slot,
                        shard = %shard,
                        channels = channels.len(),
                        "slot moved; resubscribed, catching up"
                    );
                    m::pubsub_shard_resubscribe(&shard);
                    self.owners.insert(slot, owner);
                    let keys = app.store.keys();
                    for channel in &channels {
                        if let Some(session) = keys.session_of_channel(channel) {
                            app.hub.catch_up(session);
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(
                        slot,
                        shard = %shard,
                        error = %e,
                        "resubscribe after a slot move failed; retrying"
                    );
                }
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Sharded {
    Subscribe,
    Unsubscribe,
}

/// SSUBSCRIBE or SUNSUBSCRIBE `channels`, one call per hash slot (Redis Cluster refuses a
/// call that spans slots; a standalone server takes the same calls, so one code path serves
/// both), the slots concurrently. Answers each slot's channels with its outcome.
async fn by_slot(
    sub: &SubscriberClient,
    channels: Vec<String>,
    op: Sharded,
) -> Vec<(Vec<String>, Result<(), fred::error::Error>)> {
    let mut groups: BTreeMap<u16, Vec<String>> = BTreeMap::new();
    for channel in channels {
        groups
            .entry(redis_keyslot(channel.as_bytes()))
            .or_default()
            .push(channel);
    }
    let calls = groups.into_values().map(|group| async move {
        let result = match op {
            Sharded::Subscribe => sub.ssubscribe(group.clone()).await,
            Sharded::Unsubscribe => sub.sunsubscribe(group.clone()).await,
        };
        (group, result)
    });
    futures_util::future::join_all(calls).await
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
                m::pubsub_received();
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
    let clustered = app.bus.subscriber.is_clustered();
    let mut shards: HashSet<Server> = HashSet::new();
    let mut slots = tokio::time::interval(SLOT_CHECK_EVERY);
    slots.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = slots.tick(), if clustered => {
                if app.bus.up.load(Ordering::Acquire) {
                    let _ = app.bus.ops.ops.send(Op::CheckSlots);
                }
            }
            _ = check.tick() => {
                if !app.bus.up.load(Ordering::Acquire) && app.bus.subscriber.is_connected() {
                    let _ = app.bus.ops.ops.send(Op::Resync);
                }
                report_shards(&app.bus.subscriber, &mut shards);
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
                Ok(server) => {
                    m::pubsub_shard_reconnect(&server.to_string());
                    app.bus.up.store(false, Ordering::Release);
                    let _ = app.bus.ops.ops.send(Op::Resync);
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    app.bus.up.store(false, Ordering::Release);
                    let _ = app.bus.ops.ops.send(Op::Resync);
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

/// A pool client followed a MOVED (or reconnected) and its slot map changed: a slot may
/// have moved under a subscription, so check now rather than on the next tick.
async fn on_cluster_change(
    app: Arc<App>,
    mut changes: broadcast::Receiver<Vec<fred::types::ClusterStateChange>>,
) {
    loop {
        tokio::select! {
            _ = app.shutdown.cancelled() => return,
            change = changes.recv() => match change {
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    let _ = app.bus.ops.ops.send(Op::CheckSlots);
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

/// Sets the per-shard up gauge: every primary the slot map names (the one server on a
/// standalone), whether the subscriber holds a connection to it. Shards seen before stay
/// reported, so one that went away shows 0 rather than vanishing.
fn report_shards(sub: &SubscriberClient, shards: &mut HashSet<Server>) {
    let connected: HashSet<Server> = sub.active_connections().into_iter().collect();
    match sub.cached_cluster_state() {
        Some(state) => shards.extend(state.unique_primary_nodes()),
        None => shards.extend(connected.iter().cloned()),
    }
    for shard in shards.iter() {
        m::pubsub_shard_up(&shard.to_string(), connected.contains(shard));
    }
}
