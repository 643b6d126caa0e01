//! Long-period quotas: so many requests per calendar day or month, reset at a known time.

use std::{
    fmt,
    future::Pending,
    hash::Hash,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tower_patterns_core::{
    BoxError, ConfigError, KeyExtractor,
    error::RateLimitInfo,
    keyed::{KeyBounds, KeyedMap},
};

#[cfg(doc)]
use tower_patterns_core::Rejected;

use crate::{
    handle::{KeyedRateLimitHandle, Limit},
    limiter::{DEFAULT_BOUNDS, Decision, HasHandle, Limiter, NoKey, PerRequest, UseDefault},
    period::{Period, Quota},
    stats::{Refusal, Stats},
};

/// The wall clock, as Tokio's clock advances from a fixed anchor: calendar windows follow
/// paused test time, and a wall-clock step (NTP) never moves a window backwards.
#[derive(Clone, Copy, Debug)]
struct WallClock {
    anchor_unix: Duration,
    anchor: tokio::time::Instant,
}

impl WallClock {
    fn unix_secs(&self) -> (u64, Duration) {
        let now = self.anchor_unix + self.anchor.elapsed();
        (now.as_secs(), now)
    }
}

/// One key's usage: the window index in the high 32 bits, the count in the low 32, so a
/// check is one compare-and-swap and a new window resets the count in the same step.
struct Usage(AtomicU64);

/// The count a packed usage word holds for `window` (0 when it is from another window).
const fn used_in(word: u64, window: u64) -> u64 {
    if word >> 32 == window & (u32::MAX as u64) {
        word & (u32::MAX as u64)
    } else {
        0
    }
}

/// Counts requests per key in calendar windows (day, month) and refuses them once the key's
/// quota is used up, until the window resets; build it with [`QuotaLimiter::builder`].
///
/// Refusals are [`Rejected`] of kind `QuotaExceeded` (HTTP 429) with `Retry-After` and
/// `RateLimit-Reset` at the window's end. A quota may differ per key (per plan); a key's
/// count is kept when its quota changes, so an upgrade mid-month adds to what is left.
///
/// The counts live in this process: a restart forgets them and instances do not share them.
/// Keys are held in a bounded map that must be large enough for every key in use (a key
/// evicted for room would start again from zero), so key on validated identities.
pub struct QuotaLimiter<X, Key, P = UseDefault> {
    name: Arc<str>,
    extractor: X,
    quota_for: P,
    default: Quota,
    usage: KeyedMap<Key, Arc<Usage>>,
    clock: WallClock,
    stats: Arc<Stats>,
}

impl<X, Key, P> fmt::Debug for QuotaLimiter<X, Key, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuotaLimiter")
            .field("name", &self.name)
            .field("default", &self.default)
            .finish_non_exhaustive()
    }
}

impl QuotaLimiter<NoKey, (), UseDefault> {
    /// A builder named `name` (for errors, logs, metrics and the handle); two parts are
    /// required: `.key(extractor)` and the default `.quota(quota)`.
    ///
    /// Defaults: at most 100,000 keys, no idle timeout, the wall clock's time.
    pub fn builder(name: impl Into<Arc<str>>) -> QuotaLimiterBuilder {
        QuotaLimiterBuilder {
            name: name.into(),
            extractor: NoKey,
            quota_for: UseDefault,
            default: NoQuota,
            bounds: DEFAULT_BOUNDS,
            now: None,
            per_request: false,
        }
    }
}

