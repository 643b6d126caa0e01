//! A GCRA limiter over Redis, so many instances share one budget per key.
//!
//! One Lua script does the whole check atomically on the Redis server, with the server's clock
//! (`TIME`), so instances with skewed clocks still agree: it reads the key's theoretical
//! arrival time, refuses if the request would come before `tat - burst * interval`, and
//! otherwise stores the new arrival time with an expiry of exactly the time the limit needs to
//! refill (idle keys cost nothing). One round trip per request.
//!
//! Intervals are sent to Redis in whole microseconds, rounded up: a rate whose interval is not
//! a whole number of microseconds is enforced slightly stricter, never looser. An invalid rate
//! ([`Rate::validate`]) is refused before Redis is asked.
//!
//! When Redis cannot be reached within the timeout, the limiter does what it was built to do:
//! [`Unavailable::FailOpen`] admits the request (availability first; the default), and
//! [`Unavailable::FailClosed`] refuses it with a `Rejected` of kind `LoadShed` (HTTP 503).
//! Either way it logs a warning, counts the failure and reports [`Health::Degraded`] until
//! Redis answers again. After a failure it does not call Redis for a short pause
//! (`fail_fast_for`), so a dead Redis does not add its timeout to every request.
//!
//! Metrics: `tower_patterns_ratelimit_rejected_total{name, kind}` (as every limiter),
//! `tower_patterns_ratelimit_unavailable_total{name}` (checks that could not reach Redis) and
//! the gauge `tower_patterns_ratelimit_degraded{name}` (1 from a failure until Redis answers
//! again). The handle ([`KeyedRateLimitHandle`]) reports the
//! same: health `degraded` and state `unreachable` meanwhile.
//!
//! ```no_run
//! use tower_patterns_core::{key::ExtensionKey, observe::StateHandle, tenant::TenantId};
//! use tower_patterns_ratelimit::{KeyedRateLimitLayer, Rate, redis::{RedisLimiter, Unavailable}};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let limiter = RedisLimiter::builder("api")
//!     .key(ExtensionKey::<TenantId>::new())
//!     .url("redis://127.0.0.1:6379")
//!     .rate(Rate::per_second(100))
//!     .on_unavailable(Unavailable::FailClosed)
//!     .build()?;
//! let layer = KeyedRateLimitLayer::new(limiter);
//! assert_eq!(layer.handle().pattern(), "ratelimit");
//! # Ok(()) }
//! ```

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use metrics::{Counter, Gauge};
use redis::aio::ConnectionManager;
use tower_patterns_core::{
    BoxError, ConfigError, KeyExtractor, Rejected, RejectionKind,
    error::RateLimitInfo,
    metric_name,
    observe::{Health, labels},
};

use crate::{
    handle::{KeyedRateLimitHandle, Limit, Source},
    limiter::{Decision, HasHandle, Limiter, NoKey, PerRequest, UseDefault},
    rate::Rate,
    stats::{Refusal, Stats},
};

/// GCRA in one step. KEYS[1]: the key. ARGV: burst, interval in microseconds.
/// Returns {allowed (0/1), remaining, retry after µs, reset µs}.
const GCRA: &str = r"
local burst = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tau = burst * interval
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - tau
if now < allow_at then
  return {0, 0, allow_at - now, tat - now}
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil((new_tat - now) / 1000))
return {1, math.floor((now + tau - new_tat) / interval), 0, new_tat - now}
";

/// The script's answer: allowed (0/1), remaining, retry after µs, reset µs.
type Reply = (u8, u64, u64, u64);

/// What the limiter does when Redis cannot be reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Unavailable {
    /// Admit the request, unlimited (the default): an outage of the limiter is not an outage
    /// of the API.
    FailOpen,
    /// Refuse the request with a `Rejected` of kind `LoadShed` (HTTP 503): for limits that
    /// protect something more fragile than the API's availability (a paid upstream).
    FailClosed,
}

