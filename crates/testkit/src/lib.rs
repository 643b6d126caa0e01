//! Test helpers of tower-patterns (an unpublished crate, a dev-dependency of every other): a
//! controllable inner service, allocation counting for the zero-allocation claims, and the
//! helper that finds (or skips without) PostgreSQL, Redis and NATS.
//!
//! [`TestService`] echoes its request after an optional delay, fails the first N calls, or
//! never answers, and counts calls and calls in flight. Its delays use `tokio::time`, so tests
//! run them with paused time.
//!
//! ```
//! use std::time::Duration;
//! use tower::ServiceExt;
//! use tower_patterns_testkit::TestService;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let svc = TestService::new().fail_first(2).delay(Duration::from_secs(1));
//! let start = tokio::time::Instant::now();
//! assert!(svc.clone().oneshot("a").await.is_err());
//! assert!(svc.clone().oneshot("b").await.is_err());
//! assert_eq!(svc.clone().oneshot("c").await.unwrap(), "c");
//! assert_eq!(svc.calls(), 3);
//! assert_eq!(start.elapsed(), Duration::from_secs(3)); // paused time: no real waiting
//! # }
//! ```
//!
//! Server-backed tests take their server from [`server_url`] (see the [`servers`] module), or
//! a fresh PostgreSQL database from `fresh_postgres` (feature `postgres`), and the streaming
//! replicas of that PostgreSQL, whose replay they can pause, from [`postgres_replicas`] (see
//! the [`replica`] module); crash tests run a child process with [`process::ChildTest`].

pub mod alloc;
pub mod process;
pub mod replica;
pub mod servers;

use std::{
    error::Error,
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use pin_project_lite::pin_project;
use tower_service::Service;

pub use replica::{ReplayPaused, Replica, postgres_replicas};
#[cfg(feature = "postgres")]
pub use servers::fresh_postgres;
pub use servers::{Server, server_url};

use tower_patterns_core::BoxError;

#[derive(Debug, Default)]
struct Counters {
    calls: AtomicUsize,
    in_flight: AtomicUsize,
    completed: AtomicUsize,
}

/// A controllable inner service for tests; see the [module docs](self).
///
/// Clones share their counters and their count of calls (so `fail_first` counts across
/// clones).
#[derive(Clone, Debug, Default)]
pub struct TestService {
    counters: Arc<Counters>,
    fail_first: usize,
    always_fail: bool,
    delay: Option<Duration>,
    never: bool,
}

impl TestService {
    /// A service that answers every request with the request itself, at once.
    pub fn new() -> Self {
        Self::default()
    }

    /// The first `n` calls fail with a [`TestError`].
    #[must_use]
    pub fn fail_first(mut self, n: usize) -> Self {
        self.fail_first = n;
        self
    }

    /// Every call fails with a [`TestError`].
    #[must_use]
    pub fn always_fail(mut self) -> Self {
        self.always_fail = true;
        self
    }

    /// Every call answers after `delay` (of `tokio::time`, so it can be paused).
    #[must_use]
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// Calls never answer (a dependency that hangs).
    #[must_use]
    pub fn never_respond(mut self) -> Self {
        self.never = true;
        self
    }

    /// How many times the service was called.
    pub fn calls(&self) -> usize {
        self.counters.calls.load(Ordering::SeqCst)
    }

    /// How many calls have started and neither finished nor been dropped.
    pub fn in_flight(&self) -> usize {
        self.counters.in_flight.load(Ordering::SeqCst)
    }

    /// How many calls have finished (answered or failed).
    pub fn completed(&self) -> usize {
        self.counters.completed.load(Ordering::SeqCst)
    }
}

impl<Req> Service<Req> for TestService {
    type Response = Req;
    type Error = BoxError;
    type Future = TestFuture<Req>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let call = self.counters.calls.fetch_add(1, Ordering::SeqCst) + 1;
        self.counters.in_flight.fetch_add(1, Ordering::SeqCst);
        let result = if self.always_fail || call <= self.fail_first {
            Err(TestError { call }.into())
        } else {
            Ok(req)
        };
        TestFuture {
            sleep: self.delay.map(tokio::time::sleep),
            result: (!self.never).then_some(result),
            guard: InFlight {
                counters: Some(self.counters.clone()),
            },
        }
    }
}

#[derive(Debug)]
struct InFlight {
    counters: Option<Arc<Counters>>,
}

