//! Loss and order accounting: what each display saw against what its session published.
//!
//! A display starts from the seq its `joined` reported (the baseline: every later message
//! must reach it), so a message missing before the first one it saw is lost too. Gaps are
//! remembered as ranges, so a late message fills its gap and counts as out of order, and a
//! message seen twice counts as duplicated. Messages missing after the last one a display
//! saw (the tail) are counted per session once the run is over: the top of the session is
//! the highest seq its controller had acknowledged, or the highest any display saw.
//!
//! A session's seqs count within one numbering, named by its epoch (Redis lost the keys,
//! the numbering started over). Tallies are kept per (session, epoch), so a reset never
//! reads as loss or duplication: a display that moves to a new numbering closes its
//! account of the old one as *reset* (what it missed there could not be delivered), and
//! seqs a `recovered: false` rejoin could not bring back count as *unrecoverable*. Both
//! are reported apart from loss, which stays the count of what should have arrived and
//! did not.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// Gap ranges one display remembers; beyond that the oldest is forgotten, and a message
/// arriving that late counts as duplicated (it was counted lost already).
const MAX_GAPS: usize = 256;

/// How one message fits what a display had seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    /// The next seq, or a higher one (what it skipped is counted lost).
    New,
    /// A seq that was missing: it fills its gap (out of order).
    Late,
    /// A seq already seen. Not counted here: within one numbering it is a duplicate,
    /// but it may be the first message of a new numbering, which only a rejoin tells.
    Again,
}

/// One display's view of its session's seq, within one numbering.
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
    /// Seqs a `recovered: false` rejoin could not bring back (beyond the history window).
    pub(crate) unrecoverable: u64,
}

impl SeqCheck {
    pub(crate) fn new(baseline: u64) -> Self {
        SeqCheck {
            last: baseline,
            gaps: Vec::new(),
            lost: 0,
            duplicated: 0,
            out_of_order: 0,
            unrecoverable: 0,
        }
    }

    /// The highest seq seen (the baseline when nothing arrived).
    pub(crate) fn last(&self) -> u64 {
        self.last
    }

    /// Records `seq`; an [`Seen::Again`] is the caller's to count (see there).
    pub(crate) fn see(&mut self, seq: u64) -> Seen {
        if seq > self.last {
            if seq > self.last + 1 {
                self.lost += seq - self.last - 1;
                if self.gaps.len() == MAX_GAPS {
                    self.gaps.remove(0);
                }
                self.gaps.push((self.last + 1, seq - 1));
            }
            self.last = seq;
            return Seen::New;
        }
        let Some(i) = self.gaps.iter().position(|&(a, b)| a <= seq && seq <= b) else {
            return Seen::Again;
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
        Seen::Late
    }

    /// A `recovered: false` rejoin in the same numbering: the seqs after the last one
    /// seen up to `baseline` (just before the oldest message the server still had) are
    /// gone from its history, so they count as unrecoverable rather than lost.
    pub(crate) fn skip_to(&mut self, baseline: u64) {
        if baseline > self.last {
            self.unrecoverable += baseline - self.last;
            self.last = baseline;
        }
    }
}

/// What one process knows about one numbering of one session at the end of a run;
/// workers' tallies of the same session and epoch add up (a session's controller and
/// displays may live in different workers).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Tally {
    /// The highest seq the controller had acknowledged.
    pub(crate) acked_top: u64,
    /// Displays that finished their run in this numbering.
    pub(crate) displays: u64,
    /// The sum of those displays' last seqs.
    pub(crate) last_sum: u64,
    /// The highest last seq among all displays that were in this numbering.
    pub(crate) last_max: u64,
    /// Displays that left this numbering for a newer one.
    #[serde(default)]
    pub(crate) reset_displays: u64,
    /// The sum of their last seqs in it.
    #[serde(default)]
    pub(crate) reset_last_sum: u64,
}

impl Tally {
    pub(crate) fn merge(self, other: Tally) -> Tally {
        Tally {
            acked_top: self.acked_top.max(other.acked_top),
            displays: self.displays + other.displays,
            last_sum: self.last_sum + other.last_sum,
            last_max: self.last_max.max(other.last_max),
            reset_displays: self.reset_displays + other.reset_displays,
            reset_last_sum: self.reset_last_sum + other.reset_last_sum,
        }
    }

    fn top(&self) -> u64 {
        self.acked_top.max(self.last_max)
    }

    /// Messages published in this numbering that displays never got after their last one.
    pub(crate) fn tail_lost(&self) -> u64 {
        (self.displays * self.top()).saturating_sub(self.last_sum)
    }

    /// Messages of this numbering that displays which moved on to a new one never got:
    /// the numbering reset took them (Redis lost the keys they were in).
    pub(crate) fn reset_lost(&self) -> u64 {
        (self.reset_displays * self.top()).saturating_sub(self.reset_last_sum)
    }
}

/// A session's tallies by epoch.
pub(crate) type Numberings = BTreeMap<String, Tally>;

/// The per-session tallies every client task of one process updates. One small lock per
/// session: a controller takes it once per ack, a display once at the end (and at a
/// numbering change).
pub(crate) struct Tallies {
    sessions: Vec<Mutex<Numberings>>,
}

impl Tallies {
    pub(crate) fn new(sessions: usize) -> Self {
        Tallies {
            sessions: (0..sessions).map(|_| Mutex::default()).collect(),
        }
    }

    fn update(&self, session: usize, epoch: &str, f: impl FnOnce(&mut Tally)) {
        if let Some(Ok(mut t)) = self.sessions.get(session).map(Mutex::lock) {
            match t.get_mut(epoch) {
                Some(tally) => f(tally),
                None => f(t.entry(epoch.to_string()).or_default()),
            }
        }
    }

