//! A FIFO semaphore with a lock-free fast path, a bounded waiting room and a limit that can
//! change while permits are out.
//!
//! One `AtomicU64` holds the permits in use (low 32 bits) and the callers waiting (high 32
//! bits), so a caller can only take a permit when nobody waits before it (FIFO), and a
//! releaser can only skip the queue when nobody is in it: both facts are checked by the same
//! compare-and-swap that changes the count. The queue itself sits behind a mutex that only
//! callers who must wait, and releasers who have someone to hand a permit to, ever take.
//!
//! Invariant: while anyone waits, the permits in use are at least the limit; a released
//! permit goes straight to the first waiter, so it is never free while someone waits.
//!
//! # Why not `tokio::sync::Semaphore`
//!
//! Kept beside tokio's for a measured cost and two behaviours tokio's lacks, each pinned here:
//!
//! - **Cost of the uncontended path** (a permit taken and given back, what every call of a
//!   pool that is not full pays), counted by callgrind over 2,000 and 4,000 rounds, release
//!   build, tokio 1.54.1: this semaphore **47** instructions per round; tokio's
//!   `try_acquire` + drop **129**, `try_acquire_owned` + drop (what a service holding the
//!   permit in its future needs) **141**. tokio's release always takes its waiters' mutex;
//!   here a release with nobody waiting is one compare-and-swap. (The program: a loop of
//!   `Permit::try_new(&s)` and drop against one of `s.clone().try_acquire_owned()` and drop,
//!   each in an `#[inline(never)]` function callgrind toggles on.) The repository's own probe
//!   shows the same side by side, layer for layer: `scripts/bench-callgrind` counts 169
//!   instructions per call for a `BulkheadLayer` against 219 for tower's `ConcurrencyLimit`,
//!   which is built on tokio's semaphore.
//! - **A limit lowered while its permits are out**, as the adaptive limiters
//!   ([`Gradient2`](crate::Gradient2), [`Aimd`](crate::Aimd)) need: [`Semaphore::set_limit`]
//!   takes effect as permits come back, whatever is in flight. tokio's `forget_permits` only
//!   removes permits that are free now. Pinned by
//!   `raising_the_limit_admits_waiters_and_lowering_it_waits_for_returns` below.
//! - **A bounded waiting room** (`max_waiting`, default 1,024), refused in FIFO order with
//!   [`Full`], counted in the same atomic word as the permits; tokio's queue has no bound.
//!   Pinned by `waiters_are_served_in_order_and_bounded` below and by
//!   `the_default_waiting_room_holds_1024_calls` in `tests/bulkhead.rs`.

use std::{
    collections::VecDeque,
    fmt,
    sync::Arc,
    task::{Context, Poll, Waker},
};

use crate::sync::{AtomicU64, Mutex, Ordering::*, lock};

const IN_FLIGHT: u64 = 0xffff_ffff;
const ONE_QUEUED: u64 = 1 << 32;

const fn in_flight(state: u64) -> u64 {
    state & IN_FLIGHT
}

const fn queued(state: u64) -> u64 {
    state >> 32
}

/// A FIFO semaphore; see the module docs.
pub struct Semaphore {
    state: AtomicU64,
    limit: AtomicU64,
    max_waiting: u64,
    queue: Mutex<Queue>,
    /// The limiter that moves `limit`, if any, and the instant its samples count from.
    pub(crate) adaptive: Option<(crate::adaptive::Adaptive, tokio::time::Instant)>,
}

#[derive(Default)]
struct Queue {
    next_id: u64,
    entries: VecDeque<Entry>,
}

struct Entry {
    id: u64,
    waker: Option<Waker>,
    granted: bool,
}

impl fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Semaphore")
            .field("in_flight", &self.in_flight())
            .field("waiting", &self.waiting())
            .field("limit", &self.limit())
            .finish()
    }
}

