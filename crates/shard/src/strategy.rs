//! How keys are placed on shards.
//!
//! | strategy | placement | keys moved from N to N + 1 shards | notes |
//! |---|---|---|---|
//! | [`Modulo`] | `hash mod N` | about N/(N+1): almost all | simplest; resizing reshuffles everything |
//! | [`Jump`] | jump consistent hash | 1/(N+1), the minimum | no memory; shards can only be added or removed at the end |
//! | [`Rendezvous`] | highest random weight, weighted | 1/(N+1) (weighted) | any shard can leave; O(N) per key |
//! | [`Ring`] | hash ring with virtual nodes, optional bounded load | about 1/(N+1) | caps each shard at ⌈(1+ε)·m/N⌉ of the m calls in flight |
//! | [`Range`] | sorted boundaries on the key's ordinal | only keys of the split range | keeps order: range scans hit few shards |
//! | [`Directory`](crate::Directory) | 16,384 slots → shard table | only the slots moved | Redis Cluster's; live migration with dual reads |
//! | [`Geo`] | region → group of shards, then jump hash within | within a group only | sharding for a billion users, by region |
//!
//! ```
//! use tower_patterns_shard::{Jump, Modulo, Route, Strategy};
//!
//! let jump = Jump::new(16);
//! let Route::To(shard) = jump.route(&"user-42") else { unreachable!() };
//! assert!(shard < 16);
//! assert_eq!(Modulo::new(16).shards(), 16);
//! ```

use std::{collections::HashMap, ops::Range as Span, sync::atomic::AtomicU64};

use tower_patterns_core::{ConfigError, rng::mix};

use crate::ShardKey;

/// Where a request goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// To this shard.
    To(usize),
    /// The key's slot is moving from `from` to `to`: read `to` first, fall back to `from`.
    Migrating {
        /// The new owner.
        to: usize,
        /// The old owner.
        from: usize,
    },
}

impl Route {
    /// The shard that owns the key now (the new one while migrating).
    pub const fn shard(self) -> usize {
        match self {
            Self::To(s) | Self::Migrating { to: s, .. } => s,
        }
    }
}

/// A placement of keys on shards.
pub trait Strategy: Send + Sync + 'static {
    /// The number of shards.
    fn shards(&self) -> usize;

    /// Where `key` goes.
    fn route<K: ShardKey + ?Sized>(&self, key: &K) -> Route;

    /// Where `key` goes given the calls in flight per shard (only [`Ring`] with bounded load
    /// looks at them).
    fn route_with_loads<K: ShardKey + ?Sized>(&self, key: &K, _loads: &[AtomicU64]) -> Route {
        self.route(key)
    }

    /// Whether [`Self::route_with_loads`] needs the loads (the router counts them only then).
    fn needs_loads(&self) -> bool {
        false
    }

    /// A short name of the strategy for reports (`modulo`, `jump`, `rendezvous`, `ring`,
    /// `range`, `directory`, `geo`); `custom` unless overridden.
    fn kind(&self) -> &'static str {
        "custom"
    }

    /// Slots being moved from one shard to another now (only a
    /// [`Directory`](crate::Directory) moves slots).
    fn migrating_slots(&self) -> usize {
        0
    }
}

fn check_shards(n: usize) -> Result<(), ConfigError> {
    if n == 0 || n > u16::MAX as usize {
        Err(ConfigError::new("shards", "must be in 1..=65535"))
    } else {
        Ok(())
    }
}

/// `hash mod N`: the textbook strategy. Resizing moves almost every key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Modulo {
    n: u64,
}

impl Modulo {
    /// Over `n` shards (at least 1).
    pub fn new(n: usize) -> Self {
        Self { n: n.max(1) as u64 }
    }
}

impl Strategy for Modulo {
    fn kind(&self) -> &'static str {
        "modulo"
    }

    fn shards(&self) -> usize {
        self.n as usize
    }

    #[inline]
    fn route<K: ShardKey + ?Sized>(&self, key: &K) -> Route {
        Route::To((key.hash64() % self.n) as usize)
    }
}

/// Jump consistent hash (Lamping and Veach, 2014).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Jump {
    n: i64,
}

impl Jump {
    /// Over `n` shards (at least 1).
    pub fn new(n: usize) -> Self {
        Self {
            n: n.clamp(1, i32::MAX as usize) as i64,
        }
    }
}

