//! Deciding whether a call succeeded, failed, or should count neither way.
//!
//! Breakers, retry policies and metrics all ask one question of a finished call: was it an
//! [`Outcome::Success`], an [`Outcome::Failure`], or [`Outcome::Ignored`] (a 404, a cancelled
//! call, a rejection from a layer below)? A [`Classify`] answers it.
//!
//! - [`ErrorsAsFailures`]: `Ok` succeeds, `Err` fails; the default for generic services.
//! - [`predicate`]: any closure over `&Result<Res, E>`.
//! - [`TowerHttp`]: an adapter over tower-http's [`ClassifyResponse`], so
//!   `ServerErrorsAsFailures` (5xx fail) and `GrpcErrorsAsFailures` (gRPC status) work as they
//!   are, including gRPC statuses that only arrive in trailers, with an optional list of
//!   statuses that count neither way.
//!
//! Some responses can only be judged when their body ends (gRPC sends `grpc-status` in the
//! trailers). Then the classifier answers [`Classified::RequiresEos`] and [`EosBody`] wraps the
//! body to report the outcome when it ends; [`Finish`] does either for a layer.
//!
//! ```
//! use http::{HeaderMap, Response, StatusCode};
//! use tower_http::classify::GrpcErrorsAsFailures;
//! use tower_patterns_core::classify::{Classified, Classify, ClassifyEos, Outcome, TowerHttp};
//!
//! // A streaming gRPC response: headers carry no status, the trailers do.
//! let grpc = TowerHttp::new(GrpcErrorsAsFailures::new());
//! let res: Result<Response<()>, std::io::Error> = Ok(Response::new(()));
//! let Classified::RequiresEos(eos) = grpc.classify(&res) else { panic!("needs trailers") };
//! let mut trailers = HeaderMap::new();
//! trailers.insert("grpc-status", "14".parse().unwrap()); // UNAVAILABLE
//! assert_eq!(eos.classify_eos(Some(&trailers)), Outcome::Failure);
//!
//! // HTTP: 5xx fail, and 404 counts neither way.
//! let http = TowerHttp::server_errors().ignore_status(|s| s == StatusCode::NOT_FOUND);
//! let not_found: Result<_, std::io::Error> =
//!     Ok(Response::builder().status(404).body(()).unwrap());
//! assert_eq!(http.classify(&not_found).ready(), Some(Outcome::Ignored));
//! ```

use std::{
    fmt,
    pin::Pin,
    task::{Context, Poll},
};

use http::{HeaderMap, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_http::classify::{
    ClassifiedResponse, ClassifyEos as TowerClassifyEos, ClassifyResponse, GrpcErrorsAsFailures,
    ServerErrorsAsFailures,
};

/// The verdict on one finished call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The call succeeded.
    Success,
    /// The call failed; breakers count it, retry policies may retry it.
    Failure,
    /// The call counts neither way (a client error, a cancellation, a rejection from below).
    Ignored,
}

impl Outcome {
    /// A stable label for metrics: `success`, `failure` or `ignored`.
    pub const fn label(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
            Self::Ignored => "ignored",
        }
    }
}

/// A classification that is either final or waits for the end of the response body.
#[derive(Debug)]
pub enum Classified<Eos> {
    /// The call can be judged now.
    Ready(Outcome),
    /// The call can only be judged when the body ends; `Eos` judges it then.
    RequiresEos(Eos),
}

impl<Eos> Classified<Eos> {
    /// The outcome, when it is already known.
    pub fn ready(&self) -> Option<Outcome> {
        match self {
            Self::Ready(outcome) => Some(*outcome),
            Self::RequiresEos(_) => None,
        }
    }
}

/// Judges a finished call.
///
/// Implementations are cheap to call and never allocate on the success path: they are
/// consulted on every call by breakers and retry policies.
pub trait Classify<Res, E> {
    /// What judges the end of a streaming body; [`NoEos`] when never needed.
    type Eos: ClassifyEos;

