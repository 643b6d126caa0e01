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
    BoxError, ConfigError, KeyExtractor, Rejected, RejectionKind, error::RateLimitInfo,
    keyed::KeyedMap,
};

use crate::{Decision, Limiter};

/// The window of a [`Quota`]; calendar windows are in UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Period {
    /// A UTC calendar day, reset at midnight.
    Day,
    /// A UTC calendar month, reset at midnight on the first.
    Month,
    /// Fixed windows of this length, aligned to the Unix epoch (at least one second).
    Every(Duration),
}

impl Period {
    /// The index of the window holding `unix_secs`, and the Unix second it ends at.
    pub fn window(self, unix_secs: u64) -> (u64, u64) {
        match self {
            Self::Day => {
                let day = unix_secs / 86_400;
                (day, (day + 1) * 86_400)
            }
            Self::Month => {
                let (y, m, _) = civil_from_days((unix_secs / 86_400) as i64);
                let index = (y - 1970) * 12 + (m as i64 - 1);
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                let end = days_from_civil(ny, nm, 1) as u64 * 86_400;
                (index as u64, end)
            }
            Self::Every(len) => {
                let len = len.as_secs().max(1);
                let index = unix_secs / len;
                (index, (index + 1) * len)
            }
        }
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// An allowance of `limit` requests per [`Period`].
///
/// A quota is a plain value and may be invalid (a limit of 0, a window under a second):
/// [`Quota::validate`] says so, the builder refuses an invalid default, and a limiter given an
/// invalid quota for a request (by `quota_for`) refuses that request with the
/// [`ConfigError`] instead of admitting it.
///
/// ```
/// use tower_patterns_ratelimit::{Period, Quota};
///
/// let free = Quota::new(10_000, Period::Month);
/// assert_eq!(free.limit(), 10_000);
/// assert!(Quota::new(0, Period::Day).validate().is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Quota {
    limit: u32,
    period: Period,
}

impl Quota {
    /// `limit` requests per `period`.
    pub const fn new(limit: u32, period: Period) -> Self {
        Self { limit, period }
    }

    /// The requests allowed per window.
    pub const fn limit(&self) -> u32 {
        self.limit
    }

    /// The window.
    pub const fn period(&self) -> Period {
        self.period
    }

    /// Checks the quota: at least one request, windows of at least a second.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.limit == 0 {
            return Err(ConfigError::new("quota", "must allow at least 1 request"));
        }
        if let Period::Every(len) = self.period
            && len.as_secs() == 0
        {
            return Err(ConfigError::new("quota", "window shorter than a second"));
        }
        Ok(())
    }
}

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

/// Chooses the quota of a request's key; `None` takes the default. See
/// [`QuotaLimiterBuilder::quota_for`].
pub trait QuotaFor<Req> {
    /// The quota for `req`, or `None` for the default.
    fn quota_for(&self, req: &Req) -> Option<Quota>;
}

/// Every key gets the default quota.
#[derive(Clone, Copy, Debug, Default)]
pub struct DefaultQuota;

impl<Req> QuotaFor<Req> for DefaultQuota {
    fn quota_for(&self, _: &Req) -> Option<Quota> {
        None
    }
}

impl<Req, F> QuotaFor<Req> for F
where
    F: Fn(&Req) -> Option<Quota>,
{
    fn quota_for(&self, req: &Req) -> Option<Quota> {
        self(req)
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
pub struct QuotaLimiter<X, Key, P = DefaultQuota> {
    name: Arc<str>,
    extractor: X,
    quota_for: P,
    default: Quota,
    usage: KeyedMap<Key, Arc<Usage>>,
    clock: WallClock,
}

impl<X, Key, P> fmt::Debug for QuotaLimiter<X, Key, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuotaLimiter")
            .field("name", &self.name)
            .field("default", &self.default)
            .finish_non_exhaustive()
    }
}

