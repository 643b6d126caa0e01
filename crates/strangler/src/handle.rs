//! The migration's handle.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use tower_patterns_core::{
    ConfigError,
    observe::{Health, Report, StateHandle},
};

use crate::{
    Mode, RampAction, RampEvent, RampStatus, Sample, Share, StranglerError,
    ramp::driver,
    shadow::{Mismatch, ShadowCounts},
    state::{RouteSlot, Table},
};

/// Reads and changes a migration at runtime (pattern `strangler`): each route's mode, the
/// ramps and their decisions, tenant pins, the read-only switch, and shadow mode's counts.
///
/// Changes take effect on the next request, without a lock on the request path.
#[derive(Clone)]
pub struct StranglerHandle {
    table: Arc<Table>,
}

impl std::fmt::Debug for StranglerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StranglerHandle")
            .field("name", &self.table.name)
            .finish_non_exhaustive()
    }
}

/// Requests each side served on a route since the migration was built.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SideCounts {
    /// Served by legacy.
    pub legacy: u64,
    /// Served by the new side.
    pub new: u64,
    /// Served by legacy in shadow mode (copied to the new side or not).
    pub shadow: u64,
}

/// A route as the handle shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteState {
    /// The route's name (`fallback` for requests no route matches).
    pub name: Arc<str>,
    /// Its prefix.
    pub prefix: String,
    /// Its mode now.
    pub mode: Mode,
    /// Its ramp, if it has one.
    pub ramp: Option<RampState>,
    /// Requests by side.
    pub counts: SideCounts,
}

/// Where a route's ramp stands.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RampState {
    /// Running, complete, rolled back or paused.
    pub status: RampStatus,
    /// The share of the step it is at (none after a rollback from the first step).
    pub share: Share,
    /// How long the step has been held healthy.
    pub held: Duration,
}

impl StranglerHandle {
    pub(crate) fn new(table: Arc<Table>) -> Self {
        Self { table }
    }

    fn route(&self, name: &str) -> Result<&RouteSlot, StranglerError> {
        self.table
            .find(name)
            .ok_or_else(|| StranglerError::unknown_route(name))
    }

    /// Every route, longest prefix first, then `fallback`.
    pub fn routes(&self) -> Vec<RouteState> {
        self.table.routes.iter().map(state).collect()
    }

    /// A route's mode.
    pub fn mode(&self, route: &str) -> Option<Mode> {
        self.table.find(route).map(|r| r.mode.get())
    }

    /// Sets a route's mode, returning the one before. A running ramp on the route pauses (an
    /// operator's word wins); [`resume_ramp`](Self::resume_ramp) starts it again.
    pub fn set_mode(&self, route: &str, mode: Mode) -> Result<Mode, StranglerError> {
        let slot = self.route(route)?;
        // Under the ramp's lock, so a driver judging the route at this moment cannot set its
        // own mode over this one.
        let progress = slot.ramp.as_ref().map(|r| {
            r.progress
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        });
        let before = self.table.set_mode(slot, mode);
        if let Some(mut p) = progress
            && p.status == RampStatus::Running
        {
            p.status = RampStatus::Paused;
            drop(p);
            driver::record(
                &self.table,
                &slot.name,
                RampAction::Pause,
                before.share(),
                mode.share(),
                format!("mode set to {mode} by hand"),
                Sample::default(),
                Sample::default(),
            );
        }
        Ok(before)
    }

    /// Sends everything on a route back to legacy at once (pausing its ramp); returns the
    /// mode before.
    pub fn rollback(&self, route: &str) -> Result<Mode, StranglerError> {
        self.set_mode(route, Mode::Legacy)
    }

    /// Starts a rolled-back or paused ramp again from the step it stands at (from the first
    /// step after a rollback from it). Does nothing to a running or complete ramp.
    pub fn resume_ramp(&self, route: &str) -> Result<(), StranglerError> {
        let slot = self.route(route)?;
        let Some(ramp) = &slot.ramp else {
            return Err(StranglerError::unknown_route(route));
        };
        let mut p = ramp
            .progress
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if matches!(p.status, RampStatus::Running | RampStatus::Complete) {
            return Ok(());
        }
        let step = p.step.unwrap_or(0);
        *p = crate::ramp::policy::Progress {
            step: Some(step),
            baseline: p.baseline,
            ..crate::ramp::policy::Progress::start()
        };
        let to = ramp.ramp.steps[step];
        // Windows gathered while stopped are not judged.
        ramp.legacy.take();
        ramp.new.take();
        let before = self.table.set_mode(slot, driver::mode_for(to));
        drop(p);
        driver::record(
            &self.table,
            &slot.name,
            RampAction::Resume,
            before.share(),
            to,
            "resumed by hand".into(),
            Sample::default(),
            Sample::default(),
        );
        Ok(())
    }

    /// Where a route's ramp stands, if the route has one.
    pub fn ramp(&self, route: &str) -> Option<RampState> {
        self.table.find(route).and_then(ramp_state)
    }

