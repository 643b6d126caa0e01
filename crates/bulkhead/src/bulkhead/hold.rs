//! How long a call holds its permit: the permit itself ([`Hold`]) and the two policies,
//! until the response ([`UntilResponse`]) or until the end of its body ([`UntilBodyEnd`]).

use std::{fmt, time::Duration};

use tower_patterns_core::classify::{ClassifyEos, EosBody, Finish, OnOutcome, Outcome};

use crate::semaphore::Permit;

/// A bulkhead permit held by a call: given back when the call (or, with
/// [`UntilBodyEnd`], its response body) ends. With an adaptive limit, it also reports the
/// call's latency. Two words, so moving it out of a just-built future is cheap.
pub struct Hold {
    pub(crate) permit: Permit,
    /// When the call started, for the adaptive limiter (0: no limiter).
    pub(crate) start: u64,
}

impl fmt::Debug for Hold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hold")
            .field("permit", &self.permit)
            .finish()
    }
}

impl OnOutcome for Hold {
    #[inline]
    fn on_outcome(self, outcome: Outcome) {
        // Cancelled calls say nothing about latency.
        if self.start != 0
            && outcome != Outcome::Ignored
            && let Some(semaphore) = self.permit.semaphore()
            && let Some((adaptive, _)) = &semaphore.adaptive
        {
            let rtt = Duration::from_nanos(semaphore.sample_start().saturating_sub(self.start));
            semaphore.follow(adaptive.completed(rtt, semaphore.in_flight()));
        }
        // Dropping `self` gives the permit back.
    }
}

/// How long a call holds its permit: until its response future completes.
#[derive(Clone, Copy, Debug, Default)]
pub struct UntilResponse;

impl<Res, E> Finish<Res, E, Hold> for UntilResponse {
    type Response = Res;

    #[inline]
    fn finish(&self, result: Result<Res, E>, hold: Hold) -> Result<Res, E> {
        hold.on_outcome(Outcome::Success);
        result
    }
}

/// How long a call holds its permit: until its HTTP response body ends (or is dropped), so a
/// streaming response counts against the pool for as long as it streams.
#[derive(Clone, Copy, Debug, Default)]
pub struct UntilBodyEnd;

/// The end-of-body judge of [`UntilBodyEnd`]: any end is a success.
#[derive(Clone, Copy, Debug, Default)]
pub struct BodyEnded;

impl ClassifyEos for BodyEnded {
    fn classify_eos(self, _trailers: Option<&http::HeaderMap>) -> Outcome {
        Outcome::Success
    }
}

impl<B: http_body::Body, E> Finish<http::Response<B>, E, Hold> for UntilBodyEnd {
    type Response = http::Response<EosBody<B, BodyEnded, Hold>>;

    fn finish(
        &self,
        result: Result<http::Response<B>, E>,
        hold: Hold,
    ) -> Result<Self::Response, E> {
        result.map(|res| res.map(|body| EosBody::new(body, BodyEnded, hold)))
    }
}
