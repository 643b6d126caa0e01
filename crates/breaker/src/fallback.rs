//! Middleware that answers a failed call with a fallback: a value, a function of the failure,
//! another service, or the last good response for the request's key.
//!
//! The fallback runs when the inner service fails (any error by default, including a
//! [`Rejected`] from a breaker or bulkhead below) or answers with a response the classifier
//! calls a failure. [`FallbackLayer::on_rejection_only`] narrows it to fail-fast rejections.
//!
//! ```
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_patterns_breaker::FallbackLayer;
//! use tower_patterns_core::BoxError;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let prices = ServiceBuilder::new()
//!     .layer(FallbackLayer::value(0u32))
//!     .service(service_fn(|_: &str| async { Err::<u32, BoxError>("pricing down".into()) }));
//! assert_eq!(prices.oneshot("sku-1").await.unwrap(), 0);
//! # }
//! ```

use std::{
    fmt,
    future::Future,
    hash::Hash,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use pin_project_lite::pin_project;
use tower::util::Oneshot;
use tower_layer::Layer;
use tower_patterns_core::{
    BoxError, ConfigError, KeyExtractor, Rejected,
    classify::{Classified, Classify, ErrorsAsFailures, Outcome},
    keyed::KeyedMap,
};
use tower_service::Service;

/// Why the fallback runs.
#[derive(Debug)]
pub enum Cause<Res> {
    /// The inner service failed (or a layer below rejected the call).
    Error(BoxError),
    /// The inner service answered with a response classified as a failure.
    Response(Res),
}

impl<Res> Cause<Res> {
    /// The rejection behind the failure, if a fail-fast layer rejected the call.
    pub fn rejected(&self) -> Option<&Rejected> {
        match self {
            Self::Error(e) => Rejected::find(&**e),
            Self::Response(_) => None,
        }
    }

    /// The failure as an error (a failed response becomes a generic error).
    pub fn into_error(self) -> BoxError {
        match self {
            Self::Error(e) => e,
            Self::Response(_) => "response classified as a failure".into(),
        }
    }

    /// The failure as the inner service gave it.
    fn into_result(self) -> Result<Res, BoxError> {
        match self {
            Self::Error(e) => Err(e),
            Self::Response(res) => Ok(res),
        }
    }
}

/// What a fallback does; implemented by the strategies of [`FallbackLayer`].
pub trait Strategy<Req, Res> {
    /// What the strategy keeps from the request before it is sent.
    type Context;
    /// The fallback's future.
    type Future: Future<Output = Result<Res, BoxError>>;

    /// Keeps what the fallback will need from the request.
    fn prepare(&self, req: &Req) -> Self::Context;

    /// The call succeeded.
    fn succeeded(&self, _context: Self::Context, _res: &Res) {}

    /// The call failed: answer instead.
    fn fallback(&self, context: Self::Context, cause: Cause<Res>) -> Self::Future;
}

/// Answers with a clone of a fixed value.
#[derive(Clone, Debug)]
pub struct Value<T>(T);

impl<Req, Res: Clone> Strategy<Req, Res> for Value<Res> {
    type Context = ();
    type Future = std::future::Ready<Result<Res, BoxError>>;

    fn prepare(&self, _req: &Req) {}

    fn fallback(&self, _: (), _: Cause<Res>) -> Self::Future {
        std::future::ready(Ok(self.0.clone()))
    }
}

/// Answers with a function of the failure.
#[derive(Clone)]
pub struct FromFn<F>(F);

impl<F> fmt::Debug for FromFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FromFn").finish_non_exhaustive()
    }
}

impl<F, Req, Res> Strategy<Req, Res> for FromFn<F>
where
    F: Fn(Cause<Res>) -> Result<Res, BoxError>,
{
    type Context = ();
    type Future = std::future::Ready<Result<Res, BoxError>>;

    fn prepare(&self, _req: &Req) {}

    fn fallback(&self, _: (), cause: Cause<Res>) -> Self::Future {
        std::future::ready((self.0)(cause))
    }
}

/// Sends a copy of the request to another service.
#[derive(Clone, Debug)]
pub struct ToService<S>(S);

impl<S, Req, Res> Strategy<Req, Res> for ToService<S>
where
    S: Service<Req, Response = Res> + Clone,
    S::Error: Into<BoxError>,
    Req: Clone,
{
    type Context = Req;
    type Future = MapErr<Oneshot<S, Req>>;

    fn prepare(&self, req: &Req) -> Req {
        req.clone()
    }

    fn fallback(&self, req: Req, _: Cause<Res>) -> Self::Future {
        MapErr {
            fut: Oneshot::new(self.0.clone(), req),
        }
    }
}