impl Semaphore {
    /// A pool of `limit` permits with room for `max_waiting` waiters.
    pub fn new(limit: u32, max_waiting: u32) -> Self {
        Self {
            state: AtomicU64::new(0),
            limit: AtomicU64::new(u64::from(limit)),
            max_waiting: u64::from(max_waiting),
            queue: Mutex::new(Queue::default()),
            adaptive: None,
        }
    }

    /// Takes the limit the adaptive limiter chose for this pool, if it chose one and it
    /// differs from the current limit.
    pub(crate) fn follow(&self, limit: Option<u32>) {
        if let Some(limit) = limit
            && u64::from(limit) != self.limit()
        {
            self.set_limit(limit);
        }
    }

    /// A pool whose limit follows `adaptive`, starting at its initial limit.
    pub(crate) fn adaptive(adaptive: crate::adaptive::Adaptive, max_waiting: u32) -> Self {
        let mut s = Self::new(adaptive.initial(), max_waiting);
        s.adaptive = Some((adaptive, tokio::time::Instant::now()));
        s
    }

    /// Nanoseconds since the adaptive limiter's base (never 0, which means "no sample").
    pub(crate) fn sample_start(&self) -> u64 {
        match &self.adaptive {
            Some((_, base)) => {
                let since = base.elapsed().as_nanos();
                u64::try_from(since).unwrap_or(u64::MAX).max(1)
            }
            None => 0,
        }
    }

    /// Permits in use.
    pub fn in_flight(&self) -> u64 {
        in_flight(self.state.load(Acquire))
    }

    /// Callers waiting.
    pub fn waiting(&self) -> u64 {
        queued(self.state.load(Acquire))
    }

    /// The limit.
    pub fn limit(&self) -> u64 {
        self.limit.load(Acquire)
    }

    /// Takes a permit if one is free and nobody waits for one.
    #[inline]
    /// Takes a permit if one is free and nobody waits.
    pub fn try_acquire(&self) -> bool {
        let limit = self.limit.load(Relaxed);
        let mut state = self.state.load(Relaxed);
        loop {
            if queued(state) != 0 || in_flight(state) >= limit {
                return false;
            }
            match self
                .state
                .compare_exchange_weak(state, state + 1, Acquire, Relaxed)
            {
                Ok(_) => return true,
                Err(actual) => state = actual,
            }
        }
    }

    /// Gives a permit back: to the first waiter if there is one, else to the pool.
    #[inline]
    /// Gives a permit back.
    pub fn release(&self) {
        let mut state = self.state.load(Relaxed);
        while queued(state) == 0 {
            match self
                .state
                .compare_exchange_weak(state, state - 1, Release, Relaxed)
            {
                Ok(_) => return,
                Err(actual) => state = actual,
            }
        }
        self.release_slow();
    }

    #[cold]
    fn release_slow(&self) {
        let mut queue = lock(&self.queue);
        self.release_locked(&mut queue);
    }

    fn release_locked(&self, queue: &mut Queue) {
        // Waiters only come and go under this lock, and while any wait no fast path changes
        // the word, so what we read here stays true until we change it.
        let state = self.state.load(Acquire);
        if in_flight(state) <= self.limit.load(Acquire) && self.grant_first(queue, 0) {
            return;
        }
        self.state.fetch_sub(1, AcqRel);
    }

    /// Grants a permit to the first waiter without one, moving it from queued to in flight
    /// (`in_flight_delta` is 0 when a released permit is handed over, 1 when a new one is
    /// made). Returns whether there was such a waiter.
    fn grant_first(&self, queue: &mut Queue, in_flight_delta: u64) -> bool {
        let Some(entry) = queue.entries.iter_mut().find(|e| !e.granted) else {
            return false;
        };
        entry.granted = true;
        self.state
            .fetch_add(in_flight_delta.wrapping_sub(ONE_QUEUED), AcqRel);
        if let Some(waker) = entry.waker.take() {
            waker.wake();
        }
        true
    }

