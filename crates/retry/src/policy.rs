//! The retry policy: a [`tower::retry::Policy`], so tower's own retry loop runs it.

use std::{
    fmt,
    future::Future,
    marker::PhantomData,
    ops::Deref,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::time::{Instant, Sleep};
use tower::retry::{Policy, RetryLayer};
use tower_patterns_core::{
    BoxError, ConfigError, Rejected,
    rng::{GOLDEN_GAMMA, SplitMix64, mix},
};

use crate::{Backoff, RetryBudget, RetryPolicyHandle};

/// What a finished attempt means for retrying.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// It succeeded: no retry (and the budget is refilled).
    Success,
    /// It failed in a way a retry will not fix (a 4xx, a rejection from a layer below).
    Failure,
    /// It failed in a way a retry may fix; the server may have said when (or not to).
    Retryable(Option<Pushback>),
}

/// What the server said about retrying.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pushback {
    /// Not before this long (`Retry-After`, `grpc-retry-pushback-ms`).
    After(Duration),
    /// Not at all (a negative `grpc-retry-pushback-ms`).
    Stop,
}

/// Decides what an attempt's result means, and how to copy a request for the next attempt.
pub trait RetryKind<Req, Res, E> {
    /// Judges one attempt.
    fn verdict(&self, req: &Req, result: &Result<Res, E>) -> Verdict;

    /// A copy of `req` for a later attempt, or `None` if it must not be retried (a POST
    /// without an idempotency key, a body that cannot be replayed).
    fn clone_request(&self, req: &Req) -> Option<Req>;

    /// Marks the request with its attempt number (2 for the first retry).
    fn mark_attempt(&self, _req: &mut Req, _attempt: u32) {}
}

/// Retries errors of any `Clone` request, except fail-fast rejections from a layer below
/// ([`Rejected`]: an open circuit, a full bulkhead), unless told to. For services whose error
/// is [`BoxError`].
#[derive(Clone, Copy, Debug, Default)]
pub struct ErrorRetry {
    retry_rejected: bool,
}

impl ErrorRetry {
    /// Retries rejections from layers below too (off by default: retrying an open circuit
    /// only adds load).
    #[must_use]
    pub const fn retry_rejected(mut self, on: bool) -> Self {
        self.retry_rejected = on;
        self
    }
}

pub(crate) fn error_verdict(e: &BoxError, retry_rejected: bool) -> Verdict {
    if Rejected::find(&**e).is_some() && !retry_rejected {
        Verdict::Failure
    } else {
        Verdict::Retryable(None)
    }
}

impl<Req: Clone, Res> RetryKind<Req, Res, BoxError> for ErrorRetry {
    #[inline]
    fn verdict(&self, _req: &Req, result: &Result<Res, BoxError>) -> Verdict {
        match result {
            Ok(_) => Verdict::Success,
            Err(e) => error_verdict(e, self.retry_rejected),
        }
    }

    #[inline]
    fn clone_request(&self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }
}

/// A [`RetryKind`] from a closure over the result, for `Clone` requests.
#[derive(Clone, Copy)]
pub struct RetryIf<F>(pub F);

impl<F> fmt::Debug for RetryIf<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryIf").finish_non_exhaustive()
    }
}

impl<F, Req: Clone, Res, E> RetryKind<Req, Res, E> for RetryIf<F>
where
    F: Fn(&Result<Res, E>) -> Verdict,
{
    fn verdict(&self, _req: &Req, result: &Result<Res, E>) -> Verdict {
        (self.0)(result)
    }

    fn clone_request(&self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }
}

/// What every request through one policy shares: its settings, counters and budget.
/// Opaque; held by [`RetryPolicy`] behind an `Arc` or, after [`RetryPolicy::leak`], a
/// `&'static`.
pub struct RetryShared<K> {
    name: Arc<str>,
    kind: K,
    backoff: Backoff,
    max_attempts: u32,
    cap: Duration,
    max_pushback: Duration,
    deadline: Option<Duration>,
    budget: Option<Arc<RetryBudget>>,
    seed: AtomicU64,
    retries: metrics::Counter,
    gave_up: [metrics::Counter; 4],
}

#[derive(Clone, Copy)]
enum GaveUp {
    Attempts = 0,
    Budget = 1,
    Deadline = 2,
    Pushback = 3,
}