impl<X> QuotaLimiter<X, (), DefaultQuota> {
    /// A builder named `name` that keys requests with `extractor`, with the default quota.
    pub fn builder(
        name: impl Into<Arc<str>>,
        extractor: X,
        default: Quota,
    ) -> QuotaLimiterBuilder<X, DefaultQuota> {
        QuotaLimiterBuilder {
            name: name.into(),
            extractor,
            quota_for: DefaultQuota,
            default,
            max_keys: 100_000,
            now: None,
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
        quota.validate()?;
        let (secs, now) = self.clock.unix_secs();
        let (window, end) = quota.period.window(secs);
        let window = window & u64::from(u32::MAX);
        let reset = Duration::from_secs(end).saturating_sub(now);
        // `get` borrows the key; `get_or_insert_with` (moka's `get_with`) boxes it on every call.
        let usage = match self.usage.get(&key) {
            Some(usage) => usage,
            None => self
                .usage
                .get_or_insert_with(key, || Arc::new(Usage(AtomicU64::new(0)))),
        };
        let limit = u64::from(quota.limit);
        let mut current = usage.0.load(Ordering::Acquire);
        loop {
            let used = used_in(current, window);
            if used >= limit {
                return Err(Rejected::new(RejectionKind::QuotaExceeded)
                    .with_name(self.name.clone())
                    .with_retry_after(reset)
                    .with_limit(RateLimitInfo {
                        limit,
                        remaining: 0,
                        reset,
                    })
                    .into());
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
}

impl<Req, X, P> Limiter<Req> for QuotaLimiter<X, X::Key, P>
where
    X: KeyExtractor<Req>,
    X::Key: Hash + Eq + Send + Sync + 'static,
    P: QuotaFor<Req>,
{
    type Future = Pending<Result<Option<RateLimitInfo>, BoxError>>;

    fn check(&self, req: &Req) -> Decision<Self::Future> {
        let key = match self.extractor.extract(req) {
            Ok(key) => key,
            Err(err) => return Decision::Now(Err(err.into())),
        };
        let quota = self.quota_for.quota_for(req).unwrap_or(self.default);
        Decision::Now(self.check_key(key, quota).map(Some))
    }
}

/// Builds a [`QuotaLimiter`].
#[derive(Debug)]
pub struct QuotaLimiterBuilder<X, P> {
    name: Arc<str>,
    extractor: X,
    quota_for: P,
    default: Quota,
    max_keys: u64,
    now: Option<SystemTime>,
}

impl<X, P> QuotaLimiterBuilder<X, P> {
    /// Chooses the quota per request (from the tenant's plan, say); `None` takes the default.
    pub fn quota_for<F>(self, quota_for: F) -> QuotaLimiterBuilder<X, F> {
        QuotaLimiterBuilder {
            name: self.name,
            extractor: self.extractor,
            quota_for,
            default: self.default,
            max_keys: self.max_keys,
            now: self.now,
        }
    }

    /// The most keys held at once (default 100,000); more than the keys in use.
    #[must_use]
    pub const fn max_keys(mut self, max_keys: u64) -> Self {
        self.max_keys = max_keys;
        self
    }

    /// The wall-clock time the limiter starts at (default: now); for tests of window ends.
    #[must_use]
    pub const fn starting_at(mut self, now: SystemTime) -> Self {
        self.now = Some(now);
        self
    }

    /// Builds the limiter.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for an invalid default quota, a zero `max_keys`, or a clock before
    /// 1970.
    pub fn build<Key>(self) -> Result<QuotaLimiter<X, Key, P>, ConfigError>
    where
        Key: Hash + Eq + Send + Sync + 'static,
    {
        self.default.validate()?;
        let anchor_unix = self
            .now
            .unwrap_or_else(SystemTime::now)
            .duration_since(UNIX_EPOCH)
            .map_err(|_| ConfigError::new("starting_at", "is before 1970"))?;
        // No idle timeout: a count must outlive its window, and moka's idle bookkeeping would
        // allocate on the admitted path.
        let usage = KeyedMap::builder()
            .max_entries(self.max_keys)
            .no_idle_timeout()
            .build()?;
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
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_arithmetic_round_trips() {
        for days in [-1, 0, 59, 60, 365, 10_957, 11_016, 20_000, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(days_from_civil(2026, 11, 28), 20_785);
    }

    #[test]
    fn month_windows_end_on_the_first_of_the_next_month() {
        let jan31 = days_from_civil(2028, 1, 31) as u64 * 86_400 + 86_399;
        let (jan, end) = Period::Month.window(jan31);
        assert_eq!(end, days_from_civil(2028, 2, 1) as u64 * 86_400);
        let (feb, feb_end) = Period::Month.window(end);
        assert_eq!(feb, jan + 1);
        // 2028 is a leap year.
        assert_eq!(feb_end - end, 29 * 86_400);
        let (dec, dec_end) = Period::Month.window(days_from_civil(2027, 12, 15) as u64 * 86_400);
        assert_eq!(dec + 1, jan);
        assert_eq!(dec_end, days_from_civil(2028, 1, 1) as u64 * 86_400);
    }

    proptest::proptest! {
        #[test]
        fn every_second_lies_in_its_window(secs in 0u64..8_000_000_000) {
            for period in [Period::Day, Period::Month, Period::Every(Duration::from_secs(3600))] {
                let (index, end) = period.window(secs);
                proptest::prop_assert!(end > secs);
                // The last second of the window is in it, the end is in the next one.
                proptest::prop_assert_eq!(period.window(end - 1).0, index);
                proptest::prop_assert_eq!(period.window(end).0, index + 1);
            }
        }
    }
}