    /// The controller of `session` got an ack for `seq` in numbering `epoch`.
    pub(crate) fn acked(&self, session: usize, epoch: &str, seq: u64) {
        self.update(session, epoch, |t| t.acked_top = t.acked_top.max(seq));
    }

    /// A display of `session` finished in numbering `epoch` with `last` as the highest
    /// seq it saw.
    pub(crate) fn display_done(&self, session: usize, epoch: &str, last: u64) {
        self.update(session, epoch, |t| {
            t.displays += 1;
            t.last_sum += last;
            t.last_max = t.last_max.max(last);
        });
    }

    /// A display of `session` left numbering `epoch` (after `last`) for a new one.
    pub(crate) fn display_reset(&self, session: usize, epoch: &str, last: u64) {
        self.update(session, epoch, |t| {
            t.reset_displays += 1;
            t.reset_last_sum += last;
            t.last_max = t.last_max.max(last);
        });
    }

    pub(crate) fn snapshot(&self) -> Vec<Numberings> {
        self.sessions
            .iter()
            .map(|t| t.lock().map(|t| t.clone()).unwrap_or_default())
            .collect()
    }
}

/// Adds one process's per-session numberings into another's.
pub(crate) fn merge_numberings(into: &mut Vec<Numberings>, other: Vec<Numberings>) {
    if into.len() < other.len() {
        into.resize(other.len(), Numberings::new());
    }
    for (mine, theirs) in into.iter_mut().zip(other) {
        for (epoch, tally) in theirs {
            let merged = mine.get(&epoch).copied().unwrap_or_default().merge(tally);
            mine.insert(epoch, merged);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts every `Again` as a duplicate, as a display does within one numbering.
    fn see(c: &mut SeqCheck, seq: u64) {
        if c.see(seq) == Seen::Again {
            c.duplicated += 1;
        }
    }

    fn run(baseline: u64, seqs: &[u64]) -> (u64, u64, u64) {
        let mut c = SeqCheck::new(baseline);
        for s in seqs {
            see(&mut c, *s);
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
            see(&mut c, s);
        }
        assert_eq!((c.lost, c.duplicated, c.out_of_order), (0, 0, 8));
        assert!(c.gaps.is_empty());
        assert_eq!(c.last(), 10);
    }

    #[test]
    fn old_gaps_are_forgotten_beyond_the_cap() {
        let mut c = SeqCheck::new(0);
        for i in 0..=MAX_GAPS as u64 {
            see(&mut c, 2 * i + 2); // skips every odd seq
        }
        assert_eq!(c.lost, MAX_GAPS as u64 + 1);
        assert_eq!(c.gaps.len(), MAX_GAPS);
        see(&mut c, 1); // its gap was forgotten
        assert_eq!((c.lost, c.duplicated), (MAX_GAPS as u64 + 1, 1));
        see(&mut c, 3);
        assert_eq!((c.lost, c.out_of_order), (MAX_GAPS as u64, 1));
    }

    #[test]
    fn the_tail_counts_against_the_acked_top() {
        let t = Tallies::new(2);
        t.acked(0, "e", 10);
        t.display_done(0, "e", 10);
        t.display_done(0, "e", 8);
        t.display_done(1, "e", 3); // no ack reached the controller: the top is what was seen
        t.display_done(1, "e", 2);
        let s = t.snapshot();
        assert_eq!(s[0]["e"].tail_lost(), 2);
        assert_eq!(s[1]["e"].tail_lost(), 1);
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
            ..Tally::default()
        };
        let merged = controller_side.merge(displays_side);
        assert_eq!(merged.tail_lost(), 1);
        assert_eq!(merged, displays_side.merge(controller_side));
        let mut all = vec![Numberings::from([("a".to_string(), controller_side)])];
        merge_numberings(
            &mut all,
            vec![
                Numberings::from([("a".to_string(), displays_side)]),
                Numberings::from([("b".to_string(), displays_side)]),
            ],
        );
        assert_eq!(all.len(), 2);
        assert_eq!(all[0]["a"], merged);
        assert_eq!(all[1]["b"], displays_side);
    }

    #[test]
    fn a_numbering_reset_is_counted_apart_from_loss() {
        // Epoch "old" reached 30 (acked); one display saw up to 25, then Redis lost the
        // keys: it moved to "new" and saw 1..=4 there; the other display stayed to 30.
        let t = Tallies::new(1);
        t.acked(0, "old", 30);
        t.display_reset(0, "old", 25);
        t.display_done(0, "old", 30);
        t.acked(0, "new", 4);
        t.display_done(0, "new", 4);
        let s = t.snapshot();
        assert_eq!(
            s[0]["old"].reset_lost(),
            5,
            "26..=30 went with the old keys"
        );
        assert_eq!(s[0]["old"].tail_lost(), 0);
        assert_eq!(s[0]["new"].tail_lost(), 0);
        assert_eq!(s[0]["new"].reset_lost(), 0);
    }

    #[test]
    fn a_rejoin_beyond_the_window_counts_the_skipped_seqs_as_unrecoverable() {
        let mut c = SeqCheck::new(0);
        for s in 1..=5 {
            see(&mut c, s);
        }
        // The history window now starts at 121: 6..=120 are gone.
        c.skip_to(120);
        assert_eq!(c.see(121), Seen::New);
        assert_eq!((c.lost, c.unrecoverable, c.last()), (0, 115, 121));
        c.skip_to(100); // never backwards
        assert_eq!((c.unrecoverable, c.last()), (115, 121));
        assert_eq!(c.see(121), Seen::Again, "Again is left to the caller");
        assert_eq!(c.duplicated, 0);
    }
}
