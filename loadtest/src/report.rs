//! What a run measured: shared counters while it runs, and the report after (a table for
//! people, JSON for machines).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::seq::{SeqCheck, Tallies, Tally};
use crate::Args;

/// Counters every client task updates.
pub(crate) struct Shared {
    pub(crate) sent: AtomicU64,
    pub(crate) acked: AtomicU64,
    pub(crate) received: AtomicU64,
    /// Gaps inside what displays saw (the tail is counted from `tallies` at the end).
    pub(crate) lost: AtomicU64,
    pub(crate) duplicated: AtomicU64,
    pub(crate) out_of_order: AtomicU64,
    pub(crate) joined: AtomicU64,
    pub(crate) tallies: Tallies,
    /// Publish-to-receive, microseconds.
    latency: Mutex<Histogram<u64>>,
    /// TCP and WebSocket handshakes (and Socket.IO's own), microseconds.
    connect: Mutex<Histogram<u64>>,
    /// The join frame to its answer, microseconds.
    join: Mutex<Histogram<u64>>,
    /// Connect plus join, microseconds.
    connect_join: Mutex<Histogram<u64>>,
    errors: Mutex<BTreeMap<String, u64>>,
}

/// 1 µs to 60 s at 3 significant digits.
pub(crate) fn histogram() -> Histogram<u64> {
    // Constant, valid bounds: construction only fails for low >= high or sigfig > 5.
    #[allow(clippy::expect_used)]
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant histogram bounds are valid")
}

impl Shared {
    pub(crate) fn new(sessions: usize) -> Self {
        Shared {
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            received: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            duplicated: AtomicU64::new(0),
            out_of_order: AtomicU64::new(0),
            joined: AtomicU64::new(0),
            tallies: Tallies::new(sessions),
            latency: Mutex::new(histogram()),
            connect: Mutex::new(histogram()),
            join: Mutex::new(histogram()),
            connect_join: Mutex::new(histogram()),
            errors: Mutex::new(BTreeMap::new()),
        }
    }

    /// Counts an error by kind.
    pub(crate) fn error(&self, kind: &str) {
        if let Ok(mut errors) = self.errors.lock() {
            *errors.entry(kind.to_string()).or_insert(0) += 1;
        }
    }

    pub(crate) fn error_count(&self) -> u64 {
        self.errors.lock().map(|e| e.values().sum()).unwrap_or(0)
    }

    /// A client joined: `connect` is its handshakes, `join` the join's round trip.
    pub(crate) fn record_connect_join(&self, connect: Duration, join: Duration) {
        self.joined.fetch_add(1, Ordering::Relaxed);
        for (h, took) in [
            (&self.connect, connect),
            (&self.join, join),
            (&self.connect_join, connect + join),
        ] {
            if let Ok(mut h) = h.lock() {
                let _ = h.record(took.as_micros().max(1) as u64);
            }
        }
    }

    /// A display of `session` finished: its gaps, duplicates, late messages, and where
    /// it stopped (for the tail, counted per session at the end).
    pub(crate) fn display_done(&self, session: usize, check: &SeqCheck) {
        self.lost.fetch_add(check.lost, Ordering::Relaxed);
        self.duplicated
            .fetch_add(check.duplicated, Ordering::Relaxed);
        self.out_of_order
            .fetch_add(check.out_of_order, Ordering::Relaxed);
        self.tallies.display_done(session, check.last());
    }

    /// Records a batch of one display's latency samples (µs) and empties the batch.
    pub(crate) fn add_latencies(&self, samples: &mut Vec<u64>) {
        if let Ok(mut total) = self.latency.lock() {
            for &us in samples.iter() {
                let _ = total.record(us);
            }
        }
        samples.clear();
    }

    /// This process's result, ready to merge with other workers'.
    pub(crate) fn partial(&self, elapsed: Duration, connect_phase: Duration) -> Partial {
        let buckets = |h: &Mutex<Histogram<u64>>| {
            h.lock()
                .map(|h| {
                    h.iter_recorded()
                        .map(|v| (v.value_iterated_to(), v.count_at_value()))
                        .collect()
                })
                .unwrap_or_default()
        };
        Partial {
            sent: self.sent.load(Ordering::Relaxed),
            acked: self.acked.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
            lost: self.lost.load(Ordering::Relaxed),
            duplicated: self.duplicated.load(Ordering::Relaxed),
            out_of_order: self.out_of_order.load(Ordering::Relaxed),
            sessions: self.tallies.snapshot(),
            latency: buckets(&self.latency),
            connect: buckets(&self.connect),
            join: buckets(&self.join),
            connect_join: buckets(&self.connect_join),
            errors: self.errors.lock().map(|e| e.clone()).unwrap_or_default(),
            elapsed_s: elapsed.as_secs_f64(),
            connect_phase_s: connect_phase.as_secs_f64(),
        }
    }
}

/// One process's counts and histograms (as value/count pairs), as a worker hands them to
/// its parent; merging partials gives the same report one big process would have.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Partial {
    pub(crate) sent: u64,
    pub(crate) acked: u64,
    pub(crate) received: u64,
    pub(crate) lost: u64,
    pub(crate) duplicated: u64,
    pub(crate) out_of_order: u64,
    /// Indexed by session.
    pub(crate) sessions: Vec<Tally>,
    pub(crate) latency: Vec<(u64, u64)>,
    pub(crate) connect: Vec<(u64, u64)>,
    pub(crate) join: Vec<(u64, u64)>,
    pub(crate) connect_join: Vec<(u64, u64)>,
    pub(crate) errors: BTreeMap<String, u64>,
    pub(crate) elapsed_s: f64,
    pub(crate) connect_phase_s: f64,
}

