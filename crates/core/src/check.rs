//! Check, then call: the response future of a middleware that must finish a check (a rate
//! limit over the network, a tenant lookup) before it calls its inner service.
//!
//! [`CheckThenCall`] is the one future for that shape: no allocation of its own when the check
//! is decided at once, one (the service and request it holds while waiting) when it is not. A
//! middleware supplies
//!
//! - the check: a future of `Result<G::Checked, E>`, or a result it already has (decided in
//!   process: a cache hit, an in-memory limiter);
//! - a [`Gate`] `G`: what to do with the check's output **before** the call (refuse, or edit
//!   the request, and keep what the response needs) and **after** it (edit the response).
//!
//! While the check runs, the future holds the inner service that `poll_ready` made ready,
//! taken out of the middleware (a clone is left behind, as tower's guidance for services that
//! call their inner service from a future says). A check decided at once calls the inner
//! service in place, without a clone. Polled again after it finished, the future returns an
//! error rather than panicking.
//!
//! ```
//! use std::{convert::Infallible, future::ready};
//! use tower::{service_fn, Service, ServiceExt};
//! use tower_patterns_core::{check::{CheckThenCall, Gate}, BoxError};
//!
//! /// Admits even numbers, doubles the request, then adds one to the response.
//! struct Even;
//!
//! impl Gate<u32, u32> for Even {
//!     type Checked = bool;
//!     type After = u32;
//!
//!     fn before(self, even: bool, req: &mut u32) -> Result<u32, BoxError> {
//!         if !even {
//!             return Err("odd".into());
//!         }
//!         *req *= 2;
//!         Ok(1)
//!     }
//!
//!     fn after(add: u32, res: &mut u32) {
//!         *res += add;
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let mut svc = service_fn(|n: u32| async move { Ok::<_, Infallible>(n) });
//! svc.ready().await.unwrap();
//! // A check that finishes later (a lookup over the network) ...
//! let check = ready(Ok::<_, Infallible>(true));
//! assert_eq!(CheckThenCall::checking(check, &mut svc, 20, Even).await.unwrap(), 41);
//! // ... or one already decided (the check future's type is then the service's to name).
//! svc.ready().await.unwrap();
//! type Decided = std::future::Ready<Result<bool, Infallible>>;
//! let refused: CheckThenCall<_, _, Decided, _> =
//!     CheckThenCall::decided(Ok::<_, Infallible>(false), &mut svc, 20, Even);
//! assert_eq!(refused.await.unwrap_err().to_string(), "odd");
//! # }
//! ```