/// A retry policy for tower's `Retry`; build it with [`RetryPolicy::builder`], then apply it
/// with [`RetryPolicy::layer`] (tower's own [`RetryLayer`]).
///
/// tower clones the policy for every request: per-request state (the attempt, the previous
/// delay, the random source) lives in the clone; the configuration and the budget are shared.
pub struct RetryPolicy<K, P = Arc<RetryShared<K>>>
where
    P: Deref<Target = RetryShared<K>>,
{
    shared: P,
    kind: PhantomData<fn() -> K>,
    attempt: u32,
    previous: Duration,
    rng: Option<SplitMix64>,
    started: Option<Instant>,
    holds_slot: bool,
}

impl<K, P: Deref<Target = RetryShared<K>> + Clone> Clone for RetryPolicy<K, P> {
    #[inline]
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            kind: PhantomData,
            attempt: self.attempt,
            previous: self.previous,
            rng: self.rng,
            started: self.started,
            // A retry slot belongs to the request that took it, never to a copy.
            holds_slot: false,
        }
    }
}

impl<K> fmt::Debug for RetryShared<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryShared")
            .field("max_attempts", &self.max_attempts)
            .field("backoff", &self.backoff)
            .finish_non_exhaustive()
    }
}

impl<K, P: Deref<Target = RetryShared<K>>> fmt::Debug for RetryPolicy<K, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("max_attempts", &self.shared.max_attempts)
            .field("backoff", &self.shared.backoff)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

impl<K, P: Deref<Target = RetryShared<K>>> Drop for RetryPolicy<K, P> {
    #[inline]
    fn drop(&mut self) {
        self.leave_slot();
    }
}

impl RetryPolicy<ErrorRetry> {
    /// A builder named `name` (it labels the metrics and the [handle](RetryPolicy::handle)).
    ///
    /// It retries errors of any service whose error is [`BoxError`], never rejections
    /// ([`ErrorRetry`]); [`RetryPolicyBuilder::http`] switches to HTTP and gRPC rules and
    /// [`RetryPolicyBuilder::kind`] to any [`RetryKind`].
    pub fn builder(name: impl Into<Arc<str>>) -> RetryPolicyBuilder<ErrorRetry> {
        RetryPolicyBuilder::new(name.into(), ErrorRetry::default())
    }
}

impl<K: Clone + 'static> RetryPolicy<K> {
    /// The same policy with its shared part leaked, once, to a `&'static`: tower clones the
    /// policy for every request, and a `&'static` clones without the `Arc` reference count
    /// (two atomic operations per request). For policies built once at startup and kept for
    /// the life of the process; each call leaks one small allocation. The leaked policy keeps
    /// the same budget, metrics and name, so handles of both read the same state.
    #[must_use]
    pub fn leak(self) -> RetryPolicy<K, &'static RetryShared<K>> {
        let shared = Arc::clone(&self.shared);
        drop(self);
        let owned = Arc::try_unwrap(shared).unwrap_or_else(|shared| shared.duplicate());
        RetryPolicy::from_shared(&*Box::leak(Box::new(owned)))
    }
}

impl<K: Clone> RetryShared<K> {
    /// A copy sharing the budget and the metrics.
    fn duplicate(&self) -> Self {
        Self {
            name: self.name.clone(),
            kind: self.kind.clone(),
            backoff: self.backoff,
            max_attempts: self.max_attempts,
            cap: self.cap,
            max_pushback: self.max_pushback,
            deadline: self.deadline,
            budget: self.budget.clone(),
            seed: AtomicU64::new(self.seed.load(Ordering::Relaxed)),
            retries: self.retries.clone(),
            gave_up: self.gave_up.clone(),
        }
    }
}

impl<K, P: Deref<Target = RetryShared<K>>> RetryPolicy<K, P> {
    /// tower's retry layer running this policy.
    pub fn layer(self) -> RetryLayer<Self> {
        RetryLayer::new(self)
    }

    /// The shared budget, if any (to read its tokens, or to share it with a
    /// [`HedgingLayer`](crate::HedgingLayer)).
    pub fn budget(&self) -> Option<&Arc<RetryBudget>> {
        self.shared.budget.as_ref()
    }

    /// A handle on the state every request through this policy shares (its budget), for
    /// health endpoints; it implements [`StateHandle`](tower_patterns_core::observe::StateHandle).
    pub fn handle(&self) -> RetryPolicyHandle {
        RetryPolicyHandle::new(
            self.shared.name.clone(),
            self.shared.max_attempts,
            self.shared.budget.clone(),
        )
    }

