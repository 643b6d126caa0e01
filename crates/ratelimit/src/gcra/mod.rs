//! In-process GCRA with a rate per key, on `governor`.

use std::{fmt, future::Pending, hash::Hash, sync::Arc, time::Duration};

use governor::state::InMemoryState;
use tower_patterns_core::{
    BoxError, ConfigError, KeyExtractor, error::RateLimitInfo, keyed::KeyBounds,
};

#[cfg(doc)]
use tower_patterns_core::Rejected;

use crate::{
    handle::{KeyedRateLimitHandle, Limit},
    limiter::{DEFAULT_BOUNDS, Decision, HasHandle, Limiter, NoKey, PerRequest, UseDefault},
    rate::Rate,
    stats::{Refusal, Stats},
};

mod cells;
mod clock;

use cells::Cells;
use clock::{Governor, TokioClock, check_fresh};

struct Cell {
    rate: Rate,
    limiter: Governor,
}

/// A keyed GCRA limiter in process, with a rate per key; build it with
/// [`GcraLimiter::builder`] and apply it with [`KeyedRateLimitLayer`](crate::KeyedRateLimitLayer).
///
/// Each key has its own `governor` limiter (one atomic word of state, lock-free), held in a
/// bounded map: at most `max_keys`, S3-FIFO eviction (keys seen once leave first), and with an
/// idle timeout core's [`KeyedMap`](tower_patterns_core::keyed::KeyedMap) instead, which drops keys idle that long. That
/// is what closes governor's gap of one quota for all keys: the rate is chosen per request
/// (`rate_for`), and a key whose rate changes (a plan upgrade) gets a fresh limiter at the new
/// rate at once.
///
/// A key dropped for idleness (when an idle timeout is set) comes back full, which is what it
/// would have been anyway: the idle timeout is never shorter than the refill time. A key
/// evicted for room also comes back full: key on validated identities (tenants from the
/// registry, verified API keys), not on strings clients invent.
///
/// The key type is the extractor's, found from the requests the limiter is used with.
pub struct GcraLimiter<X, Key, P = UseDefault> {
    name: Arc<str>,
    extractor: X,
    rate_for: P,
    default: Rate,
    cells: Cells<Key, Arc<Cell>>,
    clock: TokioClock,
    stats: Arc<Stats>,
}

impl<X, Key, P> fmt::Debug for GcraLimiter<X, Key, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GcraLimiter")
            .field("name", &self.name)
            .field("default", &self.default)
            .finish_non_exhaustive()
    }
}

impl GcraLimiter<NoKey, (), UseDefault> {
    /// A builder named `name` (for errors, logs, metrics and the handle); its key extractor
    /// is required: `.key(extractor)`.
    ///
    /// Defaults: 10 requests per second, at most 100,000 keys, no idle timeout.
    pub fn builder(name: impl Into<Arc<str>>) -> GcraLimiterBuilder {
        GcraLimiterBuilder {
            name: name.into(),
            extractor: NoKey,
            rate_for: UseDefault,
            default: Rate::per_second(10),
            bounds: DEFAULT_BOUNDS,
            slowest: None,
        }
    }
}