/// The jump consistent hash of `key` into `n` buckets.
#[inline]
pub fn jump_hash(mut key: u64, n: i64) -> usize {
    let (mut b, mut j) = (-1i64, 0i64);
    while j < n {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b.max(0) as usize
}

impl Strategy for Jump {
    fn kind(&self) -> &'static str {
        "jump"
    }

    fn shards(&self) -> usize {
        self.n as usize
    }

    #[inline]
    fn route<K: ShardKey + ?Sized>(&self, key: &K) -> Route {
        Route::To(jump_hash(key.hash64(), self.n))
    }
}

/// Weighted rendezvous hashing (highest random weight): each shard scores the key
/// `−weight / ln(u)` with `u` uniform from the key and the shard; the highest wins.
#[derive(Clone, Debug, PartialEq)]
pub struct Rendezvous {
    weights: Vec<f64>,
}

impl Rendezvous {
    /// Equal weights over `n` shards.
    pub fn new(n: usize) -> Self {
        Self {
            weights: vec![1.0; n.max(1)],
        }
    }

    /// One shard per weight (a shard of weight 2 gets twice the keys of one of weight 1).
    ///
    /// # Errors
    ///
    /// When there is no weight, or one is not positive.
    pub fn weighted(weights: Vec<f64>) -> Result<Self, ConfigError> {
        check_shards(weights.len())?;
        if weights.iter().any(|w| !(*w > 0.0 && w.is_finite())) {
            return Err(ConfigError::new("weights", "must be positive"));
        }
        Ok(Self { weights })
    }

    /// Shards in the order this key prefers them (for replicas: the first k).
    pub fn ranking<K: ShardKey + ?Sized>(&self, key: &K) -> Vec<usize> {
        let h = key.hash64();
        let mut scored: Vec<(f64, usize)> = (0..self.weights.len())
            .map(|s| (self.score(h, s), s))
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        scored.into_iter().map(|(_, s)| s).collect()
    }

    #[inline]
    fn score(&self, hash: u64, shard: usize) -> f64 {
        let bits = mix(hash ^ mix(shard as u64 + 1));
        let u = ((bits >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        -self.weights[shard] / u.ln()
    }
}

impl Strategy for Rendezvous {
    fn kind(&self) -> &'static str {
        "rendezvous"
    }

    fn shards(&self) -> usize {
        self.weights.len()
    }

    fn route<K: ShardKey + ?Sized>(&self, key: &K) -> Route {
        let h = key.hash64();
        let best = (0..self.weights.len())
            .map(|s| (self.score(h, s), s))
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map_or(0, |(_, s)| s);
        Route::To(best)
    }
}

/// A consistent-hash ring with virtual nodes, and optionally bounded load (Mirrokni,
/// Thorup and Zadimoghaddam; HAProxy's `hash-balance-factor`): a shard with more than
/// ⌈(1+ε)·(m+1)/N⌉ of the m calls in flight is skipped for the next one on the ring.
#[derive(Clone, Debug, PartialEq)]
pub struct Ring {
    points: Vec<(u64, u16)>,
    n: usize,
    epsilon: Option<f64>,
}

impl Ring {
    /// `n` shards with `vnodes` points each (100 to 200 is usual).
    ///
    /// # Errors
    ///
    /// When `n` or `vnodes` is 0.
    pub fn new(n: usize, vnodes: usize) -> Result<Self, ConfigError> {
        check_shards(n)?;
        if vnodes == 0 {
            return Err(ConfigError::new("vnodes", "must be at least 1"));
        }
        let mut points: Vec<(u64, u16)> = (0..n)
            .flat_map(|s| {
                (0..vnodes).map(move |v| {
                    let label = format!("shard-{s}-vnode-{v}");
                    (crate::key::stable_hash(label.as_bytes()), s as u16)
                })
            })
            .collect();
        points.sort_unstable();
        Ok(Self {
            points,
            n,
            epsilon: None,
        })
    }

    /// Bounds each shard's share of calls in flight to `(1 + epsilon)` times the mean.
    ///
    /// # Errors
    ///
    /// When `epsilon` is not positive.
    pub fn bounded_load(mut self, epsilon: f64) -> Result<Self, ConfigError> {
        if !(epsilon > 0.0 && epsilon.is_finite()) {
            return Err(ConfigError::new("epsilon", "must be positive"));
        }
        self.epsilon = Some(epsilon);
        Ok(self)
    }