    /// Judges the result of a call.
    fn classify(&self, result: &Result<Res, E>) -> Classified<Self::Eos>;
}

/// Judges a response when its body ends.
pub trait ClassifyEos {
    /// Judges the end of the body, given its trailers if it had any.
    fn classify_eos(self, trailers: Option<&HeaderMap>) -> Outcome;

    /// Judges a body that failed while streaming. By default a failure.
    fn classify_body_error(self) -> Outcome
    where
        Self: Sized,
    {
        Outcome::Failure
    }
}

/// A [`ClassifyEos`] for classifiers that always decide at once; it cannot be constructed.
#[derive(Clone, Copy, Debug)]
pub enum NoEos {}

impl ClassifyEos for NoEos {
    fn classify_eos(self, _trailers: Option<&HeaderMap>) -> Outcome {
        match self {}
    }
}

/// `Ok` is a success and `Err` a failure: the default classifier for generic services.
#[derive(Clone, Copy, Debug, Default)]
pub struct ErrorsAsFailures;

impl<Res, E> Classify<Res, E> for ErrorsAsFailures {
    type Eos = NoEos;

    #[inline]
    fn classify(&self, result: &Result<Res, E>) -> Classified<NoEos> {
        Classified::Ready(match result {
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        })
    }
}

/// A classifier from a closure; see [`predicate`].
#[derive(Clone, Copy)]
pub struct Predicate<F> {
    f: F,
}

impl<F> fmt::Debug for Predicate<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Predicate").finish_non_exhaustive()
    }
}

/// A classifier from a closure over the call's result.
///
/// ```
/// use tower_patterns_core::classify::{predicate, Classify, Outcome};
///
/// // Timeouts fail; "not found" counts neither way.
/// let classifier = predicate(|res: &Result<u32, &str>| match res {
///     Ok(_) => Outcome::Success,
///     Err("not found") => Outcome::Ignored,
///     Err(_) => Outcome::Failure,
/// });
/// assert_eq!(classifier.classify(&Err("not found")).ready(), Some(Outcome::Ignored));
/// assert_eq!(classifier.classify(&Err("timeout")).ready(), Some(Outcome::Failure));
/// ```
pub const fn predicate<F>(f: F) -> Predicate<F> {
    Predicate { f }
}

impl<F, Res, E> Classify<Res, E> for Predicate<F>
where
    F: Fn(&Result<Res, E>) -> Outcome,
{
    type Eos = NoEos;

    #[inline]
    fn classify(&self, result: &Result<Res, E>) -> Classified<NoEos> {
        Classified::Ready((self.f)(result))
    }
}

/// Adapter that classifies HTTP and gRPC responses with a tower-http [`ClassifyResponse`].
///
/// Errors of the service are failures. A status for which the ignore predicate holds counts
/// neither way (checked before the tower-http classifier is asked).
#[derive(Clone, Copy)]
pub struct TowerHttp<C> {
    classifier: C,
    ignore: Option<fn(StatusCode) -> bool>,
}

impl<C: fmt::Debug> fmt::Debug for TowerHttp<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TowerHttp")
            .field("classifier", &self.classifier)
            .field("ignores_statuses", &self.ignore.is_some())
            .finish()
    }
}

impl<C> TowerHttp<C> {
    /// Wraps a tower-http classifier.
    pub const fn new(classifier: C) -> Self {
        Self {
            classifier,
            ignore: None,
        }
    }

    /// Statuses for which `ignore` holds count neither as success nor as failure (for example
    /// `|s| s.is_client_error()`).
    #[must_use]
    pub const fn ignore_status(mut self, ignore: fn(StatusCode) -> bool) -> Self {
        self.ignore = Some(ignore);
        self
    }
}

impl TowerHttp<ServerErrorsAsFailures> {
    /// 5xx responses and errors fail; everything else succeeds.
    pub fn server_errors() -> Self {
        Self::new(ServerErrorsAsFailures::new())
    }
}