    /// Changes the limit. A higher limit admits waiters at once; a lower one takes effect as
    /// permits come back (permits already out are never revoked).
    pub fn set_limit(&self, limit: u32) {
        let mut queue = lock(&self.queue);
        let limit = u64::from(limit);
        self.limit.store(limit, Release);
        while in_flight(self.state.load(Acquire)) < limit && self.grant_first(&mut queue, 1) {}
    }
}

/// A permit of a [`Semaphore`], given back when dropped.
/// A permit, given back when dropped.
pub struct Permit {
    semaphore: Option<Arc<Semaphore>>,
}

impl Permit {
    /// The pool the permit belongs to.
    pub(crate) fn semaphore(&self) -> Option<&Arc<Semaphore>> {
        self.semaphore.as_ref()
    }

    /// Takes a permit at once, if one is free.
    #[inline]
    pub fn try_new(semaphore: &Arc<Semaphore>) -> Option<Self> {
        semaphore.try_acquire().then(|| Self {
            semaphore: Some(semaphore.clone()),
        })
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit").finish_non_exhaustive()
    }
}

impl Drop for Permit {
    #[inline]
    fn drop(&mut self) {
        if let Some(semaphore) = self.semaphore.take() {
            semaphore.release();
        }
    }
}

/// The waiting room is full (or waiting is not allowed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// The waiting room is full.
pub struct Full;

/// A caller waiting for a permit, in FIFO order. Dropping it leaves the queue (and hands on
/// a permit it was granted but did not take).
/// A caller waiting for a permit.
pub struct Waiter {
    semaphore: Arc<Semaphore>,
    id: Option<u64>,
}

impl fmt::Debug for Waiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Waiter")
            .field("queued", &self.id.is_some())
            .finish()
    }
}

impl Waiter {
    /// A waiter on `semaphore`.
    pub fn new(semaphore: Arc<Semaphore>) -> Self {
        Self {
            semaphore,
            id: None,
        }
    }