impl Partial {
    pub(crate) fn merge(mut self, other: Partial) -> Partial {
        self.sent += other.sent;
        self.acked += other.acked;
        self.received += other.received;
        self.lost += other.lost;
        self.duplicated += other.duplicated;
        self.out_of_order += other.out_of_order;
        if self.sessions.len() < other.sessions.len() {
            self.sessions.resize(other.sessions.len(), Tally::default());
        }
        for (mine, theirs) in self.sessions.iter_mut().zip(other.sessions) {
            *mine = mine.merge(theirs);
        }
        self.latency.extend(other.latency);
        self.connect.extend(other.connect);
        self.join.extend(other.join);
        self.connect_join.extend(other.connect_join);
        for (kind, n) in other.errors {
            *self.errors.entry(kind).or_insert(0) += n;
        }
        // Workers run side by side: the run took as long as the slowest of them.
        self.elapsed_s = self.elapsed_s.max(other.elapsed_s);
        self.connect_phase_s = self.connect_phase_s.max(other.connect_phase_s);
        self
    }
}

fn rebuild(buckets: &[(u64, u64)]) -> Histogram<u64> {
    let mut h = histogram();
    for &(value, count) in buckets {
        let _ = h.record_n(value.max(1), count);
    }
    h
}

/// Percentiles of one histogram, in milliseconds.
#[derive(Debug, Serialize)]
pub(crate) struct Percentiles {
    pub(crate) count: u64,
    pub(crate) p50_ms: f64,
    pub(crate) p90_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) p999_ms: f64,
    pub(crate) max_ms: f64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// The result of a run.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub(crate) urls: Vec<String>,
    pub(crate) sessions: usize,
    pub(crate) displays_per_session: usize,
    pub(crate) rate_per_session: f64,
    pub(crate) payload_bytes: usize,
    pub(crate) protocol: String,
    /// From the go to the last client done (publishing, then the drain).
    pub(crate) duration_s: f64,
    /// The configured publishing time (`--duration`).
    pub(crate) publish_s: f64,
    pub(crate) published: u64,
    pub(crate) acked: u64,
    pub(crate) delivered: u64,
    pub(crate) expected: u64,
    pub(crate) deliveries_per_s: f64,
    /// Messages a display should have got and never did: gaps, and the tail after the
    /// last one it saw.
    pub(crate) lost: u64,
    pub(crate) duplicated: u64,
    pub(crate) out_of_order: u64,
    /// `duplicated + out_of_order` (both must be 0).
    pub(crate) duplicated_or_reordered: u64,
    pub(crate) latency: Percentiles,
    pub(crate) connect: Percentiles,
    pub(crate) join: Percentiles,
    pub(crate) connect_join: Percentiles,
    /// From the first connect to the last client joined (the slowest worker's).
    pub(crate) connect_phase_s: f64,
    pub(crate) workers: usize,
    pub(crate) errors: BTreeMap<String, u64>,
}

impl Report {
    pub(crate) fn build(args: &Args, p: Partial) -> Self {
        let active = args.duration.as_secs_f64().max(0.001);
        Report {
            urls: args.urls.clone(),
            sessions: args.sessions,
            displays_per_session: args.displays,
            rate_per_session: args.rate,
            payload_bytes: args.payload,
            protocol: args.protocol.clone(),
            duration_s: p.elapsed_s,
            publish_s: args.duration.as_secs_f64(),
            published: p.sent,
            acked: p.acked,
            delivered: p.received,
            expected: p.sent * args.displays as u64,
            deliveries_per_s: p.received as f64 / active,
            lost: p.lost + p.sessions.iter().map(Tally::tail_lost).sum::<u64>(),
            duplicated: p.duplicated,
            out_of_order: p.out_of_order,
            duplicated_or_reordered: p.duplicated + p.out_of_order,
            latency: Percentiles::of(&rebuild(&p.latency)),
            connect: Percentiles::of(&rebuild(&p.connect)),
            join: Percentiles::of(&rebuild(&p.join)),
            connect_join: Percentiles::of(&rebuild(&p.connect_join)),
            connect_phase_s: p.connect_phase_s,
            workers: args.workers,
            errors: p.errors,
        }
    }

    pub(crate) fn json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    pub(crate) fn table(&self) -> String {
        let p = |x: &Percentiles| {
            format!(
                "p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2} ms  (n={})",
                x.p50_ms, x.p90_ms, x.p99_ms, x.p999_ms, x.max_ms, x.count
            )
        };
        let mut out = String::new();
        out.push_str(&format!(
            "sessions {} x (1 controller + {} displays), {} msg/s each, {} B, {}\n",
            self.sessions,
            self.displays_per_session,
            self.rate_per_session,
            self.payload_bytes,
            self.protocol
        ));
        out.push_str(&format!(
            "published {}  acked {}  delivered {} of {} expected  ({:.0} deliveries/s)\n",
            self.published, self.acked, self.delivered, self.expected, self.deliveries_per_s
        ));
        out.push_str(&format!(
            "lost {}  duplicated {}  out of order {}\n",
            self.lost, self.duplicated, self.out_of_order
        ));
        out.push_str(&format!("latency       {}\n", p(&self.latency)));
        out.push_str(&format!("connect       {}\n", p(&self.connect)));
        out.push_str(&format!("join          {}\n", p(&self.join)));
        out.push_str(&format!("connect+join  {}\n", p(&self.connect_join)));
        out.push_str(&format!(
            "all joined    {:.2} s after the first connect ({} worker process(es))\n",
            self.connect_phase_s, self.workers
        ));
        if self.errors.is_empty() {
            out.push_str("errors        none\n");
        } else {
            for (kind, n) in &self.errors {
                out.push_str(&format!("error         {kind}: {n}\n"));
            }
        }
        out
    }
}