    /// The ramps' decisions (advances, rollbacks, completions, pauses, resumes), oldest first;
    /// the last 256 are kept.
    pub fn ramp_events(&self) -> Vec<RampEvent> {
        self.table
            .events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    /// Starts the ramps' drivers if the layer was built outside a Tokio runtime (call from
    /// inside one). Returns whether they run.
    pub fn start_ramps(&self) -> bool {
        if self
            .table
            .drivers
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return true;
        }
        let started = driver::spawn(&self.table);
        if !started {
            self.table.drivers.store(false, Ordering::Release);
        }
        started
    }

    /// Replaces the tenants pinned to each side.
    pub fn set_tenants(
        &self,
        new: impl IntoIterator<Item = impl Into<String>>,
        legacy: impl IntoIterator<Item = impl Into<String>>,
    ) -> Result<(), ConfigError> {
        let new: Vec<String> = new.into_iter().map(Into::into).collect();
        let legacy: Vec<String> = legacy.into_iter().map(Into::into).collect();
        self.table.set_pins(crate::layer::pins(&new, &legacy)?);
        Ok(())
    }

    /// Refuses (or allows again) writes that would reach legacy.
    pub fn set_legacy_read_only(&self, on: bool) {
        self.table.legacy_read_only.store(on, Ordering::Relaxed);
        tracing::info!(target: "tower_patterns_strangler", name = %self.table.name, read_only = on, "legacy read-only switch");
    }

    /// Whether writes to legacy are refused.
    pub fn legacy_read_only(&self) -> bool {
        self.table.legacy_read_only.load(Ordering::Relaxed)
    }

    /// Requests each side served on a route.
    pub fn counts(&self, route: &str) -> Option<SideCounts> {
        self.table.find(route).map(counts)
    }

    /// Shadow mode's counts, if shadow mode is set up.
    pub fn shadow(&self) -> Option<ShadowCounts> {
        self.table.shadow.as_ref().map(|m| m.counts())
    }

    /// The last shadow mismatches (up to 32), oldest first.
    pub fn mismatches(&self) -> Vec<Mismatch> {
        self.table
            .shadow
            .as_ref()
            .map(|m| m.samples())
            .unwrap_or_default()
    }
}

fn counts(r: &RouteSlot) -> SideCounts {
    let c = |i: usize| r.counts[i].load(Ordering::Relaxed);
    SideCounts {
        legacy: c(0),
        new: c(1),
        shadow: c(2),
    }
}

fn ramp_state(r: &RouteSlot) -> Option<RampState> {
    let slot = r.ramp.as_ref()?;
    let p = slot
        .progress
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    Some(RampState {
        status: p.status,
        share: p.step.map_or(Share::NONE, |i| slot.ramp.steps[i]),
        held: p.held,
    })
}

fn state(r: &RouteSlot) -> RouteState {
    RouteState {
        name: r.name.clone(),
        prefix: r.prefix.clone(),
        mode: r.mode.get(),
        ramp: ramp_state(r),
        counts: counts(r),
    }
}

impl StateHandle for StranglerHandle {
    fn pattern(&self) -> &'static str {
        "strangler"
    }

    fn name(&self) -> &str {
        &self.table.name
    }

    fn report(&self) -> Report {
        let routes = self.routes();
        let rolled_back = routes
            .iter()
            .filter(|r| r.ramp.is_some_and(|s| s.status == RampStatus::RolledBack))
            .count();
        let (health, state) = if rolled_back > 0 {
            (Health::Degraded, "rolled_back")
        } else if routes.iter().all(|r| r.mode == Mode::New) {
            (Health::Ready, "migrated")
        } else {
            (Health::Ready, "migrating")
        };
        let total = |f: fn(&SideCounts) -> u64| routes.iter().map(|r| f(&r.counts)).sum::<u64>();
        let mut report = Report::new("strangler", self.table.name.to_string(), health, state)
            .with_value("routes", routes.len() as f64)
            .with_value("rolled_back", rolled_back as f64)
            .with_value("legacy_requests", total(|c| c.legacy) as f64)
            .with_value("new_requests", total(|c| c.new) as f64)
            .with_value("shadow_requests", total(|c| c.shadow) as f64);
        if let Some(m) = &self.table.shadow {
            m.publish();
        }
        if let Some(s) = self.shadow() {
            report = report
                .with_value("shadow_mismatched", s.mismatched as f64)
                .with_value("shadow_matched", s.matched as f64);
        }
        for r in &routes {
            for (side, n) in [
                ("legacy", r.counts.legacy),
                ("new", r.counts.new),
                ("shadow", r.counts.shadow),
            ] {
                metrics::counter!(
                    "tower_patterns_strangler_requests_total",
                    "name" => self.table.name.to_string(),
                    "route" => r.name.to_string(),
                    "side" => side,
                )
                .absolute(n);
            }
        }
        report
    }
}
