//! Metric names: what an orchestrator publishes through the `metrics` facade, registered at
//! zero when it is built.
//!
//! ```
//! use tower_patterns_saga::metrics;
//!
//! assert_eq!(metrics::ENDED, "tower_patterns_saga_ended_total");
//! assert_eq!(metrics::RESUMED, "tower_patterns_saga_resumed_total");
//! ```

use crate::SagaStatus;

/// Sagas that ended, or got stuck, by `outcome` (`completed`, `compensated`, `failed`,
/// `stuck`, `resolved`) and `saga` (the type). Labels: `name`, `saga`, `outcome`.
pub const ENDED: &str = "tower_patterns_saga_ended_total";
/// Sagas taken over from another orchestrator whose lease expired. Label: `name`.
pub const RESUMED: &str = "tower_patterns_saga_resumed_total";

/// Registers the counters at zero: `resumed`, and `ended` for each saga type and outcome.
pub(crate) fn register<'a>(name: &str, sagas: impl IntoIterator<Item = &'a str>) {
    metrics::counter!(RESUMED, "name" => name.to_owned()).absolute(0);
    for saga in sagas {
        for outcome in [
            SagaStatus::Completed,
            SagaStatus::Compensated,
            SagaStatus::Failed,
            SagaStatus::Stuck,
            SagaStatus::Resolved,
        ] {
            metrics::counter!(ENDED, "name" => name.to_owned(), "saga" => saga.to_owned(), "outcome" => outcome.as_str())
                .absolute(0);
        }
    }
}

pub(crate) fn ended(name: &str, saga: &str, status: SagaStatus) {
    metrics::counter!(ENDED, "name" => name.to_owned(), "saga" => saga.to_owned(), "outcome" => status.as_str())
        .increment(1);
}

pub(crate) fn resumed(name: &str) {
    metrics::counter!(RESUMED, "name" => name.to_owned()).increment(1);
}
