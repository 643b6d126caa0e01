//! The cache's shared machinery: striped counters, single flight, invalidation epochs.

use std::{
    cell::Cell,
    collections::HashMap,
    error::Error,
    fmt,
    hash::{BuildHasher, Hash},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
};

use futures_util::future::{BoxFuture, Shared, WeakShared};
use tower_patterns_core::BoxError;

use crate::ScopedKey;

// ---------------------------------------------------------------------------------------------
// Counters

/// What the cache counts.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Count {
    Hit = 0,
    Miss,
    Stale,
    StaleIfError,
    Coalesced,
    Refresh,
    LoadError,
    StoreError,
    Bypass,
}

const COUNTS: usize = 9;
const STRIPES: usize = 16;

/// One cache line (two on CPUs that prefetch pairs) per stripe, so threads counting hits on
/// different cores do not bounce one line between them.
#[repr(align(128))]
struct Stripe([AtomicU64; COUNTS]);

/// Counters striped by thread: an increment touches the current thread's stripe only.
pub(crate) struct Counters {
    stripes: Box<[Stripe]>,
}

fn stripe_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    INDEX.with(|i| {
        let mut v = i.get();
        if v == usize::MAX {
            v = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
            i.set(v);
        }
        v
    })
}

impl Counters {
    pub(crate) fn new() -> Self {
        Self {
            stripes: (0..STRIPES)
                .map(|_| Stripe(std::array::from_fn(|_| AtomicU64::new(0))))
                .collect(),
        }
    }

    #[inline]
    pub(crate) fn add(&self, what: Count) {
        self.stripes[stripe_index()].0[what as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn get(&self, what: Count) -> u64 {
        self.stripes
            .iter()
            .map(|s| s.0[what as usize].load(Ordering::Relaxed))
            .sum()
    }
}

// ---------------------------------------------------------------------------------------------
// Errors shared by the waiters of one load

/// The inner service's error, shared by every caller that waited on the same load.
///
/// Its [`source`](Error::source) is the inner error, so `Rejected::find` and
/// `find_in_chain` see through it (an open breaker behind the cache still maps to 503).
#[derive(Clone)]
pub struct LoadError(pub(crate) Arc<BoxError>);

impl LoadError {
    /// The inner service's error.
    pub fn inner(&self) -> &(dyn Error + Send + Sync + 'static) {
        &**self.0
    }
}

impl fmt::Debug for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("LoadError").field(&self.0).finish()
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cache load failed: {}", self.0)
    }
}

impl Error for LoadError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&**self.0)
    }
}

// ---------------------------------------------------------------------------------------------
// Single flight

pub(crate) type Load<V> = Shared<BoxFuture<'static, Result<V, LoadError>>>;
type WeakLoad<V> = WeakShared<BoxFuture<'static, Result<V, LoadError>>>;
type FlightMap<K, V> = HashMap<ScopedKey<K>, (u64, WeakLoad<V>)>;

/// The loads in flight, one per key.
///
/// The map holds weak references: a load lives while a caller (or a background refresh task)
/// polls it. When the caller that started it is dropped, the others keep polling the same
/// shared future, so the load completes and no one fails because of the drop. When every
/// caller is gone, the load is dropped with them and the next caller starts a new one.
pub(crate) struct Flights<K, V> {
    map: Mutex<FlightMap<K, V>>,
    next: AtomicU64,
}

