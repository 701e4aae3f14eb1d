//! The report of `webhook-sink` (the receiving end of the webhook benchmarks): events,
//! their duplicates and order, their rate and their lag.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// What `webhook-sink` prints and writes to `--json` when it stops.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SinkReport {
    /// Requests that carried an event (a redelivery counts again).
    pub events: u64,
    /// Distinct event ids.
    pub unique: u64,
    pub duplicates: u64,
    /// `message.published` seqs that did not follow their session's last one.
    pub out_of_order: u64,
    pub by_type: HashMap<String, u64>,
    /// Join hook calls answered.
    pub joins: u64,
    /// From the first event to the last, seconds.
    pub span_s: f64,
    /// Distinct events per second over the span.
    pub events_per_s: f64,
    /// From an event's recording (its `timestamp`) to its arrival.
    pub lag_ms: Lag,
}

/// Lag percentiles, milliseconds.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Lag {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}
