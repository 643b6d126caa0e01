//! In-process GCRA with a rate per key, on `governor`.

use std::{fmt, future::Pending, hash::Hash, num::NonZeroU32, sync::Arc, time::Duration};

use governor::{
    clock::Clock,
    middleware::{StateInformationMiddleware, StateSnapshot},
    nanos::Nanos,
    state::{InMemoryState, NotKeyed},
};
use tower_patterns_core::{
    BoxError, ConfigError, KeyExtractor, Rejected, RejectionKind, error::RateLimitInfo,
    keyed::KeyedMap,
};

use crate::{Decision, Limiter};

/// A GCRA rate: a burst of `burst` requests, refilled one every `interval`.
///
/// `Rate::per_second(10)` allows 10 at once and then one every 100 ms; `.burst(1)` makes it
/// smooth (no two requests closer than 100 ms).
///
/// A rate is a plain value and may be invalid (a burst of 0, an interval below 1 ns, a refill
/// longer than [`Rate::MAX_REFILL`]): [`Rate::validate`] says so, builders refuse an invalid
/// default, and a limiter given an invalid rate for a request (by `rate_for`) refuses that
/// request with the [`ConfigError`] instead of admitting it.
///
/// ```
/// use std::time::Duration;
/// use tower_patterns_ratelimit::Rate;
///
/// let rate = Rate::per_minute(60).burst(5);
/// assert_eq!(rate.interval(), Duration::from_secs(1));
/// assert_eq!(rate.burst_size(), 5);
/// assert!(Rate::per_second(0).validate().is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rate {
    burst: u32,
    interval: Duration,
}

impl Rate {
    /// The longest refill time (burst × interval) a valid rate may have: 100 years of 365
    /// days. Longer ones would overflow the limiters' nanosecond and microsecond clocks.
    pub const MAX_REFILL: Duration = Duration::from_secs(100 * 365 * 86_400);

    /// `n` per `period`, with a burst of `n`.
    ///
    /// The interval is `period / n`, rounded down to the nanosecond: `n = 0`, or a period
    /// shorter than `n` nanoseconds, gives an interval of zero, which is not a valid rate.
    pub const fn new(n: u32, period: Duration) -> Self {
        let interval = if n == 0 {
            Duration::ZERO
        } else {
            let nanos = period.as_nanos() / n as u128;
            Duration::from_nanos(if nanos > u64::MAX as u128 {
                u64::MAX
            } else {
                nanos as u64
            })
        };
        Self { burst: n, interval }
    }

    /// `n` per second, with a burst of `n`.
    pub const fn per_second(n: u32) -> Self {
        Self::new(n, Duration::from_secs(1))
    }

    /// `n` per minute, with a burst of `n`.
    pub const fn per_minute(n: u32) -> Self {
        Self::new(n, Duration::from_secs(60))
    }

    /// `n` per hour, with a burst of `n`.
    pub const fn per_hour(n: u32) -> Self {
        Self::new(n, Duration::from_secs(3600))
    }

    /// `n` per day as a GCRA (refilled evenly; for a calendar-day allowance that resets at
    /// midnight, see [`Quota`](crate::Quota)).
    pub const fn per_day(n: u32) -> Self {
        Self::new(n, Duration::from_secs(86_400))
    }

    /// Sets the burst: how many requests may arrive at once after a quiet spell.
    #[must_use]
    pub const fn burst(mut self, burst: u32) -> Self {
        self.burst = burst;
        self
    }

    /// The time one request's allowance takes to come back.
    pub const fn interval(&self) -> Duration {
        self.interval
    }

    /// The largest burst.
    pub const fn burst_size(&self) -> u32 {
        self.burst
    }

    /// The time an emptied limit takes to refill completely.
    pub fn refill(&self) -> Duration {
        self.interval.saturating_mul(self.burst)
    }

    /// Checks the rate: a burst of at least 1, an interval of at least 1 ns, and a refill time
    /// of at most [`Rate::MAX_REFILL`].
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.burst == 0 {
            return Err(ConfigError::new("rate", "must allow at least 1 request"));
        }
        if self.interval.is_zero() {
            return Err(ConfigError::new(
                "rate",
                "allows more than one request per nanosecond",
            ));
        }
        if self.interval.as_nanos() * u128::from(self.burst) > Self::MAX_REFILL.as_nanos() {
            return Err(ConfigError::new(
                "rate",
                "takes more than 100 years to refill",
            ));
        }
        Ok(())
    }

    /// governor's quota for a rate, or the reason it has none.
    fn quota(&self) -> Result<governor::Quota, ConfigError> {
        self.validate()?;
        match (
            NonZeroU32::new(self.burst),
            governor::Quota::with_period(self.interval),
        ) {
            (Some(burst), Some(quota)) => Ok(quota.allow_burst(burst)),
            // Not reached: `validate` refuses a zero burst and a zero interval.
            _ => Err(ConfigError::new("rate", "is not valid")),
        }
    }
}