impl<X, Key, P> GcraLimiter<X, Key, P>
where
    Key: Hash + Eq + Clone + Send + Sync + 'static,
{
    /// Takes one request from `key`'s limit at `rate`.
    ///
    /// # Errors
    ///
    /// A [`Rejected`] of kind `RateLimited`, with the wait and the limit's state; or, when
    /// `rate` is not valid (see [`Rate::validate`]), the [`ConfigError`]: an invalid rate
    /// refuses every request (the HTTP mapping answers 500), it never admits one.
    pub fn check_key(&self, key: Key, rate: Rate) -> Result<RateLimitInfo, BoxError> {
        // `get` borrows the key; the replacing path (first contact, or a changed rate) is
        // serialized per key, so two first requests never count in two different cells. A
        // cell only ever holds a rate that was validated when the cell was made.
        let cell = match self.cells.get(&key) {
            Some(cell) if cell.rate == rate => cell,
            _ => {
                let quota = rate
                    .quota()
                    .map_err(|err| self.stats.refuse(Refusal::InvalidLimit, err))?;
                self.cells.get_or_replace_with(
                    key,
                    |cell| cell.rate == rate,
                    || {
                        Arc::new(Cell {
                            rate,
                            limiter: Governor::new(quota, InMemoryState::default(), self.clock),
                        })
                    },
                )
            }
        };
        let limit = u64::from(rate.burst_size());
        match check_fresh(&cell.limiter, &self.clock, rate.interval()) {
            Ok(snapshot) => {
                let remaining = u64::from(snapshot.remaining_burst_capacity());
                Ok(RateLimitInfo {
                    limit,
                    remaining,
                    // An upper bound: the spent allowance comes back one interval at a time.
                    reset: rate
                        .interval()
                        .saturating_mul((limit - remaining.min(limit)) as u32),
                })
            }
            Err(wait) => Err(self.stats.spent(
                false,
                &self.name,
                wait,
                limit,
                wait + rate.interval().saturating_mul(rate.burst_size() - 1),
            )),
        }
    }

    /// The number of keys held, after pending maintenance.
    pub fn keys(&self) -> u64 {
        self.cells.len()
    }

    /// Forgets `key`'s state: its next request starts with a full burst.
    pub fn reset<Q>(&self, key: &Q)
    where
        Key: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.cells.remove(key);
    }

    /// A handle on the limiter's state (keys held, default rate, rejections), for health
    /// endpoints and dashboards.
    pub fn handle(&self) -> KeyedRateLimitHandle {
        KeyedRateLimitHandle::new(
            self.name.clone(),
            Limit::Rate(self.default),
            self.cells.source(),
            self.stats.clone(),
        )
    }
}

impl<X, Key, P> GcraLimiter<X, Key, P> {
    /// The limiter's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl<X, Key, P> HasHandle for GcraLimiter<X, Key, P>
where
    Key: Hash + Eq + Clone + Send + Sync + 'static,
{
    fn handle(&self) -> KeyedRateLimitHandle {
        Self::handle(self)
    }
}

impl<Req, X, P> Limiter<Req> for GcraLimiter<X, X::Key, P>
where
    X: KeyExtractor<Req>,
    X::Key: Hash + Eq + Clone + Send + Sync + 'static,
    P: PerRequest<Req, Rate>,
{
    type Future = Pending<Result<Option<RateLimitInfo>, BoxError>>;

    fn check(&self, req: &Req) -> Decision<Self::Future> {
        let key = match self.extractor.extract(req) {
            Ok(key) => key,
            Err(err) => return Decision::Now(Err(self.stats.refuse(Refusal::BadKey, err))),
        };
        let rate = self.rate_for.choose(req).unwrap_or(self.default);
        Decision::Now(self.check_key(key, rate).map(Some))
    }
}

/// Builds a [`GcraLimiter`]: `GcraLimiter::builder(name).key(extractor)`, then the optional
/// settings, then `build()`.
#[derive(Debug)]
pub struct GcraLimiterBuilder<X = NoKey, P = UseDefault> {
    name: Arc<str>,
    extractor: X,
    rate_for: P,
    default: Rate,
    bounds: KeyBounds,
    slowest: Option<Duration>,
}

impl<P> GcraLimiterBuilder<NoKey, P> {
    /// Takes each request's key with `extractor` (a tenant, an API key, a client address;
    /// see [`tower_patterns_core::key`]): every key has its own limit. Required.
    pub fn key<X>(self, extractor: X) -> GcraLimiterBuilder<X, P> {
        GcraLimiterBuilder {
            name: self.name,
            extractor,
            rate_for: self.rate_for,
            default: self.default,
            bounds: self.bounds,
            slowest: self.slowest,
        }
    }
}

impl<X, P> GcraLimiterBuilder<X, P> {
    /// The rate of keys `rate_for` says nothing about (default 10 per second).
    #[must_use]
    pub const fn rate(mut self, rate: Rate) -> Self {
        self.default = rate;
        self
    }

