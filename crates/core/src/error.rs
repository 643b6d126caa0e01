//! Error that every fail-fast layer of tower-patterns returns: [`Rejected`].
//!
//! Services return [`BoxError`], as tower's do, and callers downcast. A rejection keeps one
//! type whatever layer produced it, so reordering layers never breaks a `match`:
//!
//! ```
//! use std::time::Duration;
//! use tower_patterns_core::{BoxError, Rejected, RejectionKind};
//!
//! let err: BoxError = Rejected::new(RejectionKind::CircuitOpen)
//!     .with_name("payments")
//!     .with_retry_after(Duration::from_millis(1500))
//!     .into();
//!
//! let rejected = Rejected::find(&*err).expect("a rejection");
//! assert_eq!(rejected.kind(), RejectionKind::CircuitOpen);
//! assert_eq!(rejected.name(), Some("payments"));
//! assert_eq!(rejected.retry_after(), Some(Duration::from_millis(1500)));
//! assert_eq!(err.to_string(), "circuit open (payments), retry after 1.5s");
//! ```

use std::{error::Error, fmt, sync::Arc, time::Duration};

/// Alias for a type-erased error, as used by tower.
pub type BoxError = Box<dyn Error + Send + Sync>;

/// Why a layer refused a request without calling its inner service.
///
/// New kinds may be added in minor releases, so match with a wildcard arm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RejectionKind {
    /// A circuit breaker is open (or its half-open probes are all taken).
    CircuitOpen,
    /// A bulkhead has no free permit and its waiting room is full or the wait ran out.
    BulkheadFull,
    /// A rate limiter refused the request for now.
    RateLimited,
    /// A long-period quota (per day, per month) is used up.
    QuotaExceeded,
    /// The request was shed to protect the service under load.
    LoadShed,
}

impl RejectionKind {
    /// A short, stable, lower-case name, fit for logs, metric labels and response bodies.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::CircuitOpen => "circuit open",
            Self::BulkheadFull => "bulkhead full",
            Self::RateLimited => "rate limited",
            Self::QuotaExceeded => "quota exceeded",
            Self::LoadShed => "load shed",
        }
    }

    /// A stable identifier in `snake_case`, for metric labels.
    pub const fn label(self) -> &'static str {
        match self {
            Self::CircuitOpen => "circuit_open",
            Self::BulkheadFull => "bulkhead_full",
            Self::RateLimited => "rate_limited",
            Self::QuotaExceeded => "quota_exceeded",
            Self::LoadShed => "load_shed",
        }
    }

    /// Whether the caller itself is being throttled (HTTP 429) rather than the service being
    /// unavailable (HTTP 503).
    pub const fn is_throttle(self) -> bool {
        matches!(self, Self::RateLimited | Self::QuotaExceeded)
    }
}

impl fmt::Display for RejectionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The one error type for every fail-fast rejection of a tower-patterns layer.
///
/// It says what rejected the request ([`kind`](Self::kind)), which instance did
/// ([`name`](Self::name), for example the breaker of one upstream host), and when trying
/// again may succeed ([`retry_after`](Self::retry_after)).
///
/// The retry policy never retries a `Rejected` coming from the same stack, and the HTTP
/// mapping in [`crate::http`] turns it into a 503 or 429 with a `Retry-After` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    kind: RejectionKind,
    retry_after: Option<Duration>,
    name: Option<Arc<str>>,
    limit: Option<RateLimitInfo>,
}

/// The state of a rate limit or quota, as the `RateLimit-Limit`, `RateLimit-Remaining` and
/// `RateLimit-Reset` response headers report it.
///
/// ```
/// use std::time::Duration;
/// use tower_patterns_core::error::RateLimitInfo;
///
/// let info = RateLimitInfo { limit: 100, remaining: 0, reset: Duration::from_millis(1500) };
/// assert_eq!(info.reset_secs(), 2); // rounded up, as `Retry-After` is
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RateLimitInfo {
    /// The requests allowed in a full window (the burst of a GCRA limit).
    pub limit: u64,
    /// The requests still allowed now.
    pub remaining: u64,
    /// How long until the limit is whole again (GCRA) or the window resets (quotas).
    pub reset: Duration,
}

impl RateLimitInfo {
    /// [`reset`](Self::reset) in whole seconds, rounded up.
    pub const fn reset_secs(&self) -> u64 {
        self.reset
            .as_secs()
            .saturating_add((self.reset.subsec_nanos() > 0) as u64)
    }
}

impl Rejected {
    /// A rejection of the given kind, with no name and no retry hint.
    pub const fn new(kind: RejectionKind) -> Self {
        Self {
            kind,
            retry_after: None,
            name: None,
            limit: None,
        }
    }

    /// Names the instance that rejected (a breaker, a pool, a limiter key).
    ///
    /// Pass an `Arc<str>` the layer already holds to avoid an allocation.
    #[must_use]
    pub fn with_name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Sets how long the caller should wait before trying again.
    #[must_use]
    pub const fn with_retry_after(mut self, retry_after: Duration) -> Self {
        self.retry_after = Some(retry_after);
        self
    }