struct Shared {
    name: Arc<str>,
    conn: ConnectionManager,
    script: redis::Script,
    prefix: String,
    timeout: Duration,
    on_unavailable: Unavailable,
    fail_fast_for: Duration,
    /// Tokio-clock milliseconds (since `epoch`) until which Redis is not called.
    paused_until: AtomicU64,
    epoch: tokio::time::Instant,
    degraded: AtomicBool,
    failures: AtomicU64,
    stats: Arc<Stats>,
    unavailable_total: Counter,
    degraded_gauge: Gauge,
}

impl Shared {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn unavailable(&self, why: &dyn fmt::Display) -> Result<Option<RateLimitInfo>, BoxError> {
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.unavailable_total.increment(1);
        if !self.degraded.swap(true, Ordering::Relaxed) {
            self.degraded_gauge.set(1.0);
            tracing::warn!(target: "tower_patterns::ratelimit", limiter = %self.name, error = %why,
                on_unavailable = ?self.on_unavailable, "Redis unreachable");
        }
        match self.on_unavailable {
            Unavailable::FailOpen => Ok(None),
            Unavailable::FailClosed => Err(self.stats.refuse(
                Refusal::Unavailable,
                Rejected::new(RejectionKind::LoadShed)
                    .with_name(self.name.clone())
                    .with_retry_after(self.fail_fast_for),
            )),
        }
    }

    /// A call to Redis failed: leave it alone for `fail_fast_for`, then answer as configured.
    fn failed(&self, why: &dyn fmt::Display) -> Result<Option<RateLimitInfo>, BoxError> {
        self.paused_until.store(
            self.now_ms() + self.fail_fast_for.as_millis() as u64,
            Ordering::Relaxed,
        );
        self.unavailable(why)
    }

    async fn check(
        self: Arc<Self>,
        key: String,
        rate: Rate,
    ) -> Result<Option<RateLimitInfo>, BoxError> {
        // Before Redis, and never through `failed`: an invalid rate is refused, whether Redis
        // answers or not (a zero interval would otherwise admit every request, and a refill
        // beyond the script's exact range would make Redis fail and the limiter fail open).
        rate.validate()
            .map_err(|err| self.stats.refuse(Refusal::InvalidLimit, err))?;
        if self.now_ms() < self.paused_until.load(Ordering::Relaxed) {
            return self.unavailable(&"in the pause after a failure");
        }
        let mut conn = self.conn.clone();
        // Rounded up (stricter); `validate` bounds the refill far below 2^53 µs, where the
        // script's numbers (Lua doubles) stop being exact.
        let interval_us = rate.interval().as_nanos().div_ceil(1000) as u64;
        let mut invocation = self.script.key(&key);
        invocation.arg(rate.burst_size()).arg(interval_us);
        let reply: Result<redis::RedisResult<Reply>, _> =
            tokio::time::timeout(self.timeout, invocation.invoke_async(&mut conn)).await;
        let (allowed, remaining, retry_us, reset_us) = match reply {
            Ok(Ok(reply)) => reply,
            Ok(Err(err)) => return self.failed(&err),
            Err(_) => return self.failed(&"timed out"),
        };
        if self.degraded.swap(false, Ordering::Relaxed) {
            self.degraded_gauge.set(0.0);
            tracing::info!(target: "tower_patterns::ratelimit", limiter = %self.name, "Redis reachable again");
        }
        let limit = u64::from(rate.burst_size());
        let reset = Duration::from_micros(reset_us);
        if allowed == 1 {
            Ok(Some(RateLimitInfo {
                limit,
                remaining,
                reset,
            }))
        } else {
            let wait = Duration::from_micros(retry_us);
            Err(self
                .stats
                .spent(false, &self.name, wait, limit, reset.max(wait)))
        }
    }
}

/// A GCRA limiter over Redis; see the [module docs](self).
pub struct RedisLimiter<X, P = UseDefault> {
    shared: Arc<Shared>,
    extractor: X,
    rate_for: P,
    default: Rate,
}

impl<X, P> fmt::Debug for RedisLimiter<X, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("name", &self.shared.name)
            .field("default", &self.default)
            .field("on_unavailable", &self.shared.on_unavailable)
            .finish_non_exhaustive()
    }
}