impl<K: Clone + Eq + Hash, V: Clone> Flights<K, V> {
    pub(crate) fn new() -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
        }
    }

    /// Joins the load in flight for `key`, or starts one with `start(id)`. Returns the load and
    /// whether this caller started it.
    pub(crate) fn join_or_start(
        &self,
        key: &ScopedKey<K>,
        start: impl FnOnce(u64) -> BoxFuture<'static, Result<V, LoadError>>,
    ) -> (Load<V>, bool) {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(load) = map.get(key).and_then(|(_, weak)| weak.upgrade()) {
            return (load, false);
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let load = start(id).shared();
        if let Some(weak) = load.downgrade() {
            map.insert(key.clone(), (id, weak));
        }
        (load, true)
    }

    /// The load `id` for `key` is done: later callers start afresh.
    pub(crate) fn finish(&self, key: &ScopedKey<K>, id: u64) {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if map.get(key).is_some_and(|(i, _)| *i == id) {
            map.remove(key);
        }
    }

    /// Detaches the load in flight for `key` (after a write): later callers start a new load
    /// rather than join one that may return the old value.
    pub(crate) fn forget(&self, key: &ScopedKey<K>) {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
    }

    /// Detaches every load in flight.
    pub(crate) fn forget_all(&self) {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

use futures_util::FutureExt as _;

// ---------------------------------------------------------------------------------------------
// Invalidation epochs

const SLOTS: usize = 4096;

/// Decides whether a finished load may store its value, so that a load that started before a
/// write or invalidation never puts the old value back.
///
/// A clock counts invalidations. A key's invalidation stamps the clock's new value into the
/// slot its hash picks (a fixed table: memory is bounded, and two keys sharing a slot only make
/// a load skip a store it could have made, never the reverse). A bulk invalidation (prefix,
/// tag, all) raises a floor. A load records the clock when it starts and stores only when
/// neither its slot nor the floor moved past that.
pub(crate) struct Epochs {
    clock: AtomicU64,
    floor: AtomicU64,
    slots: Box<[AtomicU64]>,
    hasher: std::collections::hash_map::RandomState,
}

impl Epochs {
    pub(crate) fn new() -> Self {
        Self {
            clock: AtomicU64::new(0),
            floor: AtomicU64::new(0),
            slots: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    pub(crate) fn now(&self) -> u64 {
        self.clock.load(Ordering::SeqCst)
    }

    fn slot<K: Hash>(&self, key: &ScopedKey<K>) -> &AtomicU64 {
        // Truncation is the point: the hash picks a slot.
        #[allow(clippy::cast_possible_truncation)]
        let i = self.hasher.hash_one(key) as usize % SLOTS;
        &self.slots[i]
    }

    pub(crate) fn mark<K: Hash>(&self, key: &ScopedKey<K>) {
        let e = self.clock.fetch_add(1, Ordering::SeqCst) + 1;
        self.slot(key).fetch_max(e, Ordering::SeqCst);
    }

    pub(crate) fn mark_all(&self) {
        let e = self.clock.fetch_add(1, Ordering::SeqCst) + 1;
        self.floor.fetch_max(e, Ordering::SeqCst);
    }

    pub(crate) fn may_store<K: Hash>(&self, key: &ScopedKey<K>, started: u64) -> bool {
        self.floor.load(Ordering::SeqCst) <= started
            && self.slot(key).load(Ordering::SeqCst) <= started
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_load_started_before_an_invalidation_may_not_store() {
        let e = Epochs::new();
        let k = ScopedKey::new(None, 1u64);
        let other = ScopedKey::new(None, 2u64);
        let started = e.now();
        assert!(e.may_store(&k, started));
        e.mark(&k);
        assert!(!e.may_store(&k, started));
        assert!(e.may_store(&k, e.now()));
        let started = e.now();
        e.mark_all();
        assert!(!e.may_store(&other, started));
        assert!(e.may_store(&other, e.now()));
    }

    #[test]
    fn counters_sum_their_stripes() {
        let c = Arc::new(Counters::new());
        std::thread::scope(|s| {
            for _ in 0..4 {
                let c = c.clone();
                s.spawn(move || {
                    for _ in 0..1000 {
                        c.add(Count::Hit);
                    }
                });
            }
        });
        assert_eq!(c.get(Count::Hit), 4000);
        assert_eq!(c.get(Count::Miss), 0);
    }
}