    /// Takes a permit, or waits for one in FIFO order.
    pub fn poll_acquire(&mut self, cx: &mut Context<'_>) -> Poll<Result<Permit, Full>> {
        let sem = &self.semaphore;
        let mut queue = lock(&sem.queue);
        let Some(id) = self.id else {
            let mut state = sem.state.load(Acquire);
            loop {
                let (next, admitted) =
                    if queued(state) == 0 && in_flight(state) < sem.limit.load(Acquire) {
                        (state + 1, true)
                    } else if queued(state) < sem.max_waiting {
                        (state + ONE_QUEUED, false)
                    } else {
                        return Poll::Ready(Err(Full));
                    };
                match sem.state.compare_exchange(state, next, AcqRel, Acquire) {
                    Ok(_) if admitted => return Poll::Ready(Ok(self.permit())),
                    Ok(_) => break,
                    Err(actual) => state = actual,
                }
            }
            let id = queue.next_id;
            queue.next_id += 1;
            queue.entries.push_back(Entry {
                id,
                waker: Some(cx.waker().clone()),
                granted: false,
            });
            self.id = Some(id);
            return Poll::Pending;
        };
        let Some(pos) = queue.entries.iter().position(|e| e.id == id) else {
            // Unreachable: entries leave only through their waiter. Refuse rather than panic.
            self.id = None;
            return Poll::Ready(Err(Full));
        };
        if queue.entries[pos].granted {
            queue.entries.remove(pos);
            self.id = None;
            return Poll::Ready(Ok(self.permit()));
        }
        let entry = &mut queue.entries[pos];
        if !entry
            .waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            entry.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    fn permit(&self) -> Permit {
        Permit {
            semaphore: Some(self.semaphore.clone()),
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let Some(id) = self.id.take() else { return };
        let mut queue = lock(&self.semaphore.queue);
        let Some(pos) = queue.entries.iter().position(|e| e.id == id) else {
            return;
        };
        let entry = queue.entries.remove(pos);
        if entry.is_some_and(|e| e.granted) {
            // It was handed a permit it will never use: pass it on.
            self.semaphore.release_locked(&mut queue);
        } else {
            self.semaphore.state.fetch_sub(ONE_QUEUED, AcqRel);
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::task::Waker;

    use super::*;

    fn cx() -> Context<'static> {
        Context::from_waker(Waker::noop())
    }

    #[test]
    fn permits_are_bounded_and_come_back() {
        let s = Arc::new(Semaphore::new(2, 0));
        let a = Permit::try_new(&s).unwrap();
        let _b = Permit::try_new(&s).unwrap();
        assert!(Permit::try_new(&s).is_none());
        drop(a);
        assert_eq!(s.in_flight(), 1);
        assert!(Permit::try_new(&s).is_some());
    }

    #[test]
    fn waiters_are_served_in_order_and_bounded() {
        let s = Arc::new(Semaphore::new(1, 2));
        let held = Permit::try_new(&s).unwrap();
        let mut first = Waiter::new(s.clone());
        let mut second = Waiter::new(s.clone());
        let mut third = Waiter::new(s.clone());
        assert!(first.poll_acquire(&mut cx()).is_pending());
        assert!(second.poll_acquire(&mut cx()).is_pending());
        assert!(matches!(
            third.poll_acquire(&mut cx()),
            Poll::Ready(Err(Full))
        ));
        assert_eq!(s.waiting(), 2);
        // A newcomer may not jump the queue even when a permit comes back.
        drop(held);
        assert!(Permit::try_new(&s).is_none());
        assert!(
            second.poll_acquire(&mut cx()).is_pending(),
            "second waits for first"
        );
        let p1 = match first.poll_acquire(&mut cx()) {
            Poll::Ready(Ok(p)) => p,
            other => panic!("first is served first, got {other:?}"),
        };
        drop(p1);
        assert!(matches!(second.poll_acquire(&mut cx()), Poll::Ready(Ok(_))));
        assert_eq!(s.in_flight(), 0);
        assert_eq!(s.waiting(), 0);
    }

    #[test]
    fn a_dropped_waiter_frees_its_place_and_passes_on_a_granted_permit() {
        let s = Arc::new(Semaphore::new(1, 4));
        let held = Permit::try_new(&s).unwrap();
        let mut a = Waiter::new(s.clone());
        let mut b = Waiter::new(s.clone());
        assert!(a.poll_acquire(&mut cx()).is_pending());
        assert!(b.poll_acquire(&mut cx()).is_pending());
        drop(held); // granted to `a`
        drop(a); // which leaves without taking it: `b` gets it
        assert!(matches!(b.poll_acquire(&mut cx()), Poll::Ready(Ok(_))));
        assert_eq!(s.in_flight(), 0, "b's permit dropped at once");
        let mut c = Waiter::new(s.clone());
        let held = Permit::try_new(&s).unwrap();
        assert!(c.poll_acquire(&mut cx()).is_pending());
        drop(c);
        assert_eq!(s.waiting(), 0);
        drop(held);
        assert_eq!(s.in_flight(), 0);
    }

    #[test]
    fn raising_the_limit_admits_waiters_and_lowering_it_waits_for_returns() {
        let s = Arc::new(Semaphore::new(1, 4));
        let p = Permit::try_new(&s).unwrap();
        let mut w = Waiter::new(s.clone());
        assert!(w.poll_acquire(&mut cx()).is_pending());
        s.set_limit(2);
        let q = match w.poll_acquire(&mut cx()) {
            Poll::Ready(Ok(q)) => q,
            other => panic!("admitted by the higher limit, got {other:?}"),
        };
        assert_eq!(s.in_flight(), 2);
        s.set_limit(1);
        drop(p);
        assert!(
            Permit::try_new(&s).is_none(),
            "still one out, at the new limit of one"
        );
        drop(q);
        assert!(Permit::try_new(&s).is_some());
    }
}