impl RedisLimiter<NoKey, UseDefault> {
    /// A builder named `name` (for errors, logs, metrics and the handle; also the Redis key
    /// prefix `tp:rl:{name}:`). Two parts are required: `.key(extractor)` and `.url(url)`.
    /// Defaults: 10 per second, fail open, 100 ms timeout, 1 s pause after a failure.
    pub fn builder(name: impl Into<Arc<str>>) -> RedisLimiterBuilder {
        RedisLimiterBuilder {
            name: name.into(),
            extractor: NoKey,
            url: NoUrl,
            rate_for: UseDefault,
            default: Rate::per_second(10),
            on_unavailable: Unavailable::FailOpen,
            timeout: Duration::from_millis(100),
            fail_fast_for: Duration::from_secs(1),
        }
    }
}

impl<X, P> RedisLimiter<X, P> {
    /// `Degraded` after a failure to reach Redis, until it answers again; `Ready` otherwise.
    pub fn health(&self) -> Health {
        if self.shared.degraded.load(Ordering::Relaxed) {
            Health::Degraded
        } else {
            Health::Ready
        }
    }

    /// How many checks could not reach Redis.
    pub fn failures(&self) -> u64 {
        self.shared.failures.load(Ordering::Relaxed)
    }

    /// A handle on the limiter's state (health, failures, rejections), for health endpoints
    /// and dashboards.
    pub fn handle(&self) -> KeyedRateLimitHandle {
        KeyedRateLimitHandle::new(
            self.shared.name.clone(),
            Limit::Rate(self.default),
            self.shared.clone(),
            self.shared.stats.clone(),
        )
    }

    /// Takes one request from `key`'s limit at `rate`.
    ///
    /// # Errors
    ///
    /// A `Rejected` of kind `RateLimited` when the limit is used up, or `LoadShed` when Redis
    /// is unreachable and the limiter fails closed; a [`ConfigError`] when `rate` is not valid
    /// (see [`Rate::validate`]): an invalid rate refuses every request, it never admits one.
    pub async fn check_key(
        &self,
        key: &str,
        rate: Rate,
    ) -> Result<Option<RateLimitInfo>, BoxError> {
        let key = format!("{}{key}", self.shared.prefix);
        self.shared.clone().check(key, rate).await
    }
}

/// The future of a Redis check.
pub type CheckFuture =
    Pin<Box<dyn Future<Output = Result<Option<RateLimitInfo>, BoxError>> + Send>>;

impl<Req, X, P> Limiter<Req> for RedisLimiter<X, P>
where
    X: KeyExtractor<Req>,
    X::Key: fmt::Display,
    P: PerRequest<Req, Rate>,
{
    type Future = CheckFuture;

    fn check(&self, req: &Req) -> Decision<Self::Future> {
        let stats = &self.shared.stats;
        let key = match self.extractor.extract(req) {
            Ok(key) => key,
            Err(err) => return Decision::Now(Err(stats.refuse(Refusal::BadKey, err))),
        };
        let rate = self.rate_for.choose(req).unwrap_or(self.default);
        if let Err(err) = rate.validate() {
            return Decision::Now(Err(stats.refuse(Refusal::InvalidLimit, err)));
        }
        let key = format!("{}{key}", self.shared.prefix);
        Decision::Later(Box::pin(self.shared.clone().check(key, rate)))
    }
}

/// A Redis limiter builder's URL before `url(url)` sets one.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoUrl;

/// Builds a [`RedisLimiter`]: `RedisLimiter::builder(name).key(extractor).url(url)`, then the
/// optional settings, then `build()` (which exists once the URL is set).
#[derive(Debug)]
pub struct RedisLimiterBuilder<X = NoKey, P = UseDefault, U = NoUrl> {
    name: Arc<str>,
    extractor: X,
    url: U,
    rate_for: P,
    default: Rate,
    on_unavailable: Unavailable,
    timeout: Duration,
    fail_fast_for: Duration,
}

impl<P, U> RedisLimiterBuilder<NoKey, P, U> {
    /// Takes each request's key with `extractor` (its `Display` form names the Redis key):
    /// every key has its own limit. Required.
    pub fn key<X>(self, extractor: X) -> RedisLimiterBuilder<X, P, U> {
        RedisLimiterBuilder {
            name: self.name,
            extractor,
            url: self.url,
            rate_for: self.rate_for,
            default: self.default,
            on_unavailable: self.on_unavailable,
            timeout: self.timeout,
            fail_fast_for: self.fail_fast_for,
        }
    }
}