use std::{
    error::Error,
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use pin_project_lite::pin_project;
use tower_service::Service;

use crate::BoxError;

/// What a [`CheckThenCall`] does with its check's output: before the call, refuse the request
/// or edit it; after the call, edit the response.
///
/// `Req` is the request, `Res` the inner service's response.
pub trait Gate<Req, Res> {
    /// The check's output when it succeeded.
    type Checked;
    /// What `before` keeps for `after` (`()` when the gate leaves responses alone).
    type After;

    /// Decides on the check's output: `Err` refuses the request (the inner service is not
    /// called); `Ok` may have edited `req` and carries what [`after`](Gate::after) needs.
    ///
    /// # Errors
    ///
    /// The refusal, returned as the future's error.
    fn before(self, checked: Self::Checked, req: &mut Req) -> Result<Self::After, BoxError>;

    /// Edits a successful response of the inner service (an error is returned as it is).
    fn after(after: Self::After, res: &mut Res);
}

pin_project! {
    /// The response future of a middleware that checks, then calls its inner service; see the
    /// [module docs](self).
    pub struct CheckThenCall<S: Service<Req>, Req, F, G: Gate<Req, S::Response>> {
        #[pin]
        state: State<S, Req, F, G>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S: Service<Req>, Req, F, G: Gate<Req, S::Response>> {
        // Boxed: only checks that wait hold the service and the request here, and a request
        // inline (an HTTP request is about 250 bytes) would make every future that big to
        // build and move, including those decided at once.
        Checking { #[pin] check: F, pending: Option<Box<(S, Req, G)>> },
        Called { #[pin] fut: S::Future, after: Option<G::After> },
        Failed { err: Option<BoxError> },
    }
}

impl<S, Req, F, G> CheckThenCall<S, Req, F, G>
where
    S: Service<Req>,
    G: Gate<Req, S::Response>,
{
    /// Runs `check`, then, if `gate` admits its output, calls `svc` with `req`.
    ///
    /// `svc` must be ready (its `poll_ready` returned `Ready(Ok)`): the ready service is taken
    /// out of `svc` and a clone left in its place, so the middleware can take the next request
    /// while this one is being checked.
    pub fn checking(check: F, svc: &mut S, req: Req, gate: G) -> Self
    where
        S: Clone,
    {
        let clone = svc.clone();
        let ready = std::mem::replace(svc, clone);
        Self {
            state: State::Checking {
                check,
                pending: Some(Box::new((ready, req, gate))),
            },
        }
    }

    /// A check already decided: if it passed and `gate` admits it, `svc` (ready) is called now,
    /// in place; otherwise the future returns the refusal.
    pub fn decided<E: Into<BoxError>>(
        checked: Result<G::Checked, E>,
        svc: &mut S,
        mut req: Req,
        gate: G,
    ) -> Self {
        match checked
            .map_err(Into::into)
            .and_then(|c| gate.before(c, &mut req))
        {
            Ok(after) => Self {
                state: State::Called {
                    fut: svc.call(req),
                    after: Some(after),
                },
            },
            Err(err) => Self::failed(err),
        }
    }

    /// A future that returns `err` without calling anything (the request was refused before
    /// any check, e.g. a malformed key).
    pub fn failed(err: impl Into<BoxError>) -> Self {
        Self {
            state: State::Failed {
                err: Some(err.into()),
            },
        }
    }
}

impl<S, Req, F, G> fmt::Debug for CheckThenCall<S, Req, F, G>
where
    S: Service<Req>,
    G: Gate<Req, S::Response>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Checking { .. } => "checking",
            State::Called { .. } => "called",
            State::Failed { .. } => "failed",
        };
        f.debug_struct("CheckThenCall")
            .field("state", &state)
            .finish()
    }
}

impl<S, Req, F, G, E> Future for CheckThenCall<S, Req, F, G>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    F: Future<Output = Result<G::Checked, E>>,
    E: Into<BoxError>,
    G: Gate<Req, S::Response>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Checking { check, pending } => {
                    // A refusal took `pending`: never poll the finished check again.
                    if pending.is_none() {
                        return Poll::Ready(Err(PolledAfterCompletion.into()));
                    }
                    let checked = ready!(check.poll(cx));
                    let Some(parts) = pending.take() else {
                        return Poll::Ready(Err(PolledAfterCompletion.into()));
                    };
                    let (mut svc, mut req, gate) = *parts;
                    match checked
                        .map_err(Into::into)
                        .and_then(|c| gate.before(c, &mut req))
                    {
                        Ok(after) => this.state.set(State::Called {
                            fut: svc.call(req),
                            after: Some(after),
                        }),
                        Err(err) => return Poll::Ready(Err(err)),
                    }
                }
                StateProj::Called { fut, after } => {
                    // The after-hook is taken on completion: never poll the inner future again.
                    if after.is_none() {
                        return Poll::Ready(Err(PolledAfterCompletion.into()));
                    }
                    let res = ready!(fut.poll(cx));
                    let after = after.take();
                    let mut res = res.map_err(Into::into)?;
                    if let Some(after) = after {
                        G::after(after, &mut res);
                    }
                    return Poll::Ready(Ok(res));
                }
                StateProj::Failed { err } => {
                    return Poll::Ready(Err(err
                        .take()
                        .unwrap_or_else(|| PolledAfterCompletion.into())));
                }
            }
        }
    }
}

