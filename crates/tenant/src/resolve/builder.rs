//! The builder of [`TenancyLayer`]: the name, the store (a required part), the sources.

use std::{fmt, sync::Arc};

use http::HeaderName;
use tower_patterns_core::{ConfigError, http::register_error_response};

use super::{layer::TenancyLayer, net::Net, resolver::Resolver, sources::Source, stats::Stats};
use crate::{JwtVerifier, Registry, StoreError, TenantStore};

/// The store of a [`TenancyBuilder`] that has none yet: set one with
/// [`store`](TenancyBuilder::store) or [`registry`](TenancyBuilder::registry) before
/// [`build`](TenancyBuilder::build).
#[derive(Clone, Copy, Debug)]
pub struct NoStore;

/// Builds a [`TenancyLayer`]; from [`TenancyLayer::builder`].
///
/// The tenant store is a required part: [`build`](Self::build) exists once
/// [`store`](Self::store) (cached with [`Registry::new`]'s defaults) or
/// [`registry`](Self::registry) (a registry with its own cache settings) has set it.
pub struct TenancyBuilder<S = NoStore> {
    name: Arc<str>,
    sources: Vec<Source>,
    registry: Option<Registry<S>>,
    trusted: Vec<Net>,
    allow_unverified: bool,
    error: Option<ConfigError>,
}

impl<S> fmt::Debug for TenancyBuilder<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TenancyBuilder")
            .field("name", &self.name)
            .field("sources", &self.sources)
            .field("allow_unverified", &self.allow_unverified)
            .finish_non_exhaustive()
    }
}

impl TenancyLayer<NoStore> {
    /// A builder for the tenant layer `name` (its metrics, logs and handle). Set the tenant
    /// store with [`store`](TenancyBuilder::store) or [`registry`](TenancyBuilder::registry),
    /// then the sources.
    pub fn builder(name: impl Into<Arc<str>>) -> TenancyBuilder<NoStore> {
        TenancyBuilder {
            name: name.into(),
            sources: Vec::new(),
            registry: None,
            trusted: Vec::new(),
            allow_unverified: false,
            error: None,
        }
    }
}

impl<S> TenancyBuilder<S> {
    /// The tenant store, cached with [`Registry::new`]'s defaults.
    pub fn store<S2: TenantStore>(self, store: S2) -> TenancyBuilder<S2> {
        self.registry(Registry::new(store))
    }

    /// A registry over the tenant store with its own cache settings
    /// ([`Registry::with_ttls`]), or one shared with other layers and listeners.
    pub fn registry<S2: TenantStore>(self, registry: Registry<S2>) -> TenancyBuilder<S2> {
        TenancyBuilder {
            name: self.name,
            sources: self.sources,
            registry: Some(registry),
            trusted: self.trusted,
            allow_unverified: self.allow_unverified,
            error: self.error,
        }
    }

    fn header_name(&mut self, name: &str) -> Option<HeaderName> {
        match HeaderName::try_from(name) {
            Ok(name) => Some(name),
            Err(_) => {
                self.error.get_or_insert_with(|| {
                    ConfigError::new("header", format!("{name:?} is not a header name"))
                });
                None
            }
        }
    }

    /// The tenant id in a header (`x-tenant-id`, say). Unverified: anyone can send it, so
    /// pair it with a token or an API key, which it must then agree with, or opt in with
    /// [`allow_unverified`](Self::allow_unverified).
    #[must_use]
    pub fn header(mut self, name: &str) -> Self {
        if let Some(name) = self.header_name(name) {
            self.sources.push(Source::Header(name));
        }
        self
    }

    /// The tenant as the one label of the host under `base` (`acme.shop.example`).
    /// Unverified, like [`header`](Self::header).
    #[must_use]
    pub fn subdomain(mut self, base: &str) -> Self {
        self.sources.push(Source::Subdomain(
            base.trim_matches('.').to_ascii_lowercase(),
        ));
        self
    }

    /// The tenant as the path segment after `prefix` (`/t/` gives `acme` for `/t/acme/orders`).
    /// Unverified, like [`header`](Self::header).
    #[must_use]
    pub fn path_prefix(mut self, prefix: &str) -> Self {
        self.sources.push(Source::PathPrefix(prefix.to_owned()));
        self
    }

    /// The tenant as a claim of a verified bearer token.
    #[must_use]
    pub fn jwt(mut self, verifier: JwtVerifier) -> Self {
        self.sources.push(Source::Jwt(verifier));
        self
    }

    /// The tenant that owns the API key in header `name` (looked up by its SHA-256).
    #[must_use]
    pub fn api_key(mut self, name: &str) -> Self {
        if let Some(name) = self.header_name(name) {
            self.sources.push(Source::ApiKey(name));
        }
        self
    }

    /// Proxies (addresses or CIDRs) whose `X-Forwarded-Host`, `Forwarded` and
    /// `X-Forwarded-For` are believed. From any other peer they are not.
    #[must_use]
    pub fn trusted_proxies<'a>(mut self, nets: impl IntoIterator<Item = &'a str>) -> Self {
        for net in nets {
            match Net::parse(net) {
                Ok(net) => self.trusted.push(net),
                Err(e) => {
                    self.error.get_or_insert(e);
                }
            }
        }
        self
    }

    /// Lets a request that carries no token and no API key be resolved by its unverified
    /// sources (header, subdomain, path) alone: any caller can then choose any tenant, so
    /// use it only behind a gateway that authenticates, or for trusted internal callers.
    ///
    /// Without it the layer is closed: a layer with only unverified sources does not build,
    /// and one with a [`jwt`](Self::jwt) or [`api_key`](Self::api_key) source refuses a
    /// request that lacks such a credential with 401, whatever its header says. With it or
    /// without it, a credential that is present must verify (else 401) and every other
    /// source present must name the same tenant (else 403): an unverified source never
    /// outranks a verified one.
    #[must_use]
    pub const fn allow_unverified(mut self) -> Self {
        self.allow_unverified = true;
        self
    }
}

impl<S: TenantStore> TenancyBuilder<S> {
    /// Builds the layer (and registers its metrics with the `metrics` recorder installed
    /// now, and [`StoreError`]'s HTTP mapping with core).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for a bad header name or proxy address, no source at all, or only
    /// unverified sources without [`allow_unverified`](Self::allow_unverified).
    pub fn build(self) -> Result<TenancyLayer<S>, ConfigError> {
        if let Some(err) = self.error {
            return Err(err);
        }
        let Some(registry) = self.registry else {
            // Unreachable: a builder whose store is a `TenantStore` was given one.
            return Err(ConfigError::new("store", "no tenant store"));
        };
        if self.sources.is_empty() {
            return Err(ConfigError::new("sources", "no tenant source"));
        }
        if !self.allow_unverified && !self.sources.iter().any(Source::is_verified) {
            return Err(ConfigError::new(
                "sources",
                "only unverified tenant sources (header, subdomain, path): add a token or an API \
                 key, or call allow_unverified() for trusted internal callers",
            ));
        }
        register_error_response::<StoreError>();
        Ok(TenancyLayer {
            resolver: Arc::new(Resolver {
                stats: Stats::new(&self.name),
                name: self.name,
                sources: self.sources,
                registry,
                trusted: self.trusted,
                allow_unverified: self.allow_unverified,
            }),
        })
    }
}