/// Governor's clock on Tokio's: paused test time drives the limiter.
#[derive(Clone, Copy, Debug)]
struct TokioClock {
    base: tokio::time::Instant,
}

impl Clock for TokioClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from(tokio::time::Instant::now().saturating_duration_since(self.base))
    }
}

type Governor =
    governor::RateLimiter<NotKeyed, InMemoryState, TokioClock, StateInformationMiddleware>;

/// How many times [`check_fresh`] checks again after a refusal that a fresh clock reading
/// shows to be stale.
const STALE_RETRIES: u32 = 8;

/// One check of `limiter`, refused only when the wait is above zero on a fresh clock reading.
///
/// governor reads the clock once, before its compare-and-swap. A thread paused between the
/// two (preempted, say) judges its request at that past instant against a state that requests
/// arriving meanwhile have moved on, and is refused although the allowance is there now: seen
/// in a benchmark with 2 tasks (a burst of 4,000 at 1 ns refused, with a wait of 0). A stale
/// refusal is checked again with a new reading; a limit that is really spent still refuses, with
/// the wait measured from now.
fn check_fresh<C>(
    limiter: &governor::RateLimiter<NotKeyed, InMemoryState, C, StateInformationMiddleware>,
    clock: &C,
    interval: Duration,
) -> Result<StateSnapshot, Duration>
where
    C: Clock<Instant = Nanos>,
{
    for _ in 0..STALE_RETRIES {
        match limiter.check() {
            Ok(snapshot) => return Ok(snapshot),
            Err(not_until) => {
                let wait = not_until.wait_time_from(clock.now());
                if !wait.is_zero() {
                    return Err(wait);
                }
            }
        }
    }
    // Stale again and again: other requests keep taking the allowance as it comes back.
    Err(interval)
}

struct Cell {
    rate: Rate,
    limiter: Governor,
}

/// Chooses the rate of a request's key (from the tenant's plan, say); `None` takes the
/// limiter's default. See [`GcraLimiterBuilder::rate_for`].
pub trait RateFor<Req> {
    /// The rate for `req`, or `None` for the default.
    fn rate_for(&self, req: &Req) -> Option<Rate>;
}

/// Every key gets the default rate.
#[derive(Clone, Copy, Debug, Default)]
pub struct DefaultRate;

impl<Req> RateFor<Req> for DefaultRate {
    fn rate_for(&self, _: &Req) -> Option<Rate> {
        None
    }
}

impl<Req, F> RateFor<Req> for F
where
    F: Fn(&Req) -> Option<Rate>,
{
    fn rate_for(&self, req: &Req) -> Option<Rate> {
        self(req)
    }
}

/// A keyed GCRA limiter in process, with a rate per key; build it with
/// [`GcraLimiter::builder`] and apply it with [`RateLimitLayer`](crate::RateLimitLayer).
///
/// Each key has its own `governor` limiter (one atomic word of state, lock-free), held in a
/// bounded map ([`KeyedMap`]: at most `max_keys`, TinyLFU admission, idle keys dropped). That
/// is what closes governor's gap of one quota for all keys: the rate is chosen per request
/// (`rate_for`), and a key whose rate changes (a plan upgrade) gets a fresh limiter at the new
/// rate at once.
///
/// A key dropped for idleness (when an idle timeout is set) comes back full, which is what it
/// would have been anyway: the idle timeout is never shorter than the refill time. A key
/// evicted for room also comes back full: key on validated identities (tenants from the
/// registry, verified API keys), not on strings clients invent.
pub struct GcraLimiter<X, Key, P = DefaultRate> {
    name: Arc<str>,
    extractor: X,
    rate_for: P,
    default: Rate,
    cells: KeyedMap<Key, Arc<Cell>>,
    clock: TokioClock,
}

impl<X, Key, P> fmt::Debug for GcraLimiter<X, Key, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GcraLimiter")
            .field("name", &self.name)
            .field("default", &self.default)
            .finish_non_exhaustive()
    }
}