    #[inline]
    fn start(&self, hash: u64) -> usize {
        let i = self.points.partition_point(|(p, _)| *p < hash);
        if i == self.points.len() { 0 } else { i }
    }
}

impl Strategy for Ring {
    fn kind(&self) -> &'static str {
        "ring"
    }

    fn shards(&self) -> usize {
        self.n
    }

    #[inline]
    fn route<K: ShardKey + ?Sized>(&self, key: &K) -> Route {
        Route::To(self.points[self.start(key.hash64())].1 as usize)
    }

    fn route_with_loads<K: ShardKey + ?Sized>(&self, key: &K, loads: &[AtomicU64]) -> Route {
        let Some(epsilon) = self.epsilon else {
            return self.route(key);
        };
        use std::sync::atomic::Ordering::Relaxed;
        let total: u64 = loads.iter().map(|l| l.load(Relaxed)).sum();
        let cap = ((1.0 + epsilon) * (total + 1) as f64 / self.n as f64).ceil() as u64;
        let start = self.start(key.hash64());
        let len = self.points.len();
        (0..len)
            .map(|i| self.points[(start + i) % len].1 as usize)
            .find(|s| loads.get(*s).is_none_or(|l| l.load(Relaxed) < cap))
            .map_or_else(|| self.route(key), Route::To)
    }

    fn needs_loads(&self) -> bool {
        self.epsilon.is_some()
    }
}

/// Sorted boundaries on the key's ordinal: shard `i` holds `[b(i−1), b(i))`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Range {
    boundaries: Vec<u64>,
}

impl Range {
    /// `boundaries` split the ordinals into `boundaries.len() + 1` shards.
    ///
    /// # Errors
    ///
    /// When the boundaries are not strictly increasing.
    pub fn new(boundaries: Vec<u64>) -> Result<Self, ConfigError> {
        if boundaries.windows(2).any(|w| w[0] >= w[1]) {
            return Err(ConfigError::new(
                "boundaries",
                "must be strictly increasing",
            ));
        }
        check_shards(boundaries.len() + 1)?;
        Ok(Self { boundaries })
    }
}

impl Strategy for Range {
    fn kind(&self) -> &'static str {
        "range"
    }

    fn shards(&self) -> usize {
        self.boundaries.len() + 1
    }

    #[inline]
    fn route<K: ShardKey + ?Sized>(&self, key: &K) -> Route {
        let o = key.ordinal();
        Route::To(self.boundaries.partition_point(|b| *b <= o))
    }
}

/// Region → a group of shards, then jump hash within the group; keys of unknown or missing
/// regions go to the fallback group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Geo {
    groups: HashMap<String, (usize, usize)>,
    fallback: (usize, usize),
    n: usize,
}

impl Geo {
    /// `groups` maps regions to consecutive shard ranges; `fallback` names one of them.
    ///
    /// # Errors
    ///
    /// When a group is empty, groups overlap, or the fallback is not a group.
    pub fn new(groups: Vec<(&str, Span<usize>)>, fallback: &str) -> Result<Self, ConfigError> {
        let mut map = HashMap::new();
        let mut ranges: Vec<Span<usize>> = Vec::new();
        for (region, span) in groups {
            if span.is_empty() {
                return Err(ConfigError::new("geo", format!("group {region} is empty")));
            }
            if ranges
                .iter()
                .any(|r| r.start < span.end && span.start < r.end)
            {
                return Err(ConfigError::new(
                    "geo",
                    format!("group {region} overlaps another"),
                ));
            }
            ranges.push(span.clone());
            map.insert(region.to_owned(), (span.start, span.len()));
        }
        let fallback = *map
            .get(fallback)
            .ok_or_else(|| ConfigError::new("geo", "the fallback must be one of the groups"))?;
        let n = ranges.iter().map(|r| r.end).max().unwrap_or(0);
        check_shards(n)?;
        Ok(Self {
            groups: map,
            fallback,
            n,
        })
    }
}

impl Strategy for Geo {
    fn kind(&self) -> &'static str {
        "geo"
    }

    fn shards(&self) -> usize {
        self.n
    }

    fn route<K: ShardKey + ?Sized>(&self, key: &K) -> Route {
        let (start, len) = key
            .region()
            .and_then(|r| self.groups.get(r))
            .copied()
            .unwrap_or(self.fallback);
        Route::To(start + jump_hash(key.hash64(), len as i64))
    }
}
