//! The gateway: a `Service` over the current configuration generation, its builder, its
//! handle, and its listeners.

mod handle;
mod reload;
mod serve;
mod service;

/// The response future of [`Gateway`].
pub mod future {
    pub use super::service::ResponseFuture;
}

use std::{
    fmt,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64},
    },
};

use arc_swap::ArcSwap;
pub use handle::GatewayHandle;
pub use reload::Reloader;
use tower_patterns_core::{ConfigError, observe::StateHandle};

use crate::{
    compile::{Compiled, compile},
    config::GatewayConfig,
};

/// An API gateway built from a configuration file; see the [crate docs](crate).
///
/// It is a `Service<Request<B>>` that never fails (every refusal is a response), cheap to
/// clone: every clone serves the current configuration, which [`Reloader`] swaps. A request
/// keeps the generation it started with to its end, so a swap never touches work in flight.
#[derive(Clone)]
pub struct Gateway {
    pub(crate) shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub(crate) name: Arc<str>,
    pub(crate) current: ArcSwap<Compiled>,
    pub(crate) path: Option<PathBuf>,
    pub(crate) seed: u64,
    pub(crate) reloads_ok: AtomicU64,
    pub(crate) reloads_refused: AtomicU64,
    pub(crate) last_refusal: Mutex<Option<String>>,
    pub(crate) reload_lock: Mutex<()>,
    pub(crate) draining: AtomicBool,
    #[cfg(feature = "prometheus")]
    pub(crate) prometheus: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

impl fmt::Debug for Gateway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gateway")
            .field("name", &self.shared.name)
            .field("generation", &self.shared.current.load().generation)
            .finish_non_exhaustive()
    }
}

/// The configuration of a [`GatewayBuilder`] before `config` or `config_file` sets one.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoConfig;

/// Where a builder's configuration comes from.
#[derive(Clone, Debug)]
pub enum ConfigSource {
    /// A file, reloadable.
    File(PathBuf),
    /// A configuration already parsed; a reload needs [`Reloader::apply`].
    Parsed(Box<GatewayConfig>),
}

/// Builds a [`Gateway`]: `Gateway::builder(name).config_file(path)` (or `.config(parsed)`),
/// then the optional settings, then `build()`.
pub struct GatewayBuilder<C = NoConfig> {
    pub(crate) name: Arc<str>,
    config: C,
    pub(crate) seed: u64,
    #[cfg(feature = "prometheus")]
    pub(crate) prometheus: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

impl<C: fmt::Debug> fmt::Debug for GatewayBuilder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayBuilder")
            .field("name", &self.name)
            .field("config", &self.config)
            .field("seed", &self.seed)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// A builder for a gateway named `name` (in metrics, logs and handles).
    pub fn builder(name: impl Into<Arc<str>>) -> GatewayBuilder {
        GatewayBuilder {
            name: name.into(),
            config: NoConfig,
            seed: 0x5eed,
            #[cfg(feature = "prometheus")]
            prometheus: None,
        }
    }

    /// The gateway's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The configuration generation being served (1 for the first, one more per reload).
    pub fn generation(&self) -> u64 {
        self.shared.current.load().generation
    }

    /// The configuration being served.
    pub fn config(&self) -> GatewayConfig {
        self.shared.current.load().config.clone()
    }

    /// A handle on the gateway's state (pattern `gateway`).
    pub fn handle(&self) -> GatewayHandle {
        GatewayHandle::new(self.shared.clone())
    }

    /// The handles of every stateful part of the current generation: the gateway's own, each
    /// upstream group's (addresses, breaker, bulkhead, retry budget) and each limiter's.
    pub fn handles(&self) -> Vec<Arc<dyn StateHandle>> {
        let mut out: Vec<Arc<dyn StateHandle>> = vec![Arc::new(self.handle())];
        out.extend(self.shared.current.load().handles());
        out
    }

    /// The migration of route `route` (a route of kind `strangler`) in the current
    /// generation: its mode, ramp, tenant pins and shadow counts, changed at runtime through
    /// the handle until a reload changes the route's table.
    pub fn migration(&self, route: &str) -> Option<tower_patterns_strangler::StranglerHandle> {
        self.shared
            .current
            .load()
            .migrations
            .get(route)
            .map(|m| m.handle.clone())
    }

    /// Swaps configurations: from the file on demand, on a change, on SIGHUP, or a parsed
    /// one.
    pub fn reloader(&self) -> Reloader {
        Reloader::new(self.clone())
    }
}

impl<C> GatewayBuilder<C> {
    fn with<C2>(self, config: C2) -> GatewayBuilder<C2> {
        GatewayBuilder {
            name: self.name,
            config,
            seed: self.seed,
            #[cfg(feature = "prometheus")]
            prometheus: self.prometheus,
        }
    }

    /// Reads the configuration from the file at `path` (and reloads from it). Required (or
    /// [`config`](Self::config)).
    pub fn config_file(self, path: impl Into<PathBuf>) -> GatewayBuilder<ConfigSource> {
        let path = path.into();
        self.with(ConfigSource::File(path))
    }

    /// Serves a configuration already parsed. Required (or [`config_file`](Self::config_file)).
    pub fn config(self, config: GatewayConfig) -> GatewayBuilder<ConfigSource> {
        self.with(ConfigSource::Parsed(Box::new(config)))
    }

    /// Seeds the randomness of the balancers and of the retries' jitter (fixed by default), for reproducible
    /// runs.
    #[must_use]
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Renders `/metrics` from this Prometheus recorder's handle (feature `prometheus`).
    #[cfg(feature = "prometheus")]
    #[must_use]
    pub fn prometheus(mut self, handle: metrics_exporter_prometheus::PrometheusHandle) -> Self {
        self.prometheus = Some(handle);
        self
    }
}

impl GatewayBuilder<ConfigSource> {
    /// Builds the gateway: reads and checks the configuration, builds every upstream group,
    /// limiter and authentication scheme.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] (field `config`) whose reason is the located
    /// [`ConfigFileError`](crate::ConfigFileError): `gateway.toml:12:5: routes[0].upstream: ...`.
    pub fn build(self) -> Result<Gateway, ConfigError> {
        crate::error::register();
        let (config, path) = match self.config {
            ConfigSource::File(path) => (GatewayConfig::from_file(&path), Some(path)),
            ConfigSource::Parsed(config) => (Ok(*config), None),
        };
        let as_error = |e: crate::ConfigFileError| ConfigError::new("config", e.to_string());
        let config = config.map_err(as_error)?;
        let compiled = compile(&self.name, config, None, 1, self.seed).map_err(as_error)?;
        let name = self.name;
        for outcome in ["ok", "refused"] {
            metrics::counter!("tower_patterns_gateway_reloads_total", "name" => name.to_string(), "outcome" => outcome).absolute(0);
        }
        metrics::gauge!("tower_patterns_gateway_config_generation", "name" => name.to_string())
            .set(1.0);
        Ok(Gateway {
            shared: Arc::new(Shared {
                name,
                current: ArcSwap::from_pointee(compiled),
                path,
                seed: self.seed,
                reloads_ok: AtomicU64::new(0),
                reloads_refused: AtomicU64::new(0),
                last_refusal: Mutex::new(None),
                reload_lock: Mutex::new(()),
                draining: AtomicBool::new(false),
                #[cfg(feature = "prometheus")]
                prometheus: self.prometheus,
            }),
        })
    }
}
