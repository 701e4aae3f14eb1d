//! Prometheus metrics: the names of README "Metrics", their help texts and buckets.
//!
//! Owns the recorder installation and every metric name; the rest of the gateway calls the
//! small helpers here so that names and label sets stay in one place. Labels have bounded
//! cardinality: never a session id, user, client id or IP.

use std::sync::OnceLock;
use std::time::Duration;

use dashmap::DashMap;
use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter,
    Histogram, Unit,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub(crate) const CONNECTIONS: &str = "roomcast_connections";
pub(crate) const CONNECTIONS_TOTAL: &str = "roomcast_connections_total";
pub(crate) const DISCONNECTIONS_TOTAL: &str = "roomcast_disconnections_total";
pub(crate) const SESSIONS_LOCAL: &str = "roomcast_sessions_local";
pub(crate) const SUBSCRIPTIONS: &str = "roomcast_subscriptions";
pub(crate) const MESSAGES_RECEIVED_TOTAL: &str = "roomcast_messages_received_total";
pub(crate) const MESSAGES_DELIVERED_TOTAL: &str = "roomcast_messages_delivered_total";
pub(crate) const PUBLISH_DURATION: &str = "roomcast_publish_duration_seconds";
pub(crate) const DELIVERY_LATENCY: &str = "roomcast_delivery_latency_seconds";
pub(crate) const REDIS_COMMAND_DURATION: &str = "roomcast_redis_command_duration_seconds";
pub(crate) const REDIS_UP: &str = "roomcast_redis_up";
pub(crate) const PUBSUB_RECONNECTS_TOTAL: &str = "roomcast_pubsub_reconnects_total";
pub(crate) const REDIS_CLIENT_RESTARTS_TOTAL: &str = "roomcast_redis_client_restarts_total";
pub(crate) const PUBSUB_RECEIVED_TOTAL: &str = "roomcast_pubsub_received_total";
pub(crate) const PUBSUB_SHARD_UP: &str = "roomcast_pubsub_shard_up";
pub(crate) const PUBSUB_SHARD_RECONNECTS_TOTAL: &str = "roomcast_pubsub_shard_reconnects_total";
pub(crate) const PUBSUB_SHARD_RESUBSCRIBES_TOTAL: &str = "roomcast_pubsub_shard_resubscribes_total";
pub(crate) const PUBSUB_DROPPED_TOTAL: &str = "roomcast_pubsub_dropped_total";
pub(crate) const RECOVERED_MESSAGES_TOTAL: &str = "roomcast_recovered_messages_total";
pub(crate) const NUMBERING_RESETS_TOTAL: &str = "roomcast_numbering_resets_total";
pub(crate) const RATE_LIMITED_TOTAL: &str = "roomcast_rate_limited_total";
pub(crate) const RATE_LIMIT_UNAVAILABLE_TOTAL: &str = "roomcast_rate_limit_unavailable_total";
pub(crate) const SLOW_CONSUMER_TOTAL: &str = "roomcast_slow_consumer_disconnects_total";
pub(crate) const HTTP_REQUESTS_TOTAL: &str = "roomcast_http_requests_total";
pub(crate) const HTTP_REQUEST_DURATION: &str = "roomcast_http_request_duration_seconds";
pub(crate) const ERRORS_TOTAL: &str = "roomcast_errors_total";
pub(crate) const LIFECYCLE_TRANSITIONS_TOTAL: &str = "roomcast_lifecycle_transitions_total";
pub(crate) const LIFECYCLE_LAG: &str = "roomcast_lifecycle_lag_seconds";
pub(crate) const CONNECTIONS_REFUSED_TOTAL: &str = "roomcast_connections_refused_total";
pub(crate) const ACCEPT_ERRORS_TOTAL: &str = "roomcast_accept_errors_total";
pub(crate) const PUBLISH_UNREPLICATED_TOTAL: &str = "roomcast_publish_unreplicated_total";
pub(crate) const WEBHOOK_RECORDED_TOTAL: &str = "roomcast_webhook_events_recorded_total";
pub(crate) const WEBHOOK_SENT_TOTAL: &str = "roomcast_webhook_events_sent_total";
pub(crate) const WEBHOOK_DELIVERED_TOTAL: &str = "roomcast_webhook_delivered_total";
pub(crate) const WEBHOOK_RETRIES_TOTAL: &str = "roomcast_webhook_retries_total";
pub(crate) const WEBHOOK_DEAD_TOTAL: &str = "roomcast_webhook_dead_letters_total";
pub(crate) const WEBHOOK_LAG: &str = "roomcast_webhook_delivery_lag_seconds";
pub(crate) const WEBHOOK_PENDING: &str = "roomcast_webhook_pending_sessions";
pub(crate) const WEBHOOK_BREAKER_OPEN: &str = "roomcast_webhook_breaker_open";
pub(crate) const JOIN_HOOK_TOTAL: &str = "roomcast_join_hook_calls_total";
pub(crate) const JOIN_HOOK_DURATION: &str = "roomcast_join_hook_duration_seconds";

