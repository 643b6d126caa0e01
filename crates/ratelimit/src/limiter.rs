//! What every limiter is: a check per request, a setting chosen per request, a handle.

use std::{future::Future, sync::Arc};

use tower_patterns_core::{BoxError, error::RateLimitInfo, keyed::KeyBounds};

use crate::handle::KeyedRateLimitHandle;

/// What a limiter decided about one request.
#[derive(Debug)]
pub enum Decision<F> {
    /// Decided at once (an in-process limiter): `Ok` with the limit's state (or `None` when it
    /// has none to report), or `Err` with a [`Rejected`](tower_patterns_core::Rejected) or a
    /// [`KeyError`](tower_patterns_core::KeyError).
    Now(Result<Option<RateLimitInfo>, BoxError>),
    /// Decided by a future (a limiter over the network).
    Later(F),
}

/// A rate limit or quota that admits or refuses requests of type `Req`.
///
/// [`GcraLimiter`](crate::GcraLimiter) and [`QuotaLimiter`](crate::QuotaLimiter) decide in
/// process, at once; the Redis limiter (feature `redis`) decides with a future.
pub trait Limiter<Req> {
    /// The future of a decision made later.
    type Future: Future<Output = Result<Option<RateLimitInfo>, BoxError>>;

    /// Takes one unit of the request's limit, or refuses it.
    fn check(&self, req: &Req) -> Decision<Self::Future>;
}

impl<Req, L: Limiter<Req>> Limiter<Req> for Arc<L> {
    type Future = L::Future;

    fn check(&self, req: &Req) -> Decision<Self::Future> {
        (**self).check(req)
    }
}

/// A limiter whose shared state a [`KeyedRateLimitHandle`] reads (keys held, limit,
/// rejections); see [`KeyedRateLimitLayer::handle`](crate::KeyedRateLimitLayer::handle).
pub trait HasHandle {
    /// A handle on this limiter's state.
    fn handle(&self) -> KeyedRateLimitHandle;
}

impl<L: HasHandle> HasHandle for Arc<L> {
    fn handle(&self) -> KeyedRateLimitHandle {
        (**self).handle()
    }
}

/// Chooses a limiter's setting (a [`Rate`](crate::Rate), a [`Quota`](crate::Quota)) per
/// request, from the tenant's plan in the request extensions say; `None` takes the limiter's
/// default. Any `Fn(&Req) -> Option<T>` is one; [`UseDefault`] gives every request the
/// default.
///
/// ```
/// use http::Request;
/// use tower_patterns_ratelimit::{PerRequest, Rate, UseDefault};
///
/// let by_header = |req: &Request<()>| req.headers().contains_key("x-gold").then(|| Rate::per_second(50));
/// let gold = Request::builder().header("x-gold", "1").body(()).unwrap();
/// assert_eq!(by_header.choose(&gold), Some(Rate::per_second(50)));
/// assert_eq!(PerRequest::<_, Rate>::choose(&UseDefault, &gold), None);
/// ```
pub trait PerRequest<Req, T> {
    /// The setting for `req`, or `None` for the default.
    fn choose(&self, req: &Req) -> Option<T>;
}

/// Every request gets the limiter's default setting.
#[derive(Clone, Copy, Debug, Default)]
pub struct UseDefault;

impl<Req, T> PerRequest<Req, T> for UseDefault {
    #[inline]
    fn choose(&self, _: &Req) -> Option<T> {
        None
    }
}

impl<Req, T, F> PerRequest<Req, T> for F
where
    F: Fn(&Req) -> Option<T>,
{
    #[inline]
    fn choose(&self, req: &Req) -> Option<T> {
        self(req)
    }
}

/// The bounds of the in-process limiters unless `key_bounds` says otherwise: many keys, no
/// idle timeout (moka's idle bookkeeping would add allocations to the admitted path).
pub(crate) const DEFAULT_BOUNDS: KeyBounds = KeyBounds {
    max_keys: 100_000,
    idle: None,
};

/// A limiter builder's key extractor before `key(extractor)` sets one.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoKey;