pin_project! {
    /// A future whose error is turned into a [`BoxError`].
    #[derive(Debug)]
    pub struct MapErr<F> {
        #[pin]
        fut: F,
    }
}

impl<F, T, E> Future for MapErr<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().fut.poll(cx).map_err(Into::into)
    }
}

/// Answers with the last good response seen for the request's key; fails as the inner
/// service did when there is none (or it is older than the maximum age).
pub struct LastGood<K, Key, Res> {
    extractor: K,
    store: KeyedMap<Key, (tokio::time::Instant, Res)>,
    max_age: Option<Duration>,
}

impl<K: Clone, Key, Res> Clone for LastGood<K, Key, Res> {
    fn clone(&self) -> Self {
        Self {
            extractor: self.extractor.clone(),
            store: self.store.clone(),
            max_age: self.max_age,
        }
    }
}

impl<K, Key, Res> fmt::Debug for LastGood<K, Key, Res> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LastGood")
            .field("max_age", &self.max_age)
            .finish_non_exhaustive()
    }
}

impl<K, Key, Req, Res> Strategy<Req, Res> for LastGood<K, Key, Res>
where
    K: KeyExtractor<Req, Key = Key>,
    Key: Clone + Eq + Hash + Send + Sync + 'static,
    Res: Clone + Send + Sync + 'static,
{
    type Context = Option<Key>;
    type Future = std::future::Ready<Result<Res, BoxError>>;

    fn prepare(&self, req: &Req) -> Option<Key> {
        self.extractor.extract(req).ok()
    }

    fn succeeded(&self, key: Option<Key>, res: &Res) {
        if let Some(key) = key {
            self.store
                .insert(key, (tokio::time::Instant::now(), res.clone()));
        }
    }

    fn fallback(&self, key: Option<Key>, cause: Cause<Res>) -> Self::Future {
        let fresh = key
            .and_then(|k| self.store.get(&k))
            .filter(|(at, _)| self.max_age.is_none_or(|max| at.elapsed() <= max));
        std::future::ready(match fresh {
            Some((_, res)) => Ok(res),
            None => cause.into_result(),
        })
    }
}

/// Layer that answers failed calls with a fallback; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct FallbackLayer<P, C = ErrorsAsFailures> {
    strategy: Arc<P>,
    classifier: C,
    rejections_only: bool,
}

impl<T> FallbackLayer<Value<T>> {
    /// Answers failures with a clone of `value`.
    pub fn value(value: T) -> Self {
        Self::new(Value(value))
    }
}

impl<F> FallbackLayer<FromFn<F>> {
    /// Answers failures with `f(cause)`.
    pub fn from_fn(f: F) -> Self {
        Self::new(FromFn(f))
    }
}

impl<S> FallbackLayer<ToService<S>> {
    /// Sends a copy of each failed request to `service` (requests must be `Clone`; each
    /// call keeps a copy until it ends).
    pub fn service(service: S) -> Self {
        Self::new(ToService(service))
    }
}

impl<K, Key, Res> FallbackLayer<LastGood<K, Key, Res>>
where
    Key: Hash + Eq + Send + Sync + 'static,
    Res: Clone + Send + Sync + 'static,
{
    /// Answers a failure with the last good response for the request's key (taken by
    /// `extractor`), if it is no older than `max_age`; keeps at most `max_keys` responses.
    ///
    /// # Errors
    ///
    /// When `max_keys` is 0.
    pub fn last_good(
        extractor: K,
        max_keys: u64,
        max_age: Option<Duration>,
    ) -> Result<Self, ConfigError> {
        let store = KeyedMap::builder()
            .max_entries(max_keys)
            .no_idle_timeout()
            .build()?;
        Ok(Self::new(LastGood {
            extractor,
            store,
            max_age,
        }))
    }
}

impl<P> FallbackLayer<P> {
    /// A layer with a custom [`Strategy`].
    pub fn new(strategy: P) -> Self {
        Self {
            strategy: Arc::new(strategy),
            classifier: ErrorsAsFailures,
            rejections_only: false,
        }
    }
}

