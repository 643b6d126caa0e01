//! The state a chaos layer shares with its services and its handle.

use std::{
    fmt,
    sync::{
        Arc, PoisonError, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use tower_patterns_core::{
    ConfigError,
    observe::{Health, Report, StateHandle, labels},
    rng::{GOLDEN_GAMMA, mix},
};

use crate::{
    fault::{Effect, Fault, FaultKind},
    policy::Plan,
};

const INJECTED: &str = tower_patterns_core::metric_name!("chaos", "injected_total");
const ACTIVE: &str = tower_patterns_core::metric_name!("chaos", "active");

pub(crate) struct Shared {
    name: Arc<str>,
    /// Whether the layer is enabled and its plan has a fault: the one load an untouched call
    /// costs.
    active: AtomicBool,
    enabled: AtomicBool,
    seed: AtomicU64,
    draws: AtomicU64,
    plan: RwLock<Plan>,
    injected: [AtomicU64; 5],
    counters: [metrics::Counter; 5],
    gauge: metrics::Gauge,
}

impl Shared {
    /// Registers the metrics on the recorder installed now.
    pub(crate) fn new(name: Arc<str>, seed: u64, enabled: bool, plan: Plan) -> Self {
        let counters = FaultKind::ALL.map(|kind| {
            metrics::counter!(INJECTED, labels::NAME => name.to_string(), labels::KIND => kind.label())
        });
        let gauge = metrics::gauge!(ACTIVE, labels::NAME => name.to_string());
        let shared = Self {
            name,
            active: AtomicBool::new(false),
            enabled: AtomicBool::new(enabled),
            seed: AtomicU64::new(seed),
            draws: AtomicU64::new(0),
            plan: RwLock::new(plan),
            injected: Default::default(),
            counters,
            gauge,
        };
        shared.update(|_, _| {});
        shared
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Whether a selected call should draw at all.
    #[inline]
    pub(crate) fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// Draws for one selected call: the fault it gets, counted, or `None`.
    pub(crate) fn draw(&self) -> Option<Effect> {
        let n = self.draws.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        let seed = self.seed.load(Ordering::Relaxed);
        let bits = mix(seed.wrapping_add(n.wrapping_mul(GOLDEN_GAMMA)));
        let effect = self.read().pick(bits)?.clone();
        let kind = effect.kind();
        self.injected[kind.index()].fetch_add(1, Ordering::Relaxed);
        self.counters[kind.index()].increment(1);
        tracing::debug!(target: "tower_patterns::chaos", name = %self.name, kind = kind.label(), "fault injected");
        Some(effect)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Plan> {
        self.plan.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Changes the plan or the switch under the lock, then recomputes `active`.
    fn update(&self, change: impl FnOnce(&mut Plan, &AtomicBool)) {
        let mut plan = self.plan.write().unwrap_or_else(PoisonError::into_inner);
        change(&mut plan, &self.enabled);
        let active = self.enabled.load(Ordering::Relaxed) && !plan.is_empty();
        self.active.store(active, Ordering::Relaxed);
        self.gauge.set(if active { 1.0 } else { 0.0 });
    }
}

/// Reads and switches a chaos layer at runtime: the faults, on or off, its seed, and how many
/// faults of each kind it has injected. Cloning it is cheap; every clone, the layer and its
/// services share one state.
///
/// ```
/// use std::time::Duration;
/// use http::StatusCode;
/// use tower_patterns_chaos::{ChaosLayer, Fault, FaultKind};
/// use tower_patterns_core::observe::{Health, StateHandle};
///
/// let layer = ChaosLayer::builder("payments").build().unwrap();
/// let handle = layer.handle();
/// assert!(!handle.is_active());
/// handle.set([Fault::status(StatusCode::BAD_GATEWAY).rate(0.5)]).unwrap();
/// assert!(handle.is_active());
/// assert_eq!(handle.health(), Health::Degraded);
/// assert!(handle.set([Fault::hang().rate(2.0)]).is_err()); // the plan is unchanged
/// assert_eq!(handle.faults()[0].kind(), FaultKind::Status);
/// handle.disable();
/// assert_eq!(handle.report().state, "off");
/// ```
#[derive(Clone)]
pub struct ChaosHandle {
    pub(crate) shared: Arc<Shared>,
}

impl ChaosHandle {
    /// Replaces the faults. Checked as the builder checks them (each rate from 0 to 1, the
    /// rates adding up to at most 1); on an error nothing changes.
    pub fn set(&self, faults: impl IntoIterator<Item = Fault>) -> Result<(), ConfigError> {
        let plan = Plan::new(faults.into_iter().collect())?;
        self.shared.update(|current, _| *current = plan);
        Ok(())
    }

    /// Removes every fault: calls pass untouched.
    pub fn clear(&self) {
        self.shared.update(|plan, _| *plan = Plan::default());
    }

    /// Switches the faults on (the default once built).
    pub fn enable(&self) {
        self.shared
            .update(|_, enabled| enabled.store(true, Ordering::Relaxed));
    }

    /// Switches the faults off, keeping them for [`enable`](Self::enable).
    pub fn disable(&self) {
        self.shared
            .update(|_, enabled| enabled.store(false, Ordering::Relaxed));
    }

    /// Whether the layer is switched on (it may still have no fault).
    pub fn is_enabled(&self) -> bool {
        self.shared.enabled.load(Ordering::Relaxed)
    }

    /// Whether the layer is switched on and has at least one fault.
    pub fn is_active(&self) -> bool {
        self.shared.is_active()
    }

    /// The current faults.
    pub fn faults(&self) -> Vec<Fault> {
        self.shared.read().faults().to_vec()
    }

    /// Starts the random sequence again from `seed`: the selected calls that follow get the
    /// faults that the same calls got after the layer was built with that seed.
    pub fn reseed(&self, seed: u64) {
        self.shared.update(|_, _| {
            self.shared.seed.store(seed, Ordering::Relaxed);
            self.shared.draws.store(0, Ordering::Relaxed);
        });
    }

    /// How many faults of `kind` the layer has injected.
    pub fn injected(&self, kind: FaultKind) -> u64 {
        self.shared.injected[kind.index()].load(Ordering::Relaxed)
    }

    /// How many selected calls drew while the layer was active (with or without a fault).
    pub fn draws(&self) -> u64 {
        self.shared.draws.load(Ordering::Relaxed)
    }
}

impl StateHandle for ChaosHandle {
    fn pattern(&self) -> &'static str {
        "chaos"
    }

    fn name(&self) -> &str {
        self.shared.name()
    }

    /// Ready while off; degraded while it is failing some calls on purpose.
    fn health(&self) -> Health {
        if self.is_active() {
            Health::Degraded
        } else {
            Health::Ready
        }
    }

    /// State `on` or `off`; values `rate` (the share of selected calls that get a fault),
    /// `draws` and `injected_<kind>` for each kind.
    fn report(&self) -> Report {
        let (state, rate) = if self.is_active() {
            ("on", self.shared.read().total())
        } else {
            ("off", 0.0)
        };
        let mut report = Report::new("chaos", self.shared.name.to_string(), self.health(), state)
            .with_value("rate", rate)
            .with_value("draws", self.draws() as f64);
        for (kind, what) in FaultKind::ALL.into_iter().zip([
            "injected_latency",
            "injected_status",
            "injected_error",
            "injected_hang",
            "injected_abort",
        ]) {
            report = report.with_value(what, self.injected(kind) as f64);
        }
        report
    }
}

impl fmt::Debug for ChaosHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChaosHandle")
            .field("name", &self.shared.name)
            .field("active", &self.is_active())
            .field("faults", &self.shared.read().faults())
            .finish()
    }
}