/// Buckets from 100 µs to 10 s: sub-millisecond local work up to multi-second stalls.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Webhook lag: retries take seconds to hours, so the buckets reach an hour.
const WEBHOOK_LAG_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// Installs the global recorder and describes every metric. Idempotent: a second call
/// (several gateways in one test process) returns a handle that renders nothing new.
pub(crate) fn install() -> Result<PrometheusHandle, String> {
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
        .map_err(|e| e.to_string())?
        // A full name is matched before any suffix.
        .set_buckets_for_metric(Matcher::Full(WEBHOOK_LAG.into()), WEBHOOK_LAG_BUCKETS)
        .map_err(|e| e.to_string())?
        .build_recorder();
    let handle = recorder.handle();
    // Only the first install in a process takes effect; later ones keep their handle
    // working on a private recorder, which is what in-process tests want.
    if metrics::set_global_recorder(recorder).is_ok() {
        describe();
        // Counters without labels exist from the start (at 0), so rates and alerts work
        // on a fresh node instead of seeing an absent series.
        for name in [
            CONNECTIONS_TOTAL,
            MESSAGES_DELIVERED_TOTAL,
            PUBSUB_RECONNECTS_TOTAL,
            PUBSUB_RECEIVED_TOTAL,
            REDIS_CLIENT_RESTARTS_TOTAL,
            RECOVERED_MESSAGES_TOTAL,
            NUMBERING_RESETS_TOTAL,
            SLOW_CONSUMER_TOTAL,
            ACCEPT_ERRORS_TOTAL,
            PUBLISH_UNREPLICATED_TOTAL,
        ] {
            counter!(name).increment(0);
        }
        gauge!(SESSIONS_LOCAL).set(0.0);
        gauge!(SUBSCRIPTIONS).set(0.0);
    }
    Ok(handle)
}

