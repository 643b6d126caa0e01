//! The handle on a tenant layer: its registry, lookups and refusals.

use std::{
    fmt,
    sync::{Arc, atomic::Ordering},
};

use tower_patterns_core::{
    observe::{Health, Report, StateHandle},
    tenant::TenantErrorKind,
};

use super::{
    resolver::Resolver,
    stats::{REASONS, reason},
};
use crate::{Registry, TenantStore};

/// A handle on a [`TenancyLayer`](super::TenancyLayer)'s shared state, from
/// [`TenancyLayer::handle`](super::TenancyLayer::handle) or
/// [`Tenancy::handle`](super::Tenancy::handle): its registry, and what it has refused.
///
/// As a [`StateHandle`] its pattern is `tenant`; it is [`Health::Degraded`] while the tenant
/// store is failing (its last answer was an error: cached tenants are still served, the others
/// get 503), else [`Health::Ready`]. Its report's state is `serving` or `store_failing`, with
/// the values `cached_tenants`, `cached_unknown`, `cached_keys`, `cached_unknown_keys`,
/// `lookups` (requests that waited for the store), `store_failures`, `refusals` (in all) and
/// `refused_<kind>` for each kind of [`TenantErrorKind`] (`refused_malformed`,
/// `refused_missing_credentials`, `refused_invalid_credentials`, `refused_conflict`,
/// `refused_unknown`, `refused_suspended`, `refused_unavailable`).
pub struct TenancyHandle<S> {
    pub(super) resolver: Arc<Resolver<S>>,
}

impl<S> Clone for TenancyHandle<S> {
    fn clone(&self) -> Self {
        Self {
            resolver: self.resolver.clone(),
        }
    }
}

impl<S> fmt::Debug for TenancyHandle<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TenancyHandle")
            .field("name", &self.resolver.name)
            .field("lookups", &self.lookups())
            .field("refusals", &self.refusals())
            .finish_non_exhaustive()
    }
}

impl<S> TenancyHandle<S> {
    /// The registry (to invalidate a tenant after a change).
    pub fn registry(&self) -> &Registry<S> {
        &self.resolver.registry
    }

    /// How many requests waited for the tenant store (their tenant or API key was not
    /// cached).
    pub fn lookups(&self) -> u64 {
        self.resolver.stats.lookups.load(Ordering::Relaxed)
    }

    /// How many requests were refused, for any reason.
    pub fn refusals(&self) -> u64 {
        self.resolver
            .stats
            .refusals
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .sum()
    }

    /// How many requests were refused for `kind`.
    pub fn refusals_of(&self, kind: TenantErrorKind) -> u64 {
        self.resolver.stats.refusals[reason(kind)].load(Ordering::Relaxed)
    }
}

impl<S: TenantStore> StateHandle for TenancyHandle<S> {
    fn pattern(&self) -> &'static str {
        "tenant"
    }

    fn name(&self) -> &str {
        &self.resolver.name
    }

    fn health(&self) -> Health {
        if self.resolver.registry.store_failing() {
            Health::Degraded
        } else {
            Health::Ready
        }
    }

    fn report(&self) -> Report {
        let registry = &self.resolver.registry;
        let health = self.health();
        let state = if health == Health::Ready {
            "serving"
        } else {
            "store_failing"
        };
        let cached = registry.cached_counts();
        let mut report = Report::new("tenant", self.resolver.name.to_string(), health, state)
            .with_value("cached_tenants", cached.tenants as f64)
            .with_value("cached_unknown", cached.unknown as f64)
            .with_value("cached_keys", cached.keys as f64)
            .with_value("cached_unknown_keys", cached.unknown_keys as f64)
            .with_value("lookups", self.lookups() as f64)
            .with_value("store_failures", registry.store_failures() as f64)
            .with_value("refusals", self.refusals() as f64);
        for ((_, what), count) in REASONS.iter().zip(&self.resolver.stats.refusals) {
            if *what != "refused_other" || count.load(Ordering::Relaxed) > 0 {
                report = report.with_value(what, count.load(Ordering::Relaxed) as f64);
            }
        }
        report
    }
}