impl<X, Key, P> QuotaLimiter<X, Key, P>
where
    Key: Hash + Eq + Send + Sync + 'static,
{
    /// Takes one request from `key`'s quota.
    ///
    /// # Errors
    ///
    /// A [`Rejected`] of kind `QuotaExceeded` with the time to the window's end; or, when
    /// `quota` is not valid (see [`Quota::validate`]), the [`ConfigError`]: an invalid quota
    /// refuses every request (the HTTP mapping answers 500), it never admits one.
    pub fn check_key(&self, key: Key, quota: Quota) -> Result<RateLimitInfo, BoxError> {
        quota
            .validate()
            .map_err(|err| self.stats.refuse(Refusal::InvalidLimit, err))?;
        let (secs, now) = self.clock.unix_secs();
        let (window, end) = quota.period().window(secs);
        let window = window & u64::from(u32::MAX);
        let reset = Duration::from_secs(end).saturating_sub(now);
        // `get` borrows the key; `get_or_insert_with` (moka's `get_with`) boxes it on every call.
        let usage = match self.usage.get(&key) {
            Some(usage) => usage,
            None => self
                .usage
                .get_or_insert_with(key, || Arc::new(Usage(AtomicU64::new(0)))),
        };
        let limit = u64::from(quota.limit());
        let mut current = usage.0.load(Ordering::Acquire);
        loop {
            let used = used_in(current, window);
            if used >= limit {
                return Err(self.stats.spent(true, &self.name, reset, limit, reset));
            }
            let next = (window << 32) | (used + 1);
            match usage
                .0
                .compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    return Ok(RateLimitInfo {
                        limit,
                        remaining: limit - used - 1,
                        reset,
                    });
                }
                Err(seen) => current = seen,
            }
        }
    }

    /// The requests `key` has made in the current window of `period`.
    pub fn used<Q>(&self, key: &Q, period: Period) -> u64
    where
        Key: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (window, _) = period.window(self.clock.unix_secs().0);
        self.usage
            .get(key)
            .map_or(0, |usage| used_in(usage.0.load(Ordering::Acquire), window))
    }

    /// A handle on the limiter's state (keys held, default quota, rejections), for health
    /// endpoints and dashboards.
    pub fn handle(&self) -> KeyedRateLimitHandle {
        KeyedRateLimitHandle::new(
            self.name.clone(),
            Limit::Quota(self.default),
            Arc::new(self.usage.clone()),
            self.stats.clone(),
        )
    }
}

impl<X, Key, P> QuotaLimiter<X, Key, P> {
    /// The limiter's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl<X, Key, P> HasHandle for QuotaLimiter<X, Key, P>
where
    Key: Hash + Eq + Send + Sync + 'static,
{
    fn handle(&self) -> KeyedRateLimitHandle {
        Self::handle(self)
    }
}

impl<Req, X, P> Limiter<Req> for QuotaLimiter<X, X::Key, P>
where
    X: KeyExtractor<Req>,
    X::Key: Hash + Eq + Send + Sync + 'static,
    P: PerRequest<Req, Quota>,
{
    type Future = Pending<Result<Option<RateLimitInfo>, BoxError>>;

    fn check(&self, req: &Req) -> Decision<Self::Future> {
        let key = match self.extractor.extract(req) {
            Ok(key) => key,
            Err(err) => return Decision::Now(Err(self.stats.refuse(Refusal::BadKey, err))),
        };
        let quota = self.quota_for.choose(req).unwrap_or(self.default);
        Decision::Now(self.check_key(key, quota).map(Some))
    }
}

/// A quota builder's default quota before `quota(quota)` sets one.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoQuota;

/// Builds a [`QuotaLimiter`]: `QuotaLimiter::builder(name).key(extractor).quota(quota)`, then
/// the optional settings, then `build()` (which exists once the quota is set).
#[derive(Debug)]
pub struct QuotaLimiterBuilder<X = NoKey, P = UseDefault, Q = NoQuota> {
    name: Arc<str>,
    extractor: X,
    quota_for: P,
    default: Q,
    bounds: KeyBounds,
    now: Option<SystemTime>,
    /// Whether `quota_for` was set: then windows are known only per request.
    per_request: bool,
}

impl<P, Q> QuotaLimiterBuilder<NoKey, P, Q> {
    /// Takes each request's key with `extractor` (see [`tower_patterns_core::key`]): every
    /// key has its own count. Required.
    pub fn key<X>(self, extractor: X) -> QuotaLimiterBuilder<X, P, Q> {
        QuotaLimiterBuilder {
            name: self.name,
            extractor,
            quota_for: self.quota_for,
            default: self.default,
            bounds: self.bounds,
            now: self.now,
            per_request: self.per_request,
        }
    }
}

impl<X, P, Q> QuotaLimiterBuilder<X, P, Q> {
    /// The quota of keys `quota_for` says nothing about. Required.
    pub fn quota(self, quota: Quota) -> QuotaLimiterBuilder<X, P, Quota> {
        QuotaLimiterBuilder {
            name: self.name,
            extractor: self.extractor,
            quota_for: self.quota_for,
            default: quota,
            bounds: self.bounds,
            now: self.now,
            per_request: self.per_request,
        }
    }