fn describe() {
    describe_gauge!(
        CONNECTIONS,
        "Open WebSocket connections, by role of the token."
    );
    describe_counter!(CONNECTIONS_TOTAL, "WebSocket connections accepted.");
    describe_counter!(
        DISCONNECTIONS_TOTAL,
        "WebSocket connections closed, by reason."
    );
    describe_gauge!(
        SESSIONS_LOCAL,
        "Sessions with at least one member on this instance."
    );
    describe_gauge!(
        SUBSCRIPTIONS,
        "Pub/sub channels this instance is subscribed to."
    );
    describe_counter!(MESSAGES_RECEIVED_TOTAL, "Client frames received, by type.");
    describe_counter!(
        MESSAGES_DELIVERED_TOTAL,
        "Frames queued to local clients by fan-out."
    );
    describe_histogram!(
        PUBLISH_DURATION,
        Unit::Seconds,
        "Time from receiving a publish to its ack."
    );
    describe_histogram!(
        DELIVERY_LATENCY,
        Unit::Seconds,
        "Time from a message's publish timestamp to its fan-out on this instance."
    );
    describe_histogram!(
        REDIS_COMMAND_DURATION,
        Unit::Seconds,
        "Redis round trips, by command or script."
    );
    describe_gauge!(
        REDIS_UP,
        "1 when Redis answers PING within the timeout, else 0."
    );
    describe_counter!(
        PUBSUB_RECONNECTS_TOTAL,
        "Times the pub/sub connection came back and resubscribed."
    );
    describe_counter!(
        REDIS_CLIENT_RESTARTS_TOTAL,
        "Redis clients (pool or subscriber) whose connection task ended and that were connected again."
    );
    describe_counter!(
        PUBSUB_RECEIVED_TOTAL,
        "Pub/sub payloads this instance received (it subscribes only to the sessions and users it hosts)."
    );
    describe_gauge!(
        PUBSUB_SHARD_UP,
        "1 while the subscriber connection to a Redis primary (shard) is up, by shard address."
    );
    describe_counter!(
        PUBSUB_SHARD_RECONNECTS_TOTAL,
        "Times the subscriber connection to a shard was re-established, by shard address."
    );
    describe_counter!(
        PUBSUB_SHARD_RESUBSCRIBES_TOTAL,
        "Slots subscribed again after they moved to another primary (migration, failover), by new owner."
    );
    describe_counter!(
        PUBSUB_DROPPED_TOTAL,
        "Pub/sub payloads dropped before fan-out (lagging reader, full session queue, bad payload)."
    );
    describe_counter!(
        RECOVERED_MESSAGES_TOTAL,
        "Messages read back from history to fill a pub/sub gap or a reconnect."
    );
    describe_counter!(
        NUMBERING_RESETS_TOTAL,
        "Sessions whose numbering a pump found restarted or forked (Redis lost keys or writes); their local members were closed with 4010."
    );
    describe_counter!(
        RATE_LIMITED_TOTAL,
        "Requests refused by a rate limit, by scope."
    );
    describe_counter!(
        RATE_LIMIT_UNAVAILABLE_TOTAL,
        "Rate-limit checks Redis could not answer, by scope (connect and API fail open, publish fails closed)."
    );
    describe_counter!(
        PUBLISH_UNREPLICATED_TOTAL,
        "Durable mode: publishes stored on the primary that too few replicas confirmed in time (answered unavailable)."
    );
    describe_counter!(
        SLOW_CONSUMER_TOTAL,
        "Clients closed with 4008 because their send queue overflowed."
    );
    describe_counter!(
        HTTP_REQUESTS_TOTAL,
        "HTTP requests, by method, route template and status."
    );
    describe_histogram!(
        HTTP_REQUEST_DURATION,
        Unit::Seconds,
        "HTTP request latency, by method, route template and status."
    );
    describe_counter!(ERRORS_TOTAL, "Error frames sent to clients, by code.");
    describe_counter!(
        LIFECYCLE_TRANSITIONS_TOTAL,
        "Session lifecycle events this instance's sweeper announced (expiring, inactive, ended)."
    );
    describe_histogram!(
        LIFECYCLE_LAG,
        Unit::Seconds,
        "How long after it was due each lifecycle event was announced."
    );
    describe_counter!(
        CONNECTIONS_REFUSED_TOTAL,
        "TCP connections closed before a request or upgrade, by reason (header_timeout, per_ip, capacity)."
    );
    describe_counter!(
        ACCEPT_ERRORS_TOTAL,
        "accept() failures on the listeners (out of descriptors and the like)."
    );
    describe_counter!(
        WEBHOOK_SENT_TOTAL,
        "Webhook events this instance sent a first time, by endpoint and type (a takeover after a crash may send one again)."
    );
    describe_counter!(
        WEBHOOK_DELIVERED_TOTAL,
        "Webhook deliveries answered 2xx, by endpoint."
    );
    describe_counter!(
        WEBHOOK_RETRIES_TOTAL,
        "Webhook deliveries that failed and will be tried again, by endpoint."
    );
    describe_counter!(
        WEBHOOK_RECORDED_TOTAL,
        "Webhook events recorded in session event streams by this instance's scripts (once each, whatever the endpoints)."
    );
    describe_counter!(
        WEBHOOK_DEAD_TOTAL,
        "Webhook events given up on and dead-lettered, by endpoint."
    );
    describe_histogram!(
        WEBHOOK_LAG,
        Unit::Seconds,
        "From a webhook event's recording to its 2xx answer, by endpoint."
    );
    describe_gauge!(
        WEBHOOK_PENDING,
        "Sessions this instance is delivering to an endpoint (events waiting, in flight or retrying), by endpoint."
    );
    describe_gauge!(
        WEBHOOK_BREAKER_OPEN,
        "1 while an endpoint's circuit breaker is open on this instance (deliveries wait for a probe), by endpoint."
    );
    describe_counter!(
        JOIN_HOOK_TOTAL,
        "Join hook calls, by outcome (allowed, denied, failed_open, failed_closed)."
    );
    describe_histogram!(
        JOIN_HOOK_DURATION,
        Unit::Seconds,
        "Join hook round trips, answered or not."
    );
}

