//! The crate's metric names, registered at `build()` so they show at zero.

/// Events applied, per projection.
pub(crate) const APPLIED: &str = "tower_patterns_cqrs_applied_total";
/// Retries of failed events.
pub(crate) const RETRIES: &str = "tower_patterns_cqrs_retries_total";
/// Events set aside in the dead-letter table.
pub(crate) const DEAD_LETTERS: &str = "tower_patterns_cqrs_dead_letters_total";
/// Events behind the head.
pub(crate) const LAG_EVENTS: &str = "tower_patterns_cqrs_lag_events";
/// Seconds behind the head.
pub(crate) const LAG_SECONDS: &str = "tower_patterns_cqrs_lag_seconds";

/// Registers a projection's counters and gauges.
pub(crate) fn register(name: &str) {
    let name = name.to_owned();
    for counter in [APPLIED, RETRIES, DEAD_LETTERS] {
        metrics::counter!(counter, "name" => name.clone()).absolute(0);
    }
    for gauge in [LAG_EVENTS, LAG_SECONDS] {
        metrics::gauge!(gauge, "name" => name.clone()).set(0.0);
    }
}
