//! Runs the ramps: one task per ramped route, waking every window, holding only a weak
//! reference to the migration so it ends when the migration is dropped.

use std::{
    sync::{Arc, Weak},
    time::{Duration, SystemTime},
};

use super::{
    RampAction, RampEvent, Sample,
    policy::{RampStatus, Verdict, evaluate},
};
use crate::{Mode, Share, state::Table};

/// The mode a ramp's share gives: the whole new side at 100%, so callers without a key move
/// too.
pub(crate) fn mode_for(share: Share) -> Mode {
    if share == Share::ALL {
        Mode::New
    } else {
        Mode::Split(share)
    }
}

/// Starts a driver for every ramped route, if a Tokio runtime is running. Returns whether it
/// did.
pub(crate) fn spawn(table: &Arc<Table>) -> bool {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return false;
    };
    for (index, route) in table.routes.iter().enumerate() {
        if let Some(slot) = &route.ramp {
            rt.spawn(drive(Arc::downgrade(table), index, slot.ramp.window));
        }
    }
    true
}

async fn drive(table: Weak<Table>, index: usize, window: Duration) {
    let start = tokio::time::Instant::now() + window;
    let mut ticks = tokio::time::interval_at(start, window);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(table) = table.upgrade() else {
            return;
        };
        step(&table, index, window);
    }
}

/// Judges one window of route `index` and acts on the verdict.
pub(crate) fn step(table: &Table, index: usize, window: Duration) {
    let route = &table.routes[index];
    let Some(slot) = &route.ramp else {
        return;
    };
    let (legacy, new) = (slot.legacy.take(), slot.new.take());
    let mut progress = slot
        .progress
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let verdict = evaluate(&slot.ramp, &progress, &legacy, &new, window);
    if legacy.requests >= slot.ramp.min_requests {
        progress.baseline = Some(legacy);
    }
    let share_of = |step: Option<usize>| step.map_or(Share::NONE, |i| slot.ramp.steps[i]);
    let from = share_of(progress.step);
    let (action, to, reason) = match verdict {
        Verdict::Healthy => {
            progress.held += window;
            return;
        }
        Verdict::Hold(why) => {
            tracing::debug!(
                target: "tower_patterns_strangler",
                name = %table.name, route = %route.name, share = %from, why,
                "ramp holds"
            );
            return;
        }
        Verdict::Advance(next) => {
            progress.step = Some(next);
            progress.held = Duration::ZERO;
            let to = share_of(Some(next));
            (RampAction::Advance, to, format!("held {from} healthy"))
        }
        Verdict::Complete => {
            progress.status = RampStatus::Complete;
            (
                RampAction::Complete,
                Share::ALL,
                format!("held {from} healthy"),
            )
        }
        Verdict::Rollback(back, reason) => {
            progress.step = back;
            progress.held = Duration::ZERO;
            progress.status = RampStatus::RolledBack;
            (RampAction::Rollback, share_of(back), reason)
        }
    };
    let mode = if progress.step.is_none() {
        Mode::Legacy
    } else {
        mode_for(to)
    };
    table.set_mode(route, mode);
    drop(progress);
    record(table, &route.name, action, from, to, reason, legacy, new);
}

/// Logs, counts and keeps a ramp event.
#[allow(clippy::too_many_arguments)]
pub(crate) fn record(
    table: &Table,
    route: &Arc<str>,
    action: RampAction,
    from: Share,
    to: Share,
    reason: String,
    legacy: Sample,
    new: Sample,
) {
    let (lp, np) = (
        legacy.p99.map(|d| d.as_secs_f64() * 1e3),
        new.p99.map(|d| d.as_secs_f64() * 1e3),
    );
    if action == RampAction::Rollback {
        tracing::warn!(
            target: "tower_patterns_strangler",
            name = %table.name, route = %route, action = action.as_str(), %from, %to, %reason,
            legacy_requests = legacy.requests, legacy_errors = legacy.errors, legacy_p99_ms = ?lp,
            new_requests = new.requests, new_errors = new.errors, new_p99_ms = ?np,
            "ramp rolled back"
        );
    } else {
        tracing::info!(
            target: "tower_patterns_strangler",
            name = %table.name, route = %route, action = action.as_str(), %from, %to, %reason,
            legacy_requests = legacy.requests, legacy_errors = legacy.errors, legacy_p99_ms = ?lp,
            new_requests = new.requests, new_errors = new.errors, new_p99_ms = ?np,
            "ramp moved"
        );
    }
    metrics::counter!(
        "tower_patterns_strangler_ramp_total",
        "name" => table.name.to_string(),
        "route" => route.to_string(),
        "action" => action.as_str(),
    )
    .increment(1);
    table.keep(RampEvent {
        route: route.clone(),
        action,
        from,
        to,
        reason,
        legacy,
        new,
        at: SystemTime::now(),
    });
}