    /// Chooses the rate per request, for example from the tenant's plan in the request
    /// extensions; `None` takes the default (see [`PerRequest`]).
    ///
    /// `slowest_refill` is the longest refill time of any rate it returns; idle keys are kept
    /// at least that long, so dropping them never hands out an early burst.
    pub fn rate_for<F>(self, rate_for: F, slowest_refill: Duration) -> GcraLimiterBuilder<X, F> {
        GcraLimiterBuilder {
            name: self.name,
            extractor: self.extractor,
            rate_for,
            default: self.default,
            bounds: self.bounds,
            slowest: Some(slowest_refill),
        }
    }

    /// How many keys are held at once, and how long an unused one is kept (default 100,000
    /// keys and no idle timeout, not [`KeyBounds::default`]).
    ///
    /// The idle time is never less than the refill time of the slowest rate, so a dropped key
    /// comes back as full as it would have been. No idle timeout is the default: `max_keys`
    /// bounds the memory either way, and an idle timeout moves the keys into moka, whose
    /// idle bookkeeping and read log allocate on the admitted path, where without it nothing
    /// does (tested).
    #[must_use]
    pub const fn key_bounds(mut self, bounds: KeyBounds) -> Self {
        self.bounds = bounds;
        self
    }

    /// The idle timeout the key map gets: the one asked for, raised to the longest refill of
    /// any rate, or none.
    fn effective_idle(&self) -> Option<Duration> {
        let floor = self.default.refill().max(self.slowest.unwrap_or_default());
        self.bounds.idle.map(|idle| idle.max(floor))
    }

    /// Builds the limiter. Its key type is the extractor's, found where the limiter is used.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for an invalid rate or a zero `max_keys`.
    pub fn build<Key>(self) -> Result<GcraLimiter<X, Key, P>, ConfigError>
    where
        Key: Hash + Eq + Clone + Send + Sync + 'static,
    {
        self.default.validate()?;
        let cells = Cells::new(self.bounds.max_keys, self.effective_idle())?;
        let stats = Arc::new(Stats::register(&self.name));
        Ok(GcraLimiter {
            name: self.name,
            extractor: self.extractor,
            rate_for: self.rate_for,
            default: self.default,
            cells,
            clock: TokioClock {
                base: tokio::time::Instant::now(),
            },
            stats,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idle(secs: u64) -> KeyBounds {
        KeyBounds {
            idle: Some(Duration::from_secs(secs)),
            ..DEFAULT_BOUNDS
        }
    }

    #[test]
    fn idle_keys_are_kept_at_least_as_long_as_the_slowest_refill() {
        let builder = GcraLimiter::builder("idle")
            .key(())
            .rate(Rate::per_minute(2));
        assert_eq!(builder.effective_idle(), None, "off by default");
        let builder = builder.key_bounds(idle(1));
        assert_eq!(
            builder.effective_idle(),
            Some(Duration::from_secs(60)),
            "raised to the default rate's refill"
        );
        let builder = builder.key_bounds(idle(600));
        assert_eq!(builder.effective_idle(), Some(Duration::from_secs(600)));
        let builder = builder
            .key_bounds(idle(1))
            .rate_for(|_: &()| None::<Rate>, Duration::from_secs(3600));
        assert_eq!(
            builder.effective_idle(),
            Some(Duration::from_secs(3600)),
            "raised to the slowest per-request rate's refill"
        );
    }

    #[test]
    fn a_limiter_names_itself_and_its_default() {
        let limiter: GcraLimiter<(), u32> = GcraLimiter::builder("api").key(()).build().unwrap();
        assert_eq!(limiter.name(), "api");
        let debug = format!("{limiter:?}");
        assert!(
            debug.starts_with("GcraLimiter { name: \"api\", default: Rate"),
            "{debug}"
        );
    }
}
