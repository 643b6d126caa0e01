//! Lock-free sliding windows of call outcomes.
//!
//! - [`CountWindow`]: the last N outcomes, exactly. A ring of N one-byte slots; each call
//!   takes the next slot with one `fetch_add` and replaces the outcome N calls back, so the
//!   window really slides (a window of 10 forgets the 11th call back, whatever came before).
//!   Counters change only when a slot's content does, so a run of successes over successes
//!   writes nothing but the head index.
//! - [`TimeWindow`]: the calls of the last `size`, in B buckets. Each counter carries the
//!   bucket epoch it counts for in its upper 32 bits, so a bucket rolls over with one
//!   compare-and-swap per counter and never loses a concurrent increment. Recording is O(1);
//!   reading sums B buckets (B is fixed by configuration, not by traffic).

use crate::sync::{
    AtomicU8, AtomicU64, AtomicUsize,
    Ordering::{Relaxed, SeqCst},
    fence,
};

pub(crate) const FAILURE: u8 = 1;
pub(crate) const SLOW: u8 = 2;
const FILLED: u8 = 4;

/// What a window holds now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Stats {
    pub(crate) calls: u64,
    pub(crate) failures: u64,
    pub(crate) slow: u64,
}

#[derive(Debug)]
pub(crate) enum Window {
    Count(CountWindow),
    Time(TimeWindow),
}

impl Window {
    /// Records one outcome; returns whether what the window holds may have changed (false
    /// only when a success replaced a success, so the rates and counts are as they were).
    #[inline]
    pub(crate) fn record(&self, flags: u8, now_nanos: u64) -> bool {
        match self {
            Self::Count(w) => w.record(flags),
            Self::Time(w) => {
                w.record(flags, now_nanos);
                true
            }
        }
    }

    pub(crate) fn stats(&self, now_nanos: u64) -> Stats {
        match self {
            Self::Count(w) => w.stats(),
            Self::Time(w) => w.stats(now_nanos),
        }
    }

    pub(crate) fn clear(&self) {
        match self {
            Self::Count(w) => w.clear(),
            Self::Time(w) => w.clear(),
        }
    }

    /// Whether the window holds no failure and no slow call at `now_nanos`, known without
    /// summing it: then a success cannot trip any rule (the rates are 0, which no threshold
    /// reaches; the failure count is 0). Only a time window answers; a count window's
    /// counts are read in three loads anyway, so it says false.
    #[inline]
    pub(crate) fn holds_no_failure_or_slow(&self, now_nanos: u64) -> bool {
        match self {
            Self::Count(_) => false,
            Self::Time(w) => w.holds_no_failure_or_slow(now_nanos),
        }
    }

    pub(crate) const fn needs_clock(&self) -> bool {
        matches!(self, Self::Time(_))
    }
}

#[derive(Debug)]
pub(crate) struct CountWindow {
    slots: Box<[AtomicU8]>,
    head: AtomicUsize,
    // Counters move by ±1 with wrapping arithmetic and are read as signed, clamped to
    // [0, size]: a decrement may land before the increment it pairs with (another thread's
    // swap took the slot in between), and must not read as a huge count meanwhile.
    filled: AtomicU64,
    failures: AtomicU64,
    slow: AtomicU64,
}

impl CountWindow {
    pub(crate) fn new(size: usize) -> Self {
        Self {
            slots: (0..size.max(1)).map(|_| AtomicU8::new(0)).collect(),
            head: AtomicUsize::new(0),
            filled: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            slow: AtomicU64::new(0),
        }
    }

    /// Records one outcome; returns false when the window's content is unchanged (a success
    /// over a success).
    #[inline]
    pub(crate) fn record(&self, flags: u8) -> bool {
        // A success over a full window of successes changes nothing the window holds: every
        // slot stays a success. Skipping the head then keeps "the last N calls" exact (a
        // failure recorded later still leaves after exactly N more calls) and makes the
        // steady-state success path free of writes.
        if flags == 0
            && self.failures.load(Relaxed) == 0
            && self.slow.load(Relaxed) == 0
            && self.filled.load(Relaxed) == self.slots.len() as u64
        {
            return false;
        }
        let idx = self.head.fetch_add(1, Relaxed) % self.slots.len();
        self.replace(idx, FILLED | flags)
    }

