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

/// Sets a projection's lag gauges.
pub(crate) fn set_lag(name: &str, lag: crate::projection::Lag) {
    metrics::gauge!(LAG_EVENTS, "name" => name.to_owned()).set(lag.events as f64);
    metrics::gauge!(LAG_SECONDS, "name" => name.to_owned()).set(lag.seconds);
}

/// A runner's counters, looked up once when it starts.
pub(crate) struct Meters {
    pub(crate) applied: metrics::Counter,
    pub(crate) retries: metrics::Counter,
    pub(crate) dead_letters: metrics::Counter,
}

impl Meters {
    pub(crate) fn new(name: &str) -> Self {
        Self {
            applied: metrics::counter!(APPLIED, "name" => name.to_owned()),
            retries: metrics::counter!(RETRIES, "name" => name.to_owned()),
            dead_letters: metrics::counter!(DEAD_LETTERS, "name" => name.to_owned()),
        }
    }
}
