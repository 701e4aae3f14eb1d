//! What a run measured: shared counters while it runs, and the report after (a table for
//! people, JSON for machines).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::seq::{merge_numberings, Numberings, SeqCheck, Tallies};

/// The report a run ends with, built from the merged partials.
mod summary;
pub use summary::{Percentiles, Point, Report};

/// What `webhook-sink` reports (sink.rs builds it; `cargo xtask bench webhooks` reads it).
mod sink;
pub use sink::{Lag, SinkReport};

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
    /// Reconnects (`--reconnect`): connections lost and dialled again.
    pub(crate) reconnects: AtomicU64,
    /// Publishes refused `unavailable` and sent again.
    pub(crate) publish_retries: AtomicU64,
    /// Displays that found their session's numbering had started over.
    pub(crate) numbering_resets: AtomicU64,
    /// Rejoins answered `recovered: false` in the same numbering.
    pub(crate) not_recovered: AtomicU64,
    /// Seqs those rejoins could not bring back (see [`SeqCheck::skip_to`]).
    unrecoverable: AtomicU64,
    pub(crate) tallies: Tallies,
    /// From the go: what [`Shared::second`] counts from.
    clock: OnceLock<Instant>,
    /// Per second of the run: latency, reconnects, gateways not ready.
    timeline: Mutex<Vec<Second>>,
    /// Connection lost to caught up again (the rejoin's seq reached), microseconds.
    recovery: Mutex<Histogram<u64>>,
    /// Per readiness URL: how long it answered anything but 200.
    readiness: Mutex<BTreeMap<String, Readiness>>,
    /// Publish-to-receive, microseconds.
    latency: Mutex<Histogram<u64>>,
    /// TCP and WebSocket handshakes (and Socket.IO's own), microseconds.
    connect: Mutex<Histogram<u64>>,
    /// The join frame to its answer, microseconds.
    join: Mutex<Histogram<u64>>,
    /// Connect plus join, microseconds.
    connect_join: Mutex<Histogram<u64>>,
    /// A publish's (first) send to its ack, microseconds.
    ack: Mutex<Histogram<u64>>,
    errors: Mutex<BTreeMap<String, u64>>,
    /// Connections lost and dialled again (`--reconnect`), by how they ended.
    drops: Mutex<BTreeMap<String, u64>>,
}

/// 1 µs to 60 s at 3 significant digits.
pub(crate) fn histogram() -> Histogram<u64> {
    histogram_with(3)
}

fn histogram_with(sigfig: u8) -> Histogram<u64> {
    // Constant, valid bounds: construction only fails for low >= high or sigfig > 5.
    #[allow(clippy::expect_used)]
    Histogram::new_with_bounds(1, 60_000_000, sigfig).expect("constant histogram bounds are valid")
}

/// One second of the run. Its latency histogram has 2 significant digits (20 KB), so a
/// ten-minute soak keeps its timeline in about 12 MB.
struct Second {
    latency: Histogram<u64>,
    reconnects: u64,
    not_ready: u64,
}

impl Second {
    /// Second `second` of `timeline`, which grows to hold it.
    fn at(timeline: &mut Vec<Second>, second: usize) -> &mut Second {
        while timeline.len() <= second {
            timeline.push(Second {
                latency: histogram_with(2),
                reconnects: 0,
                not_ready: 0,
            });
        }
        &mut timeline[second]
    }
}