    /// Puts `new` in slot `idx`; returns whether the slot changed.
    #[inline]
    fn replace(&self, idx: usize, new: u8) -> bool {
        let slot = &self.slots[idx];
        // Reading first keeps the common case (success over success) free of writes.
        if slot.load(Relaxed) == new {
            return false;
        }
        let old = slot.swap(new, Relaxed);
        if old == new {
            return false;
        }
        // Every change of a slot goes through `swap`, and each swap accounts for exactly the
        // difference between what it put and what it took: once every thread has finished
        // its step, the counters equal the number of slots holding each flag.
        Self::adjust(&self.filled, old & FILLED, new & FILLED);
        Self::adjust(&self.failures, old & FAILURE, new & FAILURE);
        Self::adjust(&self.slow, old & SLOW, new & SLOW);
        true
    }

    #[inline]
    fn adjust(counter: &AtomicU64, old: u8, new: u8) {
        match (old != 0, new != 0) {
            (false, true) => {
                counter.fetch_add(1, Relaxed);
            }
            (true, false) => {
                counter.fetch_sub(1, Relaxed);
            }
            _ => {}
        }
    }

    fn read(&self, counter: &AtomicU64) -> u64 {
        (counter.load(Relaxed) as i64).clamp(0, self.slots.len() as i64) as u64
    }

    pub(crate) fn stats(&self) -> Stats {
        Stats {
            calls: self.read(&self.filled),
            failures: self.read(&self.failures),
            slow: self.read(&self.slow),
        }
    }

    pub(crate) fn clear(&self) {
        for idx in 0..self.slots.len() {
            let _ = self.replace(idx, 0);
        }
    }
}

#[derive(Debug)]
pub(crate) struct TimeWindow {
    buckets: Box<[Bucket]>,
    width_nanos: u64,
    /// One more than the latest bucket number (time / width, not wrapped) that got a failure
    /// or a slow call; 0 for none yet. Never lowered (not even by `clear`): at worst it makes
    /// a success sum the window for nothing.
    latest_bad: AtomicU64,
}

#[derive(Debug)]
struct Bucket {
    calls: AtomicU64,
    failures: AtomicU64,
    slow: AtomicU64,
}

const COUNT_MASK: u64 = u32::MAX as u64;

impl TimeWindow {
    pub(crate) fn new(buckets: usize, width_nanos: u64) -> Self {
        Self {
            buckets: (0..buckets.max(1))
                .map(|_| Bucket {
                    calls: AtomicU64::new(0),
                    failures: AtomicU64::new(0),
                    slow: AtomicU64::new(0),
                })
                .collect(),
            width_nanos: width_nanos.max(1),
            latest_bad: AtomicU64::new(0),
        }
    }

    fn epoch(&self, now_nanos: u64) -> u32 {
        // Tags are 32 bits: with buckets of at least 1 ms they repeat after 49 days, and a
        // stale tag is only ever mistaken for a current one if a bucket sat untouched for
        // exactly a multiple of that.
        (now_nanos / self.width_nanos) as u32
    }

    #[inline]
    pub(crate) fn record(&self, flags: u8, now_nanos: u64) {
        if flags & (FAILURE | SLOW) != 0 {
            // Marked before it is counted, and with the fences of `holds_no_failure_or_slow`
            // and `stats`: a success that reads no mark here is one whose call this outcome's
            // own judgement (`stats`, after its fence) counts.
            self.latest_bad
                .fetch_max(now_nanos / self.width_nanos + 1, SeqCst);
        }
        let epoch = self.epoch(now_nanos);
        let bucket = &self.buckets[epoch as usize % self.buckets.len()];
        Self::bump(&bucket.calls, epoch);
        if flags & FAILURE != 0 {
            Self::bump(&bucket.failures, epoch);
        }
        if flags & SLOW != 0 {
            Self::bump(&bucket.slow, epoch);
        }
    }

    #[inline]
    fn bump(counter: &AtomicU64, epoch: u32) {
        let tag = u64::from(epoch) << 32;
        let mut cur = counter.load(Relaxed);
        loop {
            let next = if cur & !COUNT_MASK == tag {
                if cur & COUNT_MASK == COUNT_MASK {
                    return; // saturated at 4 billion calls in one bucket
                }
                cur + 1
            } else {
                tag | 1
            };
            match counter.compare_exchange_weak(cur, next, Relaxed, Relaxed) {
                Ok(_) => return,
                Err(actual) => cur = actual,
            }
        }
    }

    /// See [`Window::holds_no_failure_or_slow`]: the latest failure or slow call is in a
    /// bucket that has left the window (or there was none).
    #[inline]
    fn holds_no_failure_or_slow(&self, now_nanos: u64) -> bool {
        fence(SeqCst);
        let latest = self.latest_bad.load(Relaxed);
        latest == 0
            || (now_nanos / self.width_nanos + 1).saturating_sub(latest)
                >= self.buckets.len() as u64
    }