pub(crate) fn webhook_recorded(events: u64) {
    counter!(WEBHOOK_RECORDED_TOTAL).increment(events);
}

pub(crate) fn webhook_sent(endpoint: &str, kind: &str) {
    counter!(WEBHOOK_SENT_TOTAL, "endpoint" => endpoint.to_string(), "type" => kind.to_string())
        .increment(1);
}

pub(crate) fn webhook_delivered(endpoint: &str, lag_seconds: f64) {
    counter!(WEBHOOK_DELIVERED_TOTAL, "endpoint" => endpoint.to_string()).increment(1);
    histogram!(WEBHOOK_LAG, "endpoint" => endpoint.to_string()).record(lag_seconds);
}

pub(crate) fn webhook_retry(endpoint: &str) {
    counter!(WEBHOOK_RETRIES_TOTAL, "endpoint" => endpoint.to_string()).increment(1);
}

pub(crate) fn webhook_dead(endpoint: &str) {
    counter!(WEBHOOK_DEAD_TOTAL, "endpoint" => endpoint.to_string()).increment(1);
}

pub(crate) fn webhook_pending(endpoint: &str, sessions: usize) {
    gauge!(WEBHOOK_PENDING, "endpoint" => endpoint.to_string()).set(sessions as f64);
}

pub(crate) fn webhook_breaker(endpoint: &str, open: bool) {
    gauge!(WEBHOOK_BREAKER_OPEN, "endpoint" => endpoint.to_string()).set(f64::from(u8::from(open)));
}

pub(crate) fn join_hook(outcome: &'static str, took: Duration) {
    counter!(JOIN_HOOK_TOTAL, "outcome" => outcome).increment(1);
    histogram!(JOIN_HOOK_DURATION).record(took.as_secs_f64());
}

// The metrics of every message's path keep their handles. Looking a handle up in the
// recorder allocates on each call (the handle, and the labels copied), about ten
// allocations of a small room's message (BENCHMARKS.md section 10); the recorder keeps a
// metric forever (no idle timeout), so a handle looked up once stays valid. The gateway
// installs the recorder before it serves, so no handle is taken from the no-op one.
// Unit tests look up every time: each records into its own local recorder, and a kept
// handle would belong to whichever recorder was current first.

/// One label-free metric's handle, looked up on first use.
#[cfg(not(test))]
macro_rules! kept {
    ($ty:ty, $make:expr) => {{
        static HANDLE: OnceLock<$ty> = OnceLock::new();
        HANDLE.get_or_init(|| $make)
    }};
}

/// Unit tests: looked up every time (see above).
#[cfg(test)]
macro_rules! kept {
    ($ty:ty, $make:expr) => {
        $make
    };
}