/// One readiness URL's record.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Readiness {
    /// Time it answered anything but 200 (or nothing), seconds.
    pub not_ready_s: f64,
    /// Times it went from ready to not ready.
    pub dips: u64,
    /// Seconds from the go to its first and last answer other than 200.
    pub first_not_ready_at_s: Option<f64>,
    pub last_not_ready_at_s: Option<f64>,
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
            reconnects: AtomicU64::new(0),
            publish_retries: AtomicU64::new(0),
            numbering_resets: AtomicU64::new(0),
            not_recovered: AtomicU64::new(0),
            unrecoverable: AtomicU64::new(0),
            tallies: Tallies::new(sessions),
            clock: OnceLock::new(),
            timeline: Mutex::new(Vec::new()),
            recovery: Mutex::new(histogram()),
            readiness: Mutex::new(BTreeMap::new()),
            latency: Mutex::new(histogram()),
            connect: Mutex::new(histogram()),
            join: Mutex::new(histogram()),
            connect_join: Mutex::new(histogram()),
            ack: Mutex::new(histogram()),
            errors: Mutex::new(BTreeMap::new()),
            drops: Mutex::new(BTreeMap::new()),
        }
    }

    /// Counts an error by kind.
    pub(crate) fn error(&self, kind: &str) {
        if let Ok(mut errors) = self.errors.lock() {
            *errors.entry(kind.to_string()).or_insert(0) += 1;
        }
    }

    /// Counts a connection a reconnecting client lost, by how it ended.
    pub(crate) fn dropped(&self, kind: &str) {
        if let Ok(mut drops) = self.drops.lock() {
            *drops.entry(kind.to_string()).or_insert(0) += 1;
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

    /// Adds what one display counted within one numbering.
    fn add_check(&self, check: &SeqCheck) {
        self.lost.fetch_add(check.lost, Ordering::Relaxed);
        self.duplicated
            .fetch_add(check.duplicated, Ordering::Relaxed);
        self.out_of_order
            .fetch_add(check.out_of_order, Ordering::Relaxed);
        self.unrecoverable
            .fetch_add(check.unrecoverable, Ordering::Relaxed);
    }

    /// A display of `session` finished in numbering `epoch`: its gaps, duplicates, late
    /// messages, and where it stopped (for the tail, counted per session at the end).
    pub(crate) fn display_done(&self, session: usize, epoch: &str, check: &SeqCheck) {
        self.add_check(check);
        self.tallies.display_done(session, epoch, check.last());
    }

    /// A display of `session` left numbering `epoch` for a new one.
    pub(crate) fn display_reset(&self, session: usize, epoch: &str, check: &SeqCheck) {
        self.add_check(check);
        self.tallies.display_reset(session, epoch, check.last());
    }

    /// Starts the run's clock (at the go).
    pub(crate) fn start_clock(&self) {
        let _ = self.clock.set(Instant::now());
    }

    /// The second of the run it is now (0 before the go).
    pub(crate) fn second(&self) -> usize {
        self.clock
            .get()
            .map_or(0, |t| t.elapsed().as_secs() as usize)
    }

    /// Runs `f` on the current second of the timeline.
    fn in_second(&self, second: usize, f: impl FnOnce(&mut Second)) {
        if let Ok(mut timeline) = self.timeline.lock() {
            f(Second::at(&mut timeline, second));
        }
    }

    /// A client lost its connection and dials again.
    pub(crate) fn reconnected(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
        self.in_second(self.second(), |s| s.reconnects += 1);
    }

    /// A reconnected display caught up, `took` after its connection was lost.
    pub(crate) fn record_recovery(&self, took: Duration) {
        if let Ok(mut h) = self.recovery.lock() {
            let _ = h.record(took.as_micros().max(1) as u64);
        }
    }

    /// One readiness poll of `url`: `ready`, and how long since the previous poll.
    pub(crate) fn readiness(&self, url: &str, ready: bool, was_ready: bool, since_last: Duration) {
        let at = self.clock.get().map_or(0.0, |t| t.elapsed().as_secs_f64());
        if let Ok(mut all) = self.readiness.lock() {
            let r = all.entry(url.to_string()).or_default();
            if !ready {
                r.not_ready_s += since_last.as_secs_f64();
                r.first_not_ready_at_s.get_or_insert(at);
                r.last_not_ready_at_s = Some(at);
                if was_ready {
                    r.dips += 1;
                }
            }
        }
    }

    /// Marks how many gateways were not ready at once in this second.
    pub(crate) fn not_ready_now(&self, count: u64) {
        self.in_second(self.second(), |s| s.not_ready = s.not_ready.max(count));
    }

    /// A publish was acked `us` microseconds after it was (first) sent.
    pub(crate) fn record_ack(&self, us: u64) {
        if let Ok(mut h) = self.ack.lock() {
            let _ = h.record(us.max(1));
        }
    }

    /// Records a batch of one display's (second, latency µs) samples and empties it.
    pub(crate) fn add_latencies(&self, samples: &mut Vec<(usize, u64)>) {
        if let Ok(mut total) = self.latency.lock() {
            for &(_, us) in samples.iter() {
                let _ = total.record(us);
            }
        }
        if let Ok(mut timeline) = self.timeline.lock() {
            for &(second, us) in samples.iter() {
                let _ = Second::at(&mut timeline, second).latency.record(us);
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
        let timeline = self
            .timeline
            .lock()
            .map(|t| {
                t.iter()
                    .map(|s| SecondPartial {
                        latency: s
                            .latency
                            .iter_recorded()
                            .map(|v| (v.value_iterated_to(), v.count_at_value()))
                            .collect(),
                        reconnects: s.reconnects,
                        not_ready: s.not_ready,
                    })
                    .collect()
            })
            .unwrap_or_default();
        Partial {
            reconnects: self.reconnects.load(Ordering::Relaxed),
            publish_retries: self.publish_retries.load(Ordering::Relaxed),
            numbering_resets: self.numbering_resets.load(Ordering::Relaxed),
            not_recovered: self.not_recovered.load(Ordering::Relaxed),
            unrecoverable: self.unrecoverable.load(Ordering::Relaxed),
            recovery: buckets(&self.recovery),
            readiness: self.readiness.lock().map(|r| r.clone()).unwrap_or_default(),
            timeline,
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
            ack: buckets(&self.ack),
            errors: self.errors.lock().map(|e| e.clone()).unwrap_or_default(),
            drops: self.drops.lock().map(|e| e.clone()).unwrap_or_default(),
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
    /// Indexed by session, then by epoch.
    pub(crate) sessions: Vec<Numberings>,
    pub(crate) reconnects: u64,
    pub(crate) publish_retries: u64,
    pub(crate) numbering_resets: u64,
    pub(crate) not_recovered: u64,
    pub(crate) unrecoverable: u64,
    pub(crate) recovery: Vec<(u64, u64)>,
    pub(crate) readiness: BTreeMap<String, Readiness>,
    pub(crate) timeline: Vec<SecondPartial>,
    pub(crate) latency: Vec<(u64, u64)>,
    pub(crate) connect: Vec<(u64, u64)>,
    pub(crate) join: Vec<(u64, u64)>,
    pub(crate) connect_join: Vec<(u64, u64)>,
    #[serde(default)]
    pub(crate) ack: Vec<(u64, u64)>,
    pub(crate) errors: BTreeMap<String, u64>,
    #[serde(default)]
    pub(crate) drops: BTreeMap<String, u64>,
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
        merge_numberings(&mut self.sessions, other.sessions);
        self.reconnects += other.reconnects;
        self.publish_retries += other.publish_retries;
        self.numbering_resets += other.numbering_resets;
        self.not_recovered += other.not_recovered;
        self.unrecoverable += other.unrecoverable;
        self.recovery.extend(other.recovery);
        self.readiness.extend(other.readiness);
        if self.timeline.len() < other.timeline.len() {
            self.timeline
                .resize_with(other.timeline.len(), SecondPartial::default);
        }
        for (mine, theirs) in self.timeline.iter_mut().zip(other.timeline) {
            mine.latency.extend(theirs.latency);
            mine.reconnects += theirs.reconnects;
            mine.not_ready = mine.not_ready.max(theirs.not_ready);
        }
        self.latency.extend(other.latency);
        self.connect.extend(other.connect);
        self.join.extend(other.join);
        self.connect_join.extend(other.connect_join);
        self.ack.extend(other.ack);
        for (kind, n) in other.errors {
            *self.errors.entry(kind).or_insert(0) += n;
        }
        for (kind, n) in other.drops {
            *self.drops.entry(kind).or_insert(0) += n;
        }
        // Workers run side by side: the run took as long as the slowest of them.
        self.elapsed_s = self.elapsed_s.max(other.elapsed_s);
        self.connect_phase_s = self.connect_phase_s.max(other.connect_phase_s);
        self
    }
}

/// One second of a process's timeline.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct SecondPartial {
    pub(crate) latency: Vec<(u64, u64)>,
    pub(crate) reconnects: u64,
    pub(crate) not_ready: u64,
}