impl<P, C> FallbackLayer<P, C> {
    /// Also falls back on responses that `classifier` calls failures (decided at once;
    /// end-of-stream classifications cannot be taken back and count as successes here).
    pub fn classifier<C2>(self, classifier: C2) -> FallbackLayer<P, C2> {
        FallbackLayer {
            strategy: self.strategy,
            classifier,
            rejections_only: self.rejections_only,
        }
    }

    /// Falls back only when a fail-fast layer rejected the call ([`Rejected`]: open circuit,
    /// full bulkhead, rate limit); other failures pass through.
    #[must_use]
    pub fn on_rejection_only(mut self) -> Self {
        self.rejections_only = true;
        self
    }
}

impl<S, P, C: Clone> Layer<S> for FallbackLayer<P, C> {
    type Service = Fallback<S, P, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Fallback {
            inner,
            strategy: self.strategy.clone(),
            classifier: self.classifier.clone(),
            rejections_only: self.rejections_only,
        }
    }
}

/// Middleware that answers failed calls with a fallback; see [`FallbackLayer`].
pub struct Fallback<S, P, C = ErrorsAsFailures> {
    inner: S,
    strategy: Arc<P>,
    classifier: C,
    rejections_only: bool,
}

impl<S: Clone, P, C: Clone> Clone for Fallback<S, P, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            strategy: self.strategy.clone(),
            classifier: self.classifier.clone(),
            rejections_only: self.rejections_only,
        }
    }
}

impl<S: fmt::Debug, P, C> fmt::Debug for Fallback<S, P, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fallback")
            .field("inner", &self.inner)
            .field("rejections_only", &self.rejections_only)
            .finish_non_exhaustive()
    }
}

impl<S, P, C> Fallback<S, P, C> {
    tower_patterns_core::inner_service_accessors!();
}

impl<S, P, C, Req> Service<Req> for Fallback<S, P, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    P: Strategy<Req, S::Response>,
    C: Classify<S::Response, BoxError> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = FallbackFuture<S::Future, P, C, Req, S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let context = self.strategy.prepare(&req);
        FallbackFuture {
            state: FallbackState::Primary {
                fut: self.inner.call(req),
                context: Some(context),
            },
            strategy: self.strategy.clone(),
            classifier: self.classifier.clone(),
            rejections_only: self.rejections_only,
        }
    }
}

pin_project! {
    /// Response future of [`Fallback`].
    pub struct FallbackFuture<F, P, C, Req, Res>
    where
        P: Strategy<Req, Res>,
    {
        #[pin]
        state: FallbackState<F, P::Context, P::Future>,
        strategy: Arc<P>,
        classifier: C,
        rejections_only: bool,
    }
}

pin_project! {
    #[project = StateProj]
    enum FallbackState<F, Ctx, G> {
        Primary {
            #[pin]
            fut: F,
            context: Option<Ctx>,
        },
        Fallback {
            #[pin]
            fut: G,
        },
    }
}

impl<F, P, C, Req, Res> fmt::Debug for FallbackFuture<F, P, C, Req, Res>
where
    P: Strategy<Req, Res>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            FallbackState::Primary { .. } => "primary",
            FallbackState::Fallback { .. } => "fallback",
        };
        f.debug_struct("FallbackFuture")
            .field("state", &state)
            .finish()
    }
}

impl<F, P, C, Req, Res, E> Future for FallbackFuture<F, P, C, Req, Res>
where
    F: Future<Output = Result<Res, E>>,
    E: Into<BoxError>,
    P: Strategy<Req, Res>,
    C: Classify<Res, BoxError>,
{
    type Output = Result<Res, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let (result, context) = match this.state.as_mut().project() {
                StateProj::Fallback { fut } => return fut.poll(cx),
                StateProj::Primary { fut, context } => {
                    let result = std::task::ready!(fut.poll(cx)).map_err(Into::into);
                    (result, context.take())
                }
            };
            let Some(context) = context else {
                return Poll::Ready(result);
            };
            let failed = match this.classifier.classify(&result) {
                Classified::Ready(Outcome::Failure) => true,
                Classified::Ready(_) | Classified::RequiresEos(_) => false,
            };
            let cause = match result {
                Ok(res) if !failed => {
                    this.strategy.succeeded(context, &res);
                    return Poll::Ready(Ok(res));
                }
                Ok(res) => Cause::Response(res),
                Err(e) => Cause::Error(e),
            };
            if *this.rejections_only && cause.rejected().is_none() {
                return Poll::Ready(cause.into_result());
            }
            let fut = this.strategy.fallback(context, cause);
            this.state.set(FallbackState::Fallback { fut });
        }
    }
}