impl<X> GcraLimiter<X, (), DefaultRate> {
    /// A builder named `name` (for errors and logs) that keys requests with `extractor`.
    ///
    /// Defaults: 10 requests per second, at most 100,000 keys, no idle timeout.
    pub fn builder(name: impl Into<Arc<str>>, extractor: X) -> GcraLimiterBuilder<X, DefaultRate> {
        GcraLimiterBuilder {
            name: name.into(),
            extractor,
            rate_for: DefaultRate,
            default: Rate::per_second(10),
            max_keys: 100_000,
            idle_timeout: None,
            slowest: None,
        }
    }
}

impl<X, Key, P> GcraLimiter<X, Key, P>
where
    Key: Hash + Eq + Send + Sync + 'static,
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
                let quota = rate.quota()?;
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
        let limit = u64::from(rate.burst);
        match check_fresh(&cell.limiter, &self.clock, rate.interval) {
            Ok(snapshot) => {
                let remaining = u64::from(snapshot.remaining_burst_capacity());
                Ok(RateLimitInfo {
                    limit,
                    remaining,
                    // An upper bound: the spent allowance comes back one interval at a time.
                    reset: rate
                        .interval
                        .saturating_mul((limit - remaining.min(limit)) as u32),
                })
            }
            Err(wait) => Err(Rejected::new(RejectionKind::RateLimited)
                .with_name(self.name.clone())
                .with_retry_after(wait)
                .with_limit(RateLimitInfo {
                    limit,
                    remaining: 0,
                    reset: wait + rate.interval.saturating_mul(rate.burst - 1),
                })
                .into()),
        }
    }

    /// The number of keys held, after pending maintenance.
    pub fn keys(&self) -> u64 {
        self.cells.sync();
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

    /// The limiter's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl<Req, X, P> Limiter<Req> for GcraLimiter<X, X::Key, P>
where
    X: KeyExtractor<Req>,
    X::Key: Hash + Eq + Send + Sync + 'static,
    P: RateFor<Req>,
{
    type Future = Pending<Result<Option<RateLimitInfo>, BoxError>>;

    fn check(&self, req: &Req) -> Decision<Self::Future> {
        let key = match self.extractor.extract(req) {
            Ok(key) => key,
            Err(err) => return Decision::Now(Err(err.into())),
        };
        let rate = self.rate_for.rate_for(req).unwrap_or(self.default);
        Decision::Now(self.check_key(key, rate).map(Some))
    }
}

/// Builds a [`GcraLimiter`].
#[derive(Debug)]
pub struct GcraLimiterBuilder<X, P> {
    name: Arc<str>,
    extractor: X,
    rate_for: P,
    default: Rate,
    max_keys: u64,
    idle_timeout: Option<Duration>,
    slowest: Option<Duration>,
}

impl<X, P> GcraLimiterBuilder<X, P> {
    /// The rate of keys `rate_for` says nothing about (default 10 per second).
    #[must_use]
    pub const fn rate(mut self, rate: Rate) -> Self {
        self.default = rate;
        self
    }

    /// Chooses the rate per request, for example from the tenant's plan in the request
    /// extensions; `None` takes the default.
    ///
    /// `slowest_refill` is the longest refill time of any rate it returns; idle keys are kept
    /// at least that long, so dropping them never hands out an early burst.
    pub fn rate_for<F>(self, rate_for: F, slowest_refill: Duration) -> GcraLimiterBuilder<X, F> {
        GcraLimiterBuilder {
            name: self.name,
            extractor: self.extractor,
            rate_for,
            default: self.default,
            max_keys: self.max_keys,
            idle_timeout: self.idle_timeout,
            slowest: Some(slowest_refill),
        }
    }

    /// The most keys held at once (default 100,000).
    #[must_use]
    pub const fn max_keys(mut self, max_keys: u64) -> Self {
        self.max_keys = max_keys;
        self
    }

    /// Drops keys unused for this long (never less than the refill time of the slowest rate,
    /// so a dropped key comes back as full as it would have been).
    ///
    /// Off by default: `max_keys` bounds the memory either way, and moka's idle bookkeeping
    /// adds allocations to the admitted path, where without it the only one is moka's
    /// read-log upkeep (at most 1 in 60 admitted requests, tested).
    #[must_use]
    pub const fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle_timeout = Some(idle);
        self
    }

    /// The idle timeout the key map gets: the one asked for, raised to the longest refill of
    /// any rate, or none.
    fn effective_idle(&self) -> Option<Duration> {
        let floor = self.default.refill().max(self.slowest.unwrap_or_default());
        self.idle_timeout.map(|idle| idle.max(floor))
    }

    /// Builds the limiter.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for an invalid rate or a zero `max_keys`.
    pub fn build<Key>(self) -> Result<GcraLimiter<X, Key, P>, ConfigError>
    where
        Key: Hash + Eq + Send + Sync + 'static,
    {
        self.default.validate()?;
        let cells = KeyedMap::builder().max_entries(self.max_keys);
        let cells = match self.effective_idle() {
            Some(idle) => cells.idle_timeout(idle),
            None => cells.no_idle_timeout(),
        }
        .build()?;
        Ok(GcraLimiter {
            name: self.name,
            extractor: self.extractor,
            rate_for: self.rate_for,
            default: self.default,
            cells,
            clock: TokioClock {
                base: tokio::time::Instant::now(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A clock that reads out a script, one instant per reading, repeating the last.
    #[derive(Clone)]
    struct Script(Arc<Mutex<Vec<u64>>>);

    impl Script {
        fn then(&self, nanos: &[u64]) {
            let mut script = self.0.lock().unwrap();
            script.clear();
            script.extend(nanos.iter().rev());
        }
    }

    impl Clock for Script {
        type Instant = Nanos;

        fn now(&self) -> Nanos {
            let mut script = self.0.lock().unwrap();
            let now = if script.len() > 1 {
                script.pop()
            } else {
                script.last().copied()
            };
            Nanos::from(now.unwrap_or(0))
        }
    }

    type Limiter =
        governor::RateLimiter<NotKeyed, InMemoryState, Script, StateInformationMiddleware>;

    /// A limiter of 2 per 2 µs whose burst two requests at 10 µs have spent (1 µs apart).
    fn spent() -> (Script, Limiter) {
        let clock = Script(Arc::default());
        clock.then(&[0]);
        let rate = Rate::new(2, Duration::from_micros(2));
        let limiter = Limiter::new(
            rate.quota().unwrap(),
            InMemoryState::default(),
            clock.clone(),
        );
        clock.then(&[10_000]);
        assert!(check_fresh(&limiter, &clock, INTERVAL).is_ok());
        assert!(check_fresh(&limiter, &clock, INTERVAL).is_ok());
        (clock, limiter)
    }

    const INTERVAL: Duration = Duration::from_micros(1);

    #[test]
    fn idle_keys_are_kept_at_least_as_long_as_the_slowest_refill() {
        let builder = GcraLimiter::builder("idle", ()).rate(Rate::per_minute(2));
        assert_eq!(builder.effective_idle(), None, "off by default");
        let builder = builder.idle_timeout(Duration::from_secs(1));
        assert_eq!(
            builder.effective_idle(),
            Some(Duration::from_secs(60)),
            "raised to the default rate's refill"
        );
        let builder = builder.idle_timeout(Duration::from_secs(600));
        assert_eq!(builder.effective_idle(), Some(Duration::from_secs(600)));
        let builder = builder
            .idle_timeout(Duration::from_secs(1))
            .rate_for(|_: &()| None::<Rate>, Duration::from_secs(3600));
        assert_eq!(
            builder.effective_idle(),
            Some(Duration::from_secs(3600)),
            "raised to the slowest per-request rate's refill"
        );
    }

    #[test]
    fn a_limiter_names_itself_and_its_default() {
        let limiter = GcraLimiter::builder("api", ()).build::<u32>().unwrap();
        assert_eq!(limiter.name(), "api");
        let debug = format!("{limiter:?}");
        assert!(
            debug.starts_with("GcraLimiter { name: \"api\", default: Rate"),
            "{debug}"
        );
    }

    #[test]
    fn a_request_judged_on_a_stale_reading_is_checked_again() {
        let (clock, limiter) = spent();
        // A thread that read 5 µs, then was paused until 50 µs before its compare-and-swap:
        // governor refuses it, yet the allowance is back by now.
        clock.then(&[5_000, 50_000]);
        assert!(limiter.check().is_err(), "governor alone refuses it");
        clock.then(&[5_000, 50_000]);
        assert!(check_fresh(&limiter, &clock, INTERVAL).is_ok());
    }

    #[test]
    fn a_spent_limit_still_refuses_with_the_wait_from_now() {
        let (clock, limiter) = spent();
        // Read at 10 µs, checked at 10.4 µs: the next allowance comes at 11 µs.
        clock.then(&[10_000, 10_400]);
        assert_eq!(
            check_fresh(&limiter, &clock, INTERVAL),
            Err(Duration::from_nanos(600))
        );
    }

    #[test]
    fn a_reading_stale_every_time_ends_in_a_refusal() {
        let (clock, limiter) = spent();
        let mut script = Vec::new();
        for _ in 0..STALE_RETRIES {
            script.extend([5_000, 50_000]);
        }
        script.push(5_000);
        clock.then(&script);
        assert_eq!(check_fresh(&limiter, &clock, INTERVAL), Err(INTERVAL));
    }
}