    /// Chooses the quota per request (from the tenant's plan, say); `None` takes the default
    /// (see [`PerRequest`]).
    pub fn quota_for<F>(self, quota_for: F) -> QuotaLimiterBuilder<X, F, Q> {
        QuotaLimiterBuilder {
            name: self.name,
            extractor: self.extractor,
            quota_for,
            default: self.default,
            bounds: self.bounds,
            now: self.now,
            per_request: true,
        }
    }

    /// How many keys are held at once (more than the keys in use), and how long an unused
    /// one is kept (default 100,000 keys and no idle timeout, not [`KeyBounds::default`]).
    ///
    /// A count must outlive its window: `build()` refuses an idle time shorter than the
    /// default quota's longest window (a month counts 31 days), and any idle time once
    /// `quota_for` chooses quotas per request (their windows are not known before the
    /// requests come, and a longer one than the default's would be cut short). An idle timeout also adds
    /// moka's idle bookkeeping to the admitted path.
    #[must_use]
    pub const fn key_bounds(mut self, bounds: KeyBounds) -> Self {
        self.bounds = bounds;
        self
    }

    /// The wall-clock time the limiter starts at (default: now); for tests of window ends.
    #[must_use]
    pub const fn starting_at(mut self, now: SystemTime) -> Self {
        self.now = Some(now);
        self
    }
}

impl<X, P> QuotaLimiterBuilder<X, P, Quota> {
    /// Builds the limiter. Its key type is the extractor's, found where the limiter is used.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for an invalid default quota, a zero `max_keys`, an idle time
    /// shorter than a window, or a clock before 1970.
    pub fn build<Key>(self) -> Result<QuotaLimiter<X, Key, P>, ConfigError>
    where
        Key: Hash + Eq + Send + Sync + 'static,
    {
        self.default.validate()?;
        if self.per_request && self.bounds.idle.is_some() {
            return Err(ConfigError::new(
                "key_bounds",
                "an idle time with quotas chosen per request: a longer window than the default's would be cut short; use idle: None",
            ));
        }
        if let Some(idle) = self.bounds.idle
            && idle < self.default.period().longest()
        {
            return Err(ConfigError::new(
                "key_bounds",
                "idle time shorter than the quota's window: a dropped count would start again from zero",
            ));
        }
        let anchor_unix = self
            .now
            .unwrap_or_else(SystemTime::now)
            .duration_since(UNIX_EPOCH)
            .map_err(|_| ConfigError::new("starting_at", "is before 1970"))?;
        let usage = KeyedMap::builder().bounds(self.bounds).build()?;
        let stats = Arc::new(Stats::register(&self.name));
        Ok(QuotaLimiter {
            name: self.name,
            extractor: self.extractor,
            quota_for: self.quota_for,
            default: self.default,
            usage,
            clock: WallClock {
                anchor_unix,
                anchor: tokio::time::Instant::now(),
            },
            stats,
        })
    }
}