impl<X, P, U> RedisLimiterBuilder<X, P, U> {
    /// The Redis to count in (`redis://host:port`); the connection is made on first use and
    /// re-made after failures. Required.
    pub fn url(self, url: impl Into<String>) -> RedisLimiterBuilder<X, P, String> {
        RedisLimiterBuilder {
            name: self.name,
            extractor: self.extractor,
            url: url.into(),
            rate_for: self.rate_for,
            default: self.default,
            on_unavailable: self.on_unavailable,
            timeout: self.timeout,
            fail_fast_for: self.fail_fast_for,
        }
    }

    /// The rate of keys `rate_for` says nothing about (default 10 per second).
    #[must_use]
    pub const fn rate(mut self, rate: Rate) -> Self {
        self.default = rate;
        self
    }

    /// Chooses the rate per request; `None` takes the default (see [`PerRequest`]).
    pub fn rate_for<F>(self, rate_for: F) -> RedisLimiterBuilder<X, F, U> {
        RedisLimiterBuilder {
            name: self.name,
            extractor: self.extractor,
            url: self.url,
            rate_for,
            default: self.default,
            on_unavailable: self.on_unavailable,
            timeout: self.timeout,
            fail_fast_for: self.fail_fast_for,
        }
    }

    /// What to do when Redis cannot be reached (default [`Unavailable::FailOpen`]).
    #[must_use]
    pub const fn on_unavailable(mut self, on: Unavailable) -> Self {
        self.on_unavailable = on;
        self
    }

    /// How long a check waits for Redis (default 100 ms).
    #[must_use]
    pub const fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long Redis is left alone after a failure (default 1 s).
    #[must_use]
    pub const fn fail_fast_for(mut self, pause: Duration) -> Self {
        self.fail_fast_for = pause;
        self
    }
}

impl<X, P> RedisLimiterBuilder<X, P, String> {
    /// Builds the limiter; the connection to Redis is made on first use.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for an invalid rate or URL.
    pub fn build(self) -> Result<RedisLimiter<X, P>, ConfigError> {
        self.default.validate()?;
        let client = redis::Client::open(self.url.as_str())
            .map_err(|e| ConfigError::new("url", format!("not a Redis URL: {e}")))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(0);
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| ConfigError::new("url", e.to_string()))?;
        let prefix = format!("tp:rl:{}:", self.name);
        let stats = Arc::new(Stats::register(&self.name));
        let unavailable_total = metrics::counter!(
            metric_name!("ratelimit", "unavailable_total"),
            labels::NAME => self.name.to_string()
        );
        let degraded_gauge = metrics::gauge!(
            metric_name!("ratelimit", "degraded"),
            labels::NAME => self.name.to_string()
        );
        degraded_gauge.set(0.0);
        Ok(RedisLimiter {
            shared: Arc::new(Shared {
                name: self.name,
                conn,
                script: redis::Script::new(GCRA),
                prefix,
                timeout: self.timeout,
                on_unavailable: self.on_unavailable,
                fail_fast_for: self.fail_fast_for,
                paused_until: AtomicU64::new(0),
                epoch: tokio::time::Instant::now(),
                degraded: AtomicBool::new(false),
                failures: AtomicU64::new(0),
                stats,
                unavailable_total,
                degraded_gauge,
            }),
            extractor: self.extractor,
            rate_for: self.rate_for,
            default: self.default,
        })
    }
}

impl<X, P> HasHandle for RedisLimiter<X, P> {
    fn handle(&self) -> KeyedRateLimitHandle {
        Self::handle(self)
    }
}

impl Source for Shared {
    fn health(&self) -> Option<(Health, &'static str)> {
        Some(if self.degraded.load(Ordering::Relaxed) {
            (Health::Degraded, "unreachable")
        } else {
            (Health::Ready, "connected")
        })
    }

    fn unavailable(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }
}