impl TowerHttp<GrpcErrorsAsFailures> {
    /// gRPC statuses other than OK fail, whether sent in headers or trailers.
    pub fn grpc() -> Self {
        Self::new(GrpcErrorsAsFailures::new())
    }
}

impl<C, B, E> Classify<Response<B>, E> for TowerHttp<C>
where
    C: ClassifyResponse + Clone,
{
    type Eos = TowerHttpEos<C::ClassifyEos>;

    fn classify(&self, result: &Result<Response<B>, E>) -> Classified<Self::Eos> {
        let res = match result {
            Ok(res) => res,
            Err(_) => return Classified::Ready(Outcome::Failure),
        };
        if self.ignore.is_some_and(|ignore| ignore(res.status())) {
            return Classified::Ready(Outcome::Ignored);
        }
        match self.classifier.clone().classify_response(res) {
            ClassifiedResponse::Ready(Ok(())) => Classified::Ready(Outcome::Success),
            ClassifiedResponse::Ready(Err(_)) => Classified::Ready(Outcome::Failure),
            ClassifiedResponse::RequiresEos(eos) => Classified::RequiresEos(TowerHttpEos { eos }),
        }
    }
}

/// The end-of-stream half of [`TowerHttp`].
#[derive(Clone, Debug)]
pub struct TowerHttpEos<E> {
    eos: E,
}

impl<E: TowerClassifyEos> ClassifyEos for TowerHttpEos<E> {
    fn classify_eos(self, trailers: Option<&HeaderMap>) -> Outcome {
        match self.eos.classify_eos(trailers) {
            Ok(()) => Outcome::Success,
            Err(_) => Outcome::Failure,
        }
    }
}

/// Receives the outcome of a call once it is known. Implemented for `FnOnce(Outcome)`.
///
/// Layers implement it on a guard (a bulkhead permit, a breaker's record) that is released
/// when the outcome arrives.
pub trait OnOutcome {
    /// Receives the outcome. Called at most once.
    fn on_outcome(self, outcome: Outcome);
}

impl<F: FnOnce(Outcome)> OnOutcome for F {
    #[inline]
    fn on_outcome(self, outcome: Outcome) {
        self(outcome)
    }
}

/// Settles a finished call: reports its outcome now, or wraps the response so that the
/// outcome is reported when its body ends.
///
/// This is how a layer that must know the outcome (a breaker recording it, a bulkhead holding
/// its permit until the body ends) stays generic over plain services and HTTP/gRPC: `F` is the
/// layer's guard, and `Response` is the response as the layer returns it (`Res` itself for
/// generic classifiers; `Response<EosBody<B, _, F>>` for [`TowerHttp`]).
///
/// ```
/// use tower_patterns_core::classify::{ErrorsAsFailures, Finish, Outcome};
///
/// let mut seen = None;
/// let res: Result<u8, &str> = ErrorsAsFailures.finish(Err("boom"), |o| seen = Some(o));
/// assert_eq!(res, Err("boom"));
/// assert_eq!(seen, Some(Outcome::Failure));
/// ```
pub trait Finish<Res, E, F: OnOutcome> {
    /// The response as the layer returns it.
    type Response;

    /// Reports the outcome of `result` to `on_outcome`, now or when the body ends.
    fn finish(&self, result: Result<Res, E>, on_outcome: F) -> Result<Self::Response, E>;
}

impl<Res, E, F: OnOutcome> Finish<Res, E, F> for ErrorsAsFailures {
    type Response = Res;

    #[inline]
    fn finish(&self, result: Result<Res, E>, on_outcome: F) -> Result<Res, E> {
        on_outcome.on_outcome(if result.is_ok() {
            Outcome::Success
        } else {
            Outcome::Failure
        });
        result
    }
}