impl InFlight {
    fn complete(&mut self) {
        if let Some(c) = self.counters.take() {
            c.completed.fetch_add(1, Ordering::SeqCst);
            c.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(c) = self.counters.take() {
            c.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

pin_project! {
    /// Response future of [`TestService`].
    #[derive(Debug)]
    pub struct TestFuture<Req> {
        #[pin]
        sleep: Option<tokio::time::Sleep>,
        result: Option<Result<Req, BoxError>>,
        guard: InFlight,
    }
}

impl<Req> Future for TestFuture<Req> {
    type Output = Result<Req, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Some(sleep) = this.sleep.as_pin_mut() {
            std::task::ready!(sleep.poll(cx));
        }
        match this.result.take() {
            Some(result) => {
                this.guard.complete();
                Poll::Ready(result)
            }
            // Never answers, or polled after completion.
            None => Poll::Pending,
        }
    }
}

/// Polls `fut` once with a waker that does nothing, for services that answer at once (the
/// allocation tests drive services this way, with no runtime in the loop).
///
/// # Panics
///
/// When the future is not ready on its first poll.
pub fn poll_now<F: Future>(fut: F) -> F::Output {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match std::pin::pin!(fut).poll(&mut cx) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("the future was expected to be ready on its first poll"),
    }
}

/// Makes `svc` ready and calls it once, polling everything once (see [`poll_now`]).
///
/// # Panics
///
/// When the service is not ready, or its response not ready, on the first poll.
pub fn call_now<S: Service<Req>, Req>(svc: &mut S, req: Req) -> Result<S::Response, S::Error> {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match svc.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => poll_now(svc.call(req)),
        Poll::Ready(Err(e)) => Err(e),
        Poll::Pending => panic!("the service was expected to be ready"),
    }
}

/// Runs `count` up to `windows` times and returns the smallest figure, stopping at the first 0.
///
/// For allocation tests: a counting global allocator (dhat's, for one) counts every thread of the
/// process, and the test harness itself allocates on its main thread at moments that race with
/// the test (libtest records a test as running only after spawning its thread). Such one-off
/// allocations land in one window at most; an allocation made per call lands in every window, so
/// the smallest figure is still 0 only when the path under test allocates nothing.
///
/// ```
/// use tower_patterns_testkit::fewest;
///
/// let mut seen = vec![2, 0, 5].into_iter();
/// assert_eq!(fewest(3, || seen.next().unwrap()), 0);
/// assert_eq!(fewest(2, || 7), 7);
/// ```
pub fn fewest(windows: usize, mut count: impl FnMut() -> u64) -> u64 {
    let mut least = u64::MAX;
    for _ in 0..windows.max(1) {
        least = least.min(count());
        if least == 0 {
            break;
        }
    }
    least
}

/// Base64url without padding, as JWTs encode their parts, for tests that forge tokens by hand
/// (`alg: none`, a tampered payload) without another crate.
///
/// ```
/// assert_eq!(tower_patterns_testkit::base64url(b"{}"), "e30");
/// assert_eq!(tower_patterns_testkit::base64url(b"\xfb\xff"), "-_8");
/// ```
pub fn base64url(bytes: &[u8]) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(char::from(T[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

/// The error of a [`TestService`] call told to fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TestError {
    call: usize,
}

impl TestError {
    /// Which call failed (the first call is 1).
    pub const fn call(&self) -> usize {
        self.call
    }
}

impl fmt::Display for TestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "injected failure on call {}", self.call)
    }
}

impl Error for TestError {}

#[cfg(test)]
mod tests {
    use tower::ServiceExt;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn delays_follow_paused_time_and_counters_track_drops() {
        let svc = TestService::new().delay(Duration::from_secs(5));
        let start = tokio::time::Instant::now();
        assert_eq!(svc.clone().oneshot(1).await.unwrap(), 1);
        assert_eq!(start.elapsed(), Duration::from_secs(5));

        let hanging = TestService::new().never_respond();
        let fut = hanging.clone().oneshot(2);
        let timed_out = tokio::time::timeout(Duration::from_secs(60), fut).await;
        assert!(timed_out.is_err());
        assert_eq!(hanging.calls(), 1);
        assert_eq!(
            hanging.in_flight(),
            0,
            "the dropped call is no longer in flight"
        );
        assert_eq!(hanging.completed(), 0);
    }

    #[tokio::test]
    async fn failures_are_counted_across_clones() {
        let svc = TestService::new().fail_first(1);
        let err = svc.clone().oneshot(()).await.unwrap_err();
        assert_eq!(err.downcast_ref::<TestError>().unwrap().call(), 1);
        assert!(svc.clone().oneshot(()).await.is_ok());
        assert_eq!(svc.completed(), 2);
        assert!(TestService::new().always_fail().oneshot(()).await.is_err());
    }
}