    pub(crate) fn stats(&self, now_nanos: u64) -> Stats {
        fence(SeqCst);
        let epoch = self.epoch(now_nanos);
        let n = self.buckets.len() as u32;
        let live = |counter: &AtomicU64| {
            let v = counter.load(Relaxed);
            let age = epoch.wrapping_sub((v >> 32) as u32);
            if age < n { v & COUNT_MASK } else { 0 }
        };
        self.buckets.iter().fold(Stats::default(), |acc, b| Stats {
            calls: acc.calls + live(&b.calls),
            failures: acc.failures + live(&b.failures),
            slow: acc.slow + live(&b.slow),
        })
    }

    pub(crate) fn clear(&self) {
        for b in self.buckets.iter() {
            b.calls.store(0, Relaxed);
            b.failures.store(0, Relaxed);
            b.slow.store(0, Relaxed);
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn count_window_really_slides() {
        let w = CountWindow::new(10);
        for _ in 0..100 {
            w.record(0);
        }
        assert_eq!(
            w.stats(),
            Stats {
                calls: 10,
                failures: 0,
                slow: 0
            }
        );
        for i in 1..=5 {
            w.record(FAILURE);
            assert_eq!(w.stats().failures, i);
        }
        for _ in 0..10 {
            w.record(SLOW);
        }
        assert_eq!(
            w.stats(),
            Stats {
                calls: 10,
                failures: 0,
                slow: 10
            }
        );
        w.clear();
        assert_eq!(w.stats(), Stats::default());
    }

    #[test]
    fn skipping_successes_keeps_the_last_n_exact() {
        let w = CountWindow::new(3);
        for _ in 0..3 {
            assert!(w.record(0), "a slot filled is a change");
        }
        for _ in 0..1_000 {
            assert!(!w.record(0)); // skipped: nothing changes
        }
        assert!(w.record(FAILURE));
        assert!(!w.record(0), "a success over a success changes nothing");
        assert!(!w.record(0));
        assert_eq!(
            w.stats().failures,
            1,
            "the failure is still among the last 3"
        );
        assert!(w.record(0), "a success over the failure is a change");
        assert_eq!(
            w.stats().failures,
            0,
            "and leaves after exactly 3 more calls"
        );
        let windows = [
            Window::Count(CountWindow::new(1)),
            Window::Time(TimeWindow::new(1, 1)),
        ];
        for window in &windows {
            assert!(window.record(0, 0));
        }
        assert!(!windows[0].record(0, 0));
        assert!(windows[1].record(0, 0), "a time window counts every call");
    }

    #[test]
    fn a_decrement_before_its_increment_reads_as_zero() {
        let w = CountWindow::new(4);
        CountWindow::adjust(&w.failures, FAILURE, 0);
        assert_eq!(w.stats().failures, 0);
        CountWindow::adjust(&w.failures, 0, FAILURE);
        assert_eq!(w.stats().failures, 0);
    }

    #[test]
    fn time_window_forgets_old_buckets() {
        let sec = 1_000_000_000;
        let w = TimeWindow::new(10, sec); // 10 s in 1 s buckets
        w.record(FAILURE, 0);
        w.record(0, 5 * sec);
        assert_eq!(
            w.stats(5 * sec),
            Stats {
                calls: 2,
                failures: 1,
                slow: 0
            }
        );
        // At 10 s the bucket of second 0 has left the window.
        assert_eq!(
            w.stats(10 * sec),
            Stats {
                calls: 1,
                failures: 0,
                slow: 0
            }
        );
        // Second 10 reuses the slot of second 0 and restarts its counters.
        w.record(SLOW, 10 * sec);
        assert_eq!(
            w.stats(10 * sec),
            Stats {
                calls: 2,
                failures: 0,
                slow: 1
            }
        );
        assert_eq!(w.stats(100 * sec), Stats::default());
        w.clear();
        assert_eq!(w.stats(10 * sec), Stats::default());
    }

    #[test]
    fn concurrent_recording_keeps_counters_exact() {
        let w = std::sync::Arc::new(CountWindow::new(64));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let w = w.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000 {
                        w.record(if (i + t) % 3 == 0 { FAILURE } else { 0 });
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let stats = w.stats();
        let in_slots = w
            .slots
            .iter()
            .filter(|s| s.load(Relaxed) & FAILURE != 0)
            .count() as u64;
        assert_eq!(stats.calls, 64);
        assert_eq!(stats.failures, in_slots);
    }
}