impl<P, Res, E, F> Finish<Res, E, F> for Predicate<P>
where
    P: Fn(&Result<Res, E>) -> Outcome,
    F: OnOutcome,
{
    type Response = Res;

    #[inline]
    fn finish(&self, result: Result<Res, E>, on_outcome: F) -> Result<Res, E> {
        on_outcome.on_outcome((self.f)(&result));
        result
    }
}

impl<C, B, E, F> Finish<Response<B>, E, F> for TowerHttp<C>
where
    C: ClassifyResponse + Clone,
    B: Body,
    F: OnOutcome,
{
    type Response = Response<EosBody<B, TowerHttpEos<C::ClassifyEos>, F>>;

    fn finish(&self, result: Result<Response<B>, E>, on_outcome: F) -> Result<Self::Response, E> {
        match (self.classify(&result), result) {
            (Classified::RequiresEos(eos), Ok(res)) => {
                Ok(res.map(|body| EosBody::new(body, eos, on_outcome)))
            }
            (Classified::Ready(outcome), result) => {
                on_outcome.on_outcome(outcome);
                result.map(|res| res.map(EosBody::done))
            }
            (Classified::RequiresEos(_), Err(e)) => {
                // `classify` decides errors at once; kept total rather than unreachable.
                on_outcome.on_outcome(Outcome::Failure);
                Err(e)
            }
        }
    }
}

pin_project! {
    /// Body that reports the outcome of a response when the body ends.
    ///
    /// - trailers arrive, or the body ends without them: the [`ClassifyEos`] judges;
    /// - the body fails: [`ClassifyEos::classify_body_error`] judges;
    /// - the body is dropped before its end (the client went away): [`Outcome::Ignored`],
    ///   unless the body already reported that it was at its end.
    ///
    /// [`EosBody::done`] passes a body through untouched, so a service can return one body type
    /// whether or not its response needed end-of-stream classification.
    pub struct EosBody<B: Body, C: ClassifyEos, F: OnOutcome> {
        #[pin]
        inner: B,
        pending: Option<(C, F)>,
    }

    impl<B, C, F> PinnedDrop for EosBody<B, C, F>
    where
        B: Body,
        C: ClassifyEos,
        F: OnOutcome,
    {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some((eos, callback)) = this.pending.take() {
                let outcome = if this.inner.is_end_stream() {
                    eos.classify_eos(None)
                } else {
                    Outcome::Ignored
                };
                callback.on_outcome(outcome);
            }
        }
    }
}

impl<B: Body, C: ClassifyEos, F: OnOutcome> EosBody<B, C, F> {
    /// Wraps `inner`; `callback` receives the outcome that `eos` gives when the body ends.
    pub const fn new(inner: B, eos: C, callback: F) -> Self {
        Self {
            inner,
            pending: Some((eos, callback)),
        }
    }

    /// Wraps `inner` with nothing left to report.
    pub const fn done(inner: B) -> Self {
        Self {
            inner,
            pending: None,
        }
    }

    /// Whether the outcome is still to be reported.
    pub const fn is_pending(&self) -> bool {
        self.pending.is_some()
    }
}

impl<B: Body + fmt::Debug, C: ClassifyEos, F: OnOutcome> fmt::Debug for EosBody<B, C, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EosBody")
            .field("inner", &self.inner)
            .field("pending", &self.pending.is_some())
            .finish()
    }
}

impl<B, C, F> Body for EosBody<B, C, F>
where
    B: Body,
    C: ClassifyEos,
    F: OnOutcome,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = std::task::ready!(this.inner.poll_frame(cx));
        if let Some((eos, callback)) = this.pending.take() {
            match &polled {
                Some(Ok(frame)) => match frame.trailers_ref() {
                    Some(trailers) => callback.on_outcome(eos.classify_eos(Some(trailers))),
                    None => *this.pending = Some((eos, callback)),
                },
                Some(Err(_)) => callback.on_outcome(eos.classify_body_error()),
                None => callback.on_outcome(eos.classify_eos(None)),
            }
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests;
