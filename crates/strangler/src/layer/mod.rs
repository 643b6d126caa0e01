//! The layer and its builder.

use std::{
    collections::{HashSet, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64},
    },
};

use arc_swap::ArcSwap;
use http::HeaderName;
use tower_layer::Layer;
use tower_patterns_core::{ConfigError, tenant::TenantId};

use crate::{
    Mode, Route, Shadow, StranglerError, StranglerHandle,
    key::Salt,
    ramp::{driver, policy::Progress, window::Window},
    state::{Pins, RampSlot, RouteSlot, Table},
    table::ModeCell,
};

pub(crate) mod body;
pub(crate) mod future;
pub(crate) mod service;

/// Marker: the builder has no sticky key yet (see [`StranglerBuilder::key`]).
#[derive(Debug)]
pub struct NoKey;

/// Marker: the builder has no new side yet (see [`StranglerBuilder::new_side`]).
#[derive(Debug)]
pub struct NoNew;

/// Builds a [`StranglerLayer`]: see [`StranglerLayer::builder`].
///
/// The sticky key and the new side are required: `build()` exists once both are set (the
/// markers [`NoKey`] and [`NoNew`] are not `Clone`, which `build()` asks of both).
#[derive(Debug)]
pub struct StranglerBuilder<K = NoKey, N = NoNew> {
    name: Arc<str>,
    key: K,
    new: N,
    settings: Settings,
}

/// The builder's settings that change no type parameter.
#[derive(Debug)]
struct Settings {
    routes: Vec<Route>,
    fallback: Mode,
    override_header: Option<HeaderName>,
    new_tenants: Vec<String>,
    legacy_tenants: Vec<String>,
    salt: Option<String>,
    legacy_read_only: bool,
    shadow: Option<Shadow>,
}

/// Applies a migration around the legacy service: each request goes to the legacy service or
/// the new one (see the [crate docs](crate)).
///
/// Cheap to clone; every clone and every service it makes share one migration table, one
/// handle and one set of ramps.
pub struct StranglerLayer<K, N> {
    key: K,
    new: N,
    table: Arc<Table>,
}

impl<K: Clone, N: Clone> Clone for StranglerLayer<K, N> {
    fn clone(&self) -> Self {
        Self {
            key: self.key.clone(),
            new: self.new.clone(),
            table: self.table.clone(),
        }
    }
}

impl<K, N> std::fmt::Debug for StranglerLayer<K, N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StranglerLayer")
            .field("name", &self.table.name)
            .field("routes", &self.table.routes.len())
            .finish_non_exhaustive()
    }
}

impl StranglerLayer<NoKey, NoNew> {
    /// Starts a migration named `name` (in logs, metrics and the handle; also the default
    /// salt of its buckets).
    pub fn builder(name: impl Into<Arc<str>>) -> StranglerBuilder {
        StranglerBuilder {
            name: name.into(),
            key: NoKey,
            new: NoNew,
            settings: Settings {
                routes: Vec::new(),
                fallback: Mode::Legacy,
                override_header: None,
                new_tenants: Vec::new(),
                legacy_tenants: Vec::new(),
                salt: None,
                legacy_read_only: false,
                shadow: None,
            },
        }
    }
}

impl<K, N> StranglerLayer<K, N> {
    /// The migration's handle: read and change the table, follow the ramps.
    pub fn handle(&self) -> StranglerHandle {
        StranglerHandle::new(self.table.clone())
    }
}

impl<L, K: Clone, N: Clone> Layer<L> for StranglerLayer<K, N> {
    type Service = crate::Strangler<L, N, K>;

    fn layer(&self, legacy: L) -> Self::Service {
        crate::Strangler {
            legacy,
            new: self.new.clone(),
            key: self.key.clone(),
            table: self.table.clone(),
        }
    }
}

impl<K, N> StranglerBuilder<K, N> {
    /// The sticky key of splits (required): any key extractor whose key gives its bytes, such
    /// as a user id header set by a trusted proxy, or the tenant. A request without one goes to
    /// legacy.
    pub fn key<K2>(self, key: K2) -> StranglerBuilder<K2, N> {
        StranglerBuilder {
            name: self.name,
            key,
            new: self.new,
            settings: self.settings,
        }
    }

    /// The new side (required): the service requests sent to the new side go to. The layer
    /// wraps the legacy one.
    pub fn new_side<N2>(self, new: N2) -> StranglerBuilder<K, N2> {
        StranglerBuilder {
            name: self.name,
            key: self.key,
            new,
            settings: self.settings,
        }
    }

    /// Adds a route. Routes are matched longest prefix first.
    pub fn route(mut self, route: Route) -> Self {
        self.settings.routes.push(route);
        self
    }

    /// The mode of requests no route matches (default [`Mode::Legacy`]: the monolith keeps
    /// whatever has not been moved). While it is legacy, overrides and tenant pins do not
    /// apply to those requests (the new side does not serve them).
    pub fn fallback(mut self, mode: Mode) -> Self {
        self.settings.fallback = mode;
        self
    }

    /// A header whose value `legacy` or `new` sends a request to that side, whatever the
    /// table says (for testers; default none). Any other value is ignored and logged, never an
    /// error to the client. Anyone who can send the header can choose the side: in front of
    /// untrusted clients, strip it at the edge or set it only from a verified identity.
    pub fn override_header(mut self, name: HeaderName) -> Self {
        self.settings.override_header = Some(name);
        self
    }

    /// Tenants always served by the new side (beta customers), except in shadow mode and
    /// below the override header. Read from core's [`TenantId`] in the request extensions, as
    /// the tenant layer sets it.
    pub fn new_tenants(mut self, tenants: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.settings
            .new_tenants
            .extend(tenants.into_iter().map(Into::into));
        self
    }