    #[inline]
    fn leave_slot(&mut self) {
        if std::mem::take(&mut self.holds_slot)
            && let Some(budget) = &self.shared.budget
        {
            budget.leave();
        }
    }

    fn give_up(&self, why: GaveUp) -> Option<Delay> {
        self.shared.gave_up[why as usize].increment(1);
        None
    }
}

impl<K, P, Req, Res, E> Policy<Req, Res, E> for RetryPolicy<K, P>
where
    K: RetryKind<Req, Res, E>,
    P: Deref<Target = RetryShared<K>>,
{
    type Future = Delay;

    fn retry(&mut self, req: &mut Req, result: &mut Result<Res, E>) -> Option<Delay> {
        // The attempt that held a retry slot (if any) is over.
        self.leave_slot();
        let shared = &*self.shared;
        let budget = shared.budget.as_deref();
        let pushback = match shared.kind.verdict(req, result) {
            Verdict::Success => {
                if let Some(b) = budget {
                    b.success();
                }
                return None;
            }
            Verdict::Failure => return None,
            Verdict::Retryable(pushback) => pushback,
        };
        if let Some(b) = budget {
            b.failure();
        }
        let next = self.attempt + 1;
        if next >= shared.max_attempts {
            return self.give_up(GaveUp::Attempts);
        }
        if budget.is_some_and(|b| !b.can_retry()) {
            return self.give_up(GaveUp::Budget);
        }
        let delay = match pushback {
            Some(Pushback::Stop) => return self.give_up(GaveUp::Pushback),
            // Never earlier than the server asked; if it asks for too long, give up.
            Some(Pushback::After(d)) if d > shared.max_pushback => {
                return self.give_up(GaveUp::Pushback);
            }
            Some(Pushback::After(d)) => d,
            None => {
                let rng = self.rng.get_or_insert_with(|| {
                    SplitMix64::new(mix(shared.seed.fetch_add(GOLDEN_GAMMA, Ordering::Relaxed)))
                });
                shared.backoff.delay(next, self.previous, shared.cap, rng)
            }
        };
        if let (Some(limit), Some(started)) = (shared.deadline, self.started)
            && started.elapsed() + delay >= limit
        {
            return self.give_up(GaveUp::Deadline);
        }
        if let Some(b) = budget {
            if !b.enter() {
                return self.give_up(GaveUp::Budget);
            }
            self.holds_slot = true;
        }
        shared.retries.increment(1);
        self.attempt = next;
        self.previous = delay;
        shared.kind.mark_attempt(req, next + 1);
        Some(Delay::after(delay))
    }

    #[inline]
    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        if self.attempt == 0 && self.shared.deadline.is_some() {
            self.started = Some(Instant::now());
        }
        self.shared.kind.clone_request(req)
    }
}

/// Builds a [`RetryPolicy`]; `build` validates. `K` is the [`RetryKind`], [`ErrorRetry`]
/// unless changed with [`http`](Self::http) or [`kind`](Self::kind).
pub struct RetryPolicyBuilder<K = ErrorRetry> {
    name: Arc<str>,
    kind: K,
    backoff: Backoff,
    max_attempts: u32,
    cap: Duration,
    max_pushback: Duration,
    deadline: Option<Duration>,
    budget: Option<RetryBudget>,
    seed: u64,
}

impl<K: fmt::Debug> fmt::Debug for RetryPolicyBuilder<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryPolicyBuilder")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("backoff", &self.backoff)
            .field("max_attempts", &self.max_attempts)
            .field("cap", &self.cap)
            .finish_non_exhaustive()
    }
}

impl<K> RetryPolicyBuilder<K> {
    fn new(name: Arc<str>, kind: K) -> Self {
        Self {
            name,
            kind,
            backoff: Backoff::default(),
            max_attempts: 3,
            cap: Duration::from_secs(10),
            max_pushback: Duration::from_secs(60),
            deadline: None,
            budget: Some(RetryBudget::default()),
            seed: 0x7e7_a11,
        }
    }

