//! Which stream sequences one consumer instance holds (taken by its loop, not yet answered),
//! answered lately, or set aside from JetStream's max-deliveries advisory: so that its
//! advisory listener never dead-letters a message its loop handles, and its loop never handles
//! a message the listener set aside. Bounded: answered and set-aside sequences are forgotten
//! after `keep` or beyond `room` entries, oldest first.

use std::{
    collections::{HashMap, VecDeque},
    time::Duration,
};

use tokio::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mark {
    /// Taken by the loop, not yet answered.
    Handling,
    /// Taken by the loop, and JetStream has given up on it (its max-deliveries advisory came
    /// while the loop held an earlier delivery, the last one having gone elsewhere): the
    /// loop's answer is final, so a failure is dead-lettered, not given back.
    Owed,
    /// Answered by the loop: acknowledged, or dead-lettered by it.
    Answered,
    /// Dead-lettered by the advisory listener.
    SetAside,
}

#[derive(Debug)]
pub(crate) struct Ledger {
    marks: HashMap<u64, (Mark, Instant)>,
    /// Answered and set-aside sequences, oldest first (`Handling` ones are never here).
    order: VecDeque<(u64, Instant)>,
    keep: Duration,
    room: usize,
}

impl Ledger {
    pub(crate) fn new(keep: Duration, room: usize) -> Self {
        Self {
            marks: HashMap::new(),
            order: VecDeque::new(),
            keep,
            room: room.max(1),
        }
    }

    /// The loop takes `sequence`; `false` when the listener set it aside first (it waited in
    /// the client's buffer past its last `ack_wait`).
    pub(crate) fn take(&mut self, sequence: u64) -> bool {
        let now = Instant::now();
        self.prune(now);
        if matches!(self.marks.get(&sequence), Some((Mark::SetAside, _))) {
            return false;
        }
        self.marks.insert(sequence, (Mark::Handling, now));
        true
    }

    /// The loop answered `sequence` (acknowledged or dead-lettered it).
    pub(crate) fn answered(&mut self, sequence: u64) {
        self.settle(sequence, Mark::Answered);
    }

    /// The loop gave `sequence` back to JetStream (a nak, or stopped before an answer): a
    /// later advisory about it concerns a delivery elsewhere.
    pub(crate) fn released(&mut self, sequence: u64) {
        if matches!(
            self.marks.get(&sequence),
            Some((Mark::Handling | Mark::Owed, _))
        ) {
            self.marks.remove(&sequence);
        }
    }

    /// The listener asks to set `sequence` aside: `true` (and marked) unless the loop holds
    /// it (then the loop owes the final answer: see [`owed`](Self::owed)), answered it lately,
    /// or it was set aside already.
    pub(crate) fn claim(&mut self, sequence: u64) -> bool {
        self.prune(Instant::now());
        match self.marks.get_mut(&sequence) {
            Some((mark @ Mark::Handling, _)) => {
                *mark = Mark::Owed;
                false
            }
            Some(_) => false,
            None => {
                self.settle(sequence, Mark::SetAside);
                true
            }
        }
    }

    /// Whether JetStream gave up on `sequence` while the loop held it: a failure of the
    /// handler is then dead-lettered, since no delivery will follow.
    pub(crate) fn owed(&self, sequence: u64) -> bool {
        matches!(self.marks.get(&sequence), Some((Mark::Owed, _)))
    }

    fn settle(&mut self, sequence: u64, mark: Mark) {
        let now = Instant::now();
        self.marks.insert(sequence, (mark, now));
        self.order.push_back((sequence, now));
        self.prune(now);
    }

    fn prune(&mut self, now: Instant) {
        while let Some(&(sequence, at)) = self.order.front() {
            if now.saturating_duration_since(at) < self.keep && self.order.len() <= self.room {
                break;
            }
            self.order.pop_front();
            // Only the entry this record was made for: not one taken again since.
            if self
                .marks
                .get(&sequence)
                .is_some_and(|&(mark, t)| t == at && !matches!(mark, Mark::Handling | Mark::Owed))
            {
                self.marks.remove(&sequence);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn held_answered_and_set_aside_sequences_are_exclusive() {
        let mut l = Ledger::new(Duration::from_secs(10), 100);
        assert!(l.take(1));
        assert!(!l.claim(1), "held by the loop");
        l.answered(1);
        assert!(!l.claim(1), "answered lately");
        assert!(l.claim(2));
        assert!(!l.take(2), "set aside first");
        assert!(!l.claim(2), "set aside once");
        assert!(l.take(3));
        l.released(3);
        assert!(l.claim(3), "given back to JetStream");
        // The advisory comes while the loop holds an earlier delivery: the loop owes the
        // final answer, and a later advisory changes nothing.
        assert!(l.take(4));
        assert!(!l.owed(4));
        assert!(!l.claim(4), "held by the loop");
        assert!(l.owed(4));
        assert!(!l.claim(4));
        l.answered(4);
        assert!(!l.owed(4) && !l.claim(4), "answered lately");
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(l.claim(1), "forgotten after keep");
    }

    #[tokio::test(start_paused = true)]
    async fn the_record_is_bounded() {
        let mut l = Ledger::new(Duration::from_secs(3600), 3);
        for s in 1..=10 {
            assert!(l.take(s));
            l.answered(s);
        }
        assert!(l.marks.len() <= 3 && l.order.len() <= 3);
        assert!(!l.claim(10));
        assert!(l.claim(1), "the oldest forgotten");
        // Held sequences stay, however old.
        assert!(l.take(50));
        tokio::time::advance(Duration::from_secs(7200)).await;
        for s in 100..110 {
            assert!(l.claim(s));
        }
        assert!(!l.claim(50));
    }
}
