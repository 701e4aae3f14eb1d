//! The report a run ends with: the merged partials turned into percentiles, a timeline
//! of seconds and its worst one, the accounting of every message, and the table and JSON
//! they are printed as.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::{histogram, Partial, Readiness};
use crate::cli::Args;
use crate::seq::Tally;

/// One second of the report's timeline.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Point {
    /// Seconds from the go.
    pub t: usize,
    /// Deliveries that carried a send time.
    pub delivered: u64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub reconnects: u64,
    /// Gateways not ready at some poll in this second.
    pub not_ready: u64,
}

fn rebuild(buckets: &[(u64, u64)]) -> Histogram<u64> {
    let mut h = histogram();
    for &(value, count) in buckets {
        let _ = h.record_n(value.max(1), count);
    }
    h
}

/// Percentiles of one histogram, in milliseconds.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
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

/// The result of a run. Read back (`cargo xtask`), a field that an older load generator
/// did not write yet reads as zero or empty, so committed reports stay readable.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Report {
    pub urls: Vec<String>,
    pub sessions: usize,
    pub displays_per_session: usize,
    pub rate_per_session: f64,
    pub payload_bytes: usize,
    pub protocol: String,
    /// From the go to the last client done (publishing, then the drain).
    pub duration_s: f64,
    /// The configured publishing time (`--duration`).
    pub publish_s: f64,
    pub published: u64,
    pub acked: u64,
    pub delivered: u64,
    pub expected: u64,
    pub deliveries_per_s: f64,
    /// Messages a display should have got and never did: gaps, and the tail after the
    /// last one it saw.
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    /// `duplicated + out_of_order` (both must be 0).
    pub duplicated_or_reordered: u64,
    /// Seqs that `recovered: false` rejoins could not bring back (beyond the window).
    pub unrecoverable: u64,
    /// Seqs of an old numbering that displays never got because it started over.
    pub reset_lost: u64,
    /// `lost + duplicated + out_of_order`: what no reset or window explains.
    pub unexplained: u64,
    pub reconnects: u64,
    pub publish_retries: u64,
    /// Displays told their session's numbering had started over.
    pub numbering_resets: u64,
    /// Rejoins answered `recovered: false` in the same numbering.
    pub not_recovered: u64,
    /// Connection lost to caught up again, per reconnect of a display.
    pub recovery: Percentiles,
    /// The second with the highest p99 publish-to-receive latency.
    pub worst_second: Option<Point>,
    pub readiness: BTreeMap<String, Readiness>,
    pub timeline: Vec<Point>,
    pub latency: Percentiles,
    pub connect: Percentiles,
    pub join: Percentiles,
    pub connect_join: Percentiles,
    /// A publish's send to its ack (publish→ack): what the gateway's publish path costs
    /// a controller.
    pub ack: Percentiles,
    /// From the first connect to the last client joined (the slowest worker's).
    pub connect_phase_s: f64,
    pub workers: usize,
    pub errors: BTreeMap<String, u64>,
    /// Connections that reconnecting clients lost, by how they ended.
    pub drops: BTreeMap<String, u64>,
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