    /// Tenants always served by the legacy side (a customer not ready to move); these win
    /// over [`new_tenants`](Self::new_tenants).
    pub fn legacy_tenants(mut self, tenants: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.settings
            .legacy_tenants
            .extend(tenants.into_iter().map(Into::into));
        self
    }

    /// The salt of the buckets (default the migration's name). Changing it reshuffles callers.
    pub fn salt(mut self, salt: impl Into<String>) -> Self {
        self.settings.salt = Some(salt.into());
        self
    }

    /// Refuses writes that would reach the legacy side (503 `legacy service is read-only`):
    /// the migration's last phase, before the monolith is switched off. Also settable
    /// through the handle.
    pub fn legacy_read_only(mut self, on: bool) -> Self {
        self.settings.legacy_read_only = on;
        self
    }

    /// Enables shadow mode for routes in [`Mode::Shadow`] (without it, such routes are served
    /// by legacy alone).
    pub fn shadow(mut self, shadow: Shadow) -> Self {
        self.settings.shadow = Some(shadow);
        self
    }
}

impl<K, N> StranglerBuilder<K, N>
where
    K: Clone + Send + Sync + 'static,
    N: Clone + Send + 'static,
{
    /// Checks the settings and builds the layer. Starts the ramps' drivers when called inside
    /// a Tokio runtime; otherwise call [`StranglerHandle::start_ramps`] from one.
    pub fn build(self) -> Result<StranglerLayer<K, N>, ConfigError> {
        StranglerError::register();
        let mut names = HashSet::new();
        for route in &self.settings.routes {
            route.validate()?;
            if !names.insert(route.name.clone()) {
                return Err(ConfigError::new(
                    "route",
                    format!("two routes named {:?}", route.name),
                ));
            }
            if let Some(ramp) = &route.ramp {
                ramp.check()?;
            }
        }
        let pins = pins(&self.settings.new_tenants, &self.settings.legacy_tenants)?;
        if let Some(shadow) = &self.settings.shadow {
            shadow.check()?;
        }
        let mut routes = self.settings.routes;
        // Longest prefix first; among equals, the first declared (a stable sort).
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.trim_end_matches('/').len()));
        let mut slots: Vec<RouteSlot> = routes.into_iter().map(slot).collect();
        slots.push(slot(
            Route::prefix("/")
                .named("fallback")
                .mode(self.settings.fallback),
        ));
        let has_ramps = slots.iter().any(|s| s.ramp.is_some());
        for s in &slots {
            for side in ["legacy", "new", "shadow"] {
                metrics::counter!(
                    "tower_patterns_strangler_requests_total",
                    "name" => self.name.to_string(),
                    "route" => s.name.to_string(),
                    "side" => side,
                )
                .increment(0);
            }
            if s.ramp.is_some() {
                for action in ["advance", "rollback", "complete", "pause", "resume"] {
                    metrics::counter!(
                        "tower_patterns_strangler_ramp_total",
                        "name" => self.name.to_string(),
                        "route" => s.name.to_string(),
                        "action" => action,
                    )
                    .increment(0);
                }
            }
        }
        let table = Arc::new(Table {
            salt: Salt::new(self.settings.salt.as_deref().unwrap_or(&self.name)),
            routes: slots.into_boxed_slice(),
            override_header: self.settings.override_header,
            has_pins: AtomicBool::new(!pins.new.is_empty() || !pins.legacy.is_empty()),
            pins: ArcSwap::from_pointee(pins),
            legacy_read_only: AtomicBool::new(self.settings.legacy_read_only),
            events: Mutex::new(VecDeque::new()),
            bad_override_logged: AtomicU64::new(0),
            born: std::time::Instant::now(),
            marker: self.settings.shadow.as_ref().map_or_else(
                || HeaderName::from_static("x-shadow-request"),
                |s| s.marker_name().clone(),
            ),
            shadow: self
                .settings
                .shadow
                .map(|s| Arc::new(s.build(self.name.clone()))),
            drivers: AtomicBool::new(false),
            name: self.name,
        });
        if has_ramps {
            let started = driver::spawn(&table);
            table
                .drivers
                .store(started, std::sync::atomic::Ordering::Relaxed);
            if !started {
                tracing::warn!(
                    target: "tower_patterns_strangler",
                    name = %table.name,
                    "built outside a Tokio runtime: ramps wait for StranglerHandle::start_ramps"
                );
            }
        }
        Ok(StranglerLayer {
            key: self.key,
            new: self.new,
            table,
        })
    }
}

fn slot(route: Route) -> RouteSlot {
    let ramp = route.ramp.map(|ramp| RampSlot {
        ramp,
        legacy: Window::default(),
        new: Window::default(),
        progress: Mutex::new(Progress::start()),
    });
    let mode = match &ramp {
        Some(r) => driver::mode_for(r.ramp.steps[0]),
        None => route.mode,
    };
    RouteSlot {
        name: route.name,
        matched: route.prefix.trim_end_matches('/').into(),
        prefix: route.prefix,
        methods: route.methods,
        mode: ModeCell::new(mode),
        ramp,
        counts: Default::default(),
    }
}

/// Validated tenant pins.
pub(crate) fn pins(new: &[String], legacy: &[String]) -> Result<Pins, ConfigError> {
    let set = |list: &[String]| {
        list.iter()
            .map(|t| {
                TenantId::validate(t)
                    .map(|()| Arc::<str>::from(t.as_str()))
                    .map_err(|_| ConfigError::new("tenants", format!("not a tenant id: {t:?}")))
            })
            .collect::<Result<HashSet<_>, _>>()
    };
    Ok(Pins {
        new: set(new)?,
        legacy: set(legacy)?,
    })
}
