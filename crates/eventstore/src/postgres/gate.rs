//! The reader's side of the gate: `tp_gate_alone()` in a statement of its own, which keeps the
//! gate in the session (`set_config('tp.gate', ...)`), and the read as the next statement,
//! pipelined behind it on the same connection (one round trip). Each runs in its own autocommit
//! transaction, so the read's snapshot is taken after the gate was computed, at any isolation
//! level, and the gate's try-lock is given back at once. And the brief reuse of a gate.
//!
//! Reusing a gate is safe: the proof (in `schema.rs`) holds for any snapshot taken after the
//! gate was computed, so an older gate is only smaller than a fresh one, and a smaller gate
//! only delays events, never skips them. A gate is reused for at most the interval set with
//! [`with_gate_reuse`](super::PostgresStore::with_gate_reuse), and only while no append has
//! woken this process since (an append's `NOTIFY`, or an append through this store, which
//! counts as a wake-up at once): the readers a wake-up sends to the log share one `pg_locks`
//! scan, and a reader always sees what its own process appended with `append` before.

use std::{
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

/// The last gate computed, when, and at which wake-up count.
#[derive(Clone, Copy)]
struct Computed {
    asked: Instant,
    wakeups: u64,
    gate: i64,
}

/// A gate to reuse, if a fresh enough one was computed.
pub(super) struct GateCache {
    reuse: Duration,
    last: Mutex<Option<Computed>>,
}

impl GateCache {
    pub(super) fn new(reuse: Duration) -> Self {
        Self {
            reuse,
            last: Mutex::new(None),
        }
    }

    /// The gate computed at most `reuse` ago at the same wake-up count, if any.
    pub(super) fn get(&self, wakeups: u64) -> Option<i64> {
        if self.reuse.is_zero() {
            return None;
        }
        let last = *self.last.lock().unwrap_or_else(PoisonError::into_inner);
        last.filter(|c| c.wakeups == wakeups && c.asked.elapsed() <= self.reuse)
            .map(|c| c.gate)
    }

    /// Keeps `gate`, asked for at `asked` when the wake-up count was `wakeups`, unless a gate
    /// asked for later is kept already.
    pub(super) fn put(&self, asked: Instant, wakeups: u64, gate: i64) {
        if self.reuse.is_zero() {
            return;
        }
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if last.is_none_or(|c| c.asked <= asked) {
            *last = Some(Computed {
                asked,
                wakeups,
                gate,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gate_is_reused_only_while_fresh_and_without_a_wakeup() {
        let cache = GateCache::new(Duration::from_secs(3600));
        assert_eq!(cache.get(0), None);
        let t0 = Instant::now();
        cache.put(t0, 0, 7);
        assert_eq!(cache.get(0), Some(7));
        assert_eq!(cache.get(1), None, "a wake-up came since");
        // An older answer does not replace a newer one.
        cache.put(t0.checked_sub(Duration::from_secs(1)).unwrap(), 0, 3);
        assert_eq!(cache.get(0), Some(7));
        cache.put(Instant::now(), 1, 9);
        assert_eq!(cache.get(1), Some(9));

        let stale = GateCache::new(Duration::from_millis(1));
        stale.put(t0.checked_sub(Duration::from_secs(1)).unwrap(), 0, 5);
        assert_eq!(stale.get(0), None, "older than the reuse interval");

        let off = GateCache::new(Duration::ZERO);
        off.put(Instant::now(), 0, 5);
        assert_eq!(off.get(0), None, "reuse off");
    }
}