/// One metric's handles by a label value from a fixed set (frame types, script names),
/// each looked up on first use.
struct ByLabel<T>(OnceLock<DashMap<&'static str, T>>);

impl<T: Clone> ByLabel<T> {
    const fn new() -> Self {
        ByLabel(OnceLock::new())
    }

    fn get(&self, value: &'static str, make: impl FnOnce() -> T) -> T {
        if cfg!(test) {
            return make();
        }
        let map = self.0.get_or_init(DashMap::new);
        if let Some(handle) = map.get(value) {
            return handle.clone();
        }
        map.entry(value).or_insert_with(make).clone()
    }
}

pub(crate) fn redis_command(command: &'static str, took: Duration) {
    static BY_COMMAND: ByLabel<Histogram> = ByLabel::new();
    BY_COMMAND
        .get(
            command,
            || histogram!(REDIS_COMMAND_DURATION, "command" => command),
        )
        .record(took.as_secs_f64());
}

pub(crate) fn connection_opened(role: &'static str) {
    counter!(CONNECTIONS_TOTAL).increment(1);
    gauge!(CONNECTIONS, "role" => role).increment(1.0);
}

pub(crate) fn connection_closed(role: &'static str, reason: &'static str) {
    gauge!(CONNECTIONS, "role" => role).decrement(1.0);
    counter!(DISCONNECTIONS_TOTAL, "reason" => reason).increment(1);
}

pub(crate) fn received(kind: &'static str) {
    static BY_TYPE: ByLabel<Counter> = ByLabel::new();
    BY_TYPE
        .get(kind, || counter!(MESSAGES_RECEIVED_TOTAL, "type" => kind))
        .increment(1);
}

pub(crate) fn lifecycle_transition(event: &'static str) {
    counter!(LIFECYCLE_TRANSITIONS_TOTAL, "event" => event).increment(1);
}

pub(crate) fn lifecycle_lag(late_ms: u64) {
    histogram!(LIFECYCLE_LAG).record(late_ms as f64 / 1000.0);
}

pub(crate) fn connection_refused(reason: &'static str) {
    counter!(CONNECTIONS_REFUSED_TOTAL, "reason" => reason).increment(1);
}

pub(crate) fn accept_error() {
    counter!(ACCEPT_ERRORS_TOTAL).increment(1);
}

pub(crate) fn error_sent(code: &'static str) {
    counter!(ERRORS_TOTAL, "code" => code).increment(1);
}

pub(crate) fn delivered(count: u64) {
    kept!(Counter, counter!(MESSAGES_DELIVERED_TOTAL)).increment(count);
}

pub(crate) fn delivery_latency(seconds: f64) {
    kept!(Histogram, histogram!(DELIVERY_LATENCY)).record(seconds);
}

pub(crate) fn publish_duration(took: Duration) {
    kept!(Histogram, histogram!(PUBLISH_DURATION)).record(took.as_secs_f64());
}

pub(crate) fn session_opened() {
    gauge!(SESSIONS_LOCAL).increment(1.0);
}

pub(crate) fn session_closed() {
    gauge!(SESSIONS_LOCAL).decrement(1.0);
}

pub(crate) fn subscriptions(count: usize) {
    gauge!(SUBSCRIPTIONS).set(count as f64);
}

pub(crate) fn redis_up(up: bool) {
    gauge!(REDIS_UP).set(if up { 1.0 } else { 0.0 });
}

pub(crate) fn pubsub_reconnect() {
    counter!(PUBSUB_RECONNECTS_TOTAL).increment(1);
}

pub(crate) fn redis_client_restart() {
    counter!(REDIS_CLIENT_RESTARTS_TOTAL).increment(1);
}

pub(crate) fn pubsub_received() {
    kept!(Counter, counter!(PUBSUB_RECEIVED_TOTAL)).increment(1);
}

pub(crate) fn pubsub_shard_up(shard: &str, up: bool) {
    gauge!(PUBSUB_SHARD_UP, "shard" => shard.to_string()).set(if up { 1.0 } else { 0.0 });
}

pub(crate) fn pubsub_shard_reconnect(shard: &str) {
    counter!(PUBSUB_SHARD_RECONNECTS_TOTAL, "shard" => shard.to_string()).increment(1);
}

pub(crate) fn pubsub_shard_resubscribe(shard: &str) {
    counter!(PUBSUB_SHARD_RESUBSCRIBES_TOTAL, "shard" => shard.to_string()).increment(1);
}

pub(crate) fn pubsub_dropped(reason: &'static str, count: u64) {
    counter!(PUBSUB_DROPPED_TOTAL, "reason" => reason).increment(count);
}

pub(crate) fn recovered(count: u64) {
    counter!(RECOVERED_MESSAGES_TOTAL).increment(count);
}

pub(crate) fn numbering_reset() {
    counter!(NUMBERING_RESETS_TOTAL).increment(1);
}

pub(crate) fn rate_limit_unavailable(scope: &'static str) {
    counter!(RATE_LIMIT_UNAVAILABLE_TOTAL, "scope" => scope).increment(1);
}

pub(crate) fn publish_unreplicated() {
    counter!(PUBLISH_UNREPLICATED_TOTAL).increment(1);
}

pub(crate) fn slow_consumer() {
    counter!(SLOW_CONSUMER_TOTAL).increment(1);
}

pub(crate) fn rate_limited(scope: &'static str) {
    counter!(RATE_LIMITED_TOTAL, "scope" => scope).increment(1);
}

pub(crate) fn http_request(method: &str, route: &str, status: u16, took: Duration) {
    let labels = [
        ("method", method.to_string()),
        ("route", route.to_string()),
        ("status", status.to_string()),
    ];
    counter!(HTTP_REQUESTS_TOTAL, &labels).increment(1);
    histogram!(HTTP_REQUEST_DURATION, &labels).record(took.as_secs_f64());
}
