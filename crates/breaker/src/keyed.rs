//! One breaker per key (host, route, tenant), on core's keyed-layer shell.

use std::{fmt, sync::Arc};

use tokio::time::Instant;
use tower_patterns_core::{
    BoxError, ConfigError,
    classify::{ErrorsAsFailures, Finish},
    keyed::{CallThrough, KeyBounds, Keyed, KeyedHandle, KeyedLayer, KeyedMap, MakeFor, PerKey},
    metric_name,
    observe::labels,
};
use tower_service::Service;

use crate::{
    CircuitBreakerHandle, Config,
    circuit::builder::{ByKey, CircuitBreakerBuilder, KeyedCircuitBreakerBuilder, NoKey},
    circuit::future::{Guard, ResponseFuture},
    circuit::machine::Machine,
    circuit::observer::{Metrics, Observer},
};

/// Layer that gives every key its own breaker: `KeyedCircuitBreakerLayer::builder(name)
/// .key(extractor)` then the breaker's settings and [`build`](KeyedCircuitBreakerBuilder::build).
///
/// Keys come from a [`KeyExtractor`](tower_patterns_core::KeyExtractor) (`E`; `Key` is its key
/// type, found from the requests); a request without a usable key fails with its
/// [`KeyError`](tower_patterns_core::KeyError) (400 through the HTTP mapping). Breakers live in
/// a bounded map: at most `KeyBounds::max_keys` keys, idle ones dropped. Metrics are counted
/// under the layer's name (keys are not labels, so their number stays bounded); events and
/// rejections name the key as `name/key`.
///
/// ```
/// use http::{HeaderName, Request};
/// use tower::{service_fn, Layer, ServiceExt};
/// use tower_patterns_breaker::{KeyedCircuitBreakerLayer, State};
/// use tower_patterns_core::{key::HeaderKey, keyed::KeyBounds, observe::StateHandle, BoxError};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let layer = KeyedCircuitBreakerLayer::builder("hosts")
///     .key(HeaderKey::new(HeaderName::from_static("x-host")))
///     .key_bounds(KeyBounds { max_keys: 1_000, ..KeyBounds::default() })
///     .consecutive_failures(1)
///     .build()
///     .unwrap();
/// let handle = layer.handle();
/// let svc = layer.layer(service_fn(|_: Request<()>| async { Err::<(), BoxError>("down".into()) }));
/// let to = |host: &str| Request::get("/").header("x-host", host).body(()).unwrap();
/// let _ = svc.clone().oneshot(to("a")).await;
/// assert_eq!(handle.get("a").unwrap().state(), State::Open);
/// assert!(handle.get("b").is_none());
/// assert_eq!(handle.report().value("keys"), Some(1.0));
/// # }
/// ```
pub type KeyedCircuitBreakerLayer<E, Key, C = ErrorsAsFailures> = KeyedLayer<E, Key, Breakers, C>;

/// Middleware with one circuit breaker per key; see [`KeyedCircuitBreakerLayer`].
///
/// It cannot fail fast in `poll_ready` (the key is in the request), so it is ready when its
/// inner service is, and rejects from `call`.
pub type KeyedCircuitBreaker<S, E, Key, C = ErrorsAsFailures> = Keyed<S, E, Key, Breakers, C>;

/// A handle on a keyed layer's breakers: `get(&str)` gives a key's
/// [`CircuitBreakerHandle`], `entries()` lists them, and its
/// [`StateHandle`](tower_patterns_core::observe::StateHandle) report counts the keys and those
/// half-open (`degraded`) or open (`unavailable`).
pub type KeyedCircuitBreakerHandle<Key> = KeyedHandle<Key, Breakers>;

/// The per-key part of a [`KeyedCircuitBreakerLayer`]: the settings every key's breaker is
/// made with, and the metrics they share.
pub struct Breakers {
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    keys: metrics::Counter,
    base: Instant,
}

impl Breakers {
    pub(crate) fn new(config: Arc<Config>) -> Self {
        Self {
            metrics: Metrics::register(&config.name, false),
            keys: metrics::counter!(
                metric_name!("breaker", "keys_total"),
                labels::NAME => config.name.to_string()
            ),
            base: Instant::now(),
            config,
        }
    }
}

impl fmt::Debug for Breakers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breakers")
            .field("name", &self.config.name)
            .finish_non_exhaustive()
    }
}

impl PerKey for Breakers {
    type Instance = CircuitBreakerHandle;
    type Builder = KeyedCircuitBreakerBuilder;
    const PATTERN: &'static str = "breaker";

    fn builder(name: Arc<str>) -> KeyedCircuitBreakerBuilder {
        CircuitBreakerBuilder::new(
            name,
            ByKey {
                extractor: NoKey,
                bounds: KeyBounds::default(),
            },
        )
    }

    fn name(&self) -> &str {
        &self.config.name
    }
}

impl<Key: fmt::Display> MakeFor<Key> for Breakers {
    fn make(&self, key: &Key) -> CircuitBreakerHandle {
        let name: Arc<str> = format!("{}/{key}", self.config.name).into();
        CircuitBreakerHandle::new(Machine::new_shared(
            self.config.clone(),
            Observer::new(
                name,
                self.metrics.clone(),
                false,
                self.config.call_metrics,
                self.base,
            ),
        ))
    }

    fn added(&self, _map: &KeyedMap<Key, CircuitBreakerHandle>) {
        self.keys.increment(1);
    }
}

impl<S, C, Req> CallThrough<S, Req, C> for Breakers
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Finish<S::Response, BoxError, Guard> + Clone,
{
    type Response = C::Response;
    type Future = ResponseFuture<S::Future, C>;
    const ALWAYS_READY: bool = false;

    #[inline]
    fn call(
        &self,
        breaker: &CircuitBreakerHandle,
        inner: &mut S,
        req: Req,
        classifier: &C,
        _inner_ready: bool,
    ) -> Self::Future {
        crate::circuit::service::call(breaker.machine(), inner, req, classifier, true, None)
    }

    fn failed(&self, err: BoxError) -> Self::Future {
        ResponseFuture::failed(err)
    }
}

impl<C, E> CircuitBreakerBuilder<C, ByKey<E>> {
    /// Builds a layer with one breaker per key.
    ///
    /// Keys come from the extractor; a request without a usable key fails with its
    /// [`KeyError`](tower_patterns_core::KeyError) (400 through the HTTP mapping). Breakers live
    /// in a bounded map (see [`key_bounds`](Self::key_bounds)). A keyed breaker is ready when
    /// its inner service is and rejects from `call` (the key is only known then).
    ///
    /// # Errors
    ///
    /// As [`CircuitBreakerBuilder::build`](crate::CircuitBreakerBuilder#method.build); when the key bounds are invalid; and with
    /// [`backpressure`](Self::backpressure), which a keyed breaker cannot honour (the circuit
    /// to wait for depends on the next request).
    pub fn build<Key>(self) -> Result<KeyedCircuitBreakerLayer<E, Key, C>, ConfigError>
    where
        Key: Clone + Eq + std::hash::Hash + fmt::Display + Send + Sync + 'static,
    {
        if self.config.backpressure {
            return Err(ConfigError::new(
                "backpressure",
                "a keyed breaker knows the circuit only from the request, so it cannot wait in poll_ready",
            ));
        }
        let config = self.config.validated()?;
        let map = KeyedMap::builder().bounds(self.mode.bounds).build()?;
        Ok(KeyedLayer::new(
            map,
            Breakers::new(Arc::new(config)),
            self.mode.extractor,
            self.classifier,
        ))
    }
}
