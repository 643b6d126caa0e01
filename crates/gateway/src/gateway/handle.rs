//! The gateway's handle: generation, reloads, requests per route.

use std::sync::{Arc, atomic::Ordering};

use tower_patterns_core::observe::{Health, Report, StateHandle};

use super::Shared;

/// Reads the gateway's state (pattern `gateway`): the configuration generation, reloads
/// applied and refused, the last refusal, and each route's answers by class. Its `report()`
/// also publishes the per-route counts as `tower_patterns_gateway_requests_total{name, route,
/// class}` (counted in atomics on the request path, published when read, as the conventions
/// ask).
#[derive(Clone)]
pub struct GatewayHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for GatewayHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayHandle")
            .field("name", &self.shared.name)
            .finish()
    }
}

/// The classes of answers counted per route.
pub(crate) const CLASSES: [&str; 4] = ["2xx", "3xx", "4xx", "5xx"];

impl GatewayHandle {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// The generation being served.
    pub fn generation(&self) -> u64 {
        self.shared.current.load().generation
    }

    /// Reloads applied since start.
    pub fn reloads(&self) -> u64 {
        self.shared.reloads_ok.load(Ordering::Relaxed)
    }

    /// Reloads refused (an invalid file) since start.
    pub fn refused(&self) -> u64 {
        self.shared.reloads_refused.load(Ordering::Relaxed)
    }

    /// Why the last reload was refused, if one was.
    pub fn last_refusal(&self) -> Option<String> {
        self.shared
            .last_refusal
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The answers of route `route` so far, by class (2xx, 3xx, 4xx, 5xx).
    pub fn route_counts(&self, route: &str) -> Option<[u64; 4]> {
        let current = self.shared.current.load();
        let r = current.routes.iter().find(|r| &*r.name == route)?;
        Some(std::array::from_fn(|i| {
            r.counts.by_class[i].load(Ordering::Relaxed)
        }))
    }

    /// Whether the gateway is draining (shutting down).
    pub fn draining(&self) -> bool {
        self.shared.draining.load(Ordering::Relaxed)
    }
}

impl StateHandle for GatewayHandle {
    fn pattern(&self) -> &'static str {
        "gateway"
    }

    fn name(&self) -> &str {
        &self.shared.name
    }

    fn report(&self) -> Report {
        let current = self.shared.current.load();
        let draining = self.draining();
        let (health, state) = if draining {
            (Health::Unavailable, "draining")
        } else {
            (Health::Ready, "serving")
        };
        let mut report = Report::new("gateway", self.shared.name.to_string(), health, state)
            .with_value("generation", current.generation as f64)
            .with_value("reloads", self.reloads() as f64)
            .with_value("refused", self.refused() as f64)
            .with_value("routes", current.routes.len() as f64);
        let mut total = 0;
        for route in &current.routes {
            for (i, class) in CLASSES.iter().enumerate() {
                let n = route.counts.by_class[i].load(Ordering::Relaxed);
                total += n;
                metrics::counter!(
                    "tower_patterns_gateway_requests_total",
                    "name" => self.shared.name.to_string(),
                    "route" => route.name.to_string(),
                    "class" => *class,
                )
                .absolute(n);
            }
        }
        report = report.with_value("requests", total as f64);
        report
    }
}
