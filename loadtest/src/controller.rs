//! The controller: publishes at the set rate with its send time in each payload, matches
//! acks to publishes, sends again what was refused `unavailable`, and counts acks by
//! numbering across its reconnects.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use serde_json::json;

use crate::dial::{next_event, now_us, reconnectable, Ws};
use crate::proto::{Event, Joined};
use crate::{housekeeping, Client, Stop};

/// What a controller keeps across its connections.
struct Publisher {
    /// Payload counter (also the publish's `ref`).
    n: u64,
    /// Publishes awaiting their answer: counter to (first send time in µs, retries so far).
    in_flight: HashMap<u64, (u64, u32)>,
    /// Publishes refused `unavailable`, to send again: (when, counter, send time, retries),
    /// soonest first.
    retries: BinaryHeap<Reverse<(tokio::time::Instant, u64, u64, u32)>>,
    /// The numbering the acks on this connection belong to.
    epoch: String,
    /// The highest seq acked on this connection: acks of one connection come in order,
    /// so one at or below it means the numbering started over.
    last_ack: u64,
    /// The ack that went backwards, counted once a rejoin names its numbering.
    held_ack: Option<u64>,
}

/// Publishes at the configured rate until the duration is over; counts acks by numbering.
/// At rate 0 it only holds the connection (answering heartbeats) for the duration.
/// Controller `index` starts `index / sessions` of a period late. With `--reconnect` it
/// comes back after a drop and sends a publish refused `unavailable` again (its payload
/// keeps the first send time, so the latency shows the outage).
pub(crate) async fn controller(mut ws: Ws, joined: Joined, c: &mut Client<'_>) {
    let (args, shared) = (c.args, c.shared);
    let end = Instant::now() + args.duration;
    let period = Duration::from_secs_f64(1.0 / args.rate.max(1e-6));
    // Controllers are spread evenly over one period: all starting at the same instant
    // would publish in lockstep bursts that no real set of publishers produces.
    let phase = period.mul_f64(c.index as f64 / args.sessions.max(1) as f64);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + phase, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut p = Publisher {
        n: 0,
        in_flight: HashMap::new(),
        retries: BinaryHeap::new(),
        epoch: joined.epoch,
        last_ack: 0,
        held_ack: None,
    };
    loop {
        let stop = publish_on(&mut ws, &mut p, &mut tick, c, end, true).await;
        match stop {
            Stop::End => break,
            Stop::Dropped(code, why) if args.reconnect && reconnectable(code) => {
                shared.dropped(&format!("controller: {why}"));
            }
            Stop::Dropped(_, why) => {
                shared.error(&format!("controller: {why}"));
                return;
            }
            Stop::Suspect | Stop::Churn => {}
        }
        shared.reconnected();
        // Whether the publishes in flight were stored is unknown (PROTOCOL.md): they are
        // not sent again, and their seqs, if any, are accounted by what displays see.
        p.in_flight.clear();
        let _ = ws.close(None).await;
        let Some((fresh, joined)) = c.rejoin(None, end).await else {
            return;
        };
        ws = fresh;
        p.epoch = joined.epoch;
        p.last_ack = 0;
        if let Some(seq) = p.held_ack.take() {
            p.last_ack = seq;
            shared.tallies.acked(c.index, &p.epoch, seq);
        }
    }
    // The drain: no more publishes, but the acks of the last ones still count.
    let drained = Instant::now() + args.drain;
    let _ = publish_on(&mut ws, &mut p, &mut tick, c, drained, false).await;
    let _ = ws.close(None).await;
}

/// One connection's publishing (when `publishing`; else only its answers): ticks, acks,
/// retries and heartbeats until `end` or until the connection ends.
async fn publish_on(
    ws: &mut Ws,
    p: &mut Publisher,
    tick: &mut tokio::time::Interval,
    c: &Client<'_>,
    end: Instant,
    publishing: bool,
) -> Stop {
    let (args, shared) = (c.args, c.shared);
    let proto = args.proto();
    let pad = "x".repeat(args.payload);
    let stop = tokio::time::sleep_until(end.into());
    tokio::pin!(stop);
    loop {
        let retry_at = p.retries.peek().map(|r| r.0 .0);
        let send = tokio::select! {
            _ = &mut stop => return Stop::End,
            event = next_event(ws, proto) => {
                match event {
                    Some(Event::Ack { seq, n }) => {
                        shared.acked.fetch_add(1, Ordering::Relaxed);
                        if let Some((t, _)) = n.and_then(|n| p.in_flight.remove(&n)) {
                            shared.record_ack(now_us().saturating_sub(t));
                        }
                        if let Some(seq) = seq {
                            if seq <= p.last_ack && args.reconnect {
                                // The acks went backwards: a new numbering whose epoch
                                // only a join tells. This ack belongs to it, so it is
                                // counted once the rejoin has named it.
                                p.held_ack = Some(seq);
                                return Stop::Suspect;
                            }
                            p.last_ack = seq;
                            shared.tallies.acked(c.index, &p.epoch, seq);
                        }
                    }
                    Some(Event::Refused { code, n, retry_after_ms }) => {
                        let retry = n.and_then(|n| p.in_flight.remove(&n).map(|sent| (n, sent)));
                        match retry {
                            Some((n, (t, tries))) if args.reconnect && code == "unavailable" => {
                                shared.publish_retries.fetch_add(1, Ordering::Relaxed);
                                // Per message, exponential (an app's outbox backs off too),
                                // and never sooner than the server asked.
                                let backoff = 100u64.saturating_mul(1 << tries.min(6)).min(5000);
                                let wait = Duration::from_millis(backoff.max(retry_after_ms.unwrap_or(0)));
                                p.retries.push(Reverse((tokio::time::Instant::now() + wait, n, t, tries + 1)));
                            }
                            _ => shared.error(&format!("publish: {code}")),
                        }
                    }
                    other => {
                        if let Some(stop) = housekeeping(ws, other).await {
                            return stop;
                        }
                    }
                }
                None
            }
            _ = tokio::time::sleep_until(retry_at.unwrap_or_else(tokio::time::Instant::now)), if publishing && retry_at.is_some() => {
                p.retries.pop().map(|Reverse((_, n, t, tries))| (n, t, tries))
            }
            _ = tick.tick(), if publishing && args.rate > 0.0 => {
                p.n += 1;
                Some((p.n, now_us(), 0))
            }
        };
        let Some((n, t, tries)) = send else { continue };
        let data = json!({"t": t, "n": n, "pad": pad});
        let Ok(msg) = proto.publish(c.session, data, n) else {
            return Stop::End;
        };
        if ws.send(msg).await.is_err() {
            return Stop::Dropped(None, "send failed".into());
        }
        p.in_flight.insert(n, (t, tries));
        if tries == 0 {
            shared.sent.fetch_add(1, Ordering::Relaxed);
        }
    }
}