    /// Attempts in all, the first included (default 3; at least 1).
    #[must_use]
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }

    /// The backoff family (default full jitter from 100 ms).
    #[must_use]
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The longest backoff delay (default 10 s).
    #[must_use]
    pub fn cap(mut self, cap: Duration) -> Self {
        self.cap = cap;
        self
    }

    /// The longest server-asked wait to honour (default 60 s); a longer one ends the retries
    /// rather than retry early.
    #[must_use]
    pub fn max_pushback(mut self, max: Duration) -> Self {
        self.max_pushback = max;
        self
    }

    /// No retry starts once `deadline` has passed since the first attempt (or would pass
    /// during its delay). Put a timeout outside the retry layer to bound the last attempt too.
    #[must_use]
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// The shared budget (default: 100 tokens, 0.1 per success).
    #[must_use]
    pub fn budget(mut self, budget: RetryBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// No budget: every failure may be retried up to `max_attempts`. Risky: retries then
    /// multiply load on a failing dependency.
    #[must_use]
    pub fn no_budget(mut self) -> Self {
        self.budget = None;
        self
    }

    /// Seeds the jitter.
    #[must_use]
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Retries HTTP and gRPC calls with [`HttpRetry`](crate::HttpRetry)'s defaults: 408,
    /// 429, 502, 503, 504 and gRPC UNAVAILABLE, transport errors and timeouts; honours
    /// `Retry-After` and `grpc-retry-pushback-ms`; retries POST and PATCH only with an
    /// `Idempotency-Key` header. [`kind`](Self::kind) takes an `HttpRetry` with other settings.
    pub fn http(self) -> RetryPolicyBuilder<crate::HttpRetry> {
        self.kind(crate::HttpRetry::default())
    }

    /// Judges attempts with `kind`: a custom [`RetryKind`], or a kind with changed settings
    /// (for example `HttpRetry::statuses`).
    pub fn kind<K2>(self, kind: K2) -> RetryPolicyBuilder<K2> {
        RetryPolicyBuilder {
            name: self.name,
            kind,
            backoff: self.backoff,
            max_attempts: self.max_attempts,
            cap: self.cap,
            max_pushback: self.max_pushback,
            deadline: self.deadline,
            budget: self.budget,
            seed: self.seed,
        }
    }

    /// Builds the policy.
    ///
    /// # Errors
    ///
    /// When `max_attempts` is 0 or the backoff is invalid.
    pub fn build(self) -> Result<RetryPolicy<K>, ConfigError> {
        self.shared()
            .map(|shared| RetryPolicy::from_shared(Arc::new(shared)))
    }

    fn shared(self) -> Result<RetryShared<K>, ConfigError> {
        if self.max_attempts == 0 {
            return Err(ConfigError::new("max_attempts", "must be at least 1"));
        }
        self.backoff.validate()?;
        let name = self.name;
        let gave_up = |reason: &'static str| {
            metrics::counter!(
                tower_patterns_core::metric_name!("retry", "gave_up_total"),
                tower_patterns_core::observe::labels::NAME => name.to_string(),
                "reason" => reason
            )
        };
        let gave_up = [
            gave_up("attempts"),
            gave_up("budget"),
            gave_up("deadline"),
            gave_up("pushback"),
        ];
        let retries = metrics::counter!(
            tower_patterns_core::metric_name!("retry", "retries_total"),
            tower_patterns_core::observe::labels::NAME => name.to_string()
        );
        Ok(RetryShared {
            name,
            kind: self.kind,
            backoff: self.backoff,
            max_attempts: self.max_attempts,
            cap: self.cap,
            max_pushback: self.max_pushback,
            deadline: self.deadline,
            budget: self.budget.map(Arc::new),
            seed: AtomicU64::new(self.seed),
            retries,
            gave_up,
        })
    }
}

impl<K, P: Deref<Target = RetryShared<K>>> RetryPolicy<K, P> {
    fn from_shared(shared: P) -> Self {
        Self {
            shared,
            kind: PhantomData,
            attempt: 0,
            previous: Duration::ZERO,
            rng: None,
            started: None,
            holds_slot: false,
        }
    }
}

/// The wait before a retry.
///
/// The timer is boxed: tower's retry future holds this wait beside every first attempt, and
/// an inline timer (about a hundred bytes) would be moved and dropped with each request,
/// although only retried ones ever wait.
#[derive(Debug)]
pub struct Delay {
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Delay {
    fn after(delay: Duration) -> Self {
        Self {
            sleep: (!delay.is_zero()).then(|| Box::pin(tokio::time::sleep(delay))),
        }
    }
}

impl Future for Delay {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.sleep {
            Some(sleep) => sleep.as_mut().poll(cx),
            None => Poll::Ready(()),
        }
    }
}
