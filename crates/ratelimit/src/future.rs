//! The response future of [`KeyedRateLimit`](crate::KeyedRateLimit): core's check-then-call
//! future, with a gate that writes the limit's state into the response headers.

use http::{HeaderMap, Response};
use tower_patterns_core::{
    BoxError,
    check::{CheckThenCall, Gate},
    error::RateLimitInfo,
    http::{RATELIMIT_REMAINING, insert_rate_limit_headers},
};

/// The response future of [`KeyedRateLimit`](crate::KeyedRateLimit): the limiter's decision
/// (at once, or a future `F` for a limiter over the network), then the inner service's
/// response with the `RateLimit-*` headers.
pub type ResponseFuture<S, Req, F> = CheckThenCall<S, Req, F, HeaderGate>;

/// What [`KeyedRateLimit`](crate::KeyedRateLimit) does around the call: nothing to the request
/// (a refusal is the limiter's error), and the limit's state to the response's headers when
/// they are on.
#[derive(Clone, Copy, Debug)]
pub struct HeaderGate {
    pub(crate) headers: bool,
}

impl<Req, ResBody> Gate<Req, Response<ResBody>> for HeaderGate {
    type Checked = Option<RateLimitInfo>;
    type After = Option<RateLimitInfo>;

    #[inline]
    fn before(self, info: Self::Checked, _: &mut Req) -> Result<Self::After, BoxError> {
        Ok(info.filter(|_| self.headers))
    }

    #[inline]
    fn after(info: Self::After, res: &mut Response<ResBody>) {
        if let Some(info) = info {
            annotate(res.headers_mut(), info);
        }
    }
}

/// Writes the limit's state, unless a limit nearer to running out (an inner rate limit layer)
/// already wrote its own: clients see the limit that will refuse them first.
fn annotate(headers: &mut HeaderMap, info: RateLimitInfo) {
    let inner_remaining = headers
        .get(RATELIMIT_REMAINING)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if inner_remaining.is_none_or(|inner| info.remaining < inner) {
        insert_rate_limit_headers(headers, info);
    }
}
