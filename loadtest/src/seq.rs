//! Loss and order accounting: what each display saw against what its session published.
//!
//! A display starts from the seq its `joined` reported (the baseline: every later message
//! must reach it), so a message missing before the first one it saw is lost too. Gaps are
//! remembered as ranges, so a late message fills its gap and counts as out of order, and a
//! message seen twice counts as duplicated. Messages missing after the last one a display
//! saw (the tail) are counted per session once the run is over: the top of the session is
//! the highest seq its controller had acknowledged, or the highest any display saw.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// Gap ranges one display remembers; beyond that the oldest is forgotten, and a message
/// arriving that late counts as duplicated (it was counted lost already).
const MAX_GAPS: usize = 256;

/// One display's view of its session's seq.
#[derive(Debug)]
pub(crate) struct SeqCheck {
    /// The highest seq seen, or the baseline before anything arrived.
    last: u64,
    /// Missing seqs as inclusive ranges, oldest first.
    gaps: Vec<(u64, u64)>,
    /// Seqs skipped and not (yet) seen.
    pub(crate) lost: u64,
    /// Seqs seen more than once.
    pub(crate) duplicated: u64,
    /// Seqs that arrived after a higher one (each is no longer lost).
    pub(crate) out_of_order: u64,
}

impl SeqCheck {
    pub(crate) fn new(baseline: u64) -> Self {
        SeqCheck {
            last: baseline,
            gaps: Vec::new(),
            lost: 0,
            duplicated: 0,
            out_of_order: 0,
        }
    }

    /// The highest seq seen (the baseline when nothing arrived).
    pub(crate) fn last(&self) -> u64 {
        self.last
    }

    pub(crate) fn see(&mut self, seq: u64) {
        if seq > self.last {
            if seq > self.last + 1 {
                self.lost += seq - self.last - 1;
                if self.gaps.len() == MAX_GAPS {
                    self.gaps.remove(0);
                }
                self.gaps.push((self.last + 1, seq - 1));
            }
            self.last = seq;
            return;
        }
        let Some(i) = self.gaps.iter().position(|&(a, b)| a <= seq && seq <= b) else {
            self.duplicated += 1;
            return;
        };
        self.out_of_order += 1;
        self.lost -= 1;
        let (a, b) = self.gaps[i];
        match (seq == a, seq == b) {
            (true, true) => {
                self.gaps.remove(i);
            }
            (true, false) => self.gaps[i].0 = seq + 1,
            (false, true) => self.gaps[i].1 = seq - 1,
            (false, false) => {
                self.gaps[i].1 = seq - 1;
                self.gaps.insert(i + 1, (seq + 1, b));
            }
        }
    }
}

/// What one process knows about one session at the end of a run; workers' tallies of the
/// same session add up (a session's controller and displays may live in different
/// workers).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Tally {
    /// The highest seq the controller had acknowledged.
    pub(crate) acked_top: u64,
    /// Displays that finished their run.
    pub(crate) displays: u64,
    /// The sum of those displays' last seqs.
    pub(crate) last_sum: u64,
    /// The highest last seq among them.
    pub(crate) last_max: u64,
}

impl Tally {
    pub(crate) fn merge(self, other: Tally) -> Tally {
        Tally {
            acked_top: self.acked_top.max(other.acked_top),
            displays: self.displays + other.displays,
            last_sum: self.last_sum + other.last_sum,
            last_max: self.last_max.max(other.last_max),
        }
    }

    /// Messages published in the session that displays never got after their last one.
    pub(crate) fn tail_lost(&self) -> u64 {
        let top = self.acked_top.max(self.last_max);
        (self.displays * top).saturating_sub(self.last_sum)
    }
}

/// The per-session tallies every client task of one process updates.
pub(crate) struct Tallies {
    sessions: Vec<LiveTally>,
}

/// A [`Tally`] while the run goes on.
#[derive(Default)]
struct LiveTally {
    acked_top: AtomicU64,
    displays: AtomicU64,
    last_sum: AtomicU64,
    last_max: AtomicU64,
}

impl Tallies {
    pub(crate) fn new(sessions: usize) -> Self {
        Tallies {
            sessions: (0..sessions).map(|_| LiveTally::default()).collect(),
        }
    }