    /// Attaches the state of the limit that refused (for the `RateLimit-*` headers).
    #[must_use]
    pub const fn with_limit(mut self, limit: RateLimitInfo) -> Self {
        self.limit = Some(limit);
        self
    }

    /// The state of the limit that refused, when a rate limiter or quota attached it.
    pub const fn limit(&self) -> Option<RateLimitInfo> {
        self.limit
    }

    /// What kind of rejection this is.
    pub const fn kind(&self) -> RejectionKind {
        self.kind
    }

    /// How long the caller should wait before trying again, when the layer knows.
    pub const fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The name of the instance that rejected, when it has one.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Finds a `Rejected` in an error or anywhere in its chain of sources.
    ///
    /// Layers such as tower's `Buffer` wrap the errors of the services behind them; this looks
    /// through such wrappers.
    pub fn find<'a>(err: &'a (dyn Error + 'static)) -> Option<&'a Self> {
        find_in_chain(err)
    }
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind.as_str())?;
        if let Some(name) = &self.name {
            write!(f, " ({name})")?;
        }
        if let Some(after) = self.retry_after {
            write!(f, ", retry after {after:?}")?;
        }
        Ok(())
    }
}

impl Error for Rejected {}

/// A configuration was refused when it was built: which setting, and why.
///
/// Every builder of tower-patterns validates in `build()` and returns this error, so a bad
/// configuration (read from a file, say) never panics at run time.
///
/// ```
/// use tower_patterns_core::ConfigError;
///
/// let err = ConfigError::new("max_entries", "must be at least 1");
/// assert_eq!(err.to_string(), "invalid configuration: max_entries must be at least 1");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    field: &'static str,
    reason: std::borrow::Cow<'static, str>,
}

impl ConfigError {
    /// The setting `field` is refused because of `reason`.
    pub fn new(field: &'static str, reason: impl Into<std::borrow::Cow<'static, str>>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }

    /// The setting that was refused.
    pub const fn field(&self) -> &'static str {
        self.field
    }

    /// Why it was refused.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// Checks a name that labels metrics and logs and names durable things (an outbox relay, a
/// durable consumer, a dual write's worker): 1 to 64 ASCII letters, digits, `_` or `-`.
///
/// ```
/// use tower_patterns_core::error::check_name;
///
/// assert!(check_name("users-dual_1").is_ok());
/// assert_eq!(check_name("").unwrap_err().field(), "name");
/// assert!(check_name("has space").is_err());
/// assert!(check_name(&"n".repeat(65)).is_err());
/// ```
pub fn check_name(name: &str) -> Result<(), ConfigError> {
    let plain = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'-';
    if name.is_empty() || name.len() > 64 || !name.bytes().all(plain) {
        return Err(ConfigError::new(
            "name",
            "must be 1 to 64 ASCII letters, digits, '_' or '-'",
        ));
    }
    Ok(())
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration: {} {}", self.field, self.reason)
    }
}

impl Error for ConfigError {}

/// Finds the first error of type `T` in `err` or its chain of [`Error::source`]s.
///
/// ```
/// use tower_patterns_core::{error::find_in_chain, BoxError, Rejected, RejectionKind};
///
/// let err: BoxError = Rejected::new(RejectionKind::LoadShed).into();
/// assert!(find_in_chain::<Rejected>(&*err).is_some());
/// assert!(find_in_chain::<std::fmt::Error>(&*err).is_none());
/// ```
pub fn find_in_chain<'a, T: Error + 'static>(err: &'a (dyn Error + 'static)) -> Option<&'a T> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        next = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrapper(BoxError);
    impl fmt::Display for Wrapper {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("wrapped")
        }
    }
    impl Error for Wrapper {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&*self.0)
        }
    }

    #[test]
    fn finds_a_rejection_behind_wrappers() {
        let inner: BoxError = Rejected::new(RejectionKind::BulkheadFull).into();
        let outer: BoxError = Box::new(Wrapper(Box::new(Wrapper(inner))));
        let found = Rejected::find(&*outer).expect("found through two wrappers");
        assert_eq!(found.kind(), RejectionKind::BulkheadFull);
    }

    #[test]
    fn display_without_optional_parts() {
        assert_eq!(
            Rejected::new(RejectionKind::RateLimited).to_string(),
            "rate limited"
        );
        assert_eq!(
            Rejected::new(RejectionKind::QuotaExceeded)
                .with_name("tenant-7")
                .to_string(),
            "quota exceeded (tenant-7)"
        );
    }

    #[test]
    fn throttles_are_only_rate_and_quota() {
        for kind in [
            RejectionKind::CircuitOpen,
            RejectionKind::BulkheadFull,
            RejectionKind::LoadShed,
        ] {
            assert!(!kind.is_throttle(), "{kind}");
        }
        assert!(RejectionKind::RateLimited.is_throttle());
        assert!(RejectionKind::QuotaExceeded.is_throttle());
    }
}
