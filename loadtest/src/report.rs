//! What a run measured: shared counters while it runs, and the report after (a table for
//! people, JSON for machines).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::seq::{merge_numberings, Numberings, SeqCheck, Tallies, Tally};
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
pub(crate) struct Readiness {
    /// Time it answered anything but 200 (or nothing), seconds.
    pub(crate) not_ready_s: f64,
    /// Times it went from ready to not ready.
    pub(crate) dips: u64,
    /// Seconds from the go to its first and last answer other than 200.
    pub(crate) first_not_ready_at_s: Option<f64>,
    pub(crate) last_not_ready_at_s: Option<f64>,
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

/// One second of the report's timeline.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Point {
    /// Seconds from the go.
    pub(crate) t: usize,
    /// Deliveries that carried a send time.
    pub(crate) delivered: u64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
    pub(crate) reconnects: u64,
    /// Gateways not ready at some poll in this second.
    pub(crate) not_ready: u64,
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
    /// Seqs that `recovered: false` rejoins could not bring back (beyond the window).
    pub(crate) unrecoverable: u64,
    /// Seqs of an old numbering that displays never got because it started over.
    pub(crate) reset_lost: u64,
    /// `lost + duplicated + out_of_order`: what no reset or window explains.
    pub(crate) unexplained: u64,
    pub(crate) reconnects: u64,
    pub(crate) publish_retries: u64,
    /// Displays told their session's numbering had started over.
    pub(crate) numbering_resets: u64,
    /// Rejoins answered `recovered: false` in the same numbering.
    pub(crate) not_recovered: u64,
    /// Connection lost to caught up again, per reconnect of a display.
    pub(crate) recovery: Percentiles,
    /// The second with the highest p99 publish-to-receive latency.
    pub(crate) worst_second: Option<Point>,
    pub(crate) readiness: BTreeMap<String, Readiness>,
    pub(crate) timeline: Vec<Point>,
    pub(crate) latency: Percentiles,
    pub(crate) connect: Percentiles,
    pub(crate) join: Percentiles,
    pub(crate) connect_join: Percentiles,
    /// A publish's send to its ack (publish→ack): what the gateway's publish path costs
    /// a controller.
    pub(crate) ack: Percentiles,
    /// From the first connect to the last client joined (the slowest worker's).
    pub(crate) connect_phase_s: f64,
    pub(crate) workers: usize,
    pub(crate) errors: BTreeMap<String, u64>,
    /// Connections that reconnecting clients lost, by how they ended.
    pub(crate) drops: BTreeMap<String, u64>,
}

impl Report {
    pub(crate) fn build(args: &Args, p: Partial) -> Self {
        let active = args.duration.as_secs_f64().max(0.001);
        let tallies = || p.sessions.iter().flat_map(|n| n.values());
        let lost = p.lost + tallies().map(Tally::tail_lost).sum::<u64>();
        let timeline: Vec<Point> = p
            .timeline
            .iter()
            .enumerate()
            .map(|(t, s)| {
                let h = rebuild(&s.latency);
                Point {
                    t,
                    delivered: h.len(),
                    p99_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
                    max_ms: h.max() as f64 / 1000.0,
                    reconnects: s.reconnects,
                    not_ready: s.not_ready,
                }
            })
            .collect();
        let worst_second = timeline
            .iter()
            .filter(|p| p.delivered > 0)
            .max_by(|a, b| a.p99_ms.total_cmp(&b.p99_ms))
            .copied();
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
            lost,
            duplicated: p.duplicated,
            out_of_order: p.out_of_order,
            duplicated_or_reordered: p.duplicated + p.out_of_order,
            unrecoverable: p.unrecoverable,
            reset_lost: tallies().map(Tally::reset_lost).sum(),
            unexplained: lost + p.duplicated + p.out_of_order,
            reconnects: p.reconnects,
            publish_retries: p.publish_retries,
            numbering_resets: p.numbering_resets,
            not_recovered: p.not_recovered,
            recovery: Percentiles::of(&rebuild(&p.recovery)),
            worst_second,
            readiness: p.readiness,
            timeline,
            latency: Percentiles::of(&rebuild(&p.latency)),
            connect: Percentiles::of(&rebuild(&p.connect)),
            join: Percentiles::of(&rebuild(&p.join)),
            connect_join: Percentiles::of(&rebuild(&p.connect_join)),
            ack: Percentiles::of(&rebuild(&p.ack)),
            connect_phase_s: p.connect_phase_s,
            workers: args.workers,
            errors: p.errors,
            drops: p.drops,
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
        if self.reconnects > 0 || self.publish_retries > 0 {
            out.push_str(&format!(
                "reconnects {}  publish retries {}  not recovered {} ({} seqs beyond the window)  numbering resets {} ({} seqs went with the old numbering)\n",
                self.reconnects,
                self.publish_retries,
                self.not_recovered,
                self.unrecoverable,
                self.numbering_resets,
                self.reset_lost
            ));
            out.push_str(&format!("caught up     {}\n", p(&self.recovery)));
        }
        if let Some(w) = &self.worst_second {
            out.push_str(&format!(
                "worst second  t={} s: p99 {:.2} ms, max {:.2} ms over {} deliveries\n",
                w.t, w.p99_ms, w.max_ms, w.delivered
            ));
        }
        for (url, r) in &self.readiness {
            out.push_str(&format!(
                "readiness     {url}: not ready {:.1} s in {} dip(s)\n",
                r.not_ready_s, r.dips
            ));
        }
        out.push_str(&format!("latency       {}\n", p(&self.latency)));
        out.push_str(&format!("publish→ack   {}\n", p(&self.ack)));
        out.push_str(&format!("connect       {}\n", p(&self.connect)));
        out.push_str(&format!("join          {}\n", p(&self.join)));
        out.push_str(&format!("connect+join  {}\n", p(&self.connect_join)));
        out.push_str(&format!(
            "all joined    {:.2} s after the first connect ({} worker process(es))\n",
            self.connect_phase_s, self.workers
        ));
        for (kind, n) in &self.drops {
            out.push_str(&format!("dropped       {kind}: {n}\n"));
        }
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