    /// The controller of `session` got an ack for `seq`.
    pub(crate) fn acked(&self, session: usize, seq: u64) {
        if let Some(t) = self.sessions.get(session) {
            t.acked_top.fetch_max(seq, Ordering::Relaxed);
        }
    }

    /// A display of `session` finished with `last` as the highest seq it saw.
    pub(crate) fn display_done(&self, session: usize, last: u64) {
        if let Some(t) = self.sessions.get(session) {
            t.displays.fetch_add(1, Ordering::Relaxed);
            t.last_sum.fetch_add(last, Ordering::Relaxed);
            t.last_max.fetch_max(last, Ordering::Relaxed);
        }
    }

    pub(crate) fn snapshot(&self) -> Vec<Tally> {
        self.sessions
            .iter()
            .map(|t| Tally {
                acked_top: t.acked_top.load(Ordering::Relaxed),
                displays: t.displays.load(Ordering::Relaxed),
                last_sum: t.last_sum.load(Ordering::Relaxed),
                last_max: t.last_max.load(Ordering::Relaxed),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(baseline: u64, seqs: &[u64]) -> (u64, u64, u64) {
        let mut c = SeqCheck::new(baseline);
        for s in seqs {
            c.see(*s);
        }
        (c.lost, c.duplicated, c.out_of_order)
    }

    #[test]
    fn in_order_from_the_baseline() {
        assert_eq!(run(0, &[1, 2, 3]), (0, 0, 0));
        assert_eq!(run(4, &[5, 6, 7]), (0, 0, 0));
    }

    #[test]
    fn a_missing_first_message_is_lost() {
        assert_eq!(run(4, &[6, 7]), (1, 0, 0));
        assert_eq!(run(0, &[1, 3, 4]), (1, 0, 0));
    }

    #[test]
    fn duplicates_and_late_messages_are_told_apart() {
        assert_eq!(run(0, &[1, 2, 2, 3]), (0, 1, 0));
        assert_eq!(run(0, &[1, 3, 2, 4]), (0, 0, 1), "a late 2 fills its gap");
        assert_eq!(
            run(0, &[1, 3, 2, 2]),
            (0, 1, 1),
            "then a second 2 is a duplicate"
        );
        // A gap of 2..=9 filled from its start, its end and its middle.
        assert_eq!(run(1, &[10, 2, 9, 5]), (5, 0, 3));
        let mut c = SeqCheck::new(1);
        for s in [10, 5, 2, 3, 4, 6, 7, 8, 9] {
            c.see(s);
        }
        assert_eq!((c.lost, c.duplicated, c.out_of_order), (0, 0, 8));
        assert!(c.gaps.is_empty());
        assert_eq!(c.last(), 10);
    }

    #[test]
    fn old_gaps_are_forgotten_beyond_the_cap() {
        let mut c = SeqCheck::new(0);
        for i in 0..=MAX_GAPS as u64 {
            c.see(2 * i + 2); // skips every odd seq
        }
        assert_eq!(c.lost, MAX_GAPS as u64 + 1);
        assert_eq!(c.gaps.len(), MAX_GAPS);
        c.see(1); // its gap was forgotten
        assert_eq!((c.lost, c.duplicated), (MAX_GAPS as u64 + 1, 1));
        c.see(3);
        assert_eq!((c.lost, c.out_of_order), (MAX_GAPS as u64, 1));
    }

    #[test]
    fn the_tail_counts_against_the_acked_top() {
        let t = Tallies::new(2);
        t.acked(0, 10);
        t.display_done(0, 10);
        t.display_done(0, 8);
        t.display_done(1, 3); // no ack reached the controller: the top is what was seen
        t.display_done(1, 2);
        let s = t.snapshot();
        assert_eq!(s[0].tail_lost(), 2);
        assert_eq!(s[1].tail_lost(), 1);
        assert_eq!(Tally::default().tail_lost(), 0);
    }

    #[test]
    fn tallies_of_one_session_from_two_workers_merge() {
        let controller_side = Tally {
            acked_top: 20,
            ..Tally::default()
        };
        let displays_side = Tally {
            acked_top: 0,
            displays: 2,
            last_sum: 39,
            last_max: 20,
        };
        let merged = controller_side.merge(displays_side);
        assert_eq!(merged.tail_lost(), 1);
        assert_eq!(merged, displays_side.merge(controller_side));
    }
}
