//! The display: receives until the run (and its drain) is over, checks seq continuity from
//! its join's baseline, records latency, and accounts for what a rejoin after a drop says.

use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::dial::{next_event, now_us, reconnectable, Ws};
use crate::proto::{Event, Joined, Proto};
use crate::seq::{Seen, SeqCheck};
use crate::{housekeeping, Client, Stop};

/// Latency samples a display keeps before adding them to the shared histograms.
const LATENCY_BATCH: usize = 64;

/// A display's account of its session across its connections.
struct Viewer {
    /// The numbering it follows, and what it saw there.
    epoch: String,
    check: SeqCheck,
    /// (second of the run, latency µs) not yet added to the shared histograms.
    samples: Vec<(usize, u64)>,
    /// After a reconnect: the seq that means caught up, and when the connection was lost.
    catching_up: Option<(u64, Instant)>,
}

impl Viewer {
    /// One message (live, or from a rejoin's history). An `Again` is returned to the
    /// caller only when a rejoin can settle it; otherwise it is a duplicate.
    fn see(&mut self, seq: u64, sent_us: Option<u64>, c: &Client<'_>, settle: bool) -> Seen {
        let shared = c.shared;
        shared.received.fetch_add(1, Ordering::Relaxed);
        let seen = self.check.see(seq);
        if seen == Seen::Again {
            if settle {
                shared.received.fetch_sub(1, Ordering::Relaxed);
                return seen;
            }
            self.check.duplicated += 1;
        }
        if let Some(t) = sent_us {
            self.samples
                .push((shared.second(), now_us().saturating_sub(t).max(1)));
            if self.samples.len() >= LATENCY_BATCH {
                shared.add_latencies(&mut self.samples);
            }
        }
        if let Some((target, lost_at)) = self.catching_up {
            if self.check.last() >= target {
                shared.record_recovery(lost_at.elapsed());
                self.catching_up = None;
            }
        }
        seen
    }

    /// Takes in a rejoin's answer. `held`: the connection was left because a seq came
    /// again; in the same numbering that was a duplicate, in a new one it was not.
    fn rejoined(&mut self, joined: Joined, held: bool, lost_at: Instant, c: &Client<'_>) {
        let shared = c.shared;
        let mut history = joined.history;
        if joined.epoch != self.epoch {
            // The numbering started over: close the account of the old one (what it
            // missed there is counted as taken by the reset) and follow the new one
            // from the oldest message the server still has.
            shared.numbering_resets.fetch_add(1, Ordering::Relaxed);
            shared.display_reset(c.index, &self.epoch, &self.check);
            self.epoch = joined.epoch;
            self.check = SeqCheck::new(0);
            let first = history
                .first()
                .map_or(joined.seq, |m| m.0.saturating_sub(1));
            self.check.skip_to(first);
        } else {
            if held {
                self.check.duplicated += 1;
            }
            if !joined.recovered {
                // More was missed than the session keeps: the history is its whole
                // window; what came before it is gone.
                shared.not_recovered.fetch_add(1, Ordering::Relaxed);
                let last = self.check.last();
                history.retain(|m| m.0 > last);
                let first = history
                    .first()
                    .map_or(joined.seq, |m| m.0.saturating_sub(1));
                self.check.skip_to(first);
            }
        }
        self.catching_up = Some((joined.seq, lost_at));
        if self.check.last() >= joined.seq {
            shared.record_recovery(lost_at.elapsed());
            self.catching_up = None;
        }
        for (seq, sent_us) in history {
            self.see(seq, sent_us, c, false);
        }
    }
}

/// Receives until the controller's run (plus the drain) is over; checks seq continuity
/// from the seq at its join and records latency. With `--reconnect` it comes back after a
/// drop with `since` and `epoch`, and accounts for what the rejoin says.
pub(crate) async fn display(mut ws: Ws, joined: Joined, c: &mut Client<'_>) {
    let (args, shared) = (c.args, c.shared);
    let end = Instant::now() + args.duration + args.drain;
    let mut v = Viewer {
        epoch: joined.epoch,
        check: SeqCheck::new(joined.seq),
        samples: Vec::new(),
        catching_up: None,
    };
    let settle = args.reconnect && args.proto() != Proto::SocketIo;
    loop {
        let stop = receive(&mut ws, &mut v, c, end, settle).await;
        let held = match stop {
            Stop::End => break,
            Stop::Dropped(code, why) if settle && reconnectable(code) => {
                shared.dropped(&format!("display: {why}"));
                false
            }
            Stop::Dropped(_, why) => {
                shared.error(&format!("display: {why}"));
                break;
            }
            Stop::Suspect => true,
            Stop::Churn => false,
        };
        let lost_at = Instant::now();
        shared.reconnected();
        let _ = ws.close(None).await;
        let since = (v.check.last(), v.epoch.clone());
        let Some((fresh, joined)) = c.rejoin(Some((since.0, &since.1)), end).await else {
            if held {
                v.check.duplicated += 1;
            }
            shared.error("display: could not rejoin before the end");
            break;
        };
        ws = fresh;
        v.rejoined(joined, held, lost_at, c);
    }
    let _ = ws.close(None).await;
    shared.display_done(c.index, &v.epoch, &v.check);
    shared.add_latencies(&mut v.samples);
}

/// One connection's messages until the run ends or the connection does.
async fn receive(
    ws: &mut Ws,
    v: &mut Viewer,
    c: &mut Client<'_>,
    end: Instant,
    settle: bool,
) -> Stop {
    let proto = c.args.proto();
    let stop = tokio::time::sleep_until(end.into());
    tokio::pin!(stop);
    loop {
        let event = tokio::select! {
            e = next_event(ws, proto) => e,
            _ = &mut stop => return Stop::End,
            Ok(()) = c.churn.changed() => {
                let k = *c.churn.borrow_and_update();
                if c.churns(k) {
                    return Stop::Churn;
                }
                continue;
            }
        };
        match event {
            Some(Event::Message { seq, sent_us }) => {
                if v.see(seq, sent_us, c, settle) == Seen::Again {
                    return Stop::Suspect;
                }
            }
            other => {
                if let Some(stop) = housekeeping(ws, other).await {
                    return stop;
                }
            }
        }
    }
}