/// A [`CheckThenCall`] polled again after it returned.
#[derive(Debug)]
struct PolledAfterCompletion;

impl fmt::Display for PolledAfterCompletion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("check-then-call future polled after completion")
    }
}

impl Error for PolledAfterCompletion {}

#[cfg(test)]
mod tests {
    use std::{
        convert::Infallible,
        future::{Ready, ready},
        sync::{
            Arc,
            atomic::{AtomicUsize, Ordering},
        },
        task::Waker,
    };

    use super::*;

    /// Doubles its request; counts its calls.
    #[derive(Clone, Default)]
    struct Double(Arc<AtomicUsize>);

    impl Service<u32> for Double {
        type Response = u32;
        type Error = Infallible;
        type Future = Ready<Result<u32, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: u32) -> Self::Future {
            self.0.fetch_add(1, Ordering::Relaxed);
            ready(Ok(req * 2))
        }
    }

    /// Admits when the check says so, adds the check's `add` to the request, and `10` to the
    /// response.
    struct AddTen;

    impl Gate<u32, u32> for AddTen {
        type Checked = Option<u32>;
        type After = u32;

        fn before(self, checked: Option<u32>, req: &mut u32) -> Result<u32, BoxError> {
            let add = checked.ok_or("refused")?;
            *req += add;
            Ok(10)
        }

        fn after(add: u32, res: &mut u32) {
            *res += add;
        }
    }

    /// A check that is pending until `open` is set.
    struct Later {
        open: Arc<AtomicUsize>,
        answer: Option<u32>,
    }

    impl Future for Later {
        type Output = Result<Option<u32>, Infallible>;

        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
            if self.open.load(Ordering::Relaxed) == 0 {
                Poll::Pending
            } else {
                Poll::Ready(Ok(self.answer))
            }
        }
    }

    type Fut<F> = CheckThenCall<Double, u32, F, AddTen>;

    fn poll<F: Future>(fut: Pin<&mut F>) -> Poll<F::Output> {
        fut.poll(&mut Context::from_waker(Waker::noop()))
    }

    fn ok<T>(poll: Poll<Result<T, BoxError>>) -> T {
        match poll {
            Poll::Ready(Ok(v)) => v,
            Poll::Ready(Err(e)) => panic!("error: {e}"),
            Poll::Pending => panic!("pending"),
        }
    }

    fn err<T>(poll: Poll<Result<T, BoxError>>) -> String {
        match poll {
            Poll::Ready(Err(e)) => e.to_string(),
            Poll::Ready(Ok(_)) => panic!("not an error"),
            Poll::Pending => panic!("pending"),
        }
    }

    #[test]
    fn a_decided_check_calls_in_place_and_runs_the_after_hook() {
        let mut svc = Double::default();
        let calls = svc.0.clone();
        let mut fut: Fut<Ready<Result<Option<u32>, Infallible>>> =
            CheckThenCall::decided(Ok::<_, Infallible>(Some(1)), &mut svc, 4, AddTen);
        assert_eq!(calls.load(Ordering::Relaxed), 1, "called at once");
        assert!(format!("{fut:?}").contains("called"));
        // (4 + 1) * 2 + 10
        assert_eq!(ok(poll(Pin::new(&mut fut))), 20);
        assert_eq!(
            err(poll(Pin::new(&mut fut))),
            "check-then-call future polled after completion"
        );
    }

    #[test]
    fn a_ready_check_future_calls_the_taken_service() {
        let mut svc = Double::default();
        let calls = svc.0.clone();
        let mut fut: Fut<_> =
            CheckThenCall::checking(ready(Ok::<_, Infallible>(Some(3))), &mut svc, 1, AddTen);
        assert_eq!(calls.load(Ordering::Relaxed), 0, "not before the check");
        assert!(format!("{fut:?}").contains("checking"));
        assert_eq!(ok(poll(Pin::new(&mut fut))), 18);
        assert_eq!(calls.load(Ordering::Relaxed), 1);
        assert_eq!(
            err(poll(Pin::new(&mut fut))),
            "check-then-call future polled after completion"
        );
    }

    #[test]
    fn a_pending_check_holds_the_call_back() {
        let mut svc = Double::default();
        let calls = svc.0.clone();
        let open = Arc::new(AtomicUsize::new(0));
        let check = Later {
            open: open.clone(),
            answer: Some(0),
        };
        let mut fut = Box::pin(CheckThenCall::checking(check, &mut svc, 5, AddTen));
        assert!(poll(fut.as_mut()).is_pending());
        assert!(poll(fut.as_mut()).is_pending());
        assert_eq!(calls.load(Ordering::Relaxed), 0);
        // The service left behind takes other requests meanwhile.
        let mut other: Fut<Ready<Result<Option<u32>, Infallible>>> =
            CheckThenCall::decided(Ok::<_, Infallible>(Some(0)), &mut svc, 1, AddTen);
        assert_eq!(ok(poll(Pin::new(&mut other))), 12);
        open.store(1, Ordering::Relaxed);
        assert_eq!(ok(poll(fut.as_mut())), 20);
        assert_eq!(calls.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_refusal_never_calls_and_never_polls_the_check_again() {
        let mut svc = Double::default();
        let calls = svc.0.clone();
        // `Ready` panics when polled twice: a second poll must not reach it.
        let mut fut: Fut<_> =
            CheckThenCall::checking(ready(Ok::<_, Infallible>(None)), &mut svc, 1, AddTen);
        assert_eq!(err(poll(Pin::new(&mut fut))), "refused");
        assert_eq!(
            err(poll(Pin::new(&mut fut))),
            "check-then-call future polled after completion"
        );
        let mut fut: Fut<Ready<Result<Option<u32>, Infallible>>> =
            CheckThenCall::decided(Ok::<_, Infallible>(None), &mut svc, 1, AddTen);
        assert_eq!(err(poll(Pin::new(&mut fut))), "refused");
        assert_eq!(calls.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_failed_check_or_a_failure_is_returned_as_it_is() {
        let mut svc = Double::default();
        let calls = svc.0.clone();
        let mut fut: Fut<_> =
            CheckThenCall::checking(ready(Err::<Option<u32>, _>("down")), &mut svc, 1, AddTen);
        assert_eq!(err(poll(Pin::new(&mut fut))), "down");
        let mut fut: Fut<Ready<Result<Option<u32>, &str>>> =
            CheckThenCall::decided(Err::<Option<u32>, _>("bad key"), &mut svc, 1, AddTen);
        assert_eq!(err(poll(Pin::new(&mut fut))), "bad key");
        let mut fut: Fut<Ready<Result<Option<u32>, &str>>> = CheckThenCall::failed("early");
        assert!(format!("{fut:?}").contains("failed"));
        assert_eq!(err(poll(Pin::new(&mut fut))), "early");
        assert_eq!(
            err(poll(Pin::new(&mut fut))),
            "check-then-call future polled after completion"
        );
        assert_eq!(calls.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn an_inner_error_skips_the_after_hook() {
        #[derive(Clone)]
        struct Fails;
        impl Service<u32> for Fails {
            type Response = u32;
            type Error = &'static str;
            type Future = Ready<Result<u32, &'static str>>;
            fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
                Poll::Ready(Ok(()))
            }
            fn call(&mut self, _: u32) -> Self::Future {
                ready(Err("inner"))
            }
        }
        let mut fut: CheckThenCall<Fails, u32, _, AddTen> =
            CheckThenCall::checking(ready(Ok::<_, Infallible>(Some(1))), &mut Fails, 1, AddTen);
        assert_eq!(err(poll(Pin::new(&mut fut))), "inner");
        assert_eq!(
            err(poll(Pin::new(&mut fut))),
            "check-then-call future polled after completion"
        );
    }
}
