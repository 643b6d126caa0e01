//! The layer: the built configuration and shared state, applied to inner services.

use std::{fmt, sync::Arc};

use tower_layer::Layer;

use super::{handle::TenancyHandle, resolver::Resolver, service::Tenancy};
use crate::Registry;

/// Resolves the tenant of every request; build it with [`TenancyLayer::builder`].
///
/// Sources are tried in the order they were added; every source present must name the same
/// tenant (else 403), at least one must be present (else 401), the tenant must be in the
/// registry and active (else 403, the same answer for both). A header, the host and the path
/// are unverified: unless the builder was told
/// [`allow_unverified`](super::TenancyBuilder::allow_unverified), a verified token or API key
/// must be present (else 401) and they may only agree with it. The request then carries a
/// [`TenantId`](tower_patterns_core::tenant::TenantId), a
/// [`TenantContext`](super::TenantContext) and, when the peer is known, a
/// [`ClientIp`](super::ClientIp). Failures are
/// [`TenantError`](tower_patterns_core::tenant::TenantError)s, which the HTTP mapping of
/// `tower-patterns-core` answers with the right status.
///
/// Every clone of the layer, and every service it makes, shares one registry cache and one
/// [`TenancyHandle`].
pub struct TenancyLayer<S> {
    pub(super) resolver: Arc<Resolver<S>>,
}

impl<S> Clone for TenancyLayer<S> {
    fn clone(&self) -> Self {
        Self {
            resolver: self.resolver.clone(),
        }
    }
}

impl<S> fmt::Debug for TenancyLayer<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TenancyLayer")
            .field("name", &self.resolver.name)
            .field("sources", &self.resolver.sources)
            .field("allow_unverified", &self.resolver.allow_unverified)
            .finish_non_exhaustive()
    }
}

impl<S> TenancyLayer<S> {
    /// The registry (to invalidate a tenant after a change).
    pub fn registry(&self) -> &Registry<S> {
        &self.resolver.registry
    }

    /// The handle: the registry's cache and health, lookups and refusals (see
    /// [`TenancyHandle`]).
    pub fn handle(&self) -> TenancyHandle<S> {
        TenancyHandle {
            resolver: self.resolver.clone(),
        }
    }
}

impl<S, Svc> Layer<Svc> for TenancyLayer<S> {
    type Service = Tenancy<Svc, S>;

    fn layer(&self, inner: Svc) -> Self::Service {
        Tenancy {
            inner,
            resolver: self.resolver.clone(),
        }
    }
}
