//! The gateway's integration tests: one binary (each test binary would link the whole
//! gateway again), a module per feature. Every test starts its own private Redis
//! processes and `roomcast` gateways through `testkit`, on loopback, stopped by pid.
//!
//! `make test-cluster` runs the multi-instance modules again against a private Redis
//! Cluster per test (`ROOMCAST_TEST_REDIS=cluster`, filtered by module path).

#![allow(clippy::unwrap_used, clippy::expect_used)]

/// The SIGTERM drain, Redis outages and a gateway killed under load, with the load
/// generator's accounting (short forms of `make chaos`).
mod chaos;
/// Redis Cluster: shard spread, slot migration, subscribers killed, failovers.
mod cluster;
/// Durable mode: acks that wait for replicas (`ROOMCAST_REDIS_WAIT_REPLICAS`).
mod durability;
/// The network edge before a request: idle sockets, per-address caps, descriptors.
mod edge;
/// Hostile input: bad frames and encodings, forged and expired tokens, bad config.
mod input;
/// The lifecycle clock: warnings, inactivity, lifetimes, implicit creation.
mod lifecycle;
/// Rate limits and floods: the sliding windows, per-connection buckets, proxies.
mod limits;
/// The load generator against real gateways (what `make bench` relies on).
mod loadgen;
/// Operations: health, readiness, metrics, shutdown.
mod operations;
/// The WebSocket protocol: frames, joins, presence, ordering, recovery with since.
mod protocol;
/// Redis outages, partitions, restarts and forks; slow consumers; draining.
mod recovery;
/// What each surface refuses and how it says so: roles, ended sessions, token claims,
/// numbers, REST input rules, bounds.
mod refusals;
/// The REST API.
mod rest;
/// Redis behind Sentinel: failovers, lossy ones included.
mod sentinel;
/// Redis over TLS (standalone, cluster, sentinel).
mod tls;
/// OpenTelemetry traces exported over OTLP.
mod tracing;
/// CORS and the demo's routes.
mod web;
/// Webhooks (delivery, retries, dead letters, takeover) and the join hook.
mod webhooks;
